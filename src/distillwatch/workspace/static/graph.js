// The campaign graph: fetched as JSON from the same origin, drawn by Cytoscape.js.
// Labels are drawn on a canvas (never parsed as HTML); links are built with encodeURIComponent.
(function () {
  "use strict";
  var box = document.getElementById("graph");
  if (!box || typeof cytoscape !== "function") { return; }
  var caps = document.getElementById("graph-caps");
  var base = box.getAttribute("data-graph-url");
  var expanded = [];
  var colours = { account: "#c0392b", ip: "#2e86c1", net: "#2e86c1", ua: "#17a589", tls: "#17a589",
                  pre: "#d4ac0d", suf: "#d4ac0d", pay: "#884ea0", fold: "#7f8c8d" };

  function say(text) { if (caps) { caps.textContent = text; } }

  function load() {
    var url = base + expanded.map(function (k) { return "&expand=" + encodeURIComponent(k); }).join("");
    var started = performance.now();
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (data) { draw(data, started); }).catch(function (err) {
      say("The graph could not be loaded (" + err.message + ").");
    });
  }

  function draw(data, started) {
    var cy = cytoscape({
      container: box,
      elements: data.elements,
      style: [
        { selector: "node", style: { "background-color": function (n) { return colours[n.data("kind")] || "#555"; },
          "label": "data(label)", "font-size": 7, "min-zoomed-font-size": 10, "color": "#333", "width": 10, "height": 10,
          "text-valign": "bottom", "text-halign": "center", "text-max-width": 120, "text-wrap": "ellipsis" } },
        { selector: "node[kind != 'fold'][!hub]", style: { "label": "" } },
        { selector: "node[kind = 'account']", style: { "label": "", "width": 7, "height": 7 } },
        { selector: "node[kind = 'fold']", style: { "shape": "round-rectangle", "width": 16, "height": 16 } },
        { selector: "node:selected", style: { "label": "data(label)", "border-width": 2, "border-color": "#111" } },
        { selector: "edge", style: { "width": function (e) { return 0.4 + 2.5 * e.data("weight"); },
          "line-color": "#b3b9c2", "opacity": 0.7 } }
      ],
      layout: { name: "cose", animate: false, randomize: false, nodeRepulsion: 8000, numIter: 600 }
    });
    cy.on("tap", "node[kind = 'account']", function (evt) {
      window.location.href = "/account?id=" + encodeURIComponent(evt.target.data("account"));
    });
    cy.on("tap", "node[kind = 'fold']", function (evt) {
      expanded.push(evt.target.data("key"));
      cy.destroy();
      load();
    });
    cy.on("tap", "node", function (evt) {
      var d = evt.target.data();
      if (d.kind !== "account" && d.kind !== "fold") {
        say(d.label + " · " + d.inside + " members, " + d.outside + " accounts outside · specificity " + d.specificity);
      }
    });
    var c = data.caps;
    say("Drawn: " + c.accounts_drawn + " of " + c.accounts + " accounts (highest scores); " +
        c.satellites + " groups of shared artefacts from the " + c.artefacts_drawn +
        " most specific" + (c.more_artefacts ? " (more exist)" : "") + ", " +
        c.satellites_not_drawn + " groups left out to keep under " + c.max_edges + " edges; " +
        c.folded + " branches above " + c.fold_above + " accounts folded (click one to expand). " +
        "Rendered in " + Math.round(performance.now() - started) + " ms.");
    box.setAttribute("data-rendered", String(cy.nodes().length));
    box.setAttribute("data-render-ms", String(Math.round(performance.now() - started)));
  }

  load();
})();

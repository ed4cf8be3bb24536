"""The analyst workspace: real store from the real pipeline, the real app over HTTP, a real
headless Chromium (Debian's package through Playwright), a real proxy and Redis.

The module builds one world: simulated traffic (small preset, scale 0.2) plus records whose
attacker-controlled fields carry XSS payloads, ingested and detected with the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from starlette.testclient import TestClient

from distillwatch.enforce.processes import free_port
from distillwatch.workspace import Workspace, WorkspaceApp, WorkspaceConfig
from tests.conftest import run_cli
from tests.gateway import start, stop

PASSWORD = "correct horse battery"
#: Payloads for every attacker-controlled field: each one would set window.__xss if it ran.
XSS = [
    "<script>window.__xss=1</script>",
    "<img src=x onerror=window.__xss=1>",
    "<svg/onload=window.__xss=1>",
    '"><script>window.__xss=1</script>',
    "'><img src=x onerror=window.__xss=1>",
    "javascript:window.__xss=1",
    "</textarea><script>window.__xss=1</script>",
    "</title><script>window.__xss=1</script>",
    "<iframe src=javascript:window.__xss=1></iframe>",
    "{{7*7}}<b onmouseover=window.__xss=1>x</b>",
    '<a href="javascript:window.__xss=1">click</a>',
    "\u202e<details open ontoggle=window.__xss=1>",
]
XSS_ACCOUNTS = [f"acct_x{i}{p}" for i, p in enumerate(XSS[:6])]
ARTIFACTS = Path(os.environ.get("DISTILLWATCH_ARTIFACTS", "test-artifacts")) / "workspace"


def _payload_records(traffic: Path) -> tuple[list[dict], str]:
    """Exchanges carrying the payloads: new accounts with payload ids, and campaign members
    sending payload prompts, user agents and models (so they reach templates and the graph)."""
    labels = json.loads((traffic / "labels.json").read_text())["accounts"]
    members = sorted(a for a, v in labels.items() if v["label"] == "campaign")[:6]
    rows = []
    for i, account in enumerate(XSS_ACCOUNTS + members):
        for j in range(12):
            payload = XSS[(i + j) % len(XSS)]
            rows.append(
                {
                    "id": f"xss-{i}-{j}",
                    "ts": f"2026-03-05T1{j % 10}:0{i % 10}:00Z",
                    "account_id": account,
                    "model": f"atlas-2{payload if j == 0 else ''}",
                    "messages": [
                        {
                            "role": "user",
                            "content": f"{payload} explain step by step the "
                            f"proof of lemma {j} {payload} in full detail please",
                        }
                    ],
                    "response": f"answer {payload}",
                    "ip": "198.51.100.7",
                    "user_agent": f"harvester/1.0 {payload}",
                    "tls_fingerprint": f"tls{payload}",
                }
            )
    return rows, members[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    traffic = root / "traffic"
    assert (
        run_cli(
            "simulate", "--scenario", "small", "--scale", "0.2", "--seed", "5", "--out", traffic
        ).returncode
        == 0
    )
    rows, member = _payload_records(traffic)
    (traffic / "payloads.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = root / "store.duckdb"
    result = run_cli(
        "ingest",
        traffic / "exchanges.jsonl",
        traffic / "payloads.jsonl",
        "--accounts",
        traffic / "accounts.jsonl",
        "--store",
        store,
    )
    assert result.returncode == 0, result.stderr
    result = run_cli("detect", "--store", store, "--out", root / "det")
    assert result.returncode == 0, result.stderr
    for name, role in (("ana", "analyst"), ("vera", "viewer"), ("root", "admin")):
        result = run_cli(
            "users",
            "add",
            name,
            "--role",
            role,
            "--store",
            store,
            env={"DISTILLWATCH_PASSWORD": PASSWORD},
        )
        assert result.returncode == 0, result.stderr
    verdicts = json.loads((root / "det" / "verdicts.json").read_text())
    return {"root": root, "store": store, "verdicts": verdicts, "member": member}


def _login(client: TestClient, user: str = "ana", password: str = PASSWORD) -> str:
    page = client.post(
        "/login", data={"username": user, "password": password, "next": "/"}, follow_redirects=False
    )
    assert page.status_code == 303, page.text[:300]
    overview = client.get("/")
    match = re.search(r'name="csrf" value="([^"]+)"', overview.text)
    assert match
    return match.group(1)


@pytest.fixture
def client(world, tmp_path):
    copy = tmp_path / "store.duckdb"
    shutil.copy(world["store"], copy)
    app = WorkspaceApp(
        WorkspaceConfig(store=copy, secure_cookies=False, detector=world["verdicts"]["detector"])
    )
    with TestClient(app.app, base_url="http://127.0.0.1") as c:
        c.workspace = app  # type: ignore[attr-defined]
        yield c


def _campaigns(world) -> list[str]:
    return [c["campaign_id"] for c in world["verdicts"]["campaigns"]]


# -- security -----------------------------------------------------------------------------------
def test_login_roles_csrf_and_cookie_flags(world, tmp_path):
    copy = tmp_path / "s.duckdb"
    shutil.copy(world["store"], copy)
    app = WorkspaceApp(WorkspaceConfig(store=copy))  # secure cookies: the default
    with TestClient(app.app, base_url="https://127.0.0.1") as c:
        assert c.get("/", follow_redirects=False).status_code == 303  # to /login
        assert c.get("/api/graph?id=c-1").status_code == 401
        bad = c.post("/login", data={"username": "ana", "password": "nope"})
        assert bad.status_code == 401 and "wrong password" in bad.text
        ok = c.post(
            "/login", data={"username": "ana", "password": PASSWORD}, follow_redirects=False
        )
        cookie = ok.headers["set-cookie"].lower()
        assert all(flag in cookie for flag in ("httponly", "secure", "samesite=strict"))
        page = c.get("/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        account = world["member"]
        form = {
            "subject_kind": "account",
            "subject": account,
            "action": "block",
            "reason": "harvest",
            "expires_hours": "1",
            "back": "/",
        }
        assert c.post("/action", data=form).status_code == 403  # no CSRF token
        assert c.post("/action", data={**form, "csrf": "forged"}).status_code == 403
        # Another user's session does not carry this one's token.
        c.cookies.clear()
        csrf = _login(c, "vera")
        denied = c.post("/action", data={**form, "csrf": csrf})
        assert denied.status_code == 403 and "analyst" in denied.text  # viewers only read
        # Logging out ends the session on the server, not only in this browser.
        token = c.cookies.get("dw_session")
        assert c.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        c.cookies.set("dw_session", token, domain="127.0.0.1")
        assert c.get("/", follow_redirects=False).status_code == 303
    # Rate-limited login: five failures for one user, then 429 even with the right password.
    with TestClient(WorkspaceApp(WorkspaceConfig(store=copy)).app) as c:
        for _ in range(5):
            assert c.post("/login", data={"username": "root", "password": "x"}).status_code == 401
        assert c.post("/login", data={"username": "root", "password": PASSWORD}).status_code == 429


def test_every_page_escapes_attacker_strings(world, client):
    _login(client)
    campaign = _campaigns(world)[0]
    pages = [
        "/",
        "/cases",
        "/audit",
        f"/campaign?id={campaign}",
        f"/report?id={campaign}&format=html",
        "/search?q=" + httpx.QueryParams({"x": XSS[1]})["x"],
    ]
    pages += [f"/account?{httpx.QueryParams({'id': a})}" for a in [*XSS_ACCOUNTS, world["member"]]]
    pages += [f"/search?{httpx.QueryParams({'q': a})}" for a in XSS_ACCOUNTS[:3]]
    seen_escaped = 0
    for url in pages:
        page = client.get(url)
        assert page.status_code == 200, (url, page.text[:300])
        for payload in XSS:
            raw = payload.replace("\u202e", "")
            if "<" in raw:
                assert raw not in page.text, (url, payload)
        seen_escaped += page.text.count("&lt;script&gt;window.__xss") + page.text.count(
            "&lt;img src=x onerror"
        )
        assert "content-security-policy" in page.headers
    assert seen_escaped > 20  # the payloads were shown (escaped), not dropped


def test_odd_input_gets_4xx_never_5xx(world, client):
    csrf = _login(client)
    for url in (
        "/account?id=",
        "/account?id=" + "a" * 5000,
        "/account?id=%00",
        "/account?id=nobody&page=-1",
        "/account?id=x&page=abc",
        "/campaign?id=nope",
        "/campaign",
        "/report?id=c-1&format=exe",
        "/case?id=none",
        "/cases?status=x",
        "/api/graph?id=nope",
        "/nowhere",
    ):
        status = client.get(url).status_code
        assert 400 <= status < 500, (url, status)
    for query in ("%25" * 400, "%5C%25_", "%00", "' OR 1=1 --", "a" * 5000):
        page = client.get(f"/search?q={query}")  # LIKE wildcards are literal, SQL is bound
        assert page.status_code == 200 and "No matches." in page.text, query
    member = world["member"]
    base = {"csrf": csrf, "subject_kind": "account", "subject": member, "back": "/"}
    for bad in (
        {"action": "block", "reason": "", "expires_hours": "1"},
        {"action": "block", "reason": "x", "expires_hours": ""},
        {"action": "block", "reason": "x", "expires_hours": "nan"},
        {"action": "block", "reason": "x", "expires_hours": "100000"},
        {"action": "nuke", "reason": "x", "expires_hours": "1"},
        {"action": "block", "reason": "x", "expires_hours": "1", "subject": "nobody"},
        {"action": "block", "reason": "x", "expires_hours": "1", "subject_kind": "org"},
    ):
        response = client.post("/action", data={**base, **bad})
        assert response.status_code == 400, (bad, response.status_code)
    assert (
        client.post("/case", data={"csrf": csrf, "case_id": "nope", "status": "open"}).status_code
        == 400
    )
    assert (
        client.post(
            "/label", data={"csrf": csrf, "account_id": member, "kind": "x", "reason": "r"}
        ).status_code
        == 400
    )


# -- cases, actions, labels -------------------------------------------------------------------
def test_actions_cases_and_false_positive_are_recorded_and_audited(world, client):
    csrf = _login(client)
    member = world["member"]
    campaign = _campaigns(world)[0]
    r = client.post(
        "/action",
        data={
            "csrf": csrf,
            "subject_kind": "campaign",
            "subject": campaign,
            "action": "shape",
            "reason": "templated harvest",
            "expires_hours": "24",
            "back": "/",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    r = client.post(
        "/label",
        data={
            "csrf": csrf,
            "account_id": member,
            "kind": "false_positive",
            "reason": "customer showed a classroom licence",
            "back": "/",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = client.get(f"/account?{httpx.QueryParams({'id': member})}").text
    assert "false_positive" in page and "classroom licence" in page
    cases = client.get("/cases").text
    assert "false_positive" in cases and "actioned" in cases
    case_id = re.search(r"/case\?id=(case-[0-9a-f]+)", cases).group(1)
    r = client.post(
        "/case",
        data={
            "csrf": csrf,
            "case_id": case_id,
            "assignee": "vera",
            "note": "checked <b>by hand</b>",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert "checked &lt;b&gt;by hand&lt;/b&gt;" in client.get(f"/case?id={case_id}").text
    store = client.workspace.store  # type: ignore[attr-defined]
    events = [e for (e,) in store.run("SELECT event FROM audit_log ORDER BY seq")]
    for expected in (
        "workspace.action.shape",
        "workspace.action.allowlist",
        "workspace.case.open",
        "workspace.case.update",
        "workspace.login",
    ):
        assert expected in events
    assert store.verify_audit_chain()
    labels = store.run("SELECT account_id, label FROM labels")
    assert labels == [(member, "false_positive")]
    size = len(
        next(c for c in world["verdicts"]["campaigns"] if c["campaign_id"] == campaign)["accounts"]
    )
    assert store.run("SELECT subject, action FROM actions WHERE subject_kind = 'campaign'") == [
        (campaign, "shape")
    ]
    audit = store.run("SELECT payload FROM audit_log WHERE event = 'workspace.action.shape'")
    assert json.loads(audit[0][0])["accounts"] == size
    # The label feeds back: the next detection run scores the account benign, out of campaigns.
    before = next(a for a in world["verdicts"]["accounts"] if a["account_id"] == member)
    assert before["verdict"] == "distillation" and before["cluster_id"]
    path = store.path
    store.close()
    result = run_cli("detect", "--store", path, "--out", path.parent / "again")
    assert result.returncode == 0, result.stderr
    again = json.loads((path.parent / "again" / "verdicts.json").read_text())
    after = next(a for a in again["accounts"] if a["account_id"] == member)
    assert after["verdict"] == "benign" and after["cluster_id"] is None
    assert "false positive (customer showed a classroom licence)" in after["reasons"][0]
    assert all(member not in c["accounts"] for c in again["campaigns"])


def test_evidence_report_hash_is_reproducible_by_the_documented_command(world, client, tmp_path):
    _login(client)
    campaign = _campaigns(world)[0]
    html = client.get(f"/report?id={campaign}&format=html").text
    digest = re.search(r'id="records-sha256">([0-9a-f]{64})<', html).group(1)
    run = re.search(r"--run ([0-9a-f]+)", html).group(1)
    pdf = client.get(f"/report?id={campaign}&format=pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    client.workspace.store.close()  # type: ignore[attr-defined]  (the CLI opens the file)
    store = tmp_path / "store.duckdb"
    out = tmp_path / "records.jsonl"
    result = run_cli(
        "report", "records", "--store", store, "--campaign", campaign, "--run", run, "--out", out
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest  # what sha256sum prints
    lines = out.read_bytes().splitlines()
    expected = next(c for c in world["verdicts"]["campaigns"] if c["campaign_id"] == campaign)
    assert len(lines) == expected["exchanges"]  # every exchange of every member, once
    assert {json.loads(line)["account_id"] for line in lines} == set(expected["accounts"])
    verify = ("report", "verify", "--store", store, "--campaign", campaign, "--run", run,
              "--sha256", digest)  # fmt: skip
    ok = run_cli(*verify)
    assert ok.returncode == 0 and "match" in ok.stdout
    con = duckdb.connect(str(store))
    first = json.loads(lines[0])["id"]
    con.execute("UPDATE exchanges SET response = response || '.' WHERE id = ?", [first])
    con.close()
    changed = run_cli(*verify)
    assert changed.returncode == 1 and "MISMATCH" in changed.stdout


def test_campaign_graph_is_bounded_and_folds(world, client):
    ws: Workspace = client.workspace.ws  # type: ignore[attr-defined]
    campaign = max(world["verdicts"]["campaigns"], key=lambda c: len(c["accounts"]))
    graph = ws.campaign_graph(campaign["campaign_id"], max_accounts=10, max_edges=40)
    nodes = {n["data"]["id"] for n in graph["elements"]["nodes"]}
    edges = graph["elements"]["edges"]
    assert len(nodes) == len(graph["elements"]["nodes"])  # ids unique
    assert all(e["data"]["source"] in nodes and e["data"]["target"] in nodes for e in edges)
    assert len(edges) <= 40 and graph["caps"]["accounts_drawn"] == 10
    assert graph["caps"]["accounts"] == len(campaign["accounts"])
    assert all(0 < e["data"]["weight"] <= 1 for e in edges)
    folded = ws.campaign_graph(campaign["campaign_id"], max_accounts=10, fold_above=3)
    folds = [n["data"] for n in folded["elements"]["nodes"] if n["data"]["kind"] == "fold"]
    assert folds and folded["caps"]["folded"] == len(folds)
    key = folds[0]["key"]
    expanded = ws.campaign_graph(
        campaign["campaign_id"], max_accounts=10, fold_above=3, expand=frozenset([key])
    )
    assert key not in {
        n["data"]["key"] for n in expanded["elements"]["nodes"] if n["data"]["kind"] == "fold"
    }
    assert any(e["data"]["target"] == f"x|{key}" for e in expanded["elements"]["edges"])


def test_campaign_evidence_gives_figures_not_placeholders(world):
    for campaign in world["verdicts"]["campaigns"]:
        for line in campaign["evidence"]:
            assert not re.search(r"\bN\b", line), line


# -- the browser ----------------------------------------------------------------------------------
@pytest.fixture
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def served(world, tmp_path, redis_url, upstream):
    """A proxy and the workspace, sharing one Redis: the workspace's actions reach the proxy."""
    url, _ = redis_url
    store = tmp_path / "store.duckdb"
    shutil.copy(world["store"], store)
    member = world["member"]
    keys = tmp_path / "keys.jsonl"
    keys.write_text(json.dumps({"api_key": "sk-member", "account_id": member}) + "\n")
    proxy_port, ws_port = free_port(), free_port()
    proxy = start(
        [
            "proxy",
            "--upstream",
            upstream,
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--keys",
            str(keys),
            "--redis",
            url,
            "--admin-token",
            "t0ken",
        ],
        f"http://127.0.0.1:{proxy_port}/healthz",
    )
    try:
        workspace = start(
            ["serve", "--store", str(store), "--listen", f"127.0.0.1:{ws_port}", "--redis", url],
            f"http://127.0.0.1:{ws_port}/healthz",
        )
    except Exception:
        stop(proxy)
        raise
    yield {
        "proxy": f"http://127.0.0.1:{proxy_port}",
        "ws": f"http://127.0.0.1:{ws_port}",
        "member": member,
    }
    stop(workspace)
    stop(proxy)


def _member_chat(proxy: str) -> int:
    response = httpx.post(
        f"{proxy}/v1/chat/completions",
        timeout=10,
        headers={"Authorization": "Bearer sk-member"},
        json={"model": "atlas-2", "messages": [{"role": "user", "content": "hi"}]},
    )
    return response.status_code


def test_browser_login_campaign_graph_action_enforced_audit_pdf(world, served, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    base = served["ws"]
    page.goto(f"{base}/")
    assert "/login" in page.url
    page.screenshot(path=str(ARTIFACTS / "login.png"))
    page.fill("input[name=username]", "ana")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#campaigns")
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    page.click("#campaigns tbody a")
    page.wait_for_selector("#graph[data-rendered]", timeout=30_000)
    assert int(page.get_attribute("#graph", "data-rendered")) > 10
    assert page.locator("#graph canvas").count() > 0
    assert "Drawn:" in page.inner_text("#graph-caps")
    page.screenshot(path=str(ARTIFACTS / "campaign.png"), full_page=True)
    campaign_url = page.url

    member = served["member"]
    assert _member_chat(served["proxy"]) == 200  # before the action
    page.goto(f"{base}/account?{httpx.QueryParams({'id': member})}")
    page.wait_for_selector("#prompts")
    page.screenshot(path=str(ARTIFACTS / "account.png"), full_page=True)
    page.select_option(".action-form select[name=action]", "block")
    page.fill(".action-form input[name=expires_hours]", "2")
    page.fill(".action-form input[name=reason]", "confirmed harvest from the browser test")
    page.click(".action-form button[type=submit]")
    page.wait_for_selector("text=confirmed harvest from the browser test")
    deadline = time.monotonic() + 5
    while _member_chat(served["proxy"]) != 403:
        assert time.monotonic() < deadline, "the proxy did not enforce the block within 5 s"
        time.sleep(0.2)

    page.goto(f"{base}/audit")
    audit = page.inner_text("#audit")
    assert "workspace.action.block" in audit and member in audit
    assert "intact" in page.inner_text("main")
    page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)

    page.goto(campaign_url)
    with page.expect_download() as download:
        page.click("#report-pdf")
    pdf = ARTIFACTS / "evidence.pdf"
    download.value.save_as(str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 10_000
    for name, url in (("cases", "/cases"), ("search", f"/search?q={member[:8]}")):
        page.goto(base + url)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert not errors, errors


XSS_CHECK = """() => ({
  ran: window.__xss !== undefined,
  handlers: document.querySelectorAll('[onerror],[onload],[onmouseover],[ontoggle],[onclick]').length,
  scripts: Array.from(document.scripts).filter(s => !s.src || new URL(s.src).pathname.indexOf('/static/') !== 0).length,
  frames: document.querySelectorAll('iframe,object,embed').length,
  jsLinks: Array.from(document.querySelectorAll('a[href]')).filter(a => a.href.trim().toLowerCase().startsWith('javascript:')).length,
})"""


def test_browser_xss_corpus_never_executes(world, served, browser):
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    base = served["ws"]
    # The login form and the audit log see attacker-chosen user names too.
    page.goto(f"{base}/login")
    page.fill("input[name=username]", XSS[1][:60])
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    page.fill("input[name=username]", "ana")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#campaigns")
    campaigns = _campaigns(world)
    urls = [
        "/",
        "/cases",
        "/audit",
        *[f"/campaign?id={c}" for c in campaigns],
        *[f"/report?id={c}&format=html" for c in campaigns[:2]],
    ]
    urls += [f"/account?{httpx.QueryParams({'id': a})}" for a in [*XSS_ACCOUNTS, served["member"]]]
    urls += [f"/search?{httpx.QueryParams({'q': p})}" for p in [*XSS, *XSS_ACCOUNTS]]
    for url in urls:
        page.goto(base + url)
        page.wait_for_load_state("load")
        if "/campaign?" in url:
            page.wait_for_selector("#graph[data-rendered]", timeout=30_000)
        found = page.evaluate(XSS_CHECK)
        assert found == {"ran": False, "handlers": 0, "scripts": 0, "frames": 0, "jsLinks": 0}, (
            url,
            found,
        )
    assert not dialogs
    (ARTIFACTS).mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "xss.json").write_text(
        json.dumps(
            {
                "payloads": len(XSS),
                "payload_accounts": len(XSS_ACCOUNTS),
                "pages": len(urls),
                "executed": 0,
            }
        )
    )


def test_members_reasons_are_summarised_with_median_and_range():
    from distillwatch.detection.pipeline import summarise_reasons

    reasons = [
        ["62% of 40 prompts ask for step-by-step reasoning", "created within 30 minutes of 5"],
        ["80% of 20 prompts ask for step-by-step reasoning", "created within 30 minutes of 9"],
        ["70% of 30 prompts ask for step-by-step reasoning: e.g. 'show your work'"],
    ]
    assert summarise_reasons(reasons) == [
        (3, "70% [62%-80%] of 30 [20-40] prompts ask for step-by-step reasoning"),
        (2, "created within 30 minutes of 7 [5-9]"),
    ]


def test_demo_ends_with_the_dashboard_running_and_a_demo_login(tmp_path):
    """``demo --serve`` (what ``make demo`` runs) returns with the workspace serving the demo
    store in the background, and prints the URL and a login that works."""
    port = free_port()
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out, "--serve", "--listen", f"127.0.0.1:{port}", timeout=600)
    assert result.returncode == 0, result.stderr
    pid = int((out / "serve.pid").read_text())
    try:
        assert f"http://127.0.0.1:{port}/" in result.stdout
        password = re.search(r"login:\s+demo / (\S+)", result.stdout).group(1)
        assert f"password: {password}" in (out / "demo-login.txt").read_text()
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json()["run_id"]
        login = httpx.post(f"{base}/login", data={"username": "demo", "password": password})
        assert login.status_code == 303 and "dw_session=" in login.headers["set-cookie"]
    finally:
        os.kill(pid, 15)


def test_actions_through_the_admin_api_reach_a_proxy_in_batches(proxy):
    """``serve --proxy URL``'s channel: one /admin/extend call carries many accounts; the proxy
    enforces them on the next request, and a lift restores them."""
    import asyncio

    from distillwatch.workspace.channels import AdminApiChannel
    from tests.gateway import ADMIN, chat

    base, _ = proxy()
    assert {chat(base, a).status_code for a in ("good", "suspect")} == {200}

    async def run(step):  # type: ignore[no-untyped-def]
        channel = AdminApiChannel([base], ADMIN)
        try:
            return await step(channel)
        finally:
            await channel.close()

    decision = {"action": "block", "rule": "analyst", "reasons": ["analyst ana: harvest"]}
    assert asyncio.run(run(lambda c: c.decide(["good", "suspect"], decision, 600))) == 1
    assert {chat(base, a).status_code for a in ("good", "suspect")} == {403}
    asyncio.run(run(lambda c: c.lift(["good"])))
    assert chat(base, "good").status_code == 200 and chat(base, "suspect").status_code == 403
    # A shape as the desk sends it: the answer capped after the reasoning, not the request.
    shape = {"action": "shape", "rule": "analyst", "reasons": ["analyst ana: check"],
             "max_tokens": 10, "strip_reasoning": True, "cap_answer": True}  # fmt: skip
    assert asyncio.run(run(lambda c: c.decide(["good"], shape, 600))) == 1
    answer = chat(base, "good", "explain", max_tokens=200).json()["choices"][0]
    assert answer["finish_reason"] == "length" and len(answer["message"]["content"]) == 40
    asyncio.run(run(lambda c: c.lift(["good"])))
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for bad in ([], ["x"] * 5001, [""], [7], "good"):
        r = httpx.post(f"{base}/admin/extend", headers=auth,
                       json={"account_ids": bad, "ttl_seconds": 60, "action": "block"})  # fmt: skip
        assert r.status_code == 400 and "account_ids" in r.text, bad
    # The single-account endpoints do not take a batch (and never answer 5xx for one).
    r = httpx.post(f"{base}/admin/lift", headers=auth, json={"account_ids": ["good"]})
    assert r.status_code == 400

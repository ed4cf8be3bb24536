"""``distillwatch proxy``: the enforcing OpenAI-compatible reverse proxy."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from pathlib import Path

import typer

from distillwatch.commands._app import app, console, fail
from distillwatch.enforce.policy import PolicyError, load_policy
from distillwatch.errors import SharingKeyError
from distillwatch.sharing.keys import ENV_KEY_FILE, SharingKey


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise fail(f"--listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _jsonl(path: Path, what: str) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise fail(f"{path}:{number}: {what} line is not JSON") from None
        if not isinstance(row, dict):
            raise fail(f"{path}:{number}: {what} line is not an object")
        rows.append(row)
    return rows


@app.command("proxy")
def proxy_command(
    upstream: str = typer.Option(
        ..., "--upstream", help="Base URL of the OpenAI-compatible API to protect."
    ),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to serve on."),
    store: Path | None = typer.Option(
        None, "--store", help="DuckDB store for the exchange log and audit trail."
    ),
    policy: Path | None = typer.Option(
        None, "--policy", help="Policy YAML (default: the shipped policy)."
    ),
    verdicts: Path | None = typer.Option(
        None, "--verdicts", help="Contract-2 verdicts.json to enforce; reloaded when it changes."
    ),
    redis: str | None = typer.Option(
        None, "--redis", help="redis:// URL to share counters and decisions across replicas."
    ),
    shadow: bool = typer.Option(
        False, "--shadow", help="Decide and log everything, enforce nothing."
    ),
    keys: Path | None = typer.Option(
        None, "--keys", help='JSONL of {"api_key": ..., "account_id": ...}; other keys are refused.'
    ),
    accounts: Path | None = typer.Option(
        None, "--accounts", help="Account metadata JSONL (payment fingerprints for linking)."
    ),
    trusted_proxy: list[str] = typer.Option(
        None, "--trusted-proxy", help="CIDR whose X-Forwarded-For is believed (repeatable)."
    ),
    tls_header: str = typer.Option(
        "X-JA4", "--tls-fingerprint-header", help="Header carrying the client's TLS fingerprint."
    ),
    replay_time_header: str | None = typer.Option(
        None,
        "--replay-time-header",
        help="Take each request's time from this header (replays only).",
    ),
    admin_token: str | None = typer.Option(
        None, "--admin-token", envvar="DISTILLWATCH_ADMIN_TOKEN", help="Bearer token for /admin/*."
    ),
    max_body_bytes: int = typer.Option(
        2 * 1024 * 1024, "--max-body-bytes", min=1024, help="Largest request body accepted."
    ),
    body_timeout: float = typer.Option(
        15.0, "--body-timeout", min=0.1, help="Seconds a client gets to send its body (else 408)."
    ),
    upstream_timeout: float = typer.Option(
        120.0,
        "--upstream-timeout",
        min=0.1,
        help="Seconds the upstream gets to answer a request in full (else 504).",
    ),
    spool_fsync: str = typer.Option(
        "interval",
        "--spool-fsync",
        help="When the exchange journal is synced to disk: interval (every second: a power loss "
        "loses at most ~1 s of acknowledged exchanges), always (every request waits for the "
        "disk), never (the kernel decides). kill -9 loses nothing in any mode.",
    ),
    indicators: list[Path] = typer.Option(
        None,
        "--indicators",
        help="STIX 2.1 indicator bundle (detect's indicators.json, or a partner's) or a folder of "
        "them (share import --into); repeat for more. Links new accounts to flagged campaigns without any store; hot-reloaded; a bundle "
        "that fails validation is not applied and /healthz says why.",
    ),
    trust_keys: Path | None = typer.Option(
        None,
        "--trust-keys",
        help="Apply only bundles signed by these partners ('<name> ed25519 <base64>' lines, their "
        "share keygen .pub): BUNDLE.sig beside each (share import --trust-keys keeps it).",
    ),
    sharing_key: Path | None = typer.Option(
        None,
        "--sharing-key",
        help="The sharing group's key file (detect writes OUT/sharing.key): needed to match "
        "template and payment indicators, which bundles carry only as keyed hashes. Default: "
        "$DISTILLWATCH_SHARING_KEY.",
    ),
    detect_every: str | None = typer.Option(
        None,
        "--detect-every",
        help="Run micro-batch detection on the gateway's own log (--store) this often, e.g. 10m, "
        "1h, 90s; in replayed time when --replay-time-header is set. Verdicts and indicators go "
        "live without a restart. POST /admin/detect runs one on demand.",
    ),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="Streaming evidence: every request updates per-account and per-card counters and "
        "sketches (in --redis when given, shared by replicas) and is scored with the batch rule "
        "table; policy condition min_stream_score. Needs --accounts for sign-up evidence.",
    ),
    canary_keys: Path | None = typer.Option(
        None,
        "--canary-keys",
        help="A watermark keyring: shaped answers of a rule with canary: true get the account's "
        "cluster's canary (keyed with the active key; provenance canary-test finds it later).",
    ),
    store_fold_seconds: float = typer.Option(
        0.5,
        "--store-fold-seconds",
        min=0.01,
        max=3600,
        help="Seconds the store writer gathers journaled exchanges before folding them into the "
        "store in one transaction (how stale the store may be; the journal keeps them meanwhile).",
    ),
    max_header_bytes: int = typer.Option(
        64 * 1024, "--max-header-bytes", min=1024, help="Largest request head accepted (431)."
    ),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", min=0.1, help="Seconds a client gets to send its headers (408)."
    ),
    max_pending: int = typer.Option(
        512,
        "--max-pending-connections",
        min=1,
        help="Connections allowed to be still sending headers; the oldest is closed beyond this.",
    ),
    max_in_flight: int = typer.Option(
        1024, "--max-in-flight", min=1, help="Requests served at once; beyond this 503."
    ),
) -> None:
    """Serve /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings and /v1/models
    in front of UPSTREAM, allowing, throttling, challenging, shaping or blocking per the policy; plus
    /healthz, /metrics (Prometheus) and a token-protected /admin API."""
    from distillwatch.enforce.app import Proxy, ProxyConfig
    from distillwatch.enforce.server import ServerLimits, serve
    from distillwatch.enforce.spool import FSYNC_MODES

    host, port = _listen(listen)
    if spool_fsync not in FSYNC_MODES:
        raise fail(f"--spool-fsync must be one of {', '.join(FSYNC_MODES)}")
    try:
        chosen = load_policy(policy)
    except PolicyError as exc:
        raise fail(f"policy: {exc}") from None
    key_map: dict[str, str] = {}
    if keys is not None:
        if not keys.is_file():
            raise fail(f"{keys}: no such keys file")
        for row in _jsonl(keys, "keys"):
            if not isinstance(row.get("api_key"), str) or not isinstance(
                row.get("account_id"), str
            ):
                raise fail(f"{keys}: each line needs string api_key and account_id")
            key_map[hashlib.sha256(row["api_key"].encode()).hexdigest()] = row["account_id"]
    payments: dict[str, str] = {}
    if accounts is not None:
        if not accounts.is_file():
            raise fail(f"{accounts}: no such accounts file")
        payments = {r["account_id"]: r["payment_fingerprint"] for r in _jsonl(accounts, "accounts")
                    if isinstance(r.get("account_id"), str) and isinstance(r.get("payment_fingerprint"), str)}  # fmt: skip
    try:
        networks = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxy or [])
    except ValueError as exc:
        raise fail(f"--trusted-proxy: {exc}") from None
    if verdicts is not None and not verdicts.is_file():
        raise fail(f"{verdicts}: no such verdicts file")
    for bundle in indicators or []:
        if not bundle.exists():
            raise fail(f"{bundle}: no such indicator bundle or folder")
    key = _sharing_key(sharing_key)
    signers = None
    if trust_keys is not None:
        from distillwatch.errors import SharingKeyError
        from distillwatch.sharing.signing import read_trusted_keys

        try:
            signers = read_trusted_keys(trust_keys)
        except SharingKeyError as exc:
            raise fail(f"--trust-keys: {exc}") from None
    hooks = []
    if canary_keys is not None:
        from distillwatch.errors import ProvenanceKeyError
        from distillwatch.provenance import Keyring
        from distillwatch.provenance.canary import response_hook

        try:
            hooks.append(response_hook(Keyring.read(canary_keys).active))
        except ProvenanceKeyError as exc:
            raise fail(f"--canary-keys: {exc}") from None
    config = ProxyConfig(
        upstream=upstream, policy=chosen, store=store, verdicts=verdicts, redis_url=redis,
        shadow=shadow, keys=key_map, payments=payments, trusted_proxies=networks,
        tls_header=tls_header, replay_time_header=replay_time_header, admin_token=admin_token,
        max_body_bytes=max_body_bytes, body_timeout_s=body_timeout,
        upstream_timeout_s=upstream_timeout, spool_fsync=spool_fsync,
        store_fold_seconds=store_fold_seconds, indicators=list(indicators or []),
        detect_every_s=_duration(detect_every) if detect_every else None,
        sharing_key=key, trusted_keys=signers, stream=stream, accounts_file=accounts,
        response_hooks=hooks,
        limits=ServerLimits(max_header_bytes=max_header_bytes, header_timeout_s=header_timeout,
                            max_pending=max_pending, max_in_flight=max_in_flight),
    )  # fmt: skip
    proxy = Proxy(config)
    console.print(f"distillwatch proxy on http://{host}:{port} -> {upstream}"
                  f"{' (shadow mode)' if shadow else ''}", highlight=False)  # fmt: skip
    serve(proxy.asgi, host, port, proxy.protocol)


@app.command("mock-upstream")
def mock_upstream_command(
    listen: str = typer.Option("127.0.0.1:8081", "--listen", help="HOST:PORT to serve on."),
    delay_ms: float = typer.Option(0.0, "--delay-ms", min=0.0, help="Fixed delay per request."),
    watermark_keys: Path | None = typer.Option(
        None,
        "--watermark-keys",
        help="A watermark keyring: answer in words, watermarked with its "
        "active key when the gateway's shape action asks for it (x-distillwatch-watermark: on).",
    ),
) -> None:
    """A small OpenAI-compatible stand-in model for demos, tests and benchmarks (not a model)."""
    import uvicorn

    from distillwatch.enforce.mock_upstream import create_app

    host, port = _listen(listen)
    uvicorn.run(create_app(delay_ms / 1000, watermark_keys), host=host, port=port,
                log_level="warning")  # fmt: skip


@app.command("demo-proxy")
def demo_proxy_command(
    traffic: Path = typer.Option(
        Path("demo-out/traffic"),
        "--traffic",
        help="A `simulate` output folder (make demo writes one).",
    ),
    out: Path = typer.Option(
        Path("demo-out/enforce"), "--out", help="Folder for the proxy's store, keys and verdicts."
    ),
    detect_days: float = typer.Option(
        3.0,
        "--detect-days",
        min=0.5,
        help="Days of traffic detection sees before the proxy goes live.",
    ),
    requests: int = typer.Option(
        4000, "--requests", min=100, help="How many later requests to replay through the proxy."
    ),
    redetect_hours: float = typer.Option(
        6.0,
        "--redetect-hours",
        min=0.0,
        help="Re-run detection (incrementally) every this many simulated hours during the "
        "replay and hot-reload its verdicts into the proxy; 0 keeps the day-0 verdicts.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the tally as JSON."),
) -> None:
    """Live enforcement demo: detect on the first days of simulated traffic, start the real proxy
    with those verdicts, replay the rest through it while detection re-runs on a schedule, and
    show what attackers and customers got."""
    from rich.live import Live
    from rich.table import Table

    from distillwatch.enforce.replay import replay

    if not (traffic / "labels.json").exists():
        raise fail(
            f"{traffic}: no simulation here; run `make demo` or `distillwatch simulate` first"
        )

    def table(live_counts) -> Table:  # type: ignore[no-untyped-def]
        t = Table(title="replaying through the proxy", title_justify="left")
        for outcome in ("served", "shaped", "429", "403"):
            t.add_column(outcome, justify="right")
        t.add_row(*(f"{live_counts.get(k, 0):,}" for k in ("served", "shaped", "429", "403")))
        return t

    if as_json or not console.is_terminal:
        result = replay(traffic, out, detect_days, requests, redetect_hours=redetect_hours)
    else:
        with Live(table({}), console=console, transient=True) as live:
            result = replay(
                traffic,
                out,
                detect_days,
                requests,
                on_progress=lambda c: live.update(table(c)),
                redetect_hours=redetect_hours,
            )
    if as_json:
        console.print_json(json.dumps(result))
        return
    summary = Table(
        title=f"Enforcement after {detect_days:g} days of detection", title_justify="left"
    )
    summary.add_column("traffic")
    for column in ("requests", "served", "shaped", "throttled (429)", "challenged (403)"):
        summary.add_column(column, justify="right")
    for group in ("attacker", "benign"):
        o = result["outcomes"].get(group, {})
        summary.add_row(
            group,
            f"{sum(o.values()):,}",
            *(f"{o.get(k, 0):,}" for k in ("served", "shaped", "429", "403")),
        )
    console.print(summary)
    share = result["attacker_stopped_or_shaped_share"]
    benign = result["benign_refused_share"]
    after = result["attacker_after_detection_stopped_or_shaped_share"]
    console.print(
        f"detection re-ran {result['redetect_runs']} times (every {redetect_hours:g} simulated "
        f"hours, median {result['redetect_seconds_median'] or 0:.1f} s each)\n"
        f"requests from attacker accounts already flagged: [bold]{(after or 0):.1%}[/] stopped or "
        f"shaped ({result['attacker_requests_after_detection']:,} requests); all attacker requests: "
        f"[bold]{(share or 0):.1%}[/]; benign requests refused: "
        f"[bold]{(benign or 0):.2%}[/]; accounts unseen at detection time stopped: "
        f"{result['fresh_accounts_stopped']}/{result['fresh_attacker_accounts']} "
        f"(within {result['fresh_requests_until_stopped_max'] or 0} requests at most)",
        highlight=False,
    )


def _sharing_key(path: Path | None) -> SharingKey | None:
    """The key from --sharing-key or $DISTILLWATCH_SHARING_KEY (None: match public kinds only)."""
    chosen = path or (Path(os.environ[ENV_KEY_FILE]) if os.environ.get(ENV_KEY_FILE) else None)
    if chosen is None:
        return None
    try:
        return SharingKey.read(chosen)
    except SharingKeyError as exc:
        raise fail(str(exc)) from None


def _duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise fail(f"--detect-every: expected a duration like 10m, got {text!r}") from None
    if not 1 <= seconds <= 7 * 86400:
        raise fail("--detect-every: between 1 s and 7 days")
    return seconds

"""``distillwatch serve``, ``distillwatch users`` and ``distillwatch report``: the analyst workspace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from distillwatch.commands._app import app, console, fail
from distillwatch.commands.proxy import _listen
from distillwatch.errors import InputError, ResourceError, StoreError
from distillwatch.store import DEFAULT_STORE, Store
from distillwatch.terminal import safe_text

users_app = typer.Typer(help="Workspace logins: add or change users.", no_args_is_help=True)
report_app = typer.Typer(
    help="Evidence reports: the records behind a campaign, and their hash.", no_args_is_help=True
)
app.add_typer(users_app, name="users")
app.add_typer(report_app, name="report")
TOKEN_ENV = "DISTILLWATCH_ADMIN_TOKEN"
PASSWORD_ENV = "DISTILLWATCH_PASSWORD"


def _secret(path: Path | None, env: str) -> str | None:
    """A secret from a file (first choice) or an environment variable; None if neither."""
    if path is None:
        return os.environ.get(env)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise fail(f"{path}: {exc.strerror}") from None


@app.command()
def serve(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="The DuckDB store."),
    listen: str = typer.Option("127.0.0.1:8765", "--listen", help="HOST:PORT to serve on."),
    redis: str | None = typer.Option(
        None, "--redis", help="Deliver actions into the proxies' shared state (proxy --redis)."
    ),
    proxy_url: list[str] | None = typer.Option(
        None, "--proxy", help="Deliver actions through this proxy's admin API (repeatable)."
    ),
    token_file: Path | None = typer.Option(
        None, "--admin-token-file", help=f"The proxies' admin token (or ${TOKEN_ENV})."
    ),
    insecure_cookies: bool = typer.Option(
        False,
        "--insecure-cookies",
        help="Send the session cookie over plain HTTP to hosts other than localhost "
        "(behind a TLS-terminating reverse proxy, leave this off).",
    ),
) -> None:
    """Serve the analyst workspace: overview, campaigns with their graph, accounts, cases,
    search, the audit log and evidence reports, with actions delivered to running proxies."""
    import uvicorn

    from distillwatch.workspace import AdminApiChannel, StateChannel, WorkspaceApp, WorkspaceConfig

    host, port = _listen(listen)
    if not store.exists():
        raise fail(f"{store}: no such store (run `distillwatch ingest` and `detect` first)")
    if redis and proxy_url:
        raise fail("give --redis or --proxy, not both")
    channel = None
    if redis:
        channel = StateChannel.redis(redis)
    elif proxy_url:
        token = _secret(token_file, TOKEN_ENV)
        if not token:
            raise fail(
                f"--proxy needs the proxies' admin token (--admin-token-file or ${TOKEN_ENV})"
            )
        channel = AdminApiChannel(list(proxy_url), token)
    try:
        workspace = WorkspaceApp(
            WorkspaceConfig(
                store=store,
                secure_cookies=not insecure_cookies,
                **({"channel": channel} if channel else {}),
            )
        )
    except ResourceError as exc:  # the store, or a missing extra
        raise fail(str(exc)) from None
    if workspace.users.count() == 0:
        console.print(
            "[yellow]no users yet:[/] add one with `distillwatch users add NAME --role admin "
            f"--store {safe_text(str(store))}`",
            highlight=False,
        )
    console.print(
        f"distillwatch workspace on http://{host}:{port}/ (store {safe_text(str(store))}; "
        f"actions: {safe_text(workspace.config.channel.describe())})",
        highlight=False,
    )
    uvicorn.run(workspace.app, host=host, port=port, log_level="warning", access_log=False)


@users_app.command("add")
def users_add(
    username: str = typer.Argument(..., help="Login name (a-z 0-9 . _ - @)."),
    role: str = typer.Option("analyst", "--role", help="viewer, analyst or admin."),
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="The DuckDB store."),
    password_file: Path | None = typer.Option(
        None, "--password-file", help=f"Read the password from a file (or ${PASSWORD_ENV})."
    ),
) -> None:
    """Add a workspace user, or reset an existing user's password and role."""
    from distillwatch.workspace import Users

    password = _secret(password_file, PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise fail(f"give --password-file or ${PASSWORD_ENV} (no terminal to ask on)")
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        with Store(store) as db:
            user = Users(db).add(username, password, role)
    except (InputError, StoreError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"user {safe_text(user.username)} ({user.role}) saved in {safe_text(str(store))}",
        highlight=False,
    )


def _open(store: Path, campaign: str, run: str | None):  # type: ignore[no-untyped-def]
    from distillwatch.workspace import Workspace

    try:
        db = Store(store, read_only=True)
    except StoreError as exc:
        raise fail(str(exc)) from None
    ws = Workspace(db)
    run_id = run or ws.run_id
    if not db.run(
        "SELECT 1 FROM campaigns WHERE run_id = ? AND campaign_id = ?", [run_id, campaign]
    ):
        db.close()
        raise fail(f"campaign {campaign!r} is not in detection run {run_id}")
    return db, ws, run_id


@report_app.command("records")
def report_records(
    campaign: str = typer.Option(..., "--campaign", help="Campaign id (as in verdicts.json)."),
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="The DuckDB store."),
    run: str | None = typer.Option(None, "--run", help="Detection run id (default: latest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Write the canonical JSON Lines here."),
) -> None:
    """Write the exact records an evidence report's SHA-256 covers (check with sha256sum)."""
    from distillwatch.workspace.evidence import write_records

    db, ws, run_id = _open(store, campaign, run)
    try:
        with out.open("wb") as handle:
            digest, count = write_records(ws, run_id, campaign, handle)
    finally:
        db.close()
    console.print(f"{count:,} records -> {safe_text(str(out))}\nsha256 {digest}", highlight=False)


@report_app.command("verify")
def report_verify(
    campaign: str = typer.Option(..., "--campaign", help="Campaign id."),
    sha256: str = typer.Option(..., "--sha256", help="The hash printed in the report."),
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="The DuckDB store."),
    run: str | None = typer.Option(None, "--run", help="Detection run id (default: latest)."),
) -> None:
    """Recompute a campaign's records hash; exit 0 if it matches the report's, 1 if not."""
    from distillwatch.workspace.evidence import records_digest

    db, ws, run_id = _open(store, campaign, run)
    try:
        digest, count = records_digest(ws, run_id, campaign)
    finally:
        db.close()
    if digest != sha256.strip().lower():
        console.print(f"[bold red]MISMATCH[/]: {count:,} records hash to {digest}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]match[/]: {count:,} records, sha256 {digest}", highlight=False)

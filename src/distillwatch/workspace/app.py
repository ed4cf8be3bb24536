"""``distillwatch serve``: the analyst workspace as a Starlette app (Jinja2 pages, one small script).

Pages are rendered on the server with autoescaping on; the only JavaScript is the campaign graph
(vendored Cytoscape.js and ``static/graph.js``), fetched from the same origin, so the
Content-Security-Policy allows no inline script or style at all. Every state change is a POST
form carrying the session's CSRF token, needs the ``analyst`` role, and lands in the audit log.

Untrusted strings (account ids, prompts, user agents, model names, templates, evidence) reach the
templates as data and are escaped there; ids travel in query strings (``/account?id=...``), never
in paths, so no id can change which route answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from distillwatch import __version__
from distillwatch.errors import InputError, ResourceError, StateError
from distillwatch.store import Store
from distillwatch.workspace import charts
from distillwatch.workspace.auth import LoginLimiter, Sessions, User, Users, csrf_ok
from distillwatch.workspace.cases import ACTIONS, STATUSES, Desk
from distillwatch.workspace.channels import Channel, RecordOnlyChannel
from distillwatch.workspace.evidence import render_pdf, report_context
from distillwatch.workspace.queries import FEATURES, PAGE_SIZE, Workspace

log = logging.getLogger("distillwatch.workspace")

COOKIE = "dw_session"
MAX_ID_CHARS = 256
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC = Path(__file__).parent / "static"


@dataclass
class WorkspaceConfig:
    store: Path
    channel: Channel = field(default_factory=RecordOnlyChannel)
    secure_cookies: bool = True
    detector: dict[str, Any] = field(default_factory=dict)


def _bounded(value: str | None, what: str, limit: int = MAX_ID_CHARS) -> str:
    if value is None or value == "":
        raise InputError(f"{what}: required")
    if len(value) > limit:
        raise InputError(f"{what}: longer than {limit} characters")
    return value


def _page(request: Request) -> int:
    raw = request.query_params.get("page", "0")
    if not raw.isdigit() or len(raw) > 6:
        raise InputError("page: a whole number")
    return int(raw)


class WorkspaceApp:
    """The web layer: routes, sessions, templates. Reads via :class:`Workspace`, writes via
    :class:`Desk`."""

    def __init__(self, config: WorkspaceConfig) -> None:
        try:  # Starlette parses forms with it, and would fail only at the first login
            import python_multipart  # noqa: F401
        except ImportError:
            raise ResourceError(
                "the workspace needs python-multipart: pip install 'distillwatch[workspace]'"
            ) from None
        self.config = config
        self.store = Store(config.store)
        self.ws = Workspace(self.store)
        self.users = Users(self.store)
        self.sessions = Sessions(self.store)
        self.limiter = LoginLimiter()
        self.desk = Desk(self.ws, config.channel)
        #: One action at a time: the store lock is re-entrant, so two requests on the event
        #: loop's thread could otherwise interleave inside it at the channel's awaits.
        self._acting = asyncio.Lock()
        self.env = Environment(
            loader=PackageLoader("distillwatch.workspace", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["q"] = lambda v: quote(str(v), safe="")
        self.env.filters["pct"] = lambda v: "n/a" if v is None else f"{v:.0f}"
        self.env.filters["ts"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M}"
        self.env.globals.update(
            version=__version__, actions=ACTIONS, statuses=STATUSES, urlencode=urlencode
        )
        routes = [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/healthz", self.healthz),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Route("/", self.overview),
            Route("/campaign", self.campaign),
            Route("/api/graph", self.graph),
            Route("/account", self.account),
            Route("/cases", self.cases),
            Route("/case", self.case, methods=["GET"]),
            Route("/case", self.case_update, methods=["POST"]),
            Route("/case/open", self.case_open, methods=["POST"]),
            Route("/action", self.action, methods=["POST"]),
            Route("/label", self.label, methods=["POST"]),
            Route("/search", self.search),
            Route("/audit", self.audit),
            Route("/report", self.report),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={
                InputError: self._bad_input,
                404: self._not_found,
                405: self._not_allowed,
                500: self._crash,
            },
            lifespan=self._lifespan,
        )
        self.app.add_middleware(_SecurityHeaders)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):  # type: ignore[no-untyped-def]
        yield
        await self.config.channel.close()
        self.store.close()

    # -- plumbing ---------------------------------------------------------------------------------
    async def _db(self, fn: Any, *args: Any) -> Any:
        def call() -> Any:
            with self.ws.lock:
                return fn(*args)

        return await anyio.to_thread.run_sync(call)

    def _render(
        self, name: str, user: User | None, code: int = 200, **context: Any
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(user=user, **context)
        return HTMLResponse(html, status_code=code, headers={"Cache-Control": "no-store"})

    def _absent(self, user: User | None, title: str, message: str = "") -> HTMLResponse:
        """The 404 page for a subject that is not in the store."""
        return self._render("error.html", user, 404, title=title, message=message)

    async def _user(self, request: Request) -> User | None:
        return await self._db(self.sessions.user, request.cookies.get(COOKIE))

    async def _need(self, request: Request, role: str = "viewer") -> User | Response:
        user = await self._user(request)
        if user is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target[:500]}), 303)
        if not user.can(role):
            return self._render(
                "error.html",
                user,
                403,
                title="Not allowed",
                message=f"This needs the {role} role; you are {user.role}.",
            )
        return user

    async def _form(
        self, request: Request, user: User, role: str = "analyst"
    ) -> dict[str, str] | Response:
        """The POSTed form, after the CSRF token and role checks (and a size bound)."""
        if int(request.headers.get("content-length") or 0) > 64_000:
            raise InputError("form: larger than 64 kB")
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not csrf_ok(user, values.get("csrf")):
            return self._render(
                "error.html",
                user,
                403,
                title="Form expired",
                message="The form's security token did not match; reload the page and try again.",
            )
        if not user.can(role):
            return self._render(
                "error.html",
                user,
                403,
                title="Not allowed",
                message=f"This needs the {role} role; you are {user.role}.",
            )
        return values

    async def _posted(self, request: Request) -> tuple[User, dict[str, str]] | Response:
        """An analyst's state-changing POST: the user and the form, once the session, the role
        and the CSRF token have been checked (else the page that says why)."""
        user = await self._need(request, "analyst")
        if isinstance(user, Response):
            return user
        form = await self._form(request, user)
        return form if isinstance(form, Response) else (user, form)

    async def _bad_input(self, request: Request, exc: Exception) -> Response:
        user = await self._user(request)
        return self._render("error.html", user, 400, title="Cannot do that", message=str(exc))

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self._render("error.html", None, 404, title="Not found", message="No such page.")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self._render("error.html", None, 405, title="Method not allowed", message="")

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.exception("workspace error on %s", request.url.path[:200])
        return self._render(
            "error.html", None, 500, title="Internal error", message="The error was logged."
        )

    # -- login ----------------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        return self._render("login.html", None, next=_safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        form = await request.form()
        username = str(form.get("username", ""))[:64]
        password = str(form.get("password", ""))[:1024]
        target = _safe_next(str(form.get("next", "/")))
        client = request.client.host if request.client else "-"
        wait = self.limiter.blocked(username, client)
        if wait > 0:
            return self._render(
                "login.html",
                None,
                429,
                next=target,
                error=f"Too many failed attempts; try again in {int(wait) + 1} s.",
            )
        user = await anyio.to_thread.run_sync(self.users.verify, username, password)
        if user is None:
            self.limiter.failed(username, client)
            await self._db(
                self.store.audit, username or "-", "workspace.login.failed", {"client": client}
            )
            return self._render(
                "login.html", None, 401, next=target, error="Unknown user or wrong password."
            )
        token, _ = await self._db(self.sessions.start, user)
        await self._db(self.store.audit, user.username, "workspace.login", {"client": client})
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=self.sessions.hours * 3600,
            httponly=True,
            secure=self.config.secure_cookies,
            samesite="strict",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        form = await self._form(request, user, "viewer")
        if isinstance(form, Response):
            return form
        await self._db(self.sessions.end, request.cookies.get(COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "run_id": self.ws.run_id, "channel": self.config.channel.describe()}
        )

    # -- pages ----------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        data = await self._db(self.ws.overview)
        chart = charts.time_bars([data.traffic, data.flagged_traffic], markers=data.launches)
        actions = charts.time_bars([data.refusals, data.actions], height=110)
        return self._render(
            "overview.html",
            user,
            o=data,
            chart=chart,
            actions_chart=actions,
            channel=self.config.channel.describe(),
        )

    async def campaign(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        cid = _bounded(request.query_params.get("id"), "id")
        data = await self._db(self.ws.campaign, cid)
        if data is None:
            return self._absent(
                user, "No such campaign", f"{cid} is not in the latest detection run."
            )
        case = await self._db(self._case_of, "campaign", cid)
        return self._render(
            "campaign.html",
            user,
            c=data,
            case=case,
            timeline=charts.time_bars([data.timeline], markers=data.launches),
            capabilities=charts.ranked_bars(data.capabilities),
            channel=self.config.channel.describe(),
        )

    def _case_of(self, kind: str, subject: str) -> dict[str, Any] | None:
        rows = self.store.run(
            "SELECT case_id FROM ws_cases WHERE subject_kind = ? AND subject = ?", [kind, subject]
        )
        return self.desk.case(rows[0][0]) if rows else None

    async def graph(self, request: Request) -> Response:
        user = await self._user(request)
        if user is None:
            return JSONResponse({"error": "login required"}, 401)
        cid = _bounded(request.query_params.get("id"), "id")
        expand = frozenset(v[:600] for v in request.query_params.getlist("expand")[:20])
        data = await self._db(lambda: self.ws.campaign_graph(cid, expand=expand))
        if data is None:
            return JSONResponse({"error": "no such campaign"}, 404)
        return Response(
            orjson.dumps(data), media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    async def account(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        aid = _bounded(request.query_params.get("id"), "id")
        data = await self._db(self.ws.account, aid, _page(request))
        if not data.exists:
            return self._absent(
                user, "No such account", f"{aid} has no exchanges or metadata in this store."
            )
        case = await self._db(self._case_of, "account", aid)
        return self._render(
            "account.html",
            user,
            a=data,
            case=case,
            features=FEATURES,
            timeline=charts.time_bars([data.timeline], height=110),
            page_size=PAGE_SIZE,
            channel=self.config.channel.describe(),
        )

    async def cases(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        status = request.query_params.get("status") or None
        if status and status not in STATUSES:
            raise InputError(f"status: one of {', '.join(STATUSES)}")
        assignee = (request.query_params.get("assignee") or "")[:64] or None
        page = _page(request)
        rows = await self._db(self.desk.cases, status, assignee, PAGE_SIZE, page * PAGE_SIZE)
        return self._render(
            "cases.html",
            user,
            cases=rows,
            status=status,
            assignee=assignee,
            page=page,
            page_size=PAGE_SIZE,
        )

    async def case(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        case = await self._db(self.desk.case, _bounded(request.query_params.get("id"), "id", 40))
        if case is None:
            return self._absent(user, "No such case")
        return self._render("case.html", user, case=case)

    async def search(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        query = (request.query_params.get("q") or "")[:300]
        page = _page(request)
        hits = await self._db(self.ws.search, query, PAGE_SIZE, page * PAGE_SIZE)
        return self._render("search.html", user, q=query, hits=hits, page=page, page_size=PAGE_SIZE)

    async def audit(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        page = _page(request)
        rows = await self._db(self.ws.audit_log, PAGE_SIZE, page * PAGE_SIZE)
        intact = await self._db(self.store.verify_audit_chain)
        return self._render(
            "audit.html", user, rows=rows, page=page, page_size=PAGE_SIZE, intact=intact
        )

    async def report(self, request: Request) -> Response:
        user = await self._need(request)
        if isinstance(user, Response):
            return user
        cid = _bounded(request.query_params.get("id"), "id")
        kind = request.query_params.get("format", "html")
        if kind not in ("html", "pdf"):
            raise InputError("format: html or pdf")
        data = await self._db(self.ws.campaign, cid)
        if data is None:
            return self._absent(user, "No such campaign")
        context = await self._db(report_context, self.ws, data, self.config.detector)
        html = self.env.get_template("evidence.html").render(**context, user=user)
        await self._db(
            self.store.audit,
            user.username,
            "workspace.report",
            {"campaign_id": cid, "format": kind, "records_sha256": context["digest"]},
        )
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cid)[:80]
        if kind == "pdf":
            pdf = await anyio.to_thread.run_sync(render_pdf, html)
            return Response(
                pdf,
                media_type="application/pdf",
                headers={"Content-Disposition": f'attachment; filename="evidence-{name}.pdf"'},
            )
        return HTMLResponse(
            html,
            headers={
                "Content-Disposition": f'inline; filename="evidence-{name}.html"',
                # Self-contained: its own inline styles, and no script at all.
                "Content-Security-Policy": REPORT_CSP,
            },
        )

    # -- changes --------------------------------------------------------------------------------
    def _back(self, form: dict[str, str]) -> str:
        return _safe_next(form.get("back"))

    async def case_open(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        user, form = posted
        kind = _bounded(form.get("subject_kind"), "subject_kind", 20)
        subject = _bounded(form.get("subject"), "subject")
        case_id = await self._db(self.desk.case_for, kind, subject, user.username)
        return RedirectResponse("/case?" + urlencode({"id": case_id}), 303)

    async def case_update(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        user, form = posted
        case_id = _bounded(form.get("case_id"), "case_id", 40)
        await self._db(
            lambda: self.desk.update_case(
                case_id,
                user.username,
                status=form.get("status") or None,
                assignee=form.get("assignee") if "assignee" in form else None,
                note=form.get("note"),
            )
        )
        return RedirectResponse("/case?" + urlencode({"id": case_id}), 303)

    async def action(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        user, form = posted
        kind = _bounded(form.get("subject_kind"), "subject_kind", 20)
        subject = _bounded(form.get("subject"), "subject")
        action = _bounded(form.get("action"), "action", 20)
        hours_raw = (form.get("expires_hours") or "").strip()
        try:
            hours = float(hours_raw) if hours_raw else None
        except ValueError:
            raise InputError("expires_hours: a number of hours") from None
        if hours is not None and (hours != hours or hours in (float("inf"), float("-inf"))):
            raise InputError("expires_hours: a number of hours")
        try:
            async with self._acting, _locked(self.ws.lock):
                self.ws.refresh()
                await self.desk.act(user.username, kind, subject, action, form.get("reason"), hours)
        except StateError as exc:
            await self._db(
                self.store.audit,
                user.username,
                "workspace.action.undelivered",
                {"subject": subject, "action": action, "error": str(exc)[:300]},
            )
            return self._render(
                "error.html",
                user,
                502,
                title="Not delivered",
                message=f"The gateways did not take the action ({exc}); nothing was recorded as enforced.",
            )
        return RedirectResponse(self._back(form), 303)

    async def label(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        user, form = posted
        account = _bounded(form.get("account_id"), "account_id")
        kind = form.get("kind")
        if kind not in ("false_positive", "restore"):
            raise InputError("kind: false_positive or restore")
        try:
            async with self._acting, _locked(self.ws.lock):
                self.ws.refresh()
                if kind == "false_positive":
                    await self.desk.mark_false_positive(user.username, account, form.get("reason"))
                else:
                    await self.desk.restore(user.username, account, form.get("reason"))
        except StateError as exc:
            return self._render("error.html", user, 502, title="Not delivered", message=str(exc))
        return RedirectResponse(self._back(form), 303)


@contextlib.asynccontextmanager
async def _locked(lock: Any):  # type: ignore[no-untyped-def]
    """Hold a threading lock from async code without blocking the event loop while waiting."""
    while not lock.acquire(blocking=False):
        await asyncio.sleep(0.005)
    try:
        yield
    finally:
        lock.release()


def _safe_next(target: str | None) -> str:
    """A same-site path to return to (never another host, never a scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:500]


class _SecurityHeaders:
    """Adds the CSP and friends to every response (pure ASGI, so streaming is untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for key, value in _HEADERS.items():
                    if key.lower().encode() not in present:
                        headers.append((key.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(config: WorkspaceConfig) -> Starlette:
    return WorkspaceApp(config).app

"""A TAXII 2.1 server for our collections, and push/pull against any TAXII 2.1 server.

Serves (``distillwatch share serve``): discovery (``/taxii2/``), one API root (``/api/``), its
collections, objects (GET with ``added_after``, ``limit``/``next`` paging, ``match[id]``,
``match[type]``; POST an envelope), manifests and status resources. Every endpoint but
discovery needs ``Authorization: Bearer <token>``; each token has read (``r``) and/or write
(``w``) permission per collection. Objects a partner POSTs are validated exactly as an imported
bundle (:func:`~distillwatch.sharing.stix.parse_bundle`): all or nothing, 422 with the reason.
Objects are kept in a DuckDB file, one row per (collection, id, version); posting the same
version again changes nothing.

Clients (``share push`` / ``share pull``) use ``taxii2-client``.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from distillwatch.errors import BundleError, InputError
from distillwatch.sharing.stix import MAX_BUNDLE_BYTES, parse_bundle

MEDIA = "application/taxii+json;version=2.1"
STIX_MEDIA = "application/stix+json;version=2.1"
DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass
class TaxiiConfig:
    """Collections and tokens: ``tokens[token][collection id]`` is ``r``, ``w`` or ``rw``."""

    title: str = "distillwatch"
    collections: list[dict[str, str]] = field(default_factory=list)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> TaxiiConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path}: expected an object with 'collections' and 'tokens'")
        collections = raw.get("collections")
        tokens = raw.get("tokens")
        if not isinstance(collections, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) for c in collections
        ):
            raise InputError(f"{path}: collections: a list of objects with an 'id'")
        ids = {c["id"] for c in collections}
        if not isinstance(tokens, dict):
            raise InputError(f"{path}: tokens: an object mapping token -> {{collection: r|w|rw}}")
        for token, grants in tokens.items():
            if len(token) < 16 or not isinstance(grants, dict):
                raise InputError(f"{path}: tokens: each token at least 16 characters, with grants")
            for cid, mode in grants.items():
                if cid not in ids or mode not in ("r", "w", "rw"):
                    raise InputError(f"{path}: tokens.{token[:4]}...: {cid!r}: {mode!r}")
        return cls(str(raw.get("title", "distillwatch")), collections, tokens)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ObjectStore:
    """(collection, id, version) -> object, with the time each was added. Thread-safe."""

    def __init__(self, path: Path) -> None:
        import duckdb

        self.con = duckdb.connect(str(path))
        self.con.execute(
            """CREATE TABLE IF NOT EXISTS taxii_objects (
                   collection VARCHAR, id VARCHAR, version VARCHAR, date_added VARCHAR,
                   type VARCHAR, obj VARCHAR, PRIMARY KEY (collection, id, version))"""
        )
        self.lock = threading.Lock()

    def add(self, collection: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        added = []
        with self.lock:
            for o in objects:
                version = str(o.get("modified") or o.get("created") or "")
                stamp = _now()
                exists = self.con.execute(
                    "SELECT date_added FROM taxii_objects WHERE collection=? AND id=? AND version=?",
                    [collection, o["id"], version],
                ).fetchone()
                if exists is None:
                    self.con.execute(
                        "INSERT INTO taxii_objects VALUES (?, ?, ?, ?, ?, ?)",
                        [collection, o["id"], version, stamp, o["type"], orjson.dumps(o).decode()],
                    )
                added.append({"id": o["id"], "version": version,
                              "message": "already present" if exists else "added"})  # fmt: skip
        return added

    def page(self, collection: str, added_after: str | None, offset: int, limit: int,
             ids: list[str], types: list[str]) -> tuple[list[tuple[str, str, str, str]], bool]:  # fmt: skip
        """Latest version of each object, in the order added: (id, version, date_added, obj)."""
        where, args = ["collection = ?"], [collection]
        if added_after:
            where.append("date_added > ?")
            args.append(added_after)
        if ids:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            args += ids
        if types:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            args += types
        with self.lock:
            rows = self.con.execute(
                f"""SELECT id, version, date_added, obj FROM (
                        SELECT *, row_number() OVER (PARTITION BY id ORDER BY version DESC) AS r
                        FROM taxii_objects WHERE {" AND ".join(where)})
                    WHERE r = 1 ORDER BY date_added, id LIMIT ? OFFSET ?""",
                [*args, limit + 1, offset],
            ).fetchall()
        return rows[:limit], len(rows) > limit


def app(config: TaxiiConfig, store_path: Path):  # -> Starlette
    """The TAXII 2.1 server as an ASGI app."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    objects = ObjectStore(store_path)
    statuses: dict[str, dict[str, Any]] = {}
    by_id = {c["id"]: c for c in config.collections}

    def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(body), status, headers=headers, media_type=MEDIA)

    def error(status: int, title: str, description: str = "") -> Response:
        return reply({"title": title, "description": description[:500], "http_status": str(status)}, status)  # fmt: skip

    def grants(request: Request) -> dict[str, str] | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for known, granted in config.tokens.items():
            if _same(known, token.strip()):
                return granted
        return None

    def check(request: Request, collection: str | None, mode: str) -> Response | None:
        accept = request.headers.get("accept", MEDIA)
        if "application/taxii+json" not in accept and "*/*" not in accept:
            return error(406, "Not Acceptable", f"use Accept: {MEDIA}")
        granted = grants(request)
        if granted is None:
            return error(401, "Unauthorized", "send Authorization: Bearer <token>")
        if collection is not None:
            if collection not in by_id:
                return error(404, "Not Found", "no such collection")
            if not mode or mode not in granted.get(collection, ""):
                return error(
                    403, "Forbidden", f"this token cannot {'read' if mode == 'r' else 'write'} it"
                )
        return None

    def describe(c: dict[str, str], granted: dict[str, str]) -> dict[str, Any]:
        mode = granted.get(c["id"], "")
        return {"id": c["id"], "title": c.get("title", c["id"]), "description": c.get("description", ""),
                "can_read": "r" in mode, "can_write": "w" in mode, "media_types": [STIX_MEDIA]}  # fmt: skip

    async def discovery(request: Request) -> Response:
        return reply({"title": config.title, "default": f"{request.base_url}api/",
                      "api_roots": [f"{request.base_url}api/"]})  # fmt: skip

    async def api_root(request: Request) -> Response:
        return check(request, None, "r") or reply({
            "title": config.title, "versions": [MEDIA], "max_content_length": MAX_BUNDLE_BYTES})  # fmt: skip

    async def collections(request: Request) -> Response:
        refused = check(request, None, "r")
        if refused:
            return refused
        granted = grants(request) or {}
        return reply({"collections": [describe(c, granted) for c in config.collections if c["id"] in granted]})  # fmt: skip

    async def collection(request: Request) -> Response:
        cid = request.path_params["cid"]
        refused = check(request, None, "r")
        if refused:
            return refused
        granted = grants(request) or {}
        if cid not in by_id or cid not in granted:
            return error(404, "Not Found", "no such collection for this token")
        return reply(describe(by_id[cid], granted))

    def _query(request: Request) -> tuple[str | None, int, int, list[str], list[str]] | Response:
        q = request.query_params
        try:
            limit = min(MAX_PAGE, max(1, int(q.get("limit", DEFAULT_PAGE))))
            offset = max(0, int(q.get("next", 0)))
        except ValueError:
            return error(400, "Bad Request", "limit and next must be integers")
        after = q.get("added_after")
        if after is not None and len(after) > 40:
            return error(400, "Bad Request", "added_after: an RFC 3339 timestamp")
        ids = [v for v in q.get("match[id]", "").split(",") if v][:100]
        types = [v for v in q.get("match[type]", "").split(",") if v][:50]
        return after, limit, offset, ids, types

    def _listing(
        request: Request,
    ) -> tuple[list[tuple[str, str, str, str]], dict[str, Any]] | Response:
        """One page of a readable collection (objects and manifest list the same rows)."""
        cid = request.path_params["cid"]
        refused = check(request, cid, "r")
        if refused:
            return refused
        query = _query(request)
        if isinstance(query, Response):
            return query
        after, limit, offset, ids, types = query
        rows, more = objects.page(cid, after, offset, limit, ids, types)
        return rows, {"more": more, **({"next": str(offset + limit)} if more else {})}

    async def get_objects(request: Request) -> Response:
        listing = _listing(request)
        if isinstance(listing, Response):
            return listing
        rows, paging = listing
        headers = {"X-TAXII-Date-Added-First": rows[0][2], "X-TAXII-Date-Added-Last": rows[-1][2]} if rows else None  # fmt: skip
        return reply({**paging, "objects": [orjson.loads(r[3]) for r in rows]}, headers=headers)

    async def manifest(request: Request) -> Response:
        listing = _listing(request)
        if isinstance(listing, Response):
            return listing
        rows, paging = listing
        return reply({**paging, "objects": [
            {"id": i, "date_added": d, "version": v, "media_type": STIX_MEDIA} for i, v, d, _ in rows]})  # fmt: skip

    async def post_objects(request: Request) -> Response:
        cid = request.path_params["cid"]
        refused = check(request, cid, "w")
        if refused:
            return refused
        if not request.headers.get("content-type", "").startswith("application/taxii+json"):
            return error(415, "Unsupported Media Type", f"use Content-Type: {MEDIA}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BUNDLE_BYTES:
                return error(413, "Payload Too Large", f"at most {MAX_BUNDLE_BYTES:,} bytes")
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error(400, "Bad Request", "not JSON")
        if not isinstance(envelope, dict) or not isinstance(envelope.get("objects"), list):
            return error(400, "Bad Request", 'expected an envelope: {"objects": [...]}')
        bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": envelope["objects"]}
        try:
            parse_bundle(bundle, f"POST to {cid}")
        except BundleError as exc:
            return error(422, "Unprocessable Entity", str(exc))
        added = objects.add(cid, envelope["objects"])
        status = {"id": str(uuid.uuid4()), "status": "complete", "request_timestamp": _now(),
                  "total_count": len(added), "success_count": len(added), "failure_count": 0,
                  "pending_count": 0, "successes": added}  # fmt: skip
        statuses[status["id"]] = {"collection": cid, **status}
        if len(statuses) > 10_000:
            statuses.pop(next(iter(statuses)))
        return reply(status, 202)

    async def get_status(request: Request) -> Response:
        refused = check(request, None, "r")
        if refused:
            return refused
        found = statuses.get(request.path_params["sid"])
        if found is None or found["collection"] not in (grants(request) or {}):
            return error(404, "Not Found", "no such status")
        return reply({k: v for k, v in found.items() if k != "collection"})

    async def objects_route(request: Request) -> Response:
        return await (post_objects(request) if request.method == "POST" else get_objects(request))

    routes = [
        Route("/taxii2/", discovery, methods=["GET"]),
        Route("/api/", api_root, methods=["GET"]),
        Route("/api/collections/", collections, methods=["GET"]),
        Route("/api/collections/{cid}/", collection, methods=["GET"]),
        Route("/api/collections/{cid}/objects/", objects_route, methods=["GET", "POST"]),
        Route("/api/collections/{cid}/manifest/", manifest, methods=["GET"]),
        Route("/api/status/{sid}/", get_status, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


# -- clients --------------------------------------------------------------------------------


class _Bearer:
    """requests auth: ``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def _collection(url: str, token: str) -> Any:
    from taxii2client.v21 import Collection

    return Collection(url if url.endswith("/") else url + "/", auth=_Bearer(token))


def push(bundle: dict[str, Any], url: str, token: str) -> dict[str, Any]:
    """POST a bundle's objects to a TAXII 2.1 collection; returns the status resource."""
    from taxii2client.exceptions import TAXIIServiceException

    try:
        status = _collection(url, token).add_objects({"objects": bundle["objects"]},
                                                     wait_for_completion=False)  # fmt: skip
    except (TAXIIServiceException, OSError) as exc:
        raise InputError(f"{url}: push failed ({str(exc)[:300]})") from None
    return {"status": status.status, "total_count": status.total_count,
            "success_count": status.success_count, "failure_count": status.failure_count}  # fmt: skip


def pull(url: str, token: str, added_after: str | None = None, per_page: int = DEFAULT_PAGE) -> dict[str, Any]:  # fmt: skip
    """Every object of a TAXII 2.1 collection (paged), as one bundle dict (not yet validated)."""
    from taxii2client.exceptions import TAXIIServiceException
    from taxii2client.v21 import as_pages

    collection = _collection(url, token)
    found: list[dict[str, Any]] = []
    kwargs = {"added_after": added_after} if added_after else {}
    try:
        for page in as_pages(collection.get_objects, per_request=per_page, **kwargs):
            found += page.get("objects", [])
            if len(found) > 200_000:
                raise InputError(f"{url}: more than 200,000 objects; pull with --added-after")
    except (TAXIIServiceException, OSError) as exc:
        raise InputError(f"{url}: pull failed ({str(exc)[:300]})") from None
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": found}

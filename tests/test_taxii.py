"""TAXII 2.1 both ways over loopback: our server (share serve) and taxii2-client (share push /
pull), tokens per collection, paging, hostile posts refused whole."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest

from distillwatch.enforce.processes import free_port
from distillwatch.sharing import read_bundle
from distillwatch.sharing.taxii import MEDIA
from tests.gateway import start, stop
from tests.test_sharing import _good_bundle, _hostile, bundle_dir  # noqa: F401  (fixture)

WRITER, READER = "writer-token-0123456789", "reader-token-0123456789"
H = {"Accept": MEDIA}


@pytest.fixture
def taxii(tmp_path):
    config = tmp_path / "taxii.json"
    config.write_text(json.dumps({
        "title": "lab-a sharing",
        "collections": [{"id": "distillation", "title": "Distillation campaigns"},
                        {"id": "internal", "title": "Not for partners"}],
        "tokens": {WRITER: {"distillation": "rw"}, READER: {"distillation": "r"}},
    }))  # fmt: skip
    port = free_port()
    proc = start(["share", "serve", "--config", str(config), "--store", str(tmp_path / "t.duckdb"),
                  "--listen", f"127.0.0.1:{port}"], f"http://127.0.0.1:{port}/taxii2/")  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def _auth(token: str) -> dict[str, str]:
    return {**H, "Authorization": f"Bearer {token}"}


def test_push_and_pull_through_taxii(taxii, bundle_dir, tmp_path, cli):  # noqa: F811
    collection = f"{taxii}/api/collections/distillation/"
    assert httpx.get(f"{taxii}/taxii2/", headers=H).json()["api_roots"] == [f"{taxii}/api/"]
    assert httpx.get(f"{taxii}/api/", headers=H).status_code == 401
    assert (
        httpx.get(f"{taxii}/api/", headers={**_auth(READER), "Accept": "text/html"}).status_code
        == 406
    )
    listed = httpx.get(f"{taxii}/api/collections/", headers=_auth(READER)).json()["collections"]
    assert [(c["id"], c["can_read"], c["can_write"]) for c in listed] == [
        ("distillation", True, False)
    ]
    assert (
        httpx.get(f"{taxii}/api/collections/internal/objects/", headers=_auth(WRITER)).status_code
        == 403
    )

    bundle = bundle_dir / "out1" / "indicators.json"
    writer, reader = tmp_path / "w.token", tmp_path / "r.token"
    writer.write_text(WRITER)
    reader.write_text(READER)
    denied = cli("share", "push", bundle, "--url", collection, "--token-file", reader)
    # taxii2-client reads the collection first (can_write: false) and stops there.
    assert denied.returncode != 0 and "does not allow writing" in denied.stderr
    pushed = cli("share", "push", bundle, "--url", collection, "--token-file", writer)
    assert pushed.returncode == 0, pushed.stderr
    total = len(orjson.loads(bundle.read_bytes())["objects"])
    assert f"{total} of {total} objects accepted" in pushed.stdout
    again = cli("share", "push", bundle, "--url", collection, "--token-file", writer)
    assert again.returncode == 0  # the same versions again: stored once

    # Paging by hand: limit / next, and the manifest.
    seen, offset = [], None
    while True:
        params = {"limit": "7", **({"next": offset} if offset else {})}
        page = httpx.get(f"{collection}objects/", params=params, headers=_auth(READER)).json()
        seen += [o["id"] for o in page["objects"]]
        if not page["more"]:
            break
        offset = page["next"]
    assert len(seen) == len(set(seen)) == total
    manifest = httpx.get(
        f"{collection}manifest/", params={"limit": "1000"}, headers=_auth(READER)
    ).json()
    assert len(manifest["objects"]) == total
    last = manifest["objects"][-1]["date_added"]
    newer = httpx.get(
        f"{collection}objects/", params={"added_after": last}, headers=_auth(READER)
    ).json()
    assert newer["objects"] == []

    trust = tmp_path / "trust.txt"
    trust.write_text("lab-a\n")
    into = tmp_path / "partners"
    pulled = cli(
        "share",
        "pull",
        "--url",
        collection,
        "--token-file",
        reader,
        "--into",
        into,
        "--trust",
        trust,
    )
    assert pulled.returncode == 0, pulled.stderr
    [stored] = list(into.glob("*.json"))
    assert read_bundle(stored).links == read_bundle(bundle).links
    untrusted = tmp_path / "other.txt"
    untrusted.write_text("some-other-lab\n")
    refused = cli("share", "pull", "--url", collection, "--token-file", reader, "--into", tmp_path / "x",
                  "--trust", untrusted)  # fmt: skip
    assert refused.returncode != 0 and "trust list" in refused.stderr + refused.stdout
    assert not (tmp_path / "x").exists()


def test_hostile_posts_are_refused_whole(taxii, bundle_dir):  # noqa: F811
    collection = f"{taxii}/api/collections/distillation/"
    headers = {**_auth(WRITER), "Content-Type": MEDIA}
    for case in ("script in a string", "unknown extension", "forged source", "bad ip pattern"):
        body = {"objects": orjson.loads(_hostile(_good_bundle(bundle_dir), case))["objects"]}
        response = httpx.post(f"{collection}objects/", content=orjson.dumps(body), headers=headers)
        assert response.status_code == 422, (case, response.text)
    assert httpx.post(f"{collection}objects/", content=b"{", headers=headers).status_code == 400
    good = {"objects": _good_bundle(bundle_dir)["objects"]}
    as_reader = {**_auth(READER), "Content-Type": MEDIA}
    assert (
        httpx.post(
            f"{collection}objects/", content=orjson.dumps(good), headers=as_reader
        ).status_code
        == 403
    )
    wrong_type = {**headers, "Content-Type": "application/json"}
    assert httpx.post(f"{collection}objects/", content=b"{}", headers=wrong_type).status_code == 415
    empty = httpx.get(f"{collection}objects/", headers=_auth(READER)).json()
    assert empty["objects"] == []  # nothing of any refused post was stored

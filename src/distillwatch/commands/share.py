"""``distillwatch share``: indicator bundles to and from partner labs (STIX 2.1, TAXII 2.1)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import typer
from rich.table import Table

from distillwatch.commands._app import app, console, fail
from distillwatch.errors import BundleError, InputError, SharingKeyError, StoreError
from distillwatch.terminal import safe_text

if TYPE_CHECKING:
    from distillwatch.sharing.signing import SigningKey

share_app = typer.Typer(
    help="Share campaign indicators: export, import (validated), TAXII 2.1 serve / push / pull.",
    no_args_is_help=True,
)
app.add_typer(share_app, name="share")
TOKEN_ENV = "DISTILLWATCH_TAXII_TOKEN"


def _trust(path: Path | None, trust_any: bool) -> set[str] | None:
    if trust_any:
        return None
    if path is None:
        raise fail("give --trust FILE (identity ids or names, one per line) or --trust-any")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise fail(f"{path}: {exc.strerror}") from None
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _token(path: Path | None) -> str:
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise fail(f"{path}: {exc.strerror}") from None
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    raise fail(f"give --token-file FILE or set {TOKEN_ENV}")


def _accept(raw: bytes, where: str, trusted: set[str] | None, into: Path,
            signature: bytes | None = None) -> tuple[Path, object]:  # fmt: skip
    """Validate a bundle (all or nothing) and, if it passes, store it in ``into`` (with its
    signature beside it, for gateways that check signatures: proxy --trust-keys)."""
    from distillwatch.sharing.feedback import write_bundle_file
    from distillwatch.sharing.signing import signature_path
    from distillwatch.sharing.stix import parse_bundle

    found = parse_bundle(raw, where, trusted)
    target = write_bundle_file(into, next(iter(found.sources.values()), "unknown"), raw)
    if signature is not None:
        # A gateway that read the bundle before its signature was there reads it again: it
        # watches both files.
        signature_path(target).write_bytes(signature)
    return target, found


@share_app.command("export")
def export(
    store_path: Path = typer.Option(..., "--store", "-s", help="The store detect ran on."),
    verdicts: Path = typer.Option(..., "--verdicts", help="That run's verdicts.json."),
    key_path: Path = typer.Option(..., "--key", help="The sharing group's key file."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle to write."),
    producer: str = typer.Option("distillwatch", "--producer", help="Our STIX identity's name."),
    tlp: str = typer.Option("amber", "--tlp", help="TLP 2.0 level: clear, green, amber, amber+strict, red."),
    signing_key: Path | None = typer.Option(None, "--signing-key", help="Sign the bundle (share keygen): writes OUT.sig; --producer becomes the key's name."),
) -> None:  # fmt: skip
    """Write the campaigns of a detect run as a bundle for one sharing group (its key hashes the
    templates and cards: each group gets values only its members can match), signed with
    --signing-key so that partners importing with --trust-keys know it is ours."""
    from distillwatch.sharing import SharingKey, write_indicators
    from distillwatch.sharing.stix import TLP2
    from distillwatch.store import Store

    if tlp not in TLP2:
        raise fail(f"--tlp must be one of {', '.join(TLP2)}")
    try:
        key = SharingKey.read(key_path)
        signer = _signing_key(signing_key)
        producer = signer.name if signer is not None else producer
        doc = json.loads(verdicts.read_text())
        with Store(store_path) as store:
            written = write_indicators(store, doc, out, key, producer, tlp)
    except (SharingKeyError, StoreError) as exc:
        raise fail(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise fail(f"{verdicts}: {exc}") from None
    artefacts = sum(len(c.artefacts) for c in written.campaigns)
    signed = f", signed as {signer.name}" if signer is not None and _sign(out, signer) else ""
    console.print(safe_text(f"{out}: {len(written.campaigns)} campaigns, {artefacts:,} indicators, "
                            f"{written.objects:,} STIX objects (TLP:{tlp.upper()}, key {key.key_id}{signed})"),
                  highlight=False)  # fmt: skip


def _signing_key(path: Path | None) -> SigningKey | None:
    from distillwatch.sharing.signing import SigningKey

    return SigningKey.read(path) if path is not None else None


def _sign(bundle: Path, signer: SigningKey) -> Path:
    """Write ``BUNDLE.sig`` for the bundle's bytes as they are on disk."""
    from distillwatch.sharing.signing import signature_path

    target = signature_path(bundle)
    target.write_text(signer.sign(bundle.read_bytes()) + "\n")
    return target


@share_app.command("keygen")
def keygen(
    name: str = typer.Option(..., "--name", help="The name we sign as: our --producer, on partners' trust lists."),
    out: Path = typer.Option(..., "--out", "-o", help="Private key file to write (0600); OUT.pub beside it."),
) -> None:  # fmt: skip
    """Make an Ed25519 signing key for our bundles. Give partners the line in OUT.pub for their
    --trust-keys file; keep OUT itself private."""
    from distillwatch.sharing.signing import SigningKey

    if out.exists():
        raise fail(f"{out} exists: not overwriting a signing key")
    try:
        key = SigningKey.generate(name)
        public = key.write(out)
    except SharingKeyError as exc:
        raise fail(str(exc)) from None
    console.print(safe_text(f"signing key: {out}\npublic key for partners' --trust-keys "
                            f"({public}):\n{key.public_line()}"), highlight=False)  # fmt: skip


@share_app.command("sign")
def sign(
    bundles: list[Path] = typer.Argument(..., help="Bundles to sign (e.g. detect's indicators.json)."),
    signing_key: Path = typer.Option(..., "--signing-key", help="Our signing key (share keygen)."),
) -> None:  # fmt: skip
    """Write BUNDLE.sig beside each bundle. A bundle is signed as it is: one whose producer
    is not the key's name is refused by partners (check with share import --trust-keys)."""
    from distillwatch.sharing.signing import SigningKey

    try:
        signer = SigningKey.read(signing_key)
        for bundle in bundles:
            target = _sign(bundle, signer)
            console.print(safe_text(f"{target}: signed as {signer.name}"), highlight=False)
    except SharingKeyError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.filename}: {exc.strerror}") from None


@share_app.command("import")
def import_(
    bundles: list[Path] = typer.Argument(..., help="Bundles received from partners."),
    into: Path = typer.Option(..., "--into", help="Folder the gateways load (--indicators FOLDER)."),
    trust: Path | None = typer.Option(None, "--trust", help="Trusted sources: identity ids or names, one per line."),
    trust_keys: Path | None = typer.Option(None, "--trust-keys", help="Trusted signers: '<name> ed25519 <base64>' lines (their share keygen .pub); each bundle needs BUNDLE.sig."),
    trust_any: bool = typer.Option(False, "--trust-any", help="Accept any source (testing only)."),
) -> None:  # fmt: skip
    """Validate each bundle (size, schema, extension version, expiry, source on the trust list,
    or with --trust-keys a signature by a trusted key naming the bundle's source); store the
    ones that pass in INTO, refuse the others whole, and say why."""
    if sum(x is not None and x is not False for x in (trust, trust_keys, trust_any)) > 1:
        raise fail("give one of --trust, --trust-keys or --trust-any")
    signers = None
    if trust_keys is not None:
        from distillwatch.sharing.signing import read_trusted_keys

        try:
            signers = read_trusted_keys(trust_keys)
        except SharingKeyError as exc:
            raise fail(str(exc)) from None
    trusted = _trust(trust, trust_any) if signers is None else None
    table = Table(title="Import")
    for column in ("bundle", "result", "source", "campaigns", "indicators", "expired"):
        table.add_column(column, overflow="fold")
    refused = 0
    for path in bundles:
        try:
            raw = path.read_bytes() if path.stat().st_size <= 64 * 1024 * 1024 else b""
            if not raw:
                raise BundleError(f"{path}: too large to consider")
            signature = None
            if signers is not None:
                from distillwatch.sharing.signing import signed_by

                signer, signature = signed_by(path, raw, signers)
                trusted = {signer}
            target, found = _accept(raw, str(path), trusted, into, signature)
        except (BundleError, OSError) as exc:
            refused += 1
            table.add_row(safe_text(str(path)), safe_text(f"refused: {exc}"), "", "", "", "")
            continue
        table.add_row(safe_text(str(path)), safe_text(f"imported as {target.name}"),
                      safe_text(", ".join(found.sources.values())), str(len(found.campaigns)),
                      f"{len(found.links):,}", str(found.expired))  # type: ignore[attr-defined]  # fmt: skip
    console.print(table)
    if refused:
        raise typer.Exit(1)


@share_app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", help="JSON: title, collections [{id, title}], tokens {token: {collection: r|w|rw}}."),
    store_path: Path = typer.Option(Path("taxii.duckdb"), "--store", help="Where collections' objects are kept."),
    listen: str = typer.Option("127.0.0.1:9700", "--listen", help="HOST:PORT."),
) -> None:  # fmt: skip
    """Serve our collections over TAXII 2.1 (discovery /taxii2/, API root /api/)."""
    import uvicorn

    from distillwatch.commands.proxy import _listen
    from distillwatch.sharing.taxii import TaxiiConfig
    from distillwatch.sharing.taxii import app as taxii_app

    host, port = _listen(listen)
    try:
        settings = TaxiiConfig.read(config)
    except InputError as exc:
        raise fail(str(exc)) from None
    console.print(
        f"TAXII 2.1 on http://{host}:{port}/taxii2/ ({len(settings.collections)} collections)"
    )
    uvicorn.run(taxii_app(settings, store_path), host=host, port=port, log_level="warning")


@share_app.command("push")
def push_(
    bundle: Path = typer.Argument(..., help="Bundle to send (detect's indicators.json or share export's)."),
    url: str = typer.Option(..., "--url", help="The collection's URL: .../collections/<id>/"),
    token_file: Path | None = typer.Option(None, "--token-file", help=f"Bearer token (default: ${TOKEN_ENV})."),
) -> None:  # fmt: skip
    """POST a bundle's objects to a TAXII 2.1 collection (ours or a partner's)."""
    from distillwatch.sharing.stix import read_bundle
    from distillwatch.sharing.taxii import push

    token = _token(token_file)
    try:
        read_bundle(bundle)  # never send what we would refuse ourselves
        status = push(orjson.loads(bundle.read_bytes()), url, token)
    except (BundleError, InputError) as exc:
        raise fail(str(exc)) from None
    console.print(f"pushed: {status['success_count']} of {status['total_count']} objects accepted "
                  f"({status['status']})", highlight=False)  # fmt: skip


@share_app.command("pull")
def pull_(
    url: str = typer.Option(..., "--url", help="The collection's URL: .../collections/<id>/"),
    into: Path = typer.Option(..., "--into", help="Folder the gateways load (--indicators FOLDER)."),
    token_file: Path | None = typer.Option(None, "--token-file", help=f"Bearer token (default: ${TOKEN_ENV})."),
    trust: Path | None = typer.Option(None, "--trust", help="Trusted sources, one per line."),
    trust_any: bool = typer.Option(False, "--trust-any", help="Accept any source (testing only)."),
    added_after: str | None = typer.Option(None, "--added-after", help="Only objects added after this time."),
) -> None:  # fmt: skip
    """Fetch a TAXII 2.1 collection (all pages), validate it as one bundle and import it."""
    from distillwatch.sharing.taxii import pull

    trusted = _trust(trust, trust_any)
    token = _token(token_file)
    try:
        bundle = pull(url, token, added_after)
        target, found = _accept(orjson.dumps(bundle), url, trusted, into)
    except (BundleError, InputError) as exc:
        raise fail(str(exc)) from None
    console.print(safe_text(
        f"pulled {len(bundle['objects']):,} objects: {len(found.campaigns)} campaigns, "  # type: ignore[attr-defined]
        f"{len(found.links):,} indicators -> {target}"))  # type: ignore[attr-defined]  # fmt: skip


@share_app.command("report-false-positive")
def report_false_positive(
    indicators: list[str] = typer.Option(..., "--indicator", help="Id of an indicator that matched an innocent account (repeat)."),
    explanation: str = typer.Option(..., "--explanation", help="Why (plain text, no customer data)."),
    producer: str = typer.Option("distillwatch", "--producer", help="Our STIX identity's name."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle to send back (share push, or by hand)."),
) -> None:  # fmt: skip
    """Tell the partner whose indicators matched accounts we know to be innocent: a STIX
    opinion (strongly-disagree) on them. Gateways and detection that import it stop using them."""
    from distillwatch.sharing.stix import false_positive_report

    try:
        bundle = false_positive_report(list(indicators), explanation, producer)
    except ValueError as exc:
        raise fail(str(exc)) from None
    out.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    console.print(
        safe_text(f"{out}: a false-positive opinion on {len(set(indicators))} indicator(s)")
    )


@share_app.command("outbox")
def outbox(
    store_path: Path = typer.Option(..., "--store", "-s", help="The store the workspace writes."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the reports (share push, or by hand); without it, list what is owed."),
    producer: str = typer.Option("distillwatch", "--producer", help="Our STIX identity's name."),
    tlp: str = typer.Option("amber", "--tlp", help="TLP 2.0 level: clear, green, amber, amber+strict, red."),
) -> None:  # fmt: skip
    """False-positive reports owed to partners: accounts their indicators linked that analysts
    found innocent in the workspace. With --out, write one STIX opinion bundle per partner
    (naming only the indicators, never an account) and mark them sent."""
    from distillwatch.sharing.feedback import pending, send_reports
    from distillwatch.sharing.stix import TLP2
    from distillwatch.store import Store

    if tlp not in TLP2:
        raise fail(f"--tlp must be one of {', '.join(TLP2)}")
    try:
        with Store(store_path, read_only=out is None) as store:
            if out is None:
                owed = pending(store)
                table = Table("partner", "indicators", "accounts")
                for source, (ids, accounts) in sorted(owed.items()):
                    table.add_row(safe_text(source), f"{len(ids):,}", f"{len(accounts):,}")
                console.print(table if owed else "nothing owed")
                return
            reports = send_reports(store, out, producer, tlp)
    except StoreError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    for report in reports:
        console.print(safe_text(f"{report.path}: {report.source}, a false-positive opinion on "
                                f"{report.indicators} indicator(s) ({report.accounts} account(s))"))  # fmt: skip
    if not reports:
        console.print("nothing owed")

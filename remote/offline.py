"""Offline signing of a site's index: the signing keys never touch the publishing server.

1. on the server, ``publish --unsigned`` writes everything (packs, objects, deltas)
   and the next index, canonical and unsigned, to ``SITE/.index.unsigned``
   (``site.STAGED_INDEX``); clients still see the live index;
2. on the offline machine, :func:`sign_offline` signs that file's bytes and every
   pack it names (a pack signature covers only the pack's SHA-256, which the index
   states) with one or more keys, into a *signature bundle* (below);
3. on the server, :func:`activate` checks the bundles against the staged index and a
   keyring (every signature good, at least ``min_signatures`` keys on the index and on
   each pack), checks that every file the index names is on the site, then writes the
   pack signatures, the index's signature file and last the index (publish's order).

A bundle for the index that is live already adds its signatures to it (a second
signer coming later) without changing the index.

The bundle is canonical JSON (as the index: sorted keys, no spaces, ASCII, no
trailing newline)::

    {"format":"sealtree-index-signatures",
     "index":{"sha256":HEX,"signatures":[{"key":HEX,"signature":HEX},...]},
     "packs":[{"sha256":HEX,"signatures":[...]},...],"version":1}

``index.signatures`` are over ``remote.index``'s message (its own domain),
``packs[].signatures`` over ``pack.signature``'s; packs sorted by ``sha256``,
signatures by ``key`` (an Ed25519 key id), one per key.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pack.keys import KeyId, Keyring
from pack.reader import PackReader
from pack.signature import MAX_SIGNATURES, Signature, pack_sha256, read_signatures, sign, write_signatures
from pack.signature import signed_message as pack_message
from pack.verify import check_trust
from store.atomic import atomic_write, fsync_dir
from store.errors import ObjectMissing, SignatureError, UsageError
from store.lock import flock

from . import site
from .errors import IndexExpired, IndexRollback
from .index import SiteIndex, check_index_trust, decode_index, index_sha256, sign_index
from .index import signed_message as index_message
from .publish import LOCK, read_site_index_and_bytes, read_staged_index

BUNDLE_FORMAT = "sealtree-index-signatures"
BUNDLE_VERSION = 1
BUNDLE_SUFFIX = ".sigs"
MAX_BUNDLE = 64 << 20  # 65536 packs, a few signatures each


@dataclass(frozen=True)
class Bundle:
    """Signatures made offline: over the index whose SHA-256 is ``index``, and over packs."""

    index: bytes
    index_signatures: tuple[Signature, ...]
    packs: Mapping[bytes, tuple[Signature, ...]]


@dataclass
class Activated:
    """What :func:`activate` did."""

    index: SiteIndex
    sha256: bytes
    made_live: bool  # False: the bundles were for the live index (signatures added only)
    index_signers: tuple[KeyId, ...] = ()
    signatures_added: int = 0
    packs: list[bytes] = field(default_factory=list)


# -- the bundle ----------------------------------------------------------------------------

def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _signature_list(signatures: Iterable[Signature]) -> list[dict[str, str]]:
    by_key = {s.key_id: s for s in signatures}
    return [{"key": k.hex(), "signature": by_key[k].value.hex()} for k in sorted(by_key)]


def encode_bundle(bundle: Bundle) -> bytes:
    return _canonical({
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "index": {"sha256": bundle.index.hex(), "signatures": _signature_list(bundle.index_signatures)},
        "packs": [{"sha256": sha.hex(), "signatures": _signature_list(bundle.packs[sha])}
                  for sha in sorted(bundle.packs)]})


def _hex(value: Any, size: int, what: str, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size or value.strip("0123456789abcdef"):
        raise SignatureError(f"{what} must be {2 * size} lowercase hex digits", path=where)
    return bytes.fromhex(value)


def _fields(doc: Any, keys: set[str], what: str, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != keys:
        raise SignatureError(f"{what} must be a JSON object with exactly the keys {sorted(keys)}",
                             path=where)
    return doc


def _signatures(doc: Any, what: str, where: str) -> tuple[Signature, ...]:
    if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_SIGNATURES:
        raise SignatureError(f"{what}: 1 to {MAX_SIGNATURES} signatures", path=where)
    out = tuple(Signature(KeyId(_hex(item["key"], 32, f"{what}: key", where)),
                          _hex(item["signature"], 64, f"{what}: signature", where))
                for item in (_fields(d, {"key", "signature"}, what, where) for d in doc))
    if len({s.key_id for s in out}) != len(out):
        raise SignatureError(f"{what}: two signatures by one key", path=where)
    return out


def decode_bundle(data: bytes, where: str) -> Bundle:
    """Parse a bundle; SignatureError naming ``where`` unless it is the canonical encoding of a
    valid one (its signatures are checked by :func:`activate`, not here)."""
    if len(data) > MAX_BUNDLE:
        raise SignatureError(f"more than {MAX_BUNDLE} bytes: not a signature bundle", path=where)
    try:
        doc = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError("not a signature bundle (not ASCII JSON)", path=where) from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT \
            or doc.get("version") != BUNDLE_VERSION:
        raise SignatureError(f"not a signature bundle (\"format\": \"{BUNDLE_FORMAT}\", "
                             f"\"version\": {BUNDLE_VERSION})", path=where)
    top = _fields(doc, {"format", "version", "index", "packs"}, "the bundle", where)
    index = _fields(top["index"], {"sha256", "signatures"}, "index", where)
    packs_doc = top["packs"]
    if not isinstance(packs_doc, list):
        raise SignatureError("packs must be a JSON array", path=where)
    packs: dict[bytes, tuple[Signature, ...]] = {}
    for item in packs_doc:
        entry = _fields(item, {"sha256", "signatures"}, "a pack", where)
        sha = _hex(entry["sha256"], 32, "a pack's sha256", where)
        packs[sha] = _signatures(entry["signatures"], f"pack {sha.hex()}", where)
    bundle = Bundle(_hex(index["sha256"], 32, "index sha256", where),
                    _signatures(index["signatures"], "index", where), packs)
    if encode_bundle(bundle) != data:
        raise SignatureError("not in canonical form (sorted keys and lists, no spaces, ASCII, "
                             "no trailing newline)", path=where)
    return bundle


def read_bundle(path: str) -> Bundle:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BUNDLE + 1)
    except FileNotFoundError:
        raise SignatureError("no such signature bundle", path=path) from None
    return decode_bundle(data, path)


# -- signing (the offline machine) ---------------------------------------------------------

def _merge(old: Iterable[Signature], new: Iterable[Signature]) -> tuple[Signature, ...]:
    """One signature per key, ``new`` replacing ``old``'s of the same key, sorted by key."""
    by_key = {s.key_id: s for s in old}
    by_key.update({s.key_id: s for s in new})
    return tuple(by_key[k] for k in sorted(by_key))


def sign_offline(data: bytes, where: str, keys: Sequence[Ed25519PrivateKey],
                 existing: Bundle | None = None) -> tuple[SiteIndex, Bundle]:
    """Sign the index bytes ``data`` (checked to be a canonical index, IndexFormatError naming
    ``where``) and every pack it names with each of ``keys``; add to ``existing`` (a bundle
    of the same index: another signer's) when given."""
    if not keys:
        raise UsageError("signing needs at least one key")
    index = decode_index(data, where)
    digest = index_sha256(data)
    if existing is not None and existing.index != digest:
        raise SignatureError(f"the bundle holds signatures of another index (sha256 "
                             f"{existing.index.hex()}; this one is {digest.hex()})", path=where)
    packs = {e.sha256 for e in index.refs.values()}
    old_packs = existing.packs if existing is not None else {}
    bundle = Bundle(
        digest,
        _merge(existing.index_signatures if existing is not None else (),
               [sign_index(data, k) for k in keys]),
        {sha: _merge(old_packs.get(sha, ()), [sign(sha, k) for k in keys]) for sha in sorted(packs)})
    return index, bundle


# -- activation (the server) ---------------------------------------------------------------

def _check_each(signatures: Iterable[Signature], message: bytes, keyring: Keyring, what: str,
                where: str) -> None:
    """SignatureError naming the bundle ``where`` unless every signature is a trusted key's,
    not revoked, and verifies over ``message``: a bundle with one bad signature was made
    with a wrong key or for something else, and is refused whole."""
    for s in signatures:
        shown = s.key_id.hex()
        if s.key_id in keyring.revoked:
            raise SignatureError(f"{what}: key {shown} is revoked", path=where)
        key = keyring.keys.get(s.key_id)
        if key is None:
            raise SignatureError(f"{what}: key {shown} is not in the keyring {keyring.path}", path=where)
        try:
            key.verify(s.value, message)
        except InvalidSignature:
            raise SignatureError(f"{what}: the signature by key {shown} does not verify", path=where) \
                from None




def _check_present(site_dir: str, index: SiteIndex) -> None:
    """ObjectMissing naming the file unless every file the index names is on the site: each
    pack (size and SHA-256), the objects its manifest names, the delta files and lists."""
    for entry in index.refs.values():
        rel = site.pack(entry.sha256)
        path = os.path.join(site_dir, rel)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise ObjectMissing("the index names this pack and the site lacks it", path=path) from None
        if size != entry.size or not hmac.compare_digest(pack_sha256(path), entry.sha256):
            raise ObjectMissing(f"the site's pack is not the one the index names ({entry.size} bytes, "
                                f"sha256 {entry.sha256.hex()})", path=path)
        with PackReader(path, expected_sha256=entry.sha256) as reader:
            for row in reader.manifest.large_entries():
                obj = os.path.join(site_dir, site.large_object(row.entry.digest))
                if not os.path.exists(obj):
                    raise ObjectMissing("a pack the index names needs this object and the site "
                                        "lacks it", path=obj)
        for delta in entry.deltas:
            files = [(site.pack_delta(delta.sha256), delta.size)]
            if delta.objects is not None:
                files.append((site.object_delta_list(delta.objects.sha256), delta.objects.size))
            for name, expected in files:
                file = os.path.join(site_dir, name)
                if not os.path.exists(file) or os.stat(file).st_size != expected:
                    raise ObjectMissing(f"the index lists this delta file ({expected} bytes) and the "
                                        f"site lacks it", path=file)




def activate(site_dir: str, bundle_paths: Sequence[str], keyring: Keyring, *, min_signatures: int = 1,
             now: int | None = None) -> Activated:
    """Make the staged index live with the signatures of ``bundle_paths`` (see the module
    docstring), or add them to the live index when they are its.  Raises SignatureError (a
    bundle of another index, a bad or untrusted signature, fewer than ``min_signatures``
    good keys on the index or a pack), IndexRollback (the staged index is not newer than the
    live one), IndexExpired, ObjectMissing (a file the index names is not on the site)."""
    if not bundle_paths:
        raise UsageError("activation needs at least one signature bundle")
    now = int(time.time()) if now is None else now
    bundles = [(path, read_bundle(path)) for path in bundle_paths]
    with flock(os.path.join(site_dir, LOCK), exclusive=True):
        staged = read_staged_index(site_dir)
        live = read_site_index_and_bytes(site_dir)
        digest = bundles[0][1].index
        for path, bundle in bundles[1:]:
            if bundle.index != digest:
                raise SignatureError(f"signs index sha256 {bundle.index.hex()}, {bundles[0][0]} "
                                     f"signs {digest.hex()}", path=path)
        staged_path = os.path.join(site_dir, site.STAGED_INDEX)
        if staged is not None and index_sha256(staged[1]) == digest:
            index, data, where, made_live = staged[0], staged[1], staged_path, True
        elif live is not None and index_sha256(live[1]) == digest:
            index, data, where, made_live = live[0], live[1], os.path.join(site_dir, site.INDEX), False
        else:
            have = ", ".join(f"{what} {index_sha256(d).hex()}" for what, d in
                             (("staged", staged[1] if staged else None),
                              ("live", live[1] if live else None)) if d is not None) or "no index"
            raise SignatureError(f"signs index sha256 {digest.hex()}; the site has {have}",
                                 path=bundles[0][0])
        if made_live:
            if live is not None and index.serial <= live[0].serial:
                raise IndexRollback(f"the staged index has serial {index.serial} and the live one "
                                    f"{live[0].serial} (a later publish replaced it): publish "
                                    f"--unsigned again and sign that", path=where)
            if index.expires <= now:
                raise IndexExpired(f"the staged index expired at {index.expires} (now {now}): publish "
                                   f"--unsigned again and sign that", path=where)
        return _install(site_dir, index, data, where, bundles, keyring, min_signatures, made_live)


def _install(site_dir: str, index: SiteIndex, data: bytes, where: str,
             bundles: list[tuple[str, Bundle]], keyring: Keyring, min_signatures: int,
             made_live: bool) -> Activated:
    digest = index_sha256(data)
    result = Activated(index, digest, made_live)
    new_index: list[Signature] = []
    new_packs: dict[bytes, list[Signature]] = {}
    for path, bundle in bundles:
        _check_each(bundle.index_signatures, index_message(digest), keyring, "index", path)
        new_index.extend(bundle.index_signatures)
        for sha, signatures in bundle.packs.items():
            _check_each(signatures, pack_message(sha), keyring, f"pack {sha.hex()}", path)
            new_packs.setdefault(sha, []).extend(signatures)
    _check_present(site_dir, index)
    index_sig_path = os.path.join(site_dir, site.index_signatures(digest))
    existing = read_signatures(index_sig_path, missing_ok=True)
    index_all = _merge(existing, new_index)
    result.index_signers = check_index_trust(digest, index_all, keyring, min_signatures=min_signatures,
                                             where=where)
    writes: list[tuple[str, tuple[Signature, ...]]] = []
    for sha in sorted({e.sha256 for e in index.refs.values()}):
        sig_path = os.path.join(site_dir, site.pack_signatures(sha))
        old = read_signatures(sig_path, missing_ok=True)
        merged = _merge(old, new_packs.get(sha, ()))
        try:
            check_trust(sha, merged, keyring, min_signatures)
        except SignatureError as err:
            raise err.located(os.path.join(site_dir, site.pack(sha))) from None
        if merged != _merge(old, ()):
            writes.append((sig_path, merged))
            result.signatures_added += len(merged) - len(old)
        result.packs.append(sha)
    for sig_path, merged in writes:  # publish's order: the packs' signatures, the index's, the index
        write_signatures(sig_path, merged)
    if index_all != _merge(existing, ()):
        write_signatures(index_sig_path, index_all)
        result.signatures_added += len(index_all) - len(existing)
    if made_live:
        atomic_write(os.path.join(site_dir, site.INDEX), data, 0o644)
        os.unlink(where)
        fsync_dir(site_dir)
    return result


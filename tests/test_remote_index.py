"""The site index: canonical encoding, every rule of the reader, its own signature domain."""

from __future__ import annotations

import json

import pytest

from pack.keys import Keyring, load_private_key
from pack.signature import DOMAIN as PACK_DOMAIN
from pack.signature import sign
from pack.verify import check_trust
from remote.errors import IndexFormatError
from remote.index import (
    DOMAIN,
    RefEntry,
    SiteIndex,
    check_index_trust,
    decode_index,
    encode_index,
    index_sha256,
    sign_index,
)
from store.errors import SignatureError
from store.ids import HexId
from tests.test_pack_support import keyring_dir, make_keys

ENTRY = RefEntry(b"\x01" * 32, 1234, HexId("ab" * 32), "1.2", 1_700_000_000)
INDEX = SiteIndex(3, 1_700_000_500, 1_800_000_000, {"os/main": ENTRY, "os/dev": ENTRY})


def test_round_trip_and_canonical_bytes():
    data = encode_index(INDEX)
    assert decode_index(data, "index") == SiteIndex(3, 1_700_000_500, 1_800_000_000,
                                                      {"os/dev": ENTRY, "os/main": ENTRY})
    assert b" " not in data and not data.endswith(b"\n")
    assert data.index(b'"os/dev"') < data.index(b'"os/main"')  # keys sorted


def _mutate(change):
    doc = json.loads(encode_index(INDEX))
    change(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="other"), "not an index"),
    (lambda d: d.update(version=2), "unsupported index version"),
    (lambda d: d.update(extra=1), "unexpected keys"),
    (lambda d: d.pop("expires"), "missing keys"),
    (lambda d: d.update(serial=0), "serial must be"),
    (lambda d: d.update(serial=True), "serial must be"),
    (lambda d: d.update(timestamp=1.5), "timestamp must be"),
    (lambda d: d["refs"].update({"../x": d["refs"]["os/main"]}), "invalid ref name"),
    (lambda d: d["refs"]["os/main"].update(sha256="AB" * 32), "64 lowercase hex"),
    (lambda d: d["refs"]["os/main"].update(size=0), "size must be"),
    (lambda d: d["refs"]["os/main"].update(version=3), "version must be a string"),
    (lambda d: d["refs"]["os/main"].pop("commit"), "missing keys"),
])
def test_reader_refuses_each_broken_rule(change, message):
    with pytest.raises(IndexFormatError, match=message):
        decode_index(_mutate(change), "index")


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"[]", b"{", encode_index(INDEX) + b"\n",
    json.dumps(json.loads(encode_index(INDEX)), indent=1).encode(),
])
def test_reader_refuses_non_canonical_or_garbage(data):
    with pytest.raises(IndexFormatError):
        decode_index(data, "index")


def test_index_and_pack_signatures_are_not_interchangeable(tmp_path):
    key = make_keys(str(tmp_path), "k")["k"]
    ring = Keyring.load(keyring_dir(str(tmp_path), "ring", key))
    private = load_private_key(key)
    data = encode_index(INDEX)
    digest = index_sha256(data)
    assert DOMAIN != PACK_DOMAIN
    good = sign_index(data, private)
    assert check_index_trust(digest, [good], ring) == (good.key_id,)
    as_pack = sign(digest, private)  # the same digest signed as if it were a pack
    with pytest.raises(SignatureError, match="does not verify over this index"):
        check_index_trust(digest, [as_pack], ring)
    with pytest.raises(SignatureError):
        check_trust(digest, [good], ring)

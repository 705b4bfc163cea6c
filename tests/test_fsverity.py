"""fs-verity digests: the reference vectors, the real tool as an oracle, streaming."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import kverity
from store.errors import VerityUnsupported
from store.fsverity import ALGORITHMS, VerityHasher, VerityParams, digest_bytes, digest_file

VECTORS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "fsverity-vectors.txt")
CONTENTS = {
    "empty": b"",
    "a1": b"a",
    "z4096": bytes(4096),
    "z4097": bytes(4097),
    "m1": bytes(i % 251 for i in range(1 << 20)),  # 1 MiB, recovered by search over the vectors
}


def _vectors() -> list[tuple[str, str, str, str]]:
    path = VECTORS if os.path.exists(VECTORS) else os.path.join(os.path.dirname(__file__),
                                                                "data", "fsverity-vectors.txt")
    lines = open(path).read().splitlines()
    out = []
    for header, value in zip(lines[::2], lines[1::2], strict=True):
        name, opts = re.fullmatch(r"== (\S+) \[(.*)\]", header).groups()
        alg, hexd = value.split()[0].split(":")
        out.append((name, opts, alg, hexd))
    return out


def _params(opts: str) -> VerityParams:
    kw: dict = {}
    for opt in opts.split():
        key, value = opt[2:].split("=")
        if key == "block-size":
            kw["block_size"] = int(value)
        elif key == "salt":
            kw["salt"] = bytes.fromhex(value)
        elif key == "hash-alg":
            kw["algorithm"] = ALGORITHMS[value]
    return VerityParams(**kw)


@pytest.mark.parametrize("name,opts,alg,expected", _vectors())
def test_reference_vectors(name, opts, alg, expected):
    params = _params(opts)
    assert params.algorithm.name == alg
    assert digest_bytes(CONTENTS[name], params).hex() == expected


def test_vectors_cover_every_content():
    assert {v[0] for v in _vectors()} == set(CONTENTS)


SIZES = st.one_of(st.integers(0, 3 * 4096 + 2),
                  st.sampled_from([4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 129 * 4096 - 1]))


@given(size=SIZES, seed=st.integers(0, 2**32 - 1),
       block=st.sampled_from([1024, 4096]), salted=st.booleans(), alg=st.sampled_from(["sha256", "sha512"]))
def test_matches_fsverity_tool(tmp_path_factory, fsverity_tool, size, seed, block, salted, alg):
    data = (seed.to_bytes(8, "little") * (size // 8 + 1))[:size]
    if size:
        data = bytes(b ^ (i * 131 & 0xFF) for i, b in enumerate(data))
    path = tmp_path_factory.mktemp("v") / "f"
    path.write_bytes(data)
    salt = "c0ffee" if salted else ""
    cmd = [fsverity_tool, "digest", f"--block-size={block}", f"--hash-alg={alg}", str(path)]
    if salt:
        cmd.insert(2, f"--salt={salt}")
    tool = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[0]
    params = VerityParams(ALGORITHMS[alg], block, bytes.fromhex(salt))
    assert tool == f"{alg}:{digest_file(str(path), params).hex()}"


@given(data=st.binary(max_size=20000), cuts=st.lists(st.integers(0, 20000), max_size=6))
def test_streaming_equals_one_shot(data, cuts):
    hasher = VerityHasher()
    last = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        hasher.update(data[last:cut])
        last = cut
    hasher.update(data[last:])
    assert hasher.digest() == digest_bytes(data)


def test_digest_cli_prints_like_fsverity(tmp_path, fsverity_tool):
    from tests.helpers import run_cli
    files = []
    for i, size in enumerate([0, 1, 4097, 70000]):
        path = tmp_path / f"f {i}"
        path.write_bytes(os.urandom(size))
        files.append(str(path))
    ours = run_cli("digest", *files).stdout
    theirs = subprocess.run([fsverity_tool, "digest", *files], check=True, capture_output=True,
                            text=True).stdout
    assert ours == theirs


@pytest.mark.parametrize("extra,opts", [
    (0, ()), (1, ()), (4096 * 3 + 5, ()),
    (777, ("--hash-alg=sha512", "--block-size=1024", "--salt=c0ffee")),
])
def test_parallel_digest_matches_fsverity_tool(tmp_path, fsverity_tool, monkeypatch, extra, opts):
    """A big file hashed by forked workers, a block range each, odd sizes and parameters."""
    from store import fsverity
    monkeypatch.setattr(fsverity, "MAX_WORKERS", 3)  # ranges that do not divide evenly
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    path = tmp_path / "big"
    path.write_bytes(os.urandom(fsverity.PARALLEL_MIN + extra))
    values = dict(o.lstrip("-").split("=") for o in opts)
    params = VerityParams(ALGORITHMS[values.get("hash-alg", "sha256")],
                          int(values.get("block-size", 4096)), bytes.fromhex(values.get("salt", "")))
    tool = subprocess.run([fsverity_tool, "digest", *opts, str(path)], check=True,
                          capture_output=True, text=True).stdout.split()[0]
    ours = digest_file(str(path), params, parallel=True)
    assert tool == f"{params.algorithm.name}:{ours.hex()}"
    assert ours == digest_file(str(path), params)  # the one-process path agrees


def test_kernel_probe_tells_unsupported(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    try:
        supported = kverity.is_supported(str(path))
    except VerityUnsupported:  # pragma: no cover - is_supported must not raise this
        pytest.fail("is_supported raised VerityUnsupported")
    if supported:
        assert kverity.measure(str(path)) is None  # verity not enabled yet
    else:
        with pytest.raises(VerityUnsupported):
            kverity.enable(str(path))

"""Importing a signed pack into a repository.

In order: the pack is copied into the repository (hashed while copied, so
every later check is of bytes nobody else can change), its signatures are
checked against the keyring, it is parsed and checked, its ref's freshness is
checked (rollback protection), then the commit, every tree and every inline
file are staged through a ``store.transaction.Transaction`` while the data
streams; only when the whole pack has been read and matched its signed
digest are the objects published, the pack and its signatures kept as
``packs/<commit>.pack`` and ``packs/<commit>.pack.sig`` (deploy and the boot
verifier check them again), the freshness state advanced, and the ref moved
by compare-and-swap.  A failure at any point leaves the repository as it was,
apart from objects that nothing references yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field

from store.atomic import fsync_dir
from store.errors import PackError
from store.ids import RawId, to_hex
from store.objects import relative_path
from store.repo import Repository

from . import freshness
from .keys import KeyId, Keyring
from .manifest import ManifestEntry
from .reader import PackReader
from .signature import signatures_of, write_signatures
from .verify import check_trust

PACKS_DIR = "packs"
FRESHNESS_FILE = "freshness.json"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class MissingObject:
    """A large file object the repository lacks: its id, metadata key and the paths that use it."""

    entry: ManifestEntry  # the first path that uses it
    object_path: str  # relative to objects/, as store.objects lays it out
    paths: tuple[bytes, ...]


@dataclass
class ImportResult:
    commit_id: RawId
    ref: str
    previous: RawId | None  # what the ref pointed at before
    pack_path: str
    signers: tuple[KeyId, ...]
    trees: int = 0
    inline_files: int = 0
    large_files: int = 0
    missing: list[MissingObject] = field(default_factory=list)


def packs_dir(repo: Repository) -> str:
    return os.path.join(repo.path, PACKS_DIR)


def freshness_path(repo: Repository) -> str:
    """The repository's rollback-protection state (see pack.freshness)."""
    return os.path.join(packs_dir(repo), FRESHNESS_FILE)


def kept_pack_path(repo: Repository, commit_id: RawId) -> str:
    """Where an imported pack is kept; its signatures are beside it with ``.sig`` appended."""
    return os.path.join(packs_dir(repo), f"{to_hex(commit_id)}.pack")


def _copy_in(source: str, directory: str) -> tuple[str, bytes]:
    """Copy ``source`` into ``directory`` under a temporary name, durably; return it and its SHA-256."""
    fd, tmp = tempfile.mkstemp(prefix=".incoming-", suffix=".pack", dir=directory)
    try:
        sha = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(COPY_CHUNK):
                sha.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o444)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp, sha.digest()


def missing_objects(repo: Repository, large: list[ManifestEntry]) -> list[MissingObject]:
    """The large-file objects not in the repository, each once, in manifest order."""
    by_object: dict[str, list[ManifestEntry]] = {}
    for row in large:
        rel = relative_path("file", row.entry.digest, row.entry.meta)
        by_object.setdefault(rel, []).append(row)
    return [MissingObject(rows[0], rel, tuple(r.path for r in rows))
            for rel, rows in by_object.items()
            if not os.path.exists(os.path.join(repo.objects.root, rel))]


def import_pack(repo: Repository, pack_path: str | os.PathLike[str], keyring: Keyring, *,
                min_signatures: int = 1, allow_downgrade: bool = False,
                sig_path: str | os.PathLike[str] | None = None) -> ImportResult:
    """Verify and import a pack (see the module docstring); return what was done and what
    large objects are still missing.  Raises SignatureError, DowngradeError, PackError,
    RefError (the ref moved meanwhile), RepositoryError."""
    pack_path = os.fspath(pack_path)
    signatures = signatures_of(pack_path, sig_path)
    directory = packs_dir(repo)
    os.makedirs(directory, exist_ok=True)
    state = freshness_path(repo)
    tmp, digest = _copy_in(pack_path, directory)
    try:
        verification = check_trust(digest, signatures, keyring, min_signatures)
        with freshness.locked(state), repo.writing() as tx, \
                PackReader(tmp, expected_sha256=digest, keep_trees=True) as reader:
            candidate = freshness.Accepted.of(reader.commit_id, reader.commit)
            freshness.check(state, reader.ref, candidate, allow_downgrade=allow_downgrade)
            previous = repo.refs.read(reader.ref)
            result = ImportResult(reader.commit_id, reader.ref, previous,
                                  kept_pack_path(repo, reader.commit_id), verification.signers)
            for tree_id, encoded in reader.manifest.trees:
                tx.add_meta_object("tree", encoded, tree_id)
            result.trees = len(reader.manifest.trees)
            large: list[ManifestEntry] = []
            for row, data in reader.entries():
                if data is not None:
                    stored = tx.add_file_bytes(data, row.entry.meta)
                    if stored != row.entry.digest:  # the reader checked it; a bug if not
                        raise PackError(f"pack: {row.path!r}: stored digest differs", path=row.path)
                    result.inline_files += 1
                elif row.is_large:
                    large.append(row)
            result.large_files = len(large)
            tx.add_meta_object("commit", reader.commit_bytes, reader.commit_id)
            tx.publish()
            os.replace(tmp, result.pack_path)
            write_signatures(result.pack_path + ".sig", signatures)
            fsync_dir(directory)
            freshness.record(state, reader.ref, candidate)
            repo.refs.update(reader.ref, reader.commit_id, previous)
            result.missing = missing_objects(repo, large)
        return result
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

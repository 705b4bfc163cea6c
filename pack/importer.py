"""Importing a signed pack into a repository.

In order: stale copies left by killed imports are removed, the pack is
copied into the repository (hashed while copied, so every later check is of
bytes nobody else can change), its signatures are checked against the
keyring, it is parsed and checked, its ref's freshness is checked (rollback
protection) and that the ref can take the commit, then the commit, every
tree and every inline file are staged through a
``store.transaction.Transaction`` while the data streams, and, built from the same
pass, the pack's EROFS image (pack.image), whose fs-verity digest must be the one the
pack signs.  Only when the whole pack has been read and matched its signed digest are
the objects published, then the pack and its signatures kept as
``packs/<commit>.pack`` and ``packs/<commit>.pack.sig`` (deploy and the boot
verifier check them again), the freshness state advanced, and the ref moved
by compare-and-swap, last.  If one of these last steps fails, the ones before
it are undone: a failure at any point leaves the repository as it was, apart
from objects that nothing references yet.

A copy in progress is ``packs/.incoming-<random>.pack``, locked (flock) by its
importer for as long as the import runs.  One whose lock nobody holds was left
by a killed import: ``clean_incoming`` (run by every import, and to be run by
prune) removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator

from store.atomic import fsync_dir
from store.errors import PackError
from store.ids import RawId
from store.lock import flock
from store.objects import relative_path
from store.record import Frozen, Mutable
from store.repo import Repository
from store.transaction import Transaction

from . import freshness
from .image import ImageTree, check_image, check_image_objects
from .kept import FRESHNESS_FILE as FRESHNESS_FILE
from .kept import freshness_path as freshness_path
from .kept import kept_pack_path as kept_pack_path
from .keys import KeyId, Keyring
from .manifest import ManifestEntry
from .reader import PackReader, named, read_image_ref
from .signature import signatures_of, write_signatures
from .verify import check_trust

INCOMING_PREFIX = ".incoming-"
INCOMING_LOCK = "incoming.lock"  # creating a copy and removing stale ones exclude each other
COPY_CHUNK = 1 << 20


class MissingObject(Frozen):
    """A large file object the repository lacks: its id, metadata key and the paths that use it."""

    __slots__ = ("entry", "object_path", "paths")
    _fields = __slots__
    entry: ManifestEntry  # the first path that uses it
    object_path: str  # relative to objects/, as store.objects lays it out
    paths: tuple[bytes, ...]

    def __init__(self, entry: ManifestEntry, object_path: str, paths: tuple[bytes, ...]) -> None:
        self._set_fields(entry, object_path, paths)


class ImportResult(Mutable):
    __slots__ = ("commit_id", "ref", "previous", "pack_path", "signers", "trees", "inline_files",
                 "large_files", "missing", "image")
    _fields = __slots__
    commit_id: RawId
    ref: str
    previous: RawId | None  # what the ref pointed at before
    pack_path: str
    signers: tuple[KeyId, ...]
    trees: int
    inline_files: int
    large_files: int
    missing: list[MissingObject]
    image: str | None  # the image object (pack.image); None for a version-1 pack

    def __init__(self, commit_id: RawId, ref: str, previous: RawId | None, pack_path: str,
                 signers: tuple[KeyId, ...], trees: int = 0, inline_files: int = 0, large_files: int = 0,
                 missing: list[MissingObject] | None = None, image: str | None = None) -> None:
        self._set_fields(commit_id, ref, previous, pack_path, signers, trees, inline_files, large_files,
                         [] if missing is None else missing, image)


def kept_images(repo: Repository, commits: Iterable[RawId]) -> list[str]:
    """The image objects of the kept packs of ``commits`` (what prune keeps besides what
    the commits reach); a kept pack whose header does not parse names none."""
    out = []
    for commit_id in commits:
        path = kept_pack_path(repo, commit_id)
        if not os.path.exists(path):
            continue
        try:
            image = read_image_ref(path)
        except PackError:
            continue
        if image is not None:
            out.append(repo.objects.image_path(RawId(image.digest)))
    return out


# -- the copy in progress ------------------------------------------------------------------

def _is_unlocked(path: str) -> bool:
    """True if no process holds a lock on ``path`` (a missing file counts as unlocked)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)
    return True


def _remove_stale(directory: str) -> int:
    removed = 0
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(INCOMING_PREFIX) and _is_unlocked(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
    return removed


def clean_incoming(repo: Repository) -> int:
    """Remove the pack copies that killed imports left in ``packs/`` (those no running
    import holds locked); return how many.  Safe while other imports run."""
    directory = repo.layout.packs
    if not os.path.isdir(directory):
        return 0
    with flock(os.path.join(directory, INCOMING_LOCK), exclusive=True):
        return _remove_stale(directory)


@contextlib.contextmanager
def _incoming(directory: str) -> Iterator[tuple[int, str]]:
    """A new, locked, empty ``.incoming-*`` file in ``directory`` (stale ones removed first);
    removed on exit unless renamed away meanwhile."""
    with flock(os.path.join(directory, INCOMING_LOCK), exclusive=True):
        _remove_stale(directory)
        import tempfile  # noqa: PLC0415 - not on the deploy path (see store.atomic.private_dir)

        fd, path = tempfile.mkstemp(prefix=INCOMING_PREFIX, suffix=".pack", dir=directory)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the directory lock is released: never stale
    try:
        yield fd, path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _copy_in(source: str, fd: int, path: str) -> bytes:
    """Copy ``source`` into the open file ``fd`` (at ``path``), durably; return its SHA-256."""
    sha = hashlib.sha256()
    with open(source, "rb") as src:
        while chunk := src.read(COPY_CHUNK):
            sha.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    os.fsync(fd)
    os.chmod(path, 0o444)
    return sha.digest()


def missing_objects(repo: Repository, large: Iterable[ManifestEntry]) -> list[MissingObject]:
    """The large-file objects not in the repository, each once, in manifest order."""
    by_object: dict[str, list[ManifestEntry]] = {}
    present: set[str] = set()
    for row in large:
        rel = relative_path("file", row.entry.digest, row.entry.meta)
        if rel in present:
            continue
        if rel not in by_object and os.path.exists(os.path.join(repo.objects.root, rel)):
            present.add(rel)
            continue
        by_object.setdefault(rel, []).append(row)
    return [MissingObject(rows[0], rel, tuple(r.path for r in rows))
            for rel, rows in by_object.items()]


# -- the last steps, each undone if a later one fails -----------------------------------------

@contextlib.contextmanager
def _aside(directory: str, path: str) -> Iterator[str | None]:
    """A hardlink of ``path`` named ``.incoming-*`` in ``directory`` (None if ``path`` does not
    exist), for putting it back.  The inode is locked while the block runs, so that the
    link is not taken for a killed import's leftover; after a crash it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        backup = os.path.join(directory, f"{INCOMING_PREFIX}{os.urandom(8).hex()}.undo")
        os.link(path, backup)
        try:
            yield backup
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _undone_on_failure(directory: str, paths: list[str]) -> Iterator[None]:
    """Put the files ``paths`` (in ``directory``) back as they were if the block fails."""
    with contextlib.ExitStack() as stack:
        saved = [(path, stack.enter_context(_aside(directory, path))) for path in paths]
        try:
            yield
        except BaseException:
            for path, backup in reversed(saved):
                if backup is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                else:
                    os.replace(backup, path)
            fsync_dir(directory)
            raise


def import_pack(repo: Repository, pack_path: str | os.PathLike[str], keyring: Keyring, *,
                min_signatures: int = 1, allow_downgrade: bool = False,
                sig_path: str | os.PathLike[str] | None = None,
                on_open: Callable[[PackReader], None] | None = None,
                before_publish: Callable[[Transaction], None] | None = None) -> ImportResult:
    """Verify and import a pack (see the module docstring); return what was done and what
    large objects are still missing.  ``on_open`` is called with the reader as soon as the
    pack is open (its signatures, header, commit and manifest checked), before anything else
    is: a pull checks that it is the pack its index names and starts fetching the large
    objects its manifest lists (the manifest is decoded once).  ``before_publish`` is called
    with the transaction once the pack's objects are staged, before anything is published: a
    pull stages the large objects it fetched meanwhile into it.  Either raises to give the
    import up.  Raises
    SignatureError, DowngradeError, PackError (about ``pack_path``), RefError (the ref
    cannot take the commit, or moved meanwhile), RepositoryError."""
    pack_path = os.fspath(pack_path)
    signatures = signatures_of(pack_path, sig_path)
    directory = repo.layout.packs
    os.makedirs(directory, exist_ok=True)
    state = freshness_path(repo)
    with _incoming(directory) as (fd, tmp), named(pack_path):
        digest = _copy_in(pack_path, fd, tmp)
        verification = check_trust(digest, signatures, keyring, min_signatures)
        with freshness.locked(state), repo.writing(bundle=True) as tx:
            trees = 0

            def add_tree(tree_id: RawId, encoded: bytes) -> None:
                nonlocal trees
                tx.add_meta_object("tree", encoded, tree_id)
                trees += 1

            with PackReader(tmp, expected_sha256=digest, on_tree=add_tree, name=pack_path) as reader:
                if on_open is not None:
                    on_open(reader)
                candidate = freshness.Accepted.of(reader.commit_id, reader.commit)
                freshness.check(state, reader.ref, candidate, allow_downgrade=allow_downgrade)
                repo.refs.check_free(reader.ref)
                previous = repo.refs.read(reader.ref)
                result = ImportResult(reader.commit_id, reader.ref, previous,
                                      kept_pack_path(repo, reader.commit_id), verification.signers,
                                      trees=trees)
                tree = ImageTree(reader.commit.root_meta) if reader.image is not None else None
                for row, data in reader.entries():
                    if tree is not None:
                        tree.add(row, data)
                    if data is not None:
                        # the reader has checked that its digest is the manifest's
                        tx.add_file_bytes(data, row.entry.meta, checked_digest=row.entry.digest)
                        result.inline_files += 1
                    elif row.is_large:
                        result.large_files += 1
                tx.add_meta_object("commit", reader.commit_bytes, reader.commit_id)
                if tree is not None:  # the pack signs its image: built here, never downloaded
                    check_image_objects(reader, tree.objects)
                    image = tree.image()
                    del tree
                    digest = check_image(reader, image)
                    tx.add_image(image, digest)
                    del image
                    result.image = repo.objects.image_path(digest)
                if before_publish is not None:
                    before_publish(tx)
                tx.publish()
                kept = result.pack_path
                with _undone_on_failure(directory, [kept, kept + ".sig", state]):
                    os.replace(tmp, kept)
                    write_signatures(kept + ".sig", signatures)
                    fsync_dir(directory)
                    freshness.record(state, reader.ref, candidate)
                    repo.refs.update(reader.ref, reader.commit_id, previous)
                result.missing = missing_objects(repo, reader.manifest.large_entries())
        return result

"""Where objects live, and reading them back with their ids checked.

Layout under ``objects/``, split by the first two hex digits of the id:
  ``xx/<62 hex>.<64 hex meta key>.file``  file content; its id is the fs-verity
      digest; the meta key (model.Meta.object_key) tells apart inodes that share
      content but differ in mode, owner or xattrs; the inode carries that metadata.
  ``xx/<62 hex>.tree``    a tree object (store.tree), id = SHA-256 of the bytes
  ``xx/<62 hex>.commit``  a commit object (store.commits), id = SHA-256 of the bytes
  ``xx/<62 hex>.image``   an EROFS image of a pack's tree (pack.image), id = its fs-verity
      digest; mode 0444, fs-verity on where the filesystem can

Trees and file objects may instead be records of a bundle (``store.bundles``, in the
repository's ``bundles/``): a pack's import writes them so.  Readers try the loose object
first, then the bundles (``read_raw``, ``has``, ``has_file``, ``bundled_file``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator

from .bundles import (
    FILE,
    KIND_CODES,
    NO_META_KEY,
    SUFFIX,
    BundledObject,
    BundleIndex,
    bundle_names,
    read_records,
)
from .commits import Commit, decode_commit
from .errors import FormatError, ObjectCorrupt, ObjectMissing
from .ids import HexId, RawId, to_hex
from .model import Entry, Meta
from .record import Frozen
from .tree import decode_tree

MAX_META_OBJECT = 64 << 20
_NAME = re.compile(r"([0-9a-f]{62})\.(?:([0-9a-f]{64})\.file|tree|commit|image)")


class StoredObject(Frozen):
    """An object file found on disk by ``iter_objects``."""

    __slots__ = ("path", "kind", "id", "meta_key")
    _fields = __slots__
    path: str
    kind: str  # "file", "tree", "commit" or "image"
    id: HexId
    meta_key: str

    def __init__(self, path: str, kind: str, id: HexId, meta_key: str = "") -> None:  # noqa: A002
        for name, value in zip(self._fields, (path, kind, id, meta_key), strict=True):
            object.__setattr__(self, name, value)


def keyed_relative_path(digest: RawId, meta_key: str) -> str:
    """The one spelling of a file object's path under ``objects/``, from its fs-verity
    ``digest`` and its meta key in hex (``Meta.object_key``)."""
    h = digest.hex()
    return f"{h[:2]}/{h[2:]}.{meta_key}.file"


def relative_path(kind: str, raw: RawId, meta: Meta | None = None) -> str:
    if kind == "file":
        assert meta is not None
        return keyed_relative_path(raw, meta.object_key())
    h = to_hex(raw)
    return f"{h[:2]}/{h[2:]}.{kind}"


def _read_upto(fd: int, limit: int) -> bytes:
    """The file's bytes from its offset, at most ``limit``: one read of the size fstat gives
    (a read asked for ``limit`` bytes would allocate that much first), more if it grew."""
    want = min(os.fstat(fd).st_size + 1, limit)
    chunks = [os.read(fd, want)]
    got = len(chunks[0])
    while got < limit and len(chunks[-1]) == want:
        want = min(1 << 20, limit - got)
        chunks.append(os.read(fd, want))
        got += len(chunks[-1])
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ObjectStore:
    """The objects under ``root`` (``objects/``) and, when ``bundles`` names the bundles
    directory, the records of its bundles (None: loose objects only)."""

    def __init__(self, root: str, bundles: str | None = None) -> None:
        self.root = root
        self.bundles = bundles
        self.bundle_index = BundleIndex(bundles) if bundles is not None else None
        self._meta_keys: dict[Meta, str] = {}

    def _meta_key(self, meta: Meta) -> str:
        key = self._meta_keys.get(meta)
        if key is None:
            key = self._meta_keys[meta] = meta.object_key()
        return key

    def file_path(self, digest: RawId, meta: Meta) -> str:
        return f"{self.root}/{keyed_relative_path(digest, self._meta_key(meta))}"

    def keyed_file_path(self, digest: RawId, meta_key: bytes) -> str:
        """Where the file object of ``digest`` whose metadata has the key ``meta_key`` (the raw
        SHA-256 of ``Meta.encode``, as a version-3 pack lists it: pack.format.ImageObject) is."""
        return f"{self.root}/{keyed_relative_path(digest, meta_key.hex())}"

    def image_path(self, digest: RawId) -> str:
        """Where the EROFS image whose fs-verity digest is ``digest`` is kept (pack.image)."""
        return self.path("image", digest)

    def path(self, kind: str, raw: RawId) -> str:
        return os.path.join(self.root, relative_path(kind, raw))

    def has(self, kind: str, raw: RawId) -> bool:
        """Whether the object is present, loose or (a tree) bundled."""
        return os.path.exists(self.path(kind, raw)) or self.bundle_of(kind, raw) is not None

    def has_loose(self, kind: str, raw: RawId) -> bool:
        return os.path.exists(self.path(kind, raw))

    def bundle_of(self, kind: str, raw: RawId, meta: Meta | None = None) -> str | None:
        """The bundle holding a record of the tree or file object, or None (no file system
        call once the bundles' index is loaded, unless it misses)."""
        code = KIND_CODES.get(kind)
        if self.bundle_index is None or code is None:
            return None
        key = NO_META_KEY if meta is None else bytes.fromhex(self._meta_key(meta))
        found = self.bundle_index.find((code, raw, key))
        return None if found is None else found[0]

    def has_file(self, digest: RawId, meta: Meta) -> bool:
        """Whether the file object is present, loose or bundled."""
        return (os.path.exists(self.file_path(digest, meta))
                or self.bundle_of("file", digest, meta) is not None)

    def bundled_file(self, digest: RawId, meta: Meta) -> bytes | None:
        """The content of the bundled file object, checked (fs-verity digest, metadata
        bytes); None when no bundle holds it.  Callers try the loose object first."""
        if self.bundle_index is None:
            return None
        return self.bundle_index.read((FILE, digest, bytes.fromhex(self._meta_key(meta))))

    def iter_bundled(self) -> Iterator[BundledObject]:
        """Every record of every bundle, in bundle order; ObjectCorrupt for a bad bundle."""
        for path in self.bundle_paths():
            yield from read_records(path)

    def bundle_paths(self) -> list[str]:
        """The bundle files (``*.bundle`` in the bundles directory, as listed now), sorted."""
        if self.bundles is None:
            return []
        return [f"{self.bundles}/{name}" for name in bundle_names(self.bundles) if name.endswith(SUFFIX)]

    def read_raw(self, kind: str, raw: RawId) -> bytes:
        """The bytes of a tree or commit object, after checking they hash to ``raw``: the
        loose object, else (a tree) its record in a bundle."""
        path = self.path(kind, raw)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            index = self.bundle_index
            if index is not None and kind == "tree":
                data = index.read((KIND_CODES[kind], raw, NO_META_KEY))
                if data is not None:
                    return data
                if index.bad:  # the object may be in a bundle that cannot be read
                    raise next(iter(index.bad.values())) from None
            raise ObjectMissing(f"{kind} {to_hex(raw)} is missing", object_id=to_hex(raw),
                                path=path) from None
        try:
            data = _read_upto(fd, MAX_META_OBJECT + 1)
        finally:
            os.close(fd)
        got = hashlib.sha256(data).digest()
        if not hmac.compare_digest(got, raw):
            raise ObjectCorrupt(f"{kind} {to_hex(raw)} is corrupt: its bytes hash to {got.hex()}",
                                expected=to_hex(raw), got=got.hex(), object_id=to_hex(raw), path=path)
        return data

    def read_tree(self, raw: RawId) -> list[Entry]:
        data = self.read_raw("tree", raw)
        try:
            return decode_tree(data, f"tree {to_hex(raw)}")
        except FormatError as err:
            where = self.bundle_of("tree", raw) if not self.has_loose("tree", raw) else None
            raise ObjectCorrupt(str(err), object_id=to_hex(raw),
                                path=where or self.path("tree", raw)) from err

    def read_commit(self, raw: RawId) -> Commit:
        data = self.read_raw("commit", raw)
        try:
            return decode_commit(data, f"commit {to_hex(raw)}")
        except FormatError as err:
            raise ObjectCorrupt(str(err), object_id=to_hex(raw), path=self.path("commit", raw)) from err

    def iter_objects(self) -> Iterator[StoredObject]:
        """Every object file on disk, in a stable order; stray files are yielded as kind ''."""
        for prefix in sorted(os.listdir(self.root)):
            directory = os.path.join(self.root, prefix)
            try:
                names = sorted(os.listdir(directory))
            except NotADirectoryError:
                yield StoredObject(directory, "", HexId(""))  # a stray file beside the xx/ dirs
                continue
            for name in names:
                path = os.path.join(directory, name)
                match = _NAME.fullmatch(name)
                if len(prefix) != 2 or not match:
                    yield StoredObject(path, "", HexId(""))
                    continue
                kind = "file" if match.group(2) else name.rsplit(".", 1)[1]
                yield StoredObject(path, kind, HexId(prefix + match.group(1)), match.group(2) or "")

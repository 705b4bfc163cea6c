"""A deployment's files read from its mounted EROFS image (the metacopy layout's lower layer).

The image (``pack.image``, recipe 1) holds every directory, symlink and inline
file of the tree with its metadata, and every large file as a metacopy stub: its
own metadata plus the two overlay xattrs (``pack.stubs``) that name its object and
digest, and no data.  A deploy whose pack lists its image's objects (format 3)
copies the tree's /etc, the first /var and the boot files out of the mounted image
(``deploy_state``) instead of decoding the pack's manifest: the image was checked
against the signed digest before it was mounted (``image_layer``); the object a stub
names is opened as the checks open it (``objcheck.open_object_file``) and may still be
under check, so what is copied is published only once the deploy's checks have
passed.  The stub xattrs are never copied.
"""

from __future__ import annotations

import os
import re
import stat

from pack.stubs import METACOPY_XATTR, REDIRECT_XATTR
from pack.unpack import TreeWriter
from store import xattrs
from store.errors import VerificationError
from store.model import Meta
from store.names import show

from .objcheck import open_object_file

_STUB_XATTRS = (METACOPY_XATTR, REDIRECT_XATTR)
# What recipe 1 writes as a redirect: an object of the repository, by absolute path in it.
_REDIRECT = re.compile(rb"/[0-9a-f]{2}/[0-9a-f]{62}\.[0-9a-f]{64}\.file")


class MountedImage:
    """The image mounted at ``root``, whose stubs name objects under ``objects_root``."""

    def __init__(self, root: str, objects_root: str) -> None:
        self.root = os.fsencode(root)
        self.objects_root = os.fsencode(objects_root)

    def _at(self, path: bytes) -> bytes:
        return os.path.join(self.root, path) if path else self.root

    def _meta(self, where: bytes, st: os.stat_result) -> tuple[Meta, bytes | None]:
        """The tree's metadata of the inode at ``where`` and, for a stub, its object's path."""
        found = xattrs.read(where)
        redirect = dict(found).get(REDIRECT_XATTR)
        if redirect is not None:
            found = tuple(x for x in found if x[0] not in _STUB_XATTRS)
        meta = Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, found)
        if redirect is None:
            return meta, None
        if not _REDIRECT.fullmatch(redirect):
            raise VerificationError(f"the image's stub names no object: redirect "
                                    f"{show(redirect)}", path=where)
        return meta, self.objects_root + redirect

    def _content(self, where: bytes, obj: bytes | None) -> bytes:
        """A file's bytes: its own (inline in the image), or its object's for a stub."""
        if obj is None:
            with open(where, "rb") as handle:
                return handle.read()
        with open_object_file(obj) as handle:
            return handle.read()

    def is_dir(self, path: bytes) -> bool:
        """Whether ``path`` of the tree is a directory (not a symlink to one)."""
        try:
            return stat.S_ISDIR(os.lstat(self._at(path)).st_mode)
        except FileNotFoundError:
            return False

    def is_file(self, path: bytes) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self._at(path)).st_mode)
        except FileNotFoundError:
            return False

    def copy_file(self, path: bytes, dest: str, mode: int = 0o644) -> None:
        """The content of the regular file ``path`` of the tree, as a new file ``dest``."""
        where = self._at(path)
        _meta, obj = self._meta(where, os.lstat(where))
        with open(dest, "xb") as out:
            out.write(self._content(where, obj))
        os.chmod(dest, mode)

    def copy_tree(self, path: bytes, dest: str) -> None:
        """The directory ``path`` of the tree and everything below it, with the tree's
        metadata, as the new directory ``dest``."""
        where = self._at(path)
        meta, _obj = self._meta(where, os.lstat(where))
        os.mkdir(dest, 0o700)
        with TreeWriter(dest, meta) as writer:
            self._copy_below(writer, where, b"")

    def _copy_below(self, writer: TreeWriter, where: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(where)):
            src = os.path.join(where, name)
            sub = rel + b"/" + name if rel else name
            st = os.lstat(src)
            meta, obj = self._meta(src, st)
            if stat.S_ISDIR(st.st_mode):
                writer.mkdir(sub, meta)
                self._copy_below(writer, src, sub)
            elif stat.S_ISLNK(st.st_mode):
                writer.symlink(sub, os.readlink(src), meta)
            elif stat.S_ISREG(st.st_mode):
                writer.write_file(sub, self._content(src, obj), meta)
            else:  # recipe 1 writes none: a tree holds directories, files and symlinks only
                raise VerificationError("is neither a directory, a file nor a symlink in the image",
                                 path=src)

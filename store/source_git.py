"""Reading the tree of a git revision into the store, through pygit2, with no checkout.

The tree stored is the one a checkout of the revision would give when owned
by ``owner`` with umask 022: regular files 0644, executable files 0755
(git's 100755; the legacy 100664 counts as 0644), symlinks 0777 with the
blob's bytes as target, directories and the root 0755; no xattrs.  So
committing ``--git R --rev X --owner U:G`` and committing a checkout of X
chowned to U:G give the same tree id: the blobs as committed, which is what the
commit records (``git.commit``) and reproducible whatever the configuration.
``attributes=True`` gives instead what ``git archive`` writes as far as the
commit's .gitattributes go: paths marked export-ignore left out and files
passed through the filters a checkout applies (eol, text, crlf, ident;
through libgit2, which also reads the repository's configuration, such as
core.autocrlf); export-subst is not applied.  Gitlinks (submodules, mode 160000)
have no content in this repository: they are refused with their path named,
or skipped (and reported) when ``skip_special`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from .builder import TreeBuilder
from .errors import SourceError, SpecialFile
from .ids import RawId
from .model import Entry, Kind, Meta
from .transaction import Transaction

if TYPE_CHECKING:
    import pygit2

Progress = Callable[[int, int], None]  # (files done, bytes done)

_T = TypeVar("_T", "pygit2.Tree", "pygit2.Blob")

MODE_TREE = 0o040000
MODE_BLOB = 0o100644
MODE_BLOB_GROUP_WRITABLE = 0o100664  # written by ancient git; a checkout makes it 0644
MODE_EXECUTABLE = 0o100755
MODE_LINK = 0o120000
MODE_GITLINK = 0o160000


@dataclass
class GitSourceOptions:
    owner: tuple[int, int] = (0, 0)
    skip_special: bool = False
    progress: Progress | None = None
    progress_every: int = 500
    # False: the blobs as committed.  True: what `git archive` writes, as far as the
    # revision's .gitattributes go: export-ignore paths left out, files through the
    # checkout filters (eol, text, crlf, ident); export-subst is not applied.
    attributes: bool = False


@dataclass
class GitSourceResult:
    tree: RawId
    root_meta: Meta
    commit: str | None  # the git commit id, None when the revision names a bare tree
    skipped: list[tuple[bytes, str]] = field(default_factory=list)  # (path, why)
    files: int = 0
    bytes: int = 0


def open_repository(path: str) -> pygit2.Repository:
    """The git repository at or above ``path``; SourceError when there is none."""
    import pygit2  # noqa: PLC0415 - a tenth of a second: only when a git source is read
    found = pygit2.discover_repository(path)
    if found is None:
        raise SourceError("not a git repository", path=path)
    try:
        return pygit2.Repository(found)
    except pygit2.GitError as err:
        raise SourceError(f"cannot open git repository: {err}", path=path) from err


def resolve(repo: pygit2.Repository, rev: str) -> tuple[pygit2.Tree, str | None]:
    """The tree a revision names (commit, tag or tree) and the commit id when there is one."""
    import pygit2  # noqa: PLC0415 - see open_repository
    try:
        obj = repo.revparse_single(rev)
    except (pygit2.GitError, KeyError, ValueError) as err:
        why = "" if isinstance(err, KeyError) else f" ({err})"  # a KeyError says only the rev
        raise SourceError(f"git revision not found{why}", path=rev) from err
    try:
        commit = obj.peel(pygit2.Commit)
    except (pygit2.GitError, ValueError):
        commit = None
    try:
        tree = obj.peel(pygit2.Tree)
    except (pygit2.GitError, ValueError) as err:
        raise SourceError(f"git revision names a {obj.type_str}, not a commit or tree",
                          path=rev) from err
    return tree, (str(commit.id) if commit is not None else None)


class _ArchiveAttributes:
    """What `git archive` takes from the .gitattributes of a commit: export-ignore, and the
    filters a checkout applies (libgit2's, reading the attributes of the commit)."""

    def __init__(self, repo: pygit2.Repository, commit: str) -> None:
        import pygit2  # noqa: PLC0415 - see open_repository
        # Opened bare, libgit2 reads no worktree .gitattributes, as `git archive` reads none.
        self.repo = pygit2.Repository(repo.path, pygit2.enums.RepositoryOpenFlag.BARE)
        self.commit = pygit2.Oid(hex=commit)
        self.check = pygit2.enums.AttrCheck.INCLUDE_COMMIT
        self.filters = (pygit2.enums.BlobFilter.CHECK_FOR_BINARY
                        | pygit2.enums.BlobFilter.ATTRIBUTES_FROM_COMMIT)

    def ignored(self, path: str) -> bool:
        return self.repo.get_attr(_utf8(path), "export-ignore", self.check, self.commit) is True

    def content(self, blob: pygit2.Blob, path: str) -> bytes:
        import pygit2  # noqa: PLC0415 - see open_repository
        bare = self.repo.get(blob.id)  # the filters use the blob's repository: the bare one
        if not isinstance(bare, pygit2.Blob):  # the same object database: not possible
            raise AssertionError(f"blob {blob.id} not found again in {self.repo.path}")
        with pygit2.BlobIO(bare, as_path=_utf8(path), flags=self.filters,
                           commit_id=self.commit) as filtered:
            return filtered.read()


def _utf8(path: str) -> str:
    """``path`` for libgit2's attribute lookups, which take UTF-8 only."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError("name is not UTF-8: git attributes cannot be applied to it",
                          path=path) from None
    return path


class _GitReader:
    def __init__(self, repo: pygit2.Repository, tx: Transaction, options: GitSourceOptions,
                 attributes: _ArchiveAttributes | None = None) -> None:
        self.repo = repo
        self.attributes = attributes
        self.tx = tx
        self.options = options
        uid, gid = options.owner
        self.dir_meta = Meta(0o755, uid, gid)
        self.file_meta = Meta(0o644, uid, gid)
        self.exec_meta = Meta(0o755, uid, gid)
        self.link_meta = Meta(0o777, uid, gid)
        self.builder = TreeBuilder(self.dir_meta, self.dir_meta)
        self.blobs: dict[tuple[str, Meta], tuple[RawId, int]] = {}  # the same blob is stored once
        self.skipped: list[tuple[bytes, str]] = []
        self.files = 0
        self.bytes = 0

    def lookup(self, oid: pygit2.Oid, kind: type[_T], where: str) -> _T:
        import pygit2  # noqa: PLC0415 - see open_repository
        try:
            obj = self.repo[oid]
        except (KeyError, pygit2.GitError) as err:
            raise SourceError(f"git object {oid} is missing from the repository "
                              f"(shallow or partial clone?)", path=where) from err
        if not isinstance(obj, kind):
            raise SourceError(f"git object {oid} is a {obj.type_str}, expected a "
                              f"{kind.__name__.lower()}", path=where)
        return obj

    def tree(self, oid: pygit2.Oid, where: str) -> pygit2.Tree:
        import pygit2  # noqa: PLC0415 - see open_repository
        return self.lookup(oid, pygit2.Tree, where)

    def blob(self, oid: pygit2.Oid, where: str) -> pygit2.Blob:
        import pygit2  # noqa: PLC0415 - see open_repository
        return self.lookup(oid, pygit2.Blob, where)

    def read(self, root: pygit2.Tree) -> None:
        # Iterative walk: (path parts of the directory, its git tree).
        stack: list[tuple[tuple[bytes, ...], pygit2.Tree]] = [((), root)]
        while stack:
            parts, tree = stack.pop()
            for item in tree:
                path = parts + (item.raw_name or b"",)  # b"" is refused as a bad name
                where = os.fsdecode(b"/".join(path))  # raw: errors show it
                if self.attributes is not None and self.attributes.ignored(where):
                    continue
                mode = int(item.filemode)
                if mode == MODE_TREE:
                    self.builder.add_dir(path, self.dir_meta, where)
                    stack.append((path, self.tree(item.id, where)))
                elif mode in (MODE_BLOB, MODE_BLOB_GROUP_WRITABLE, MODE_EXECUTABLE):
                    self.file(path, item.id, self.exec_meta if mode == MODE_EXECUTABLE else self.file_meta,
                              where)
                elif mode == MODE_LINK:
                    target = self.blob(item.id, where).data
                    self.builder.add_leaf(path, Entry(b"", Kind.SYMLINK, self.link_meta, target=target),
                                          where)
                elif mode == MODE_GITLINK:
                    self.special(path, where, "a gitlink (submodule commit "
                                 f"{item.id}); its content is not in this repository")
                else:
                    self.special(path, where, f"of unknown git mode {mode:06o}")

    def file(self, path: tuple[bytes, ...], oid: pygit2.Oid, meta: Meta, where: str) -> None:
        known = self.blobs.get((str(oid), meta))
        if self.attributes is not None:  # the content depends on the path's attributes
            data = self.attributes.content(self.blob(oid, where), where)
            known = (self.tx.add_file_bytes(data, meta), len(data))
        elif known is None:
            data = self.blob(oid, where).data
            known = self.blobs[(str(oid), meta)] = (self.tx.add_file_bytes(data, meta), len(data))
        self.builder.add_leaf(path, Entry(b"", Kind.FILE, meta, size=known[1], digest=known[0]), where)
        self.files += 1
        self.bytes += known[1]
        if self.options.progress and self.files % self.options.progress_every == 0:
            self.options.progress(self.files, self.bytes)

    def special(self, path: tuple[bytes, ...], where: str, what: str) -> None:
        if not self.options.skip_special:
            raise SpecialFile(f"is {what}; sealtree stores files, directories and "
                              f"symlinks only", path=where)
        self.builder.add_parents(path, where)
        self.skipped.append((b"/".join(path), what))


def read_git(tx: Transaction, repo_path: str, rev: str, options: GitSourceOptions | None = None
             ) -> GitSourceResult:
    """Store the tree of ``rev`` in the git repository at ``repo_path``; return the root
    tree id and metadata, the git commit id, and what was skipped."""
    options = options or GitSourceOptions()
    repo = open_repository(os.fspath(repo_path))
    tree, commit = resolve(repo, rev)
    attributes = None
    if options.attributes:
        if commit is None:
            raise SourceError("names a tree, not a commit: git attributes are read from a commit",
                              path=rev)
        attributes = _ArchiveAttributes(repo, commit)
    reader = _GitReader(repo, tx, options, attributes)
    reader.read(tree)
    root = reader.builder.write(tx)
    if options.progress:
        options.progress(reader.files, reader.bytes)
    return GitSourceResult(root, reader.dir_meta, commit, reader.skipped, reader.files, reader.bytes)

"""What ``sealtree deploy`` prepares besides the farm: the writable /etc, the shared /var, the
boot files (docs/FORMAT.md, "Writable state"; paths in ``overlay.layout``).

* **/etc**: when the default deployment has a writable /etc, the new
  deployment's is the 3-way merge (``etc_merge``) of the default's vendor /etc
  (read from its kept pack: the base), the default's writable /etc (the
  user's) and the new vendor /etc (from the new pack); else a copy of the new
  vendor /etc.  What was done, and every conflict by path, goes to
  ``etc/<dep_id>.json`` (``EtcReport``), which ``status`` shows.
* **/var**: seeded from the new tree's /var only when ``deploy/var`` does not
  exist yet (the first deployment), like bootc: from then on it belongs to the
  system, and every deployment shares it.
* **boot files**: ``boot/<dep_id>/vmlinuz`` and ``initrd.img`` (``boot_files``).

Everything is built under a temporary name (``etc/.tmp-<dep_id>/``,
``boot/.tmp-<dep_id>/``, ``.tmp-var/``) while the deploy holds the state lock,
and renamed into place by ``publish`` once the deployment's checks have passed:
a crash leaves a ``.tmp-`` directory (removed by the next deploy,
``clean_leftovers``), never a half-written /etc.  ``discard`` undoes a
``publish`` when a later step fails; ``remove`` goes with ``undeploy``.

The new vendor /etc, /var and boot files come from the new pack (each inline file
checked against its digest in the verified manifest) or, for a metacopy deployment
of a format-3 pack with its image mounted, from that image (``image_tree``); large
files from their objects, which the deploy may still be checking meanwhile: it
publishes nothing before those checks have passed.  The
base comes from the default's kept pack without checking its signatures again:
it only decides, per path, which side wins in the writable /etc, which whoever
can write the disk can change directly anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pack.kept import kept_pack_path
from pack.manifest import ManifestEntry
from pack.reader import PackReader
from pack.unpack import TreeWriter
from store.atomic import atomic_write
from store.errors import DeployError, SealtreeError
from store.ids import RawId
from store.model import Kind
from store.names import show
from store.record import Mutable
from store.remove import remove_tree
from store.repo import Repository

from . import boot_files
from .deployment_pack import large_files
from .image_tree import MountedImage
from .layout import ETC_REPORT_SUFFIX, TMP_PREFIX, TRASH_PREFIX, DeployLayout
from .objcheck import LargeFile, open_object_file
from .state import ID_RE, State

if TYPE_CHECKING:
    from .etc_merge import Conflict

ETC = b"etc"
VAR = b"var"
REPORT_FORMAT = "sealtree-etc"
REPORT_VERSION = 1
MAX_REPORT = 4 << 20
_CHUNK = 1 << 20


class StateError(DeployError):
    """The writable state of a deployment could not be prepared (``path`` names the file)."""


# -- the /etc report ------------------------------------------------------------------------------

class EtcReport(Mutable):
    """How a deployment's writable /etc was made: ``copied`` from its release, or ``merged``
    with the writable /etc of ``merged_from``; the paths the merge carried over or applied,
    and its conflicts (the user's version kept)."""

    __slots__ = ("how", "merged_from", "kept", "updated", "conflicts", "note")
    _fields = __slots__

    def __init__(self, how: str, merged_from: str | None = None, kept: list[str] | None = None,
                 updated: list[str] | None = None,
                 conflicts: list[dict[str, str]] | None = None, note: str | None = None) -> None:
        self.how = how  # "copied", "merged"
        self.merged_from = merged_from
        # "/etc/x": the user's changes carried over; the release's changes applied
        self.kept: list[str] = [] if kept is None else kept
        self.updated: list[str] = [] if updated is None else updated
        self.conflicts: list[dict[str, str]] = [] if conflicts is None else conflicts  # path, user, vendor
        self.note = note  # e.g. why no base could be read

    def encode(self) -> bytes:
        doc = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "how": self.how,
               "merged_from": self.merged_from, "kept": self.kept, "updated": self.updated,
               "conflicts": self.conflicts, "note": self.note}
        return (json.dumps(doc, indent=1) + "\n").encode()

    def describe_conflicts(self) -> list[str]:
        return [f"{c['path']}: {c['user']} by the user, {c['vendor']} by the new release "
                f"(the user's version kept)" for c in self.conflicts]

    def summary(self) -> str:
        if self.how == "merged":
            text = (f"merged from {self.merged_from}: {len(self.kept)} local changes kept, "
                    f"{len(self.updated)} release changes applied, "
                    f"{len(self.conflicts)} conflict{'' if len(self.conflicts) == 1 else 's'}")
        else:
            text = "copied from the release"
        return text + (f" ({self.note})" if self.note else "")


def _etc_path(rel: bytes) -> str:
    return "/etc/" + show(rel) if rel else "/etc"


def _conflict_doc(conflict: Conflict) -> dict[str, str]:
    return {"path": _etc_path(conflict.path), "user": conflict.user, "vendor": conflict.vendor}


def read_report(layout: DeployLayout, dep_id: str) -> EtcReport | None:
    """The /etc report of ``dep_id`` (None when there is none).  Raises StateError when it
    does not parse."""
    path = layout.etc_report(dep_id)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_REPORT + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateError(f"cannot read: {err.strerror}", path=path) from err
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT \
                or doc.get("version") != REPORT_VERSION or doc.get("how") not in ("copied", "merged"):
            raise ValueError("not a sealtree /etc report of version 1")
        conflicts = doc["conflicts"]
        if not all(isinstance(c, dict) and {"path", "user", "vendor"} <= set(c) for c in conflicts):
            raise ValueError("malformed conflicts")
        return EtcReport(doc["how"], doc.get("merged_from"), list(doc["kept"]),
                         list(doc["updated"]), list(conflicts), doc.get("note"))
    except (ValueError, KeyError, TypeError) as err:
        raise StateError(f"not a valid /etc report: {err}", path=path) from err


# -- reading subtrees out of a pack ---------------------------------------------------------------

def _copy_object(src: str, dst: str, mode: int = 0o644) -> None:
    with open_object_file(src) as source, open(dst, "xb") as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)
    os.chmod(dst, mode)


def _read_object(item: LargeFile) -> bytes:
    with open_object_file(item.obj) as handle:
        return handle.read()


class _Extraction(Mutable):
    """What one pass over a pack writes: whole subtrees (``etc``, ``var``) and single files."""

    __slots__ = ("subtrees", "singles", "large", "found")
    _fields = __slots__

    def __init__(self, subtrees: dict[bytes, str], singles: dict[bytes, str],
                 large: dict[bytes, LargeFile], found: set[bytes] | None = None) -> None:
        self.subtrees = subtrees  # top-level directory -> the new directory to write it to
        self.singles = singles  # tree path -> file to write
        self.large = large  # the large files of the tree, by path
        self.found: set[bytes] = set() if found is None else found  # subtrees that were directories


def _extract(reader: PackReader, job: _Extraction) -> None:
    """One pass over ``reader``'s entries, stopped after the last path wanted (rows come in
    name order, depth first).  A subtree that is not a directory in the tree is not written."""
    wanted_tops = set(job.subtrees) | {p.split(b"/", 1)[0] for p in job.singles}
    if not wanted_tops:
        return
    last = max(wanted_tops)
    with contextlib.ExitStack() as stack:
        writers: dict[bytes, TreeWriter] = {}
        for row, data in reader.entries():
            top, _sep, rest = row.path.partition(b"/")
            if top > last:
                break
            if row.path in job.singles and row.entry.kind is Kind.FILE:
                dst = job.singles[row.path]
                if data is not None:
                    with open(dst, "xb") as out:
                        out.write(data)
                    os.chmod(dst, 0o644)
                else:
                    _copy_object(job.large[row.path].obj, dst)
            if top not in job.subtrees:
                continue
            if not rest:
                if row.entry.kind is Kind.DIR:
                    os.mkdir(job.subtrees[top], 0o700)
                    writers[top] = stack.enter_context(
                        TreeWriter(job.subtrees[top], row.entry.meta))
                    job.found.add(top)
                continue
            writer = writers.get(top)
            if writer is not None:
                _write_row(writer, row, rest, data, job.large)


def _extract_from_image(image: MountedImage, job: _Extraction) -> None:
    """``_extract`` from the deployment's mounted image instead of its pack."""
    for path, dst in job.singles.items():
        if image.is_file(path):
            image.copy_file(path, dst)
    for top, dst in job.subtrees.items():
        if image.is_dir(top):
            image.copy_tree(top, dst)
            job.found.add(top)


def _write_row(writer: TreeWriter, row: ManifestEntry, rel: bytes, data: bytes | None,
               large: dict[bytes, LargeFile]) -> None:
    entry = row.entry
    if entry.kind is Kind.DIR:
        writer.mkdir(rel, entry.meta)
    elif entry.kind is Kind.SYMLINK:
        writer.symlink(rel, entry.target, entry.meta)
    else:
        # A copy, never a hardlink to the object: this tree is written to.
        writer.write_file(rel, data if data is not None else _read_object(large[row.path]),
                          entry.meta)


def _large_by_path(items: list[LargeFile]) -> dict[bytes, LargeFile]:
    return {item.path: item for item in items}


# -- preparing, publishing, removing --------------------------------------------------------------

class Prepared(Mutable):
    """The writable state of a new deployment, built under temporary names (see the module)."""

    __slots__ = ("layout", "dep_id", "etc", "boot", "var_seeded", "published")
    _fields = __slots__

    def __init__(self, layout: DeployLayout, dep_id: str, etc: EtcReport | None = None,
                 boot: boot_files.BootFiles | None = None, var_seeded: bool = False,
                 published: list[str] | None = None) -> None:
        self.layout = layout
        self.dep_id = dep_id
        self.etc = etc  # None: the tree has no /etc directory
        self.boot = boot
        self.var_seeded = var_seeded  # the shared /var was made from this tree (first deployment)
        # what publish() renamed into place
        self.published: list[str] = [] if published is None else published

    @property
    def etc_work(self) -> str:
        return self.layout.etc_in_progress(self.dep_id)

    @property
    def boot_work(self) -> str:
        return self.layout.boot_in_progress(self.dep_id)

    @property
    def var_work(self) -> str:
        return self.layout.var_in_progress

    def publish(self) -> None:
        """Rename what was built into place: /var (when seeded), the /etc report, /etc, the
        boot files.  ``discard`` undoes it."""
        try:
            if self.var_seeded and not os.path.lexists(self.layout.var):
                # (a mount may have seeded it meanwhile, from a tree of its own: that one stays)
                _rename_into(os.path.join(self.var_work, "tree"), self.layout.var, self.published)
            else:
                self.var_seeded = False
            if self.etc is not None:
                report = self.layout.etc_report(self.dep_id)
                atomic_write(report, self.etc.encode(), 0o600)
                self.published.append(report)
                _rename_into(os.path.join(self.etc_work, "out"), self.layout.etc(self.dep_id),
                             self.published)
            if self.boot is not None:
                _rename_into(os.path.join(self.boot_work, "files"), self.layout.boot(self.dep_id),
                             self.published)
        except OSError as err:
            raise StateError(f"cannot publish the deployment's state: {err.strerror}",
                             path=err.filename) from err
        finally:
            self.clean_work()

    def clean_work(self) -> None:
        for path in (self.etc_work, self.boot_work, self.var_work):
            _remove_quietly(path)
        for root in (self.layout.etc_root, self.layout.boot_root):  # made for this, if empty
            with contextlib.suppress(OSError):
                os.rmdir(root)

    def discard(self) -> None:
        """After a failure: remove what ``publish`` put in place and what was being built."""
        for path in reversed(self.published):
            if os.path.isdir(path) and not os.path.islink(path):
                _remove_quietly(path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self.published.clear()
        self.clean_work()


def _rename_into(build: str, final: str, published: list[str]) -> None:
    os.makedirs(os.path.dirname(final), mode=0o755, exist_ok=True)
    os.rename(build, final)
    published.append(final)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        remove_tree(path)


def _fresh_dir(path: str) -> None:
    """An empty directory at ``path`` (what a killed deploy left there removed first)."""
    if os.path.lexists(path):
        remove_tree(path)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    os.mkdir(path, 0o700)


def prepare(repo: Repository, layout: DeployLayout, reader: PackReader,
            items: list[LargeFile] | None, dep_id: str, state: State, *,
            image: MountedImage | None = None) -> Prepared:
    """Build the writable /etc, the seed of /var (when there is none) and the boot files of the
    new deployment ``dep_id`` from ``reader`` (its pack, whose data section has been read through
    once already, or, for a metacopy deployment from the pack's image, not: each inline file
    read here is checked against the signed manifest all the same) and ``items`` (its large
    files, whose checks the caller waits for before ``publish``; None: the manifest's, whose
    objects the deploy checks through the pack's image object list).  With ``image`` (the
    pack's EROFS image, mounted), they are copied out of the image instead, and the pack's
    manifest is not read.  Call with the state locked.

    Raises StateError, EtcMergeError; on any failure nothing is left built.
    """
    prepared = Prepared(layout, dep_id)
    try:
        _prepare(repo, prepared, reader, items, state, image)
    except BaseException:
        prepared.discard()
        raise
    return prepared


def _prepare(repo: Repository, prepared: Prepared, reader: PackReader,
             items: list[LargeFile] | None, state: State, image: MountedImage | None) -> None:
    layout = prepared.layout
    _fresh_dir(prepared.etc_work)
    new_etc = os.path.join(prepared.etc_work, "new")
    job = _Extraction({ETC: new_etc}, {}, {})
    seed_var = not os.path.lexists(layout.var)
    if seed_var:
        _fresh_dir(prepared.var_work)
        job.subtrees[VAR] = os.path.join(prepared.var_work, "tree")
    if image is not None:
        chosen = boot_files.choose_in_tree(os.fsdecode(image.root))
    else:
        chosen = boot_files.choose(reader.manifest.entries)
        job.large = _large_by_path(items if items is not None
                                   else large_files(repo.objects, reader.manifest))
    if chosen is not None:
        _fresh_dir(prepared.boot_work)
        files = os.path.join(prepared.boot_work, "files")
        os.mkdir(files, 0o755)
        job.singles = {tree_path: os.path.join(files, name)
                       for name, tree_path in chosen.paths().items()}
        prepared.boot = chosen
    try:
        if image is not None:
            _extract_from_image(image, job)
        else:
            _extract(reader, job)
    except OSError as err:
        raise StateError(f"cannot write the deployment's state: {err.strerror}",
                         path=err.filename) from err
    prepared.var_seeded = VAR in job.found
    if ETC not in job.found:
        return
    out = os.path.join(prepared.etc_work, "out")
    source = _merge_source(layout, state)
    if source is None:
        os.rename(new_etc, out)
        prepared.etc = EtcReport("copied")
        return
    base = os.path.join(prepared.etc_work, "base")
    note = _extract_base(repo, state, source, base)
    if note is not None:  # no base: the user's /etc is kept whole, nothing of the release applied
        base = new_etc
    from .etc_merge import merge_etc  # noqa: PLC0415 - only when there is a default's /etc

    plan = merge_etc(base, layout.etc(source), new_etc, out)
    prepared.etc = EtcReport(
        "merged", source, [_etc_path(p) for p in plan.kept], [_etc_path(p) for p in plan.updated],
        [_conflict_doc(c) for c in plan.conflicts], note)


def _merge_source(layout: DeployLayout, state: State) -> str | None:
    """The deployment whose writable /etc is carried over: the default, when it has one."""
    if state.default is None or not os.path.isdir(layout.etc(state.default)):
        return None
    return state.default


def _extract_base(repo: Repository, state: State, source: str, base: str) -> str | None:
    """Write the vendor /etc of deployment ``source`` at ``base``; a note when it cannot."""
    dep = state.get(source)
    commit = RawId(bytes.fromhex(dep.commit))
    path = kept_pack_path(repo, commit)
    try:
        with PackReader(path) as old:
            if old.commit_id != commit:
                return f"the kept pack of {source} is of another commit; its /etc kept as it is"
            job = _Extraction({ETC: base}, {}, _large_by_path(large_files(repo.objects,
                                                                          old.manifest)))
            _extract(old, job)
    except (SealtreeError, OSError) as err:
        _remove_quietly(base)
        return f"the vendor /etc of {source} cannot be read ({err}); its /etc kept as it is"
    if ETC not in job.found:
        os.mkdir(base, 0o755)  # the old release had no /etc: everything in it is the user's
    return None


def remove(layout: DeployLayout, dep_id: str) -> None:
    """Remove the writable /etc, its report and the boot files of ``dep_id`` (undeploy): each
    renamed to ``.trash-<dep_id>`` first, then removed (what cannot be is left for the next
    deploy's ``clean_leftovers``).  The shared /var stays."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.etc_report(dep_id))
    for final, trash in ((layout.etc(dep_id), layout.etc_trash(dep_id)),
                         (layout.boot(dep_id), layout.boot_trash(dep_id))):
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise StateError(f"cannot remove it: {err.strerror}", path=final) from err
        _remove_quietly(trash)


def clean_leftovers(layout: DeployLayout, keep: set[str]) -> None:
    """Remove what killed deploys and undeploys left in ``etc/`` and ``boot/``: directories
    being built or removed, and the state of deployments not in ``keep`` (every recorded id
    and every id a mount shows).  Call with the state locked; never fails."""
    for root in (layout.etc_root, layout.boot_root):
        for name in _names(root):
            path = os.path.join(root, name)
            dep_id = name.removesuffix(ETC_REPORT_SUFFIX)
            if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                _remove_quietly(path)
            elif ID_RE.fullmatch(dep_id) and dep_id not in keep:
                if name.endswith(ETC_REPORT_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                else:
                    _remove_quietly(path)


def _names(root: str) -> Iterator[str]:
    try:
        yield from os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return

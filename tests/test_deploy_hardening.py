"""What the audit broke on the deployment side (issue 14), each case as a test.

- a legal tree the tmpfs "sized from the manifest" could not hold (tmpfs charges an inode
  per hardlink), and a deployment that cannot be mounted must not be recorded;
- a farm too deep for a recursive removal: undeploy failed and left ``.trash-<id>``, and
  every later deploy failed on it;
- a state file whose ``next_serial`` made deploy write a state it could not read back;
- a deploy failing after the deployment was recorded as the default (record last).

Real mounts, as root.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from overlay import mounts, unpack_tmpfs
from overlay.deploy import deploy, undeploy
from overlay.layout import deploy_layout
from overlay.mount_deployment import unmount
from overlay.state import MAX_SERIAL, StateFile
from overlay.unpack_tmpfs import BOGO_INODE, PAGE, XATTR_OVERHEAD, TmpfsSize, tmpfs_size
from pack import freshness
from pack.manifest import Manifest, ManifestEntry
from store.errors import DeployError, FormatError
from store.ids import RawId
from store.model import Entry, Kind, Meta
from store.remove import remove_tree
from store.repo import Repository
from tests.helpers import assert_same_tree
from tests.test_deploy_cli import BIG, Site, _leftovers, published_site

pytestmark = pytest.mark.usefixtures("needs_root")

DEPTH = 1200  # deeper than Python's recursion limit


def _farms(site: Site) -> list[str]:
    root = os.path.join(site.repo, "deploy")
    # Not the writable state beside them (var/, etc/, boot/: overlay.layout)
    return sorted(n for n in os.listdir(root)
                  if n not in ("state.json", "state.lock", "var", "etc", "boot")) \
        if os.path.isdir(root) else []


def _nothing_recorded(site: Site) -> None:
    state = StateFile(os.path.join(site.repo, "deploy")).read()
    assert state.deployments == [] and state.default is None
    assert _farms(site) == []
    assert _leftovers(site.base) == []
    assert os.listdir(site.target) == []


# -- tmpfs sizing ----------------------------------------------------------------------------

def _many_identical_files(src: str) -> None:
    os.mkdir(os.path.join(src, "many"))
    for i in range(2000):
        open(os.path.join(src, "many", f"empty-{i}"), "wb").close()
    with open(os.path.join(src, "large"), "wb") as handle:
        handle.write(b"L" * BIG)


def test_identical_empty_files_fit_the_tmpfs(base):
    """2,000 identical empty files are one inode with 2,000 links: tmpfs charges each link."""
    site = published_site(base, _many_identical_files)
    repo = Repository.open(site.repo)
    result = deploy(repo, "os/main", site.keys, target=site.target)
    try:
        assert result.mount is not None
        assert_same_tree(site.src, site.target)
    finally:
        unmount(repo, site.target)
    assert _leftovers(site.base) == []


def test_a_deployment_that_cannot_mount_is_not_recorded(site, monkeypatch):
    repo = Repository.open(site.repo)
    monkeypatch.setattr(unpack_tmpfs, "tmpfs_size", lambda manifest, root_meta=None: TmpfsSize(4096, 16))
    with pytest.raises(DeployError, match="the tmpfs sized from the manifest is full"):
        deploy(repo, "os/main", site.keys, target=site.target)
    _nothing_recorded(site)


# -- record last -------------------------------------------------------------------------------

@pytest.mark.parametrize("mount", [False, True])
def test_a_late_failure_records_nothing(site, monkeypatch, mount):
    """The freshness record fails (a full disk, say) after every check and the mount: the
    deployment must not be left recorded as the default, nor its farm or mount behind."""
    repo = Repository.open(site.repo)

    def full_disk(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "freshness.json")

    monkeypatch.setattr(freshness, "record", full_disk)
    with pytest.raises(OSError):
        deploy(repo, "os/main", site.keys, target=site.target if mount else None)
    _nothing_recorded(site)


# -- deep farms --------------------------------------------------------------------------------

def _deep_dirs(top: str, depth: int) -> str:
    """``top/d/d/.../d`` ``depth`` levels deep, made one level at a time (os.makedirs recurses)."""
    os.makedirs(top, exist_ok=True)
    path = top
    for _ in range(depth):
        path = os.path.join(path, "d")
        os.mkdir(path)
    return path


def _deep_large_file(src: str) -> None:
    with open(os.path.join(_deep_dirs(src, DEPTH), "large"), "wb") as handle:
        handle.write(os.urandom(BIG))


@pytest.fixture
def deep_site(base):  # type: ignore[no-untyped-def]
    """A site whose tree holds a large file DEPTH directories deep; removed iteratively
    afterwards (pytest's own clean-up of old temporary directories recurses)."""
    site = published_site(base, _deep_large_file)
    yield site
    remove_tree(site.src)
    remove_tree(os.path.join(site.repo, "deploy"))


def test_undeploy_removes_a_farm_of_any_depth(deep_site):
    site = deep_site
    repo = Repository.open(site.repo)
    first = deploy(repo, "os/main", site.keys, make_default=False).deployment
    undeploy(repo, first.id)
    assert _farms(site) == []
    # What a crash (or an older sealtree) left: a deep farm being removed or built.
    layout = deploy_layout(repo)
    _deep_dirs(layout.trash(first.id), DEPTH)
    _deep_dirs(layout.farm_in_progress(first.id), DEPTH)
    second = deploy(repo, "os/main", site.keys).deployment
    assert _farms(site) == [second.id]


def test_a_leftover_that_cannot_be_removed_never_blocks_a_deploy(site):
    repo = Repository.open(site.repo)
    trash = deploy_layout(repo).trash("f" * 64 + ".9")
    os.makedirs(os.path.join(trash, "inner"))
    # Root ignores a directory's mode: a mount point below is what nothing can remove.
    with mounts.tmpfs(os.path.join(trash, "inner")):
        dep = deploy(repo, "os/main", site.keys).deployment
        assert dep.id in _farms(site)
    remove_tree(trash)


# -- next_serial ------------------------------------------------------------------------------

def _state_with_serial(site: Site, serial_text: str) -> str:
    path = os.path.join(site.repo, "deploy", "state.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write('{"format": "sealtree-deployments", "version": 1, "next_serial": '
                     + serial_text + ', "default": null, "previous": null, "booted": null, '
                     '"deployments": []}\n')
    return path


@pytest.mark.parametrize("serial", [str(10**20), str(MAX_SERIAL + 2), "9" * 5000, "0", "-3"],
                         ids=["1e20", "max+2", "5000 digits", "0", "-3"])
def test_a_state_with_an_impossible_next_serial_is_refused(site, serial):
    path = _state_with_serial(site, serial)
    with open(path, "rb") as handle:
        before = handle.read()
    with pytest.raises(FormatError) as caught:
        StateFile(os.path.dirname(path)).read()
    assert caught.value.path == path and "next_serial" in str(caught.value)
    proc = site.cli("deploy", "os/main", "--keys", site.keys, check=False)
    assert proc.returncode == 7 and f"{path}: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    with open(path, "rb") as handle:
        assert handle.read() == before


def test_the_last_serial_is_used_and_then_refused(site):
    path = _state_with_serial(site, str(MAX_SERIAL))
    dep = site.deploy()
    assert dep == f"{site.commit}.{MAX_SERIAL}"
    doc = json.loads(site.cli("status", "--json").stdout)  # the state reads back
    assert doc["default"] == dep
    with open(path, "rb") as handle:
        before = handle.read()
    proc = site.cli("deploy", "os/main", "--keys", site.keys, check=False)
    assert proc.returncode == 14 and "every deployment serial" in proc.stderr, proc.stderr
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert _farms(site) == [dep]


# -- the sizing rule, without mounting --------------------------------------------------------

def _row(path: bytes, kind: Kind, *, size: int = 0, digest: bytes = b"\0" * 32, inline: bool = True,
         target: bytes = b"", xattrs: tuple[tuple[bytes, bytes], ...] = ()) -> ManifestEntry:
    meta = Meta(0o755 if kind is Kind.DIR else 0o644, 0, 0, xattrs)
    entry = Entry(path.rpartition(b"/")[2], kind, meta, size, RawId(digest), target=target)
    return ManifestEntry(path, entry, inline)


def test_tmpfs_size_counts_every_link_and_stays_bounded():
    rows = [_row(b"many", Kind.DIR)]
    rows += [_row(b"many/%d" % i, Kind.FILE) for i in range(2000)]  # one inode, 2,000 links
    rows += [_row(b"big", Kind.FILE, size=10 << 20, inline=False)]  # in the farm: no charge
    rows += [_row(b"text", Kind.FILE, size=5000, digest=b"\1" * 32)]  # two pages
    rows += [_row(b"long", Kind.SYMLINK, target=b"t" * 200)]  # a page
    rows += [_row(b"x", Kind.FILE, digest=b"\2" * 32, xattrs=((b"user.a", b"v" * 4000),))]
    size = tmpfs_size(Manifest(rows, len(rows), RawId(b"\0" * 32), 0))
    links = 1 + len(rows) - 1  # the root and every entry but the large file
    xattr_inodes = -(-(len(b"user.a") + 4000 + XATTR_OVERHEAD) // BOGO_INODE)
    inodes = links + xattr_inodes
    assert size.inodes == inodes + inodes // 8 + 1024
    data = 3 * PAGE
    assert size.bytes == data + data // 8 + (4 << 20)

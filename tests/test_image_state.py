"""A metacopy deployment of a pack that lists its image's objects (format 3) never decodes the
pack's manifest: with a mount target, its writable /etc, the first /var and the boot files are
copied out of the mounted EROFS image (overlay/image_tree.py), each stub's bytes from its
object.  The oracle is the same deploy made from the pack's manifest (no mount target): both
must write the very same state, file by file (type, mode, owner, xattrs, content).

Real EROFS and overlay mounts, as root.
"""

from __future__ import annotations

import json
import os

import pytest

from overlay.deploy import deploy
from overlay.etc_merge import read_tree
from overlay.image_tree import MountedImage
from overlay.metacopy import Layout
from overlay.objcheck import Policy, Verity
from pack.reader import PackReader
from store.errors import VerificationError
from store.repo import Repository
from tests.test_writable_state import StateSite

pytestmark = pytest.mark.usefixtures("needs_root")


def _deploy(site: StateSite, *extra: str) -> str:
    out = site.cli("deploy", "os/main", "--keys", site.keys, "--layout", "metacopy",
                   "--verify", "userspace", "--no-default", "--json", *extra).stdout
    return str(json.loads(out)["id"])


def _state(site: StateSite, dep: str) -> dict[str, object]:
    layout = site.layout
    return {"etc": read_tree(layout.etc(dep)), "boot": read_tree(layout.boot(dep)),
            "var": read_tree(layout.var)}


@pytest.fixture
def sites(base):
    made = []
    for name in ("from the image", "from the manifest"):
        os.mkdir(os.path.join(base, name))
        site = StateSite(os.path.join(base, name))
        site.release(1)
        made.append(site)
    return made


def test_the_state_copied_from_the_image_is_the_state_from_the_manifest(sites):
    imaged, manifested = sites
    with PackReader(imaged.kept_pack()) as reader:
        assert reader.image_objects is not None  # format 3: the deploy below reads no manifest
    dep = _deploy(imaged, "--mount", imaged.target)
    imaged.umount()
    other = _deploy(manifested)
    got, want = _state(imaged, dep), _state(manifested, other)
    assert got == want
    etc = got["etc"]
    assert isinstance(etc, dict)
    # A large file of /etc (a stub in the image) has its object's bytes, not the stub's holes;
    # no stub xattr is copied; owners and modes are the tree's.
    assert etc[b"large.conf"].content == want["etc"][b"large.conf"].content  # type: ignore[index]
    assert all(not name.startswith(b"trusted.overlay.")
               for node in etc.values() for name, _ in node.meta.xattrs)
    assert (etc[b"shadow"].meta.mode, etc[b"shadow"].meta.gid) == (0o640, 42)
    with open(os.path.join(imaged.layout.etc(dep), "large.conf"), "rb") as handle:
        assert handle.read().startswith(b"release 1\n")
    assert sorted(got["boot"]) == [b"", b"initrd.img", b"vmlinuz"]  # type: ignore[arg-type]


def test_a_stub_naming_no_object_is_refused(tmp_path):
    """An image is checked against its signed digest before it is mounted; even so, a redirect
    that is not an object's path is never followed out of the object store."""
    tree = tmp_path / "image"
    tree.mkdir()
    stub = tree / "file"
    stub.write_bytes(b"")
    os.setxattr(stub, "trusted.overlay.redirect", b"/../../etc/shadow")
    os.setxattr(stub, "trusted.overlay.metacopy", b"\0\x24\0\x01" + bytes(32))
    with pytest.raises(VerificationError, match="the image's stub names no object"):
        MountedImage(str(tree), str(tmp_path / "objects")).copy_file(b"file", str(tmp_path / "out"))


def _named_digest(fd: int, path: str) -> bytes | None:
    """The kernel's measurement as it would be of an untampered object: the digest its name
    carries (this kernel has no fs-verity; bench/kernel_estimate.py does the same)."""
    name = os.path.basename(path)
    return bytes.fromhex(os.path.basename(os.path.dirname(path)) + name.split(".", 1)[0])


def _never(path: str) -> bool:
    raise AssertionError(f"{path}: nothing is enabled here")


@pytest.mark.parametrize("policy", [Policy.KERNEL, Policy.USERSPACE])
def test_an_object_swapped_for_a_fifo_is_refused_not_waited_on(sites, policy):
    """The state is copied while the objects are still being checked (on a thread under
    policy kernel): an object of /etc that is a FIFO is refused (opened without waiting, by
    the check or the copy), and nothing is left."""
    imaged, _ = sites
    repo = Repository.open(imaged.repo)
    with PackReader(imaged.kept_pack()) as reader:
        row = next(r for r in reader.manifest.entries if r.path == b"etc/large.conf")
    obj = repo.objects.file_path(row.entry.digest, row.entry.meta)
    os.unlink(obj)
    os.mkfifo(obj)
    with pytest.raises(VerificationError, match="not a regular file"):
        deploy(repo, "os/main", imaged.keys, policy=policy, layout=Layout.METACOPY,
               target=imaged.target, with_state=True, verity=Verity(_named_digest, _never))
    assert os.listdir(imaged.target) == [] and imaged.status()["deployments"] == []
    assert not os.path.exists(imaged.layout.etc_root) or os.listdir(imaged.layout.etc_root) == []

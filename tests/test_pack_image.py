"""A pack's EROFS image (pack/image.py, recipe 1) and its signed identity (pack format 2).

The image, mounted by the real kernel's erofs, must be the tmpfs that the metacopy layout
unpacks today (overlay.unpack_tmpfs with stubs) field by field: types, modes, owners,
xattrs (the two overlay xattrs of every stub included), sizes, link counts, symlink
targets, content, and which paths share an inode.  Then the pack side: the identity is
signed and deterministic, ``pack import`` builds and checks the image and keeps it as an
object inside its transaction, a version-1 pack still imports and deploys, fsck checks
image objects and prune keeps only those of kept packs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from overlay import metacopy, mounts
from overlay.deployment_pack import large_files
from overlay.unpack_tmpfs import tmpfs_size, unpack_into_tmpfs
from pack import format as fmt
from pack.image import RECIPE, build_image, check_image, image_digest, store_image
from pack.importer import import_pack, kept_images, kept_pack_path
from pack.keys import load_private_key
from pack.reader import PackReader, read_image_ref
from pack.signature import sign_pack
from store import xattrs
from store.errors import PackError
from store.fsck import fsck
from store.ids import RawId
from store.prune import prune
from store.repo import Repository
from tests.cli_runner import run_cli
from tests.helpers import add_content_twins, extra_links, materialise, trees
from tests.test_deploy_cli import Site, _enlarge
from tests.test_pack_support import downgrade, load_keyring

pytestmark = pytest.mark.usefixtures("needs_root")


# -- the image against the tmpfs, field by field -------------------------------------------------

@contextlib.contextmanager
def mounted_image(image: str, target: str) -> Iterator[str]:
    """``image`` mounted read-only by the kernel's erofs: a file-backed mount (Linux 6.12+),
    else through a loop device (``mount -o loop``, detached again on unmount)."""
    try:
        mounts.mount(image, target, "erofs", mounts.MS_RDONLY)
    except OSError:
        subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", image, target], check=True)
    try:
        yield target
    finally:
        mounts.umount(target)


def _fields(root: str) -> tuple[dict[bytes, tuple[object, ...]], set[frozenset[bytes]]]:
    """Every path below ``root`` (the root as ``.``): type, mode, owner, every xattr, size and
    link count (not of directories), content digest or symlink target; and the inode groups
    (paths sharing one inode, of two paths or more)."""
    top = os.fsencode(root)
    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, set[bytes]] = {}
    for directory, dirs, files in os.walk(top):
        for name in [b"", *dirs, *files] if directory == top else [*dirs, *files]:
            path = os.path.join(directory, name) if name else directory
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            names = tuple(sorted(xattrs.read(path)))
            extra: object = None
            if stat.S_ISREG(kind):
                with open(path, "rb") as handle:
                    extra = hashlib.sha256(handle.read()).hexdigest()
                inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISLNK(kind):
                extra = os.readlink(path)
            # A directory's size and link count are each filesystem's own bookkeeping
            # (tmpfs: 20 bytes an entry; erofs: its dirent blocks): not compared.
            size, nlink = (None, None) if stat.S_ISDIR(kind) else (st.st_size, st.st_nlink)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, names, size,
                        nlink, extra)
    return out, {frozenset(g) for g in inodes.values() if len(g) > 1}


def assert_image_is_the_tmpfs(repo: Repository, pack: str, where: str) -> bytes:
    """Build the image of ``pack``, mount it, unpack the same pack with stubs into a tmpfs,
    and compare both trees field by field; returns the image."""
    image_file = os.path.join(where, "image.erofs")
    view = os.path.join(where, "image view")
    tmp = os.path.join(where, "tmpfs view")
    os.mkdir(view)
    os.mkdir(tmp)
    with PackReader(pack) as reader:
        image = build_image(reader)
        assert reader.image is not None and check_image(reader, image) == reader.image.digest
        with open(image_file, "wb") as handle:
            handle.write(image)
        items = large_files(repo.objects, reader.manifest)
        plan = metacopy.plan_stubs(repo.objects, items)
        size = tmpfs_size(reader.manifest, reader.commit.root_meta, stubs=True,
                          stub_xattr_bytes=plan.xattr_bytes(items))
        with mounted_image(image_file, view), \
                mounts.tmpfs(tmp, size=size.bytes, inodes=size.inodes):
            unpack_into_tmpfs(reader, tmp, plan)
            got, got_groups = _fields(view)
            want, want_groups = _fields(tmp)
    assert got.keys() == want.keys()
    for path in sorted(want):
        assert got[path] == want[path], path
    assert got_groups == want_groups
    # Every large file is a stub: its two overlay xattrs and no data in the image.
    stubs = [path for path, f in want.items()
             if any(n == metacopy.METACOPY_XATTR for n, _v in f[4])]  # type: ignore[attr-defined]
    assert len(stubs) == len(items)
    return image


def test_the_image_is_the_metacopy_tmpfs(site, base):
    repo = Repository.open(site.repo)
    pack = kept_pack_path(repo, RawId(bytes.fromhex(site.commit)))
    image = assert_image_is_the_tmpfs(repo, pack, base)
    # The large data is not in the image: far smaller than the tree it describes.
    with PackReader(pack) as reader:
        assert len(image) < reader.manifest.large_bytes


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow], deadline=None)
@given(tree=trees, links=extra_links)
def test_generated_trees_image_is_the_tmpfs(tmp_path_factory, tree, links):
    where = str(tmp_path_factory.mktemp("img") / "i m,g:e")
    os.mkdir(where)
    src = os.path.join(where, "src")
    os.mkdir(src)
    big = add_content_twins(_enlarge(tree))  # two stubs of other metadata, one object
    materialise(os.fsencode(src), big, links)
    made = Site(where, src)
    pack = made.publish("1", 1_700_000_000)
    assert_image_is_the_tmpfs(Repository.open(made.repo), pack, where)


def test_debian_minbase_image_is_the_tmpfs(base, minbase):
    made = Site(base, minbase)
    pack = made.publish("1", 1_700_000_000)
    image = assert_image_is_the_tmpfs(Repository.open(made.repo), pack, base)
    print(f"minbase image: {len(image)} bytes")


# -- the signed identity -------------------------------------------------------------------------

def test_pack_build_is_deterministic_and_names_its_image(site, base):
    one, two = os.path.join(base, "one.pack"), os.path.join(base, "two.pack")
    run_cli("pack", "build", "os/main", "-o", one, repo=site.repo)
    run_cli("pack", "build", "os/main", "-o", two, repo=site.repo)
    with open(one, "rb") as a, open(two, "rb") as b:
        assert a.read() == b.read()
    with PackReader(one) as reader:
        assert reader.header.version == fmt.VERSION == 3
        ref = reader.image
        assert ref is not None and ref.recipe == RECIPE
        image = build_image(reader)
        assert (ref.size, ref.digest) == (len(image), image_digest(image))
        listed = reader.image_objects
    assert read_image_ref(one) == ref
    info = run_cli("pack", "inspect", one, "--json").stdout
    assert f'"digest": "sha256:{ref.digest.hex()}"' in info
    assert listed is not None and json.loads(info)["image_objects"] == len(listed) > 0
    assert f"; {len(listed)} objects listed" in run_cli("pack", "inspect", one).stdout


def deploys_in_both_layouts(site: Site) -> None:
    """The site's imported pack deploys and mounts in both layouts, showing the tree's files."""
    for layout in ("hardlinks", "metacopy"):
        site.cli("deploy", "os/main", "--keys", site.keys, "--mount", site.target,
                 "--verify", "userspace", "--layout", layout)
        try:
            with open(os.path.join(site.target, "usr/bin/tool"), "rb") as a, \
                    open(os.path.join(site.src, "usr/bin/tool"), "rb") as b:
                assert a.read() == b.read()
        finally:
            site.cli("umount", site.target)


def _resign(base: str, data: bytes, name: str) -> str:
    path = os.path.join(base, name)
    with open(path, "wb") as handle:
        handle.write(data)
    sign_pack(path, load_private_key(os.path.join(base, "vendor")))
    return path


def _objects(repo: Repository, suffix: str) -> list[str]:
    return [o.path for o in repo.objects.iter_objects() if o.path.endswith(suffix)]


def test_a_pack_signing_another_image_is_refused_and_nothing_is_left(site, base):
    repo = Repository.open(site.repo)
    with open(site.kept_pack(), "rb") as handle:
        data = bytearray(handle.read())
    with PackReader(site.kept_pack()) as reader:
        at = reader.header.image_offset
    data[at + 10] ^= 1  # the first byte of the signed fs-verity digest
    pack = _resign(base, bytes(data), "other image.pack")
    verify = run_cli("pack", "verify", pack, "--keys", site.keys, check=False)
    assert verify.returncode == PackError.exit_code and "the image built from it" in verify.stderr
    device = Repository.init(os.path.join(base, "device"))
    with pytest.raises(PackError, match="the image built from it") as info:
        import_pack(device, pack, load_keyring(site.keys))
    assert info.value.path == pack
    assert device.refs.list() == {}
    assert _objects(device, ".image") == [] and _objects(device, ".commit") == []
    assert [n for n in os.listdir(device.layout.packs) if n.endswith(".pack")] == []
    assert os.listdir(device.layout.tmp) == []
    assert repo.refs.read("os/main") is not None


def _version_1(data: bytes) -> bytes:
    """The same pack in format version 1: no image identity."""
    return downgrade(data, 1)


def test_a_version_1_pack_still_imports_and_deploys(site, base):
    with open(site.kept_pack(), "rb") as handle:
        pack = _resign(base, _version_1(handle.read()), "old.pack")
    repo = Repository.open(site.repo)
    for path in _objects(repo, ".image"):
        os.unlink(path)
    # The same commit again, as a version-1 pack: it replaces the kept pack, names no image.
    result = site.cli("pack", "import", pack, "--keys", site.keys, "--json").stdout
    assert '"image": null' in result
    assert _objects(repo, ".image") == []
    with open(site.kept_pack(), "rb") as a, open(pack, "rb") as b:
        assert a.read() == b.read()
    with PackReader(pack) as reader:
        assert reader.header.version == 1 and reader.image is None
        with pytest.raises(PackError, match="names no image"):
            store_image(repo.objects, reader)
    deploys_in_both_layouts(site)


def test_import_keeps_the_image_as_an_object(site):
    repo = Repository.open(site.repo)
    with PackReader(site.kept_pack()) as reader:
        ref = reader.image
        assert ref is not None
        path = repo.objects.image_path(RawId(ref.digest))
        assert path.endswith(f"/{ref.digest.hex()[:2]}/{ref.digest.hex()[2:]}.image")
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
        assert st.st_size == ref.size
        with open(path, "rb") as handle:
            assert image_digest(handle.read()) == ref.digest
        assert store_image(repo.objects, reader) == path  # present: not built again
        os.unlink(path)
        assert store_image(repo.objects, reader) == path  # missing: built, checked, written
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o444


def test_fsck_catches_a_changed_image(site):
    repo = Repository.open(site.repo)
    assert fsck(repo).problems == []
    [path] = _objects(repo, ".image")
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(1024)  # the superblock
        byte = handle.read(1)
        handle.seek(1024)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, 0o444)
    problems = fsck(repo).problems
    assert [(p.kind, p.path) for p in problems] == [("corrupt", path)]
    assert "image changed" in problems[0].message
    assert "corrupt" in run_cli("fsck", repo=site.repo, check=False).stdout


def test_prune_keeps_the_images_of_kept_packs_only(site, base):
    repo = Repository.open(site.repo)
    [kept] = _objects(repo, ".image")
    stray = os.path.join(os.path.dirname(kept), "0" * 62 + ".image")
    shutil.copy(kept, stray)  # an image no pack names
    report = run_cli("prune", repo=site.repo).stdout
    assert "deleted 1 objects" in report
    assert _objects(repo, ".image") == [kept]
    # No ref and no deployment reaches the commit any more: its pack's image goes too.
    repo.refs.update("os/main", None, RawId(bytes.fromhex(site.commit)))
    prune(repo, images=lambda commits: kept_images(repo, commits))
    assert _objects(repo, ".image") == [] and _objects(repo, ".commit") == []


def test_pack_deltas_rebuild_version_2_packs_byte_for_byte(site, base):
    """From a version-2 pack and from the same commit's version-1 pack (what a device that
    pulled before may keep) to the next version-2 pack: the rebuilt pack is the pack."""
    from pack.delta import apply_pack_delta, make_pack_delta  # noqa: PLC0415

    old = os.path.join(base, "old.pack")
    shutil.copy(site.kept_pack(), old)
    with open(old, "rb") as handle:
        old_v1 = _resign(base, _version_1(handle.read()), "old-v1.pack")
    with open(os.path.join(site.src, "etc/hostname"), "w") as handle:
        handle.write("another device name\n")
    new = site.publish("2.0", 1_700_000_100)
    with open(new, "rb") as handle:
        want = handle.read()
    for source in (old, old_v1):
        delta = os.path.join(base, "d.pdelta")
        make_pack_delta(source, new, delta)
        out = os.path.join(base, "rebuilt.pack")
        apply_pack_delta(source, delta, out)
        with open(out, "rb") as handle:
            assert handle.read() == want
        with PackReader(out) as reader:
            assert reader.image is not None and reader.image == read_image_ref(new)

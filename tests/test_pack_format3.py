"""Pack format version 3: the image objects (docs/FORMAT.md section 7, "The image objects"),
the reader that leaves the manifest for later (``PackReader(check_manifest=False)``), and
recipe 1's refusal of overlay xattrs.

The section round trips; each parse rule refuses its own breach with PackError (crafted
packs, nothing decompressed); damaged sections give only PackError; a signed version-3 pack
whose list is not what its manifest gives is refused by ``pack import`` and ``pack
verify``, leaving nothing; a lazy reader gives the same manifest as an eager one and
refuses a damaged manifest frame on first use, without importing zstd before; version-2
packs still import and deploy; a tree with an overlay xattr gets no pack with an image, and
a version-1 pack of one is still refused at deploy.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pack import format as fmt
from pack.build import build_pack
from pack.image import build_image
from pack.importer import import_pack
from pack.reader import PackReader
from store.errors import PackError
from store.fsverity import digest_bytes
from store.ids import RawId
from store.objects import ObjectStore, relative_path
from store.repo import Repository
from tests.cli_runner import run_cli
from tests.reliability import packcodec as pc
from tests.test_pack_hostile import BIG, HI, good_parts, write
from tests.test_pack_image import _objects, _resign, deploys_in_both_layouts
from tests.test_pack_support import FILE_META, build_sample, craft, downgrade, load_keyring

IDENTITY = struct.pack("<HQ32s", 1, 4096, bytes(32))  # parses; the image is not built here
GOOD = fmt.ImageObject(RawId(digest_bytes(BIG)), bytes.fromhex(FILE_META.object_key()), len(BIG))


def _section(*objects: tuple[bytes, bytes, int], count: int | None = None) -> bytes:
    return struct.pack("<I", len(objects) if count is None else count) + b"".join(
        struct.pack("<32s32sQ", *o) for o in objects)


GOOD_RAW = (GOOD.digest, GOOD.meta_key, GOOD.size)


def _v3(section: bytes | None = None) -> bytes:
    """good_parts (a/, a/f inline, b large, l symlink) as version 3 with ``section``."""
    rows, root = good_parts()
    return craft(rows, root=root, data=HI, image=IDENTITY,
                 image_objects=_section(GOOD_RAW) if section is None else section)


# -- the section -------------------------------------------------------------------------------

def test_image_objects_round_trip(tmp_path):
    path = write(tmp_path, _v3())
    with PackReader(path) as reader:
        assert reader.header.version == fmt.VERSION == 3
        assert reader.image_objects == (GOOD,)
        assert reader.header.image_count == 1
        reader.check_data()
    assert fmt.encode_image_objects([GOOD]) == _section(GOOD_RAW)
    header = reader.header.replace(image_count=0)
    size = os.path.getsize(path)
    at = header.image_objects_offset
    data = open(path, "rb").read()
    parsed = fmt.parse_image_count(data[at:at + 4], header, size)
    assert parsed == reader.header
    assert fmt.parse_image_objects(data[at + 4:parsed.tables_offset], parsed) == (GOOD,)
    # One spelling of a file object's path: the object list's, the store's, the stub's.
    assert GOOD.relative_path() == relative_path("file", GOOD.digest, FILE_META)
    store = ObjectStore("/r/objects")
    assert store.keyed_file_path(GOOD.digest, GOOD.meta_key) == store.file_path(GOOD.digest, FILE_META)
    assert GOOD.relative_path().endswith(f".{FILE_META.object_key()}.file")


def test_built_pack_lists_each_large_digest_once_in_manifest_order(tmp_path):
    built = build_sample(str(tmp_path), inline_max=64)
    with PackReader(built.pack) as reader:
        assert reader.image_objects is not None
        want: list[fmt.ImageObject] = []
        for row in reader.manifest.large_entries():
            if all(o.digest != row.entry.digest for o in want):
                want.append(fmt.ImageObject(row.entry.digest,
                                            bytes.fromhex(row.entry.meta.object_key()),
                                            row.entry.size))
        assert reader.image_objects == tuple(want) and want
        build_image(reader)  # checks the list against the manifest: no error


REFUSED = {
    "count above the entry count": (_section(GOOD_RAW, count=4), "4 image objects, more than the 3 "),
    "size not above inline_max": (_section((GOOD.digest, GOOD.meta_key, 4096)), "not a large file"),
    "size above the bound": (_section((GOOD.digest, GOOD.meta_key, 1 << 63)), "more than"),
    "digest twice": (_section(GOOD_RAW, GOOD_RAW), "repeats digest"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_image_objects_are_refused_when_parsed(tmp_path, name):
    section, pattern = REFUSED[name]
    with pytest.raises(PackError, match=pattern) as info:
        PackReader(write(tmp_path, _v3(section)), check_manifest=False)
    assert info.value.offset is not None and info.value.path is not None


def test_truncated_image_objects_are_refused(tmp_path):
    data = _v3()
    header = fmt.parse_header(data[:fmt.HEADER_SIZE], len(data))
    at = header.image_objects_offset
    with pytest.raises(PackError, match="truncated image object count"):
        fmt.parse_image_count(data[at:at + 3], header, len(data))
    with pytest.raises(PackError, match="truncated: 3 image objects"):
        fmt.parse_image_count(struct.pack("<I", 3), header, at + 4 + 2 * 72)
    counted = header.replace(image_count=1)
    with pytest.raises(PackError, match="truncated image objects: need 72 bytes, got 71"):
        fmt.parse_image_objects(data[at + 4:at + 4 + 71], counted)
    with pytest.raises(PackError, match=f"more than the {fmt.MAX_ENTRIES} large files"):
        fmt.parse_image_count(struct.pack("<I", fmt.MAX_ENTRIES + 1),
                              header.replace(entry_count=fmt.MAX_ENTRIES, manifest_size=1 << 40),
                              1 << 40)
    few = header.replace(entry_count=1000, manifest_size=fmt.MIN_LARGE_ROW * 10 + 68)
    with pytest.raises(PackError, match="11 image objects, more than the 10 large files"):
        fmt.parse_image_count(struct.pack("<I", 11), few, 1 << 40)
    for cut in (at + 2, at + 4 + 40, header.image_offset + 10):  # the file itself cut short
        with pytest.raises(PackError, match="truncated|add up"):
            with PackReader(write(tmp_path, data[:cut]), check_manifest=False):
                pass


def write_bytes(data: bytes) -> str:
    handle = tempfile.NamedTemporaryFile(prefix="v3-", suffix=".pack", delete=False)
    with handle:
        handle.write(data)
    return handle.name


@pytest.mark.parametrize("section,detail", [
    (_section((GOOD.digest, bytes(32), GOOD.size)), "index 0: the pack lists"),
    (_section(), "(0 objects) is not what its manifest gives (1): first difference at index 0: "
                 "the pack lists nothing"),
])
def test_a_list_the_manifest_does_not_give_is_refused_by_the_pass_over_the_rows(tmp_path, section,
                                                                                detail):
    with PackReader(write(tmp_path, _v3(section))) as reader:
        reader.check_data()  # the reader alone does not compare: the pass over the rows does
        with pytest.raises(PackError, match="its image object list") as info:
            build_image(reader)
    assert detail in str(info.value) and info.value.path == reader.name


def _positions(data: bytes) -> tuple[int, int]:
    header = fmt.parse_header(data[:fmt.HEADER_SIZE], len(data))
    at = header.image_objects_offset
    return at, fmt.parse_image_count(data[at:at + 4], header, len(data)).tables_offset


@pytest.fixture(scope="module")
def v3_pack(tmp_path_factory) -> bytes:
    built = build_sample(str(tmp_path_factory.mktemp("v3")), inline_max=64)
    return open(built.pack, "rb").read()


@settings(max_examples=int(os.environ.get("SEALTREE_PACK_FUZZ_EXAMPLES", "150")), deadline=None)
@given(data=st.data())
def test_damaged_image_objects_only_raise_pack_error(v3_pack, data):
    start, end = _positions(v3_pack)
    damaged = bytearray(v3_pack)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(start, end - 1))
        how = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        value = data.draw(st.integers(0, 255))
        if how == "set":
            damaged[where] = value
        elif how == "insert":
            damaged[where:where] = bytes([value])
        elif how == "delete":
            del damaged[where]
        else:
            del damaged[where:]
        end = min(end, len(damaged))
        if end <= start:
            break
    path = write_bytes(bytes(damaged))
    try:
        with PackReader(path) as reader:
            build_image(reader)  # reads everything, checks the list against the manifest
    except PackError as err:
        assert str(err)
    finally:
        os.unlink(path)


# -- the lazy manifest -------------------------------------------------------------------------

def test_lazy_manifest_is_the_eager_one(tmp_path):
    built = build_sample(str(tmp_path), inline_max=64)
    sha = hashlib.sha256(open(built.pack, "rb").read()).digest()
    with PackReader(built.pack, expected_sha256=sha) as eager:
        rows = [(row, data) for row, data in eager.entries()]
        counts = eager.manifest.as_dict()
    trees: list[RawId] = []
    with PackReader(built.pack, expected_sha256=sha, check_manifest=False,
                    on_tree=lambda tree_id, _encoded: trees.append(tree_id)) as lazy:
        assert lazy.image_objects is not None and trees == []
        manifest = lazy.manifest
        assert lazy.manifest is manifest  # checked once
        assert {k: v for k, v in manifest.as_dict().items() if k != "rows"} == \
            {k: v for k, v in counts.items() if k != "rows"}
        assert [(row, data) for row, data in lazy.entries()] == rows  # and the SHA-256 held
        assert trees and trees[-1] == manifest.root_tree


def test_lazy_reader_refuses_a_damaged_manifest_frame_on_first_use(tmp_path):
    rows, root = good_parts()
    data = bytearray(_v3())
    header = fmt.parse_header(bytes(data[:fmt.HEADER_SIZE]), len(data))
    at = fmt.parse_image_count(bytes(data[header.image_objects_offset:header.image_objects_offset + 4]),
                               header, len(data)).tables_offset + header.tables_size
    data[at + 8] ^= 0xFF  # inside the first manifest frame's compressed bytes
    path = write(tmp_path, bytes(data))
    with PackReader(path, check_manifest=False) as reader:
        assert reader.image_objects == (GOOD,)
        with pytest.raises(PackError) as info:
            reader.manifest  # noqa: B018 - the first use checks it
        assert info.value.path == path
        with pytest.raises(PackError):
            list(reader.entries())
    with pytest.raises(PackError):
        PackReader(path)


def test_lazy_reader_imports_no_zstd(tmp_path):
    built = build_sample(str(tmp_path), inline_max=64)
    code = ("import sys\nfrom pack.reader import PackReader\n"
            f"with PackReader({built.pack!r}, check_manifest=False) as r:\n"
            "    assert r.image_objects\n"
            "assert 'zstandard' not in sys.modules, 'imported zstandard'\n"
            f"with PackReader({built.pack!r}) as r:\n"
            "    assert r.manifest.large_files\n"
            "assert 'zstandard' in sys.modules\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


# -- signed packs: import, verify, older versions, overlay xattrs ---------------------------------

@pytest.mark.usefixtures("needs_root")
def test_a_signed_pack_with_a_wrong_list_is_refused_and_nothing_is_left(site, base):
    data = bytearray(open(site.kept_pack(), "rb").read())
    start, _end = _positions(bytes(data))
    data[start + 4 + 32] ^= 1  # the first object's meta key: parses, not the manifest's
    pack = _resign(base, bytes(data), "wrong list.pack")
    verify = run_cli("pack", "verify", pack, "--keys", site.keys, check=False)
    assert verify.returncode == PackError.exit_code
    assert "its image object list" in verify.stderr and "first difference at index 0" in verify.stderr
    device = Repository.init(os.path.join(base, "device"))
    with pytest.raises(PackError, match="its image object list") as info:
        import_pack(device, pack, load_keyring(site.keys))
    assert info.value.path == pack
    assert device.refs.list() == {}
    assert _objects(device, ".image") == [] and _objects(device, ".commit") == []
    assert [n for n in os.listdir(device.layout.packs) if n.endswith(".pack")] == []


@pytest.mark.usefixtures("needs_root")
def test_a_version_2_pack_still_imports_and_deploys(site, base):
    pack = _resign(base, downgrade(open(site.kept_pack(), "rb").read(), 2), "v2.pack")
    site.cli("pack", "import", pack, "--keys", site.keys)
    with PackReader(site.kept_pack()) as reader:
        assert reader.header.version == 2 and reader.image is not None
        assert reader.image_objects is None
    deploys_in_both_layouts(site)


@pytest.mark.usefixtures("needs_root")
@pytest.mark.parametrize("name", ["trusted.overlay.opaque", "user.overlay.redirect"])
def test_pack_build_refuses_a_tree_with_an_overlay_xattr(site, base, name):
    os.setxattr(os.path.join(site.src, "usr/bin"), name, b"y")
    site.cli("commit", "-b", "os/main", "--timestamp", "1700000100", site.src)
    out = os.path.join(base, "overlay.pack")
    built = site.cli("pack", "build", "os/main", "-o", out, check=False)
    assert built.returncode == PackError.exit_code
    assert f"xattr {name} at usr/bin would be interpreted by overlayfs" in built.stderr
    assert not os.path.exists(out)
    with pytest.raises(PackError, match="such a tree cannot be deployed and has no image"):
        repo = Repository.open(site.repo)
        commit_id = repo.refs.read("os/main")
        assert commit_id is not None
        build_pack(repo, commit_id, "os/main", out)


def _with_overlay_xattr(data: bytes, version: int) -> bytes:
    """The pack ``data`` with ``user.overlay.opaque`` on the directory usr/, consistent again
    (tree ids, commit id), as ``version`` 1 or (with the original image identity and objects,
    which recipe 1 would refuse to make) 3."""
    pack = pc.parse(data)
    image, objects = pack.image, pack.image_objects
    for row in pack.rows:
        if row.path == b"usr":
            row.entry.xattrs = sorted([*row.entry.xattrs, (b"user.overlay.opaque", b"y")])
    pc.fix_derived(pack)  # makes it version 1
    if version == 3:
        pack.version, pack.image, pack.image_objects = 3, image, objects
    return pc.encode(pack)


@pytest.mark.usefixtures("needs_root")
def test_overlay_xattr_v3_import_refused_v1_imports_and_deploy_refuses(site, base):
    original = open(site.kept_pack(), "rb").read()
    v3 = _resign(base, _with_overlay_xattr(original, 3), "overlay v3.pack")
    imported = site.cli("pack", "import", v3, "--keys", site.keys, "--allow-downgrade", check=False)
    assert imported.returncode == PackError.exit_code
    assert "xattr user.overlay.opaque at usr would be interpreted by overlayfs" in imported.stderr
    v1 = _resign(base, _with_overlay_xattr(original, 1), "overlay v1.pack")
    site.cli("pack", "import", v1, "--keys", site.keys, "--allow-downgrade")
    deployed = site.cli("deploy", "os/main", "--keys", site.keys, "--mount", site.target,
                        "--allow-downgrade", check=False)
    assert deployed.returncode != 0
    assert "user.overlay.opaque would be interpreted by overlayfs" in deployed.stderr

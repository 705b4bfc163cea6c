"""README.md "Image builder" pieces that need no qemu: sealtree-prepare-rootfs on the real
bookworm tree, and the explicit empty floor of a first release.

The tree is tests/vm/real_system.py's cached debootstrap (built when missing: a few
minutes), seen through an overlay so the cache is never written.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.boot_config import BootConfig
from overlay.boot_floor import check_floor, load_floor
from pack import freshness
from store.ids import HexId
from tests.vm import debian_chroot, real_system

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ROOT / "integration" / "sealtree-prepare-rootfs"
EMPTY_FLOOR = '{"format": 1, "refs": {}}\n'  # README.md, step 4, release 1


def test_an_explicit_empty_floor_admits_every_release(tmp_path: Path) -> None:
    path = tmp_path / "freshness.json"
    path.write_text(EMPTY_FLOOR)
    floor = load_floor(BootConfig(freshness=str(path)))
    assert floor == {}
    # any release of any ref passes (the first release has nothing older to refuse)
    check_floor(floor, "os/main", freshness.Accepted(HexId("00" * 32), "1", 1), str(path))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, chroot and overlay mounts")
    base = real_system.real_system_tree()
    with debian_chroot.overlay_view(base, tmp_path_factory.mktemp("prepare")) as root:
        done = subprocess.run([str(PREPARE), str(root)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        yield root


def test_prepare_rootfs_moves_user_directories_into_var(rootfs: Path) -> None:
    links = {name: os.readlink(rootfs / name) for name in ("home", "root", "srv", "opt", "mnt", "usr/local")}
    assert links == {"home": "var/home", "root": "var/roothome", "srv": "var/srv", "opt": "var/opt",
                     "mnt": "var/mnt", "usr/local": "../var/usrlocal"}
    assert (rootfs / "var/roothome/.bashrc").is_file()  # moved with its contents
    assert (rootfs / "var/roothome").stat().st_mode & 0o777 == 0o700
    assert (rootfs / "etc/machine-id").read_bytes() == b""
    assert (rootfs / "sysroot").is_dir()
    assert "d /var/usrlocal 0755" in (rootfs / "usr/lib/tmpfiles.d/sealtree-var.conf").read_text()


def test_prepare_rootfs_installs_the_cli_units_and_hook(rootfs: Path) -> None:
    wanted = rootfs / "etc/systemd/system/multi-user.target.wants/sealtree-mark-good.service"
    assert os.readlink(wanted) == "/usr/lib/systemd/system/sealtree-mark-good.service"
    assert (rootfs / "usr/lib/systemd/system/sealtree-mark-good.service").is_file()
    for path in ("etc/initramfs-tools/hooks/sealtree", "etc/initramfs-tools/scripts/local-bottom/sealtree",
                 "usr/share/sealtree/sealtree-boot", "usr/bin/sealtree"):
        assert os.access(rootfs / path, os.X_OK), path
    assert real_system.run_in(rootfs, ["sealtree", "boot-check", "--help"]).returncode == 0
    # the target's own python3 imports everything the device runs, from /usr/lib/python3
    probe = real_system.run_in(rootfs, ["python3", "-c", (
        "import sealtree.commands.boot_check_cmd, sealtree.commands.deploy_cmds, remote.pull, overlay.boot,"
        " image.esp_sync;"  # deploy --esp on the device
        "print(remote.pull.__file__)")])
    assert probe.returncode == 0 and probe.stdout.startswith("/usr/lib/python3/dist-packages/"), probe


def test_prepare_rootfs_compiles_hash_checked_bytecode(rootfs: Path) -> None:
    """sealtree keeps no mtimes: a timestamp-checked .pyc would never match its source."""
    pycs = [rootfs / "usr/lib/python3/dist-packages/sealtree/__pycache__/cli.cpython-311.pyc",
            rootfs / "usr/lib/python3.11/__pycache__/argparse.cpython-311.pyc"]
    for pyc in pycs:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b11, (pyc, flags)  # hash-based, checked against the source


def test_prepare_rootfs_runs_twice(rootfs: Path) -> None:
    done = subprocess.run([str(PREPARE), str(rootfs)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(rootfs / "home") == "var/home" and not (rootfs / "var/home/home").exists()

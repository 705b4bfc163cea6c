"""The initramfs-tools integration with Debian's real initramfs-tools, not a stand-in.

A debootstrapped bookworm chroot (minbase, initramfs-tools, python3 and the verifier's
Debian packages, no busybox: klibc's tools, as on a minimal system; see
``tests/vm/debian_chroot.py``) gets sealtree installed as README.md says (the modules
where its python3 imports them, the hook, the local-bottom script, the wrapper, the
keyring, boot.conf, and the freshness floor the vendor wrote from its signed packs with
``python3 -m overlay.boot_floor write``).  The real ``update-initramfs`` builds the
initramfs with the real hook-functions (``copy_exec``); ``unmkinitramfs`` unpacks it,
and the verifier runs chrooted into what was unpacked: nothing of the host or of the
image's root is there to hide a missing file.

Needs root (chroot, mounts) and debootstrap; the chroot is cached (a few minutes to
build the first time, under the vm cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm import debian_chroot, guest, scenario

ROOT = Path(__file__).resolve().parents[1]
PYDEST = "usr/lib/sealtree/python"
LOADER = "/lib64/ld-linux-x86-64.so.2"

def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: chroot and mounts")
    if shutil.which("debootstrap") is None:
        try:
            guest.ensure_tools({"debootstrap": "debootstrap"})
        except guest.VmError as err:
            pytest.skip(f"needs debootstrap: {err}")


@pytest.fixture(scope="module")
def chroot_base() -> Path:
    _needs_root()
    return debian_chroot.initramfs_chroot()


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> scenario.Sysroot:
    _needs_root()
    return scenario.build_sysroot(tmp_path_factory.mktemp("vendor"))


@dataclass(frozen=True)
class Built:
    root: Path  # the writable chroot
    floor_said: str
    floor: Path  # the vendor's floor file
    initramfs: debian_chroot.Initramfs


@pytest.fixture(scope="module")
def built(chroot_base: Path, vendor: scenario.Sysroot, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("chroot")
    floor = work / "freshness.json"
    said = debian_chroot.write_vendor_floor(vendor, floor)
    with debian_chroot.writable_chroot(chroot_base, work / "overlay") as root:
        debian_chroot.install_sealtree(root, vendor, scenario.BOOT_CONF, floor)
        yield Built(root, said, floor, debian_chroot.update_initramfs(root, "-c", "unpacked"))


def chroot(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """``cmd`` chrooted into an unpacked initramfs: only what the hook and initramfs-tools put there."""
    return subprocess.run([debian_chroot.chroot_command(), str(root), *cmd], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}, check=False)


def _shared_objects(unpacked: Path) -> list[Path]:
    found = sorted((unpacked / PYDEST).rglob("*.so"))
    found += sorted(unpacked.glob("usr/lib/python3*/lib-dynload/*.so"))
    found += sorted(unpacked.glob("usr/lib/*/ossl-modules/*.so"))
    return found


def test_update_initramfs_runs_the_hook(built: Built, vendor: scenario.Sysroot) -> None:
    out, unpacked = built.initramfs.output, built.initramfs.unpacked
    assert "sealtree hook" not in out, out  # no error, no warning: the floor was there
    # The floor of packs B and C is the oldest of them (both must stay bootable): B.
    oldest = vendor.commits["B"]
    assert built.floor_said == f"boot_floor: floor for {scenario.REF}: commit {oldest[:12]} " \
        f"version 2 timestamp {scenario.RELEASES[1].timestamp}\n"
    assert json.loads(built.floor.read_text())["refs"][scenario.REF]["commit"] == oldest
    assert not (unpacked / "bin" / "busybox").exists()  # klibc's tools: the minimal case
    assert (unpacked / "etc/sealtree/boot.conf").read_text() == scenario.BOOT_CONF
    assert (unpacked / "etc/sealtree/keys/vendor.pub").is_file()
    assert json.loads((unpacked / "etc/sealtree/freshness.json").read_text()) \
        == json.loads(built.floor.read_text())
    for package in ("store", "pack", "overlay", "cryptography", "zstandard"):
        assert (unpacked / PYDEST / package / "__init__.py").exists(), package
    assert not (unpacked / PYDEST / "xattr").exists()
    kernel_modules = {p.name.split(".ko")[0] for p in unpacked.glob("usr/lib/modules/*/kernel/**/*.ko*")}
    assert {"overlay", "ext4", "erofs", "loop"} <= kernel_modules
    assert os.access(unpacked / "scripts/local-bottom/sealtree", os.X_OK)
    assert os.access(unpacked / "usr/bin/sealtree-boot", os.X_OK)
    print(f"update-initramfs -c: {built.initramfs.seconds:.1f} s, "
          f"{built.initramfs.image.stat().st_size >> 20} MiB")


def test_every_shared_library_the_modules_need_is_in_the_initramfs(built: Built) -> None:
    """The regression: the real copy_exec copies no libraries for a target that exists, so
    the module trees copied first left out libgcc_s.so.1 (cryptography's _rust needs it)."""
    unpacked = built.initramfs.unpacked
    assert list(unpacked.glob("usr/lib/*/libgcc_s.so.1")), "libgcc_s.so.1 is not in the initramfs"
    objects = _shared_objects(unpacked)
    assert any(p.name.startswith("_rust") for p in objects), [str(p) for p in objects]
    assert any(p.name == "legacy.so" for p in objects)  # cryptography 38 loads it at import
    missing = {}
    for so in objects:
        inside = "/" + str(so.relative_to(unpacked))
        done = chroot(unpacked, LOADER, "--list", inside)
        if done.returncode != 0 or "not found" in done.stdout:
            missing[inside] = (done.stdout + done.stderr).strip()
    assert missing == {}


def test_the_verifier_runs_inside_the_unpacked_initramfs(built: Built, vendor: scenario.Sysroot) -> None:
    unpacked = built.initramfs.unpacked
    done = chroot(unpacked, "/usr/bin/sealtree-boot", "--help")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: sealtree-boot") and "Traceback" not in done.stderr
    # A signed pack verified there: Ed25519 in cryptography, the manifest through zstandard;
    # no xattr package (os.*xattr then).
    shutil.rmtree(unpacked / "sysroot", ignore_errors=True)
    guest.run(["cp", "-a", vendor.root, unpacked / "sysroot"])
    pack = "/sysroot" + scenario.in_image(vendor, vendor.pack("C"))
    check = (f"import sys; sys.path.insert(0, '/{PYDEST}'); import overlay.boot, overlay.provision; "
             "from store import xattrs; from pack.keys import Keyring; from pack.verify import verify_pack; "
             f"v = verify_pack({pack!r}, Keyring.load('/etc/sealtree/keys')); "
             "print('xattr-package', 'xattr' in sys.modules, 'signers', len(v.signers))")
    done = chroot(unpacked, "/usr/bin/python3", "-s", "-B", "-c", check)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "xattr-package False signers 1"
    done = chroot(unpacked, "/usr/bin/sealtree-boot", "write-floor", "/sysroot" + scenario.REPO_IN_SYSROOT,
                  "/floor.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((unpacked / "floor.json").read_text()) == json.loads(vendor.floor.read_text())


def test_a_verifier_that_cannot_load_is_one_failed_line(built: Built, vendor: scenario.Sysroot,
                                                        tmp_path: Path) -> None:
    """Without libgcc_s.so.1 (what the old hook built) cryptography's bindings cannot be loaded
    (at the first key read): the console gets one FAILED line and the refusal's status, not a
    traceback."""
    broken = tmp_path / "initramfs"
    guest.run(["cp", "-a", built.initramfs.unpacked, broken])
    for lib in broken.glob("usr/lib/*/libgcc_s.so.1"):
        lib.unlink()
    shutil.rmtree(broken / "sysroot", ignore_errors=True)
    guest.run(["cp", "-a", vendor.root, broken / "sysroot"])
    (broken / "proc").mkdir(exist_ok=True)
    guest.run(["mount", "-t", "proc", "proc", broken / "proc"])
    try:
        done = chroot(broken, "/usr/bin/sealtree-boot", "--sysroot", "/sysroot", "--cmdline", "none",
                      "--no-count")
    finally:
        guest.run(["umount", broken / "proc"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("sealtree-boot: FAILED: "), lines
    assert "ImportError: libgcc_s.so.1: cannot open shared object file" in lines[0], lines


def test_hook_without_floor_or_repository_warns_and_succeeds(built: Built) -> None:
    """An image being built: no floor file, no repository.  A package install that triggers
    update-initramfs (dpkg processing initramfs-tools' trigger, as after any package with
    kernel modules or hooks) succeeds with a warning; the initramfs has no floor, so the
    verifier refuses to boot (fail closed) until the vendor's floor is installed."""
    floor = built.root / "etc/sealtree/freshness.json"
    saved = floor.read_bytes()
    floor.unlink()
    try:
        trigger = debian_chroot.run_in(built.root, ["dpkg-trigger", "--by-package=initramfs-tools",
                                                    "--no-await", "update-initramfs"])
        assert trigger.returncode == 0, trigger.stderr
        done = debian_chroot.run_in(built.root, ["dpkg", "--triggers-only", "--pending"])
    finally:
        floor.write_bytes(saved)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "update-initramfs: Generating /boot/initrd.img-" in output, output
    assert "W: sealtree hook: no freshness floor" in output, output
    assert "E: " not in output, output
    again = debian_chroot.unpack_initramfs(built.root, "unpacked-nofloor")
    assert not (again.unpacked / "etc/sealtree/freshness.json").exists()
    assert os.access(again.unpacked / "usr/bin/sealtree-boot", os.X_OK)


# -- host side: the FAILED line, the remount -----------------------------------------------------

def test_an_import_failure_is_one_failed_line_on_the_host() -> None:
    code = ("import runpy, sys; sys.modules['cryptography'] = None; sys.argv = ['sealtree-boot', '--help']; "
            "runpy.run_module('overlay.boot_main', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 1 and done.stderr == "", done.stderr
    assert done.stdout.startswith("sealtree-boot: FAILED: cannot load the verifier: ModuleNotFoundError: ")
    assert done.stdout.count("\n") == 1


def test_an_unexpected_error_in_the_verifier_is_one_failed_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from overlay import boot, boot_main

    def broken(argv: object = None) -> int:
        raise ValueError("a bug\nwith a second line")

    monkeypatch.setattr(boot, "main", broken)
    assert boot_main.main() == 1
    out = capsys.readouterr().out
    assert out == "sealtree-boot: FAILED: the verifier stopped: ValueError: a bug\\x0awith a second line\n"


def test_make_writable_remounts_with_mount_2(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts")
    from overlay import remount

    target = tmp_path / "m"
    target.mkdir()
    guest.run(["mount", "-t", "tmpfs", "-o", "ro,nosuid,nodev,noatime", "tmpfs", target])
    try:
        assert remount.make_writable(str(target)) is True
        flags = os.statvfs(target).f_flag
        assert not flags & os.ST_RDONLY
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV and flags & os.ST_NOATIME  # kept
        (target / "written").write_text("x")
        assert remount.make_writable(str(target)) is False
        (target / "sub").mkdir()
        guest.run(["mount", "-o", "remount,ro", target])
        with pytest.raises(OSError) as caught:
            remount.make_writable(str(target / "sub"))  # not the root of a mount
        assert caught.value.filename == str(target / "sub")
    finally:
        subprocess.run(["umount", str(target)], check=False)

"""Boot assessment (``sealtree boot-check``): kernel verity errors and required units.

The kernel lines are the real ones: ``kmsg_corrupted`` gives what Debian's 6.1 kernel
printed in tests/test_real_system_vm.py's damaged boot (one byte of a sealed object changed
on the disk; several times, as the reader retried), with a /dev/kmsg prefix.  The
repository is the vm scenario's, deployed here (tests/vm/scenario.py), so the inode in the
message is a real object's and the farm really hardlinks it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sealtree import boot_health
from store.errors import UsageError
from tests.cli_runner import run_cli
from tests.vm import scenario

#: as /dev/kmsg gives them (prio,seq,usec,flags;text); the fs-verity line from the vm test
KMSG_GOOD = [
    "6,1,0,-;Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)",
    "6,812,31200339,-;EXT4-fs (vda): mounted filesystem with ordered data mode. Quota mode: none.",
    "6,813,31210212,-;overlayfs: \"xino\" feature enabled using 32 upper inode bits.",
]


def kmsg_corrupted(inode: int) -> str:
    """Debian 6.1's line (tests/test_real_system_vm.py, boot 4), with another inode."""
    return (f"3,901,79219673,-;fs-verity (vda, inode {inode}): FILE CORRUPTED! index=1, level=-1, "
            "want_hash=sha256:e88e11b7d268e574621487fd72df47881f43056a38f57755827a4a76f9ca9db8, "
            "real_hash=sha256:eb85eaf71c7a77e4bc8f478e5bc1b5d21830ed1f456147623b052e397af263e6")


def write_kmsg(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_verity_errors_are_found_and_other_lines_are_not() -> None:
    # a program that retries a read makes the kernel say it again: one error, counted
    lines = [line.partition(";")[2] for line in [*KMSG_GOOD, kmsg_corrupted(1234), kmsg_corrupted(1234)]]
    lines.append("fs-verity: sha256 using implementation \"sha256-avx2\"")  # informational
    lines.append("overlayfs: lower file 'usr/bin/bash' has the wrong fs-verity digest")
    found = boot_health.verity_errors(lines)
    assert [(e.device, e.inode, e.count) for e in found] == [("vda", 1234, 2), (None, None, 1)]
    assert found[0].message.startswith("FILE CORRUPTED! index=1")
    assert found[1].message == "overlayfs: lower file 'usr/bin/bash' has the wrong fs-verity digest"


def test_read_kmsg_strips_the_record_prefix(tmp_path: Path) -> None:
    path = write_kmsg(tmp_path / "kmsg", [*KMSG_GOOD, " SUBSYSTEM=block", kmsg_corrupted(7)])
    lines = boot_health.read_kmsg(str(path))
    assert lines[0].startswith("Linux version") and lines[-1].startswith("fs-verity (vda, inode 7)")
    assert len(lines) == 4  # the continuation line is not a message


def test_read_kmsg_reads_the_running_kernel_log() -> None:
    if not os.access(boot_health.KMSG, os.R_OK):
        pytest.skip("no readable /dev/kmsg here")
    assert boot_health.read_kmsg()  # the ring buffer is never empty on a running system


def test_required_units_file(tmp_path: Path) -> None:
    path = tmp_path / "required-units"
    assert boot_health.read_required_units(str(path)) == []
    path.write_text("# the units this product needs\nsshd.service\n\n  app@main.service  # the app\n")
    assert boot_health.read_required_units(str(path)) == ["sshd.service", "app@main.service"]
    path.write_text("sshd.service\nrm -rf /\n")
    with pytest.raises(UsageError, match="line 2: not a unit name"):
        boot_health.read_required_units(str(path))


def test_systemctl_show_output() -> None:
    text = ("Id=sealtree-demo.service\nLoadState=loaded\nActiveState=failed\nResult=exit-code\n\n"
            "Id=dbus.service\nLoadState=loaded\nActiveState=active\nResult=success\n\n"
            "Id=nothere.service\nLoadState=not-found\nActiveState=inactive\nResult=success\n")
    states = boot_health.parse_systemctl_show(text)
    assert [(s.name, s.failed) for s in states] == [
        ("sealtree-demo.service", True), ("dbus.service", False), ("nothere.service", True)]


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> scenario.Sysroot:
    if os.geteuid() != 0:
        pytest.skip("needs root: the scenario's owners and xattrs")
    return scenario.build_sysroot(tmp_path_factory.mktemp("health"))


def _boot_check(sysroot: scenario.Sysroot, tmp_path: Path, kmsg: list[str], *extra: str
                ) -> tuple[int, str]:
    booted = tmp_path / "booted"
    booted.write_text(sysroot.deployments["C"] + "\n")
    kmsg_file = write_kmsg(tmp_path / "kmsg", kmsg)
    done = run_cli("--repo", str(sysroot.repo), "boot-check", "--kmsg", str(kmsg_file), "--booted",
                   str(booted), "--required-units", str(tmp_path / "none"), *extra, check=False)
    return done.returncode, done.stdout + done.stderr


def _tries(sysroot: scenario.Sysroot, release: str) -> object:
    state = json.loads((sysroot.repo / "deploy" / "state.json").read_text())
    return next(d["tries_left"] for d in state["deployments"] if d["id"] == sysroot.deployments[release])


def test_a_corrupted_object_is_named_and_not_marked_good(sysroot: scenario.Sysroot, tmp_path: Path) -> None:
    work = sysroot.copy(tmp_path / "sysroot")
    blob = work.object_path("C", scenario.BLOB)
    kmsg = [*KMSG_GOOD, kmsg_corrupted(os.stat(blob).st_ino), kmsg_corrupted(os.stat(blob).st_ino)]
    status, out = _boot_check(work, tmp_path, kmsg, "--mark-good")
    dep = work.deployments["C"]
    rel = os.path.relpath(blob, work.repo / "objects")
    assert status == 15, out
    assert out.startswith(f"sealtree boot-check: {dep}: NOT marked good: kernel verity error: "
                          f"/{scenario.BLOB}, object {rel}: FILE CORRUPTED! index=1, level=-1, "), out
    assert out.rstrip().endswith("(2 times)"), out
    assert _tries(work, "C") == scenario.TRIES


def test_a_healthy_boot_is_marked_good(sysroot: scenario.Sysroot, tmp_path: Path) -> None:
    work = sysroot.copy(tmp_path / "sysroot")
    status, out = _boot_check(work, tmp_path, KMSG_GOOD)
    assert status == 0 and "healthy" in out, out
    assert _tries(work, "C") == scenario.TRIES  # without --mark-good nothing changes
    status, out = _boot_check(work, tmp_path, KMSG_GOOD, "--mark-good", "--json")
    doc = json.loads(out)
    assert status == 0 and doc["healthy"] is True and doc["marked_good"] is True, out
    assert doc["deployment"] == work.deployments["C"] and doc["verity_errors"] == []
    assert _tries(work, "C") is None


def test_not_booted_through_sealtree_marks_nothing(sysroot: scenario.Sysroot, tmp_path: Path) -> None:
    kmsg = write_kmsg(tmp_path / "kmsg", KMSG_GOOD)
    done = run_cli("--repo", str(sysroot.repo), "boot-check", "--mark-good", "--booted",
                   str(tmp_path / "absent"), "--kmsg", str(kmsg), check=False)
    assert done.returncode == 2 and "not booted through sealtree" in done.stdout + done.stderr

"""A real Debian bookworm system with systemd boots, runs, updates and rolls back through sealtree.

The vendor side follows README.md's "Image builder" step by step (same commands, same
order, same flags): the cached debootstrap tree (tests/vm/real_system.py), then per release
``integration/sealtree-prepare-rootfs``, the keyring and boot.conf, the freshness floor
(release 1: an explicit empty floor; release N+1: the floor of release N's signed pack),
Debian's real ``update-initramfs`` with the project's hook in the chroot, ``commit
--skip-special``, ``pack build``/``sign``, ``publish``; nginx serves the site on the host's
loopback.  The device's disk is made on this host (no fs-verity here: first-boot sealing)
with ``pull`` and ``deploy`` and ``mke2fs -d``.  Every boot starts the kernel and initramfs
of the disk's default deployment (``deploy/boot/<dep_id>/``, read from the image with
debugfs), as a boot loader would, under qemu TCG (2 GiB, 2 CPUs), with qemu's user network
(the host's loopback is 10.0.2.2 in the guest).

A unit of the test's own (``sealtree-test.service``, in the release trees only: not
shipped) runs the commands the host wrote on a second disk (/dev/vdb) once the system is
up, prints ``SEALTREE-RESULT key=value`` lines on ttyS0 and powers off.  The boots:

1. release 1, first boot (sealing): running, no failed units, a machine id, mark-good ran
   from sealtree-mark-good.service; the user changes /etc and writes to /var/lib; release 2
   pulled over HTTP and deployed from the running system;
2. release 2, from its own kernel and initramfs: the /etc change carried over by the merge
   and release 2's own /etc change applied, /var and the machine id kept; ``rollback``;
3. release 1 again (the rollback), its /etc as the user left it; release 2 made the default
   again and release 3 deployed with ``--tries 1``; the host then flips a byte of release
   3's payload object on the disk;
4. release 3: the kernel refuses the payload's bytes (FILE CORRUPTED), a required unit
   fails, sealtree-mark-good.service does not mark it good and names the deployment and
   the file;
5. release 3 has no tries left: its initramfs (floor of release 2) boots release 2.

Per boot, the milestones (kernel, verifier, systemd, multi-user, mark-good) are taken from
the console with host timestamps and printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.nginx import serving
from store.repo import Repository
from store.walk import require
from tests.vm import debian_chroot, guest, real_system, scenario

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ROOT / "integration" / "sealtree-prepare-rootfs"
REF = "os/main"
REPO = "/sealtree/repo"  # in the sysroot
DEVICE_REPO = "/sysroot/sealtree/repo"  # as the booted system sees it
BOOT_CONF = "repo = /sealtree/repo\nverify = kernel\nseal = yes\nfreshness = /etc/sealtree/freshness.json\n"
EMPTY_FLOOR = '{"format": 1, "refs": {}}\n'
PAYLOAD = "usr/share/sealtree-test/payload"
BOOT_TIMEOUT = 420
RESULT = "SEALTREE-RESULT"

# -- what the test puts into each release tree (not shipped: the test's own harness) ----------

RUNNER = f"""#!/bin/sh
# The vm test's harness: run the commands the host wrote on /dev/vdb, on the serial console.
exec > /dev/ttyS0 2>&1
echo "{RESULT} harness=started"
tr -d '\\000' < /dev/vdb > /run/sealtree-test.sh
sh /run/sealtree-test.sh
echo "{RESULT} harness=done status=$?"
systemctl poweroff
"""

RUNNER_UNIT = """[Unit]
Description=sealtree vm test: the commands on /dev/vdb
After=multi-user.target sealtree-mark-good.service
Wants=dev-vdb.device
After=dev-vdb.device

[Service]
Type=simple
ExecStart=/usr/lib/sealtree-test/run

[Install]
WantedBy=multi-user.target
"""

#: release 3's required unit: it reads the payload, whose bytes the host changes on the disk
DEMO_UNIT = f"""[Unit]
Description=sealtree vm test: a service that needs its data file
Before=multi-user.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/sha256sum /{PAYLOAD}

[Install]
WantedBy=multi-user.target
"""

#: printed at the start of every boot's script
REPORT = f"""R() {{ printf '{RESULT} %s=%s\\n' "$1" "$2"; }}
R state "$(systemctl is-system-running --wait)"
R failed "$(systemctl list-units --state=failed --plain --no-legend | awk '{{print $1}}' | tr '\\n' ' ')"
R machine-id "$(cat /etc/machine-id)"
R booted "$(cat /run/sealtree/booted)"
R release "$(cat /usr/share/sealtree-test/release)"
R vendor-conf "$(cat /etc/sealtree-test/vendor.conf)"
R user-conf "$(cat /etc/sealtree-test/user.conf)"
R user-added "$(cat /etc/sealtree-test/added-by-user 2>/dev/null)"
R var-note "$(cat /var/lib/sealtree-test/note 2>/dev/null)"
R journal-boots "$(journalctl --list-boots --no-pager 2>/dev/null | grep -cE '[0-9a-f]{{32}}')"
M() {{ awk -v p="$1" '$2 == p {{ v = $3 ":" substr($4, 1, 2) }} END {{ print p ":" v }}' /proc/self/mounts; }}
R mounts "$(M /) $(M /etc) $(M /var) $(M /tmp)"
R home "$(readlink /home) $(ls -d /root/ 2>&1)"
U=sealtree-mark-good.service
R mark-good-unit "$(systemctl show -p ActiveState --value $U) $(systemctl show -p Result --value $U)"
R mark-good-line "$(journalctl -b -o cat -u $U | grep 'boot-check:' | tail -n 1)"
R status "$(sealtree --repo {DEVICE_REPO} status --json | tr -d '\\n')"
"""

NETWORK = """IF=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$IF" up && ip addr add 10.0.2.15/24 dev "$IF" && ip route add default via 10.0.2.2
R network "$IF"
"""


@dataclass(frozen=True)
class Release:
    number: int
    pack: Path
    commit: str
    payload_object: str | None  # the payload's object, relative to the repository


@dataclass
class Boot:
    """One qemu run: the console with host timestamps."""

    name: str
    lines: list[tuple[float, str]]
    returncode: int | None
    seconds: float
    timed_out: bool

    @property
    def console(self) -> str:
        return "\n".join(line for _t, line in self.lines)

    @property
    def results(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for _t, line in self.lines:
            idx = line.find(RESULT + " ")
            if idx >= 0:
                key, sep, value = line[idx + len(RESULT) + 1:].partition("=")
                if sep:
                    out[key.strip()] = value.strip()
        return out

    def first(self, pattern: str) -> float | None:
        regex = re.compile(pattern)
        return next((t for t, line in self.lines if regex.search(line)), None)

    def milestones(self) -> dict[str, float | None]:
        return {
            "kernel": self.first(r"Linux version"),
            "initramfs": self.first(r"Run /init as init process"),
            "verifier": self.first(r"sealtree-boot: "),
            "verified": self.first(r"sealtree-boot: booting "),
            "systemd": self.first(r"Welcome to .*Debian"),
            "multi-user": self.first(r"Reached target .*Multi-User System"),
            "boot-check": self.first(r"sealtree boot-check: "),
            "harness": self.first(RESULT + r" harness=started"),
            "power-off": self.first(r"reboot: Power down"),
        }

    def describe(self, tail: int = 80) -> str:
        lines = self.console.splitlines()[-tail:]
        return (f"boot {self.name}: qemu status={self.returncode} timed_out={self.timed_out} "
                f"{self.seconds:.0f} s\n" + "\n".join(lines))


@dataclass
class World:
    work: Path
    keys: Path
    vendor_key: Path
    vendor_repo: Path
    site: Path
    sysroot: Path
    disk: Path
    url: str  # the site as the host reaches it
    guest_url: str  # ... and as the guest does
    releases: dict[int, Release] = field(default_factory=dict)
    boots: list[Boot] = field(default_factory=list)


# -- host commands -------------------------------------------------------------------------------

def sealtree(*args: str) -> str:
    return scenario.sealtree(*args)


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def build_release(world: World, number: int) -> Release:
    """README.md "Image builder", steps 2-6, for release ``number``; returns its signed pack."""
    base = real_system.real_system_tree()
    view = world.work / f"rootfs-{number}"
    with debian_chroot.overlay_view(base, view) as rootfs:
        # step 2's end: no package caches in the image (128 MB that every device would seal)
        assert real_system.run_in(rootfs, ["apt-get", "clean"]).returncode == 0
        sh("sh", "-c", f"rm -rf {rootfs}/var/lib/apt/lists/*")
        sh(PREPARE, rootfs)
        sh("install", "-D", "-m", "0644", world.keys / "vendor.key.pub",
           rootfs / "etc/sealtree/keys/vendor.key.pub")
        (rootfs / "etc/sealtree/boot.conf").write_text(BOOT_CONF)
        floor = rootfs / "etc/sealtree/freshness.json"
        if number == 1:
            floor.write_text(EMPTY_FLOOR)
        else:
            sh(sys.executable, "-m", "overlay.boot_floor", "write", world.releases[number - 1].pack,
               "--keys", world.keys, "-o", floor, cwd=ROOT)
        _test_content(rootfs, number)
        with debian_chroot.chroot_mounts(rootfs):
            done = real_system.run_in(rootfs, ["update-initramfs", "-u", "-k", "all"])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "W: sealtree hook" not in done.stderr, done.stderr
        out = sealtree("--repo", str(world.vendor_repo), "commit", "-b", REF, "--version", str(number),
                       "--skip-special", "--json", str(rootfs))
    shutil.rmtree(view, ignore_errors=True)
    commit = str(json.loads(out)["commit"])
    pack = world.work / f"release-{number}.pack"
    sealtree("--repo", str(world.vendor_repo), "pack", "build", REF, "-o", str(pack))
    sealtree("pack", "sign", str(pack), "--key", str(world.vendor_key))
    sealtree("--repo", str(world.vendor_repo), "publish", str(world.site), "--key", str(world.vendor_key),
             REF)
    payload = None
    if number == 3:
        repo = Repository.open(str(world.vendor_repo))
        root_tree = repo.objects.read_commit(repo.resolve(commit)).root_tree
        entry = require(repo.objects, root_tree, PAYLOAD.encode())
        payload = os.path.relpath(repo.objects.file_path(entry.digest, entry.meta), world.vendor_repo)
    release = Release(number, pack, commit, payload)
    world.releases[number] = release
    return release


def _test_content(rootfs: Path, number: int) -> None:
    """What differs between the test's releases, and the test's harness unit."""
    share = rootfs / "usr/share/sealtree-test"
    share.mkdir(parents=True, exist_ok=True)
    (share / "release").write_text(f"{number}\n")
    etc = rootfs / "etc/sealtree-test"
    etc.mkdir(parents=True, exist_ok=True)
    # vendor.conf changes in release 2 (the user never touches it); user.conf the user edits
    (etc / "vendor.conf").write_text("vendor-setting=1\n" if number == 1 else "vendor-setting=2\n")
    (etc / "user.conf").write_text("user-setting=vendor-default\n")
    runner = rootfs / "usr/lib/sealtree-test/run"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(RUNNER)
    runner.chmod(0o755)
    units = rootfs / "etc/systemd/system"
    (units / "sealtree-test.service").write_text(RUNNER_UNIT)
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    os.symlink("../sealtree-test.service", units / "multi-user.target.wants/sealtree-test.service")
    # the harness owns the serial console: no login prompt there
    os.symlink("/dev/null", units / "serial-getty@ttyS0.service")
    if number == 3:
        (share / "payload").write_bytes(os.urandom(256 << 10))
        (units / "sealtree-demo.service").write_text(DEMO_UNIT)
        os.symlink("../sealtree-demo.service", units / "multi-user.target.wants/sealtree-demo.service")
        sh("sh", "-c", f"echo sealtree-demo.service >> {rootfs}/etc/sealtree/required-units")


def make_disk(world: World) -> None:
    """README.md "Image builder", step 7: the device's disk, written on this host."""
    repo = world.sysroot / REPO.lstrip("/")
    repo.parent.mkdir(parents=True)
    sealtree("--repo", str(repo), "init")
    sealtree("--repo", str(repo), "remote", "add", "build", world.url, "--keys", str(world.keys))
    sealtree("--repo", str(repo), "pull", "build")
    sealtree("--repo", str(repo), "deploy", REF, "--keys", str(world.keys), "--verify", "userspace")
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-O", "verity", "-d", world.sysroot, world.disk,
       "4G")


# -- booting -------------------------------------------------------------------------------------

def fsck(disk: Path) -> None:
    """The guest's writes made consistent on the image (journal replayed) and checked."""
    done = subprocess.run(["e2fsck", "-fy", str(disk)], capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), f"e2fsck {disk}: {done.returncode}\n{done.stdout}{done.stderr}"


def image_state(disk: Path) -> dict[str, object]:
    return dict(json.loads(guest.run(["debugfs", "-R", f"cat {REPO}/deploy/state.json", disk])))


def boot_files(world: World, dest: Path) -> tuple[Path, Path, str]:
    """The default deployment's kernel and initramfs, read from the disk image (debugfs), as
    a boot loader's entry for it names them."""
    state = image_state(world.disk)
    default = str(state["default"])
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for name in ("vmlinuz", "initrd.img"):
        out = dest / name
        out.unlink(missing_ok=True)
        guest.run(["debugfs", "-R", f"dump {REPO}/deploy/boot/{default}/{name} {out}", world.disk])
        assert out.stat().st_size > 0, f"no {name} for {default} in the image"
        files.append(out)
    return files[0], files[1], default


def boot(world: World, name: str, script: str) -> Boot:
    """Boot the default deployment's kernel and initramfs with ``script`` on /dev/vdb."""
    fsck(world.disk)
    kernel, initrd, _default = boot_files(world, world.work / "boot" / name)
    script_disk = world.work / "boot" / name / "script.img"
    data = (REPORT + script).encode()
    script_disk.write_bytes(data + b"\0" * (-len(data) % 4096 + 4096))
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
           "-nographic", "-no-reboot", "-nic", "user,model=virtio-net-pci"]
    if guest.QBOOT_ROM.exists():
        cmd += ["-bios", str(guest.QBOOT_ROM)]
    cmd += ["-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 root=/dev/vda panic=-1 systemd.show_status=1",
            "-drive", f"file={world.disk},if=virtio,format=raw",
            "-drive", f"file={script_disk},if=virtio,format=raw"]
    log_path = world.work / "boot" / name / "console.log"
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    with log_path.open("w") as log, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT) as proc:
        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                text = ansi.sub("", raw.decode(errors="replace")).rstrip("\r\n").replace("\r", "")
                stamp = time.monotonic() - start
                lines.append((stamp, text))
                log.write(f"{stamp:7.2f} {text}\n")
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        timed_out = guest.wait_or_kill(proc, BOOT_TIMEOUT)
        thread.join(10)
    result = Boot(name, lines, None if timed_out else proc.returncode, time.monotonic() - start, timed_out)
    world.boots.append(result)
    print(f"\n[boot {name}] {result.seconds:.0f} s; milestones (s after qemu started): "
          + ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} -" for k, v in result.milestones().items()),
          flush=True)
    return result


def status_of(result: Boot) -> dict[str, object]:
    text = result.results.get("status", "")
    assert text.startswith("{"), result.describe()
    return dict(json.loads(text))


def deployments(status: dict[str, object]) -> dict[str, dict[str, object]]:
    deps = status["deployments"]
    assert isinstance(deps, list)
    return {str(d["id"]): d for d in deps}


def assert_healthy(result: Boot, release: int) -> None:
    r = result.results
    assert not result.timed_out and result.returncode == 0, result.describe()
    assert r.get("harness") == "done status=0", result.describe()
    assert r["release"] == str(release), result.describe()
    assert r["state"] == "running", f"failed units: {r.get('failed')}\n{result.describe()}"
    assert r["failed"] == "", result.describe()
    assert re.fullmatch(r"[0-9a-f]{32}", r["machine-id"]), result.describe()
    booted = r["booted"]
    assert r["mark-good-unit"] == "active success", result.describe()
    assert r["mark-good-line"] == f"sealtree boot-check: {booted}: marked good (no kernel verity errors; " \
        f"{1 if release == 3 else 0} required units ok)", result.describe()
    assert deployments(status_of(result))[booted]["tries_left"] is None, r["status"]


# -- the test ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, chroot, overlay mounts, owners in the trees")
    reason = guest.qemu_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    guest.ensure_tools({"debugfs": "e2fsprogs", "e2fsck": "e2fsprogs"})
    work = tmp_path_factory.mktemp("realsys")
    start = time.monotonic()
    real_system.real_system_tree()
    print(f"\n[real system tree] {time.monotonic() - start:.0f} s (cached after the first run)", flush=True)
    site = work / "site"
    with serving(site, work / "nginx") as server:
        w = World(work=work, keys=work / "keys", vendor_key=work / "vendor.key",
                  vendor_repo=work / "vendor", site=site, sysroot=work / "sysroot", disk=work / "disk.img",
                  url=server.url, guest_url=server.url.replace("127.0.0.1", "10.0.2.2"))
        # README.md "Image builder", step 1: the vendor's key and repository
        sealtree("keygen", str(w.vendor_key))
        w.keys.mkdir()
        shutil.copy(str(w.vendor_key) + ".pub", w.keys / "vendor.key.pub")
        sealtree("--repo", str(w.vendor_repo), "init")
        yield w
    print_milestones(w.boots)


def print_milestones(boots: list[Boot]) -> None:
    """One row per boot: seconds after qemu started at which each milestone was on the console."""
    if not boots:
        return
    names = list(boots[0].milestones())
    print("\n[real system boots] seconds after qemu started (host clock)", flush=True)
    print(f"{'boot':<14}" + "".join(f"{n:>11}" for n in names) + f"{'total':>8}")
    for b in boots:
        cells = "".join(f"{v:>11.1f}" if v is not None else f"{'-':>11}" for v in b.milestones().values())
        print(f"{b.name:<14}{cells}{b.seconds:>8.0f}", flush=True)


def test_real_debian_system_boots_updates_and_rolls_back(world: World) -> None:
    t = time.monotonic()
    build_release(world, 1)
    print(f"\n[release 1 built] {time.monotonic() - t:.0f} s", flush=True)
    t = time.monotonic()
    make_disk(world)
    print(f"[disk made] {time.monotonic() - t:.0f} s", flush=True)
    dep1 = str(image_state(world.disk)["default"])

    # 1. first boot: sealing, systemd up, a machine id, mark-good from the unit; the user
    #    changes /etc and writes to /var/lib; release 2 pulled over HTTP and deployed
    build_release(world, 2)
    b1 = boot(world, "1-first", NETWORK + f"""
mkdir -p /var/lib/sealtree-test && echo "written in boot 1" > /var/lib/sealtree-test/note
echo "user-setting=changed-by-user" > /etc/sealtree-test/user.conf
echo "mine" > /etc/sealtree-test/added-by-user
sealtree --repo {DEVICE_REPO} remote add vendor {world.guest_url} --keys /etc/sealtree/keys
sealtree --repo {DEVICE_REPO} pull vendor && R pulled yes
sealtree --repo {DEVICE_REPO} deploy {REF} --keys /etc/sealtree/keys && R deployed yes
""")
    assert "sealtree-boot: sealed " in b1.console, b1.describe()
    assert_healthy(b1, 1)
    r1 = b1.results
    assert r1["booted"] == dep1
    assert r1["user-conf"] == "user-setting=vendor-default" and r1["var-note"] == ""
    machine_id = r1["machine-id"]
    mounts = r1["mounts"].split()
    assert mounts == ["/:overlay:ro", "/etc:ext4:rw", "/var:ext4:rw", "/tmp:tmpfs:rw"], mounts
    assert r1["home"] == "var/home /root/", r1["home"]
    assert r1.get("pulled") == "yes" and r1.get("deployed") == "yes", b1.describe()
    fsck(world.disk)
    state = image_state(world.disk)
    dep2 = str(state["default"])
    assert dep2 != dep1 and state["previous"] == dep1

    # 2. release 2, from its own kernel and initramfs: the merge carried the /etc change,
    #    /var and the machine id are kept; rollback
    b2 = boot(world, "2-release-2", f"sealtree --repo {DEVICE_REPO} rollback && R rolled-back yes\n")
    assert_healthy(b2, 2)
    r2 = b2.results
    assert r2["booted"] == dep2
    assert r2["user-conf"] == "user-setting=changed-by-user" and r2["user-added"] == "mine"
    assert r2["vendor-conf"] == "vendor-setting=2"  # the vendor's change, where the user changed nothing
    assert r2["machine-id"] == machine_id and r2["var-note"] == "written in boot 1"
    assert int(r2["journal-boots"]) >= 2, b2.describe()  # the journal persists in /var
    assert r2.get("rolled-back") == "yes", b2.describe()

    # 3. the rollback: release 1 boots with its own /etc as the user left it two boots ago;
    #    release 2 made the default again and release 3 deployed with one try, then one byte
    #    of its payload object is changed on the disk
    build_release(world, 3)
    b3 = boot(world, "3-rollback", NETWORK + f"""
sealtree --repo {DEVICE_REPO} set-default {dep2} --no-count && R set-default yes
sealtree --repo {DEVICE_REPO} pull vendor && R pulled yes
sealtree --repo {DEVICE_REPO} deploy {REF} --keys /etc/sealtree/keys --tries 1 && R deployed yes
""")
    assert_healthy(b3, 1)
    r3 = b3.results
    assert r3["booted"] == dep1 and r3["machine-id"] == machine_id
    assert r3["user-conf"] == "user-setting=changed-by-user" and r3["user-added"] == "mine"
    assert r3["vendor-conf"] == "vendor-setting=1" and r3["var-note"] == "written in boot 1"
    assert r3.get("deployed") == "yes", b3.describe()
    fsck(world.disk)
    state = image_state(world.disk)
    dep3 = str(state["default"])
    assert state["previous"] == dep2 and dep3 not in (dep1, dep2)
    payload = world.releases[3].payload_object
    assert payload is not None
    scenario.corrupt_in_image(world.disk, f"{REPO}/{payload}", offset=5000)

    # 4. release 3: the kernel refuses its payload's bytes, a required unit fails, and the
    #    unit does not mark it good, naming the deployment and the file
    b4 = boot(world, "4-damaged", "")
    r4 = b4.results
    assert r4["release"] == "3" and r4["booted"] == dep3, b4.describe()
    assert "FILE CORRUPTED" in b4.console, b4.describe()
    assert r4["state"] == "degraded" and "sealtree-demo.service" in r4["failed"], b4.describe()
    line = r4["mark-good-line"]
    assert line.startswith(f"sealtree boot-check: {dep3}: NOT marked good: kernel verity error: /{PAYLOAD}, "
                           f"object {payload.removeprefix('objects/')}"), line
    assert "required unit failed: sealtree-demo.service" in line, line
    assert deployments(status_of(b4))[dep3]["tries_left"] == 0, r4["status"]

    # 5. no tries left: release 3's initramfs (floor of release 2) boots release 2
    b5 = boot(world, "5-fallback", "")
    assert "sealtree-boot: the default deployment has no boot tries left" in b5.console, b5.describe()
    assert_healthy(b5, 2)
    assert b5.results["booted"] == dep2
    assert b5.results["user-conf"] == "user-setting=changed-by-user"

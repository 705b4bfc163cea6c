"""The ESP follows the deployments (``--esp DIR`` on deploy, set-default, rollback, undeploy;
image/esp_sync.py), on a real FAT32 filesystem (mkfs.fat, mounted through a loop device):
kernels, entries and loader.conf as ``image build`` writes them, the installed entry's
command line kept, entries and kernels of removed deployments deleted, and a sync killed
(SIGKILL) before each of its renames and removals leaving loader.conf naming a complete entry.
The kernels are random bytes: nothing here boots them (test_image_vm.py boots).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image import entries
from overlay.state import Deployment
from tests.cli_runner import run_cli

pytestmark = pytest.mark.usefixtures("needs_root")

PARTUUID = "0a1b2c3d-0000-4000-8000-000000000001"
ROOT = Path(__file__).resolve().parent.parent


class Site:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = str(base / "repo")
        self.keys = str(base / "keys")
        os.mkdir(self.keys)
        run_cli("keygen", str(base / "vendor.key"))
        shutil.copy(base / "vendor.key.pub", os.path.join(self.keys, "vendor.pub"))
        run_cli("init", repo=self.repo)
        self.kernels: dict[str, tuple[bytes, bytes]] = {}  # commit -> kernel, initrd

    def release(self, n: int) -> str:
        """Commit release ``n`` (kernel 6.1.0-<n>) and import its signed pack; its commit."""
        tree = self.base / f"tree{n}"
        rng = random.Random(n)
        kernel, initrd = rng.randbytes(200_000 + n), rng.randbytes(100_000 + n)
        (tree / "boot").mkdir(parents=True)
        (tree / "etc").mkdir()
        (tree / "boot" / f"vmlinuz-6.1.0-{n}").write_bytes(kernel)
        (tree / "boot" / f"initrd.img-6.1.0-{n}").write_bytes(initrd)
        (tree / "etc" / "hostname").write_text("device\n")
        out = run_cli("commit", "-b", "os/main", "--version", str(n), "--json", str(tree),
                      repo=self.repo).stdout
        commit: str = json.loads(out)["commit"]
        pack = str(self.base / f"os-{n}.pack")
        run_cli("pack", "build", "os/main", "-o", pack, repo=self.repo)
        run_cli("pack", "sign", pack, "--key", str(self.base / "vendor.key"))
        run_cli("pack", "import", pack, "--keys", self.keys, repo=self.repo)
        self.kernels[commit] = (kernel, initrd)
        return commit

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, repo=self.repo, check=check)

    def status(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.cli("status", "--json").stdout)  # type: ignore[no-any-return]


@pytest.fixture
def esp(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A mounted FAT32 filesystem (a 64 MiB image file): the kernel's vfat on a loop device,
    or fusefat where the kernel has no vfat (this machine's has none)."""
    image, mnt = tmp_path / "esp.img", tmp_path / "esp"
    mnt.mkdir()
    subprocess.run(["mkfs.fat", "-F", "32", "-C", str(image), str(64 * 1024)], check=True,
                   capture_output=True)
    with open("/proc/filesystems", encoding="ascii") as handle:
        vfat = any(line.split()[-1:] == ["vfat"] for line in handle)
    if vfat:
        subprocess.run(["mount", "-t", "vfat", "-o", "loop", str(image), str(mnt)], check=True)
    elif shutil.which("fusefat"):
        subprocess.run(["fusefat", "-o", "rw+", str(image), str(mnt)], check=True, capture_output=True)
    else:
        pytest.skip("no vfat in this kernel and no fusefat (scripts/setup installs it)")
    try:
        yield mnt
        conf = mnt / "loader" / "loader.conf"
        seen = conf.read_text() if conf.exists() else None
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    if seen is not None:  # mtools (another FAT implementation) reads what the mount showed
        assert subprocess.run(["mtype", "-i", str(image), "::/loader/loader.conf"], check=True,
                              capture_output=True, text=True).stdout == seen


def _release_1_on_the_image_esp(site: Site, esp: Path) -> tuple[str, str]:
    """Release 1 committed and deployed, on an ESP as `image build` writes it: its commit and
    deployment id."""
    c1 = site.release(1)
    dep1 = site.cli("deploy", "os/main", "--keys", site.keys).stdout.split()[-1]
    _install_image_esp(esp, _dep(site.status()["deployments"][0]), site.kernels[c1])
    return c1, dep1


def _install_image_esp(esp: Path, dep: Deployment, kernel: tuple[bytes, bytes]) -> None:
    """What ``image build`` puts on the ESP for ``dep`` (its own functions), with --append."""
    (esp / "loader" / "entries").mkdir(parents=True)
    (esp / "loader" / "loader.conf").write_text(entries.loader_conf(f"sealtree-{dep.id}"))
    kernels = {dep.commit: entries.Kernel(f"6.1.0-{dep.version}", None, None)}  # type: ignore[arg-type]
    for e in entries.entries_for([dep], dep.id, kernels, PARTUUID, "quiet"):
        (esp / "loader" / "entries" / f"{e.name}.conf").write_text(e.text())
    (esp / "sealtree" / dep.commit).mkdir(parents=True)
    (esp / "sealtree" / dep.commit / "linux").write_bytes(kernel[0])
    (esp / "sealtree" / dep.commit / "initrd").write_bytes(kernel[1])


def _dep(doc: dict) -> Deployment:  # type: ignore[type-arg]
    return Deployment(doc["id"], doc["commit"], doc["ref"], doc["version"], 0, "", "", "")


def _expected(site: Site, esp: Path) -> None:
    """The ESP holds exactly what the state says, as image build writes it."""
    status = site.status()
    deps = [_dep(d) for d in status["deployments"]]
    default = status["default"]
    kernels = {d.commit: entries.Kernel(f"6.1.0-{d.version}", None, None) for d in deps}  # type: ignore[arg-type]
    want = entries.entries_for(deps, default, kernels, PARTUUID, "quiet")
    names = sorted(os.listdir(esp / "loader" / "entries"))
    assert names == sorted(f"{e.name}.conf" for e in want)
    for e in want:
        assert (esp / "loader" / "entries" / f"{e.name}.conf").read_text() == e.text()
    assert (esp / "loader" / "loader.conf").read_text() == entries.loader_conf(f"sealtree-{default}")
    assert sorted(os.listdir(esp / "sealtree")) == sorted({d.commit for d in deps})
    for d in deps:
        assert (esp / "sealtree" / d.commit / "linux").read_bytes() == site.kernels[d.commit][0]
        assert (esp / "sealtree" / d.commit / "initrd").read_bytes() == site.kernels[d.commit][1]


def _bootable(site: Site, esp: Path) -> str:
    """loader.conf's default names an entry whose kernel and initramfs are complete; its name."""
    conf = (esp / "loader" / "loader.conf").read_text()
    default = next(line.split()[1] for line in conf.splitlines() if line.startswith("default "))
    text = (esp / "loader" / "entries" / default).read_text()
    fields = dict(line.split(" ", 1) for line in text.splitlines())
    assert fields["options"].startswith(f"root=PARTUUID={PARTUUID} console=ttyS0 quiet")
    commit = fields["linux"].split("/")[2]
    assert (esp / fields["linux"].lstrip("/")).read_bytes() == site.kernels[commit][0]
    assert (esp / fields["initrd"].lstrip("/")).read_bytes() == site.kernels[commit][1]
    return default


def test_deploy_set_default_rollback_undeploy_keep_the_esp_in_step(tmp_path: Path, esp: Path) -> None:
    site = Site(tmp_path)
    c1, dep1 = _release_1_on_the_image_esp(site, esp)

    c2 = site.release(2)
    out = site.cli("deploy", "os/main", "--keys", site.keys, "--esp", str(esp)).stdout
    dep2 = out.split()[-1]
    assert "ESP" in out and f"default entry sealtree-{dep2}" in out
    _expected(site, esp)
    assert not (esp / "loader" / "entries" / f"sealtree-{dep1}-live.conf").exists()
    assert f"sealtree.deployment={dep1}" in (esp / "loader" / "entries" / f"sealtree-{dep1}.conf").read_text()
    assert _bootable(site, esp) == f"sealtree-{dep2}.conf"

    site.cli("rollback", "--esp", str(esp))
    _expected(site, esp)
    assert _bootable(site, esp) == f"sealtree-{dep1}.conf"
    site.cli("set-default", dep2, "--esp", str(esp))
    _expected(site, esp)
    site.cli("undeploy", dep1, "--esp", str(esp))
    _expected(site, esp)
    assert os.listdir(esp / "sealtree") == [c2]
    assert not any(n.startswith(".") for n in os.listdir(esp / "loader" / "entries"))

    doc = json.loads(site.cli("deploy", c1, "--keys", site.keys, "--allow-downgrade", "--json",
                              "--esp", str(esp)).stdout)
    assert doc["esp"]["default_entry"] == f"sealtree-{doc['id']}"
    assert f"/sealtree/{c1}/linux" in doc["esp"]["written"]
    _expected(site, esp)
    out = site.cli("set-default", doc["id"], "--esp", str(esp)).stdout  # nothing to change
    assert "0 file(s) written, 0 removed" in out


def test_without_esp_nothing_is_written_and_a_bad_esp_is_one_line(tmp_path: Path, esp: Path) -> None:
    site = Site(tmp_path)
    site.release(1)
    site.cli("deploy", "os/main", "--keys", site.keys)
    assert os.listdir(esp) == []
    proc = site.cli("rollback", "--esp", str(esp), check=False)  # no previous: refused first
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    dep = site.status()["default"]
    proc = site.cli("set-default", dep, "--esp", str(esp), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "loader/" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (esp / "loader").mkdir()
    proc = site.cli("set-default", dep, "--esp", str(esp), check=False)
    assert proc.returncode != 0 and "no sealtree boot entry" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


KILLER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from image.esp_sync import sync_esp
from store.repo import Repository
n, calls = int(sys.argv[4]), [0]
def killing(real):
    def call(*args):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    return call
os.replace, os.unlink, os.rmdir = killing(os.replace), killing(os.unlink), killing(os.rmdir)
sync_esp(Repository.open(sys.argv[2]), sys.argv[3])
"""


def _copy_back(source: Path, dest: Path) -> None:
    """Copy the tree ``source`` into ``dest``: data only (FAT keeps no modes or owners)."""
    for directory, dirs, files in os.walk(source):
        rel = Path(directory).relative_to(source)
        for name in dirs:
            (dest / rel / name).mkdir()
        for name in files:
            (dest / rel / name).write_bytes((Path(directory) / name).read_bytes())


def test_a_sync_killed_at_any_step_leaves_a_bootable_default(tmp_path: Path, esp: Path) -> None:
    site = Site(tmp_path)
    c1, dep1 = _release_1_on_the_image_esp(site, esp)
    c2 = site.release(2)
    dep2 = site.cli("deploy", "os/main", "--keys", site.keys).stdout.split()[-1]
    site.cli("undeploy", dep1)  # the sync must add dep2, switch, and remove dep1's all at once
    before = tmp_path / "esp-before"
    shutil.copytree(esp, before)

    def sync(n: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", KILLER, str(ROOT), site.repo, str(esp), str(n)],
                              capture_output=True, text=True)

    seen, n = set(), 1
    while True:  # kill the n-th rename or removal of a sync from the same starting point
        for name in os.listdir(esp):
            shutil.rmtree(esp / name)
        _copy_back(before, esp)
        proc = sync(n)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
        seen.add(_bootable(site, esp))
        assert sync(0).returncode == 0  # the next sync finishes the job and its leftovers
        _expected(site, esp)
        assert not any(name.startswith(".") for d in ("loader", "loader/entries", f"sealtree/{c2}")
                       for name in os.listdir(esp / d))
        n += 1
    assert n > 7  # 2 kernels + 2 initrds... : each rename and removal was a kill point
    assert seen == {f"sealtree-{dep1}.conf", f"sealtree-{dep2}.conf"}
    _expected(site, esp)

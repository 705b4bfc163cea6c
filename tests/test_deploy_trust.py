"""Trust comes only from what the caller names, never from the disk an attacker can write.

Two ways the audit moved the trust anchor or changed the view with write access to the
repository: the keyring path recorded in ``deploy/state.json`` (honoured by ``mount``),
and overlayfs xattrs on the farm's directories (accepted and mounted).  Both must be
refused with nothing mounted.  Real mounts, as root.
"""

from __future__ import annotations

import os

import pytest

from overlay import deployment_pack, farm
from overlay.deploy import deploy
from overlay.mount_deployment import mount_deployment, unmount
from overlay.state import StateFile
from store.errors import FarmMismatch, NoKeyring, SignatureError
from store.repo import Repository
from tests.helpers import run_cli
from tests.test_deploy_cli import Site, _leftovers, _refused

pytestmark = pytest.mark.usefixtures("needs_root")


def _attacker_takes_over(site: Site, dep: str) -> None:
    """What whoever can write the repository does: re-sign the kept pack with their own
    key and point the deployment's recorded keyring at a keyring holding that key."""
    pack = site.kept_pack()
    os.unlink(pack + ".sig")
    run_cli("pack", "sign", pack, "--key", os.path.join(site.base, "rogue"))
    with StateFile(os.path.join(site.repo, "deploy")).update() as state:
        state.get(dep).keys = site.rogue_keys


def _nothing_mounted(site: Site) -> None:
    assert _leftovers(site.base) == []
    assert os.listdir(site.target) == []


def test_mount_never_trusts_the_keyring_the_state_names(site, monkeypatch):
    dep = site.deploy()
    _attacker_takes_over(site, dep)
    repo = Repository.open(site.repo)
    # No keyring named and no system keyring: refused, not the state's keyring.
    monkeypatch.setattr(deployment_pack, "SYSTEM_KEYRING", os.path.join(site.base, "no such dir"))
    with pytest.raises(NoKeyring):
        mount_deployment(repo, dep, site.target)
    _nothing_mounted(site)
    # The system keyring (the vendor's) is what is trusted then: the pack is refused.
    monkeypatch.setattr(deployment_pack, "SYSTEM_KEYRING", site.keys)
    with pytest.raises(SignatureError, match="not in the keyring"):
        mount_deployment(repo, dep, site.target)
    _nothing_mounted(site)
    # So is the keyring the caller names.
    with pytest.raises(SignatureError, match="not in the keyring"):
        mount_deployment(repo, dep, site.target, keys_dir=site.keys)
    _nothing_mounted(site)
    # Only a caller who names the rogue keyring gets the rogue pack mounted.
    mount_deployment(repo, dep, site.target, keys_dir=site.rogue_keys)
    unmount(repo, site.target)
    _nothing_mounted(site)


def test_mount_command_without_keys_never_uses_the_state_keyring(site):
    if os.path.isdir(deployment_pack.SYSTEM_KEYRING):
        pytest.skip(f"this machine has a system keyring ({deployment_pack.SYSTEM_KEYRING})")
    dep = site.deploy()
    _attacker_takes_over(site, dep)
    proc = site.cli("mount", dep, site.target, check=False)
    assert proc.returncode == 12, proc.stderr
    assert "no keyring given" in proc.stderr, proc.stderr
    _nothing_mounted(site)
    _refused(site, dep, "not in the keyring", code=12)  # --keys: the vendor's keyring


def test_deploy_without_keys_trusts_the_system_keyring_only(site, monkeypatch):
    """``deploy`` with no --keys verifies with /etc/sealtree/keys, as ``mount`` and the boot
    verifier do; without one it is refused before anything is recorded."""
    if os.path.isdir(deployment_pack.SYSTEM_KEYRING):
        pytest.skip(f"this machine has a system keyring ({deployment_pack.SYSTEM_KEYRING})")
    proc = site.cli("deploy", "os/main", check=False)
    assert proc.returncode == 12, proc.stderr
    assert "no keyring given" in proc.stderr and "/etc/sealtree/keys" in proc.stderr, proc.stderr
    assert StateFile(os.path.join(site.repo, "deploy")).read().deployments == []
    # With a system keyring (the vendor's, in place of /etc/sealtree/keys), deploy verifies
    # with it.
    monkeypatch.setattr(deployment_pack, "SYSTEM_KEYRING", site.keys)
    result = deploy(Repository.open(site.repo), "os/main", None)
    assert result.deployment.keys == os.path.abspath(site.keys)


def test_state_keyring_is_recorded_for_information_only(site):
    """Deploy records the keyring it verified with; nothing reads it to verify."""
    dep = site.deploy()
    state = StateFile(os.path.join(site.repo, "deploy")).read()
    assert state.get(dep).keys == os.path.abspath(site.keys)


@pytest.mark.parametrize("name", ["trusted.overlay.opaque", "user.overlay.opaque",
                                  "trusted.overlay.redirect", "user.anything"])
@pytest.mark.parametrize("where", ["usr", "usr/bin", ""])
def test_xattr_on_a_farm_directory_is_refused(site, name, where):
    dep = site.deploy()
    os.setxattr(os.path.join(site.farm(dep), where), name, b"y")
    _refused(site, dep, f"{where or '/'}: a directory of the farm {site.farm(dep)} carries "
                        f"xattrs ({name}); farm directories carry none")


def test_overlay_xattr_on_a_farm_link_is_refused(site):
    """A link is its object's inode: an xattr added to it is one the manifest does not list."""
    dep = site.deploy()
    os.setxattr(os.path.join(site.farm(dep), "usr/bin/tool"), "trusted.overlay.opaque", b"y")
    _refused(site, dep, "usr/bin/tool: xattrs differ from the manifest")


def test_check_farm_refuses_any_xattr_on_a_directory(site):
    dep = site.deploy()
    repo = Repository.open(site.repo)
    from overlay.deployment_pack import in_farm, large_files, open_deployment_pack, trusted_keyring
    with open_deployment_pack(site.kept_pack(), trusted_keyring(site.keys),
                              bytes.fromhex(site.commit)) as (reader, _v):  # type: ignore[arg-type]
        items = in_farm(large_files(repo.objects, reader.manifest), site.farm(dep))
    farm.check_farm(site.farm(dep), items)
    os.setxattr(os.path.join(site.farm(dep), "deep/a/b"), "trusted.overlay.opaque", b"x")
    with pytest.raises(FarmMismatch) as caught:
        farm.check_farm(site.farm(dep), items)
    assert caught.value.path == b"deep/a/b" and caught.value.file == site.farm(dep)

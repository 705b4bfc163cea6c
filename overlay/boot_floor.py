"""The freshness floor of the boot verifier: rollback protection that does not trust the disk.

``packs/freshness.json`` on the disk is as writable as the packs are, and the
previous deployment, which boot counting must be able to fall back to, is by
design older than the newest pack.  So the floor is a file in the initramfs
(``pack.freshness`` format), written either by the vendor at release time from
the signed packs it still wants bootable (``python3 -m overlay.boot_floor write
PACK... --keys DIR -o FILE``: per ref, the oldest of them; no repository
needed, so it works while an image is being built), or on a device from its
repository (``sealtree-boot write-floor REPO FILE``: per ref, the oldest of
the default and previous deployments).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence

from pack import freshness
from pack.verify import open_verified
from store.errors import DeployError, DowngradeError, SealtreeError
from store.ids import RawId
from store.repo import Repository

from .boot_config import BootConfig
from .deployment_pack import trusted_keyring
from .state import state_file


def boot_floor(repo: Repository) -> dict[str, freshness.Accepted]:
    """Per ref, the oldest of the default and previous deployments (what must stay bootable)."""
    state = state_file(repo).read()
    floor: dict[str, freshness.Accepted] = {}
    for dep_id in (state.default, state.previous):
        if dep_id is None:
            continue
        dep = state.get(dep_id)
        commit_id = RawId(bytes.fromhex(dep.commit))
        accepted = freshness.Accepted.of(commit_id, repo.objects.read_commit(commit_id))
        known = floor.get(dep.ref)
        if known is None or accepted.key() < known.key():
            floor[dep.ref] = accepted
    return floor


def write_floor(repo_path: str, out: str) -> dict[str, freshness.Accepted]:
    """Write ``boot_floor`` of the repository at ``repo_path`` to ``out``; return it."""
    floor = boot_floor(Repository.open(repo_path))
    freshness.save(out, floor)
    return floor


def check_floor(floor: dict[str, freshness.Accepted], ref: str, candidate: freshness.Accepted,
                where: str) -> None:
    """Raise DowngradeError if ``candidate`` is older than the floor baked in for ``ref``."""
    newest = floor.get(ref)
    if newest is not None and not freshness.is_acceptable(candidate, newest):
        raise DowngradeError(f"the pack ({candidate.describe()}) is older than the oldest release "
                             f"this initramfs boots for {ref} ({newest.describe()})", path=where)


def load_floor(config: BootConfig) -> dict[str, freshness.Accepted]:
    """The floor the configuration names ({} when it names none)."""
    if config.freshness is None:
        return {}
    if not os.path.exists(config.freshness):
        raise DeployError("the freshness floor named by the configuration "
                          "is missing; refusing to boot without rollback protection",
                          path=config.freshness)
    return freshness.load(config.freshness)




def floor_from_packs(pack_paths: Iterable[str], keys_dir: str) -> dict[str, freshness.Accepted]:
    """Per ref, the oldest of the signed packs at ``pack_paths``, each verified whole (signatures
    against the keyring in ``keys_dir``, then every byte): the floor of an initramfs that must
    boot all of them.  Raises SignatureError, PackError (naming the pack)."""
    keyring = trusted_keyring(keys_dir)
    floor: dict[str, freshness.Accepted] = {}
    for path in pack_paths:
        try:
            with open_verified(path, keyring) as (reader, _verification):
                reader.check_data()
                accepted = freshness.Accepted.of(reader.commit_id, reader.commit)
                ref = reader.ref
        except SealtreeError as err:
            raise err.located(path) from None
        known = floor.get(ref)
        if known is None or accepted.key() < known.key():
            floor[ref] = accepted
    return floor


PREFIX = "boot_floor: "


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m overlay.boot_floor write PACK... --keys DIR -o FILE``."""
    p = argparse.ArgumentParser(prog="python3 -m overlay.boot_floor",
                                description="Write the freshness floor of a boot verifier's initramfs.")
    sub = p.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="the floor from signed packs: per ref, the oldest of them")
    write.add_argument("packs", nargs="+", metavar="PACK", help="a signed pack (PACK.sig beside it)")
    write.add_argument("--keys", required=True, metavar="DIR", help="the trusted keyring")
    write.add_argument("-o", "--output", required=True, metavar="FILE",
                       help="where to write it (the hook copies /etc/sealtree/freshness.json)")
    args = p.parse_args(argv)
    try:
        floor = floor_from_packs(args.packs, args.keys)
        freshness.save(args.output, floor)
    except SealtreeError as err:
        print(f"{PREFIX}FAILED: {err}", flush=True)
        return 1
    for ref, accepted in sorted(floor.items()):
        print(f"{PREFIX}floor for {ref}: {accepted.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

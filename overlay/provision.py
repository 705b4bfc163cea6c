"""Provisioning: enable fs-verity on every file object (and every pack's EROFS image object) of
a repository, as a device does on pull.

A file object's name is its fs-verity digest, so once verity is on, the
kernel's measurement of the object can be compared with its name: an object
whose content was changed before it was sealed is reported (and left alone:
the boot verifier refuses every deployment that uses it).

``python3 -m overlay.provision REPO [--digests]`` prints one summary line
(and, with ``--digests``, ``provision: digest sha256:<measured> <object>``
for every object) and exits 1 when an object could not be sealed or does
not measure to its name.  Needs a filesystem with fs-verity (ext4 ``-O
verity``); where there is none it says so and exits 1.
"""

from __future__ import annotations

import argparse
import hmac
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from store import kverity
from store.errors import SealtreeError, VerityError, VerityUnsupported
from store.ids import to_raw
from store.names import show as show_name
from store.repo import Repository

PREFIX = "provision: "


@dataclass
class ProvisionReport:
    objects: int = 0
    images: int = 0  # of ``objects``: packs' EROFS image objects
    enabled: int = 0  # sealed now
    already: int = 0  # sealed before
    digests: list[tuple[str, str]] = field(default_factory=list)  # (object path, sha256:<hex>)
    mismatched: list[str] = field(default_factory=list)  # objects measuring to another digest
    failed: list[tuple[str, str]] = field(default_factory=list)  # (object path, why)


def seal_objects(paths: Iterable[str]) -> int:
    """Enable fs-verity on each object file in ``paths``; return how many were sealed now
    (the others were sealed already).

    Safe on objects nobody checked yet: an object's name is its fs-verity digest, so one
    whose bytes were changed measures to another digest and is refused when checked.
    Raises VerityUnsupported where the filesystem or kernel has no fs-verity, VerityError
    or OSError (naming the object) for the first object that cannot be sealed.
    """
    return sum(1 for path in paths if kverity.enable(path))


def provision(repo: Repository, *, on_object: Callable[[str, bytes], None] | None = None
              ) -> ProvisionReport:
    """Enable fs-verity on every file object and measure it; never raises for one object.

    Raises VerityUnsupported when the filesystem or kernel has no fs-verity at all.
    """
    report = ProvisionReport()
    for obj in repo.objects.iter_objects():
        if obj.kind not in ("file", "image"):  # named by their fs-verity digest
            continue
        report.objects += 1
        report.images += obj.kind == "image"
        try:
            if kverity.enable(obj.path):
                report.enabled += 1
            else:
                report.already += 1
            measured = kverity.measure(obj.path)
        except VerityUnsupported:
            raise
        except (VerityError, OSError) as err:
            report.failed.append((obj.path, str(err)))
            continue
        if measured is None:  # enable succeeded, so this cannot happen; refuse to guess
            report.failed.append((obj.path, "fs-verity is not on after enabling it"))
            continue
        report.digests.append((obj.path, "sha256:" + measured.hex()))
        if on_object is not None:
            on_object(obj.path, measured)
        if not hmac.compare_digest(measured, to_raw(obj.id)):
            report.mismatched.append(obj.path)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m overlay.provision",
                                description="Enable fs-verity on every file and image object of REPO.")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--digests", action="store_true", help="print every kernel-measured digest")
    args = p.parse_args(argv)

    def say(line: str) -> None:
        print(PREFIX + line, flush=True)

    def show(path: str, measured: bytes) -> None:
        if args.digests:
            say(f"digest sha256:{measured.hex()} {show_name(path)}")

    try:
        report = provision(Repository.open(args.repo), on_object=show)
    except SealtreeError as err:
        say(f"FAILED: {err}")
        return 1
    for path in report.mismatched:
        say(f"CORRUPT {show_name(path)}: the kernel-measured digest is not the object's name")
    for path, why in report.failed:
        say(f"FAILED {show_name(path)}: {why}")
    say(f"{report.objects - report.images} file objects, {report.images} image objects: "
        f"fs-verity enabled on {report.enabled}, "
        f"{report.already} already sealed, {len(report.mismatched)} corrupt, "
        f"{len(report.failed)} failed")
    return 1 if report.mismatched or report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

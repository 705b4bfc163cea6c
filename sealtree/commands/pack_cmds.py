"""pack build, sign, digest, add-signature, verify, inspect, import: signed packs."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING, Any

from pack.build import DEFAULT_INLINE_MAX, DEFAULT_LEVEL, MAX_LEVEL, RELEASE_INLINE_MAX, build_pack
from pack.format import MAX_INLINE_MAX

if TYPE_CHECKING:
    from pack.format import ImageRef
    from pack.importer import ImportResult
    from pack.reader import PackReader
from store.atomic import atomic_write, check_destination
from store.errors import RefError, SignatureError, UsageError
from store.ids import to_hex
from store.names import show
from store.objects import relative_path
from store.refs import check_ref_name

from ..output import human_size, json_path, print_json
from . import delta_cmds
from .common import add_parser, commit_json, iso_time, open_repo


def register(sub: Any) -> None:
    from pack.signature import DOMAIN
    group = add_parser(
        sub, "pack", "build, sign, verify, inspect and import signed packs",
        "A pack holds one commit and its whole tree: every path's metadata, the\n"
        "small files' bytes and the fs-verity digest of every large file.  One\n"
        "detached Ed25519 signature (PACK.sig, several allowed) covers all of it.\n"
        "`sealtree pack COMMAND --help` describes each command.",
        "the vendor's side:\n"
        "  sealtree --repo R pack build os/main -o os.pack\n"
        "  sealtree pack sign os.pack --key vendor.key            # online\n"
        "  sealtree pack digest os.pack -o msg                    # offline: sign msg\n"
        "  sealtree pack add-signature os.pack --pubkey k.pub sig #   elsewhere, add it\n"
        "a device's side:\n"
        "  sealtree pack verify os.pack --keys /etc/sealtree/keys\n"
        "  sealtree --repo R pack import os.pack --keys /etc/sealtree/keys")
    packs = group.add_subparsers(dest="pack_command", metavar="COMMAND", title="commands")
    packs.required = True

    p = add_parser(
        packs, "build", "write the pack of a commit",
        "Write the pack of REV's commit to PACK.  Regular files of at most --inline-max\n"
        "bytes are carried in the pack (zstd-compressed); larger ones are named by their\n"
        "size and fs-verity digest and stay separate objects.  The pack records the ref\n"
        "it is for: REV when REV is a ref, else --ref.  The same commit, ref and options\n"
        "always give the same bytes.",
        "example:\n  sealtree --repo R pack build os/main -o os-42.pack")
    p.add_argument("rev", metavar="REV")
    p.add_argument("-o", "--output", required=True, metavar="PACK", help="the pack file to write")
    p.add_argument("--ref", default=None, metavar="NAME",
                   help="the ref the pack is for (default: REV, which must then be a ref)")
    p.add_argument("--inline-max", type=int, default=DEFAULT_INLINE_MAX, metavar="BYTES",
                   help=f"largest file carried inline, 0..{MAX_INLINE_MAX} "
                        f"(default {DEFAULT_INLINE_MAX}; the packs publish and image build "
                        f"make use {RELEASE_INLINE_MAX}: give that for a pack that ships)")
    p.add_argument("--level", type=int, default=DEFAULT_LEVEL, metavar="L",
                   help=f"zstd level 1..{MAX_LEVEL} (default {DEFAULT_LEVEL})")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_build)

    p = add_parser(
        packs, "sign", "sign a pack with a private key (online signing)",
        "Sign PACK with the Ed25519 private key in KEYFILE and add the signature to\n"
        "PACK.sig (created if missing; a signature by the same key is replaced).")
    p.add_argument("pack", metavar="PACK")
    p.add_argument("--key", required=True, metavar="KEYFILE", help="the private key (PEM)")
    p.add_argument("--signatures", metavar="SIGFILE", help="signature file (default PACK.sig)")
    p.set_defaults(func=cmd_sign)

    p = add_parser(
        packs, "digest", "print what a signing service must sign (offline signing)",
        f"Print, in hex, the message an Ed25519 key must sign for PACK: the domain\n"
        f"prefix {DOMAIN!r} followed by the pack's SHA-256.  With --output, write\n"
        f"the raw message to FILE instead.  Return the 64-byte signature (raw or hex)\n"
        f"with `sealtree pack add-signature`.",
        "example (the key held by openssl, elsewhere):\n"
        "  sealtree pack digest os.pack -o msg\n"
        "  openssl pkeyutl -sign -rawin -inkey vendor.key -in msg -out sig\n"
        "  sealtree pack add-signature os.pack --pubkey vendor.key.pub sig")
    p.add_argument("pack", metavar="PACK")
    p.add_argument("-o", "--output", metavar="FILE", help="write the raw message to FILE")
    p.add_argument("--json", action="store_true", help="print {sha256, message} as JSON")
    p.set_defaults(func=cmd_digest)

    p = add_parser(
        packs, "add-signature", "check a signature made elsewhere and add it to PACK.sig",
        "Check that SIGFILE (a 64-byte Ed25519 signature, raw or as 128 hex digits)\n"
        "is KEY.pub's signature over PACK, then add it to PACK.sig.  A signature that\n"
        "does not verify is refused (exit 12) and nothing is written.")
    p.add_argument("pack", metavar="PACK")
    p.add_argument("sigfile", metavar="SIGFILE")
    p.add_argument("--pubkey", required=True, metavar="KEY.pub", help="the signer's public key")
    p.add_argument("--signatures", metavar="FILE", help="signature file (default PACK.sig)")
    p.set_defaults(func=cmd_add_signature)

    p = add_parser(
        packs, "verify", "check a pack's signatures and consistency",
        "Exit 0 only when PACK is signed by at least --min-signatures keys of the\n"
        "keyring DIR that are not revoked (DIR/revoked), and the whole pack is\n"
        "consistent: header, commit id, every path, every tree id, every inline file's\n"
        "digest, and the EROFS image it names (built here, as pack import does).\n"
        "Exit 12 for a signature problem, 11 for a bad pack.",
        "example:\n  sealtree pack verify os.pack --keys /etc/sealtree/keys --min-signatures 2")
    _trust_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_verify)

    p = add_parser(
        packs, "inspect", "describe a pack (no keys needed)",
        "Show PACK's header, commit, ref, counts and sizes, and the key ids that\n"
        "signed it (PACK.sig).  Checks the header and manifest but not signatures,\n"
        "nor inline file contents (see `pack verify`).")
    p.add_argument("pack", metavar="PACK")
    p.add_argument("--signatures", metavar="SIGFILE", help="signature file (default PACK.sig)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_inspect)

    p = add_parser(
        packs, "import", "verify a pack and store its commit in the repository",
        "Verify PACK as `pack verify` does, refuse it if it is older than the newest\n"
        "pack accepted for its ref (unless --allow-downgrade), then store its commit,\n"
        "trees and inline files, keep the pack and its signatures in the repository\n"
        "(packs/), and set its ref.  Lists the large-file objects the repository\n"
        "still lacks.  Exit 13 for a downgrade.",
        "example:\n  sealtree --repo R pack import os-42.pack --keys /etc/sealtree/keys --json")
    _trust_args(p)
    p.add_argument("--allow-downgrade", action="store_true",
                   help="accept a pack older than the newest accepted for its ref")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_import)
    delta_cmds.register(packs)


def _trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", metavar="PACK")
    p.add_argument("--keys", required=True, metavar="DIR",
                   help="keyring: trusted *.pub keys and a 'revoked' list of key ids")
    p.add_argument("--min-signatures", type=int, default=1, metavar="N",
                   help="good signatures required (default 1)")
    p.add_argument("--signatures", metavar="SIGFILE", help="signature file (default PACK.sig)")


def _sig_path(args: argparse.Namespace) -> str:
    from pack.signature import signature_path
    return args.signatures or signature_path(args.pack)


# -- vendor side ------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> None:
    check_destination(args.output, "-o")  # before anything is built beside it
    repo = open_repo(args)
    commit_id = repo.resolve(args.rev)
    ref = args.ref
    if ref is None:
        try:
            is_ref = repo.refs.read(check_ref_name(args.rev)) is not None
        except RefError:
            is_ref = False
        if not is_ref:
            raise UsageError("is not a ref: say which ref the pack is for with --ref", path=args.rev)
        ref = args.rev
    started = time.monotonic()
    result = build_pack(repo, commit_id, ref, args.output, inline_max=args.inline_max,
                        level=args.level)
    seconds = time.monotonic() - started
    if args.json:
        print_json({"pack": result.path, "commit": to_hex(result.commit_id), "ref": result.ref,
                    "size": result.size, "sha256": result.sha256.hex(), "entries": result.entries,
                    "manifest_size": result.manifest_size, "inline_files": result.inline_files,
                    "inline_bytes": result.inline_bytes, "large_files": result.large_files,
                    "large_bytes": result.large_bytes, "inline_max": args.inline_max,
                    "level": args.level, "seconds": round(seconds, 3),
                    "image": _image_json(result.image)})
        return
    print(f"wrote {show(result.path)}: {human_size(result.size)}, sha256 {result.sha256.hex()}")
    print(f"commit {to_hex(result.commit_id)} for ref {result.ref}: {result.entries} paths, "
          f"{result.inline_files} inline files ({human_size(result.inline_bytes)}), "
          f"{result.large_files} large files ({human_size(result.large_bytes)})")
    print(f"image {_image_line(result.image)}")


def cmd_sign(args: argparse.Namespace) -> None:
    from pack.keys import load_private_key
    from pack.signature import sign_pack
    kid = sign_pack(args.pack, load_private_key(args.key), sig_path=_sig_path(args))
    print(f"signed {show(args.pack)} with key {kid.hex()} ({show(_sig_path(args))})")


def cmd_digest(args: argparse.Namespace) -> None:
    from pack.reader import layout_sha256
    from pack.signature import DOMAIN, signed_message
    if args.output is not None:
        check_destination(args.output, "-o")
    digest = layout_sha256(args.pack)  # a file that is not a pack has nothing to sign
    message = signed_message(digest)
    if args.output:
        atomic_write(args.output, message)
    if args.json:
        print_json({"pack": args.pack, "sha256": digest.hex(), "domain": DOMAIN.hex(),
                    "message": message.hex()})
    elif not args.output:
        print(message.hex())


def cmd_add_signature(args: argparse.Namespace) -> None:
    from pack.keys import load_public_key
    from pack.signature import add_signature, parse_signature_blob
    try:
        with open(args.sigfile, "rb") as handle:
            blob = handle.read(4096)
    except OSError as err:
        raise SignatureError(f"{err.strerror}", path=args.sigfile) from err
    signature = parse_signature_blob(blob, args.sigfile)
    kid = add_signature(args.pack, signature, load_public_key(args.pubkey), sig_path=_sig_path(args))
    print(f"added the signature of key {kid.hex()} to {show(_sig_path(args))}")


# -- device side ------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> None:
    from pack.keys import Keyring
    from pack.reader import named
    from pack.verify import check_whole, open_verified
    keyring = Keyring.load(args.keys)
    with named(args.pack), open_verified(args.pack, keyring, min_signatures=args.min_signatures,
                                         sig_path=_sig_path(args)) as (reader, verification):
        check_whole(reader)
        commit_id, ref = reader.commit_id, reader.ref
    if args.json:
        print_json({"pack": args.pack, "ok": True, "sha256": verification.sha256.hex(),
                    "commit": to_hex(commit_id), "ref": ref,
                    "signers": [k.hex() for k in verification.signers]})
        return
    print(f"{show(args.pack)}: ok: commit {to_hex(commit_id)} for ref {ref}, signed by "
          + ", ".join(k.hex()[:16] for k in verification.signers))


def _describe(reader: PackReader, sig_path: str) -> dict[str, Any]:
    from pack.signature import read_signatures
    header, manifest = reader.header, reader.manifest
    signatures = read_signatures(sig_path, missing_ok=True)
    return {
        "pack": reader.path,
        "size": reader.size,
        "format": header.version,
        "image": _image_json(reader.image),
        # format 3: how many objects the image's stubs redirect to (the signed list)
        "image_objects": None if reader.image_objects is None else len(reader.image_objects),
        "header": {"inline_max": header.inline_max, "entries": header.entry_count,
                   "manifest_size": header.manifest_size, "manifest_frames": header.manifest_frames,
                   "data_size": header.data_size, "data_frames": header.data_frames},
        "ref": reader.ref,
        "commit": commit_json(reader.commit_id, reader.commit),
        "counts": {"paths": len(manifest.entries), "dirs": manifest.dirs,
                   "symlinks": manifest.symlinks, "files": manifest.files,
                   "inline_files": manifest.inline_files, "large_files": manifest.large_files},
        "sizes": {"inline_bytes": manifest.inline_bytes, "large_bytes": manifest.large_bytes,
                  "tree_bytes": manifest.inline_bytes + manifest.large_bytes},
        "signatures": [{"key_id": s.key_id.hex()} for s in signatures],
    }


def cmd_inspect(args: argparse.Namespace) -> None:
    from pack.reader import PackReader, named
    with named(args.pack), PackReader(args.pack) as reader:
        info = _describe(reader, _sig_path(args))
    if args.json:
        print_json(info)
        return
    commit, header, counts, sizes = info["commit"], info["header"], info["counts"], info["sizes"]
    print(f"pack      {show(args.pack)} ({human_size(info['size'])}, format {info['format']})")
    print(f"ref       {info['ref']}")
    print(f"commit    {commit['id']}")
    print(f"date      {iso_time(commit['timestamp'])}")
    if commit["version"]:
        print(f"version   {commit['version']}")
    if commit["parent"]:
        print(f"parent    {commit['parent']}")
    print(f"subject   {commit['subject']}")
    print(f"paths     {counts['paths']}: {counts['dirs']} dirs, {counts['symlinks']} symlinks, "
          f"{counts['files']} files ({counts['inline_files']} inline, {counts['large_files']} large)")
    print(f"inline    {human_size(sizes['inline_bytes'])} in {header['data_frames']} frames "
          f"(inline_max {header['inline_max']} bytes)")
    print(f"large     {human_size(sizes['large_bytes'])}")
    print(f"manifest  {human_size(header['manifest_size'])} in {header['manifest_frames']} frames")
    listed = "" if info["image_objects"] is None else f"; {info['image_objects']} objects listed"
    print(f"image     {_image_line(reader.image)}{listed}")
    sigs = info["signatures"]
    print(f"signed by {len(sigs)} key(s)" + "".join(f"\n  {s['key_id']}" for s in sigs))


def _image_json(image: ImageRef | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {"recipe": image.recipe, "size": image.size, "digest": "sha256:" + image.digest.hex()}


def _image_line(image: ImageRef | None) -> str:
    if image is None:
        return "none (format 1: deployed without one)"
    return (f"EROFS recipe {image.recipe}, {human_size(image.size)}, "
            f"fs-verity sha256:{image.digest.hex()}")


def _import_json(result: ImportResult) -> dict[str, Any]:
    return {
        "commit": to_hex(result.commit_id), "ref": result.ref,
        "previous": to_hex(result.previous) if result.previous else None,
        "pack": result.pack_path, "signers": [k.hex() for k in result.signers],
        "trees": result.trees, "inline_files": result.inline_files,
        "large_files": result.large_files, "image": result.image,
        "missing": [{"digest": "sha256:" + to_hex(m.entry.entry.digest), "size": m.entry.entry.size,
                     "object": os.path.join("objects", m.object_path),
                     **json_path(b"/" + m.entry.path), "paths": len(m.paths)}
                    for m in result.missing],
    }


def cmd_import(args: argparse.Namespace) -> None:
    from pack.importer import import_pack
    from pack.keys import Keyring
    from pack.reader import named
    repo = open_repo(args)
    keyring = Keyring.load(args.keys)
    with named(args.pack):
        result = import_pack(repo, args.pack, keyring, min_signatures=args.min_signatures,
                             allow_downgrade=args.allow_downgrade, sig_path=_sig_path(args))
    if args.json:
        print_json(_import_json(result))
        return
    print(f"imported commit {to_hex(result.commit_id)} as ref {result.ref}: {result.trees} trees, "
          f"{result.inline_files} inline files; {result.large_files} large files, "
          f"{len(result.missing)} objects missing")
    for missing in result.missing:
        entry = missing.entry.entry
        print(f"missing {relative_path('file', entry.digest, entry.meta)} {entry.size} "
              f"{show(b'/' + missing.entry.path)}")

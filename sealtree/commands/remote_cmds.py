"""publish, remote, pull, mirror, serve: shipping releases over HTTP."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

from store.errors import UsageError

from ..output import Progress, human_size, print_json
from .common import add_parser, open_repo, positive_int


def register(sub: Any) -> None:
    p = add_parser(
        sub, "publish", "write or update a published site (signed packs, objects, index)",
        "Write into DIR the signed pack of each REF (default: every ref), every large\n"
        "object they name, and a signed index naming each ref's newest pack, valid for\n"
        "--expires days.  Objects come first and the index last, so a server may serve\n"
        "DIR while it is updated.  Re-publishing unchanged refs rewrites nothing (the\n"
        "index is re-signed only when half its validity has passed).  docs/FORMAT.md,\n"
        "\"Published sites\", describes the layout.\n\n"
        "Offline signing: --unsigned writes everything but signatures and stages the\n"
        "next index in DIR/.index.unsigned, not live; sign it elsewhere with `sealtree\n"
        "index sign`, then --activate BUNDLE... (no repository needed) checks the\n"
        "signatures against --keys (at least --min-signatures keys on the index and on\n"
        "each pack) and that DIR holds every file the index names, and makes it live.",
        "example:\n"
        "  sealtree --repo R publish /srv/www/os --key vendor.key --expires 30 os/main\n"
        "  sealtree --repo R publish /srv/www/os --unsigned os/main\n"
        "  sealtree publish /srv/www/os --activate os.sigs --keys /etc/sealtree/keys")
    p.add_argument("site", metavar="DIR", help="the site's directory (created if missing)")
    p.add_argument("refs", nargs="*", metavar="REF", help="refs to publish (default: all)")
    p.set_defaults(intermixed="refs")
    p.add_argument("--key", action="append", default=[], metavar="KEYFILE",
                   help="a private key to sign packs and the index with (repeat for several)")
    p.add_argument("--unsigned", action="store_true",
                   help="sign nothing: stage the index in DIR/.index.unsigned for offline signing")
    p.add_argument("--activate", action="extend", nargs="+", default=[], metavar="BUNDLE",
                   help="make the staged index live with these signature bundles (`index sign`)")
    p.add_argument("--keys", metavar="DIR", help="with --activate: the keyring the signatures must be of")
    p.add_argument("--min-signatures", type=positive_int, default=1, metavar="N",
                   help="with --activate: good signatures needed on the index and each pack (default 1)")
    p.add_argument("--expires", type=float, default=30, metavar="DAYS",
                   help="days the index stays valid (default 30)")
    p.add_argument("--inline-max", type=int, default=None, metavar="BYTES",
                   help="largest file carried inline in the packs (default 16384: fewer "
                        "requests per pull, a larger pack per release)")
    p.add_argument("--level", type=int, default=None, metavar="L", help="zstd level of the packs")
    p.add_argument("--object-level", type=int, default=10, metavar="L",
                   help="zstd level of the large objects (default 10)")
    p.add_argument("--deltas-from", type=int, default=0, metavar="K",
                   help="for each ref whose pack changes, write deltas from each of its previous "
                        "K releases to the new one (default 0: none)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_publish)

    group = add_parser(
        sub, "remote", "add, list and remove the sites this repository pulls from",
        "A remote is a published site: its URL, mirrors tried in order after it, and\n"
        "the keyring its index and packs must be signed by.  Stored in the repository\n"
        "under remotes/NAME/.",
        "example:\n"
        "  sealtree --repo D remote add vendor https://os.example.com/stable \\\n"
        "      --mirror https://mirror.example.org/os --keys /etc/sealtree/keys")
    remotes = group.add_subparsers(dest="remote_command", metavar="COMMAND", title="commands")
    remotes.required = True
    p = add_parser(remotes, "add", "add a remote", "Add remote NAME at URL (http:// or https://).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("url", metavar="URL")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="a mirror, tried after URL and the mirrors before it (repeat)")
    p.add_argument("--mirrorlist", metavar="URL",
                   help="a text file listing more mirrors (one URL a line), fetched at each pull")
    p.add_argument("--keys", required=True, metavar="DIR", help="the keyring (*.pub, revoked)")
    p.set_defaults(func=cmd_remote_add)
    p = add_parser(remotes, "list", "list the remotes", "List the remotes and their servers.")
    p.add_argument("--json", action="store_true", help="print the remotes as JSON")
    p.set_defaults(func=cmd_remote_list)
    p = add_parser(remotes, "remove", "remove a remote",
                   "Forget remote NAME, and the index last accepted from it.")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_remote_remove)

    p = add_parser(
        sub, "pull", "fetch refs from a remote: signed index, pack, missing objects",
        "Fetch REMOTE's index (signed by its keyring, not expired, not older than the\n"
        "last one accepted), then for each REF (default: all the index lists) its pack\n"
        "and the large objects the repository lacks, each checked against its signed\n"
        "digest before it is stored; then import the pack and move the ref.  A server\n"
        "that fails, is too slow or serves wrong bytes is dropped and the next mirror\n"
        "used.  An interrupted pull continues its downloads next time.  Where the site\n"
        "lists deltas from the release the repository holds, the pack and changed\n"
        "objects are rebuilt from them (checked like downloads; a delta that fails\n"
        "falls back to the full file).",
        "example:\n  sealtree --repo D pull vendor os/main")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("refs", nargs="*", metavar="REF")
    p.set_defaults(intermixed="refs")
    p.add_argument("--allow-expired", action="store_true",
                   help="accept an index past its expiry time")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="accept an index or pack older than the newest accepted")
    p.add_argument("--min-signatures", type=positive_int, default=1, metavar="N",
                   help="signatures needed on the index and each pack (default 1)")
    p.add_argument("--jobs", type=positive_int, default=4, metavar="N",
                   help="objects fetched at once (default 4)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                   help="connect and read timeout (default 20)")
    p.add_argument("--min-rate", type=positive_int, default=64 << 10, metavar="BYTES",
                   help="slowest rate accepted after a grace of --timeout seconds, per request "
                        "(default 65536 bytes/s)")
    p.add_argument("--cross-check", type=positive_int, default=0, metavar="N",
                   help="fetch every file as N byte ranges from N different servers (at random), "
                        "so that no single server serves a whole file; a lying server is named")
    p.add_argument("--no-deltas", action="store_true",
                   help="fetch full packs and objects even where the site lists deltas")
    p.add_argument("--json", action="store_true", help="print what was fetched as JSON")
    p.set_defaults(func=cmd_pull)

    p = add_parser(
        sub, "mirror", "make or update a verified copy of a published site",
        "Copy the site at URL into DIR, fetching only what DIR lacks: every pack the\n"
        "index names (size and SHA-256 checked, signatures checked with --keys), every\n"
        "object they name (size and fs-verity digest checked), then the index last.\n"
        "Any web server can serve DIR.  An upstream index older than DIR's is refused.",
        "example:\n  sealtree mirror https://os.example.com/stable /srv/www/os --keys /etc/sealtree/keys")
    p.add_argument("url", metavar="URL")
    p.add_argument("site", metavar="DIR")
    p.add_argument("--keys", metavar="DIR", help="check the index's and packs' signatures with this keyring")
    p.add_argument("--allow-expired", action="store_true", help="copy an index past its expiry time")
    p.add_argument("--jobs", type=positive_int, default=4, metavar="N", help="objects fetched at once")
    p.add_argument("--json", action="store_true", help="print what was fetched as JSON")
    p.set_defaults(func=cmd_mirror)

    p = add_parser(
        sub, "serve", "serve a published site over HTTP (read-only)",
        "Serve the files below DIR: GET and HEAD with a single Range; no directory\n"
        "listings, no path with a component starting with '.', no symlinks (nothing\n"
        "outside DIR), at most --max-connections requests at once.  Prints the address\n"
        "it listens on; stops on Ctrl-C.",
        "example:\n  sealtree serve /srv/www/os --listen 0.0.0.0:8080")
    p.add_argument("site", metavar="DIR")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8080; port 0: any free port)")
    p.add_argument("--max-connections", type=positive_int, default=64, metavar="N",
                   help="requests served at once (default 64)")
    p.add_argument("--log", action="store_true", help="log each request on stderr")
    p.set_defaults(func=cmd_serve)


def cmd_publish(args: argparse.Namespace) -> int:
    from pack.build import DEFAULT_LEVEL, RELEASE_INLINE_MAX
    from pack.keys import load_private_key
    from remote.publish import publish

    if args.activate:
        return _activate(args)
    if args.keys is not None:
        raise UsageError("--keys goes with --activate (publishing signs with --key)")
    if not args.key and not args.unsigned:
        raise UsageError("give --key KEYFILE to sign, or --unsigned to sign offline")
    repo = open_repo(args)
    keys = [load_private_key(path) for path in args.key]
    result = publish(repo, args.site, keys, args.refs, expires_days=args.expires,
                     inline_max=RELEASE_INLINE_MAX if args.inline_max is None else args.inline_max,
                     level=DEFAULT_LEVEL if args.level is None else args.level,
                     object_level=args.object_level, deltas_from=args.deltas_from,
                     unsigned=args.unsigned)
    for skipped in result.deltas_skipped:
        print(f"no delta: {skipped}", file=sys.stderr)
    if args.json:
        print_json({"site": os.path.abspath(args.site), "refs": result.refs,
                    "deltas_written": result.deltas_written,
                    "index_written": result.index_written, "serial": result.index.serial,
                    "index_staged": result.staged,
                    "expires": result.index.expires, "packs_written": result.packs_written,
                    "objects_written": result.objects_written, "bytes_written": result.bytes_written,
                    "signatures_added": result.signatures_added})
        return 0
    what = (f"index serial {result.index.serial} written" if result.index_written
            else f"index serial {result.index.serial} unchanged")
    if result.staged:
        staged = os.path.join(args.site, ".index.unsigned")
        what = (f"index serial {result.index.serial} staged unsigned in {staged} (sign it with "
                f"`sealtree index sign`, then publish --activate)")
    print(f"published {len(result.refs)} ref(s) to {args.site}: {result.packs_written} pack(s), "
          f"{result.objects_written} object(s), {result.deltas_written} delta(s), "
          f"{human_size(result.bytes_written)} written; {what}")
    return 0


def _activate(args: argparse.Namespace) -> int:
    from pack.keys import Keyring
    from remote.offline import activate

    if args.key or args.unsigned or args.refs:
        raise UsageError("--activate takes signature bundles, --keys and --min-signatures only")
    if args.keys is None:
        raise UsageError("--activate needs --keys DIR: the keyring the signatures must be of")
    done = activate(args.site, args.activate, Keyring.load(args.keys), min_signatures=args.min_signatures)
    signers = [k.hex() for k in done.index_signers]
    if args.json:
        print_json({"site": os.path.abspath(args.site), "serial": done.index.serial,
                    "index_sha256": done.sha256.hex(), "made_live": done.made_live,
                    "index_signers": signers, "packs": len(done.packs),
                    "signatures_added": done.signatures_added})
        return 0
    what = "made live" if done.made_live else "already live: signatures added"
    print(f"index serial {done.index.serial} (sha256 {done.sha256.hex()[:16]}) {what}; signed by "
          f"{len(signers)} trusted key(s), {len(done.packs)} pack(s) signed, "
          f"{done.signatures_added} signature(s) added")
    return 0


def cmd_remote_add(args: argparse.Namespace) -> int:
    from remote.config import add_remote

    remote = add_remote(open_repo(args), args.name, args.url, args.mirror, args.keys, args.mirrorlist)
    print(f"added remote {remote.name}: {' '.join(remote.servers)}")
    return 0


def cmd_remote_list(args: argparse.Namespace) -> int:
    from remote.config import list_remotes

    remotes = list_remotes(open_repo(args))
    if args.json:
        print_json([{"name": r.name, "url": r.url, "mirrors": list(r.mirrors),
                     "mirrorlist": r.mirrorlist, "keys": r.keys} for r in remotes])
        return 0
    for r in remotes:
        mirrors = "".join(f" mirror {m}" for m in r.mirrors)
        mirrors += f" mirrorlist {r.mirrorlist}" if r.mirrorlist else ""
        print(f"{r.name}\t{r.url}{mirrors}\tkeys {r.keys}")
    return 0


def cmd_remote_remove(args: argparse.Namespace) -> int:
    from remote.config import remove_remote

    remove_remote(open_repo(args), args.name)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from remote.config import load_remote
    from remote.http import HttpPolicy
    from remote.pull import PullOptions, PullProgress, pull

    if args.timeout <= 0:
        raise UsageError(f"--timeout must be more than 0, got {args.timeout}")
    repo = open_repo(args)
    remote = load_remote(repo, args.remote)
    policy = HttpPolicy(connect_timeout=args.timeout, read_timeout=args.timeout, grace=args.timeout,
                        min_rate=args.min_rate, connections=max(args.jobs, 2))
    options = PullOptions(refs=args.refs, allow_expired=args.allow_expired,
                          allow_downgrade=args.allow_downgrade, min_signatures=args.min_signatures,
                          workers=args.jobs, policy=policy, cross_check=args.cross_check,
                          no_deltas=args.no_deltas)
    line = Progress(f"pull {remote.name}")
    lock = threading.Lock()

    def report(progress: PullProgress) -> None:
        with lock:
            line.update(f"{progress.objects_done}/{progress.objects_total} objects, "
                        f"{human_size(progress.bytes_done)}/{human_size(progress.bytes_total)}")

    try:
        result = pull(repo, remote, options, report if line.enabled else None)
    finally:
        line.done()
    if args.json:
        print_json({
            "remote": result.remote, "index_serial": result.index_serial,
            "index_server": result.index_server, "index_not_modified": result.index_not_modified,
            "bytes_fetched": result.bytes_fetched,
            "bytes_full": result.bytes_full, "deltas_used": result.deltas_used,
            "delta_fallbacks": [{"path": f.path, "reason": f.reason, "server_blamed": f.blamed_server}
                                for f in result.fallbacks],
            "packs_fetched": result.packs_fetched, "objects_fetched": result.objects_fetched,
            "servers": result.servers,
            "refs": [{"ref": r.ref, "commit": r.commit, "previous": r.previous, "updated": r.updated,
                      "pack_bytes": r.pack_bytes, "objects_fetched": r.objects_fetched,
                      "object_bytes": r.object_bytes, "deltas_used": r.deltas_used}
                     for r in result.refs]})
        return 0
    for fallback in result.fallbacks:
        print(f"delta not used, full file fetched instead: {fallback.path}: {fallback.reason}",
              file=sys.stderr)
    for r in result.refs:
        if r.updated:
            print(f"{r.ref}: {(r.previous or '(new)')[:12]} -> {r.commit[:12]} "
                  f"({r.objects_fetched} objects, {human_size(r.pack_bytes + r.object_bytes)})")
        else:
            print(f"{r.ref}: up to date ({r.commit[:12]})")
    dropped = [f"{url} ({s['dropped']})" for url, s in result.servers.items() if s["dropped"]]
    if dropped:
        print(f"servers dropped: {'; '.join(dropped)}", file=sys.stderr)
    refused = [f"{url} ({s['deltas_refused']})" for url, s in result.servers.items()
               if s["deltas_refused"]]
    if refused:
        print(f"servers asked for no more deltas: {'; '.join(refused)}", file=sys.stderr)
    saved = (f", {result.deltas_used} delta(s) used ({human_size(result.bytes_full)} without)"
             if result.deltas_used else "")
    kept = ", not modified" if result.index_not_modified else ""
    print(f"fetched {human_size(result.bytes_fetched)} from {result.remote} "
          f"(index serial {result.index_serial}{kept}){saved}")
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from pack.keys import Keyring
    from remote.config import check_url
    from remote.mirror import mirror

    keyring = Keyring.load(args.keys) if args.keys else None
    result = mirror(check_url(args.url), args.site, keyring, allow_expired=args.allow_expired,
                    workers=args.jobs)
    if args.json:
        print_json({"upstream": result.upstream, "serial": result.serial, "refs": result.refs,
                    "index_written": result.index_written, "packs_fetched": result.packs_fetched,
                    "objects_fetched": result.objects_fetched, "deltas_fetched": result.deltas_fetched,
                    "bytes_fetched": result.bytes_fetched})
        return 0
    checked = "signatures checked" if keyring else "signatures not checked (no --keys)"
    print(f"mirrored {result.upstream} into {args.site}: index serial {result.serial}, "
          f"{result.packs_fetched} pack(s), {result.objects_fetched} object(s), "
          f"{result.deltas_fetched} delta file(s), {human_size(result.bytes_fetched)} fetched; {checked}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from remote.serve import make_server

    if not os.path.isdir(args.site):
        raise UsageError("not a directory", path=args.site)
    try:
        server = make_server(args.site, args.listen, max_connections=args.max_connections,
                             log=(lambda text: print(text, file=sys.stderr)) if args.log else None)
    except ValueError as err:
        raise UsageError(f"--listen: {err}") from None
    with server:
        print(f"serving {args.site} at {server.url}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0

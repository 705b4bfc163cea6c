"""The long run: ``python3 -m tests.reliability.run --long --out DIR [--minutes M]``.

Runs the pack fuzzer, the crash-injection runner, every tampering case and the bad tar
inputs, with larger counts than the CI slice (stopping each part at its share of the time
budget), and writes ``DIR/summary.json`` and ``DIR/summary.md``: mutations tried /
refused / wrongly accepted / crashes; kills per operation / inconsistencies; tamperings
tried / refused; bad inputs tried.  Exit status 1 if any invariant broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict

from . import settings
from .badinput import run_bad_inputs
from .env import Env, unmount_below
from .fuzz import fuzz, memory_probe
from .kills import run_kills
from .tamper import TAMPERS, Tampering


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.reliability.run")
    parser.add_argument("--long", action="store_true", help="thousands of cases (default: the CI slice)")
    parser.add_argument("--out", required=True, help="directory for summary.json, summary.md and the work")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget (default 8)")
    parser.add_argument("--seed", type=int, default=settings.SEED)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root: owners, trusted.* xattrs and mounts", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    budget = args.minutes * 60
    started = time.monotonic()
    fuzz_cases = 5000 if args.long else settings.FUZZ_CASES
    kills = 40 if args.long else settings.KILLS_PER_OP
    env = Env.make(os.path.join(work, f"env-{os.getpid()}"))
    try:
        fuzz_stats = fuzz(env, os.path.join(work, "fuzz"), cases=fuzz_cases, seed=args.seed,
                          deadline=started + 0.4 * budget, workers=2 if args.long else 1)
        kill_stats = run_kills(env, os.path.join(work, "kills"), per_op=kills, seed=args.seed,
                               deadline=started + 0.85 * budget, scale=300 if args.long else 150,
                               workers=2 if args.long else 1)
        tampering = Tampering(env, os.path.join(work, "tamper"))
        tamper_results = [tampering.run(t) for t in TAMPERS]
        # 62 MiB: near the largest manifest a pack may have (64 MiB)
        memory = memory_probe(env, os.path.join(work, "memory"), manifest_mib=62 if args.long else 20)
        bad = run_bad_inputs(env, os.path.join(work, "bad-tar"), cases=400 if args.long else 40,
                             seed=args.seed)
    finally:
        unmount_below(work)
    tamper_refused = sum(1 for r in tamper_results if not r.failures)
    summary = {
        "seed": args.seed, "long": args.long, "seconds": round(time.monotonic() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "fuzz": fuzz_stats.as_dict(),
        "kills": {name: {k: v for k, v in asdict(s).items() if k != "problems"}
                  | {"problems": s.problems[:20]} for name, s in kill_stats.items()},
        "tamper": {"tried": len(tamper_results), "refused": tamper_refused,
                   "cases": {r.tamper.name: {"threat": r.tamper.threat,
                                             "exits": {k: v.code for k, v in r.checks.items()},
                                             "refused": not r.failures, "known_defect": r.tamper.xfail,
                                             "failures": [f[:800] for f in r.failures]}
                             for r in tamper_results}},
        "memory_probe": memory,
        "bad_inputs": asdict(bad) | {"failures": bad.failures[:30]},
    }
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as handle:
        handle.write(markdown(summary))
    print(markdown(summary))
    broken = (fuzz_stats.crashes or fuzz_stats.wrongly_accepted or fuzz_stats.escapes
              or fuzz_stats.leftover_mounts or bad.crashes
              or any(s.inconsistent or s.next_failed or s.leftover_mounts for s in kill_stats.values()))
    return 1 if broken else 0


def markdown(s: dict) -> str:  # type: ignore[type-arg]
    f = s["fuzz"]
    lines = [f"# sealtree reliability run (seed {s['seed']}, {s['seconds']} s, {s['machine']})", "",
             "## Pack fuzzer (mutated packs re-signed with the trusted key)", "",
             "| tried | refused by every command | accepted (valid) | deployed and mounted, view checked "
             "| wrongly accepted | crashes | escapes | leftover mounts | view mismatches | unclean errors "
             "| generic exit 1 | peak RSS |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {f['tried']} | {f['refused_everywhere']} | {f['accepted_valid']} "
             f"| {f['deployed_and_matched']} "
             f"| {f['wrongly_accepted']} | {f['crashes']} | {f['escapes']} | {f['leftover_mounts']} "
             f"| {f['view_mismatches']} | {f['unclean_errors']} | {f['generic_exit_1']} "
             f"| {f['max_rss_kib'] // 1024} MiB |", "",
             "Mutations: " + ", ".join(f"{k} {v}" for k, v in f["by_mutation"].items()), "",
             "## Crash injection (SIGKILL at seeded points)", "",
             "| operation | kills | mid-way | inconsistent | next op failed | leftover mounts "
             "| leftover temp files | op duration |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, k in s["kills"].items():
        lines.append(f"| {name} | {k['kills']} | {k['killed_midway']} | {k['inconsistent']} "
                     f"| {k['next_failed']} "
                     f"| {k['leftover_mounts']} | {k['leftover_files']} | {k['duration']:.2f} s |")
    t = s["tamper"]
    lines += ["", f"## Tampering: {t['tried']} cases, {t['refused']} refused", "",
              "| case | threat | exits | refused | known defect |", "|---|---|---|---|---|"]
    for name, c in t["cases"].items():
        lines.append(f"| {name} | {c['threat']} | {c['exits']} | {'yes' if c['refused'] else 'NO'} "
                     f"| {c['known_defect']} |")
    m = s["memory_probe"]
    lines += ["", "## Memory: a signed pack whose manifest decompresses to "
              f"{m['manifest_bytes'] / (1 << 20):.0f} MiB ({m['pack_bytes'] / 1024:.0f} KiB on disk, "
              f"{m['rows']} rows)", "",
              f"- pack inspect: exit {m['inspect']['exit']}, peak RSS {m['inspect']['peak_rss_mib']} MiB, "
              f"{m['inspect']['seconds']} s",
              f"- pack verify: exit {m['verify']['exit']}, peak RSS {m['verify']['peak_rss_mib']} MiB, "
              f"{m['verify']['seconds']} s",
              "- fuzzer, peak RSS per mutation kind (forked children: includes the runner's own "
              "~40 MiB): " + ", ".join(f"{k} {v // 1024}" for k, v in f["max_rss_kib_by_mutation"].items())]
    b = s["bad_inputs"]
    lines += ["", "## Bad tar inputs (commit --tar)", "",
              f"tried {b['tried']}, refused {b['refused']}, accepted {b['accepted']} "
              f"(of which corrupt compressed streams: {b['accepted_corrupt_stream']}, "
              f"junk after the stream: {b['accepted_trailing_junk']}), "
              f"crashes {b['crashes']}, unclean errors {b['unclean']}", ""]
    problems = (f["failures"][:15] + [p for k in s["kills"].values() for p in k["problems"][:5]]
                + b["failures"][:10])
    if problems:
        lines += ["## Problems (first of each)", ""] + [f"- {p[:400]!s}".replace("\n", " ") for p in problems]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

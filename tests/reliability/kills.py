"""Crash injection: every long operation SIGKILLed at many points, then checked.

For each operation a *world* is prepared once (a repository in the state the operation
starts from, copied afresh for every kill), the operation's full duration is measured,
and then, for each kill, it runs in a child process that is SIGKILLed after a seeded
random delay in [0, 1.2 x duration] (a kill that comes after the end just tests the
finished state).  Afterwards:

- ``fsck`` exits 0 (no corrupt or missing object reachable from a ref or deployment);
- every ref names the commit it named before or the one the operation was making;
- ``status --json`` parses (the deployment state is readable);
- the same operation run again succeeds (nothing left behind blocks it);
- after that run and a cleanup through the CLI (``umount`` of what ``status`` says is
  mounted), nothing is mounted below the case's directory;
- leftovers of the killed process that stay after the next operation (temporary files
  in ``packs/``, ``tmp/``, ``deploy/``) are counted and listed: the crash-safety section
  of docs/FORMAT.md says the next operation or ``prune`` removes them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .cli import Cli, Result
from .env import REF, Env, copy_tree, mounts_below, sample_tree, unmount_below


@dataclass
class Op:
    """One kind of operation: ``argv(case)`` is what is killed and then run again."""

    name: str
    world: str  # which prepared world it starts from
    argv: Callable[[KillCase], list[str]]
    again: Callable[[KillCase], list[str]] | None = None  # the "next operation"; default argv


@dataclass
class KillCase:
    dir: str
    repo: str
    env: Env
    data: dict[str, str]

    def target(self, name: str = "target") -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(path, exist_ok=True)
        return path


@dataclass
class OpStats:
    kills: int = 0
    killed_midway: int = 0
    inconsistent: int = 0
    next_failed: int = 0
    leftover_mounts: int = 0
    leftover_files: int = 0
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)


def _refs(repo: str) -> dict[str, str]:
    """The refs as the repository defines them: files below refs/heads, not the temporary
    ``.NAME.tmp*`` files of an update (docs/FORMAT.md section 1), which _leftover_files counts."""
    out = {}
    heads = os.path.join(repo, "refs", "heads")
    for directory, _dirs, files in os.walk(heads):
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, heads)] = handle.read().decode("ascii", "replace").strip()
    return out


def _leftover_files(repo: str) -> list[str]:
    """Temporary files of a killed process still present (names starting with '.')."""
    out = []
    for sub in ("packs", "deploy", "tmp", "refs/heads"):
        top = os.path.join(repo, sub)
        if not os.path.isdir(top):
            continue
        for name in os.listdir(top):
            if name.startswith(".") or name.startswith("staging-") or name.startswith("mount-"):
                out.append(os.path.join(sub, name))
    return sorted(out)


class Worlds:
    """The starting states, prepared once under ``base/worlds`` from ``env``."""

    def __init__(self, env: Env, base: str, scale: int) -> None:
        self.env = env
        self.base = base
        self.scale = scale
        self.paths: dict[str, str] = {}
        self.data: dict[str, str] = {}
        os.makedirs(base, exist_ok=True)

    def get(self, name: str) -> str:
        if name not in self.paths:
            path = os.path.join(self.base, name)
            getattr(self, "_make_" + name.replace("-", "_"))(path)
            self.paths[name] = path
        return self.paths[name]

    def big_src(self) -> str:
        src = os.path.join(self.base, "big-src")
        if not os.path.exists(src):
            os.mkdir(src)
            sample_tree(src, seed=2, scale=self.scale)
            subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", src, "-cf", src + ".tar", "."],
                           check=True)
        return src

    def _make_base(self, path: str) -> None:
        copy_tree(self.env.template, path)

    def _make_imported(self, path: str) -> None:
        """The device with the big tree's pack (version 2.0) imported, nothing deployed."""
        copy_tree(self.env.template, path)
        commit = self.env.publish(self.big_src(), "2.0", 1_700_000_100, repo=path)
        self.data["big_commit"] = commit
        self.data["big_pack"] = self.env.pack_path(commit)

    def _make_vendor_pack(self, path: str) -> None:
        """A pack of the big tree (3.0) built in a separate vendor repository."""
        copy_tree(self.env.template, path)
        commit = self.env.publish(self.big_src(), "3.0", 1_700_000_200, repo=path)
        self.data["import_pack"] = self.env.pack_path(commit)
        self.data["import_commit"] = commit
        # the device has the large objects (as a pull would have fetched them)
        device = path + "-device"
        copy_tree(self.env.template, device)
        subprocess.run(["cp", "-an", "--", os.path.join(path, "objects") + "/.",
                        os.path.join(device, "objects")], check=True)
        self.paths["import-device"] = device

    def _make_import_device(self, path: str) -> None:
        self.get("vendor-pack")
        shutil.move(self.paths.pop("import-device"), path)

    def _make_deployed(self, path: str) -> None:
        """Two deployments of the big tree (default and previous), nothing mounted."""
        self._make_imported(path)
        cli = Cli(path)
        for _ in range(2):
            result = cli("deploy", REF, "--keys", self.env.keys, "--verify", "userspace")
            assert result.code == 0, result.describe()
        status = json.loads(cli("status", "--json").stdout)
        self.data["default"] = status["default"]
        self.data["previous"] = status["previous"]

    def _make_prunable(self, path: str) -> None:
        """The big tree committed on a branch that is then deleted: objects only prune reaches."""
        copy_tree(self.env.template, path)
        cli = Cli(path)
        for i, sub in enumerate(("a", "b")):
            result = cli("commit", "-b", f"junk/{sub}", "--timestamp", str(1_700_000_000 + i), self.big_src())
            assert result.code == 0, result.describe()
        for sub in ("a", "b"):
            assert cli("refs", "--delete", f"junk/{sub}").code == 0


def _deploy_again(case: KillCase) -> list[str]:
    return ["deploy", REF, "--keys", case.env.keys, "--verify", "userspace",
            "--mount", case.target("target2")]


def _mount_again(case: KillCase) -> list[str]:
    return ["mount", case.data["default"], case.target("target2"), "--keys", case.env.keys,
            "--verify", "userspace"]


OPS = [
    Op("commit", "base", lambda c: ["commit", "-b", REF, "--version", "9", "--timestamp", "1700009999",
                                     c.data["big_src"]]),
    Op("commit --tar", "base", lambda c: ["commit", "-b", REF, "--version", "9", "--timestamp", "1700009999",
                                           "--tar", c.data["big_src"] + ".tar"]),
    Op("pack import", "import-device",
       lambda c: ["pack", "import", c.data["import_pack"], "--keys", c.env.keys]),
    Op("deploy", "imported", lambda c: ["deploy", REF, "--keys", c.env.keys, "--verify", "userspace"]),
    Op("deploy --mount", "imported", lambda c: ["deploy", REF, "--keys", c.env.keys, "--verify", "userspace",
                                                 "--mount", c.target()], _deploy_again),
    Op("mount", "deployed", lambda c: ["mount", c.data["default"], c.target(), "--keys", c.env.keys,
                                        "--verify", "userspace"],
       _mount_again),
    Op("umount", "deployed+mounted", lambda c: ["umount", c.target()], _mount_again),
    Op("prune", "prunable", lambda c: ["prune"]),
    Op("rollback", "deployed", lambda c: ["rollback"]),
    Op("undeploy", "deployed", lambda c: ["undeploy", c.data["previous"]],
       lambda c: ["deploy", REF, "--keys", c.env.keys, "--verify", "userspace", "--no-default"]),
]


class Killer:
    def __init__(self, env: Env, base: str, *, scale: int = 300) -> None:
        self.env = env
        self.base = base
        self.worlds = Worlds(env, os.path.join(base, "worlds"), scale)
        self.durations: dict[str, float] = {}

    def case(self, op: Op, index: int) -> KillCase:
        world = op.world.split("+")[0]
        src = self.worlds.get(world)
        cdir = os.path.join(self.base, f"{op.name.replace(' ', '_')}-{index}")
        if os.path.exists(cdir):
            unmount_below(cdir)
            shutil.rmtree(cdir)
        os.makedirs(cdir)
        repo = os.path.join(cdir, "repo")
        copy_tree(src, repo)
        data = dict(self.worlds.data, big_src=self.worlds.big_src())
        case = KillCase(cdir, repo, self.env, data)
        if op.world.endswith("+mounted"):
            result = Cli(repo)("mount", data["default"], case.target(), "--keys", self.env.keys,
                               "--verify", "userspace")
            assert result.code == 0, result.describe()
        return case

    def duration(self, op: Op) -> float:
        if op.name not in self.durations:  # the faster of two runs (the first warms caches)
            times = []
            for attempt in (-1, -2):
                case = self.case(op, attempt)
                result = Cli(case.repo)(*op.argv(case))
                assert result.code == 0, result.describe()
                times.append(result.seconds)
                self.cleanup(case)
                shutil.rmtree(case.dir, ignore_errors=True)
            self.durations[op.name] = min(times)
        return self.durations[op.name]

    def cleanup(self, case: KillCase) -> list[bytes]:
        """Unmount through the CLI whatever is mounted below the case; return what the CLI
        could not unmount (then detached by hand)."""
        cli = Cli(case.repo)
        for point in sorted(mounts_below(case.dir), key=len, reverse=True):
            cli("umount", os.fsdecode(point))
        return unmount_below(case.dir)

    def kill_one(self, op: Op, index: int, rng: random.Random, stats: OpStats) -> None:
        length = self.duration(op)
        case = self.case(op, index)
        refs_before = _refs(case.repo)
        delay = rng.uniform(0, 1.2 * length)
        running = Cli(case.repo).start(*op.argv(case))
        end = time.monotonic() + delay
        while time.monotonic() < end and running.alive():
            time.sleep(0.001)
        midway = running.alive()
        if midway:
            running.kill()
        killed = running.wait()
        stats.kills += 1
        stats.killed_midway += midway
        problems = self.check(op, case, refs_before, killed)
        stats.inconsistent += bool([p for p in problems if not p.startswith(("next", "leftover"))])
        stats.next_failed += bool([p for p in problems if p.startswith("next")])
        stats.leftover_mounts += bool([p for p in problems if p.startswith("leftover mounts")])
        stats.leftover_files += bool([p for p in problems if p.startswith("leftover files")])
        for problem in problems:
            stats.problems.append(f"{op.name} #{index} killed after {delay:.3f}s "
                                  f"({'mid-way' if midway else 'after the end'}): {problem}")
        if not problems:
            shutil.rmtree(case.dir, ignore_errors=True)

    def check(self, op: Op, case: KillCase, refs_before: dict[str, str], killed: Result) -> list[str]:
        problems = []
        cli = Cli(case.repo)
        if killed.traceback:
            problems.append(f"traceback before the kill: {killed.describe()}")
        fsck = cli("fsck")
        if fsck.code != 0:
            problems.append(f"fsck after the kill: {fsck.describe()}")
        refs_after = _refs(case.repo)
        for name, value in refs_after.items():
            old = refs_before.get(name)
            if value != old and cli("rev-parse", value).code != 0:
                problems.append(f"ref {name} names {value}, neither the old one nor a commit")
        status = cli("status", "--json")
        try:
            state = json.loads(status.stdout)
            if status.code != 0:
                raise ValueError(status.stderr)
        except ValueError:
            problems.append(f"state unreadable: {status.describe()}")
            state = {}
        if state.get("default"):  # what the state records is complete: it verifies and mounts
            mounted = cli("mount", "default", case.target("recorded"), "--keys", case.env.keys,
                          "--verify", "userspace")
            if mounted.code != 0:
                problems.append(f"the recorded default deployment does not mount: {mounted.describe()}")
            else:
                cli("umount", case.target("recorded"))
        again = cli(*(op.again or op.argv)(case))
        if again.code != 0:
            problems.append(f"next {op.name} failed: {again.describe()}")
        fsck = cli("fsck")
        if fsck.code != 0:
            problems.append(f"fsck after the next operation: {fsck.describe()}")
        left = self.cleanup(case)
        if left:
            problems.append(f"leftover mounts after the next operation and umount: {left}")
        files = _leftover_files(case.repo)
        if files:
            prune = cli("prune")
            files = _leftover_files(case.repo)
            if prune.code != 0 or files:
                inside = {f: "lock" in os.listdir(os.path.join(case.repo, f)) for f in files
                          if os.path.isdir(os.path.join(case.repo, f))}
                problems.append(f"leftover files after the next operation and prune: {files} "
                                f"(prune exit {prune.code}; holding {inside})")
        return problems


def run_kills(env: Env, base: str, *, per_op: int, seed: int, ops: list[str] | None = None,
              deadline: float | None = None, scale: int = 300, workers: int = 1) -> dict[str, OpStats]:
    """Kill each operation ``per_op`` times (with ``workers`` > 1: the operations shared out
    among that many forked processes, each with its own worlds)."""
    names = [op.name for op in OPS if ops is None or op.name in ops]
    if workers <= 1:
        return _run_kills(env, base, per_op=per_op, seed=seed, ops=names, deadline=deadline, scale=scale)
    import pickle  # noqa: PLC0415

    children = []
    for worker in range(workers):
        result = os.path.join(base, f"worker-{worker}.pickle")
        os.makedirs(base, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                part = _run_kills(env, os.path.join(base, f"w{worker}"), per_op=per_op, seed=seed,
                                  ops=names[worker::workers], deadline=deadline, scale=scale)
                with open(result, "wb") as handle:
                    pickle.dump(part, handle)
                code = 0
            finally:
                os._exit(code)
        children.append((pid, result))
    merged: dict[str, OpStats] = {}
    for pid, result in children:
        os.waitpid(pid, 0)
        with open(result, "rb") as handle:
            merged.update(pickle.load(handle))
    return {name: merged[name] for name in names if name in merged}


def _run_kills(env: Env, base: str, *, per_op: int, seed: int, ops: list[str],
               deadline: float | None, scale: int) -> dict[str, OpStats]:
    """With a ``deadline``, every operation gets an equal share of the time left when its
    turn comes."""
    killer = Killer(env, base, scale=scale)
    out: dict[str, OpStats] = {}
    chosen = [op for op in OPS if op.name in ops]
    for position, op in enumerate(chosen):
        stats = out.setdefault(op.name, OpStats())
        rng = random.Random(f"{seed}:{op.name}")
        own = None if deadline is None else \
            time.monotonic() + (deadline - time.monotonic()) / (len(chosen) - position)
        for index in range(per_op):
            if own is not None and time.monotonic() > own:
                break
            killer.kill_one(op, index, rng, stats)
        stats.duration = killer.durations.get(op.name, 0.0)
    return out

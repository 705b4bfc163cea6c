"""Running the CLI many thousands of times: a forked child per command, or a real exec.

``python3 -m sealtree`` costs about 0.3 s of interpreter start and imports; the suites
run thousands of commands.  The default runner therefore imports ``sealtree.cli`` once
and forks a child per command that does exactly what ``sealtree/__main__.py`` does
(``raise SystemExit(main())``) with stdout and stderr sent to files: the same code, the
same exit status, a traceback on stderr exactly when ``python -m sealtree`` would print
one, and a separate process that can be SIGKILLed part way.  ``SEALTREE_EXEC=1`` runs
every command as a real ``python3 -m sealtree`` instead (slower, same results).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from tests.helpers import ROOT

# The exit statuses `sealtree --help` documents.
DOCUMENTED_EXITS = frozenset({0, 1, 2, *range(3, 18), 130})
EXEC = os.environ.get("SEALTREE_EXEC") == "1"


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    code: int  # exit status; -N when killed by signal N
    stdout: str
    stderr: str
    maxrss_kib: int
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr

    def clean_error(self) -> bool:
        """A refusal as the CLI promises it: documented non-zero status, no traceback, and
        exactly one line on stderr, ``sealtree: error: ...``, maybe followed by one
        ``sealtree: hint: ...``.  (Lines before it that are progress output are allowed.)"""
        lines = self.stderr.splitlines()
        if lines and lines[-1].startswith("sealtree: hint:"):
            lines.pop()
        return (self.code in DOCUMENTED_EXITS and self.code != 0 and not self.traceback
                and len([ln for ln in lines if ln.startswith("sealtree: error:")]) == 1
                and bool(lines) and lines[-1].startswith("sealtree: error:"))

    def describe(self) -> str:
        return f"{' '.join(self.argv)} -> {self.code}\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}"


def _child(argv: list[str], out_fd: int, err_fd: int) -> None:
    """In the forked child: be ``python -m sealtree ARGV``.  Never returns."""
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = ["sealtree", *argv]
        from sealtree.cli import main  # noqa: PLC0415
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - this is what the interpreter would print
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


_WARM: list[bool] = []


def _warm() -> None:
    """Import, once and before any fork, every module the commands import lazily: the
    children then start in milliseconds instead of 0.2-0.3 s."""
    if _WARM:
        return
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415

    for package in ("store", "pack", "overlay", "remote", "sealtree"):
        try:
            top = importlib.import_module(package)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(top.__path__, package + "."):
            if info.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 - a module that cannot load just is not warmed
                pass
    from sealtree.cli import build_parser  # noqa: PLC0415
    for word in ("commit", "pack", "deploy", "mount", "fsck", None):
        try:
            build_parser(word)
        except Exception:  # noqa: BLE001
            pass
    _WARM.append(True)


class Cli:
    """Runs sealtree commands; ``repo`` is passed as ``--repo``."""

    def __init__(self, repo: str | None = None, *, exec_: bool = EXEC) -> None:
        self.repo = repo
        self.exec = exec_
        if not exec_:
            _warm()

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return (["--repo", self.repo] if self.repo else []) + list(args)

    def start(self, *args: str) -> Running:
        argv = self.argv(args)
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        started = time.monotonic()
        if self.exec:
            proc = subprocess.Popen([sys.executable, "-m", "sealtree", *argv], cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=dict(os.environ, PYTHONPATH=ROOT))
            return Running(tuple(argv), proc.pid, out, err, started, proc)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(argv, out.fileno(), err.fileno())
        return Running(tuple(argv), pid, out, err, started, None)

    def __call__(self, *args: str, timeout: float = 300) -> Result:
        return self.start(*args).wait(timeout)


@dataclass
class Running:
    argv: tuple[str, ...]
    pid: int
    out: tempfile._TemporaryFileWrapper[bytes]
    err: tempfile._TemporaryFileWrapper[bytes]
    started: float
    proc: subprocess.Popen[bytes] | None

    def alive(self) -> bool:
        if getattr(self, "_status", None) is not None:
            return False
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid:
            self._status, self._rss = status, usage.ru_maxrss
            return False
        return True

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 300) -> Result:
        deadline = time.monotonic() + timeout
        status = getattr(self, "_status", None)
        rss = getattr(self, "_rss", 0)
        if True:  # forked or exec'd alike: wait4 gives this child's own peak RSS
            while status is None:
                pid, status_, usage = os.wait4(self.pid, os.WNOHANG)
                if pid:
                    status, rss = status_, usage.ru_maxrss
                    break
                if time.monotonic() > deadline:
                    self.kill()
                time.sleep(0.002)
            code = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - self.started
        texts = []
        for handle in (self.out, self.err):
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", "replace"))
            handle.close()
        return Result(self.argv, code, texts[0], texts[1], rss, seconds)

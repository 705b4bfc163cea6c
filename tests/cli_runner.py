"""Run the ``sealtree`` command for a test: in the test's own process by default, or in a new one.

Starting a Python process per command dominated the suite's time (each one imports
the interpreter's start-up, ``sealtree`` and its dependencies again), so ``run_cli``
calls ``sealtree.cli.main(argv)`` here, with what a new process would have: its own
standard input, output and error (file descriptors 0, 1 and 2 redirected to
temporary files, so that forked workers and child processes are captured too),
the environment given, the checkout as working directory.  What a real run would
show as a traceback (``main`` raising) fails the test.

A new process is used when the test asks for one (``in_process=False``), when
``env`` sets a variable that Python reads at start-up (``PYTHON*``, ``LC_*``,
``LANG``: the encoding of the standard streams), and for every call when
``SEALTREE_TEST_SUBPROCESS=1`` is set, to check that the suite's results do not
depend on running in-process.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_ENV = "SEALTREE_TEST_SUBPROCESS"
_READ_AT_STARTUP = ("PYTHON", "LC_", "LANG")


def run_cli(*args: str, repo: str | None = None, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None, in_process: bool | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run ``sealtree [--repo REPO] ARGS`` and return its exit status and text output.

    ``check`` fails the test on a non-zero exit status; a traceback always fails it.
    ``in_process`` None chooses as the module's docstring says.
    """
    done = run_cli_bytes(*args, repo=repo, input=input, env=env, in_process=in_process)
    proc = subprocess.CompletedProcess(done.args, done.returncode, _text(done.stdout), _text(done.stderr))
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(proc.args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli_bytes(*args: str, repo: str | None = None, input: bytes | None = None,
                  env: dict[str, str] | None = None, in_process: bool | None = None
                  ) -> subprocess.CompletedProcess[bytes]:
    """``run_cli`` with the output as bytes (an archive on stdout), the exit status unchecked.
    Standard input is ``input``, or empty."""
    argv = (["--repo", repo] if repo else []) + list(args)
    env = env or {}
    if in_process is None:
        in_process = (os.environ.get(SUBPROCESS_ENV, "") in ("", "0")
                      and not any(name.startswith(_READ_AT_STARTUP) for name in env))
    proc = _run_here(argv, input, env) if in_process else _run_new_process(argv, input, env)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


def _text(output: bytes) -> str:
    """Output as ``subprocess.run(..., text=True)`` gives it: UTF-8, universal newlines."""
    return output.decode().replace("\r\n", "\n").replace("\r", "\n")


def _run_new_process(argv: list[str], input: bytes | None, env: dict[str, str]
                     ) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "sealtree", *argv]
    return subprocess.run(cmd, capture_output=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, **env),
                          input=input or b"")


def _run_here(argv: list[str], input: bytes | None, env: dict[str, str]
              ) -> subprocess.CompletedProcess[bytes]:
    from sealtree.cli import main  # noqa: PLC0415 - the checkout's code, imported on first use

    cmd = [sys.executable, "-m", "sealtree", *argv]  # what a new process would have run
    output = _Output()
    try:
        with _environment(env), _working_directory(ROOT), _standard_streams(input or b"", output):
            try:
                status = main(argv)
            except SystemExit as exit_:  # argparse: usage errors (2) and --help (0)
                status = _exit_status(exit_.code)
    except Exception as err:  # noqa: BLE001 - a real run would print a traceback: a failure
        raise AssertionError(f"{shlex.join(argv)} raised {type(err).__name__} (a traceback in a real "
                             f"run):\n{output.stderr.decode(errors='replace')}") from err
    return subprocess.CompletedProcess(cmd, status, output.stdout, output.stderr)


def _exit_status(code: object) -> int:
    """The exit status of ``raise SystemExit(code)``, as the interpreter computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@dataclass
class _Output:
    stdout: bytes = b""
    stderr: bytes = b""


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


@contextlib.contextmanager
def _standard_streams(input: bytes, output: _Output) -> Iterator[None]:
    """File descriptors 0, 1, 2 and ``sys.stdin/stdout/stderr`` as a new process would have
    them, over temporary files; on the way out, the outputs are put into ``output`` and
    everything is restored."""
    saved_objects = (sys.stdin, sys.stdout, sys.stderr)
    for stream in saved_objects[1:]:
        stream.flush()
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(3)]
        files[0].write(input)
        files[0].seek(0)
        saved_fds = [os.dup(fd) for fd in (0, 1, 2)]
        for fd, file in enumerate(files):
            os.dup2(file.fileno(), fd)
        # The encoding and errors of the standard streams in a C.UTF-8 locale, as the
        # suite runs (stderr is line-buffered).
        sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8", errors="surrogateescape")
        sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8",
                                      errors="surrogateescape")
        sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            sys.stdin, sys.stdout, sys.stderr = saved_objects
            for fd, saved in enumerate(saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            output.stdout, output.stderr = (_contents(file) for file in files[1:])


def _contents(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()

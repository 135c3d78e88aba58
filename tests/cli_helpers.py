"""The three command-line programs run inside the test process, as `python -m <program>` would run them.

A CLI process spends most of a second importing before it does anything; a test about what a command
prints and how it exits does not need a process of its own. `run_cli` calls the program's `main(argv)` with
the working folder, environment, standard streams, umask, logging and warning filters a fresh process would
have, and gives back what `subprocess.run` would: the exit code, stdout and stderr (with the traceback an
uncaught exception would print). What only a real process shows (the console script, the interpreter's exit,
a closed pipe) keeps its tests through `subprocess`.

Not for async tests' event loop thread: `main` runs its own loop (call it through `asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

PROGRAMS = {"processor": "processor.cli", "hsm-sim": "hsm_sim.cli", "terminal-sim": "terminal_sim.cli"}


class _Stdout(io.StringIO):
    """A captured standard output that says it is not a terminal, as a pipe would."""

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _as_a_fresh_process(cwd: Path, env: dict[str, str], stdin: str) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_umask = os.umask(0o022)
    out, err = _Stdout(), _Stdout()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = _Stdout(stdin), out, err
        # No handler on the root logger, as in a new interpreter: the program's logging.basicConfig takes
        # effect and what it logs reaches the captured standard error.
        root.handlers = []
        root.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # The interpreter's default filters, not pytest's: a warning the program lets through is a
            # line on standard error.
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            yield out, err
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers, root.level = saved_handlers, saved_level
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.umask(saved_umask)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def run_cli(program: str, cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """`program *args` in `cwd` with `env` (the whole environment; os.environ when None), run in this process."""
    main = importlib.import_module(PROGRAMS[program]).main
    with _as_a_fresh_process(cwd, dict(os.environ) if env is None else env, stdin) as (out, err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse, and sys.exit within a command
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:  # noqa: BLE001 - what the interpreter would print before exiting 1
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    return subprocess.CompletedProcess([program, *args], code, out.getvalue(), err.getvalue())

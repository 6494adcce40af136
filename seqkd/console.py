"""The console speaks for seqkd: what Ray prints in a driver goes to a log file instead.

A driver hears from Ray in several ways: Python loggers ("ray", "ray.data", "ray.serve", set up
when those are imported, writing to the `sys.stderr` of that moment), C++ core-worker
messages written straight to file descriptor 2, the output of every worker and actor streamed
to the driver (`log_to_driver`, printed to `sys.stdout`/`sys.stderr` when it arrives), and
Python warnings. A command that starts Ray is run under `RayLog`, which from `begin()` (called
just before `ray.init`) on:

- points fds 1 and 2 at the log file, so C++ output, child processes and any stream bound to
  the original fds land there;
- gives `sys.stdout`/`sys.stderr` new streams on the saved terminal fds, so seqkd's prints,
  rich consoles and progress bars (which look `sys.stdout` up when they write), its own loggers
  and tracebacks still reach the terminal;
- points the stream handlers of every logger outside seqkd's packages at the file, routes the
  worker lines streamed to the driver there (no colours, no de-duplication), and sends Python
  warnings raised outside seqkd's packages there.

A command that ends with an exception leaves its traceback in the file and one line on the
terminal. Everything is restored on exit (Ray, if the command started it, is shut down first,
so its parting words go to the file too). With `--verbose` nothing is redirected.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
OURS = ("common", "services", "trainer", "scoring", "seqkd", "bench")   # what the console speaks for
ANSI = re.compile(r"\x1b\[[0-9;]*m")

_armed: "RayLog | None" = None


def add_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """`--verbose` and `--log-file` for a command that starts Ray."""
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output (its logs, worker and actor output) live here instead "
                        "of writing it to the log file")
    p.add_argument("--log-file", type=Path, help=f"where Ray's output goes (default: {default})")


def run(name: str, command: Callable[[], int], log_file: Callable[[], Path], verbose: bool) -> int:
    """Run `command`; once it starts Ray, Ray's output goes to `log_file()` (unless `verbose`).

    An exception raised after that ends the command with one line naming the log, exit status 1.
    """
    log = RayLog(name, log_file, verbose)
    try:
        with log:
            return command()
    except KeyboardInterrupt:
        if not log.started:
            raise
        print(f"{name}: interrupted (Ray's output in {log.path})", file=sys.stderr)
        return 130
    except Exception as exc:
        if not log.started:
            raise
        print(f"{name}: {one_line(exc)} (details in {log.path})", file=sys.stderr)
        return 1


def begin() -> None:
    """Called just before a command starts (or joins) Ray: from here on, Ray's output goes to the
    log file of the command being run, if any."""
    if _armed is not None:
        _armed.start()


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception in one line: its type and the last line of its message (Ray's errors carry
    the remote traceback in their message, and the cause is its last line), cut at `limit`."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    line = last if re.match(r"^[\w.]+(Error|Exception): ", last) else f"{type(exc).__name__}: {last}"
    return line if len(line) <= limit else line[:limit - 3] + "..."


def default_serve_log() -> Path:
    """A new file in the temp directory: `seqkd serve` may run where nothing is writable but there
    (the bundle's directory may be read-only)."""
    fd, path = tempfile.mkstemp(prefix="seqkd-serve-", suffix=".log")
    os.close(fd)
    return Path(path)


def ours(name: str) -> bool:
    return name.split(".")[0] in OURS


def _our_file(filename: str) -> bool:
    return any(filename.startswith(str(ROOT / pkg) + os.sep) for pkg in OURS)


class RayLog:
    """Armed for one command; `start()` redirects, `__exit__` restores (see the module doc)."""

    def __init__(self, name: str, log_file: Callable[[], Path], verbose: bool) -> None:
        self.name, self.log_file, self.verbose = name, log_file, verbose
        self.started = False
        self.path: Path | None = None

    def __enter__(self) -> "RayLog":
        global _armed
        if _armed is None and not self.verbose:   # a command run inside another keeps its log
            _armed = self
        return self

    def __exit__(self, kind, exc, tb) -> None:
        global _armed
        if _armed is self:
            _armed = None
        if not self.started:
            return
        try:
            if exc is not None:
                self.file.write("".join(traceback.format_exception(kind, exc, tb)))
            if self.ray_was_up is False:
                import ray

                ray.shutdown()   # inside the redirection, so Ray's parting words go to the file
        finally:
            self._restore()

    # ----------------------------------------------------------------------------- redirect
    def start(self) -> None:
        if self.started:
            return
        import ray
        import ray.data    # noqa: F401  (these configure their loggers when imported: import
        import ray.serve   # noqa: F401   them now, so that their handlers are claimed below)
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        self.path = Path(self.log_file()).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self.file.write(f"==== {self.name} {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n")
        self.ray_was_up = ray.is_initialized()
        self.started = True

        self.handlers = self._claim_loggers()
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        self.saved = {fd: os.dup(fd) for fd in (1, 2)}
        self.std = (sys.stdout, sys.stderr)
        sys.stdout = self._terminal(sys.stdout, 1)
        sys.stderr = self._terminal(sys.stderr, 2)
        for fd in (1, 2):
            os.dup2(self.file.fileno(), fd)

        # worker output: Ray's printer writes to sys.stdout/sys.stderr, which are the terminal's now
        self.printer = worker.print_to_stdstream          # bound by a later ray.init
        worker.print_to_stdstream = self._worker_lines
        self.dispatched = [h for h in dispatcher.handlers if h[0] == "ray_print_logs"]
        if self.dispatched:                               # Ray was up before: swap its printer
            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("ray_print_logs", functools.partial(self._worker_lines,
                                                                       ignore_prefix=False))
        self.showwarning = warnings.showwarning
        warnings.showwarning = self._warning
        print(f"{self.name}: Ray's output goes to {self.path} (--verbose shows it here)",
              file=sys.stderr, flush=True)

    def _terminal(self, stream: TextIO, fd: int) -> TextIO:
        """Where seqkd's own output goes: a stream on the saved terminal fd, or the current stream
        where it is not fd 1/2 itself (pytest's capture, an in-memory stream)."""
        try:
            if stream.fileno() != fd:
                return stream
        except (AttributeError, ValueError, io.UnsupportedOperation):
            return stream
        return open(self.saved[fd], "w", buffering=1, encoding=stream.encoding, errors=stream.errors,
                    closefd=False)

    def _claim_loggers(self) -> list[tuple[logging.Logger, logging.Handler, logging.Handler]]:
        """Point every stream handler of a logger outside seqkd's packages at the file.

        Whatever the stream: Ray's handlers keep the `sys.stderr` of the moment they were made,
        which need not be today's (under a test runner's capture, say). In-memory streams are
        left alone: they are someone's capture, not a console."""
        swapped = []
        for name in list(logging.root.manager.loggerDict):
            logger = logging.root.manager.loggerDict[name]
            if not isinstance(logger, logging.Logger) or ours(name):
                continue
            for i, handler in enumerate(list(logger.handlers)):
                if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                        and handler.stream is not None and not isinstance(handler.stream, io.StringIO)):
                    new = logging.StreamHandler(self.file)
                    new.setLevel(handler.level)
                    new.setFormatter(handler.formatter)
                    for f in handler.filters:
                        new.addFilter(f)
                    logger.handlers[i] = new
                    swapped.append((logger, handler, new))
        return swapped

    def _worker_lines(self, data: dict[str, Any], ignore_prefix: bool) -> None:
        """Worker lines go to the file. Progress-bar updates from workers (Ray Data inside a Train
        worker, say) are dropped: Ray renders them as live bars on the driver's terminal, and a
        bar's state in a log file is noise."""
        from ray._private.worker import print_worker_logs
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

        lines = [line for line in data.get("lines", []) if RAY_TQDM_MAGIC not in line]
        if not lines:
            return
        text = io.StringIO()
        print_worker_logs({**data, "lines": lines}, text, ignore_prefix)
        self.file.write(ANSI.sub("", text.getvalue()))

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if _our_file(filename):
            self.showwarning(message, category, filename, lineno, file, line)
        else:
            self.file.write(warnings.formatwarning(message, category, filename, lineno, line))

    def _restore(self) -> None:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        warnings.showwarning = self.showwarning
        worker.print_to_stdstream = self.printer
        if self.dispatched and any(h[0] == "ray_print_logs" for h in dispatcher.handlers):
            dispatcher.remove_handler("ray_print_logs")
            for name, handler in self.dispatched:
                dispatcher.add_handler(name, handler)
        for logger, old, new in self.handlers:
            logger.handlers = [old if h is new else h for h in logger.handlers]
        terminals = [s for s in (sys.stdout, sys.stderr) if s not in self.std]
        for stream in terminals:   # closed, not left open on a fd number that is about to be freed
            stream.close()
        sys.stdout, sys.stderr = self.std
        for stream in self.std:
            stream.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.file.close()


def wide_console(stderr: bool = False) -> Console:
    """The terminal's console, or a 140-column one for logs and pipes (rich squeezes tables to 80)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=140)

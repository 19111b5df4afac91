"""Command-line conventions both programs share (``site-agent`` and ``coordinator``).

* every parser shows its defaults (``ArgumentDefaultsHelpFormatter``) and one example;
* ``-v/--verbose`` and ``-q/--quiet`` are accepted before *and after* the subcommand;
* ``progress(label)``: a rich spinner with the elapsed time on an interactive terminal for a
  step that may take more than a second (with ``-v``, a plain line when it ends, anywhere);
* ``run_main``: output piped into ``head`` ends quietly (no BrokenPipeError traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping

_state = {"verbose": False, "quiet": False}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (not the empty ones: None, False); epilog (the example) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS or action.required:
            return action.help
        return super()._get_help_string(action) if action.help else "(default: %(default)s)"


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                yield name, sub


def conventions(parser: argparse.ArgumentParser, examples: Mapping[str, str], *, prog: str) -> None:
    """Apply the shared conventions to ``parser`` and every subparser below it.

    ``examples`` maps a command path ("cdm synth") to an example command line; a leaf command
    without one gets a generic pointer (tests check that every leaf has a real example).
    """
    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        p.formatter_class = HelpFormatter
        for action in p._actions:  # an option without help text still shows its default
            if action.help is None and action.default not in (None, False, argparse.SUPPRESS):
                action.help = "(default: %(default)s)"
        if path:
            opts = p._option_string_actions
            if "-v" not in opts and "--verbose" not in opts:
                p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="more detail on stderr (progress lines, debug logs)")
            if "-q" not in opts and "--quiet" not in opts:
                p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                               help="no progress output")
        key = " ".join(path)
        subs = list(_subparsers(p))
        if not subs and p.epilog is None:
            example = examples.get(key)
            p.epilog = f"example:\n  {prog} {example}" if example else None
        for name, sub in subs:
            walk(sub, (*path, name))

    opts = parser._option_string_actions
    if "-v" not in opts:
        parser.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")
    if "-q" not in opts:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    walk(parser, ())


def leaf_commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of every command that runs something."""
    out = []

    def walk(p, path):
        subs = list(_subparsers(p))
        if not subs and path:
            out.append((" ".join(path), p))
        for name, sub in subs:
            walk(sub, (*path, name))
    walk(parser, ())
    return out


def configure(args: argparse.Namespace) -> None:
    _state["verbose"] = bool(getattr(args, "verbose", False))
    _state["quiet"] = bool(getattr(args, "quiet", False))


def verbose() -> bool:
    return _state["verbose"]


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[str], None]]:
    """A step that may take a while: a spinner with elapsed time on a terminal (stderr), a
    "label: done in N s" line with ``-v``; nothing with ``-q``. Yields ``update(text)``."""
    t0 = time.perf_counter()
    live = not _state["quiet"] and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    if live:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        with bar:
            task = bar.add_task(label)
            yield lambda text: bar.update(task, description=f"{label}: {text}")
    else:
        yield lambda text: logging.getLogger("optima.progress").debug("%s: %s", label, text)
    took = time.perf_counter() - t0
    if not _state["quiet"] and (live or _state["verbose"]) and took >= 1.0:
        print(f"{label}: done in {took:.1f}s", file=sys.stderr, flush=True)


def run_main(main: Callable[[], int]) -> int:
    """``main()``, with a closed stdout pipe (``--json | head``) ending quietly with status 0."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout again at exit
        return 0


__all__ = ["HelpFormatter", "configure", "conventions", "leaf_commands", "progress", "run_main", "verbose"]

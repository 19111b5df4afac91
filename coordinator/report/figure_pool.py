"""Report figures drawn by worker processes while the rest of the page is built.

A report with survival results draws a Kaplan-Meier figure per cohort and outcome (matplotlib,
~0.5 CPU s each; forest plots and yearly rates are SVG text and cost nothing). Inside
:func:`deferred` (which sets ``plots.DEFER``), the figure functions of
:mod:`coordinator.report.plots` hand their drawing to a pool of spawned processes and return a
placeholder; :meth:`Deferred.fill` puts each figure's
base64 PNG in its place once the page's HTML is built. A worker calls the same function with
the same arguments, in a fresh process with matplotlib's defaults (Agg), so each PNG is the
one the report process would have drawn (``tests/test_report_figures.py`` compares them).

The placeholder holds a random nonce, so no text from a site's results can be taken for one.
Outside :func:`deferred` (and with one worker) figures are drawn where they are asked for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from coordinator.report import plots


def _draw(name: str, args: tuple) -> str:
    """In a worker: the figure function ``name`` of :mod:`coordinator.report.plots`, drawn here."""
    return getattr(plots, name)(*args)


class Deferred:
    """The figures asked for inside one :func:`deferred` block, drawn by a lazily started pool."""

    def __init__(self, workers: int):
        self.workers = workers
        self.nonce = secrets.token_hex(8)
        self.pool: ProcessPoolExecutor | None = None
        self.futures: dict[str, tuple[Future, tuple[str, tuple]]] = {}

    def submit(self, name: str, args: tuple) -> str:
        """Start drawing ``plots.<name>(*args)`` in a worker; its placeholder."""
        if self.pool is None:  # spawn: a worker shares nothing with a report process (threads, open store)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        token = f"optima-figure-{self.nonce}-{len(self.futures)}"
        self.futures[token] = (self.pool.submit(_draw, name, args), (name, args))
        return token

    def fill(self, page: str) -> str:
        """``page`` with every placeholder replaced by its figure (waits for the drawing)."""
        if not self.futures:
            return page
        return re.sub(f"optima-figure-{self.nonce}-[0-9]+", lambda m: self._result(m.group(0)), page)

    def _result(self, token: str) -> str:
        future, call = self.futures[token]
        try:
            return future.result()
        except BrokenProcessPool:  # a worker died (killed, out of memory): draw it here instead
            here = plots.DEFER.set(None)
            try:
                return _draw(*call)
            finally:
                plots.DEFER.reset(here)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def figure_workers() -> int:
    """Processes drawing figures: one per CPU this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


@contextlib.contextmanager
def deferred(workers: int | None = None) -> Iterator[Deferred | None]:
    """Figures asked for inside the block are drawn by ``workers`` processes (default
    :func:`figure_workers`); ``fill`` the finished page before leaving it. With one worker,
    nothing is deferred (yields None)."""
    workers = figure_workers() if workers is None else workers
    if workers < 2:
        yield None
        return
    d = Deferred(workers)
    reset = plots.DEFER.set(d.submit)
    try:
        yield d
    finally:
        plots.DEFER.reset(reset)
        d.close()


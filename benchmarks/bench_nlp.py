"""Radiology-report NLP throughput: reports per second on N worker processes, and peak memory.

    nice -n 10 python benchmarks/bench_nlp.py --notes 100000 --workers 2

Reports come from the CDM generator's own report writer (site_agent/cdm/synth/notes.py: CT, MRI,
bone scan... with headers, negations, hedges, history, typos), made in memory for random patients,
then split into batches that ``--workers`` processes run through the extractor
(site_agent.nlp.extract_many). Prints the pipeline load time, reports/s, the extrapolation to
100,000 reports, and the peak RSS of the parent and of the largest worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def make_reports(n: int, seed: int = 7) -> list[tuple[str, str]]:
    from site_agent.cdm.synth.notes import _patient_reports
    from site_agent.nlp import strip_system_lines

    out: list[tuple[str, str]] = []
    pid = 0
    while len(out) < n:
        pid += 1
        r = np.random.default_rng([seed, pid])
        dx = dt.date(2015, 1, 1) + dt.timedelta(days=int(r.integers(0, 2000)))
        mets = {s: dx + dt.timedelta(days=int(r.integers(-30, 900))) for s in ("liver", "bone", "brain", "lung")
                if r.random() < 0.1}
        for _d, _t, text, *_ in _patient_reports(r, dx, dx + dt.timedelta(days=1500), mets):
            out.append((str(len(out)), strip_system_lines(text)))
    return out[:n]


def _work(batch: list[tuple[str, str]]) -> tuple[int, int, float, float]:
    from site_agent.nlp import extract_many

    cpu = time.process_time()
    pos = sum(r.metastatic for r in extract_many(batch))
    return len(batch), pos, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.process_time() - cpu


def _warm(_: int) -> float:
    from site_agent.nlp.pipeline import build_pipeline

    t = time.perf_counter()
    build_pipeline()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notes", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
    t = time.perf_counter()
    reports = make_reports(a.notes)
    chars = sum(len(x) for _, x in reports)
    print(f"made {len(reports):,} reports ({chars / len(reports):.0f} characters each) in {time.perf_counter() - t:.1f}s")
    batches = [reports[i:i + a.batch] for i in range(0, len(reports), a.batch)]
    with ProcessPoolExecutor(a.workers) as pool:
        loads = list(pool.map(_warm, range(a.workers)))  # one call per worker is not guaranteed; a cold
        # worker then loads during the first batch, which the wall clock (not the CPU rate) includes
        print(f"pipeline load per worker (spaCy + medspaCy import, rules): {max(loads):.1f}s")
        t = time.perf_counter()
        done = list(pool.map(_work, batches))
        wall = time.perf_counter() - t
    n, pos = sum(d[0] for d in done), sum(d[1] for d in done)
    cpu = sum(d[3] for d in done)
    rate = n / wall
    print(f"CPU time in the workers: {cpu:.1f}s = {n / cpu:,.0f} reports per CPU-second; on {a.workers} uncontended "
          f"cores: ~{a.workers * n / cpu:,.0f} reports/s, 100,000 reports in ~{100_000 / (a.workers * n / cpu) / 60:.1f} min "
          f"(a shared machine's wall-clock rate below is lower)")
    print(f"{n:,} reports on {a.workers} workers in {wall:.1f}s: {rate:,.0f} reports/s ({pos:,} metastatic)")
    print(f"100,000 reports at this rate: {100_000 / rate / 60:.1f} min; {chars / wall:,.0f} characters/s "
          f"(real reports are often 1-2k characters: scale by length)")
    print(f"peak RSS: parent {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
          f"largest worker {max(d[2] for d in done):.0f} MB")


if __name__ == "__main__":
    main()

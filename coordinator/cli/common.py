"""What several coordinator commands share: the study job they start and how they print its outcome."""

from __future__ import annotations

from pathlib import Path

from coordinator.flower.jobs import StudyJob
from optima_common import errors
from optima_common.errors import CoordinatorError, ExitCode, OptimaError


def study_job(args, manifest_path: Path, out: Path, reply_timeout: float, **extra) -> dict:
    """The job document for ``flwr run`` from a command's ``--store/--trust/--node-wait`` options."""
    return StudyJob(manifest=manifest_path, store=args.store, trust=Path(args.trust), out=out,
                    reply_timeout=reply_timeout, node_wait=args.node_wait, **extra).document()


def report_outcome(outcome: dict) -> int:
    """Print each site's line, then the report paths; one-line error when the study did not complete."""
    for s in (outcome.get("outcome") or {}).get("sites", []):
        print(f"  {s['site']:<22} {s['status']:<16} {s.get('reason') or ''}")
    if not outcome.get("ok"):
        raise outcome_error(outcome)
    print(f"report: {outcome.get('report')}\nnetwork results: {outcome.get('results')}")
    return 0


def outcome_error(outcome: dict) -> OptimaError:
    """The error a failed ServerApp run recorded in ``outcome.json``, with its own exit code."""
    message = outcome.get("error") or "the study did not complete"
    try:
        code = ExitCode(int(outcome.get("exit_code") or ExitCode.COORDINATOR))
    except ValueError:
        code = ExitCode.COORDINATOR
    cls = next((c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, OptimaError)
                and c.exit_code == code and c.__init__ is OptimaError.__init__), CoordinatorError)
    return cls(message)

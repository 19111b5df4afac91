"""The site's privacy budget ledger: what federated training has spent of this site's epsilon,
across runs, kept in the site's state folder (``privacy_ledger.json``, written atomically).

Every train round that uses the site's data is charged BEFORE training, at the noise
multiplier the coordinator declares in the round's config (``dp-noise-multiplier``; see
:mod:`optima_common.privacy`). Costs compose as zCDP (rho adds up), and epsilon is reported
at the ledger's delta. A round that would push epsilon past the site's budget is refused
(:class:`PrivacyBudgetError`), as is a round without DP at a site that has a budget: a
non-private round spends an unbounded amount.

Node config keys (``--node-config``): ``state-dir`` (else the site TOML's ``state_dir``),
``privacy-epsilon-budget`` (no budget: rounds are still recorded but never refused),
``privacy-delta`` (default 1e-5).

Trust note: the noise is added by the coordinator (central DP), so the ledger counts what the
coordinator promises; it bounds repeated runs, not a coordinator that lies about its noise.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from optima_common.errors import ConfigError, PrivacyBudgetError
from optima_common.fileio import write_atomic
from optima_common.privacy import DP_DELTA, DP_NOISE, epsilon_from_rho, gaussian_rho

LEDGER_FILE = "privacy_ledger.json"


@dataclass
class Ledger:
    path: Path
    budget: float | None
    delta: float

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        try:
            return list(json.loads(self.path.read_text(encoding="utf-8"))["entries"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PrivacyBudgetError(f"privacy ledger {self.path} is unreadable; refusing to train",
                                     hint="restore it from backup; never delete it to reset the budget") from exc

    def rho(self) -> float:
        return sum(float(e["rho"]) for e in self.entries())

    def epsilon(self) -> float:
        return epsilon_from_rho(self.rho(), self.delta)

    def charge(self, *, noise_multiplier: float | None, run_id: int, round: int, task: str) -> float:
        """Record one round's cost and return the site's epsilon after it; refuse when it would
        exceed the budget (nothing is recorded then)."""
        if noise_multiplier is None:
            if self.budget is not None:
                raise PrivacyBudgetError(f"site refuses {task} training without differential privacy "
                                         f"(its privacy budget is epsilon {self.budget:g})",
                                         hint="run coordinator train with --dp-clip and --dp-noise")
            return self.epsilon()
        entries = self.entries()
        spent = sum(float(e["rho"]) for e in entries)
        cost = gaussian_rho(noise_multiplier)
        after = epsilon_from_rho(spent + cost, self.delta)
        if self.budget is not None and after > self.budget:
            raise PrivacyBudgetError(f"privacy budget spent: epsilon {epsilon_from_rho(spent, self.delta):.3g} "
                                     f"of {self.budget:g} used, this round would make it {after:.3g}; "
                                     f"site refuses {task} training")
        entries.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_id": int(run_id),
                        "round": int(round), "task": task, "noise_multiplier": float(noise_multiplier),
                        "rho": cost})
        doc = {"delta": self.delta, "budget_epsilon": self.budget, "epsilon_spent": after, "entries": entries}
        write_atomic(self.path, json.dumps(doc, indent=1).encode())
        return after


def _state_dir(node_config) -> Path | None:
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"]))
    path = Path(str(node_config.get("site-config") or ""))
    if node_config.get("site-config") and path.is_file():  # a training-only node may name just its images
        from site_agent.config import load_config

        return Path(load_config(str(path)).state_dir)
    return None


def site_ledger(node_config) -> Ledger | None:
    """The site's ledger from its node config; None when the site names no state folder."""
    budget = node_config.get("privacy-epsilon-budget")
    delta = float(node_config.get("privacy-delta", 1e-5))
    state = _state_dir(node_config)
    if state is None:
        if budget is not None:
            raise ConfigError("privacy-epsilon-budget is set but the site names no state folder",
                              hint="add state-dir=\"DIR\" or site-config to --node-config")
        return None
    return Ledger(state / LEDGER_FILE, None if budget is None else float(budget), delta)


def charge_round(node_config, config: dict, *, run_id: int, task: str) -> float | None:
    """Charge a train round to the site's ledger; returns the site's epsilon so far (None: no ledger)."""
    ledger = site_ledger(node_config)
    if ledger is None:
        return None
    z = config.get(DP_NOISE)
    delta = config.get(DP_DELTA)
    if z is not None and delta is not None and float(delta) > ledger.delta:
        raise PrivacyBudgetError(f"coordinator's DP delta {float(delta):g} is looser than the site's {ledger.delta:g}")
    return ledger.charge(noise_multiplier=None if z is None else float(z), run_id=run_id,
                         round=int(config.get("round", 0)), task=task)

"""Differential-privacy arithmetic both sides share (pure Python, no numpy).

Central DP of federated rounds (site-level: add or remove one site's whole update): each
round releases the clipped, unweighted mean of the sites' updates plus Gaussian noise of std
``noise_multiplier * clip_norm / n``, i.e. a Gaussian mechanism of sensitivity ``clip_norm``
on the sum with noise multiplier ``z``. Its Renyi DP at order a is ``a / (2 z^2)``; rounds
(and runs) compose by adding ``rho = rounds / (2 z^2)`` (zero-concentrated DP), and
``epsilon = rho + 2 sqrt(rho ln(1/delta))`` at ``delta`` (the RDP conversion optimised over
orders). The coordinator reports it per round; each site keeps its own ledger of the rho it
has spent across runs (:mod:`site_agent.training.privacy`).

Keys that carry the DP settings inside a train message's config record: :data:`DP_KEYS`.
"""

from __future__ import annotations

import math

DP_NOISE = "dp-noise-multiplier"
DP_CLIP = "dp-clip-norm"
DP_DELTA = "dp-delta"
DP_KEYS = (DP_NOISE, DP_CLIP, DP_DELTA)


def gaussian_rho(noise_multiplier: float, rounds: int = 1) -> float:
    """zCDP cost of ``rounds`` Gaussian releases of sensitivity 1 and noise ``noise_multiplier``."""
    if noise_multiplier <= 0:
        return math.inf
    return rounds / (2.0 * noise_multiplier**2)


def epsilon_from_rho(rho: float, delta: float) -> float:
    """(epsilon, delta)-DP implied by total ``rho`` (the RDP-to-DP conversion, optimal order)."""
    if rho <= 0:
        return 0.0
    if math.isinf(rho):
        return math.inf
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def noise_to_signal(noise_multiplier: float, n_sites: int, dim: int) -> float:
    """Expected L2 norm of the noise added to the mean update, over the largest possible norm of
    that mean (``clip_norm``): ``z * sqrt(dim) / n``. Above ~1 the noise swamps any update."""
    return noise_multiplier * math.sqrt(max(dim, 1)) / max(n_sites, 1)


def sites_needed(noise_multiplier: float, dim: int, max_ratio: float) -> int:
    """The fewest sites per round that bring :func:`noise_to_signal` down to ``max_ratio``."""
    return math.ceil(noise_multiplier * math.sqrt(max(dim, 1)) / max_ratio)

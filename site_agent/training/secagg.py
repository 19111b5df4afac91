"""The site's side of secure aggregation (Flower SecAgg+) for federated training rounds.

The coordinator runs Flower's ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``
(:mod:`coordinator.flower.secagg`). Its four stages reach the site as train messages that carry
a ConfigRecord ``secaggplus_configs``; :func:`secagg_when_asked` hands exactly those to Flower's
``secaggplus_mod`` and every other train message (the request for the starting model, plain
rounds) straight to the handler. In the third stage the mod calls :func:`handle_secagg_fit` with
the legacy ``FitIns`` (global weights in state-dict order, the run config), then masks its
reply: the coordinator receives only masked integer vectors whose sum over the surviving sites
it can unmask, never one site's update.

What the site returns to the mod: the UPDATE (local minus global) of every float array, with
weight 1 (so the pooled result is the unweighted mean of the sites' updates), and scalar
metrics, which travel in clear as before. Integer arrays (BatchNorm batch counters) are not
sent; the coordinator keeps its own.

Distributed differential privacy (when the round's config carries ``dp-noise-multiplier`` z
and ``dp-clip-norm`` C): the site clips its update of the trainable weights to L2 norm C and
adds its own Gaussian noise of std ``z * C / sqrt(n)``, n being the number of sites the
SecAgg+ setup stage announced (read from the mod's own state, not from the coordinator's
config). The sum over n sites then carries noise of std z*C, as central DP would. If sites drop
out, less noise reaches the sum: with t survivors its multiplier is z*sqrt(t/n). The round needs
at least the SecAgg+ threshold of survivors, so the site charges its ledger at
``z * sqrt(threshold / n)``, the weakest noise the round can end with. Noise comes from the
operating system's CSPRNG. BatchNorm moments are neither clipped nor noised (see
docs/imaging-trust.md).
"""

from __future__ import annotations

import hashlib
import math
import secrets

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)

from optima_common.errors import ConfigError
from optima_common.privacy import DP_CLIP, DP_NOISE

FITINS_CONFIG = "fitins.config"
KEYS_DIGEST = "keys-digest"  # the coordinator's hash of the state-dict keys, in order
RANGE = "secagg-range"  # SecAgg+ clipping range: every sent value must lie within +-RANGE


def keys_digest(keys) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def secagg_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """A ClientApp mod: Flower's ``secaggplus_mod`` for SecAgg+ train messages only."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def is_secagg_fit(msg: Message) -> bool:
    return FITINS_CONFIG in msg.content.config_records


def protocol_sizes(context: Context) -> tuple[int, int]:
    """(sites sampled, reconstruction threshold) from the SecAgg+ setup stage this site took part in."""
    state = context.state.config_records.get(RECORD_KEY_STATE)
    if state is None or "sample_num" not in state:
        raise ConfigError("a SecAgg+ fit message arrived before the SecAgg+ setup stage")
    return int(state["sample_num"]), int(state["threshold"])


def site_noise(update: dict[str, np.ndarray], keys: list[str], *, clip: float, z: float, n_sites: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Clip the update of ``keys`` to L2 norm ``clip`` and add N(0, (z*clip)^2/n_sites) per weight."""
    norm = math.sqrt(sum(float((update[k].astype(np.float64) ** 2).sum()) for k in keys))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    std = z * clip / math.sqrt(n_sites)
    out = dict(update)
    for k in keys:
        out[k] = update[k].astype(np.float64) * scale + rng.normal(0.0, std, size=update[k].shape)
    return out


def hold_for_test(node_config) -> None:
    """A test hook for dropout tests over a real network: with node config
    ``test-hold-secagg-fit`` (a marker file's path), the site writes the marker when it enters the
    SecAgg+ fit stage (after the key exchange) and waits ``test-hold-seconds`` (default 120)
    before training, so a test can kill its SuperNode mid-round. Unset in every real deployment."""
    marker = node_config.get("test-hold-secagg-fit")
    if not marker:
        return
    import os
    import time
    from pathlib import Path

    Path(str(marker)).write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(float(node_config.get("test-hold-seconds", 120)))


def handle_train_any(msg: Message, context: Context) -> Message:
    """The site's train handler: SecAgg+ stage 2 (legacy FitIns, from secaggplus_mod) or a plain round."""
    if is_secagg_fit(msg):
        return handle_secagg_fit(msg, context)
    from site_agent.training.federated import handle_train

    return handle_train(msg, context)


def handle_secagg_fit(msg: Message, context: Context) -> Message:
    """Stage 2 of SecAgg+: train on the global weights and reply with the (noised) update as FitRes."""
    import copy

    import flwr.compat.common.recorddict_compat as compat
    import torch
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )

    from site_agent.training.federated import (
        bn_from_wire,
        bn_to_wire,
        get_task,
        site_data_dir,
        train_reply_metrics,
        trainable_keys,
    )
    from site_agent.training.loop import seed_everything
    from site_agent.training.privacy import charge_round

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    task = config.get("task")
    if not isinstance(task, str):
        raise ConfigError("SecAgg+ fit message names no task")
    adapter = get_task(task)
    seed_everything(int(config.get("seed", 0)))
    model = adapter.init_model(config)
    state = model.state_dict()
    keys = list(state)
    if config.get(KEYS_DIGEST) != keys_digest(keys):
        raise ConfigError(f"the coordinator's {task} weights do not fit this site's model (key lists differ)")
    arrays = parameters_to_ndarrays(fitins.parameters)
    if [a.shape for a in arrays] != [tuple(v.shape) for v in state.values()]:
        raise ConfigError(f"the coordinator's {task} weights do not fit this site's model (shapes differ)")
    n_sites, threshold = protocol_sizes(context)
    hold_for_test(context.node_config)
    z, clip = config.get(DP_NOISE), config.get(DP_CLIP)
    charged = dict(config)
    if z is not None:  # the weakest noise this round can end with: threshold survivors of n_sites
        charged[DP_NOISE] = float(z) * math.sqrt(threshold / n_sites)
    data_dir = site_data_dir(context, task)
    spent = charge_round(context.node_config, charged, run_id=msg.metadata.run_id, task=task)
    model.load_state_dict({k: torch.as_tensor(a).to(state[k].dtype) for k, a in zip(keys, arrays)})
    bn_from_wire(model)
    global_model = copy.deepcopy(model)
    for p in global_model.parameters():
        p.requires_grad_(False)
    n, metrics = adapter.local_train(model, data_dir, config, global_model)
    local = {k: v.detach().cpu().numpy() for k, v in bn_to_wire(model).state_dict().items()}
    start = dict(zip(keys, arrays))
    floats = [k for k in keys if np.issubdtype(start[k].dtype, np.floating)]
    update = {k: local[k].astype(np.float64) - start[k].astype(np.float64) for k in floats}
    if z is not None:
        rng = np.random.Generator(np.random.PCG64(secrets.randbits(128)))
        update = site_noise(update, [k for k in trainable_keys(model) if k in update], clip=float(clip), z=float(z),
                            n_sites=n_sites, rng=rng)
    limit = float(config.get(RANGE, 8.0))
    worst = max((float(np.abs(update[k]).max()) for k in floats if update[k].size), default=0.0)
    if worst > limit:
        raise ConfigError(f"update value {worst:.3g} is outside the SecAgg+ range +-{limit:g} and would be clipped",
                          hint="lower the learning rate or raise --secagg-range")
    if spent is not None:
        metrics = {**metrics, "site_epsilon_spent": spent}
    clean = dict(train_reply_metrics(n, metrics, context.node_config))  # num-examples: the rounded weight
    fitres = FitRes(status=Status(code=Code.OK, message=""), num_examples=1,
                    parameters=ndarrays_to_parameters([update[k] for k in floats]), metrics=clean)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

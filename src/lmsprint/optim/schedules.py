"""Learning-rate schedules as one pure function: `lr_multiplier(progress, optim_cfg) -> m`.

The training loop sets `group["lr"] = group["base_lr"] * m` for every param group each step (so Muon's and
AdamW's groups follow the same shape at their own peak lr). `progress` in [0, 1] is `step / iterations` or
`elapsed_train_time / time_budget`; nothing here keeps state, so resuming a run resumes its schedule exactly.

Schedules (`scheduler`):
- `cos`: llm-baselines' schedule, `torch.optim.lr_scheduler.OneCycleLR(pct_start=warmup_percent,
  anneal_strategy='cos', cycle_momentum=False, div_factor, final_div_factor)`: cosine warmup from lr/div_factor
  to lr at `warmup_percent`, then cosine anneal to (lr/div_factor)/final_div_factor (llm-baselines' defaults
  100 and 0.1: start at lr/100, end at lr/10).
- `linear`: the same with linear ramps (`anneal_strategy='linear'`).
- `none`: constant 1.0 with no warmup, as llm-baselines' `scheduler` none (use wsd with `wsd_decay_frac` 0 for
  warmup + constant).
- `wsd` (warmup-stable-decay): linear warmup from 1/div_factor to 1 over `warmup_percent`, constant, then linear
  decay to 0 over the last `wsd_decay_frac` of the run.

`warmup_steps N` (> 0, step-based runs only) counts the warmup in steps instead of `warmup_percent`: the
multiplier at step s < N is then a function of s/N alone, bit for bit the same whatever the run's length, so a
short wsd run and the stable phase of a longer one take identical steps up to the short one's decay (what
`lmsprint ladder` branches on). The step is recovered exactly as round(progress * total_steps).

`muon_momentum(progress, optim_cfg)`: Muon's momentum under `muon_momentum_warmup f`, rising linearly from
`muon_momentum_start` to `muon_momentum` over the first f of the run (modded-nanogpt: 0.85 -> 0.95), then
constant. `apply_schedule(param_groups, progress, optim_cfg, total_steps)` is what the training loop calls
before each optimizer step: every group's lr = base_lr * lr_multiplier, and, under muon, the Muon (`matrix`)
groups' momentum = muon_momentum(progress).

With `total_steps` given (step-based runs), cos/linear reproduce OneCycleLR's discrete phase boundaries exactly
(its warmup ends at step `warmup_percent * total_steps - 1`); without it (time-based progress) the continuous
limit is used, which differs from the discrete one by O(1/total_steps).
"""

from __future__ import annotations

import math
from typing import Optional

from ..errors import ConfigError


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


def _one_cycle(progress: float, cfg, anneal, total_steps: Optional[int]) -> float:
    initial = 1.0 / cfg.div_factor
    final = initial / cfg.final_div_factor
    if total_steps:  # OneCycleLR's discrete phases, in steps
        x = progress * total_steps
        warm = cfg.warmup_steps if getattr(cfg, "warmup_steps", 0) else cfg.warmup_percent * total_steps
        warm_end, end = float(warm) - 1, float(total_steps - 1)
    else:
        x, warm_end, end = progress, cfg.warmup_percent, 1.0
    if x <= warm_end and warm_end > 0:
        return anneal(initial, 1.0, x / warm_end)
    span = end - warm_end  # OneCycleLR's second phase starts where the first ends (even at -1)
    pct = (x - warm_end) / span if span > 0 else 1.0
    return anneal(1.0, final, min(max(pct, 0.0), 1.0))


def _wsd(progress: float, cfg, total_steps: Optional[int]) -> float:
    w, d = cfg.warmup_percent, cfg.wsd_decay_frac
    warmup_steps = getattr(cfg, "warmup_steps", 0)
    if warmup_steps and total_steps:  # warmup in steps: the same multipliers whatever total_steps is
        step = round(progress * total_steps)
        if step < warmup_steps:
            return _anneal_linear(1.0 / cfg.div_factor, 1.0, step / warmup_steps)
    elif w > 0 and progress < w:
        return _anneal_linear(1.0 / cfg.div_factor, 1.0, progress / w)
    if d > 0 and progress > 1.0 - d:
        return max(0.0, (1.0 - progress) / d)
    return 1.0


def lr_multiplier(progress: float, optim_cfg, total_steps: Optional[int] = None) -> float:
    """Multiplier of the peak lr at `progress` in [0, 1] (clamped). `optim_cfg` is an OptimConfig."""
    p = min(max(float(progress), 0.0), 1.0)
    kind = optim_cfg.scheduler
    if kind == "cos":
        return _one_cycle(p, optim_cfg, _anneal_cos, total_steps)
    if kind == "linear":
        return _one_cycle(p, optim_cfg, _anneal_linear, total_steps)
    if kind == "wsd":
        return _wsd(p, optim_cfg, total_steps)
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown scheduler {kind!r}")


def muon_momentum(progress: float, optim_cfg) -> float:
    """Muon momentum at `progress` in [0, 1]: linear warm-up from muon_momentum_start over muon_momentum_warmup."""
    o = optim_cfg
    w = o.muon_momentum_warmup
    if w <= 0 or progress >= w:
        return o.muon_momentum
    frac = max(float(progress), 0.0) / w
    return o.muon_momentum_start + frac * (o.muon_momentum - o.muon_momentum_start)


def apply_schedule(param_groups, progress: float, optim_cfg, total_steps: Optional[int] = None) -> None:
    """Set this step's lr on every param group and, under muon, Muon's momentum on its `matrix` groups."""
    mult = lr_multiplier(progress, optim_cfg, total_steps)
    momentum = muon_momentum(progress, optim_cfg) if optim_cfg.opt == "muon" else None
    for g in param_groups:
        g["lr"] = g["base_lr"] * mult
        if momentum is not None and g.get("role") == "matrix":
            g["momentum"] = momentum


# the largest float32: torch's optimizers hand each group's lr to float32 kernels, and a larger one is a RuntimeError
# ("value cannot be converted to type float without overflow") at the first step
FLOAT32_MAX = 3.4028234663852886e38
LR_OPTIONS = ("lr", "muon_lr", "embed_lr", "head_lr")


def check_schedule_config(optim_cfg, train_cfg=None) -> None:
    """Refuse schedule options that cannot work together (ConfigError); with `train_cfg`, also `warmup_steps`
    against the run's budget.

    The schedule never goes above the peak lr: cos/linear/wsd start at lr / `div_factor` (so `div_factor` >= 1) and
    cos/linear end at lr / (`div_factor` x `final_div_factor`) (so that product >= 1; llm-baselines: 100 x 0.1).
    Otherwise the "final" lr of e.g. `final_div_factor` 1e-300 is 1e298 x lr, past float32, and the run would fail
    inside the optimizer. With that, the peak lr of every parameter group is the largest one, and it must fit in
    float32 too."""
    o = optim_cfg
    if o.scheduler in ("cos", "linear", "wsd") and o.div_factor < 1:
        raise ConfigError(f"`div_factor` {o.div_factor:g} makes the start lr (lr / div_factor) larger than the peak "
                          "`lr`; use `div_factor` >= 1 (llm-baselines: 100)")
    if o.scheduler in ("cos", "linear") and o.div_factor * o.final_div_factor < 1:
        raise ConfigError(f"`final_div_factor` {o.final_div_factor:g} with `div_factor` {o.div_factor:g} makes the "
                          "final lr (lr / div_factor / final_div_factor) larger than the peak `lr`, so the schedule "
                          "would climb instead of anneal; choose them with div_factor x final_div_factor >= 1 "
                          "(llm-baselines: 100 x 0.1, ending at lr/10)")
    for name in LR_OPTIONS:
        if getattr(o, name) > FLOAT32_MAX:
            raise ConfigError(f"`{name}` {getattr(o, name):g} is larger than the largest float32 "
                              f"({FLOAT32_MAX:.3g}); the optimizer cannot use it")
    ws = getattr(o, "warmup_steps", 0)
    if o.scheduler == "wsd" and not ws and o.warmup_percent + o.wsd_decay_frac > 1.0:
        raise ConfigError(f"`warmup_percent` {o.warmup_percent} + `wsd_decay_frac` {o.wsd_decay_frac} exceed 1; "
                          "lower one of them so warmup and decay fit in the run")
    if not ws or train_cfg is None or o.scheduler == "none":
        return
    if train_cfg.time_budget:
        raise ConfigError(f"`warmup_steps` {ws} needs a budget in steps, and `time_budget` {train_cfg.time_budget} "
                          "runs the schedule on elapsed time; use `warmup_percent` with a time budget")
    n = train_cfg.iterations
    room = n * (1.0 - o.wsd_decay_frac) if o.scheduler == "wsd" else n
    if ws > room:
        raise ConfigError(f"`warmup_steps` {ws} does not fit in {n} `iterations`"
                          + (f" before the last `wsd_decay_frac` {o.wsd_decay_frac} of decay" if o.scheduler == "wsd"
                             else "") + "; lower it or train longer")

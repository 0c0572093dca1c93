"""Validation of a whole config: each option's own checks, then the rules that tie options of the config together.

`validate_config(cfg)` (called by `RunConfig.validate()`):
1. every option: type, finiteness and range (`options.value_problem`), `choices`, then its `check`;
2. pure-config cross-field rules (eval cadence, head sizes, MoE top-k, attention pattern, micro-batch).

Rules that depend on what an implementation supports (attention backends, optimizers, schedules) live with that
implementation (`model`, `optim`) and are combined by `training/checks.py::check_run(cfg)`. Raises `ConfigError`.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from .options import iter_fields, owner, value_problem


def validate_config(cfg) -> None:
    """Field checks then cross-field rules (cfg: RunConfig). Raises ConfigError naming the option."""
    for path, f, tp in iter_fields(cfg):
        name, v = path[-1], getattr(owner(cfg, path), path[-1])
        msg = value_problem(f, tp, v) if v is not None else None
        if msg:
            raise ConfigError(f"`{name}` {_shown(v)}: {msg}")
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise ConfigError(f"`{name}` '{v}' is not one of: {shown}")
        check = f.metadata.get("check")
        if check is not None and v is not None:
            msg = check(v)
            if msg:
                raise ConfigError(f"`{name}` {v}: {msg}")
    _cross_field_rules(cfg)


def _shown(v) -> str:
    """A value as the user wrote it, but a huge integer as 1.00e+99 rather than a hundred digits."""
    text = str(v)
    if isinstance(v, int) and len(text) > 24:
        digits = text.lstrip("-")
        return f"{text[:len(text) - len(digits)]}{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"
    return text


def _cross_field_rules(cfg) -> None:
    t = cfg.train
    if t.eval_every not in (None, "") and t.eval_freq != "auto":
        raise ConfigError(f"`eval_every` {t.eval_every} and `eval_freq` {t.eval_freq} both set the eval cadence; give "
                          "one of them (in training time or in steps)")
    m = cfg.model
    if m.n_embd % m.n_head:
        raise ConfigError(f"`n_embd` {m.n_embd} is not divisible by `n_head` {m.n_head}; choose e.g. "
                          f"`n_head` {_divisor_near(m.n_embd, m.n_head)}")
    if m.pos_kind == "rope" and m.head_dim % 2:
        raise ConfigError(f"rope needs an even head size, got n_embd/n_head = {m.head_dim}; change `n_embd` or "
                          "`n_head`")
    moe = m.moe
    if moe.moe_num_experts > 1 and moe.moe_num_experts_per_tok > moe.moe_num_experts:
        raise ConfigError(f"`moe_num_experts_per_tok` {moe.moe_num_experts_per_tok} exceeds `moe_num_experts` "
                          f"{moe.moe_num_experts}; pick k <= number of experts")
    a = m.attn
    if a.local_heads > m.n_head:
        raise ConfigError(f"`local_heads` {a.local_heads} exceeds `n_head` {m.n_head}")
    if a.attention != "global_local" and (a.attention_pattern or a.local_heads):
        raise ConfigError("`attention_pattern`/`local_heads` need `attention` global_local")
    if a.attention == "global_local" and not (a.attention_pattern or a.local_heads):
        raise ConfigError("`attention` global_local needs `attention_pattern` (e.g. SSSL) and/or `local_heads` k")
    t = cfg.train
    if t.stop_at_target and not t.target:
        raise ConfigError("`stop_at_target` needs `target` METRIC=VALUE, e.g. --target val/loss=3.28")
    if isinstance(t.micro_batch, int) and t.batch_size * t.acc_steps % t.micro_batch:
        raise ConfigError(f"`micro_batch` {t.micro_batch} must divide batch_size*acc_steps = "
                          f"{t.batch_size * t.acc_steps}")


def _divisor_near(n: int, k: int) -> int:
    """The divisor of n closest to k (the smaller one on a tie)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    divs = sorted(set(small + [n // d for d in small]))
    return min(divs, key=lambda d: abs(d - k))

"""lmsprint.optim: optimizers (a registry in optimizers.py), learning-rate schedules, and the rules that say which
optimizer and schedule options can run together.

`check_optim_config(cfg)` raises ConfigError for such combinations (the optimizer's rule from the registry, the
schedule's from schedules.py); training/checks.py calls it for a whole run.
"""

from __future__ import annotations

from ..config import OptimConfig, RunConfig
from .optimizers import check_optimizer_config, optimizer_state_bytes
from .schedules import check_schedule_config


def check_optim_config(cfg: RunConfig | OptimConfig) -> None:
    """Refuse optimizer and schedule options that cannot run together; raises ConfigError. `cfg` is a RunConfig
    (its `optim` section is checked) or an OptimConfig."""
    o = getattr(cfg, "optim", cfg)
    check_schedule_config(o, getattr(cfg, "train", None))
    check_optimizer_config(o)


__all__ = ["check_optim_config", "optimizer_state_bytes"]

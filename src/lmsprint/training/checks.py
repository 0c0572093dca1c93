"""`check_run(cfg)`: everything that must hold before a run (or a bench step) is built, in one call.

The config's own checks (`cfg.validate()`: each option, then the pure-config cross-field rules), then what the
implementations support: the model's (`model.check_model_config`), the optimizer's and schedule's
(`optim.check_optim_config`) and data parallelism's (`distributed.check_data_parallel`). Called by training (also for configs read back on --resume), bench and sweep.
Raises ConfigError naming the options.
"""

from __future__ import annotations

from ..model import check_model_config
from ..optim import check_optim_config
from .distributed import check_data_parallel


def fixed_micro_batch(cfg) -> int:
    """Sequences per micro-batch when known before the model exists (`micro_batch` unset or N), else 0 (auto)."""
    mb = cfg.train.micro_batch
    return cfg.train.batch_size if mb is None else mb if isinstance(mb, int) else 0


def check_run(cfg):
    """Validate `cfg` as a whole run; returns it."""
    cfg.validate()
    check_model_config(cfg.model, cfg.train.device, fixed_micro_batch(cfg))
    check_optim_config(cfg)
    check_data_parallel(cfg)
    return cfg

"""lmsprint.model: the Transformer, its parts (attention, MLP, MoE, norms, RoPE), the loss, and the rules that
say which model options can run together.

`check_model_config(model_cfg, device, micro_batch)` raises ConfigError for option combinations the model cannot
run (attention's rules live in attention.py; rules of the config alone, such as MoE's top-k <= experts, in
config/validate.py); training/checks.py calls it for a whole run.
"""

from __future__ import annotations

from ..config import ModelConfig
from .attention import check_attention_config


def check_model_config(model_cfg: ModelConfig, device: str = "auto", micro_batch: int = 0) -> None:
    """Refuse model options that cannot run together; raises ConfigError.

    `device`: the requested device (e.g. "cpu", "cuda", "auto"); `micro_batch`: sequences per micro-batch when it
    is fixed in advance (0 = not known yet, e.g. `micro_batch` auto)."""
    check_attention_config(model_cfg, device, micro_batch)


__all__ = ["check_model_config"]

"""Presets of defaults (`--config_format base|demo|speedrun`): flag values applied over the dataclass defaults and under
the config file and the CLI flags (see `io.build_config`)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # llm-baselines' hackathon defaults: GPT-2 124M shapes, SlimPajama-6B, 25k iterations of 32x4x512 tokens
    "base": {"dataset": "slimpajama"},
    # a real but small run that finishes in about 3 minutes on 2 CPU cores: 120 s of training, an eval every 12 s
    # on 4,096 val tokens (2 batches, about 2 s on 2 cores; 8,192 spent a fifth of the run in evals), and the auto
    # final eval's prefix of Shakespeare's own val split (5%, raised to 96,384 tokens by the 65,536-token floor,
    # data/sources.py). No preset sets `val_fraction`: one dataset name is one val set under every preset.
    "demo": {"dataset": "shakespeare", "n_layer": 4, "n_head": 4, "n_embd": 128, "sequence_length": 128,
             "batch_size": 16, "acc_steps": 1, "iterations": 100000, "time_budget": "120s", "lr": 3e-3,
             "eval_tokens": 16 * 128 * 2, "warmup_percent": 0.05, "log_interval": 5,
             "grad_clip": 1.0, "ckpt_interval": "1m", "sample_tokens": 120, "eval_seq_prefix": "ROMEO:"},
    # base's shapes, data and tokens per step (124M, seq 512, 32x4 sequences, SlimPajama) with the recipe that won
    # the equal-time races of docs/recipes.md; only training choices, so it shrinks by flags like base does
    "speedrun": {"dataset": "slimpajama", "model": "llama2", "mlp": "relu2", "tie_embeddings": False,
                 "opt": "muon", "lr": 1e-2, "muon_lr": 0.02, "muon_momentum": 0.95, "scheduler": "wsd",
                 "warmup_percent": 0.05, "wsd_decay_frac": 0.2, "grad_clip": 1.0},
}

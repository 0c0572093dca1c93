"""Metric sinks behind one interface: `Sinks.log(metrics, step)`, `log_text`, `finish(summary)`.

metrics.jsonl is always written (one JSON object per log call, keys from `lmsprint.track.keys`); wandb and
TensorBoard are optional sinks behind the same calls. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os


def _plain(v):
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    elif hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class Sinks:
    def __init__(self, cfg, run_dir: str, enabled: bool = True):
        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a") if enabled else None

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"iter": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def log_text(self, step: int, prompt: str, text: str) -> None:
        if not self.enabled:
            return
        with open(os.path.join(self.run_dir, "samples.txt"), "a") as fh:
            fh.write(f"--- iter {step} ---\n{text}\n")

    def finish(self, summary: dict) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

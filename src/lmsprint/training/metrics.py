"""What a run accumulates between its writes: the training-loss sums of the steps since the last log row, and the
record of what it has written so far. Both are checkpoint states (`state_dict()` / `load_state_dict()`), so a resumed
run logs exactly what an uninterrupted run would.

- `MetricAccumulator(device)`: per process. `add(stats)` after each optimizer step adds the step's device tensors
  (objective, summed plain CE, token count, MoE statistics) without a host sync; `read(world)` at a log step
  averages them over the steps and the processes (the only host-device sync of training) and resets; `loss` is the
  device sum the guard checks before a checkpoint. `respread(states, world_size)` turns the states of the N processes
  that saved a checkpoint into one state for each of M other processes (summed CE and token counts split evenly,
  mean losses and MoE statistics averaged), so the next logged values are those of the whole global batch.
- `RunRecord()`: the rows of metrics.jsonl, the bytes of samples.txt, the number of periodic evals and the last
  periodic val metrics (a resume cuts the files back to the checkpoint's record).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..rundir import samples_path
from .distributed import World, all_reduce_mean


class MetricAccumulator:
    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.steps, self.n = 0, 0
        self.loss = torch.zeros((), dtype=torch.float32, device=self.device)
        self.ce = torch.zeros((), dtype=torch.float32, device=self.device)
        self.aux: dict = {}

    def add(self, stats: dict) -> None:
        """One optimizer step's statistics (`step.accumulate_gradients`'s dict); no host sync."""
        self.steps += 1
        self.loss += stats["loss"]
        self.ce += stats["ce_sum"]
        self.n += stats["n"]
        for k, v in stats["aux"].items():
            if k.startswith("moe/"):
                self.aux[k] = v if k not in self.aux else self.aux[k] + v

    def read(self, world: World) -> Optional[tuple[float, float, dict]]:
        """Collective: (mean objective, mean plain CE per token, {moe key: mean value}) over the steps since the last
        read and over the processes, then reset; None when no step was added."""
        if self.steps == 0:
            return None
        vals = torch.stack([self.loss / self.steps, self.ce / max(self.n, 1)])
        loss, ce = all_reduce_mean(vals, world).tolist()
        aux = {}
        for k, v in sorted(self.aux.items()):
            v = all_reduce_mean(v / self.steps, world)
            aux[k] = v.item() if v.numel() == 1 else v.tolist()
        self.reset()
        return loss, ce, aux

    def state_dict(self) -> dict:
        return {"steps": self.steps, "n": self.n, "loss": self.loss.cpu(), "ce": self.ce.cpu(),
                "aux": {k: v.cpu() for k, v in self.aux.items()}}

    def load_state_dict(self, st: dict) -> None:
        dev = self.device
        self.steps, self.n = st["steps"], st["n"]
        self.loss, self.ce = st["loss"].to(dev), st["ce"].to(dev)
        self.aux = {k: v.to(dev) for k, v in st["aux"].items()}

    @staticmethod
    def respread(states: list[dict], world_size: int) -> dict:
        """The state each of `world_size` processes takes from the states of the processes that saved them."""
        k, m = len(states), world_size
        a0 = states[0]
        return {"steps": a0["steps"], "n": sum(a["n"] for a in states) // m,
                "loss": sum(a["loss"] for a in states) / k, "ce": sum(a["ce"] for a in states) / m,
                "aux": {key: sum(a["aux"][key] for a in states) / k for key in a0["aux"]}}


class RunRecord:
    """What the run has written (see the module doc); `run_dir` is set once the run directory exists."""

    def __init__(self, run_dir: Optional[str] = None):
        self.run_dir = run_dir
        self.rows = 0
        self.samples_bytes = 0
        self.n_evals = 0
        self.last_val: dict = {}

    def state_dict(self) -> dict:
        samples = samples_path(self.run_dir) if self.run_dir else None
        return {"rows": self.rows,
                "samples_bytes": os.path.getsize(samples) if samples and os.path.exists(samples) else 0,
                "n_evals": self.n_evals, "last_val": self.last_val}

    def load_state_dict(self, st: dict) -> None:
        self.rows, self.n_evals = int(st["rows"]), int(st["n_evals"])
        self.samples_bytes = int(st.get("samples_bytes", 0))
        self.last_val = dict(st.get("last_val") or {})

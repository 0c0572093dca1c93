"""Time to target (`--target METRIC=VALUE`, `--stop_at_target`): the first periodic eval on the fixed val set whose
METRIC reaches VALUE (at or below it for a loss, perplexity or bpb; at or above it for an accuracy: the direction is
keys.VAL_METRICS'), with that eval's step, training tokens, training seconds and wall seconds.

`TargetTracker(spec, stop)` is one component of the Trainer:
- `observe(res, step, tokens, train_s, wall_s)` after each periodic eval: the metrics row to log (keys.TARGET_*)
  the first time the target is reached, else None;
- `stop()`: True once the target is reached under `--stop_at_target` (the training loop ends there, the run
  then takes its final eval and ends `complete`);
- `summary()`: summary.json's `target` record ({metric, value, reached, step, tokens, train_s, wall_s, eval,
  measured}; None without a target);
- `state_dict()` / `load_state_dict(state)`: the checkpoint's part. Exact under resume: the checkpoint
  written at the eval that reached the target already holds the record, and a kill after it resumes with it. A
  resume that adds or changes `--target` (the option is resume-safe) finds the record among the eval rows logged
  before the checkpoint (`history()`, set by the Trainer: metrics.jsonl's rows up to the checkpoint, which carry
  their own step, tokens and times).
Every rank holds the same record (evals are all-reduced), so all ranks stop at the same step.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from .. import keys as K


class TargetTracker:
    def __init__(self, spec: Optional[str], stop: bool = False):
        self.spec = spec or None
        self.metric, self.value = K.parse_target(spec) if spec else (None, None)
        self.stop_at_target = bool(stop) and self.spec is not None
        self.n_evals = 0                     # periodic evals seen (the record's `eval` is 1-based)
        self.record: Optional[dict] = None   # the eval that reached the target
        self.history: Callable[[], Iterable[dict]] = lambda: ()  # the metrics rows logged before a resume

    @property
    def enabled(self) -> bool:
        return self.spec is not None

    def observe(self, res: dict, step: int, tokens: int, train_s: Optional[float], wall_s: Optional[float]
                ) -> Optional[dict]:
        """After a periodic eval with results `res`: the metrics row to log if this eval is the first to reach the
        target, else None."""
        self.n_evals += 1
        if not self.enabled or self.record is not None or not K.target_reached(self.metric, self.value,
                                                                                res.get(self.metric)):
            return None
        self.record = {"step": int(step), "tokens": int(tokens), "train_s": _seconds(train_s),
                       "wall_s": _seconds(wall_s), "eval": self.n_evals, "measured": float(res[self.metric])}
        return self.row()

    def row(self) -> dict:
        r = self.record
        return {K.TARGET_STEP: r["step"], K.TARGET_TOKENS: r["tokens"], K.TARGET_TRAIN_TIME: r["train_s"],
                K.TARGET_WALL_TIME: r["wall_s"], K.TARGET_VALUE: r["measured"]}

    def stop(self) -> bool:
        return self.stop_at_target and self.record is not None

    def describe(self) -> str:
        """The console line when the target is reached."""
        r = self.record
        return (f"target {self.spec} reached at eval {r['eval']}, step {r['step']}: {self.metric} {r['measured']:.4f}, "
                f"{r['tokens']:,} tokens, {_shown(r['train_s'])} of training, {_shown(r['wall_s'])} wall"
                + ("; stopping (--stop_at_target)" if self.stop_at_target else ""))

    def summary(self) -> Optional[dict]:
        if not self.enabled:
            return None
        out = {"metric": self.metric, "value": self.value, "reached": self.record is not None,
               "stop_at_target": self.stop_at_target}
        for k in ("step", "tokens", "train_s", "wall_s", "eval", "measured"):
            out[k] = self.record.get(k) if self.record else None
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"spec": self.spec, "n_evals": self.n_evals, "record": dict(self.record) if self.record else None}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Restore from a checkpoint's `state_dict()` (None or {}: a checkpoint of an older lmsprint). When the target
        is not the one the checkpoint tracked, it is looked up in `self.history()` (the metrics rows logged up to the
        checkpoint): the first eval row that reaches it."""
        state = state or {}
        self.record = None
        if state.get("spec") == self.spec and state.get("n_evals") is not None:
            self.n_evals = int(state["n_evals"])
            self.record = dict(state["record"]) if state.get("record") else None
            return
        self.n_evals = 0
        for row in self.history():
            if K.ITER in row and any(k in row for k in K.VAL_KEYS):  # a periodic eval's row
                self.observe(row, row[K.ITER], row.get(K.TOKENS) or 0, row.get(K.TRAIN_TIME), row.get(K.WALL_TIME))


def _seconds(v) -> Optional[float]:
    """A time of the record: None when an older run's row carries none (unknown, not zero)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _shown(v) -> str:
    return "?s" if v is None else f"{v:.1f}s"

"""Which val set a loaded run was evaluated on, and splitting runs into tables of one val set each: `compare` ranks
and tests only runs whose final evals scored the same tokens.

A run records the identity of its fixed (periodic) and final val sets in summary.json (`keys.VAL_SETS`, written by
training/valsets.py): the SHA-256 of the val token file, the tokenizer, the sequence length and the number of
tokens evaluated. Two runs are on the same val set when those four are equal. A run of an older lmsprint recorded
none: its identity is inferred from its config (dataset, tokenizer, val_fraction, max_docs, text_field, sequence
length and the final-eval settings) and is never equal to a recorded one, since the same config may have meant
another split then.

- `final_val_set(run)` / `fixed_val_set(run)` -> `ValSet` (key, description, recorded?).
- `align_final_prefixes(runs)` -> (runs, note): complete runs on the same val token file whose final evals stopped
  at different prefixes (`--final_eval auto` sizes it to each run's time) are scored on the largest prefix all of
  them evaluated (summary.json `final_prefixes`, training/final_eval.py), with a note saying so.
- `split_by_val_set(runs)` -> [(ValSet, runs)], the val set with the most complete runs first (ties: first seen).
- `why_apart(vs, main)` -> the one-line reason a table is not ranked with the main one.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

from .. import keys as K
from .discover import Run

IDENTITY_KEYS = ("val_sha256", "tokenizer", "sequence_length", "tokens")  # as training/valsets.py
INFERRED_KEYS = ("dataset", "tokenizer", "val_fraction", "max_docs", "text_field", "sequence_length", "final_eval")


@dataclass(frozen=True)
class ValSet:
    key: tuple
    text: str           # e.g. "full split, 96,384 tokens (val sha256 3f2a9c1d..., gpt2, windows of 128)"
    recorded: bool
    covers: str = ""    # "full split" | "fixed set" | "" (unknown)
    tokens: Optional[int] = None


def _recorded(run: Run, which: str) -> Optional[dict]:
    vs = run.summary.get(K.VAL_SETS)
    ident = vs.get(which) if isinstance(vs, dict) else None
    if isinstance(ident, dict) and all(k in ident for k in IDENTITY_KEYS):
        return ident
    return None


def _from_record(ident: dict) -> ValSet:
    tokens = ident.get("tokens")
    covers = str(ident.get("covers") or "")
    text = (f"{covers + ', ' if covers else ''}{tokens:,} tokens (val sha256 {str(ident['val_sha256'])[:12]}..., "
            f"{ident['tokenizer']}, windows of {ident['sequence_length']})" if isinstance(tokens, int)
            else str(ident))
    return ValSet(tuple(str(ident[k]) for k in IDENTITY_KEYS), text, True, covers,
                  tokens if isinstance(tokens, int) else None)


def _inferred(run: Run, fixed: bool) -> ValSet:
    f = run.flat
    mode = "fixed" if fixed else str(f.get("final_eval") or "full")
    values = [f.get(k) for k in INFERRED_KEYS[:-1]] + [mode]
    if mode != "full":
        values.append(f.get("eval_tokens"))
    covers = "full split" if mode == "full" else "fixed set"
    final = run.summary.get(K.FINAL) if isinstance(run.summary.get(K.FINAL), dict) else {}
    tokens = final.get("eval_tokens") if not fixed and isinstance(final.get("eval_tokens"), int) else None
    text = (f"not recorded (a run of an older lmsprint): {covers} of dataset {f.get('dataset')}"
            + (f", val_fraction {f.get('val_fraction')}" if f.get("val_fraction") is not None else "")
            + (f", {tokens:,} tokens" if tokens else ""))
    return ValSet(("inferred",) + tuple(str(v) for v in values), text, False, covers, tokens)


def final_val_set(run: Run) -> ValSet:
    """The val set of the run's final eval (what compare's tables rank)."""
    ident = _recorded(run, "final")
    return _from_record(ident) if ident else _inferred(run, fixed=False)


def fixed_val_set(run: Run) -> ValSet:
    """The val set of the run's periodic evals (its curves and its time to target)."""
    ident = _recorded(run, "fixed")
    return _from_record(ident) if ident else _inferred(run, fixed=True)


def _prefixes(run: Run) -> dict[int, dict]:
    """The run's final eval metrics by prefix size in tokens (summary.json `final_prefixes`), valid entries only."""
    raw = run.summary.get(K.FINAL_PREFIXES)
    out = {}
    for k, v in (raw.items() if isinstance(raw, dict) else ()):
        if isinstance(k, str) and k.isascii() and k.isdigit() and isinstance(v, dict):
            out[int(k)] = v
    return out


def align_final_prefixes(runs: list[Run]) -> tuple[list[Run], Optional[str]]:
    """Runs whose final evals scored different prefixes of the same val split, each re-scored on the largest prefix
    every one of them recorded (their final metrics and final val-set identity then say that prefix); other runs
    unchanged. The note names the prefix and the sizes the runs had stopped at (None when nothing changed)."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        ident = _recorded(r, "final")
        if r.complete and ident and _prefixes(r) and ident.get("tokens") in _prefixes(r):
            groups.setdefault(tuple(str(ident[k]) for k in IDENTITY_KEYS[:-1]), []).append(i)
    out, notes = list(runs), []
    for members in groups.values():
        sizes = {_recorded(runs[i], "final")["tokens"] for i in members}
        if len(members) < 2 or len(sizes) < 2:
            continue
        common = set.intersection(*(set(_prefixes(runs[i])) for i in members))
        if not common:
            continue
        n = max(common)
        for i in members:
            r = runs[i]
            if _recorded(r, "final")["tokens"] == n:
                continue
            summary = copy.deepcopy(r.summary)
            final = summary[K.VAL_SETS]["final"]
            final["tokens"], final["covers"] = n, "val prefix"
            metrics = _prefixes(r)[n]
            out[i] = dataclasses.replace(r, summary=summary, final={k: metrics.get(k) for k in K.VAL_KEYS})
        notes.append(f"final metrics on the first {n:,} val tokens, the largest prefix every run's final eval scored "
                     f"(their final evals stopped at {', '.join(f'{x:,}' for x in sorted(sizes))} tokens)")
    return out, "; ".join(notes) or None


def split_by_val_set(runs: list[Run]) -> list[tuple[ValSet, list[Run]]]:
    """Runs split by the val set of their final eval, the set with the most complete runs first."""
    parts: dict[tuple, tuple[ValSet, list]] = {}
    for r in runs:
        vs = final_val_set(r)
        parts.setdefault(vs.key, (vs, []))[1].append(r)
    order = list(parts.values())
    first = {id(p): i for i, p in enumerate(order)}
    return sorted(order, key=lambda p: (-sum(r.complete for r in p[1]), first[id(p)]))


def why_apart(vs: ValSet, main: ValSet) -> str:
    """Why runs on `vs` are not ranked with the runs on `main` (one line)."""
    if not vs.recorded or not main.recorded:
        side = vs if not vs.recorded else main
        which = "these runs" if side is vs else "the first table's runs"
        return (f"ranked apart: {which} recorded no val-set identity (an older lmsprint), so they cannot be shown to "
                "be on the same val set")
    diffs = [f"{name} {a} vs {b}" for name, a, b in zip(
        ("val token file (sha256)", "tokenizer", "sequence length", "tokens evaluated"), vs.key, main.key) if a != b]
    return "ranked apart: evaluated on another val set than the first table: " + "; ".join(
        d if not d.startswith("val token file") else
        f"val token file (sha256) {vs.key[0][:12]}... vs {main.key[0][:12]}..." for d in diffs)

"""Downstream benchmarks through lm-evaluation-harness, on an exported Hugging Face folder.

lm-eval, transformers and accelerate are an optional extra (`pip install 'lmsprint[evals]'`), imported lazily
inside the functions that need them, so `import lmsprint.evals.lmeval` works without them.

- `run_lm_eval(model_dir, tasks, include_path=, limit=, num_fewshot=, batch_size=, device=, dtype=)` runs
  lm-eval's `hf` model on a folder written by `lmsprint.export.export_hf` and returns lm-eval's results dict
  (per-sample logs are not kept). Task names may be globs (`expand_tasks`: each expanded, in the order given, to
  the sorted task names it matches, so lm-eval receives names only); `include_path` adds a folder of local task
  YAMLs (when every task is found there, lm-eval's thousands of built-in task files are not even indexed). A
  task whose data file is missing is one DataError naming the file.
- `results_table(results)`: lm-eval's markdown table, for printing.
- `summary_metrics(results)`: flat {"<task>/<metric>": value} of the numeric metrics (for `compare` columns).
- `write_results(run_dir, results)` (results.py): writes `<run_dir>/evals/lm_eval-<UTC time>.json` (suffix `-2`, `-3`, ... if
  that name exists). The file is fully written under a temporary name and then hard-linked to its final name,
  which fails instead of replacing an existing file, so an earlier result is never overwritten, even by a
  concurrent eval.
- `evaluate_model(model_cfg, state_dict, tokenizer_info, run_dir, tasks, **options)`: export to a temporary
  folder, run, write; returns `(results, table, path)`. This is what `lmsprint eval RUN_DIR --tasks ...` calls.
  Char-tokenizer models are refused: lm-eval prefixes requests with an end-of-text token they do not have.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError, UserError
from ..export.hf import export_hf, hf_architecture
from ..export.hf_tokenizer import describe_tokenizer
from .results import list_results, summary_metrics, write_results  # noqa: F401  (re-exported)


_INSTALL_HINT = "pip install 'lmsprint[evals]'"


def _import_lm_eval():
    try:
        import lm_eval  # lazy: optional dependency (lmsprint[evals])
        import transformers  # noqa: F401  # lazy: optional dependency (lmsprint[evals]); lm-eval's `hf` model uses it
        from lm_eval.tasks import TaskManager  # lazy: optional dependency (lmsprint[evals])
    except ImportError as e:
        raise UserError(f"downstream evals need lm-evaluation-harness ({e}); {_INSTALL_HINT}")
    return lm_eval, TaskManager


def parse_tasks(tasks: Union[str, Sequence[str]]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ConfigError("`tasks` is empty; name at least one lm-eval task, e.g. `tasks` arc_easy,hellaswag")
    return names


def task_manager(tasks: Sequence[str], include_path: Optional[str] = None):
    """An lm-eval TaskManager that knows every task of `tasks`; ConfigError naming the unknown ones."""
    _, TaskManager = _import_lm_eval()
    if include_path is not None and not os.path.isdir(include_path):
        raise ConfigError(f"`include_path` {include_path} is not a folder; pass a folder of lm-eval task YAMLs")
    if include_path is not None:  # local tasks only: skip indexing lm-eval's built-in task files
        tm = TaskManager(include_path=include_path, include_defaults=False)
        if all(tm.match_tasks([t]) for t in tasks):
            return tm
    tm = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if not tm.match_tasks([t])]
    if unknown:
        where = f"lm-eval's tasks or {include_path}" if include_path else "lm-eval's tasks"
        raise ConfigError(f"`tasks` {','.join(unknown)} not found in {where}; see `lm_eval --tasks list`, or "
                          "pass a folder of task YAMLs with `include_path`")
    return tm


def expand_tasks(tm, names: Sequence[str]) -> list[str]:
    """Task names with each glob ('arc_*', 'tiny_?') replaced by the names it matches (sorted), without repeats."""
    out: list[str] = []
    for n in names:
        for t in tm.match_tasks([n]) if any(c in n for c in "*?[") else [n]:
            if t not in out:
                out.append(t)
    return out


def run_lm_eval(model_dir: str, tasks: Union[str, Sequence[str]], include_path: Optional[str] = None,
                limit: Optional[Union[int, float]] = None, num_fewshot: Optional[int] = None,
                batch_size: Union[int, str] = 1, device: str = "cpu", dtype: str = "float32",
                seed: int = 1234) -> dict:
    """Run lm-eval on the HF folder `model_dir`; returns lm-eval's results dict (JSON-serialisable parts)."""
    lm_eval, _ = _import_lm_eval()
    names = parse_tasks(tasks)
    tm = task_manager(names, include_path)
    names = expand_tasks(tm, names)  # lm-eval's loader takes names, not the globs its own CLI expands
    try:
        out = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": os.path.abspath(model_dir), "dtype": dtype},
            tasks=names, num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit,
            task_manager=tm, log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed)
    except FileNotFoundError as e:  # e.g. datasets' "Unable to find '/data/x.jsonl'" for a task's data_files
        where = f" (task YAMLs under {include_path})" if include_path else ""
        raise DataError(f"an lm-eval task's data is missing: {' '.join(str(e).split())}; check the task's "
                        f"dataset_path / data_files{where}")
    except ValueError as e:
        if "Duplicate task" not in str(e):
            raise
        raise ConfigError(f"`tasks` {','.join(names)}: {e}; name either a group or its tasks, not both")
    if out is None:  # non-zero ranks under distributed lm-eval
        return {}
    from lm_eval.utils import handle_non_serializable  # lazy: optional dependency (lmsprint[evals])

    return json.loads(json.dumps(dict(out), default=handle_non_serializable))


def results_table(results: Mapping) -> str:
    """lm-eval's markdown table of the results (and of groups, if any)."""
    from lm_eval.utils import make_table  # lazy: optional dependency (lmsprint[evals])

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


def evaluate_model(model_cfg, state_dict: Mapping[str, torch.Tensor], tokenizer_info, run_dir: str,
                   tasks: Union[str, Sequence[str]], **options) -> tuple[dict, str, str]:
    """Export the model to a temporary HF folder, run lm-eval on it (`options` as for `run_lm_eval`), write the
    results into run_dir. Returns (results, printable table, path of the result file)."""
    hf_architecture(model_cfg)  # refuse unexportable models before lm-eval is even imported
    if describe_tokenizer(tokenizer_info)["name"] == "char":
        raise ConfigError("`tokenizer` char has no end-of-text token, which lm-eval needs to prefix its requests; "
                          "downstream evals support models trained with `tokenizer` gpt2")
    names = parse_tasks(tasks)
    _import_lm_eval()  # a missing extra is reported before the export work
    with tempfile.TemporaryDirectory(prefix="lmsprint-eval-") as tmp:
        folder = os.path.join(tmp, "hf")
        export_hf(model_cfg, state_dict, tokenizer_info, folder)
        results = run_lm_eval(folder, names, **options)
    extra = {"tasks": names, **{k: v for k, v in options.items() if k != "include_path"},
             "include_path": os.path.abspath(options["include_path"]) if options.get("include_path") else None}
    path = write_results(run_dir, results, extra)
    return results, results_table(results), path


__all__ = ["run_lm_eval", "expand_tasks", "results_table", "summary_metrics", "write_results", "list_results",
           "evaluate_model", "parse_tasks", "task_manager"]

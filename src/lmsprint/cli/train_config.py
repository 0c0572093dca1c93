"""Which configuration a `lmsprint train` command runs, resolved without the training stack (no torch): a new
run's is preset < --config file < flags (`build_config`); a resumed run's is its own config.yaml with only the
flags that cannot change its numbers (`resume_safe`, or those named by --resume_override).

- `train_config(args, lock)`: (config, run_dir or None, overrides); UserError for what cannot be run.
- `print_config(args)`: `train --print_config`, which the parser sends here directly (`arguments.PRINT_CONFIG`),
  so it prints in well under a second.
"""

from __future__ import annotations

import os

from .. import rundir
from ..config import FLAGS, build_config, coerce, config_yaml, get_value, set_value
from ..errors import UserError
from ..training.resume import RESUME_SAFE, parse_overrides  # light: config and errors only

_NOT_CONFIG = ("command", "_run", "config", "resume", "resume_override")


def cli_values(args) -> dict:
    """The config flags the user typed (config flag defaults are SUPPRESS, so only those are in `args`)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


def resume_config(run_dir: str, values: dict, overrides=frozenset()):
    """The run's saved config with the harmless CLI overrides (and those named in `overrides`) applied; UserError
    for any other change."""
    cfg = rundir.read_config(run_dir)
    changed = []
    for name, raw in values.items():
        if name not in FLAGS:
            continue
        value = coerce(name, raw)
        if name in RESUME_SAFE or name in overrides:
            set_value(cfg, name, value)
        elif value != get_value(cfg, name):
            changed.append(f"--{name}")
    if changed:
        raise UserError(f"--resume continues {run_dir} with its own config; {', '.join(changed)} would change the "
                        f"run (only {', '.join(sorted('--' + s for s in RESUME_SAFE if s != 'results_base_folder'))}"
                        " may be given); start a new run instead, or accept the change with --resume_override "
                        f"{','.join(c.lstrip('-') for c in changed)}")
    return cfg.validate()


def train_config(args, lock: bool = True):
    """(config, run_dir, overrides) of a train command: a new run's config (run_dir None), or with --resume the
    run's own (its folder locked against a second trainer when `lock`, on rank 0 under torchrun)."""
    values = cli_values(args)
    overrides = parse_overrides(args.resume_override)
    if overrides and not args.resume:
        raise UserError("--resume_override only applies with --resume; drop it or add --resume RUN_DIR")
    if not args.resume:
        cfg = build_config(values, args.config)
        rundir.check_run_name(cfg)  # a name that is no plain folder name is refused before any work
        return cfg, None, overrides
    if args.config:
        raise UserError("--config cannot be combined with --resume (a resumed run uses its own config.yaml); "
                        "drop --config")
    base = values.get("results_base_folder", get_value(build_config({}), "results_base_folder"))
    run_dir = rundir.resolve_run_dir(args.resume, base)
    if lock and os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds the lock for all ranks
        rundir.lock_run_dir(run_dir)  # a run another process is training is refused here, in one line
    summary = rundir.read_summary(run_dir) or {}
    if summary.get("status") == "complete":
        raise UserError(f"run {run_dir} is already complete; start a new run instead of --resume")
    cfg = resume_config(run_dir, values, overrides)
    if not rundir.has_checkpoint(run_dir):
        raise UserError(f"checkpoint {rundir.checkpoint_path(run_dir)} is missing or corrupt (no such file); the "
                        "run stopped before its first checkpoint: start a new run instead of --resume")
    return cfg, run_dir, overrides


def print_config(args) -> int:
    """`lmsprint train ... --print_config`: the resolved config as YAML; nothing is run, locked or written."""
    cfg, _, _ = train_config(args, lock=False)
    print(config_yaml(cfg), end="")
    return 0

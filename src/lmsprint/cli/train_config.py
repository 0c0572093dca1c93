"""Which configuration a `lmsprint train` command runs, resolved without the training stack (no torch): a new
run's is preset < --config file < flags (`build_config`); a resumed run's is its own config.yaml with only the
flags that cannot change its numbers (`resume_safe`, or those named by --resume_override).

- `train_config(args, lock)`: (config, run_dir or None, overrides); UserError for what cannot be run.
- `print_config(args)`: `train --print_config`, which the parser sends here directly (`arguments.PRINT_CONFIG`),
  so it prints in well under a second.
"""

from __future__ import annotations

from .. import rundir
from ..config import build_config, config_yaml, get_value
from ..errors import UserError
from ..training.resume import open_resume, parse_overrides  # light: config, rundir and errors only

_NOT_CONFIG = ("command", "_run", "config", "resume", "resume_override")


def cli_values(args) -> dict:
    """The config flags the user typed (config flag defaults are SUPPRESS, so only those are in `args`)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


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
    run_dir, cfg = open_resume(args.resume, base, values, overrides, lock)  # as lmsprint.train(resume=) does
    return cfg, run_dir, overrides


def print_config(args) -> int:
    """`lmsprint train ... --print_config`: the resolved config as YAML; nothing is run, locked or written."""
    cfg, _, _ = train_config(args, lock=False)
    print(config_yaml(cfg), end="")
    return 0

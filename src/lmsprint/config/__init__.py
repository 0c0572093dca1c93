"""The one typed configuration tree of a run, and everything generated from it.

`RunConfig = {data, model{attn, moe}, optim, train, log}`. Each option is a dataclass field defined once with
every fact about its flag (`option()`): help, choices, checks, bounds, resume_safe, bookkeeping, sweep_reserved,
name_part. From the tree come the `lmsprint train` flags, config files, presets, the saved run config, the lists of
resume-safe / bookkeeping / sweep-reserved flags (`flags_where`) and the derived run name (`run_name_parts`).

Precedence, lowest first: dataclass defaults < `--config_format` preset < `--config FILE` < CLI flags.
Invalid values raise `ConfigError` with one line naming the option and what to do.

Modules (imports flow down this list): options.py (one option: metadata, checks, parsing, conversion) ->
validate.py (field checks + pure-config cross-field rules) -> schema.py (the tree, FLAGS, access by flag name) ->
presets.py -> io.py (config files, build_config) -> flags.py (argparse); sampling.py (the options of sampling
from a trained model, `lmsprint generate`'s and the API's) uses options.py alone.
"""

from .flags import SuggestingParser, add_flags
from .io import build_config, config_yaml, load_config_file, load_yaml
from .options import iter_fields, option, parse_bool, parse_duration
from .presets import PRESETS
from .schema import (AUTO, FLAGS, RESUME_SAFE, AttentionConfig, DataConfig, LogConfig, ModelConfig, MoEConfig,
                     OptimConfig, RunConfig, TrainConfig, apply_values, checkpoint_steps, coerce, flags_where, flatten,
                     get_value, run_name_parts, set_value, typed, unknown_option_error)

__all__ = ["RunConfig", "DataConfig", "ModelConfig", "AttentionConfig", "MoEConfig", "OptimConfig", "TrainConfig",
           "LogConfig", "option", "FLAGS", "iter_fields", "get_value", "set_value", "coerce", "parse_duration",
           "parse_bool", "flatten", "apply_values", "build_config", "load_config_file", "add_flags",
           "SuggestingParser", "unknown_option_error", "PRESETS", "flags_where", "run_name_parts", "config_yaml",
           "AUTO", "RESUME_SAFE", "typed", "checkpoint_steps", "load_yaml"]

"""Where a config's values come from: YAML/TOML config files, and the layering that builds a validated config.

- `load_config_file(path)`: a `.yaml`/`.yml`/`.toml` file (flat or nested keys) -> flat {flag: value}.
- `config_yaml(cfg)`: the resolved config as YAML.
- `build_config(cli_values, config_file)`: dataclass defaults < `--config_format` preset < config file < CLI flags,
  then `RunConfig.validate()`.
The resolved config saved in each run directory round-trips through `RunConfig.to_dict()` / `RunConfig.from_dict()`
(schema.py).
"""

from __future__ import annotations

import os
from typing import Optional

try:
    import tomllib  # the standard library's TOML reader, Python >= 3.11
except ModuleNotFoundError:  # Python 3.10: YAML config files only
    tomllib = None

from ..errors import ConfigError, UserError
from .presets import PRESETS
from .schema import RunConfig, apply_values, flatten


def load_config_file(path: str) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a flat {flag: value} dict."""
    # lazy: `lmsprint bench` must run on a bare GPU box with only torch, numpy and tiktoken installed
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found; pass an existing .yaml/.yml/.toml file to --config")
    try:
        if path.endswith(".toml"):
            if tomllib is None:
                raise UserError(f"config file '{path}': TOML needs Python >= 3.11; use a .yaml file instead")
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        else:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
    except UserError:
        raise
    except Exception as e:  # parse errors of either format
        raise UserError(f"cannot parse config file '{path}': {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of flag names to values")
    return flatten(data)


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as the YAML a run directory's config.yaml holds (what `train --print_config` prints)."""
    import yaml  # lazy: see load_config_file

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def build_config(cli_values: dict, config_file: Optional[str] = None) -> RunConfig:
    """defaults < preset(config_format) < config file < CLI; then validate."""
    file_values = load_config_file(config_file) if config_file else {}
    fmt = cli_values.get("config_format", file_values.get("config_format", "base"))
    if fmt not in PRESETS:
        raise ConfigError(f"`config_format` '{fmt}' is not one of: {', '.join(PRESETS)}")
    cfg = RunConfig()
    apply_values(cfg, dict(PRESETS[fmt]), source="preset")
    apply_values(cfg, file_values, source="config")
    apply_values(cfg, cli_values, source="flag")
    cfg.config_format = fmt
    return cfg.validate()

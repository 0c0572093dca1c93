"""Where a config's values come from: YAML/TOML config files, and the layering that builds a validated config.

- `load_config_file(path)`: a `.yaml`/`.yml`/`.toml` file (flat or nested keys) -> flat {flag: value}. Strict:
  each refusal is one line naming the file and the key. A YAML alias (`*name`, which also defeats "billion laughs"
  files) or a key given twice in one mapping is refused by the loader; a section that is not one of the config
  tree's (data, model, attn, moe, optim, train, log, at their place in the tree), an option under another section
  than its own, an option given twice (flat and nested, or under its own name and another name such as nanoGPT's
  `learning_rate` for `lr`) and a `resume:` value (a run is continued with `--resume`) are refused by `file_values`.
- `load_yaml(text)`: the one strict YAML reader (no aliases, no duplicate keys), also for a run's config.yaml
  (rundir.py).
- `config_yaml(cfg)`: the resolved config as YAML.
- `build_config(cli_values, config_file)`: dataclass defaults < `--config_format` preset < config file < CLI flags,
  then `RunConfig.validate()`.
The resolved config saved in each run directory round-trips through `RunConfig.to_dict()` / `RunConfig.from_dict()`
(schema.py).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Optional

try:
    import tomllib  # the standard library's TOML reader, Python >= 3.11
except ModuleNotFoundError:  # Python 3.10: YAML config files only
    tomllib = None

from ..errors import ConfigError, UserError
from .presets import PRESETS
from .schema import ALIASES, FLAGS, RunConfig, apply_values, unknown_option_error

# `resume:` in a saved config.yaml is null (kept so that a run's config.yaml loads with --config); any other value
# would continue a run from a config file, which only `lmsprint train --resume RUN_DIR` does
RESUME_KEY = "resume"


def _sections(cls=RunConfig, prefix: tuple = ()) -> dict:
    """{section path: its child section names} of the config tree, e.g. {(): {'data', 'model', ...}, ('model',):
    {'attn', 'moe'}, ...}."""
    out = {prefix: set()}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out[prefix].add(f.name)
            out.update(_sections(tp, prefix + (f.name,)))
    return out


SECTIONS = _sections()


def file_values(data: dict, path: str) -> dict:
    """A config file's (possibly nested) mapping -> flat {flag: value}, refusing what would otherwise be silently
    ignored or overridden (see the module doc); UserError naming the file and the key."""
    out: dict = {}
    where: dict = {}  # flag -> how the file wrote it ("optim.lr", "learning_rate")

    def walk(d: dict, section: tuple) -> None:
        for key, value in d.items():
            dotted = ".".join(section + (str(key),))
            if isinstance(value, dict):
                if key not in SECTIONS[section]:
                    known = ", ".join(sorted(SECTIONS[section])) or "none"
                    home = [".".join(p) for p in SECTIONS if p and p[-1] == key]
                    what = (f"option '{key}' holds a mapping" if (key in FLAGS or key in ALIASES) else
                            f"section '{dotted}' belongs under '{home[0][:-len(key) - 1]}'" if home else
                            f"unknown section '{dotted}'")
                    raise UserError(f"config file '{path}': {what}; the sections here are: {known} (or write the "
                                    "options flat, e.g. lr: 0.001)")
                walk(value, section + (key,))
                continue
            if key == RESUME_KEY:
                if value is None:
                    continue
                raise UserError(f"config file '{path}': key '{dotted}': a config file cannot continue a run; use "
                                f"`lmsprint train --resume {value}` (and drop that key from the file)")
            name = ALIASES.get(key, key)
            if name not in FLAGS:
                raise UserError(f"config file '{path}': {unknown_option_error(str(key), 'config key').template}")
            home = FLAGS[name][0][:-1]
            if home[:len(section)] != section:
                raise UserError(f"config file '{path}': key '{dotted}' is under the wrong section: '{key}' belongs "
                                f"under '{'.'.join(home)}' (or write it flat)")
            if name in out:
                raise UserError(f"config file '{path}': '{where[name]}' and '{dotted}' set the same option "
                                f"`{name}`; keep one of them")
            out[name], where[name] = value, dotted

    walk(data, ())
    return out


def _yaml_loader():
    """PyYAML's SafeLoader without aliases (an alias can make a 1 KB file expand to gigabytes: "billion laughs")
    and without duplicate keys (PyYAML keeps the last one silently)."""
    import yaml  # lazy: see load_config_file

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise UserError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted "
                                "in config files; write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise UserError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice in the same "
                                    f"mapping (first on line {seen[key]}); keep one of them")
                seen.setdefault(key, key_node.start_mark.line + 1)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_yaml(source):
    """YAML text (or an open text file) -> the data it holds, read by lmsprint's one strict loader (`_yaml_loader`:
    no aliases, no key given twice in one mapping, each refused as UserError 'line N: ...'); a malformed file raises
    PyYAML's own YAMLError. Used for config files and for a run directory's config.yaml alike."""
    loader = _yaml_loader()(source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config_file(path: str) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a flat {flag: value} dict (strict: see the module doc)."""
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
                # lazy (inside _yaml_loader): `lmsprint bench` must run on a bare GPU box with only torch, numpy and
                # tiktoken installed
                data = load_yaml(fh) or {}
    except UserError as e:
        raise UserError(f"config file '{path}' {e.template}" if e.template.startswith("line ") else e.template)
    except Exception as e:  # parse errors of either format
        raise UserError(f"cannot parse config file '{path}': {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of flag names to values")
    return file_values(data, path)


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as the YAML a run directory's config.yaml holds (what `train --print_config` prints)."""
    import yaml  # lazy: see load_config_file

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def build_config(cli_values: dict, config_file: Optional[str] = None) -> RunConfig:
    """defaults < preset(config_format) < config file < CLI; then validate."""
    from_file = load_config_file(config_file) if config_file else {}
    fmt = cli_values.get("config_format", from_file.get("config_format", "base"))
    if not isinstance(fmt, str) or fmt not in PRESETS:  # a YAML list or mapping is no preset name either
        raise ConfigError(f"`config_format` '{fmt}' is not one of: {', '.join(PRESETS)}")
    cfg = RunConfig()
    apply_values(cfg, dict(PRESETS[fmt]), source="preset")
    try:
        apply_values(cfg, from_file, source="config")
    except UserError as e:  # a value the option refuses: say which file it came from
        raise type(e)(f"config file '{config_file}': {e.template}") from None
    apply_values(cfg, cli_values, source="flag")
    cfg.config_format = fmt
    return cfg.validate()

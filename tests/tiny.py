"""The one tiny shape that tests build models, configs and runs from; each test overrides only what it is about.

`tiny_config(**overrides)` gives a validated RunConfig (`validate=False`: options applied with their type checks
only, for tests that hand a deliberately bad combination to the model); `tiny_flags(**overrides)` gives the same
values as `lmsprint train` flags. The `tiny` fixture in conftest.py returns `tiny_config`.
"""

from lmsprint.config import RunConfig, apply_values, build_config

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 4, "sequence_length": 32, "vocab_size": 64, "batch_size": 2,
        "acc_steps": 1}


def tiny_config(validate: bool = True, **overrides) -> RunConfig:
    values = {**TINY, **overrides}
    if validate:
        return build_config(values)
    cfg = RunConfig()
    apply_values(cfg, values)
    return cfg


def tiny_flags(**overrides) -> list:
    return [item for k, v in {**TINY, **overrides}.items() for item in (f"--{k}", str(v))]

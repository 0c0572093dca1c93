"""How text is sampled from a trained model: the options `lmsprint generate` takes as flags and the Python API's
`LoadedModel.generate` takes as arguments of the same names, each declared once (`option()` fields, config/options.py)
so that both keep the same rules (a seed in 0 .. 2**63-1, a temperature of 0 or >= MIN_TEMPERATURE, ...).

`SamplingOptions`: prompt, max_new_tokens, temperature, top_k, seed (cli/arguments.py's `GenerateOptions` adds
where the run is found and how many samples).
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import SEED_MAX, nonneg, option, temperature_problem


@dataclass
class SamplingOptions:
    prompt: str = option("", "text to continue (default: start of text)")
    max_new_tokens: int = option(200, "tokens to generate", check=nonneg)
    temperature: float = option(0.8, "sampling temperature; 0 = greedy", check=temperature_problem)
    top_k: int = option(200, "sample among the k most likely tokens; 0 = all", check=nonneg)
    seed: int = option(0, "sampling seed", bounds=(0, SEED_MAX))

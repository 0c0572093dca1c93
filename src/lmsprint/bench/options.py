"""The flags of one bench measurement, each defined once with its facts (`option(...)`), and the parser part
they make: `add_measure_arguments(parser)` adds them, `--config` and the run/model/optim/train flags of
`lmsprint train`. Light on purpose (the config package only, no torch): `lmsprint bench --help` and the CLI's
parse path import it; `measure.py` does the work and `suite.py` parses each config's flags with it.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Optional

from ..config import add_flags, option
from ..config.flags import add_options
from ..config.options import nonneg, positive

SECTIONS = ("run", "model", "optim", "train")  # the config sections whose train flags a bench run takes


def _backend_name(v: str) -> Optional[str]:
    # the spelling only; whether torch has such a backend is checked when the bench runs (hw.check_compile_backend)
    return None if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*", v) else "is not a torch.compile backend name"


@dataclass
class MeasureOptions:
    """The options of one measurement (the `bench options` group)."""

    warmup: Optional[int] = option(None, "untimed steps first (default: 3; compile happens here)", check=nonneg)
    steps: Optional[int] = option(None, "timed steps (default: 10)", check=positive)
    check_sync: bool = option(False, "fail on host-device syncs in timed steps (CUDA: "
                              "torch.cuda.set_sync_debug_mode('error')); also counts .item()/.cpu()/bool() calls")
    peak_flops: Optional[float] = option(None, "accelerator peak FLOP/s for MFU (default: from the GPU's name, e.g. "
                                         "H100 SXM 989e12)", check=positive)
    measure_peak: bool = option(False, "measure the peak with a large bf16 matmul instead")
    compile_backend: Optional[str] = option(None, "torch.compile backend with --compile (default inductor; --suite "
                                            "cpu defaults to aot_eager, which traces like inductor but compiles in "
                                            "seconds)", check=_backend_name, metavar="NAME")
    reference: bool = option(False, "time the hackathon llm-baselines step instead of lmsprint's (eager unless "
                             "--compile, full-logits cross-entropy, its AdamW groups, bf16 autocast): the suite's "
                             "in-run reference row")
    config: Optional[str] = option(None, "YAML/TOML config file (as in lmsprint train)", metavar="FILE")


def add_measure_arguments(parser: argparse.ArgumentParser):
    """The options of one measurement (+ --config and the run/model/optim/train flags); returns their group."""
    g = add_options(parser, MeasureOptions, "bench")
    add_flags(parser, sections=SECTIONS)
    return g

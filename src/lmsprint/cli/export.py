"""The `lmsprint export` subcommand: a run directory -> a Hugging Face `transformers` folder.

`lmsprint export RUN_DIR|latest OUT_DIR [--checkpoint NAME] [--dtype float32|bfloat16|float16]` writes config.json,
model.safetensors and the tokenizer files (`lmsprint.export.export_hf`), so that
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` and `AutoTokenizer.from_pretrained(OUT_DIR)` load it offline.
It reads only the run directory (weights, config.yaml, tokenizer_info.json): no data cache, no network. A model
Hugging Face cannot express is refused in one line naming the flag, before any weights are read; OUT_DIR must
not exist or be empty (nothing of the user's is overwritten), unless `--force` is given: then the export's files
replace those of the same names in OUT_DIR and its other files stay. An empty OUT_DIR ('') is refused without
`--force` (it would mean the current folder). The weights are checked against config.yaml first (names, shapes,
finite values: `training.artifacts.check_weights`), so weights of another model are never exported. The flags are
`arguments.ExportOptions`.
"""

from __future__ import annotations

import os

import torch

from .. import rundir
from ..errors import UserError
from ..export import export_hf, hf_architecture
from ..export.hf import check_out_dir
from ..training.artifacts import load_run_weights, run_tokenizer_info

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_export(args) -> int:
    if not args.out_dir.strip() and not args.force:
        raise UserError("OUT_DIR is empty (''), which would write into the current folder; name a new folder, or "
                        "pass --force to write into the current one")
    run_dir = rundir.resolve_run_dir(args.run_dir, args.results_base_folder)
    cfg = rundir.read_config(run_dir)
    arch = hf_architecture(cfg.model)  # refuse what Hugging Face cannot express before reading any weights
    check_out_dir(args.out_dir or ".", args.force)  # before the weights are read: a refusal costs nothing
    info = run_tokenizer_info(run_dir, cfg)
    state_dict, step, source = load_run_weights(run_dir, args.checkpoint, cfg.model)  # checked: shapes, finite
    export_hf(cfg.model, state_dict, info, args.out_dir or ".", DTYPES[args.dtype], force=args.force)
    print(f"exported {run_dir} (step {step}, {os.path.relpath(source, run_dir)}) as {arch} to {args.out_dir}")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({args.out_dir!r}) and "
          f"AutoTokenizer.from_pretrained({args.out_dir!r})")
    return 0

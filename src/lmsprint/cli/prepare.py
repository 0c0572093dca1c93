"""The `prepare` subcommand: tokenize a dataset into token files + manifest (or measure the tokenizer's speed).
Its flags: the data options of the config tree and `arguments.PrepareOptions`."""

from __future__ import annotations

import os
import time

from ..config import FLAGS, build_config
from ..data.encode import measure_tokenize_speed
from ..data.manifest import verify_manifest
from ..data.prepare import prepare
from ..errors import plural


def run_prepare(args) -> int:
    values = {k: v for k, v in vars(args).items() if k in FLAGS}
    cfg = build_config(values, args.config)
    if args.bench_tokenizer:
        r = measure_tokenize_speed(10.0, cfg.data.num_proc or os.cpu_count() or 1)
        print(f"tokenize {r['megabytes']:.1f} MB ({r['tokens']:,} gpt2 tokens): 1 process {r['single_mb_per_s']:.2f} "
              f"MB/s, {plural(r['num_proc'], 'process')} {r['parallel_mb_per_s']:.2f} MB/s, "
              f"speedup {r['speedup']:.2f}x "
              f"(best of {r['repeats']}; pool start {r.get('pool_start_s', 0):.2f}s not included; CPU time: "
              f"{r['single_cpu_s']:.2f}s vs {r['parallel_cpu_s']:.2f}s, {r['cpu_bound_speedup']:.2f}x on idle cores)")
        return 0
    m = prepare(cfg.data, progress=not args.quiet)
    print(m.summary())
    if args.verify:
        t0 = time.perf_counter()
        verify_manifest(m, full=True)
        size = os.path.getsize(m.train_path) + os.path.getsize(m.val_path)
        print(f"verified    train.bin and val.bin match the manifest's SHA-256 ({size / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.2f}s)")
    return 0

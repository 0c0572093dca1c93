#!/usr/bin/env bash
# The one command to run on a GPU box: installs lmsprint without touching the box's torch, then runs the
# benchmark suite (about 8 minutes on one H100/H200) and writes bench-results/bench.{json,md}.
# Needs only torch, numpy and tiktoken. Extra arguments go to `lmsprint bench`, e.g. --only moe.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -e . --no-deps --quiet
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.__version__, torch.cuda.get_device_name())"
python -m lmsprint bench --suite gpu --out "${BENCH_OUT:-bench-results}" "$@"

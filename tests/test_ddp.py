"""Data parallelism on CPU with real torch.distributed (gloo): `torchrun --nproc_per_node 2 -m lmsprint train`
with batch B per process follows the same loss curve as one process with batch 2B (same global batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FLAGS = ["--config_format", "demo", "--n_layer", "2", "--n_embd", "32", "--n_head", "4", "--sequence_length", "32",
         "--acc_steps", "1", "--iterations", "6", "--time_budget", "0", "--log_interval", "1", "--eval_freq", "3",
         "--eval_tokens", "512", "--final_eval", "fixed", "--sample_tokens", "0", "--progress", "false",
         "--exp_name", "r", "--device", "cpu"]


def _rows(run_dir, key):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [r[key] for r in map(json.loads, fh) if key in r]


# the research options together (the balance loss is left out: it is a non-linear function of the batch, so
# per-process batches legitimately give a slightly different value; the query shuffle is random per batch)
OPTIONS = ["--model", "llama2", "--moe_num_experts", "4", "--moe_num_experts_per_tok", "2", "--moe_aux_loss_factor", "0",
           "--attention", "local", "--attention_window", "8", "--orthogonal_qkv", "--label_smoothing", "0.1",
           "--opt", "lion", "--lr", "1e-4"]


@pytest.mark.parametrize("options", [[], OPTIONS], ids=["base", "llama2-moe-local-orthogonal-smoothing-lion"])
def test_two_gloo_processes_match_one_process_with_twice_the_batch(shakespeare_manifest, tmp_path, options):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    d = ["--dataset", shakespeare_manifest.dir, *options]
    one = subprocess.Popen([sys.executable, "-m", "lmsprint", "train", *FLAGS, *d, "--batch_size", "4",
                            "--results_base_folder", str(tmp_path / "one")], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "lmsprint", "train", *FLAGS, *d, "--batch_size", "2",
                            "--results_base_folder", str(tmp_path / "two")], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for p in (one, two):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert os.listdir(tmp_path / "two") == os.listdir(tmp_path / "one")  # one run dir (+ pointer), written by rank 0
    r1, r2 = str(tmp_path / "one" / "r"), str(tmp_path / "two" / "r")
    l1, l2 = _rows(r1, "train/loss"), _rows(r2, "train/loss")
    assert len(l1) == len(l2) == 6
    assert all(abs(a - b) < 1e-4 for a, b in zip(l1, l2)), (l1, l2)
    assert l1[0] != l1[-1]  # the curve moves: the comparison is not of constants
    v1, v2 = _rows(r1, "val/loss"), _rows(r2, "val/loss")
    assert len(v1) == len(v2) == 2 and all(abs(a - b) < 1e-4 for a, b in zip(v1, v2))
    with open(os.path.join(r2, "summary.json")) as fh:
        s = json.load(fh)
    assert s["status"] == "complete" and s["world_size"] == 2 and s["tokens"] == 6 * 4 * 32

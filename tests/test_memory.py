"""The computed memory table (bench/memory.py) against what a real tiny model holds on CPU: the bytes autograd
saves in a bf16-autocast training forward (saved_tensors_hooks, storages counted once, parameters left out) equal
activations + the loss's saved gradients + autocast's weight copies; gradient and AdamW state bytes are counted
from real tensors after a step; `lmsprint bench --memory` prints the table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmsprint.bench.memory import (SHAPES, activation_bytes, autocast_copy_bytes, loss_saved_bytes, memory_table,
                                   meta_model)
from lmsprint.config import OptimConfig
from lmsprint.model.loss import lm_loss
from lmsprint.model.transformer import Transformer
from lmsprint.optim import optimizer_state_bytes
from lmsprint.optim.optimizers import build_optimizer


def saved_bytes(model, idx) -> int:
    """Bytes of the distinct storages autograd saves in a bf16-autocast forward + loss, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        h, _ = model(idx)
        out = lm_loss(h, model.head_weight, idx)
    out.loss.backward()  # the saved tensors are the ones backward really uses
    return sum(seen.values())


@pytest.mark.parametrize("batch", [2, 3])
def test_activation_formula_equals_the_saved_tensors_of_a_real_forward(tiny, batch, one_thread):
    cfg = tiny().model
    torch.manual_seed(0)
    model = Transformer(cfg)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.sequence_length))
    expected = (activation_bytes(cfg, batch) + loss_saved_bytes(idx.numel(), cfg.vocab_size, cfg.n_embd)
                + autocast_copy_bytes(model))
    assert saved_bytes(model, idx) == expected


def test_weights_gradients_and_adamw_state_counted_from_real_tensors(tiny, one_thread):
    cfg = tiny()
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    opt = build_optimizer(model, OptimConfig(opt="adamw"))
    idx = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.sequence_length))
    h, _ = model(idx)
    lm_loss(h, model.head_weight, idx).loss.backward()
    opt.step()
    P = sum(p.numel() for p in model.parameters())
    assert meta_model(cfg.model).num_params() == P == model.num_params()
    assert sum(p.grad.nbytes for p in model.parameters()) == 4 * P
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    assert state == optimizer_state_bytes(OptimConfig(opt="adamw"), model) == 8 * P  # the step counters: scalars


def test_table_rows_shard_what_fsdp_shards():
    ddp = memory_table(world_size=8, mode="ddp")
    fsdp8, fsdp1 = memory_table(world_size=8, mode="fsdp"), memory_table(world_size=1, mode="fsdp")
    assert [r["shape"] for r in ddp] == list(SHAPES)
    assert [round(r["params"] / 1e6) for r in ddp] == [124, 354, 1312]
    for d, f8, f1 in zip(ddp, fsdp8, fsdp1):
        assert d["optimizer"] == 8 * d["params"] and f8["optimizer"] == -(-d["optimizer"] // 8)
        assert d["activations"] == f8["activations"] and d["loss"] == f8["loss"]  # per-GPU micro-batch: not sharded
        assert f8["weights"] < f1["weights"] and f8["grads"] < f1["grads"] < d["grads"]
        assert f8["total"] < d["total"]


@pytest.mark.slow
def test_bench_memory_prints_the_table():
    p = subprocess.run([sys.executable, "-m", "lmsprint", "bench", "--memory", "--world_size", "4", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [(r["shape"], r["mode"]) for r in rows] == [(s, m) for m in ("ddp", "fsdp") for s in SHAPES]
    assert rows == memory_table(world_size=4, mode="ddp") + memory_table(world_size=4, mode="fsdp")

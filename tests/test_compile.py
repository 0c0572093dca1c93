"""torch.compile(fullgraph=True) of the models and the chunked loss, and a training step free of host syncs."""

import os
import time

import pytest
import torch

from lmsprint.bench.measure import build_bench_step, synthetic_batches
from lmsprint.hw import count_host_syncs, host_resident
from lmsprint.model.loss import lm_loss
from lmsprint.model.transformer import Transformer
from lmsprint.track.sinks import Sinks
from lmsprint.training.distributed import World
from lmsprint.training.step import LossHead
from lmsprint.training.trainer import Trainer
from tiny import tiny_config

TINY = {"n_embd": 64, "vocab_size": 128, "acc_steps": 2}  # overrides of the shared tiny shape (tests/tiny.py)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["base", "llama2"])
def test_model_and_loss_compile_fullgraph(model):
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = tiny_config(**TINY, model=model, label_smoothing=0.1, loss_chunk=16)
    net = Transformer(cfg.model)
    head = LossHead(net, cfg.train.label_smoothing, cfg.train.loss_chunk)
    x = torch.randint(0, 128, (2, 32))
    y = torch.randint(0, 128, (2, 32))
    ref = head(x, y)[0]
    ref.backward()
    ref_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    out = compiled(x, y)[0]
    out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for p, g in zip(net.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_chunked_loss_compiles_with_inductor():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(48, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (48,), generator=g)
    fn = torch.compile(lambda h, w, t: lm_loss(h, w, t, 0.1, 16).loss, fullgraph=True)
    t0 = time.perf_counter()
    loss = fn(h, w, t)
    loss.backward()
    elapsed = time.perf_counter() - t0
    ref = lm_loss(h.detach(), w.detach(), t, 0.1, 16).loss
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-5)
    assert h.grad is not None and w.grad is not None
    assert elapsed < 120, f"inductor compile of the loss took {elapsed:.0f}s"


def test_sync_counter_detects_syncs():
    x = torch.randn(8)
    with count_host_syncs() as c:
        x.sum().item()
        bool(x.max() > 0)
        x[x > 0]
        x.tolist()
    assert c["item"] == 1 and c["__bool__"] == 1 and c["tolist"] == 1 and c.get("aten.nonzero", 0) + c.get("aten.index", 0) >= 1


@pytest.mark.parametrize("moe", [0, 4])
def test_bench_step_has_no_host_sync(moe):
    cfg = tiny_config(**TINY, model="llama2", moe_num_experts=moe, grad_clip=1.0)
    step = build_bench_step(cfg, torch.device("cpu"))
    data = synthetic_batches(step, 2)
    step(*data[0])  # creates optimizer state
    with count_host_syncs(exempt=host_resident(step.device, step.optimizer)) as counts:
        for i in range(2):
            step(*data[i])
    assert sum(counts.values()) == 0, counts


@pytest.mark.slow
def test_training_loop_step_has_no_host_sync(shakespeare_manifest, tmp_path):
    """lmsprint.training.trainer.Trainer.train_step at non-log steps: no .item()/.tolist()/.cpu()/bool() on tensors."""
    cfg = tiny_config(**{**TINY, "vocab_size": shakespeare_manifest.n_vocab, "dataset": "shakespeare",
                        "data_dir": os.path.dirname(shakespeare_manifest.dir), "results_base_folder": str(tmp_path),
                        "progress": False, "iterations": 10, "grad_clip": 1.0, "device": "cpu"})
    tr = Trainer(cfg, World(device="cpu"), Sinks)
    tr.setup()
    tr.train_step()

    exempt = host_resident("cpu", tr.opt)
    with count_host_syncs(exempt=exempt) as counts:
        tr.train_step()
        tr.train_step()
    assert tr.clock.step == 3
    assert sum(counts.values()) == 0, counts
    with count_host_syncs(exempt=exempt) as counts:  # a log step does read the accumulators
        tr.flush_train_log(1, 1.0)
    assert sum(counts.values()) > 0

"""The suite's in-run reference (`bench/reference.py`): llm-baselines' training step around lmsprint's model.

Checked against llm-baselines' own rules, written out here: its AdamW groups (decay exactly for the weights of
linear layers), its loss (full-logits cross-entropy, `ignore_index=-1`), its OneCycleLR, and the same update as
lmsprint's step when both run the same math (float32, constant lr).
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmsprint.bench.measure import bench_config, build_bench_step, synthetic_batches
from lmsprint.bench.reference import ReferenceStep, reference_param_groups, reference_problems
from lmsprint.errors import ConfigError, cli_message
from lmsprint.model.transformer import Transformer
from lmsprint.optim.schedules import lr_multiplier
from lmsprint.training.step import accumulate_gradients, apply_update

pytestmark = pytest.mark.usefixtures("one_thread")


def llm_baselines_decay_names(model: nn.Module) -> set:
    """llm-baselines' `get_parameter_group_specs`: weights of nn.Linear decay; biases, norms and embeddings don't."""
    decay = set()
    for mn, m in model.named_modules():
        for pn, _ in m.named_parameters(recurse=False):
            if pn == "weight" and isinstance(m, nn.Linear):
                decay.add(f"{mn}.{pn}" if mn else pn)
    return decay


@pytest.mark.parametrize("model", ["base", "llama2"])
def test_param_groups_are_llm_baselines(tiny, model):
    net = Transformer(tiny(model=model).model)
    decay, rest = reference_param_groups(net, 0.1)
    names = {id(p): n for n, p in net.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == llm_baselines_decay_names(net)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert len(decay["params"]) + len(rest["params"]) == len(list(net.parameters()))  # the tied head once


def test_loss_is_full_logits_cross_entropy(tiny):
    cfg = tiny(model="base")
    torch.manual_seed(0)
    step = ReferenceStep(cfg, Transformer(cfg.model), "cpu")
    x = torch.randint(0, 64, (2, 32))
    y = torch.randint(0, 64, (2, 32))
    want = F.cross_entropy(step.model.logits(x).view(-1, 64), y.view(-1))
    assert torch.equal(step.loss(x, y), want)


EPS32 = torch.finfo(torch.float32).eps


def gradient_rounding_bound(cfg) -> float:
    """How far the two steps' gradients may differ, as a multiple of the largest gradient, from float32 rounding.

    Both compute the same gradient in another order: lmsprint's head and cross-entropy in chunks, a summed CE divided
    by the token count; the reference's full logits and a mean. Each rounded operation on the way adds at most one
    epsilon of the values it combines, so the bound is EPS32 times the operations along the backward path: the
    softmax's reduction over V logits (log2 V levels), the mean over the B*T tokens of a micro-batch and the sum over
    acc_steps micro-batches (log2 of their product), and in each layer 4 matmuls (attention in and out, MLP in and
    out), each a reduction log2(4d) deep. For the tiny shape: 6 + 7 + 2 * 4 * 7 = 69 epsilons; the measured
    difference is 0.7-1.5 epsilons (both presets, seeds 0-2, 3 steps each)."""
    m, t = cfg.model, cfg.train
    ops = (math.log2(m.vocab_size) + math.log2(t.batch_size * m.sequence_length * t.acc_steps)
           + m.n_layer * 4 * math.log2(4 * m.n_embd))
    return ops * EPS32


@pytest.mark.parametrize("model", ["base", "llama2"])
def test_update_equals_lmsprint_step_in_float32(tiny, model):
    """Same weights, same batches, constant lr, AdamW, two steps: each step's gradients agree within float32
    rounding (`gradient_rounding_bound`), and the same gradients give bit-identical updates.

    The weights after the steps are not compared with a tolerance, because none can be argued: AdamW divides each
    gradient by sqrt(v) + eps, so an element whose gradient is near eps (1e-8) moves by up to lr * dg / eps, and a
    rounding difference dg of the gradients' scale (1e-9) becomes up to 0.1 * lr = 1e-4 in a weight. That is how the
    old end-to-end check (atol 1e-6) failed with 1.25e-6 on a loaded machine."""
    cfg = tiny(model=model, scheduler="none", acc_steps=2, weight_decay=0.1, seed=3)
    ref = build_bench_step(cfg, torch.device("cpu"), reference=True)
    ours = build_bench_step(cfg, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(ref.model.parameters(), ours.model.parameters()))
    for x, y in synthetic_batches(ours, 2):
        ref.accumulate(x, y)
        accumulate_gradients(ours.step_module, x, y, ours.n_micro, ours.dtype, ours.scaler)  # the halves of ours.step
        scale = max(p.grad.abs().max().item() for p in ref.model.parameters())
        for (name, a), b in zip(ref.model.named_parameters(), ours.model.parameters()):
            diff = (a.grad - b.grad).abs().max().item()
            assert diff <= gradient_rounding_bound(cfg) * scale, (name, diff / EPS32 / scale)
            b.grad.copy_(a.grad)  # the update from identical gradients: the same torch.optim.AdamW math
        ref.update()
        apply_update(ours.model, ours.optimizer, cfg.optim.grad_clip, ours.scaler)
        # torch's foreach AdamW (lmsprint's on CPU) and its single-tensor one (llm-baselines' default on CPU) apply
        # the same elementwise operations in the same order: equal inputs, equal bits
        for (name, a), b in zip(ref.model.named_parameters(), ours.model.parameters()):
            assert torch.equal(a, b), name


def test_schedule_is_one_cycle_as_llm_baselines(tiny):
    cfg = tiny(iterations=40, warmup_percent=0.1)
    step = build_bench_step(cfg, torch.device("cpu"), reference=True)
    lr = cfg.optim.lr
    batches = synthetic_batches(step, 1) * 12
    for k, (x, y) in enumerate(batches):
        assert step.optimizer.param_groups[0]["lr"] == pytest.approx(lr * lr_multiplier(k / 40, cfg.optim, 40))
        step(x, y)


def test_refuses_what_llm_baselines_step_cannot_do(tiny):
    assert reference_problems(tiny()) == []
    cfg = tiny(opt="muon", label_smoothing=0.1)
    with pytest.raises(ConfigError) as e:
        ReferenceStep(cfg, Transformer(cfg.model), "cpu")
    assert cli_message(e.value) == ("the llm-baselines reference step needs --opt adamw, --label_smoothing 0")
    moe = tiny(moe_num_experts=4, moe_num_experts_per_tok=2)
    assert reference_problems(moe) == ["`moe_num_experts` 1 (llm-baselines' models are dense)"]


def test_bench_row_is_marked_and_free_of_host_syncs(tiny):
    row = bench_config(tiny(), warmup=1, steps=2, check_sync=True, reference=True)
    assert row["reference"] is True and row["host_syncs"] == 0 and row["tokens_per_s"] > 0

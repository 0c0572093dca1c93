"""The CUDA paths, on a real GPU: skipped where none is (bench/gpu_check.sh runs them first on a GPU box).

- FlexAttention block masks agree with SDPA and a boolean window mask, forward and backward, in bf16;
- the grouped_mm MoE matches the per-expert reference (Python loop over experts) in bf16, forward and backward;
- the chunked loss under inductor equals full-logits cross-entropy;
- a compiled bf16 training run (`lmsprint.train`, real text, char tokenizer) lowers the loss for each preset,
  with MoE and with local attention through flex;
- `--micro_batch auto` picks the largest size whose training steps fit under a memory cap;
- no host syncs in the compiled training step (bench's step and the trainer's, torch.cuda sync debug mode
  'error' plus the call counter);
- CUDA graphs (`compile_mode` reduce-overhead) give the step of the default compile;
- the llm-baselines reference step runs under bf16 autocast and agrees with lmsprint's step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmsprint
from lmsprint import rundir
from lmsprint.bench.measure import bench_config, build_bench_step, synthetic_batches
from lmsprint.hw import count_host_syncs, cuda_sync_errors, host_resident
from lmsprint.model import moe as moe_mod
from lmsprint.model.attention import SlidingWindow, make_block_mask
from lmsprint.model.loss import lm_loss
from lmsprint.model.moe import MoE
from lmsprint.model.transformer import Transformer
from lmsprint.track.sinks import Sinks
from lmsprint.training.distributed import World
from lmsprint.training.step import build_train_step, fits_in_memory, resolve_micro_batch
from lmsprint.training.trainer import Trainer
from tiny import tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")]

DEV = torch.device("cuda")
BF16 = torch.bfloat16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("kw", [
    dict(attention="local", attention_window=48),
    dict(attention="global_local", attention_window=32, local_heads=2),
    dict(attention="global_local", attention_window=40, attention_pattern="SL"),
])
def test_flex_matches_sdpa_forward_and_backward(kw):
    """The same model through flex block masks and through SDPA with a boolean window mask: outputs and every
    gradient agree to bf16 accuracy (fp32 params, bf16 autocast, as training runs)."""
    torch.manual_seed(0)
    cfg = tiny_config(model="llama2", n_embd=128, n_head=4, n_layer=2, sequence_length=256, **kw)
    cfg.model.attn.attn_backend = "flex"
    flex = Transformer(cfg.model).to(DEV)
    cfg_sdpa = tiny_config(model="llama2", n_embd=128, n_head=4, n_layer=2, sequence_length=256, **kw)
    cfg_sdpa.model.attn.attn_backend = "sdpa"
    sdpa = Transformer(cfg_sdpa.model).to(DEV)
    sdpa.load_state_dict(flex.state_dict())
    x = torch.randint(0, 64, (3, 256), device=DEV)
    g = torch.randn(3, 256, 128, device=DEV)
    outs = []
    for m in (flex, sdpa):
        with torch.autocast("cuda", dtype=BF16):
            h, _ = m(x)
        (h.float() * g).sum().backward()
        outs.append((h, {n: p.grad for n, p in m.named_parameters()}))
    (hf, gf), (hs, gs) = outs
    assert rel_err(hf, hs) < 1e-2
    for name in gs:
        assert rel_err(gf[name], gs[name]) < 3e-2, name


def test_flex_block_mask_skips_out_of_window_blocks():
    """At 4096 tokens and window 512 the block mask keeps about (512 + 128) / 4096 of the causal blocks."""
    bm = make_block_mask(SlidingWindow(window=512, n_local=1, n_head=1), 4096, DEV)
    assert bm.sparsity() > 75.0, bm  # percent of blocks skipped


# ---------------------------------------------------------------------------------------------------- MoE


def _moe(**kw) -> MoE:
    torch.manual_seed(0)
    cfg = tiny_config(model="llama2", n_embd=128, moe_num_experts=4, moe_num_experts_per_tok=2,
                      moe_expert_hidden=256, **kw).model
    return MoE(cfg).to(DEV)


def _per_expert_reference(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """token_choice MoE as a Python loop over experts, each expert its own matmuls (the router in fp32)."""
    xf = x.reshape(-1, x.shape[-1])
    logits = m.router_logits(xf)  # the layer's own fp32 router: the same routing, no near-tie flips
    vals, idx = torch.topk(logits, m.top_k, dim=-1)
    w = torch.softmax(vals, dim=-1)
    out = torch.zeros_like(xf)
    for e in range(m.n_experts):
        for j in range(m.top_k):
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            h = xf[rows] @ m.w_in[e].t().to(xf.dtype)
            h = F.silu(h[:, : m.hidden]) * h[:, m.hidden:]
            y = h @ m.w_out[e].t().to(xf.dtype)
            out = out.index_add(0, rows, (w[rows, j, None] * y.float()).to(out.dtype))
    return out.view_as(x)


def test_grouped_mm_moe_matches_per_expert_reference_in_bf16():
    m = _moe()
    assert moe_mod.grouped_mm_supported(DEV, BF16), "grouped_mm must run bf16 on this GPU (else MoE falls back to bmm)"
    # inputs exactly representable in bf16, so the router sees the same values in both (it runs in fp32)
    x = torch.randn(4, 96, 128, device=DEV).to(BF16).float().requires_grad_()
    gy = torch.randn(4, 96, 128, device=DEV)
    params = [x, m.router.weight, m.w_in, m.w_out]
    with torch.autocast("cuda", dtype=BF16):
        assert m._grouped_ok(x.to(BF16))
        y, _ = m(x)
    got = torch.autograd.grad((y.float() * gy).sum(), params)
    xb = x.detach().to(BF16).requires_grad_()
    ref = _per_expert_reference(m, xb)
    want = torch.autograd.grad((ref.float() * gy).sum(), [xb, m.router.weight, m.w_in, m.w_out])
    assert rel_err(y, ref) < 1e-2
    for name, a, b in zip(("x", "router", "w_in", "w_out"), got, want):
        assert rel_err(a, b) < 3e-2, name


def test_grouped_mm_moe_compiles_and_matches_eager_in_bf16():
    m = _moe()
    x = torch.randn(4, 96, 128, device=DEV)
    with torch.autocast("cuda", dtype=BF16):
        y_eager, _ = m(x)
        y_comp, _ = torch.compile(m, fullgraph=True)(x)
    assert rel_err(y_comp, y_eager) < 1e-2


# ---------------------------------------------------------------------------------------------------- loss


def test_chunked_loss_under_inductor_equals_full_logits_cross_entropy():
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(4096, 256, device=DEV, generator=g, requires_grad=True)
    w = (0.05 * torch.randn(8192, 256, device=DEV, generator=g)).requires_grad_()
    t = torch.randint(0, 8192, (4096,), device=DEV, generator=g)
    fn = torch.compile(lambda h, w, t: lm_loss(h, w, t, 0.0, 1024).loss, fullgraph=True)
    with torch.autocast("cuda", dtype=BF16):
        loss = fn(h, w, t)
        ref = F.cross_entropy(F.linear(h, w).float(), t)
    gh, gw = torch.autograd.grad(loss, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert abs(float(loss) - float(ref)) < 1e-2 * float(ref)
    assert rel_err(gh, rh) < 2e-2 and rel_err(gw, rw) < 2e-2


# ---------------------------------------------------------------------------------------------------- training


RUN = dict(tokenizer="char", n_layer=2, n_embd=128, n_head=4, sequence_length=128, vocab_size=64, batch_size=16,
           acc_steps=1, iterations=60, eval_interval=30, log_interval=10, sample_tokens=0, compile=True,
           dtype="bfloat16", device="cuda", quiet=True)


@pytest.mark.parametrize("name,kw", [
    ("base", dict(model="base")),
    ("llama2", dict(model="llama2")),
    ("moe", dict(model="llama2", moe_num_experts=4, moe_num_experts_per_tok=2)),
    ("local-flex", dict(model="llama2", attention="local", attention_window=32, attn_backend="flex")),
])
def test_compiled_bf16_training_lowers_the_loss(corpus, tmp_path, name, kw):
    run = lmsprint.train(**{**RUN, **kw}, dataset=str(corpus / "tiny.txt"), data_dir=str(tmp_path / "dc"),
                         results_base_folder=str(tmp_path / "exps"), exp_name=name)
    assert run.summary["status"] == "complete"
    rows = rundir.read_metrics(run.run_dir)
    first = next(r["train/loss"] for r in rows if "train/loss" in r)
    final = next(r["final/val/loss"] for r in rows if "final/val/loss" in r)
    assert first > 2.5 and final < first - 0.5, (first, final)
    assert run.summary["time/compile_s"] > 0


def test_micro_batch_auto_picks_the_largest_size_that_fits():
    """Under a memory cap between the needs of micro-batches 16 and 32 (measured here), `auto` picks a divisor of 64
    below 64 (16 unless fragmentation costs a step) whose double does not fit, and three full training steps at
    that size run under the cap."""
    cfg = tiny_config(model="base", n_layer=4, n_embd=256, n_head=4, sequence_length=1024, vocab_size=4096,
                      batch_size=32, acc_steps=2, micro_batch="auto", device="cuda")
    torch.manual_seed(0)
    model = Transformer(cfg.model).to(DEV)

    def peak(mb: int) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        assert fits_in_memory(model, mb, 1024, DEV, BF16)
        return torch.cuda.max_memory_reserved()

    p16, p32 = peak(16), peak(32)
    assert p32 > p16
    total = torch.cuda.get_device_properties(DEV).total_memory
    opt_state = 2 * 4 * sum(p.numel() for p in model.parameters())  # AdamW: two fp32 moments, reserved by auto
    cap = opt_state + (p16 + p32) // 2
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / total, DEV)
    try:
        mb, n = resolve_micro_batch(cfg, model, DEV)
        assert mb * n == 64 and 4 <= mb <= 16, (mb, n, "expected 16 x 4")
        assert not fits_in_memory(model, 2 * mb, 1024, DEV, BF16, reserve_bytes=opt_state)
        step = build_train_step(cfg, model, DEV)
        assert (step.micro_bs, step.n_micro) == (mb, n)
        for x, y in synthetic_batches(step, 3):
            stats = step(x, y)
        assert torch.isfinite(stats["loss"]).item()  # the allocator raises out-of-memory beyond the cap
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, DEV)


@pytest.mark.parametrize("kw", [
    dict(model="base"),
    dict(model="llama2", moe_num_experts=4, moe_num_experts_per_tok=2),
    dict(model="llama2", attention="local", attention_window=64),
])
def test_compiled_bench_step_has_no_host_syncs(kw):
    cfg = tiny_config(n_embd=128, n_head=4, sequence_length=256, vocab_size=512, batch_size=8, acc_steps=2,
                      compile=True, device="cuda", grad_clip=1.0, **kw)
    row = bench_config(cfg, warmup=2, steps=3, check_sync=True)  # CUDA: any sync raises inside the timed steps
    assert row["host_syncs"] == 0, row["host_sync_detail"]


def test_training_loop_step_has_no_host_syncs(corpus, tmp_path):
    cfg = tiny_config(**{**RUN, "dataset": str(corpus / "tiny.txt"), "data_dir": str(tmp_path / "dc"),
                         "results_base_folder": str(tmp_path / "exps"), "progress": False, "grad_clip": 1.0})
    tr = Trainer(cfg, World(device="cuda"), Sinks)
    tr.setup()
    tr.train_step()
    tr.train_step()
    with cuda_sync_errors(DEV), count_host_syncs(exempt=host_resident(DEV, tr.opt), dispatch=False) as counts:
        tr.train_step()
        tr.train_step()
    assert sum(counts.values()) == 0, counts


def test_cuda_graphs_step_equals_default_compile():
    losses = {}
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        cfg = tiny_config(model="llama2", n_embd=128, n_head=4, sequence_length=256, vocab_size=512, batch_size=8,
                          acc_steps=2, compile=True, compile_mode=mode, device="cuda", seed=3)
        step = build_bench_step(cfg, DEV)
        data = synthetic_batches(step, 4)
        losses[mode] = torch.stack([step(x, y)["loss"] for x, y in data]).float().cpu()
    torch.testing.assert_close(losses["reduce-overhead"], losses["default"], rtol=2e-2, atol=2e-2)
    assert losses["default"][-1] < losses["default"][0]


def test_reference_step_agrees_with_lmsprint_step_in_bf16():
    """llm-baselines' step (full logits) and lmsprint's (chunked loss, stats) from the same weights and data: the
    same losses to bf16 accuracy over a few AdamW steps (constant lr)."""
    losses = {}
    for reference in (True, False):
        cfg = tiny_config(model="base", n_embd=128, n_head=4, sequence_length=256, vocab_size=4096, batch_size=16,
                          acc_steps=1, device="cuda", scheduler="none", loss_chunk=512, seed=5)
        step = build_bench_step(cfg, DEV, reference=reference)
        out = [step(x, y) if reference else step(x, y)["loss"] for x, y in synthetic_batches(step, 4, seed=1)]
        losses[reference] = torch.stack(out).float().cpu()
    torch.testing.assert_close(losses[True], losses[False], rtol=2e-2, atol=2e-2)



@pytest.mark.parametrize("model", ["base", "llama2"])
def test_compiled_model_with_flex_equals_eager_sdpa(model):
    """The whole model compiled (flex inside the compiled graph, block mask built in it) against eager SDPA with the
    boolean window mask: outputs and gradients (on CPU, inductor's flex kernel once misread a strided v)."""
    torch.manual_seed(0)
    kw = dict(model=model, n_embd=128, n_head=4, n_layer=2, sequence_length=512, attention="local",
              attention_window=64)
    flex = Transformer(tiny_config(**kw, attn_backend="flex").model).to(DEV)
    sdpa = Transformer(tiny_config(**kw, attn_backend="sdpa").model).to(DEV)
    sdpa.load_state_dict(flex.state_dict())
    x = torch.randint(0, 64, (2, 512), device=DEV)
    g = torch.randn(2, 512, 128, device=DEV)
    outs = []
    for m in (torch.compile(flex), sdpa):
        with torch.autocast("cuda", dtype=BF16):
            h, _ = m(x)
        (h.float() * g).sum().backward()
        outs.append(h)
    assert rel_err(outs[0], outs[1]) < 1e-2
    for (name, p), q in zip(flex.named_parameters(), sdpa.parameters()):
        assert rel_err(p.grad, q.grad) < 3e-2, name

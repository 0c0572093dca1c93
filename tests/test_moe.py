"""Tests of the mixture-of-experts layer against a naive per-expert loop, hand-computed losses and the dense MLP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmsprint.config import RunConfig, SuggestingParser, add_flags, build_config
from lmsprint.model.loss import lm_loss
from lmsprint.model import moe as moe_mod
from lmsprint.model.mlp import make_dense_mlp
from lmsprint.model.moe import MoE
from lmsprint.model.transformer import Transformer
from tiny import tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(**kw):
    return tiny_config(**{"moe_num_experts": 4, "moe_num_experts_per_tok": 2, **kw}).model


def make_moe(seed=0, **kw) -> MoE:
    torch.manual_seed(seed)
    m = MoE(small_cfg(**kw))
    if m.b_in is not None:  # non-zero biases so that they are exercised
        torch.nn.init.normal_(m.b_in, 0, 0.1)
        torch.nn.init.normal_(m.b_out, 0, 0.1)
    return m


def expert_fn(m: MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e applied to rows x, written out per expert."""
    h = x @ m.w_in[e].t()
    if m.b_in is not None:
        h = h + m.b_in[e]
    if m.kind == "swiglu":
        h = F.silu(h[:, : m.hidden]) * h[:, m.hidden:]
    else:
        h = F.gelu(h)
    y = h @ m.w_out[e].t()
    return y + m.b_out[e] if m.b_out is not None else y


def naive_moe(m: MoE, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Reference token_choice MoE: Python loops over experts (and over tokens when a capacity applies)."""
    xf = x.reshape(-1, x.shape[-1])
    logits = xf.float() @ m.router.weight.float().t()
    E, k = m.n_experts, m.top_k
    if m.softmax_order == "topk_softmax":
        vals, idx = torch.topk(logits, k, dim=-1)
        w = torch.softmax(vals, dim=-1)
    else:
        w, idx = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    keep = torch.ones_like(w, dtype=torch.bool)
    if capacity is not None:  # serve assignments in order of arrival: token index, then slot
        used = [0] * E
        for n in range(idx.shape[0]):
            for j in range(k):
                e = int(idx[n, j])
                keep[n, j] = used[e] < capacity
                used[e] += 1
    out = torch.zeros_like(xf)
    for e in range(E):
        for j in range(k):
            rows = ((idx[:, j] == e) & keep[:, j]).nonzero().squeeze(1)
            out = out.index_add(0, rows, w[rows, j, None] * expert_fn(m, e, xf[rows]))
    if m.shared is not None:
        out = out + m.shared(xf)[0]
    return out.view_as(x)


def grads(m: MoE, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor):
    params = [x, m.router.weight, m.w_in, m.w_out] + [p for p in (m.b_in, m.b_out) if p is not None]
    return torch.autograd.grad((y * g).sum(), params)


def assert_same_outputs_and_grads(m, x, y, ref):
    """y and ref agree, and so do the gradients of a random projection of them w.r.t. x and m's parameters."""
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    for a, b in zip(grads(m, x, y, g), grads(m, x, ref, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


SHAPES = [  # (batch, seq, kw)
    (2, 16, dict(model="base")),
    (3, 7, dict(model="llama2", moe_num_experts=3, moe_num_experts_per_tok=1, moe_expert_hidden=48)),
    (1, 24, dict(model="llama2", moe_num_experts=8, moe_num_experts_per_tok=3, bias=True,
                 moe_softmax_order="softmax_topk", moe_expert_hidden=64)),
    (2, 5, dict(model="base", moe_num_shared_experts=1, moe_expert_hidden=40)),
]


@pytest.mark.parametrize("path", ["grouped", "bmm"])
@pytest.mark.parametrize("B,T,kw", SHAPES)
def test_matches_naive_loop_outputs_and_grads(path, B, T, kw):
    m = make_moe(**kw)
    m.use_grouped = None if path == "grouped" else False
    x = torch.randn(B, T, m.dim, requires_grad=True)
    if path == "grouped":
        assert m._grouped_ok(x), "torch's grouped_mm should be usable for fp32 on CPU here"
    y, aux = m(x)
    ref = naive_moe(m, x)
    assert_same_outputs_and_grads(m, x, y, ref)
    assert aux["moe/load"].shape == (m.n_experts,)
    torch.testing.assert_close(aux["moe/load"].sum(), torch.tensor(1.0))
    assert float(aux["moe/dropped_frac"]) == 0.0


@pytest.mark.parametrize("path", ["grouped", "bmm"])
def test_expert_without_tokens(path):
    """Force the last expert to receive nothing (router weights); outputs and grads still match the loop."""
    m = make_moe(model="llama2", moe_num_experts=4, moe_num_experts_per_tok=2)
    m.use_grouped = None if path == "grouped" else False
    x = torch.randn(2, 9, m.dim)
    x[..., 0] = 3.0
    with torch.no_grad():
        m.router.weight[:, 0] = 10.0
        m.router.weight[-1, 0] = -10.0
    x.requires_grad_()
    y, aux = m(x)
    assert float(aux["moe/load"][-1]) == 0.0 and bool((aux["moe/load"][:-1] > 0).all())
    ref = naive_moe(m, x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    got, want = grads(m, x, y, g), grads(m, x, ref, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert float(got[2][-1].abs().max()) == 0.0 and float(got[2][0].abs().max()) > 0


def set_logits(m: MoE, L: torch.Tensor) -> torch.Tensor:
    """Make the router output exactly L (N, E): x = one-hot rows, router weight = L^T."""
    N, E = L.shape
    assert m.dim >= N
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[:, :N] = L.t()
    return torch.eye(N, m.dim).unsqueeze(0)


def test_balance_and_z_loss_formulas():
    m = make_moe(model="base", moe_num_experts=4, moe_num_experts_per_tok=2, moe_aux_loss_factor=0.5,
                 moe_z_loss_factor=0.25)
    # tokens 0-3 pick experts {0, 1}, tokens 4-7 pick {0, 2}; expert 3 is never picked
    L = torch.tensor([[3.0, 2.0, 0.0, -1.0], [2.5, 2.0, 1.0, 0.0], [1.0, 4.0, -2.0, 0.5], [0.0, 0.5, -1.0, -3.0],
                      [2.0, -1.0, 3.0, 0.0], [5.0, 1.0, 4.0, 2.0], [0.0, -2.0, 1.0, -1.0], [1.5, 0.0, 1.0, -0.5]])
    x = set_logits(m, L)
    _, aux = m(x)
    assert aux["loss"].requires_grad and not aux["moe/aux_loss"].requires_grad
    picks = [sorted(range(4), key=lambda e: -float(L[n, e]))[:2] for n in range(8)]  # each token's top-2
    f = [sum(e in p for p in picks) / 16 for e in range(4)]
    P = [sum(math.exp(L[n, e]) / sum(math.exp(v) for v in L[n].tolist()) for n in range(8)) / 8 for e in range(4)]
    balance = 4 * sum(fe * pe for fe, pe in zip(f, P))
    z = sum(math.log(sum(math.exp(v) for v in L[n].tolist())) ** 2 for n in range(8)) / 8
    assert aux["moe/load"].tolist() == f
    assert float(aux["moe/aux_loss"]) == pytest.approx(balance, rel=1e-5)
    assert float(aux["moe/z_loss"]) == pytest.approx(z, rel=1e-5)
    assert float(aux["loss"].detach()) == pytest.approx(0.5 * balance + 0.25 * z, rel=1e-5)


def test_balance_loss_of_a_uniform_router_is_one():
    """Token n's logits are one row rolled by n: every expert is picked equally often and its mean probability is
    1/E, so the balance loss scores exactly 1."""
    m = make_moe(model="base", moe_num_experts=4, moe_num_experts_per_tok=2)
    L = torch.stack([torch.tensor([3.0, 1.0, 0.5, -2.0]).roll(n) for n in range(8)])
    _, aux = m(set_logits(m, L))
    torch.testing.assert_close(aux["moe/load"], torch.full((4,), 0.25))
    assert float(aux["moe/aux_loss"]) == pytest.approx(1.0, rel=1e-6)


def test_softmax_orders():
    L = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    m = make_moe(moe_softmax_order="topk_softmax")
    w, idx, _ = m.route(L)
    assert idx.tolist() == [[0, 1]]
    torch.testing.assert_close(w, torch.softmax(torch.tensor([[2.0, 1.0]]), -1))
    m = make_moe(moe_softmax_order="softmax_topk")
    w, idx, _ = m.route(L)
    assert idx.tolist() == [[0, 1]]
    torch.testing.assert_close(w, torch.softmax(L, -1)[:, :2])  # not renormalised
    assert float(w.sum()) < 0.99


def test_capacity_drops_latest_tokens():
    """All 8 tokens want expert 0; capacity ceil(0.5 * 8 * 1 / 2) = 2 keeps tokens 0 and 1 only."""
    m = make_moe(model="base", moe_num_experts=2, moe_num_experts_per_tok=1, moe_capacity_factor=0.5)
    assert m.capacity(8) == 2
    L = torch.tensor([[1.0, 0.0]] * 8)
    x = set_logits(m, L)
    with torch.no_grad():
        y, aux = m(x)
        expert0 = expert_fn(m, 0, x[0])
    torch.testing.assert_close(y[0, :2], expert0[:2])
    assert float(y[0, 2:].abs().max()) == 0.0
    assert float(aux["moe/dropped_frac"]) == pytest.approx((8 - m.capacity(8)) / 8)
    torch.testing.assert_close(aux["moe/load"], torch.tensor([1.0, 0.0]))  # routing decisions, before dropping


@pytest.mark.parametrize("cf", [0.5, 1.0, 1.25])
def test_capacity_matches_arrival_order_reference(cf):
    m = make_moe(model="llama2", moe_num_experts=4, moe_num_experts_per_tok=2, moe_capacity_factor=cf)
    x = torch.randn(2, 12, m.dim, requires_grad=True)
    C = m.capacity(24)
    assert C == math.ceil(cf * 24 * 2 / 4)
    y, aux = m(x)
    ref = naive_moe(m, x, capacity=C)
    assert_same_outputs_and_grads(m, x, y, ref)
    if cf == 0.5:
        assert float(aux["moe/dropped_frac"]) > 0


@pytest.mark.parametrize("kind", ["base", "llama2"])
@pytest.mark.parametrize("bias", [False, True])
def test_one_expert_top1_equals_dense_mlp(kind, bias):
    m = make_moe(model=kind, bias=bias, moe_num_experts=1, moe_num_experts_per_tok=1)
    dense = make_dense_mlp(m.kind, m.dim, m.hidden, bias, 0.0)
    with torch.no_grad():
        if m.kind == "swiglu":
            dense.w1.weight.copy_(m.w_in[0, : m.hidden])
            dense.w3.weight.copy_(m.w_in[0, m.hidden:])
            if bias:
                dense.w1.bias.copy_(m.b_in[0, : m.hidden])
                dense.w3.bias.copy_(m.b_in[0, m.hidden:])
        else:
            dense.c_fc.weight.copy_(m.w_in[0])
            if bias:
                dense.c_fc.bias.copy_(m.b_in[0])
        dense.c_proj.weight.copy_(m.w_out[0])
        if bias:
            dense.c_proj.bias.copy_(m.b_out[0])
    x = torch.randn(2, 10, m.dim)
    for use_grouped in (None, False):
        m.use_grouped = use_grouped
        torch.testing.assert_close(m(x)[0], dense(x)[0], rtol=1e-5, atol=1e-6)


def naive_expert_choice(m: MoE, x: torch.Tensor) -> torch.Tensor:
    xf = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(xf.float() @ m.router.weight.float().t(), dim=-1)
    C = m.capacity(xf.shape[0])
    out = torch.zeros_like(xf)
    for e in range(m.n_experts):
        gate, tok = torch.topk(probs[:, e], C)
        out = out.index_add(0, tok, gate[:, None] * expert_fn(m, e, xf[tok]))
    return out.view_as(x)


def test_expert_choice_matches_loop():
    m = make_moe(model="llama2", moe_routing="expert_choice", moe_num_experts=4, moe_num_experts_per_tok=2)
    x = torch.randn(2, 8, m.dim, requires_grad=True)
    assert m.capacity(16) == 8
    y, aux = m(x)
    ref = naive_expert_choice(m, x)
    assert_same_outputs_and_grads(m, x, y, ref)
    assert float(aux["moe/aux_loss"]) == 0.0
    assert 0.0 <= float(aux["moe/dropped_frac"]) < 1.0


def test_router_jitter_only_while_training():
    m = make_moe(moe_router_jitter=0.5)
    x = torch.randn(64, m.dim)
    m.eval()
    torch.testing.assert_close(m.router_logits(x), m.router_logits(x))
    torch.testing.assert_close(m.router_logits(x), x @ m.router.weight.t())
    m.train()
    assert not torch.allclose(m.router_logits(x), x @ m.router.weight.t())


def test_autocast_keeps_router_fp32():
    m = make_moe(model="llama2")
    x = torch.randn(2, 8, m.dim)
    ref, _ = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.router_logits(x.view(-1, m.dim)).dtype == torch.float32
        y, aux = m(x)
    assert y.dtype == torch.bfloat16 and aux["loss"].dtype == torch.float32
    torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-3)


def test_grouped_probe_is_cached():
    dev = torch.device("cpu")
    first = moe_mod.grouped_mm_supported(dev, torch.float32)
    assert (str(dev), torch.float32, False) in moe_mod._PROBED
    assert moe_mod.grouped_mm_supported(dev, torch.float32) == first


@pytest.mark.slow
@pytest.mark.parametrize("kw,use_grouped", [
    (dict(model="llama2"), None),
    (dict(model="llama2"), False),
    (dict(model="base", moe_capacity_factor=1.0, bias=True), None),
    (dict(model="llama2", moe_routing="expert_choice"), None),
])
def test_fullgraph_compile(kw, use_grouped):
    torch._dynamo.reset()
    m = make_moe(**kw)
    m.use_grouped = use_grouped
    x = torch.randn(2, 8, m.dim, requires_grad=True)
    y, aux = m(x)
    g = torch.randn_like(y)
    want = grads(m, x, y + 0 * aux["loss"], g)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    yc, auxc = cm(x)
    torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(auxc["loss"], aux["loss"])
    for a, b in zip(grads(m, x, yc + 0 * auxc["loss"], g), want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fullgraph_compile_grouped_bf16():
    """bf16 traces through grouped_mm (fp32 may only run eagerly); compiled equals eager."""
    torch._dynamo.reset()
    m = make_moe(model="llama2").to(torch.bfloat16)
    assert moe_mod.grouped_mm_supported(torch.device("cpu"), torch.bfloat16, True)
    x = torch.randn(2, 8, m.dim, dtype=torch.bfloat16, requires_grad=True)
    y, aux = m(x)
    g = torch.randn_like(y)
    want = grads(m, x, y, g)
    yc, _ = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(yc, y)
    for a, b in zip(grads(m, x, yc, g), want):
        torch.testing.assert_close(a, b)


def test_tiny_moe_transformer_learns_and_uses_all_experts():
    torch.manual_seed(0)
    cfg = tiny_config(model="llama2", n_embd=64, moe_num_experts=4, moe_num_experts_per_tok=2).model
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    period = torch.randint(0, 64, (24,), generator=g)  # a fixed random sequence, repeated: learnable in-context
    stream = period.repeat(40)
    losses = []
    for step in range(50):
        starts = torch.randint(0, len(stream) - 33, (8,), generator=g)
        batch = torch.stack([stream[s: s + 33] for s in starts.tolist()])
        hidden, aux = model(batch[:, :-1])
        out = lm_loss(hidden, model.head_weight, batch[:, 1:])
        loss = out.loss + aux["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[0] > 3.5
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    assert aux["moe/load"].shape == (2, 4)
    assert bool((aux["moe/load"] > 0).all()), aux["moe/load"]


def hackathon_model_cfg(model: str):
    parser = SuggestingParser()
    add_flags(parser)
    ns = parser.parse_args(["--config_format", "base", "--model", model, "--moe_num_experts", "4",
                            "--moe_num_experts_per_tok", "2"])
    return build_config(vars(ns))


@pytest.mark.parametrize("model", ["base", "llama2"])
def test_presets_build_with_moe_flags(model):
    cfg = hackathon_model_cfg(model)
    assert isinstance(cfg, RunConfig) and cfg.model.model == model
    with torch.device("meta"):
        moe_model = Transformer(cfg.model)
        dense_cfg = build_config({"model": model}).model
        dense = Transformer(dense_cfg)
    ffns = [b.mlp for b in moe_model.blocks]
    assert all(isinstance(f, MoE) for f in ffns) and ffns[0].kind == ("swiglu" if model == "llama2" else "gelu")
    per_expert = ffns[0].expert_params()
    dense_mlp = sum(p.numel() for p in dense.blocks[0].mlp.parameters())
    assert per_expert == dense_mlp  # experts default to the dense MLP's size
    L, d = cfg.model.n_layer, cfg.model.n_embd
    total = dense.num_params() + L * (3 * per_expert + 4 * d)  # 3 more experts and a router per layer
    assert moe_model.num_params() == total
    assert moe_model.num_active_params() == total - L * 2 * per_expert
    # the hackathon's shapes (12 x 768, vocab 50304, tied) with 4 experts, top-2: total and active parameters
    assert (moe_model.num_params(), moe_model.num_active_params()) == reference_param_counts(cfg.model)


def reference_param_counts(c) -> tuple[int, int]:
    """(total, active) parameters of a MoE Transformer written out from its shapes, layer by layer."""
    d, h, E, k = c.n_embd, c.expert_hidden, c.moe.moe_num_experts, c.moe.moe_num_experts_per_tok
    norm = d * (2 if c.norm_kind == "layernorm" and c.bias else 1)
    embed = c.vocab_size * d + (c.sequence_length * d if c.pos_kind == "learned" else 0)
    head = 0 if c.tie_embeddings else c.vocab_size * d
    attn = 4 * d * d + (4 * d if c.bias else 0)
    gated = c.mlp_kind == "swiglu"
    expert = (3 if gated else 2) * h * d + (((2 if gated else 1) * h + d) if c.bias else 0)
    layer = 2 * norm + attn + E * d + E * expert  # two norms, attention, router, routed experts
    total = embed + head + c.n_layer * layer + norm
    return total, total - c.n_layer * (E - k) * expert

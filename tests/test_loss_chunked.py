"""Chunked linear cross-entropy (lmsprint.model.loss): values, gradients, metrics and memory against the reference."""

import pytest
import torch
import torch.nn.functional as F

from lmsprint.model.loss import auto_chunk, lm_loss, loss_peak_bytes, reference_lm_loss

N, D, V = 96, 32, 211


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(4, N // 4, D, generator=g, dtype=dtype)
    w = torch.randn(V, D, generator=g, dtype=dtype) * 0.5
    t = torch.randint(0, V, (4, N // 4), generator=g)
    return h, w, t


def _grads(fn, h, w):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    out = fn(h, w)
    out.loss.backward()
    return out, h.grad, w.grad


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [0, 1, 7, 32, 96, 1000])
def test_matches_f_cross_entropy_value_and_grads(eps, chunk):
    h, w, t = _inputs()
    out, gh, gw = _grads(lambda h, w: lm_loss(h, w, t, eps, chunk), h, w)

    def ref(h, w):
        logits = (h.reshape(-1, D) @ w.t()).float()
        return type("R", (), {"loss": F.cross_entropy(logits, t.reshape(-1), label_smoothing=eps)})()

    r, rh, rw = _grads(ref, h, w)
    torch.testing.assert_close(out.loss, r.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, rh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-6)
    assert out.n == N
    plain = F.cross_entropy((h.reshape(-1, D) @ w.t()), t.reshape(-1), reduction="sum")
    torch.testing.assert_close(out.ce_sum, plain, rtol=1e-5, atol=1e-4)
    assert not out.ce_sum.requires_grad and not out.correct.requires_grad


def test_label_smoothing_leaves_ce_sum_and_correct_unchanged():
    h, w, t = _inputs(1)
    am = (h @ w.t()).argmax(-1)
    t = torch.where(torch.arange(N // 4) % 2 == 0, am, t)  # about half the targets are the argmax
    a = lm_loss(h, w, t, 0.0, 16)
    b = lm_loss(h, w, t, 0.3, 16)
    assert not torch.allclose(a.loss, b.loss)  # smoothing does change the objective
    assert torch.equal(a.ce_sum, b.ce_sum)
    assert torch.equal(a.correct, b.correct)
    logits = h.reshape(-1, D) @ w.t()
    assert int(a.correct) == int((logits.argmax(-1) == t.reshape(-1)).sum())
    assert 0 < int(a.correct) < N  # the check above is not vacuous


def test_no_grad_path_equals_grad_path():
    h, w, t = _inputs(2)
    with torch.no_grad():
        a = lm_loss(h, w, t, 0.1, 10)
    b = lm_loss(h.requires_grad_(True), w, t, 0.1, 10)
    torch.testing.assert_close(a.loss, b.loss.detach())
    assert torch.equal(a.correct, b.correct)
    torch.testing.assert_close(a.ce_sum, b.ce_sum)


def test_gradient_scales_with_upstream_and_accumulates():
    h, w, t = _inputs(3)
    w = w.requires_grad_(True)
    (lm_loss(h, w, t, 0.0, 8).loss * 0.25).backward()
    g1 = w.grad.clone()
    w.grad = None
    lm_loss(h, w, t, 0.0, 8).loss.backward()
    torch.testing.assert_close(g1, w.grad * 0.25)


def test_bf16_autocast_close_to_reference():
    h, w, t = _inputs(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, gh, gw = _grads(lambda h, w: lm_loss(h, w, t, 0.1, 16), h, w)
    r, rh, rw = _grads(lambda h, w: reference_lm_loss(h, w, t, 0.1), h, w)
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32  # grads in the inputs' dtypes
    torch.testing.assert_close(out.loss, r.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, rw, rtol=5e-2, atol=2e-3)


def test_auto_chunk():
    assert auto_chunk(100_000, 50304, "cuda") == 8192
    assert auto_chunk(64, 50304, "cpu") == 64  # small: whole
    c = auto_chunk(16384, 50304, "cpu")
    assert 1 <= c < 16384 and c * 50304 * 4 <= 64 * 2**20


def _saved_bytes(fn):
    """Bytes of tensors autograd keeps for backward (one tensor counted once) and the largest one."""
    sizes = {}

    def pack(t):
        sizes[(t.untyped_storage().data_ptr(), t.shape)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(sizes.values()), max(sizes.values())


def test_chunking_does_not_save_full_logits():
    n, d, v = 512, 16, 2000
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(v, d, generator=g, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    full_logits = n * v * 4
    _, ref_total, ref_max = _saved_bytes(lambda: reference_lm_loss(h, w, t, 0.1))
    out, tot, biggest = _saved_bytes(lambda: lm_loss(h, w, t, 0.1, 64))
    assert ref_max >= full_logits and ref_total >= 2 * full_logits  # reference keeps logits + log-softmax
    assert biggest < full_logits / 10
    assert tot <= (n * d + v * d) * 4 + 64  # only d hidden and d head, as loss_peak_bytes documents
    out.loss.backward()


def _profiled_peak(fn) -> int:
    """Peak CPU bytes allocated by `fn` (forward + backward), from torch.profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every op's own net allocation ("[memory]" events are frees outside ops), in time order
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def test_profiled_peak_memory_follows_model():
    n, d, v = 1024, 16, 4000
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(n, d, generator=g)
    w0 = torch.randn(v, d, generator=g)
    t = torch.randint(0, v, (n,), generator=g)

    def run(loss_fn):
        def go():
            h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
            loss_fn(h, w).loss.backward()
        return go

    peak_ref = _profiled_peak(run(lambda h, w: reference_lm_loss(h, w, t)))
    peak_chunk = _profiled_peak(run(lambda h, w: lm_loss(h, w, t, 0.0, 64)))
    full = n * v * 4
    assert peak_ref >= 2 * full
    assert peak_chunk < peak_ref / 4
    inputs = 2 * (n * d + v * d) * 4  # the clones and their .grad
    assert peak_chunk <= loss_peak_bytes(n, v, 64, n_embd=d) + inputs + 64 * 1024
    assert loss_peak_bytes(n, v, 64, n_embd=d) < loss_peak_bytes(n, v, n, n_embd=d)

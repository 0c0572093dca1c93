"""Mixture-of-experts feed-forward layer: fp32 router, sorted dispatch, grouped expert matmuls.

`MoE(cfg: ModelConfig)` replaces the dense MLP in the blocks chosen by `cfg.is_moe_layer`. `forward(x)` takes
(B, T, d) and returns `(y, aux)` like every feed-forward part (see mlp.py); `aux` holds
- "loss": `moe_aux_loss_factor * balance + moe_z_loss_factor * z`, to add to the training loss (with grad);
- "moe/aux_loss", "moe/z_loss": the unweighted balance and z losses (detached scalars);
- "moe/load": (E,) fraction of routed (token, expert) assignments per expert, before capacity dropping;
- "moe/dropped_frac": fraction of assignments dropped by the capacity limit (expert_choice: fraction of
  tokens that no expert picked).

Routing (`cfg.moe`):
- The router is a bias-free linear layer computed in float32 with autocast off: only the (N, E) router
  logits are fp32, the expert activations stay in the compute dtype (autocast's dtype, else the input's).
- `moe_router_jitter` eps: in training the router input (not the expert input) is multiplied by U(1-eps, 1+eps).
- token_choice, `topk_softmax`: top-k of the logits, then softmax over those k logits (weights sum to 1).
- token_choice, `softmax_topk`: softmax over all experts, then the top-k probabilities WITHOUT renormalising
  (as llm-baselines does; the weights sum to less than 1).
- expert_choice (Zhou et al. 2022): softmax over experts, then each expert takes its top-C tokens by that
  probability, C = ceil(cf * N * k / E) with cf = moe_capacity_factor (1 if 0); a token's output is the
  probability-weighted sum of the experts that picked it (possibly none). `moe_softmax_order` does not apply.
  Note that a token's routing then depends on the other tokens of the batch, later positions included.
- Capacity (token_choice, `moe_capacity_factor` > 0): each expert takes at most C = ceil(factor * N * k / E)
  assignments; assignments are served in order of arrival, i.e. by flattened token index (b * T + t), so the
  assignments of the highest token indices are dropped (their weight is zeroed; the residual carries the token).
  The load-balancing statistics are computed before dropping.

Losses: Switch balance loss `E * sum_e f_e * P_e` with f_e = (assignments to e) / (N * k) (so a uniform router
scores 1; llm-baselines' variant counts tokens per expert instead, which is k times larger) and P_e the mean
router probability of e; ST-MoE z-loss `mean_n(logsumexp(logits_n)^2)`. expert_choice is balanced by
construction and reports a balance loss of 0.

Execution: one stable argsort of the N*k expert ids orders the assignments by expert; one gather builds the
expert input rows; experts run as grouped matmuls (`torch.nn.functional.grouped_mm`, `torch._grouped_mm` where
the public name is missing) over rows padded per expert to a multiple of 8 (16-byte aligned groups; the last expert
absorbs the static tail so the buffer shape never depends on the routing); one gather + one batched (N,1,k) x
(N,k,d) product combines the k outputs of each token with its routing weights. Where grouped_mm is missing or
does not support the device/dtype (probed once per (device, dtype) and cached; the probe runs eagerly even
under torch.compile, where the op's meta kernel must accept the dtype too), a padded `bmm` over an (E, C, d)
buffer is used instead, with C = N when dropless (E/k times the grouped FLOPs: a fallback, not the fast path).
There is no Python loop over experts, no host-device synchronisation and no data-dependent shape, so the layer
compiles with `fullgraph=True`.

Experts are 3-D parameters in nn.Linear layout, (E, out, in): GELU `w_in` (E, h, d); SwiGLU `w_in` (E, 2h, d)
holding the gate rows [:h] and the up rows [h:], fused into one matmul; `w_out` (E, d, h). Shared experts
(`moe_num_shared_experts` = s) are one dense MLP of the same kind with hidden size s * h, added to the output.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import keys
from ..config import ModelConfig
from .mlp import make_dense_mlp

GROUP_ALIGN = 8  # rows per expert group are padded to a multiple of this (16 bytes of bf16 per column)

# the public name appeared after the private op (torch._grouped_mm exists in every supported release)
_grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm
_PROBED: dict = {}


# run eagerly at trace time; its result is a constant under torch.compile
@torch.compiler.assume_constant_result
def grouped_mm_supported(device: torch.device, dtype: torch.dtype, traced: bool = False) -> bool:
    """Whether grouped_mm runs forward and backward correctly for this device and dtype (probed once, cached).

    `traced=True` also requires the op's shape function (meta kernel) to accept the dtype, which torch.compile
    uses while tracing; some releases run fp32 eagerly on CPU but only trace bf16."""
    key = (str(device), dtype, traced)
    if key not in _PROBED:
        _PROBED[key] = _probe(device, dtype) and (not traced or _probe_meta(dtype))
    return _PROBED[key]


def _probe(device, dtype) -> bool:
    # grad on: the first MoE forward may run under no_grad (eval, generation), and a False would be cached
    with torch.enable_grad():
        return _probe_grad(device, dtype)


def _probe_grad(device, dtype) -> bool:
    try:
        g = torch.Generator().manual_seed(0)
        sizes, d, h = [8, 16, 8], 16, 32
        a = torch.randn(sum(sizes), d, generator=g).to(device, dtype).requires_grad_()
        b = torch.randn(len(sizes), h, d, generator=g).to(device, dtype).requires_grad_()
        gy = torch.randn(sum(sizes), h, generator=g).to(device, dtype)
        offs = torch.tensor(sizes, device=device).cumsum(0).to(torch.int32)
        y = _grouped_mm(a, b.transpose(-2, -1), offs=offs)
        ga, gb = torch.autograd.grad(y, (a, b), gy)
        a32, b32 = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
        ref = torch.cat([blk @ b32[i].t() for i, blk in enumerate(a32.split(sizes))])
        ra, rb = torch.autograd.grad(ref, (a32, b32), gy.float())
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        return all(torch.allclose(u.float(), v, rtol=tol, atol=tol * 10) for u, v in ((y, ref), (ga, ra), (gb, rb)))
    except Exception:  # missing kernel for this device/dtype, layout restriction, ...
        return False


def _probe_meta(dtype) -> bool:
    try:
        a = torch.empty(32, 16, device="meta", dtype=dtype)
        b = torch.empty(3, 32, 16, device="meta", dtype=dtype).transpose(-2, -1)
        offs = torch.empty(3, device="meta", dtype=torch.int32)
        return tuple(_grouped_mm(a, b, offs=offs).shape) == (32, 32)
    except Exception:
        return False


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts run in: autocast's dtype if autocast is on for x's device, else x's dtype."""
    dev = x.device.type
    try:
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
    except (TypeError, RuntimeError, AttributeError):  # device type without autocast support
        pass
    return x.dtype


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.n_experts = E = max(1, m.moe_num_experts)
        self.top_k = min(m.moe_num_experts_per_tok, E)
        self.kind = cfg.mlp_kind
        self.dim = d = cfg.n_embd
        self.hidden = h = cfg.expert_hidden
        self.routing = m.moe_routing
        self.softmax_order = m.moe_softmax_order
        self.capacity_factor = m.moe_capacity_factor
        self.jitter = m.moe_router_jitter
        self.aux_loss_factor = m.moe_aux_loss_factor
        self.z_loss_factor = m.moe_z_loss_factor
        # None = grouped_mm where supported (see grouped_mm_supported); False forces the padded bmm path
        self.use_grouped: Optional[bool] = None

        self.router = nn.Linear(d, E, bias=False)
        h_in = 2 * h if self.kind == "swiglu" else h
        self.w_in = nn.Parameter(torch.empty(E, h_in, d))
        self.w_out = nn.Parameter(torch.empty(E, d, h))
        self.b_in = nn.Parameter(torch.empty(E, h_in)) if cfg.bias else None
        self.b_out = nn.Parameter(torch.empty(E, d)) if cfg.bias else None
        n_shared = m.moe_num_shared_experts
        self.shared = make_dense_mlp(self.kind, d, n_shared * h, cfg.bias, 0.0) if n_shared else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_expert_parameters(0.02, 0.02 / math.sqrt(2 * cfg.n_layer))

    # ------------------------------------------------------------------ init and accounting
    def reset_expert_parameters(self, std: float, std_resid: float) -> None:
        """Like the dense MLP: router and input projections N(0, std), output projections N(0, std_resid)."""
        nn.init.normal_(self.router.weight, 0.0, std)
        nn.init.normal_(self.w_in, 0.0, std)
        nn.init.normal_(self.w_out, 0.0, std_resid)
        for b in (self.b_in, self.b_out):
            if b is not None:
                nn.init.zeros_(b)

    def expert_params(self) -> int:
        """Parameters of one routed expert."""
        n = self.w_in[0].numel() + self.w_out[0].numel()
        return n + sum(b[0].numel() for b in (self.b_in, self.b_out) if b is not None)

    def inactive_params(self) -> int:
        """Routed-expert parameters a token does not use: (E - k) / E of them."""
        return (self.n_experts - self.top_k) * self.expert_params()

    def extra_repr(self) -> str:
        return (f"experts={self.n_experts}, top_k={self.top_k}, kind={self.kind}, hidden={self.hidden}, "
                f"routing={self.routing}")

    # ------------------------------------------------------------------ forward
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, E) float32 logits, autocast off; jittered input while training."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            xr = x.float()
            if self.training and self.jitter > 0:
                xr = xr * torch.empty_like(xr).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            return F.linear(xr, self.router.weight.float())

    def forward(self, x: torch.Tensor):
        shape = x.shape
        xf = x.reshape(-1, self.dim)
        logits = self.router_logits(xf)
        cdt = compute_dtype(x)
        xc = xf.to(cdt)
        if self.routing == "expert_choice":
            y, balance, load, dropped = self._expert_choice(xc, logits)
        else:
            y, balance, load, dropped = self._token_choice(xc, logits)
        if self.shared is not None:
            y = y + self.shared(xc)[0].to(y.dtype)
        z = torch.logsumexp(logits, dim=-1).square().mean()
        aux = {
            "loss": self.aux_loss_factor * balance + self.z_loss_factor * z,
            keys.MOE_AUX: balance.detach(),
            keys.MOE_Z: z.detach(),
            keys.MOE_LOAD: load.detach(),
            keys.MOE_DROPPED: dropped.detach(),
        }
        return self.dropout(y).view(shape[:-1] + (self.dim,)), aux

    # ------------------------------------------------------------------ routing
    def route(self, logits: torch.Tensor):
        """token_choice: (N, E) logits -> (weights (N, k) fp32, expert ids (N, k), probs (N, E))."""
        probs = logits.softmax(dim=-1)
        if self.softmax_order == "softmax_topk":
            weights, idx = probs.topk(self.top_k, dim=-1)
        else:
            top, idx = logits.topk(self.top_k, dim=-1)
            weights = top.softmax(dim=-1)
        return weights, idx, probs

    def capacity(self, n_tokens: int) -> int:
        """Static per-expert capacity: ceil(cf * N * k / E) in [1, N] (expert_choice: cf = 1 when unset)."""
        cf = self.capacity_factor or (1.0 if self.routing == "expert_choice" else 0.0)
        if cf <= 0:
            return n_tokens
        return max(1, min(n_tokens, math.ceil(cf * n_tokens * self.top_k / self.n_experts)))

    def _token_choice(self, xc: torch.Tensor, logits: torch.Tensor):
        N, E, k = xc.shape[0], self.n_experts, self.top_k
        weights, idx, probs = self.route(logits)
        flat = idx.reshape(-1)  # assignment a = n * k + j -> expert
        counts = torch.zeros(E, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
        load = counts.float() / (N * k)
        balance = E * (load * probs.mean(dim=0)).sum()

        dropless = self.capacity_factor <= 0
        grouped = dropless and self._grouped_ok(xc)
        order = torch.argsort(flat, stable=True)  # by expert, then by arrival (token index)
        e_sorted = flat[order]
        starts = counts.cumsum(0) - counts
        rank = torch.arange(N * k, device=flat.device) - starts[e_sorted]  # position within its expert
        offs = None
        if grouped:
            A = GROUP_ALIGN
            padded = ((counts + A - 1) // A * A).clamp_min(A)
            ends = padded.cumsum(0)
            rows = _round_up(N * k, A) + E * A  # static upper bound of sum(padded)
            ends = torch.where(torch.arange(E, device=flat.device) == E - 1, torch.full_like(ends, rows), ends)
            offs = ends.to(torch.int32)
            pos_sorted = (ends - padded)[e_sorted] + rank
            keep = None
        else:
            C = self.capacity(N)
            rows = E * C
            keep_sorted = rank < C
            pos_sorted = torch.where(keep_sorted, e_sorted * C + rank, rows)  # dropped -> a dump row
            keep = torch.empty_like(keep_sorted).scatter_(0, order, keep_sorted).view(N, k)
        # row -> source token (unfilled padding rows read token 0; their outputs are never read back)
        src = torch.zeros(rows + 1, dtype=torch.long, device=flat.device).scatter_(0, pos_sorted, order // k)[:rows]
        pos = torch.empty_like(order).scatter_(0, order, pos_sorted).clamp_max(rows - 1)  # assignment -> row
        e_rows = None  # expert of each row, for biases of the grouped layout
        if grouped and self.b_in is not None:
            e_rows = torch.zeros(rows + 1, dtype=torch.long, device=flat.device).scatter_(0, pos_sorted, e_sorted)
            e_rows = e_rows[:rows]
        y_rows = self._experts(xc[src], offs, e_rows)
        if keep is not None:
            weights = weights * keep
            dropped = 1.0 - keep.float().mean()
        else:
            dropped = torch.zeros((), device=xc.device)
        y = torch.bmm(weights.to(y_rows.dtype).unsqueeze(1), y_rows[pos].view(N, k, self.dim)).squeeze(1)
        return y, balance, load, dropped

    def _expert_choice(self, xc: torch.Tensor, logits: torch.Tensor):
        N, E = xc.shape[0], self.n_experts
        C = self.capacity(N)
        probs = logits.softmax(dim=-1)
        gate, tok = probs.t().topk(C, dim=-1)  # (E, C): each expert's chosen tokens
        tok = tok.reshape(-1)
        y_rows = self._experts(xc[tok], None, None)
        y = torch.zeros(N, self.dim, dtype=y_rows.dtype, device=xc.device)
        y = y.index_add(0, tok, y_rows * gate.reshape(-1, 1).to(y_rows.dtype))
        picked = torch.zeros(N, device=xc.device).index_add(0, tok, torch.ones_like(tok, dtype=torch.float32))
        dropped = (picked == 0).float().mean()
        load = torch.full((E,), 1.0 / E, device=xc.device)
        return y, torch.zeros((), device=xc.device), load, dropped

    # ------------------------------------------------------------------ experts
    def _grouped_ok(self, xc: torch.Tensor) -> bool:
        if self.use_grouped is False:
            return False
        esize = torch.empty((), dtype=xc.dtype).element_size()
        if (self.dim * esize) % 16 or (self.hidden * esize) % 16:  # grouped GEMM needs 16-byte row strides
            return False
        traced = bool(torch.compiler.is_compiling())
        return grouped_mm_supported(xc.device, xc.dtype, traced)

    def _matmul(self, rows: torch.Tensor, w: torch.Tensor, offs: Optional[torch.Tensor]) -> torch.Tensor:
        """rows (M, in) x w (E, out, in) -> (M, out): grouped by `offs`, or E equal blocks of M/E rows (bmm)."""
        wt = w.to(rows.dtype).transpose(-2, -1)
        if offs is not None:
            return _grouped_mm(rows, wt, offs=offs)
        E = w.shape[0]
        return torch.bmm(rows.view(E, -1, rows.shape[-1]), wt).view(rows.shape[0], -1)

    def _bias(self, hdn: torch.Tensor, b: Optional[torch.Tensor], e_rows: Optional[torch.Tensor]):
        if b is None:
            return hdn
        b = b.to(hdn.dtype)
        if e_rows is not None:
            return hdn + b[e_rows]
        return (hdn.view(b.shape[0], -1, b.shape[1]) + b.unsqueeze(1)).view_as(hdn)

    def _experts(self, rows: torch.Tensor, offs: Optional[torch.Tensor], e_rows: Optional[torch.Tensor]):
        """Apply each expert to its rows. Without offs, rows are E equal blocks (one per expert)."""
        hdn = self._bias(self._matmul(rows, self.w_in, offs), self.b_in, e_rows)
        if self.kind == "swiglu":
            gate, up = hdn.chunk(2, dim=-1)
            act = F.silu(gate) * up
        elif self.kind == "relu2":
            act = F.relu(hdn).square()
        else:
            act = F.gelu(hdn)
        return self._bias(self._matmul(act, self.w_out, offs), self.b_out, e_rows)

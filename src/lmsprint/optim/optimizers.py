"""Optimizers: `build_optimizer(model, optim_cfg, device_type) -> torch.optim.Optimizer` for `opt`
adamw | sgd | lamb | lion | muon, with the parameter groups every optimizer shares.

Parameter roles (see `param_roles`):
- `matrix`: 2-D weights of hidden layers (attention and MLP projections)      -> weight decay; Muon under `opt` muon
- `expert`: 3-D+ weight tensors, e.g. MoE expert stacks (E, d_in, d_out)      -> weight decay; AdamW under muon
- `head`:   an untied output head                                               -> weight decay; AdamW under muon
- `embed`:  nn.Embedding weights (and so the tied head)                         -> no decay
- `other`:  norms, biases (also per-expert (E, d) biases named b_*), and parametrization internals (the
            orthogonal Q/K/V reflectors, whose fixed +-1 diagonal must never move)  -> no decay
Every param group carries "base_lr" (the peak lr) and "role"; the training loop sets
`group["lr"] = group["base_lr"] * lr_multiplier(progress, optim_cfg)` each step. The peak lr of a group is
`lr`, except `embed` (`embed_lr` if > 0), `head` (`head_lr` if > 0) and, under muon, `matrix` (`muon_lr`).

Optimizers:
- adamw: torch.optim.AdamW, fused on CUDA, foreach elsewhere.
- sgd: torch.optim.SGD with `momentum` / `nesterov`; weight decay is SGD's (coupled L2) decay.
- lamb: pytorch_optimizer.Lamb (You et al. 2019) with the weight decay inside the trust ratio as in the paper
  (weight_decouple=False) and `lamb_clamp` as the clip of the weight norm (phi). Like the paper's v3 and the
  library, the moments are not bias-corrected (this only changes the balance of the Adam ratio and the decay
  term in the first ~1/(1-beta2) steps, the trust ratio normalizes the rest away); `adam_debias=True` keeps the
  library from dividing the step size by 1 - beta1^t, which would inflate early steps up to 10x.
- lion: pytorch_optimizer.Lion (Chen et al. 2023) with decoupled weight decay, betas = (`beta1`, `beta2`).
- muon: torch.optim.Muon (Newton-Schulz orthogonalized Nesterov momentum, lr = `muon_lr`, momentum =
  `muon_momentum`, decoupled decay `weight_decay`) for the 2-D `matrix` params, AdamW (lr = `lr`) for embeddings,
  head, norms, biases and 3-D expert tensors (torch's Muon accepts 2-D params only), as modded-nanogpt splits
  them; both are wrapped in one `CombinedOptimizer` so the loop, grad scaler and checkpoints see one optimizer.

The registry `OPTIMIZERS` (name -> `OptimizerSpec`: builder, optimizer-state bytes per parameter role, compat
rule) is the one list of optimizers: adding one means a builder and a registry entry here, plus its test.
`optimizer_state_bytes(optim_cfg, model)` is the state memory the micro-batch search reserves;
`check_optimizer_config(optim_cfg)` raises ConfigError for combinations that cannot run.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn

from ..config import OptimConfig
from ..errors import CheckpointError, ConfigError
from ..hw import unwrap

DECAY_ROLES = ("matrix", "expert", "head")


# ----------------------------------------------------------------------------------------------------------------
# parameter roles and groups


def param_roles(model: nn.Module) -> "OrderedDict[str, tuple[str, nn.Parameter]]":
    """name -> (role, param) for every trainable parameter (shared/tied parameters once)."""
    model = unwrap(model)
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    out: OrderedDict = OrderedDict()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        is_bias = leaf == "bias" or leaf.startswith("b_") or leaf.endswith("_bias")  # incl. (E, d) expert biases
        if id(p) in embeds:
            role = "embed"
        elif "parametrizations." in name or p.ndim < 2 or is_bias:
            role = "other"
        elif id(p) in head_ids:
            role = "head"
        elif p.ndim == 2:
            role = "matrix"
        else:
            role = "expert"
        out[name] = (role, p)
    return out


def role_lr(role: str, cfg) -> float:
    """Peak lr of a role's group (cfg: OptimConfig): `embed_lr` / `head_lr` where set, `muon_lr` for Muon's
    matrices, else `lr`."""
    if role == "matrix" and cfg.opt == "muon":
        return cfg.muon_lr
    own = {"embed": cfg.embed_lr, "head": cfg.head_lr}.get(role, 0.0)
    return own if own > 0 else cfg.lr


def _groups(roles: dict, wanted: Iterable[str], cfg) -> list[dict]:
    """One param group per role in `wanted` (empty ones dropped) at `role_lr`; decay only on DECAY_ROLES."""
    groups = []
    for role in wanted:
        params = [p for r, p in roles.values() if r == role]
        lr = role_lr(role, cfg)
        if params:
            wd = cfg.weight_decay if role in DECAY_ROLES else 0.0
            groups.append({"params": params, "lr": lr, "base_lr": lr, "weight_decay": wd, "role": role})
    return groups


ALL_ROLES = ("matrix", "expert", "head", "embed", "other")


# ----------------------------------------------------------------------------------------------------------------
# combined optimizer (Muon + AdamW)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters behaving as one: shared `param_groups` (the real group
    dicts, so setting group["lr"] reaches the inner optimizer), `step`, `zero_grad`, and a `state_dict` /
    `load_state_dict` that round-trip every inner optimizer exactly."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        # deliberately not calling Optimizer.__init__: groups and state live in the inner optimizers
        self.optimizers = list(optimizers)
        self.defaults = {}
        for hooks in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                      "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                      "_optimizer_load_state_dict_post_hooks"):
            setattr(self, hooks, OrderedDict())
        if hasattr(self, "_patch_step_function"):
            self._patch_step_function()

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        out: dict = {}
        for o in self.optimizers:
            out.update(o.state)
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"combined": [type(o).__name__ for o in self.optimizers],
                "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        names = state_dict.get("combined") if isinstance(state_dict, dict) else None
        if names != [type(o).__name__ for o in self.optimizers]:
            raise CheckpointError(f"checkpoint optimizer state is for {names or 'a single optimizer'}, not "
                                  f"{[type(o).__name__ for o in self.optimizers]}; resume with the same `opt`")
        for o, sd in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(sd)

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("add the group to one of CombinedOptimizer.optimizers")

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


# ----------------------------------------------------------------------------------------------------------------
# builders


def _pytorch_optimizer(name: str):
    try:
        import pytorch_optimizer  # lazy: optional dependency (lmsprint[optim]), only for lamb and lion
    except ImportError:
        raise ConfigError(_needs_pytorch_optimizer(name.lower()))
    return getattr(pytorch_optimizer, name)


def _needs_pytorch_optimizer(name: str) -> str:
    return f"`opt` {name} needs the pytorch-optimizer package; pip install pytorch-optimizer"


def _adamw(groups: list[dict], cfg, device_type: str) -> torch.optim.Optimizer:
    kw = {"fused": True} if device_type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kw)


def _build_adamw(roles, cfg, device_type):
    return _adamw(_groups(roles, ALL_ROLES, cfg), cfg, device_type)


def _build_sgd(roles, cfg, device_type):
    return torch.optim.SGD(_groups(roles, ALL_ROLES, cfg), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov)


def _build_lamb(roles, cfg, device_type):
    opt = _pytorch_optimizer("Lamb")(_groups(roles, ALL_ROLES, cfg), lr=cfg.lr,
                                      betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decouple=False,
                                      adam_debias=True)  # step size = lr, not lr / (1 - beta1^t)
    opt.clamp = cfg.lamb_clamp if cfg.lamb_clamp > 0 else float("inf")  # phi(||w||) = min(||w||, clamp)
    return opt


def _build_lion(roles, cfg, device_type):
    return _pytorch_optimizer("Lion")(_groups(roles, ALL_ROLES, cfg), lr=cfg.lr,
                                      betas=(cfg.beta1, cfg.beta2), weight_decouple=True)


def _build_muon(roles, cfg, device_type):
    muon_groups = _groups(roles, ("matrix",), cfg)
    adam_groups = _groups(roles, ("expert", "head", "embed", "other"), cfg)
    parts = []
    if muon_groups:
        parts.append(torch.optim.Muon(muon_groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                                      weight_decay=cfg.weight_decay, nesterov=True))
    if adam_groups:
        parts.append(_adamw(adam_groups, cfg, device_type))
    return CombinedOptimizer(parts)


# ----------------------------------------------------------------------------------------------------------------
# compatibility rules


def _check_sgd(cfg) -> None:
    if cfg.nesterov and cfg.momentum <= 0:
        raise ConfigError("`nesterov` needs `momentum` > 0")


def _check_pytorch_optimizer(cfg) -> None:
    if importlib.util.find_spec("pytorch_optimizer") is None:
        raise ConfigError(_needs_pytorch_optimizer(cfg.opt))


# ----------------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: how to build it, the state it keeps, and what it refuses.

    build(roles, optim_cfg, device_type) -> torch.optim.Optimizer, roles as `param_roles` returns them;
    state_bytes(optim_cfg, role) -> bytes of optimizer state per parameter of that role (fp32 state);
    check(optim_cfg) -> None, raising ConfigError for options this optimizer cannot run with;
    no_fsdp: why it cannot run on FSDP's sharded (DTensor) parameters (None: it can)."""

    build: Callable[[dict, OptimConfig, str], torch.optim.Optimizer]
    state_bytes: Callable[[OptimConfig, str], int]
    check: Optional[Callable[[OptimConfig], None]] = None
    no_fsdp: Optional[str] = None


OPTIMIZERS: dict[str, OptimizerSpec] = {
    # exp_avg + exp_avg_sq
    "adamw": OptimizerSpec(_build_adamw, lambda cfg, role: 8),
    # momentum_buffer only when momentum is on
    "sgd": OptimizerSpec(_build_sgd, lambda cfg, role: 4 if cfg.momentum > 0 else 0, _check_sgd),
    # exp_avg + exp_avg_sq
    "lamb": OptimizerSpec(_build_lamb, lambda cfg, role: 8, _check_pytorch_optimizer,
                          no_fsdp="its trust ratio needs norms of whole tensors and pytorch-optimizer's Lamb fails on "
                          "FSDP's shards"),
    # exp_avg
    "lion": OptimizerSpec(_build_lion, lambda cfg, role: 4, _check_pytorch_optimizer),
    # Muon's momentum_buffer on the 2-D matrices, AdamW's two moments on everything else
    "muon": OptimizerSpec(_build_muon, lambda cfg, role: 4 if role == "matrix" else 8,
                          no_fsdp="its Newton-Schulz step needs each whole matrix and FSDP gives every process a shard "
                          "of it"),
}


def _spec(name: str) -> OptimizerSpec:
    spec = OPTIMIZERS.get(name)
    if spec is None:
        raise ConfigError(f"`opt` '{name}' is not one of: {', '.join(OPTIMIZERS)}")
    return spec


def build_optimizer(model: nn.Module, optim_cfg, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The optimizer `optim_cfg.opt` over `model`'s parameters; every param group has "base_lr"."""
    return _spec(optim_cfg.opt).build(param_roles(model), optim_cfg, device_type)


def optimizer_state_bytes(optim_cfg, params: Union[nn.Module, int]) -> int:
    """Bytes of optimizer state `optim_cfg.opt` keeps for `params`: a model (counted per parameter role, exact for
    muon's split) or a parameter count (every parameter counted at the rate of the non-matrix roles)."""
    spec = _spec(optim_cfg.opt)
    if isinstance(params, int):
        return params * spec.state_bytes(optim_cfg, "other")
    return sum(p.numel() * spec.state_bytes(optim_cfg, role) for role, p in param_roles(params).values())


def check_optimizer_config(optim_cfg) -> None:
    """Refuse optimizer options that cannot run together (ConfigError)."""
    spec = _spec(optim_cfg.opt)
    if spec.check is not None:
        spec.check(optim_cfg)

"""Optimizers: `build_optimizer(model, optim_cfg, device_type) -> torch.optim.Optimizer` for --opt
adamw | sgd | lamb | lion | muon, with the parameter groups every optimizer shares.

Parameter roles (see `param_roles`):
- `matrix`: 2-D weights of hidden layers (attention and MLP projections)      -> weight decay; Muon under --opt muon
- `expert`: 3-D+ weight tensors, e.g. MoE expert stacks (E, d_in, d_out)      -> weight decay; AdamW under muon
- `head`:   an untied output head                                               -> weight decay; AdamW under muon
- `embed`:  nn.Embedding weights (and so the tied head)                         -> no decay
- `other`:  norms, biases (also per-expert (E, d) biases named b_*), and parametrization internals (the
            orthogonal Q/K/V reflectors, whose fixed +-1 diagonal must never move)  -> no decay
Every param group carries "base_lr" (the peak lr) and "role"; the training loop sets
`group["lr"] = group["base_lr"] * lr_multiplier(progress, optim_cfg)` each step.

Optimizers:
- adamw: torch.optim.AdamW, fused on CUDA, foreach elsewhere.
- sgd: torch.optim.SGD with --momentum / --nesterov; weight decay is SGD's (coupled L2) decay.
- lamb: pytorch_optimizer.Lamb (You et al. 2019) with the weight decay inside the trust ratio as in the paper
  (weight_decouple=False) and `--lamb_clamp` as the clip of the weight norm (phi). Like the paper's v3 and the
  library, the moments are not bias-corrected (this only changes the balance of the Adam ratio and the decay
  term in the first ~1/(1-beta2) steps, the trust ratio normalizes the rest away); `adam_debias=True` keeps the
  library from dividing the step size by 1 - beta1^t, which would inflate early steps up to 10x.
- lion: pytorch_optimizer.Lion (Chen et al. 2023) with decoupled weight decay, betas = (--beta1, --beta2).
- muon: torch.optim.Muon (Newton-Schulz orthogonalized Nesterov momentum, lr = --muon_lr, momentum =
  --muon_momentum, decoupled decay --weight_decay) for the 2-D `matrix` params, AdamW (lr = --lr) for embeddings,
  head, norms, biases and 3-D expert tensors (torch's Muon accepts 2-D params only), as modded-nanogpt splits
  them; both are wrapped in one `CombinedOptimizer` so the loop, grad scaler and checkpoints see one optimizer.

`check_compat(cfg)` refuses option combinations that cannot run, with one UserError line; the config validation
calls it.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from typing import Iterable

import torch
import torch.nn as nn

from ..errors import UserError

DECAY_ROLES = ("matrix", "expert", "head")


# ----------------------------------------------------------------------------------------------------------------
# parameter roles and groups


def param_roles(model: nn.Module) -> "OrderedDict[str, tuple[str, nn.Parameter]]":
    """name -> (role, param) for every trainable parameter (shared/tied parameters once)."""
    from ..train.distributed import unwrap

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


def _groups(roles: dict, wanted: Iterable[str], lr: float, weight_decay: float) -> list[dict]:
    """One param group per role in `wanted` (empty ones dropped); decay only on DECAY_ROLES."""
    groups = []
    for role in wanted:
        params = [p for r, p in roles.values() if r == role]
        if params:
            wd = weight_decay if role in DECAY_ROLES else 0.0
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
            raise UserError(f"checkpoint optimizer state is for {names or 'a single optimizer'}, not "
                            f"{[type(o).__name__ for o in self.optimizers]}; resume with the same --opt")
        for o, sd in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(sd)

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("add the group to one of CombinedOptimizer.optimizers")

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


# ----------------------------------------------------------------------------------------------------------------
# build


def _pytorch_optimizer(name: str):
    try:
        import pytorch_optimizer
    except ImportError:
        raise UserError(f"--opt {name.lower()} needs the pytorch-optimizer package; pip install pytorch-optimizer")
    return getattr(pytorch_optimizer, name)


def _adamw(groups: list[dict], cfg, device_type: str) -> torch.optim.Optimizer:
    kw = {"fused": True} if device_type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kw)


def build_optimizer(model: nn.Module, optim_cfg, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The optimizer of --opt over `model`'s parameters; every param group has "base_lr"."""
    cfg = optim_cfg
    roles = param_roles(model)
    if cfg.opt == "adamw":
        return _adamw(_groups(roles, ALL_ROLES, cfg.lr, cfg.weight_decay), cfg, device_type)
    if cfg.opt == "sgd":
        return torch.optim.SGD(_groups(roles, ALL_ROLES, cfg.lr, cfg.weight_decay), lr=cfg.lr,
                               momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.opt == "lamb":
        opt = _pytorch_optimizer("Lamb")(_groups(roles, ALL_ROLES, cfg.lr, cfg.weight_decay), lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decouple=False,
                                          adam_debias=True)  # step size = lr, not lr / (1 - beta1^t)
        opt.clamp = cfg.lamb_clamp if cfg.lamb_clamp > 0 else float("inf")  # phi(||w||) = min(||w||, clamp)
        return opt
    if cfg.opt == "lion":
        return _pytorch_optimizer("Lion")(_groups(roles, ALL_ROLES, cfg.lr, cfg.weight_decay), lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), weight_decouple=True)
    if cfg.opt == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise UserError(f"--opt muon needs torch.optim.Muon, missing in torch {torch.__version__}; upgrade torch "
                            "or choose another --opt")
        muon_groups = _groups(roles, ("matrix",), cfg.muon_lr, cfg.weight_decay)
        adam_groups = _groups(roles, ("expert", "head", "embed", "other"), cfg.lr, cfg.weight_decay)
        parts = []
        if muon_groups:
            parts.append(torch.optim.Muon(muon_groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                                          weight_decay=cfg.weight_decay, nesterov=True))
        if adam_groups:
            parts.append(_adamw(adam_groups, cfg, device_type))
        return CombinedOptimizer(parts)
    raise UserError(f"--opt '{cfg.opt}' is not one of: adamw, sgd, lamb, lion, muon")


# ----------------------------------------------------------------------------------------------------------------
# compatibility of options


def check_compat(cfg) -> None:
    """Refuse combinations of options that cannot work together (cfg: RunConfig); one UserError line."""
    from ..model.attention import check_attention_compat
    from .schedules import check_schedule_compat

    check_attention_compat(cfg)
    msg = check_schedule_compat(cfg)
    if msg:
        raise UserError(msg)
    o = cfg.optim
    if o.opt == "sgd" and o.nesterov and o.momentum <= 0:
        raise UserError("--nesterov needs --momentum > 0")
    if o.opt == "muon" and not hasattr(torch.optim, "Muon"):
        raise UserError(f"--opt muon needs torch.optim.Muon, missing in torch {torch.__version__}; upgrade torch or "
                        "choose another --opt")
    if o.opt in ("lamb", "lion") and importlib.util.find_spec("pytorch_optimizer") is None:
        raise UserError(f"--opt {o.opt} needs the pytorch-optimizer package; pip install pytorch-optimizer")

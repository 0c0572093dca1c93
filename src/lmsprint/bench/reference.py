"""The in-run reference: the hackathon llm-baselines training step, reproduced, so that every speed in the suite
is a ratio measured on the same GPU, in the same run, against the step users came from.

`ReferenceStep(cfg, model, device)` is llm-baselines' step (`src/optim/base.py`, hackathon version) around
lmsprint's Transformer, whose float32 logits equal llm-baselines' bit for bit for the `base` and `llama2`
presets:
- per micro-batch, under `torch.amp.autocast(bfloat16)` (llm-baselines' `type_ctx`; nothing for float32): the
  model's forward, then `lm_head(x)` as `F.linear` and `F.cross_entropy` over the full (B*T, V) logits with
  `ignore_index=-1`; `(loss / acc_steps).backward()`;
- `clip_grad_norm_` only when `grad_clip` != 0 (llm-baselines' default is 0);
- `torch.optim.AdamW` with llm-baselines' two groups (decay: the weights of linear layers, i.e. lmsprint's
  `matrix`/`head`/`expert` roles; no decay: biases, norms, embeddings), `fused=True` on CUDA, lr/betas/
  weight_decay of the config, default eps; `OneCycleLR` stepped once per step (cycle_momentum off); then
  `zero_grad(set_to_none=True)`.
- eager unless `compile`, in which case the whole model is compiled as llm-baselines' `torch.compile(model)`.
No chunked loss, no accuracy or statistics, no micro-batch re-splitting: the step users measured on the
hackathon's code. `reference_problems(cfg)` lists what a config asks for that llm-baselines' step cannot do.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..hw import autocast_context, resolve_dtype
from ..optim.optimizers import param_roles

_DECAY_ROLES = ("matrix", "head", "expert")


def reference_problems(cfg) -> list[str]:
    """Flags of `cfg` that llm-baselines' step has no counterpart for (empty: the reference can run it)."""
    out = []
    t, m, o = cfg.train, cfg.model, cfg.optim
    if o.opt != "adamw":
        out.append("`opt` adamw")
    if t.label_smoothing:
        out.append("`label_smoothing` 0")
    if m.logit_softcap:
        out.append("`logit_softcap` 0")
    if m.moe.moe_num_experts > 1:  # its MoE auxiliary losses are a step lmsprint's own step takes
        out.append("`moe_num_experts` 1 (llm-baselines' models are dense)")
    if t.dtype == "float16":
        out.append("`dtype` bfloat16 or float32")
    if t.micro_batch is not None:
        out.append("no `micro_batch`")
    if getattr(t, "data_parallel", "ddp") == "fsdp":
        out.append("`data_parallel` ddp")
    return out


def reference_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """llm-baselines' two AdamW groups: decay for the weights of linear layers, none for the rest."""
    roles = param_roles(model).values()
    decay = [p for role, p in roles if role in _DECAY_ROLES]
    rest = [p for role, p in roles if role not in _DECAY_ROLES]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class ReferenceStep:
    """llm-baselines' training step around `model` (see module doc); `step(x, y)` runs one optimizer step over the
    batch (x, y) of batch_size*acc_steps sequences. Has the attributes `bench_config` reads from a `TrainStep`."""

    def __init__(self, cfg, model: nn.Module, device, compile_backend: str = "inductor"):
        problems = reference_problems(cfg)
        if problems:
            raise ConfigError("the llm-baselines reference step needs " + ", ".join(problems))
        t, o = cfg.train, cfg.optim
        self.cfg, self.model, self.device = cfg, model, torch.device(device)
        self.dtype = resolve_dtype(t.dtype, self.device)
        kw = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(reference_param_groups(model, o.weight_decay), lr=o.lr,
                                           betas=(o.beta1, o.beta2), **kw)
        if o.scheduler in ("cos", "linear"):
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=o.lr, total_steps=t.iterations, pct_start=o.warmup_percent,
                anneal_strategy=o.scheduler, cycle_momentum=False, div_factor=o.div_factor,
                final_div_factor=o.final_div_factor)
        else:
            self.scheduler = None
        self.forward_model = torch.compile(model, backend=compile_backend) if t.compile else model
        self.micro_bs, self.n_micro = t.batch_size, t.acc_steps
        self.rows = self.micro_bs * self.n_micro
        self.tokens_per_step = self.rows * cfg.model.sequence_length
        self.scaler = None

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """llm-baselines' `model(x, targets=y)["loss"]`: full logits, plain cross-entropy."""
        hidden, _ = self.forward_model(x)
        logits = F.linear(hidden, self.model.head_weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1)

    def accumulate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The gradients of one optimizer step's batch, micro-batch by micro-batch; the last loss / acc_steps."""
        acc, mb = self.n_micro, self.micro_bs
        loss = None
        for i in range(acc):
            with autocast_context(self.device, self.dtype):
                loss = self.loss(x[i * mb:(i + 1) * mb], y[i * mb:(i + 1) * mb])
            loss = loss / acc
            loss.backward()
        return loss.detach()

    def update(self) -> None:
        """Clip (when `grad_clip` != 0), step the optimizer and the schedule, zero the gradients."""
        if self.cfg.optim.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the last micro-batch's loss / acc_steps (a device tensor, as llm-baselines)."""
        loss = self.accumulate(x, y)
        self.update()
        return loss

    __call__ = step


__all__ = ["ReferenceStep", "reference_param_groups", "reference_problems"]

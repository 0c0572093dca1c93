"""The typed configuration tree of a run, every option defined once with all its facts, and its flat flag index.

`RunConfig = {data, model{attn, moe}, optim, train, log}`. Each option is a dataclass field made by `option()`:
flag name (llm-baselines' names where they exist), help, choices, checks, whether it may accompany `--resume`,
whether `compare` ignores it, whether `sweep` sets it, and its piece of the derived run name.

Also here, by flag name: `FLAGS` (name -> (path, field, type)), `get_value`, `set_value`, `coerce`,
`apply_values`, `flatten`, `typed`, `flags_where(key)`, `RESUME_SAFE` and `run_name_parts(cfg)`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from ..errors import ConfigError, UserError
from ..keys import parse_target
from .options import (INT_MAX, SEED_MAX, convert, duration_check, frac, frac_open, is_numeric, iter_fields, nonneg,
                      option, owner, parse_duration, positive, unknown_name_error)
from .validate import validate_config

# ---------------------------------------------------------------------------------------------------- name parts
# each returns this option's piece of the derived run name, or None (see `run_name_parts`)


def _model_shape_part(v, cfg) -> str:
    return f"{v}_l{cfg.model.n_layer}_d{cfg.model.n_embd}"


def _attention_part(v, cfg) -> Optional[str]:
    if v == "causal":
        return None
    return v + (f"{cfg.model.attn.attention_window}" if v in ("local", "global_local") else "")


def _moe_part(v, cfg) -> Optional[str]:
    return f"moe{v}k{cfg.model.moe.moe_num_experts_per_tok}" if v > 1 else None


def _opt_part(v, cfg) -> Optional[str]:
    return v if v != "adamw" else None


def _time_budget_part(v, cfg) -> Optional[str]:
    return "tb" + str(v).replace("/", "-").replace(" ", "") if parse_duration(v) else None


def _seed_part(v, cfg) -> str:
    return f"s{v}"


def _label_smoothing_part(v, cfg) -> Optional[str]:
    return f"ls{v:g}" if v > 0 else None


def _target_check(v) -> Optional[str]:
    try:
        parse_target(v)
    except ValueError as e:
        return str(e)
    return None


AUTO = "auto"  # `micro_batch`, `eval_freq` and `final_eval` auto
EVALS_PER_BUDGET = 10  # `eval_freq` auto with a time budget: an eval every tenth of it
EVAL_FREQ_STEPS = 200  # `eval_freq` auto without one: llm-baselines' default
_MICRO_BATCH = "must be empty, 'auto' or a positive integer"
_EVAL_FREQ = "must be 'auto' or a positive integer (steps)"


def _auto_or_count(v, problem: str) -> Union[int, str]:
    """'auto' or a positive integer in ASCII digits (what the CLI and config files give: 'auto', '8', 8); ValueError
    saying `problem` otherwise."""
    if isinstance(v, str) and v.strip() == AUTO:
        return AUTO
    text = str(v).strip() if isinstance(v, (str, int)) and not isinstance(v, bool) else ""
    if not re.fullmatch(r"[0-9]+", text) or not 0 < int(text) <= INT_MAX:
        raise ValueError(problem)
    return int(text)


def _auto_or_count_check(problem: str):
    def check(v) -> Optional[str]:
        ok = v == AUTO or (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT_MAX)
        return None if ok else problem
    return check


def parse_micro_batch(v) -> Union[None, int, str]:
    """`micro_batch` as typed once: None (unset: batch_size), 'auto', or a positive number of sequences. Takes what
    the CLI and config files give ('', 'auto', '8', 8, null)."""
    if v is None or (isinstance(v, str) and v.strip() in ("", "none", "null")):
        return None
    return _auto_or_count(v, _MICRO_BATCH)


def parse_eval_freq(v) -> Union[int, str]:
    """`eval_freq` as typed once: 'auto' or a positive number of steps."""
    return _auto_or_count(v, _EVAL_FREQ)


_micro_batch_check = _auto_or_count_check(_MICRO_BATCH)
_eval_freq_check = _auto_or_count_check(_EVAL_FREQ)


def _steps_check(v) -> Optional[str]:
    if v.strip() and not re.fullmatch(r"\s*[0-9]+\s*(,\s*[0-9]+\s*)*,?\s*", v):
        return "must be a comma-separated list of step numbers, e.g. 80,160,320"
    if any(not 0 < int(x) <= INT_MAX for x in v.split(",") if x.strip()):
        return f"each step must be in 1..{INT_MAX}"
    return None


def checkpoint_steps(train_cfg) -> frozenset:
    """The steps of `save_checkpoint_steps` as a set of ints (empty when unset)."""
    return frozenset(int(x) for x in str(train_cfg.save_checkpoint_steps or "").split(",") if x.strip())


_SEED = (0, SEED_MAX)
_NAMED_BY_SWEEP = "the sweep names each run"

# ---------------------------------------------------------------------------------------------------- the tree


@dataclass
class DataConfig:
    dataset: str = option("shakespeare", "data source: a named source (see `lmsprint prepare --help`), "
                       "hf:ORG/NAME[:CONFIG] for any hub dataset, or a path: a file/folder of .txt/.jsonl/.parquet, a "
                       "nanoGPT folder (train.bin/val.bin, read in place) or a datasets save_to_disk folder",
                       common=True)
    data_dir: str = option("./data_cache", "where prepared token files + manifests are cached (shared by runs)",
                        resume_safe=True, bookkeeping=True)
    tokenizer: Optional[str] = option(None, "tokenizer: gpt2, char, or a Hugging Face tokenizer.json file or tokenizer "
                                   "folder (default: the dataset's own)", metavar="gpt2|char|PATH",
                                   check=lambda v: None if v.strip() else "must be gpt2, char or a path")
    data_in_ram: bool = option(False, "load the token files into RAM instead of memory-mapping them",
                            resume_safe=True)
    data_seed: int = option(1337, "seed of the training batch sampler (independent of --seed)", bounds=_SEED)
    val_fraction: Optional[float] = option(None, "fraction of documents held out as the val split (default: the "
                                        "dataset's own, under every preset: 0.05 for shakespeare, 0.005 for other "
                                        "sources)",
                                        check=lambda v: None if 0 < v < 0.5 else "must be in (0, 0.5)")
    max_docs: int = option(0, "prepare at most this many documents from the source (0 = all)", check=nonneg)
    text_field: str = option("text", "the field (column) holding the text in .jsonl/.parquet files, datasets folders "
                          "and hub datasets", check=lambda v: None if v.strip() else "must not be empty")
    num_proc: int = option(0, "tokenizer processes for prepare (0 = all cores)", check=nonneg, resume_safe=True,
                        bookkeeping=True)


@dataclass
class AttentionConfig:
    attention: str = option("causal", "attention kind: causal (full), local (sliding window), global_local "
                         "(per-layer pattern and/or per-head split)", choices=["causal", "local", "global_local"],
                         name_part=_attention_part)
    attention_window: int = option(256, "window W of local attention: each token sees itself and the W-1 before it",
                                check=positive)
    attention_pattern: str = option("", "global_local per-layer pattern tiled over layers, S = local, L = global "
                                 "(e.g. SSSL)", check=lambda v: None if re.fullmatch(r"[SL]*", v) else
                                 "must contain only S (local) and L (global), e.g. SSSL")
    local_heads: int = option(0, "global_local: number of heads per layer that use the local window", check=nonneg)
    shuffle_query_frac: float = option(0.0, "query-shuffle regularizer: fraction of query rows replaced by other rows "
                                    "(training only, 0 = off)", check=frac)
    shuffle_query_mode: str = option("batch", "causally safe query shuffle: batch (same position, another sequence) or "
                                  "past (an earlier position of the same sequence)", choices=["batch", "past"])
    orthogonal_qkv: bool = option(False, "keep per-head Q/K/V projections orthonormal (QR/Householder parametrization)")
    attn_backend: str = option("auto", "attention implementation: auto (flex on CUDA for windows, else SDPA), sdpa, flex",
                            choices=["auto", "sdpa", "flex"], resume_safe=True)


@dataclass
class MoEConfig:
    moe_num_experts: int = option(0, "number of experts in MoE layers (0 or 1 = dense MLP)", check=nonneg,
                               name_part=_moe_part)
    moe_num_experts_per_tok: int = option(2, "experts per token (top-k) for token_choice routing", check=positive)
    moe_softmax_order: str = option("topk_softmax", "router: softmax over the top-k logits (topk_softmax) or top-k of the "
                                 "full softmax (softmax_topk)", choices=["topk_softmax", "softmax_topk"])
    moe_aux_loss_factor: float = option(0.01, "weight of the Switch load-balancing loss", check=nonneg)
    moe_z_loss_factor: float = option(0.001, "weight of the ST-MoE router z-loss", check=nonneg)
    moe_num_shared_experts: int = option(0, "always-on shared experts added to every MoE layer", check=nonneg)
    moe_capacity_factor: float = option(0.0, "expert capacity = factor * tokens * k / experts; tokens over it are "
                                     "dropped (0 = dropless)", check=nonneg)
    moe_router_jitter: float = option(0.0, "multiplicative uniform jitter on router inputs while training (0 = off)",
                                   check=frac_open)
    moe_every: int = option(1, "use MoE in every Nth block (1 = all blocks)", check=positive)
    moe_routing: str = option("token_choice", "routing: token_choice (each token picks k experts) or expert_choice "
                           "(each expert picks its tokens)", choices=["token_choice", "expert_choice"])
    moe_expert_hidden: int = option(0, "hidden size of each expert (0 = the dense MLP's hidden size)", check=nonneg)


@dataclass
class ModelConfig:
    model: str = option("base", "preset: base (GPT-2) or llama2", choices=["base", "llama2"],
                     name_part=_model_shape_part, common=True)
    n_layer: int = option(12, "number of Transformer blocks", check=positive, common=True)
    n_head: int = option(12, "attention heads", check=positive, common=True)
    n_embd: int = option(768, "model width", check=positive, common=True)
    sequence_length: int = option(512, "context length in tokens", check=lambda v: None if v >= 1 else
                               "must be >= 1; use e.g. --sequence_length 512", aliases=("block_size",), common=True)
    vocab_size: int = option(50304, "embedding rows (>= the tokenizer's vocabulary; 50304 pads GPT-2's 50257)",
                          check=positive)
    dropout: float = option(0.0, "dropout probability", check=frac_open)
    bias: bool = option(False, "use biases in linear layers and LayerNorm")
    rmsnorm_eps: float = option(1e-5, "epsilon of RMSNorm/LayerNorm", check=positive)
    multiple_of: int = option(256, "llama2: SwiGLU hidden size is rounded up to a multiple of this", check=positive)
    norm: Optional[str] = option(None, "override the preset's norm", choices=[None, "layernorm", "rmsnorm"])
    mlp: Optional[str] = option(None, "override the preset's MLP: gelu, swiglu, relu2 (ReLU squared, 4x hidden)",
                             choices=[None, "gelu", "swiglu", "relu2"])
    pos: Optional[str] = option(None, "override the preset's positions", choices=[None, "learned", "rope"])
    rope_theta: float = option(10000.0, "RoPE base", check=positive)
    tie_embeddings: bool = option(True, "tie the input embedding and the output head")
    qk_norm: bool = option(False, "RMS-normalise queries and keys per head (no weight) before RoPE", group="attention")
    zero_init_proj: bool = option(False, "zero-initialise the residual output projections (attention and MLP) and "
                               "the untied output head")
    logit_softcap: float = option(0.0, "cap the output logits at +-C smoothly: C*tanh(logits/C), in training, "
                               "evaluation and generation (0 = off)", check=nonneg)
    attn: AttentionConfig = field(default_factory=AttentionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    # parts chosen by the preset unless overridden
    @property
    def norm_kind(self) -> str:
        return self.norm or ("rmsnorm" if self.model == "llama2" else "layernorm")

    @property
    def mlp_kind(self) -> str:
        return self.mlp or ("swiglu" if self.model == "llama2" else "gelu")

    @property
    def pos_kind(self) -> str:
        return self.pos or ("rope" if self.model == "llama2" else "learned")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """Dense MLP hidden size: 4*d for GELU and ReLU²; llama2's 2/3*4*d rounded up to multiple_of for SwiGLU."""
        if self.mlp_kind in ("gelu", "relu2"):
            return 4 * self.n_embd
        h = int(2 * (4 * self.n_embd) / 3)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    @property
    def expert_hidden(self) -> int:
        return self.moe.moe_expert_hidden or self.mlp_hidden

    def is_moe_layer(self, i: int) -> bool:
        return self.moe.moe_num_experts > 1 and (i + 1) % self.moe.moe_every == 0


@dataclass
class OptimConfig:
    opt: str = option("adamw", "optimizer", choices=["adamw", "sgd", "lamb", "lion", "muon"], name_part=_opt_part,
                   common=True)
    lr: float = option(1e-3, "peak learning rate", check=positive, aliases=("learning_rate",),
                    near_names={"min_lr": "the final lr is lr / div_factor / final_div_factor (--final_div_factor)"},
                    common=True)
    weight_decay: float = option(0.1, "decoupled weight decay (not applied to norms, biases, embeddings)", check=nonneg)
    beta1: float = option(0.9, "Adam/LAMB/Lion beta1", check=frac_open)
    beta2: float = option(0.95, "Adam/LAMB/Lion beta2", check=frac_open)
    eps: float = option(1e-8, "Adam/LAMB epsilon", check=positive)
    momentum: float = option(0.9, "SGD momentum", check=frac_open)
    nesterov: bool = option(False, "SGD: Nesterov momentum")
    muon_lr: float = option(0.02, "Muon learning rate for 2-D hidden matrices", check=positive)
    muon_momentum: float = option(0.95, "Muon momentum", check=frac_open)
    muon_momentum_warmup: float = option(0.0, "fraction of the run over which Muon's momentum rises linearly from "
                                      "--muon_momentum_start to --muon_momentum (0 = off)", check=frac)
    muon_momentum_start: float = option(0.85, "Muon momentum at the start of --muon_momentum_warmup", check=frac_open)
    embed_lr: float = option(0.0, "peak lr of the embedding table (and so of a tied head); 0 = --lr", check=nonneg)
    head_lr: float = option(0.0, "peak lr of an untied output head; 0 = --lr", check=nonneg)
    lamb_clamp: float = option(10.0, "LAMB: clip the trust ratio's weight norm at this value (0 = no clipping)",
                            check=nonneg)
    grad_clip: float = option(0.0, "clip the global gradient norm at this value (0 = off)", check=nonneg)
    scheduler: str = option("cos", "lr schedule: cos (llm-baselines' OneCycle shape), linear, none, wsd",
                         choices=["cos", "linear", "none", "wsd"], group="schedule",
                         near_names={"decay_lr": "--scheduler none keeps the lr constant",
                                     "lr_decay_iters": "the schedule spans the whole run (--iterations or "
                                     "--time_budget)"})
    warmup_percent: float = option(0.05, "fraction of the run spent warming up", check=frac_open, group="schedule",
                                near_names={"warmup_iters": "--warmup_steps N counts the warmup in steps"})
    warmup_steps: int = option(0, "warmup length in optimizer steps instead of --warmup_percent (0 = use "
                            "--warmup_percent): the same warmup for every run length, as a ladder of budgets needs; "
                            "needs an --iterations budget", check=nonneg, group="schedule")
    wsd_decay_frac: float = option(0.2, "wsd: fraction of the run spent in the final linear decay", check=frac,
                                group="schedule")
    div_factor: float = option(1e2, "cos/linear: start lr = lr / div_factor (llm-baselines: 100)", check=positive,
                            group="schedule")
    final_div_factor: float = option(0.1, "cos/linear: final lr = start lr / final_div_factor (llm-baselines: 0.1)",
                                  check=positive, group="schedule")


@dataclass
class TrainConfig:
    batch_size: int = option(32, "sequences per micro-batch (per process)", check=positive, common=True)
    acc_steps: int = option(4, "gradient accumulation steps per optimizer step", check=positive,
                         aliases=("gradient_accumulation_steps",), common=True)
    micro_batch: Union[int, str, None] = option(None, "micro-batch size actually run: N sequences, or 'auto' = the "
                                             "largest that fits (CUDA); accumulation adapts so batch_size*acc_steps "
                                             "is unchanged (default: batch_size)", metavar="N|auto",
                                             parse=parse_micro_batch, check=_micro_batch_check)
    iterations: int = option(25000, "optimizer steps (with --time_budget: an upper bound)", check=positive,
                          aliases=("max_iters",), common=True)
    time_budget: Optional[str] = option(None, "train for this long (e.g. 90s, 5m, 3h); schedule runs on elapsed "
                                     "training time; compile and eval excluded", check=duration_check,
                                     name_part=_time_budget_part, common=True)
    seed: int = option(0, "seed for model init and dropout", bounds=_SEED, name_part=_seed_part,
                    sweep_reserved="use --seeds 0,1,2 instead of a seed flag or grid", common=True)
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N", resume_safe=True, common=True)
    threads: int = option(0, "CPU threads torch uses for this run's math (0 = torch's default); e.g. 1 per run when "
                       "several runs share a machine", check=nonneg, resume_safe=True, bookkeeping=True)
    dtype: Optional[str] = option(None, "compute dtype: bfloat16, float16, float32 (default: bfloat16 autocast on CUDA, "
                               "float32 on CPU)", choices=[None, "bfloat16", "float16", "float32"])
    compile: bool = option(False, "torch.compile the model", resume_safe=True, common=True)
    compile_mode: Optional[str] = option(None, "torch.compile mode", choices=[None, "default", "reduce-overhead",
                                                                         "max-autotune", "max-autotune-no-cudagraphs"],
                                      resume_safe=True)
    label_smoothing: float = option(0.0, "label smoothing of the training loss (reported val metrics stay plain CE)",
                                 check=frac_open, name_part=_label_smoothing_part)
    loss_chunk: int = option(0, "compute head + cross-entropy in chunks of this many tokens (0 = auto)", check=nonneg)
    eval_freq: Union[int, str] = option(AUTO, "evaluate on the fixed val set every N steps; auto: every tenth of "
                                        "--time_budget in training time, else every 200 steps (llm-baselines)",
                                        metavar="N|auto", parse=parse_eval_freq, check=_eval_freq_check,
                                        group="evaluation", aliases=("eval_interval",))
    eval_every: Optional[str] = option(None, "evaluate every this much training time (e.g. 30s, 5m) instead of "
                                       "every --eval_freq steps", check=duration_check, metavar="DURATION",
                                       group="evaluation")
    eval_tokens: int = option(24 * 32 * 512, "size of the fixed val set used during training, in tokens "
                           "(llm-baselines: 24 batches of 32x512)", check=positive, group="evaluation",
                           near_names={"eval_iters": "the fixed val set is counted in tokens, not batches"})
    final_eval: str = option(AUTO, "final evaluation: auto (with --time_budget: the largest prefix of the val split "
                             "that fits in 15% of the budget, at least the fixed set; else the full split), the full "
                             "val split, the fixed set, or none", choices=[AUTO, "full", "fixed", "none"],
                             group="evaluation",
                             near_names={"eval_only": "use `lmsprint eval RUN_DIR` to evaluate a run's checkpoint"})
    target: Optional[str] = option(None, "time to target: record the first eval on the fixed val set that reaches "
                                "METRIC=VALUE (val/loss=3.28: at or below; val/acc=0.4361: at or above) with its "
                                "step, tokens, train and wall seconds, in summary.json and metrics.jsonl",
                                metavar="METRIC=VALUE", check=_target_check, resume_safe=True, bookkeeping=True,
                                group="evaluation")
    stop_at_target: bool = option(False, "end the run at the first eval that reaches --target, as complete, with "
                                  "its final eval (the lr schedule keeps the length --iterations/--time_budget "
                                  "planned)", group="evaluation")
    save_checkpoint_freq: int = option(0, "also keep a checkpoint every N steps (0 = only the latest one)",
                                    check=nonneg, resume_safe=True, bookkeeping=True,
                                    group="checkpoints and run directory",
                                    near_names={"always_save_checkpoint": "the latest checkpoint is always kept"})
    save_checkpoint_steps: str = option("", "also keep a checkpoint at these steps, comma-separated (e.g. 80,160,320: "
                                     "the branch points of `lmsprint ladder`)", check=_steps_check, metavar="N,N,...",
                                     resume_safe=True, bookkeeping=True, group="checkpoints and run directory")
    ckpt_interval: str = option("5m", "write the resume checkpoint at least this often (duration) and at every eval",
                             check=duration_check, resume_safe=True, bookkeeping=True,
                             group="checkpoints and run directory")
    results_base_folder: str = option("./exps", "where run directories are created", resume_safe=True,
                                   bookkeeping=True, group="checkpoints and run directory", aliases=("out_dir",))
    run_prefix: str = option("", "prefix of the run directory name", bookkeeping=True,
                          sweep_reserved=_NAMED_BY_SWEEP, group="checkpoints and run directory")
    exp_name: str = option("", "run name (default: derived from model and key flags); a suffix keeps it unique",
                        bookkeeping=True, sweep_reserved=_NAMED_BY_SWEEP, group="checkpoints and run directory",
                        near_names={"wandb_run_name": "the wandb run is named after the run directory (--exp_name, "
                                    "--wandb_run_prefix)"})
    distributed_backend: Optional[str] = option(None, "torch.distributed backend under torchrun: nccl or gloo "
                                             "(default: nccl on CUDA, gloo on CPU)", choices=[None, "nccl", "gloo"],
                                             resume_safe=True, aliases=("backend",))
    data_parallel: str = option("ddp", "data parallelism under torchrun: ddp (every process holds the whole model) "
                             "or fsdp (FSDP2: parameters, gradients and optimizer state sharded over the processes; "
                             "sharded checkpoints)", choices=["ddp", "fsdp"])


@dataclass
class LogConfig:
    wandb: bool = option(False, "log to Weights & Biases (pip install 'lmsprint[wandb]')", resume_safe=True,
                      bookkeeping=True, aliases=("wandb_log",))
    wandb_project: str = option("lmsprint", "wandb project", resume_safe=True, bookkeeping=True)
    wandb_run_prefix: str = option("", "prefix of the wandb run name", resume_safe=True, bookkeeping=True)
    wandb_entity: Optional[str] = option(None, "wandb entity (team)", resume_safe=True, bookkeeping=True)
    tensorboard: bool = option(False, "also write TensorBoard event files into the run directory", resume_safe=True,
                            bookkeeping=True)
    eval_seq_prefix: str = option("Once upon a time", "prompt of the text samples generated at evals and at the end")
    sample_tokens: int = option(100, "tokens generated in each sample", check=nonneg)
    log_interval: int = option(10, "log training loss / throughput every N steps", check=positive,
                            bookkeeping=True)
    progress: bool = option(True, "show a progress bar on a terminal (plain lines every log interval otherwise)",
                         resume_safe=True, bookkeeping=True)
    quiet: bool = option(False, "print nothing but errors and the final metrics (no banner, progress or eval lines)",
                      resume_safe=True, bookkeeping=True)


@dataclass
class RunConfig:
    """The whole run: {data, model{attn, moe}, optim, train, log}; flag names are unique across the tree."""

    config_format: str = option("base", "preset of defaults: base (the hackathon's: 124M, SlimPajama, 25k iterations), "
                             "demo (small model on Shakespeare, minutes on a CPU) or speedrun (base's shapes and data "
                             "with the recipe that won equal-time races, see docs/recipes.md)",
                             choices=["base", "demo", "speedrun"], common=True)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    # ------------------------------------------------------------------ dict round trip
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        cfg = cls()
        apply_values(cfg, flatten(d), source="config")
        return cfg

    def validate(self) -> "RunConfig":
        """Each option's checks and the pure-config cross-field rules (see validate.py); returns self."""
        validate_config(self)
        return self

    @property
    def time_budget_s(self) -> Optional[float]:
        return parse_duration(self.train.time_budget)

    @property
    def eval_cadence(self) -> tuple[int, float]:
        """(every N steps, every S seconds of training time) of the periodic evals, one of them 0: --eval_every S,
        else --eval_freq N, else auto (a tenth of --time_budget, else llm-baselines' 200 steps)."""
        t = self.train
        every = parse_duration(t.eval_every)
        if every:
            return 0, every
        if t.eval_freq != AUTO:
            return int(t.eval_freq), 0.0
        if self.time_budget_s:
            return 0, self.time_budget_s / EVALS_PER_BUDGET
        return EVAL_FREQ_STEPS, 0.0


# ---------------------------------------------------------------------------------------------------- by flag name

FLAGS: dict[str, tuple] = {path[-1]: (path, f, tp) for path, f, tp in iter_fields(RunConfig)}
assert len(FLAGS) == len(list(iter_fields(RunConfig))), "flag names must be unique across the config tree"
# other names of a flag (option metadata `aliases`, e.g. nanoGPT's learning_rate) -> the flag
ALIASES: dict[str, str] = {a: name for name, (path, f, tp) in FLAGS.items() for a in f.metadata.get("aliases", ())}
assert not set(ALIASES) & set(FLAGS), "an alias must not be another flag's name"
# other tools' names of a related setting (metadata `near_names`) -> (the flag to use, why it is not the same)
NEAR_NAMES: dict[str, tuple[str, str]] = {n: (name, why) for name, (path, f, tp) in FLAGS.items()
                                          for n, why in f.metadata.get("near_names", {}).items()}
NEAR_NAMES["init_from"] = ("resume", "--resume RUN_DIR continues a run")  # --resume is a train flag, no option
# options that may accompany --resume: they change where/how a run executes or is reported, never its numbers
RESUME_SAFE = frozenset(name for name, (path, f, tp) in FLAGS.items() if f.metadata.get("resume_safe"))
# options earlier versions wrote into config files and checkpoints and that are gone: read and ignored
RETIRED = frozenset({"resume"})


def unknown_option_error(name: str, where: str = "flag", names: Optional[list] = None):
    """One line for a name that is no flag: the flag to use for another tool's name (NEAR_NAMES), else the
    closest of `names` (default: every flag), never the name typed."""
    if name in NEAR_NAMES:
        flag, why = NEAR_NAMES[name]
        return UserError(f"unknown {where} '{name}'; use --{flag}: {why}")
    return unknown_name_error(name, list(FLAGS) + ["config"] if names is None else names, where)


def get_value(cfg: RunConfig, name: str):
    path = FLAGS[name][0]
    return getattr(owner(cfg, path), path[-1])


def set_value(cfg: RunConfig, name: str, value) -> None:
    """Set an option by flag name to an already typed value (use `apply_values` for raw CLI/file values)."""
    path = FLAGS[name][0]
    setattr(owner(cfg, path), path[-1], value)


def coerce(name: str, value):
    """A raw value (string from the CLI, anything from a config file) -> the option's type; ConfigError if not."""
    path, f, tp = FLAGS[name]
    return convert(name, f, tp, value)


def flatten(d: dict, out: Optional[dict] = None) -> dict:
    """Nested {section: {flag: v}} or flat {flag: v} (or mixed) -> flat {flag: v}."""
    out = {} if out is None else out
    for k, v in d.items():
        if isinstance(v, dict):  # a section (no option takes a mapping)
            flatten(v, out)
        else:
            out[k] = v
    return out


def apply_values(cfg: RunConfig, values: dict, source: str = "flag") -> None:
    """Coerce and set raw {flag: value}s; an unknown name is one line naming the closest flag."""
    for name, raw in values.items():
        name = ALIASES.get(name, name)
        if name in RETIRED and source != "flag":
            continue
        if name not in FLAGS:
            raise unknown_option_error(name, "config key" if source != "flag" else "flag")
        path, f, tp = FLAGS[name]
        if source == "flag" and isinstance(raw, str) and not raw.strip() and is_numeric(f, tp):
            # a number typed as nothing (`--micro_batch ''`) is refused like any other non-number; a saved
            # config.yaml of an older lmsprint (`micro_batch: ''`) still reads (its option's own parse)
            raise ConfigError(f"`{name}` '': is empty; give a value, or leave the flag out for its default")
        set_value(cfg, name, coerce(name, raw))


def typed(flat: dict) -> dict:
    """Flat {flag: value} as saved by any lmsprint version -> the values as this version types them (e.g. an older
    `micro_batch: ''` is None); unknown keys and values this version refuses are kept as they are."""
    out = {}
    for k, v in flat.items():
        try:
            out[k] = coerce(k, v) if k in FLAGS else v
        except UserError:
            out[k] = v
    return out


def flags_where(key: str) -> list[str]:
    """Flag names (in field order) whose option metadata has a truthy `key`, e.g. flags_where("resume_safe")."""
    return [name for name, (path, f, tp) in FLAGS.items() if f.metadata.get(key)]


def run_name_parts(cfg: RunConfig) -> list[str]:
    """The pieces of the derived run name, one per option with a `name_part` that gives one, in field order."""
    parts = []
    for name, (path, f, tp) in FLAGS.items():
        fn = f.metadata.get("name_part")
        part = fn(get_value(cfg, name), cfg) if fn is not None else None
        if part:
            parts.append(part)
    return parts

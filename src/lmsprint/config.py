"""The one typed configuration tree of a run, and the layers generated from it.

`RunConfig = {data, model{attn, moe}, optim, train, log}`. Each option is a dataclass field defined once,
with its flag name (llm-baselines' names where they exist), help text, choices and validation next to it
(see `option()`). From this tree we generate:

- the argparse flags of `lmsprint train` (and subsets for other subcommands): `add_flags()`;
- YAML/TOML config files (`--config FILE`, flat or nested keys): `load_config_file()`;
- presets (`--config_format base|demo`): `PRESETS`, applied under the config file and CLI flags;
- the resolved config saved in each run directory: `RunConfig.to_dict()` / `RunConfig.from_dict()`.

Precedence, lowest first: dataclass defaults < `--config_format` preset < `--config FILE` < CLI flags.
Invalid values raise `UserError` with one line naming the flag and what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

from .errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# field helper


def option(default: Any, help: str, choices: Optional[list] = None, check: Optional[Callable[[Any], Optional[str]]] = None,
        metavar: Optional[str] = None, cli: bool = True):
    """A config field: default, help text, allowed choices and a check returning an error message (or None)."""
    md = {"help": help, "choices": choices, "check": check, "metavar": metavar, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=md)
    return field(default=default, metadata=md)


def _positive(v):
    return None if v is not None and v > 0 else "must be > 0"


def _nonneg(v):
    return None if v is not None and v >= 0 else "must be >= 0"


def _frac(v):
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def _frac_open(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: Optional[str]) -> Optional[float]:
    """'90s' / '5m' / '3h' / '1h30m' / '600' (seconds) -> seconds; None/''/'0' -> None. Raises ValueError."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text) if text > 0 else None
    s = str(text).strip().lower()
    if s in ("", "0", "none", "off"):
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", s)
    if not parts or re.sub(r"[\d.\sa-z]", "", s) or "".join(a + b for a, b in parts) != s.replace(" ", ""):
        raise ValueError(text)
    total = 0.0
    for num, unit in parts:
        unit = unit or None
        if unit not in _UNIT:
            raise ValueError(text)
        total += float(num) * _UNIT[unit]
    if total <= 0:
        raise ValueError(text)
    return total


def _duration_check(v):
    try:
        parse_duration(v)
    except ValueError:
        return f"cannot parse '{v}' as a duration; use e.g. 90s, 5m, 3h or 1h30m"
    return None


# ----------------------------------------------------------------------------------------------------------------
# the tree

DATASETS_HUB = ["slimpajama", "wikitext", "openwebtext2", "arxiv", "fineweb-edu"]
DATASETS_LOCAL = ["shakespeare", "shakespeare-char"]


@dataclass
class DataConfig:
    dataset: str = option("shakespeare", "data source: shakespeare (embedded, GPT-2 BPE), shakespeare-char, one of the "
                       "hub datasets " + ", ".join(DATASETS_HUB) + ", or a path to a local file/folder of "
                       ".txt/.jsonl/.parquet")
    data_dir: str = option("./data_cache", "where prepared token files + manifests are cached (shared by runs)")
    tokenizer: Optional[str] = option(None, "tokenizer: gpt2 or char (default: the dataset's own)",
                                   choices=[None, "gpt2", "char"])
    data_in_ram: bool = option(False, "load the token files into RAM instead of memory-mapping them")
    data_seed: int = option(1337, "seed of the training batch sampler (independent of --seed)")
    val_fraction: Optional[float] = option(None, "fraction of documents held out as the val split (default: 0.1 for "
                                        "shakespeare, 0.005 for other sources)",
                                        check=lambda v: None if 0 < v < 0.5 else "must be in (0, 0.5)")
    max_docs: int = option(0, "prepare at most this many documents from the source (0 = all)", check=_nonneg)
    num_proc: int = option(0, "tokenizer processes for prepare (0 = all cores)", check=_nonneg)


@dataclass
class AttentionConfig:
    attention: str = option("causal", "attention kind: causal (full), local (sliding window), global_local "
                         "(per-layer pattern and/or per-head split)", choices=["causal", "local", "global_local"])
    attention_window: int = option(256, "window W of local attention: each token sees itself and the W-1 before it",
                                check=_positive)
    attention_pattern: str = option("", "global_local per-layer pattern tiled over layers, S = local, L = global "
                                 "(e.g. SSSL)", check=lambda v: None if re.fullmatch(r"[SL]*", v) else
                                 "must contain only S (local) and L (global), e.g. SSSL")
    local_heads: int = option(0, "global_local: number of heads per layer that use the local window", check=_nonneg)
    shuffle_query_frac: float = option(0.0, "query-shuffle regularizer: fraction of query rows replaced by other rows "
                                    "(training only, 0 = off)", check=_frac)
    shuffle_query_mode: str = option("batch", "causally safe query shuffle: batch (same position, another sequence) or "
                                  "past (an earlier position of the same sequence)", choices=["batch", "past"])
    orthogonal_qkv: bool = option(False, "keep per-head Q/K/V projections orthonormal (QR/Householder parametrization)")
    attn_backend: str = option("auto", "attention implementation: auto (flex on CUDA for windows, else SDPA), sdpa, flex",
                            choices=["auto", "sdpa", "flex"])


@dataclass
class MoEConfig:
    moe_num_experts: int = option(0, "number of experts in MoE layers (0 or 1 = dense MLP)", check=_nonneg)
    moe_num_experts_per_tok: int = option(2, "experts per token (top-k) for token_choice routing", check=_positive)
    moe_softmax_order: str = option("topk_softmax", "router: softmax over the top-k logits (topk_softmax) or top-k of the "
                                 "full softmax (softmax_topk)", choices=["topk_softmax", "softmax_topk"])
    moe_aux_loss_factor: float = option(0.01, "weight of the Switch load-balancing loss", check=_nonneg)
    moe_z_loss_factor: float = option(0.001, "weight of the ST-MoE router z-loss", check=_nonneg)
    moe_num_shared_experts: int = option(0, "always-on shared experts added to every MoE layer", check=_nonneg)
    moe_capacity_factor: float = option(0.0, "expert capacity = factor * tokens * k / experts; tokens over it are "
                                     "dropped (0 = dropless)", check=_nonneg)
    moe_router_jitter: float = option(0.0, "multiplicative uniform jitter on router inputs while training (0 = off)",
                                   check=_frac_open)
    moe_every: int = option(1, "use MoE in every Nth block (1 = all blocks)", check=_positive)
    moe_routing: str = option("token_choice", "routing: token_choice (each token picks k experts) or expert_choice "
                           "(each expert picks its tokens)", choices=["token_choice", "expert_choice"])
    moe_expert_hidden: int = option(0, "hidden size of each expert (0 = the dense MLP's hidden size)", check=_nonneg)


@dataclass
class ModelConfig:
    model: str = option("base", "preset: base (GPT-2) or llama2", choices=["base", "llama2"])
    n_layer: int = option(12, "number of Transformer blocks", check=_positive)
    n_head: int = option(12, "attention heads", check=_positive)
    n_embd: int = option(768, "model width", check=_positive)
    sequence_length: int = option(512, "context length in tokens", check=lambda v: None if v >= 1 else
                               "must be >= 1; use e.g. --sequence_length 512")
    vocab_size: int = option(50304, "embedding rows (>= the tokenizer's vocabulary; 50304 pads GPT-2's 50257)",
                          check=_positive)
    dropout: float = option(0.0, "dropout probability", check=_frac_open)
    bias: bool = option(False, "use biases in linear layers and LayerNorm")
    rmsnorm_eps: float = option(1e-5, "epsilon of RMSNorm/LayerNorm", check=_positive)
    multiple_of: int = option(256, "llama2: SwiGLU hidden size is rounded up to a multiple of this", check=_positive)
    norm: Optional[str] = option(None, "override the preset's norm", choices=[None, "layernorm", "rmsnorm"])
    mlp: Optional[str] = option(None, "override the preset's MLP", choices=[None, "gelu", "swiglu"])
    pos: Optional[str] = option(None, "override the preset's positions", choices=[None, "learned", "rope"])
    rope_theta: float = option(10000.0, "RoPE base", check=_positive)
    tie_embeddings: bool = option(True, "tie the input embedding and the output head")
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
        """Dense MLP hidden size: 4*d for GELU; llama2's 2/3*4*d rounded up to multiple_of for SwiGLU."""
        if self.mlp_kind == "gelu":
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
    opt: str = option("adamw", "optimizer", choices=["adamw", "sgd", "lamb", "lion", "muon"])
    lr: float = option(1e-3, "peak learning rate", check=_positive)
    weight_decay: float = option(0.1, "decoupled weight decay (not applied to norms, biases, embeddings)", check=_nonneg)
    beta1: float = option(0.9, "Adam/LAMB/Lion beta1", check=_frac_open)
    beta2: float = option(0.95, "Adam/LAMB/Lion beta2", check=_frac_open)
    eps: float = option(1e-8, "Adam/LAMB epsilon", check=_positive)
    momentum: float = option(0.9, "SGD momentum", check=_frac_open)
    nesterov: bool = option(False, "SGD: Nesterov momentum")
    muon_lr: float = option(0.02, "Muon learning rate for 2-D hidden matrices", check=_positive)
    muon_momentum: float = option(0.95, "Muon momentum", check=_frac_open)
    lamb_clamp: float = option(10.0, "LAMB: clip the trust ratio's weight norm at this value (0 = no clipping)",
                            check=_nonneg)
    grad_clip: float = option(0.0, "clip the global gradient norm at this value (0 = off)", check=_nonneg)
    scheduler: str = option("cos", "lr schedule: cos (llm-baselines' OneCycle shape), linear, none, wsd",
                         choices=["cos", "linear", "none", "wsd"])
    warmup_percent: float = option(0.05, "fraction of the run spent warming up", check=_frac_open)
    wsd_decay_frac: float = option(0.2, "wsd: fraction of the run spent in the final linear decay", check=_frac)
    div_factor: float = option(1e2, "cos/linear: start lr = lr / div_factor (llm-baselines: 100)", check=_positive)
    final_div_factor: float = option(0.1, "cos/linear: final lr = start lr / final_div_factor (llm-baselines: 0.1)",
                                  check=_positive)


@dataclass
class TrainConfig:
    batch_size: int = option(32, "sequences per micro-batch (per process)", check=_positive)
    acc_steps: int = option(4, "gradient accumulation steps per optimizer step", check=_positive)
    micro_batch: str = option("", "micro-batch size actually run: '' = batch_size, 'auto' = largest that fits, or N; "
                           "accumulation adapts so batch_size*acc_steps is unchanged",
                           check=lambda v: None if v in ("", "auto") or str(v).isdigit() and int(v) > 0 else
                           "must be empty, 'auto' or a positive integer")
    iterations: int = option(25000, "optimizer steps (with --time_budget: an upper bound)", check=_positive)
    time_budget: Optional[str] = option(None, "train for this long (e.g. 90s, 5m, 3h); schedule runs on elapsed "
                                     "training time; compile and eval excluded", check=_duration_check)
    seed: int = option(0, "seed for model init and dropout")
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N")
    dtype: Optional[str] = option(None, "compute dtype: bfloat16, float16, float32 (default: bfloat16 autocast on CUDA, "
                               "float32 on CPU)", choices=[None, "bfloat16", "float16", "float32"])
    compile: bool = option(False, "torch.compile the model")
    compile_mode: Optional[str] = option(None, "torch.compile mode", choices=[None, "default", "reduce-overhead",
                                                                         "max-autotune", "max-autotune-no-cudagraphs"])
    label_smoothing: float = option(0.0, "label smoothing of the training loss (reported val metrics stay plain CE)",
                                 check=_frac_open)
    loss_chunk: int = option(0, "compute head + cross-entropy in chunks of this many tokens (0 = auto)", check=_nonneg)
    eval_freq: int = option(200, "evaluate on the fixed val set every N steps", check=_positive)
    eval_tokens: int = option(24 * 32 * 512, "size of the fixed val set used during training, in tokens "
                           "(default = llm-baselines' 24 batches of 32x512)", check=_positive)
    final_eval: str = option("full", "final evaluation: full val split, the fixed set, or none",
                          choices=["full", "fixed", "none"])
    save_checkpoint_freq: int = option(0, "also keep a checkpoint every N steps (0 = only the latest one)",
                                    check=_nonneg)
    ckpt_interval: str = option("5m", "write the resume checkpoint at least this often (duration) and at every eval",
                             check=_duration_check)
    results_base_folder: str = option("./exps", "where run directories are created")
    run_prefix: str = option("", "prefix of the run directory name")
    exp_name: str = option("", "run name (default: derived from model and key flags); a suffix keeps it unique")
    resume: Optional[str] = option(None, "continue a run: its directory, or 'latest'", cli=False)
    distributed_backend: Optional[str] = option(None, "torch.distributed backend under torchrun: nccl or gloo "
                                             "(default: nccl on CUDA, gloo on CPU)", choices=[None, "nccl", "gloo"])


@dataclass
class LogConfig:
    wandb: bool = option(False, "log to Weights & Biases (pip install 'lmsprint[wandb]')")
    wandb_project: str = option("lmsprint", "wandb project")
    wandb_run_prefix: str = option("", "prefix of the wandb run name")
    wandb_entity: Optional[str] = option(None, "wandb entity (team)")
    tensorboard: bool = option(False, "also write TensorBoard event files into the run directory")
    eval_seq_prefix: str = option("Once upon a time", "prompt of the text samples generated at evals and at the end")
    sample_tokens: int = option(100, "tokens generated in each sample", check=_nonneg)
    log_interval: int = option(10, "log training loss / throughput every N steps", check=_positive)
    progress: bool = option(True, "show a progress bar")


@dataclass
class RunConfig:
    config_format: str = option("base", "preset of defaults: base (the hackathon's: 124M, SlimPajama, 25k iterations) "
                             "or demo (small model on Shakespeare, minutes on a CPU)", choices=["base", "demo"])
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
        validate(self)
        return self

    @property
    def time_budget_s(self) -> Optional[float]:
        return parse_duration(self.train.time_budget)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.acc_steps * self.model.sequence_length


# ----------------------------------------------------------------------------------------------------------------
# presets (--config_format)

PRESETS: dict[str, dict[str, Any]] = {
    # llm-baselines' hackathon defaults: GPT-2 124M shapes, SlimPajama-6B, 25k iterations of 32x4x512 tokens
    "base": {"dataset": "slimpajama"},
    # a real but small run that finishes in a few minutes on 2 CPU cores
    "demo": {"dataset": "shakespeare", "n_layer": 4, "n_head": 4, "n_embd": 128, "sequence_length": 128,
             "batch_size": 16, "acc_steps": 1, "iterations": 100000, "time_budget": "120s", "lr": 3e-3,
             "eval_freq": 40, "eval_tokens": 16 * 128 * 4, "warmup_percent": 0.05, "log_interval": 5,
             "grad_clip": 1.0, "ckpt_interval": "1m", "sample_tokens": 120, "eval_seq_prefix": "ROMEO:"},
}


# ----------------------------------------------------------------------------------------------------------------
# reflection helpers: flat flag name <-> (section object, field)


def _hints(cls) -> dict:
    return get_type_hints(cls)


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def iter_fields(obj_or_cls, prefix: tuple = ()):
    """Yield (path, dataclass_field, type) for every leaf option in the tree, depth first."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            yield from iter_fields(tp, prefix + (f.name,))
        else:
            yield prefix + (f.name,), f, tp


FLAGS: dict[str, tuple] = {path[-1]: (path, f, tp) for path, f, tp in iter_fields(RunConfig)}
assert len(FLAGS) == len(list(iter_fields(RunConfig))), "flag names must be unique across the config tree"


def _owner(cfg, path):
    obj = cfg
    for p in path[:-1]:
        obj = getattr(obj, p)
    return obj


def get_value(cfg: RunConfig, name: str):
    path = FLAGS[name][0]
    return getattr(_owner(cfg, path), path[-1])


def _base_type(tp):
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def parse_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(v)


def coerce(name: str, value):
    """Convert a raw value (string from CLI, anything from YAML) to the field's type; UserError on failure."""
    path, f, tp = FLAGS[name]
    base = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and base is not str):
        if get_origin(tp) is Union or f.default is None:
            return None
        raise UserError(f"--{name} cannot be empty; {f.metadata['help']}")
    try:
        if base is bool:
            return parse_bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and re.fullmatch(r"[\d.]+e\d+", value) else int(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: "true/false", int: "an integer", float: "a number"}.get(base, "a string")
        raise UserError(f"--{name}: '{value}' is not {kind}")


def flatten(d: dict, out: Optional[dict] = None) -> dict:
    """Nested {section: {flag: v}} or flat {flag: v} (or mixed) -> flat {flag: v}."""
    out = {} if out is None else out
    for k, v in d.items():
        if isinstance(v, dict):  # a section (no option takes a mapping)
            flatten(v, out)
        else:
            out[k] = v
    return out


def unknown_flag_error(name: str, where: str = "flag") -> UserError:
    close = difflib.get_close_matches(name, list(FLAGS) + ["config"], n=1, cutoff=0.5)
    hint = f"; did you mean --{close[0]}?" if close else "; see lmsprint train --help"
    return UserError(f"unknown {where} '{name}'{hint}")


def apply_values(cfg: RunConfig, values: dict, source: str = "flag") -> None:
    for name, raw in values.items():
        if name not in FLAGS:
            raise unknown_flag_error(name, "config key" if source != "flag" else "flag")
        path = FLAGS[name][0]
        setattr(_owner(cfg, path), path[-1], coerce(name, raw))


def load_config_file(path: str) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a flat {flag: value} dict."""
    import os

    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found; pass an existing .yaml/.yml/.toml file to --config")
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        else:
            import yaml

            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
    except Exception as e:  # parse errors of either format
        raise UserError(f"cannot parse config file '{path}': {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of flag names to values")
    return flatten(data)


# ----------------------------------------------------------------------------------------------------------------
# validation


def validate(cfg: RunConfig) -> None:
    """Field checks (from each field's `check`/`choices`) then cross-field rules. Raises UserError."""
    for path, f, tp in iter_fields(cfg):
        v = getattr(_owner(cfg, path), path[-1])
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise UserError(f"--{path[-1]} '{v}' is not one of: {shown}")
        check = f.metadata.get("check")
        if check is not None and v is not None:
            msg = check(v)
            if msg:
                raise UserError(f"--{path[-1]} {v}: {msg}")
    m = cfg.model
    if m.n_embd % m.n_head:
        raise UserError(f"--n_embd {m.n_embd} is not divisible by --n_head {m.n_head}; choose e.g. "
                        f"--n_head {_divisor_near(m.n_embd, m.n_head)}")
    if m.pos_kind == "rope" and m.head_dim % 2:
        raise UserError(f"rope needs an even head size, got n_embd/n_head = {m.head_dim}; change --n_embd or --n_head")
    moe = m.moe
    if moe.moe_num_experts > 1 and moe.moe_num_experts_per_tok > moe.moe_num_experts:
        raise UserError(f"--moe_num_experts_per_tok {moe.moe_num_experts_per_tok} exceeds --moe_num_experts "
                        f"{moe.moe_num_experts}; pick k <= number of experts")
    a = m.attn
    if a.local_heads > m.n_head:
        raise UserError(f"--local_heads {a.local_heads} exceeds --n_head {m.n_head}")
    if a.attention != "global_local" and (a.attention_pattern or a.local_heads):
        raise UserError("--attention_pattern/--local_heads need --attention global_local")
    if a.attention == "global_local" and not (a.attention_pattern or a.local_heads):
        raise UserError("--attention global_local needs --attention_pattern (e.g. SSSL) and/or --local_heads k")
    t = cfg.train
    if t.micro_batch not in ("", "auto") and cfg.train.batch_size * t.acc_steps % int(t.micro_batch):
        raise UserError(f"--micro_batch {t.micro_batch} must divide batch_size*acc_steps = "
                        f"{t.batch_size * t.acc_steps}")
    if not math.isfinite(cfg.optim.lr):
        raise UserError("--lr must be finite")
    from .model import check_model_config  # combinations of model / optimizer / schedule options (-> check_run)
    from .optim import check_optim_config

    micro = int(t.micro_batch) if str(t.micro_batch).isdigit() else (t.batch_size if t.micro_batch == "" else 0)
    check_model_config(cfg.model, t.device, micro)
    check_optim_config(cfg)


def _divisor_near(n: int, k: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: abs(d - k))


# ----------------------------------------------------------------------------------------------------------------
# argparse generation


def add_flags(parser: argparse.ArgumentParser, sections: Optional[tuple] = None) -> None:
    """Add one flag per config field (restricted to `sections`, e.g. ('data',), if given).

    Defaults are argparse.SUPPRESS so that only flags the user typed appear in the namespace; the preset and the
    config file fill in the rest (see `build_config`)."""
    groups: dict[str, Any] = {}
    for path, f, tp in iter_fields(RunConfig):
        if not f.metadata.get("cli", True):
            continue
        sec = path[0] if len(path) > 1 else "run"
        if sections is not None and sec not in sections:
            continue
        g = groups.get(sec) or groups.setdefault(sec, parser.add_argument_group(f"{sec} options"))
        name = path[-1]
        base = _base_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata['help']} (default: {default})"
        choices = [c for c in (f.metadata.get("choices") or []) if c is not None] or None
        if base is bool:
            # `--flag` alone means true; `--flag false|0|no` also parses
            g.add_argument(f"--{name}", nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL",
                           help=help_)
        else:
            # choices are checked by validate() so that every error reads the same way
            metavar = f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices
                                                    else base.__name__.upper())
            g.add_argument(f"--{name}", default=argparse.SUPPRESS, help=help_, metavar=metavar)


def build_config(cli_values: dict, config_file: Optional[str] = None) -> RunConfig:
    """defaults < preset(config_format) < config file < CLI; then validate."""
    file_values = load_config_file(config_file) if config_file else {}
    fmt = cli_values.get("config_format", file_values.get("config_format", "base"))
    if fmt not in PRESETS:
        raise UserError(f"--config_format '{fmt}' is not one of: {', '.join(PRESETS)}")
    cfg = RunConfig()
    apply_values(cfg, dict(PRESETS[fmt]), source="preset")
    apply_values(cfg, file_values, source="config")
    apply_values(cfg, cli_values, source="flag")
    cfg.config_format = fmt
    return cfg.validate()


class SuggestingParser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit 2, and name the closest valid flag for unknown ones."""

    def error(self, message):  # noqa: D401
        m = re.search(r"unrecognized arguments: (\S+)", message)
        if m:
            name = m.group(1).lstrip("-").split("=")[0]
            raise unknown_flag_error(name)
        raise UserError(message)

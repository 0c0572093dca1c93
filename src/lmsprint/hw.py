"""Hardware facts: which device and dtype a run uses, what its accelerator can do, and whether code syncs with it.

- `resolve_device(spec)`: `--device` value -> device string (auto = CUDA when available).
- `resolve_dtype(name, device)`, `autocast_context(device, dtype)`: the compute dtype and its autocast.
- `OOM_ERRORS`: the out-of-memory exception classes (catch these to translate or probe).
- `PEAK_BF16`, `peak_flops(device)`, `peak_flops_for_name(name)`, `measure_peak_flops(device)`: the MFU
  denominator, from the GPU's name or measured with a large matmul; `sync(device)` waits for the device.
- `count_host_syncs()`, `host_resident(device, optimizer)`, `cuda_sync_errors(device)`: host-device sync
  detection (bench --check_sync, tests).
- `mfu(...)`: model FLOPs utilization, the one formula training and bench report; `enable_tf32()`;
  `set_cpu_threads(n)`: torch's intra-op CPU threads (`threads`; 0 keeps torch's default).
- `unwrap(model)`: the plain module under DDP / torch.compile wrappers; `check_compile_backend(name)`: a
  torch.compile backend torch knows, or one ConfigError line.

Imports nothing of lmsprint except `errors`, so every layer above may use it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ConfigError

# ----------------------------------------------------------------------------------------------------------------
# device and dtype


def resolve_device(spec: str) -> str:
    """auto -> cuda if available else cpu; validates cuda / cuda:N."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"`device` {spec} requested but CUDA is not available; use `device` cpu or auto")
        if ":" in spec:
            idx = spec.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise ConfigError(f"`device` {spec}: no such GPU ({torch.cuda.device_count()} visible)")
        return spec
    if spec == "mps" and torch.backends.mps.is_available():
        return "mps"
    raise ConfigError(f"`device` '{spec}' is not one of auto, cpu, cuda, cuda:N")


def resolve_dtype(name: Optional[str], device) -> torch.dtype:
    """--dtype value -> compute dtype: default bfloat16 autocast on CUDA, float32 elsewhere; ConfigError where the
    device cannot run it."""
    cuda = torch.device(device).type == "cuda"
    if name is None:
        name = "bfloat16" if cuda else "float32"
    if cuda and name == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bfloat16; use `dtype` float16 (or float32)")
    if not cuda and name == "float16":
        raise ConfigError("`dtype` float16 needs CUDA; use `dtype` bfloat16 or float32 on CPU")
    return getattr(torch, name)


def autocast_context(device, dtype: Optional[torch.dtype]):
    """torch.autocast for low-precision dtypes, a no-op for float32/None."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# torch >= 2.5: torch.OutOfMemoryError is torch.cuda.OutOfMemoryError (one class for every device)
OOM_ERRORS: tuple = (torch.OutOfMemoryError,)


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP and/or torch.compile wrappers (for state dicts, generation, accounting)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------------------------------------------
# accelerator peaks

# dense bf16 tensor-core peak (no sparsity), FLOP/s; matched against torch.cuda.get_device_name(), first hit wins
PEAK_BF16 = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12),
    ("RTX 6000 Ada", 364e12), ("4090", 165e12), ("3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device=None) -> Optional[float]:
    """Dense bf16 peak FLOP/s of a CUDA device from its name (`PEAK_BF16`); None for CPUs and unknown GPUs."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(dev))


def peak_flops_for_name(name: str) -> Optional[float]:
    """`PEAK_BF16` lookup: the first key contained in the device name (case-insensitive), else None."""
    for key, value in PEAK_BF16:
        if key.lower() in name.lower():
            return value
    return None


def measure_peak_flops(device, n: int = 8192, reps: int = 20) -> float:
    """Achieved FLOP/s of a large matmul: bf16 on CUDA, float32 (n capped at 2048) on CPU."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = n if dev.type == "cuda" else min(n, 2048)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------
# host-sync detection

_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

# ops whose output shape depends on tensor values: on CUDA they wait for the device (nonzero and friends)
_DATA_DEPENDENT_OPS = ("nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive", "_local_scalar_dense",
                       "is_nonzero", "equal")


class _DispatchCounter(TorchDispatchMode):
    """Counts data-dependent ops (and boolean-mask / tensor-repeat indexing) into `counts`."""

    def __init__(self, counts: dict, exempt):
        super().__init__()
        self.counts, self.exempt = counts, exempt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        hit = name in _DATA_DEPENDENT_OPS
        if name == "index" and len(args) > 1:
            hit = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if name == "repeat_interleave" and args and isinstance(args[0], torch.Tensor) and len(args) == 1:
            hit = True  # repeats given as a tensor
        if hit and name != "_local_scalar_dense":  # .item()/bool() are counted by the method wrappers
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is None or self.exempt is None or not self.exempt(first):
                self.counts["aten." + name] = self.counts.get("aten." + name, 0) + 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs(exempt=None, dispatch: bool = True):
    """Count host-device syncs: calls of .item/.tolist/.cpu/.numpy/bool()/int()/float() on tensors, and (with
    `dispatch`, eager code only) data-dependent ops such as nonzero or boolean-mask indexing.

    Yields a dict {what: count}. `exempt(tensor) -> bool` skips tensors that stay on the host on every device
    (e.g. the optimizer's step counters), so the count means on CPU what it would on CUDA."""
    counts = {m: 0 for m in _SYNC_METHODS}
    saved = {m: torch.Tensor.__dict__.get(m) for m in _SYNC_METHODS}
    originals = {m: getattr(torch.Tensor, m) for m in _SYNC_METHODS}

    def wrap(name):
        orig = originals[name]

        def counted(self, *a, **k):
            if exempt is None or not exempt(self):
                counts[name] += 1
            return orig(self, *a, **k)

        return counted

    for m in _SYNC_METHODS:
        setattr(torch.Tensor, m, wrap(m))
    mode = _DispatchCounter(counts, exempt) if dispatch else contextlib.nullcontext()
    try:
        with mode:
            yield counts
    finally:
        for m in _SYNC_METHODS:
            if saved[m] is None:
                delattr(torch.Tensor, m)
            else:
                setattr(torch.Tensor, m, saved[m])


def host_resident(device, optimizer):
    """Predicate for `count_host_syncs(exempt=...)`: tensors that are on the host by design, not by a sync.

    On CUDA every CPU tensor qualifies; on CPU, the optimizer's per-parameter step counters (kept on the host
    on CUDA too by torch's non-capturable optimizers)."""
    if torch.device(device).type != "cpu":
        return lambda t: t.device.type == "cpu"
    ids = {id(v) for st in optimizer.state.values() for k, v in st.items() if k == "step"}
    return lambda t: id(t) in ids


@contextlib.contextmanager
def cuda_sync_errors(device, enabled: bool = True):
    """On CUDA, make any synchronizing call raise (torch.cuda.set_sync_debug_mode('error')); no-op elsewhere."""
    use = enabled and torch.device(device).type == "cuda"
    if use:
        prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if use:
            torch.cuda.set_sync_debug_mode(prev)


def mfu(flops_per_token: float, tokens_per_s: Optional[float], peak: Optional[float], n_devices: int = 1
        ) -> Optional[float]:
    """Model FLOPs utilization: achieved training FLOP/s over the peak of `n_devices` accelerators; None when the
    peak or the rate is unknown."""
    if not peak or tokens_per_s is None:
        return None
    return flops_per_token * tokens_per_s / (peak * n_devices)


def enable_tf32() -> None:
    """Let CUDA matmuls and convolutions use TF32 tensor cores (float32 code only; autocast is unaffected)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_cpu_threads(n: int) -> None:
    """Use `n` intra-op CPU threads in this process (`threads`); 0 keeps torch's default."""
    if n > 0:
        torch.set_num_threads(n)


def check_compile_backend(name: str) -> None:
    """ConfigError unless torch.compile knows a backend `name` (every registered one, debug backends included)."""
    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        main = [b for b in ("inductor", "aot_eager", "eager", "cudagraphs") if b in known]
        raise ConfigError(f"`compile_backend` '{name}' is not a torch.compile backend; use one of: "
                          f"{', '.join(main)} (all: torch._dynamo.list_backends(exclude_tags=()))")

"""Run directories: one new directory per run, never reused, and every file name inside one.

Layout of `<results_base_folder>/<run name>[-N]/` (the names below are defined here and nowhere else):
    config.yaml          the resolved nested `RunConfig.to_dict()`            write_config / read_config(_dict)
    summary.json         status running -> complete | failed, final metrics   write_summary / read_summary / status
    metrics.jsonl        one JSON row per log call                            metrics_path / read_metrics
    samples.txt          generated text samples                               samples_path
    eval.json            `lmsprint eval` results                              eval_path
    evals/lm_eval-*.json `lmsprint eval --tasks` (lm-eval) results, one file each  lm_eval_dir
    model.safetensors    the latest weights (no pickle), with the model config  weights_path
    tokenizer_info.json  what rebuilds the tokenizer offline                  tokenizer_info_path
    versions.json        lmsprint / torch / python versions that trained it    versions_path
    checkpoints/latest.pt                                                     checkpoint_path / has_checkpoint
    run.lock             held (fcntl.flock) by the process training in the run   lock_run_dir / is_locked
    wandb/ (run_id), tb/ the optional sinks' folders                          wandb_dir / wandb_id_path / tb_dir
and `<results_base_folder>/latest`, a pointer file naming the newest run.

- `run_name(cfg)`: exp_name, or a name joined from the options' `name_part` metadata (config.run_name_parts);
  `check_run_name(cfg)` refuses a name that is not one plain folder name (a separator, `.`/`..`, the pointer name
  `latest`), so nothing is ever written outside --results_base_folder.
- `lock_run_dir(run_dir)`: an OS file lock on run.lock for as long as this process lives (it dies with the process,
  also on kill -9); a second process training in the same run is refused in one line.
- `status(run_dir)`: the summary's status, except that a run whose summary still says `running` but whose lock is
  not held died without saying so: `interrupted` if it left a checkpoint to resume from, else `failed`.
- `create_run_dir(cfg)`: atomic `os.mkdir` with a numeric suffix (-2, -3, ...) so that two identical commands,
  even concurrent ones, get two directories; records the `latest` pointer file (written atomically).
- `is_run_dir(path)`: a folder holding config.yaml (the first file `lmsprint train` writes into a run).
- `resolve_run_dir(spec, base)`: a run directory path or `latest` -> an existing run directory.
- `truncate_metrics(run_dir, n_rows)`: keep the first n_rows complete rows of metrics.jsonl (used by resume).
Nothing here overwrites or deletes another run's files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Optional

import yaml

from .config import RunConfig, run_name_parts
from .errors import ConfigError, DataError, UserError
from .files import atomic_write_text, json_text

LATEST_POINTER = "latest"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
EVAL_FILE = "eval.json"
CKPT_DIR = "checkpoints"
LATEST_CKPT = "latest.pt"
LM_EVAL_DIR = "evals"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_INFO_FILE = "tokenizer_info.json"  # not tokenizer.json: that name means a Hugging Face tokenizer file
VERSIONS_FILE = "versions.json"
WANDB_DIR = "wandb"                 # wandb.init(dir=run_dir) itself writes into <run_dir>/wandb
WANDB_ID_FILE = "run_id"           # inside WANDB_DIR: the wandb run id a resumed run continues
TB_DIR = "tb"
LOCK_FILE = "run.lock"
MAX_NAME_BYTES = 200               # a folder name is at most 255 bytes; room for the -N suffix


# ---------------------------------------------------------------------------------------------------- paths


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG_FILE)


def summary_path(run_dir: str) -> str:
    return os.path.join(run_dir, SUMMARY_FILE)


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS_FILE)


def samples_path(run_dir: str) -> str:
    return os.path.join(run_dir, SAMPLES_FILE)


def eval_path(run_dir: str) -> str:
    return os.path.join(run_dir, EVAL_FILE)


def lm_eval_dir(run_dir: str) -> str:
    return os.path.join(run_dir, LM_EVAL_DIR)


def weights_path(run_dir: str) -> str:
    return os.path.join(run_dir, WEIGHTS_FILE)


def tokenizer_info_path(run_dir: str) -> str:
    return os.path.join(run_dir, TOKENIZER_INFO_FILE)


def versions_path(run_dir: str) -> str:
    return os.path.join(run_dir, VERSIONS_FILE)


def checkpoint_path(run_dir: str, name: str = LATEST_CKPT) -> str:
    return os.path.join(run_dir, CKPT_DIR, name)


def has_checkpoint(run_dir: str) -> bool:
    return os.path.isfile(checkpoint_path(run_dir))


def wandb_dir(run_dir: str) -> str:
    return os.path.join(run_dir, WANDB_DIR)


def wandb_id_path(run_dir: str) -> str:
    return os.path.join(run_dir, WANDB_DIR, WANDB_ID_FILE)


def tb_dir(run_dir: str) -> str:
    return os.path.join(run_dir, TB_DIR)


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


# ---------------------------------------------------------------------------------------------------- names


def run_name(cfg: RunConfig) -> str:
    """`<run_prefix><exp_name>` if exp_name is given, else `<run_prefix>` + the options' name parts joined by `_`
    (each option declares its piece with `name_part` metadata, e.g. `llama2_l2_d64_moe4k2_ls0.1_s3`)."""
    if cfg.train.exp_name:
        return cfg.train.run_prefix + cfg.train.exp_name
    name = cfg.train.run_prefix + "_".join(run_name_parts(cfg))
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in name)


def check_run_name(cfg: RunConfig) -> str:
    """The run name, or ConfigError if it is not one plain folder name inside --results_base_folder."""
    name = run_name(cfg)
    flag = "exp_name" if cfg.train.exp_name else "run_prefix"
    bad = None
    if any(sep in name for sep in ("/", "\\", os.sep, "\0")):
        bad = "contains a path separator"
    elif name in (".", ".."):
        bad = "names a folder outside a run"
    elif name == LATEST_POINTER:
        bad = f"is the name of the results folder's `{LATEST_POINTER}` pointer file"
    elif len(name.encode()) > MAX_NAME_BYTES:
        bad = f"is longer than {MAX_NAME_BYTES} bytes"
    elif any(not c.isprintable() for c in name):
        bad = "contains a control character"
    if bad:
        raise ConfigError(f"`{flag}` '{name}' {bad}; a run name must be one plain folder name such as "
                          f"`{flag}` my_run (runs are always created inside `results_base_folder`)")
    return name
# ---------------------------------------------------------------------------------------------------- directories


def create_run_dir(cfg: RunConfig) -> str:
    """Create a brand-new run directory under results_base_folder; never returns an existing one."""
    base = cfg.train.results_base_folder
    name = check_run_name(cfg)
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --results_base_folder '{base}': {e.strerror}; choose a writable folder")
    for i in range(1, 100000):
        path = os.path.join(base, name if i == 1 else f"{name}-{i}")
        try:
            os.mkdir(path)  # atomic: exactly one process succeeds for a given path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot create a run directory in --results_base_folder '{base}': {e.strerror}; "
                            "choose a writable folder")
        os.mkdir(os.path.join(path, CKPT_DIR))
        write_latest_pointer(base, path)
        return path
    raise UserError(f"too many runs named '{name}' in '{base}'; pass a different --exp_name")


def write_latest_pointer(base: str, run_dir: str) -> None:
    """Point `latest` at `run_dir`; a folder of that name (not lmsprint's pointer file) is left untouched and the
    newest run is then found by modification time."""
    pointer = os.path.join(base, LATEST_POINTER)
    if os.path.isdir(pointer):
        return
    atomic_write_text(pointer, os.path.basename(os.path.normpath(run_dir)) + "\n")


# ---------------------------------------------------------------------------------------------------- lock

_HELD: dict = {}  # realpath of a run dir -> the open file descriptor holding its lock in this process


def lock_run_dir(run_dir: str) -> None:
    """Hold an exclusive OS lock on the run for the life of this process (released by `unlock_run_dir` or when
    the process ends, however it ends). UserError if another live process holds it."""
    key = os.path.realpath(run_dir)
    if key in _HELD:
        return
    try:
        fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot lock run directory {run_dir} ({e.strerror}: {lock_path(run_dir)}); a run needs a "
                        "writable run directory")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            pid = ""
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise UserError(f"cannot lock run directory {run_dir} ({e.strerror})")
        raise UserError(f"run {run_dir} is in use by another process{f' (pid {pid})' if pid else ''}; wait for it "
                        "to finish or stop it before resuming")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message above
    _HELD[key] = fd


def unlock_run_dir(run_dir: str) -> None:
    fd = _HELD.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def is_locked(run_dir: str) -> bool:
    """Whether a live process (this one or another) holds the run's lock."""
    if os.path.realpath(run_dir) in _HELD:
        return True
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def is_latest_pointer(path: str) -> bool:
    """Whether `path` is a results folder's `latest` pointer file (a shell glob `exps/*` passes it along)."""
    return os.path.basename(path) == LATEST_POINTER and os.path.isfile(path)


def is_run_dir(path: str) -> bool:
    """A run directory holds config.yaml: `lmsprint train` writes it right after creating the folder, before
    any summary, and every command that reads a run needs it."""
    return os.path.isdir(path) and os.path.isfile(config_path(path))


def list_run_dirs(base: str) -> list[str]:
    """The run directories directly inside `base`, sorted by name ([] if `base` is not a folder)."""
    if not os.path.isdir(base):
        return []
    return [p for p in (os.path.join(base, d) for d in sorted(os.listdir(base))) if is_run_dir(p)]


def last_modified(run_dir: str) -> float:
    """Newest modification time of the run's config, summary and metrics files."""
    return max(os.path.getmtime(p) for p in (summary_path(run_dir), metrics_path(run_dir), config_path(run_dir))
               if os.path.exists(p))


def resolve_run_dir(spec: str, base: str = "./exps") -> str:
    """'latest' -> newest run in `base` (pointer file, else newest summary/metrics mtime); a path -> that run."""
    if spec != LATEST_POINTER:
        if not is_run_dir(spec):
            raise UserError(f"'{spec}' is not a run directory (no {CONFIG_FILE}); pass a folder created by "
                            "`lmsprint train` or 'latest'")
        return spec
    pointer = os.path.join(base, LATEST_POINTER)
    if os.path.isfile(pointer):
        with open(pointer) as fh:
            cand = os.path.join(base, fh.read().strip())
        if is_run_dir(cand):
            return cand
    runs = list_run_dirs(base)
    if not runs:
        raise UserError(f"no runs found in '{base}'; train one first or pass --results_base_folder / a run directory")
    return max(runs, key=last_modified)


# ---------------------------------------------------------------------------------------------------- files


def write_config(run_dir: str, cfg: RunConfig) -> None:
    atomic_write_text(config_path(run_dir), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config_dict(run_dir: str) -> dict:
    """config.yaml as the plain nested dict it holds ({} if missing or unreadable); no validation, so that runs
    of other versions can still be listed and compared."""
    try:
        with open(config_path(run_dir)) as fh:
            d = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return d if isinstance(d, dict) else {}


def read_config(run_dir: str) -> RunConfig:
    path = config_path(run_dir)
    try:
        with open(path) as fh:
            d = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {e}; is '{run_dir}' a run directory?")
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a config mapping; is '{run_dir}' a run directory?")
    cfg = RunConfig.from_dict(d)
    cfg.config_format = d.get("config_format", cfg.config_format)
    return cfg.validate()


def write_summary(run_dir: str, summary: dict) -> None:
    atomic_write_text(summary_path(run_dir), json_text(summary, indent=2) + "\n")


def read_summary(run_dir: str) -> Optional[dict]:
    """summary.json as a dict, or None if it is missing or not a JSON object."""
    try:
        with open(summary_path(run_dir)) as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def status(run_dir: str) -> str:
    """running | complete | interrupted | failed, or 'no summary'. A summary saying `running` (or none at all)
    while no process holds the run's lock means the process died: `interrupted` when a checkpoint is there to
    resume from, else `failed`."""
    st = (read_summary(run_dir) or {}).get("status") or "no summary"
    if st in ("running", "no summary") and is_run_dir(run_dir) and not is_locked(run_dir):
        return "interrupted" if has_checkpoint(run_dir) else "failed"
    return st


def write_eval(run_dir: str, results: dict) -> None:
    atomic_write_text(eval_path(run_dir), json_text(results, indent=2) + "\n")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_metrics(run_dir: str) -> list[dict]:
    """The rows of metrics.jsonl: complete lines only (a run still going may have a half-written last line),
    skipping any line that is not a JSON object; DataError for a line that is not UTF-8."""
    rows = []
    path = metrics_path(run_dir)
    if os.path.exists(path):
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:  # lmsprint writes UTF-8 JSON only: the file is damaged or foreign
                    raise DataError(f"{path} line {n} is not UTF-8 text (byte {e.start + 1} of the line); the file "
                                    "is damaged or was not written by lmsprint") from None
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def truncate_metrics(run_dir: str, n_rows: int) -> None:
    """Keep the first `n_rows` complete lines of metrics.jsonl (drops rows written after a checkpoint and any
    half-written last line), atomically."""
    path = metrics_path(run_dir)
    if not os.path.exists(path):
        return
    with open(path) as fh:
        lines = [line for line in fh]
    keep = [line for line in lines[:n_rows] if line.endswith("\n")]
    atomic_write_text(path, "".join(keep))


def truncate_file(path: str, n_bytes: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) > n_bytes:
        with open(path, "r+b") as fh:
            fh.truncate(n_bytes)

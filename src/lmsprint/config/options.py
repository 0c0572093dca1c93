"""What one option knows about itself, and how one raw value becomes a typed, checked value.

- `option(default, help, ...)`: a dataclass field whose metadata holds every fact about the flag (help, choices,
  check, parse, metavar, cli, bounds, resume_safe, bookkeeping, sweep_reserved, name_part, keywords, numeric,
  common); see `option` for each key. The config tree (`schema.py`) and every subcommand's own flags
  (`cli/arguments.py`) are dataclasses of such fields.
- value checks for `check=` (`positive`, `nonneg`, `frac`, `frac_open`, `duration_check`, ...): each returns an
  error message or None.
- `parse_duration`, `parse_bool`.
- `convert(name, f, tp, value)`: a raw value (a CLI string or a config-file scalar) to the option's type, strictly:
  a bool is not a number, `²` is not a digit, `1.5` is not an integer.
- `value_problem(f, tp, v)`: the type / finiteness / range check every numeric option gets, whatever its source;
  `field_problem(f, tp, v)`: that, then `choices`, then `check` (the rules of one value, in that order).
- `parse_value(name, f, tp, raw)`: a raw value -> the typed value that passed `field_problem`, else one
  ConfigError line ("`temperature` nan: must be a finite number"); `is_numeric(f, tp)`: does the flag take numbers.
- `iter_fields(obj_or_cls)`: walk a dataclass tree; `unknown_name_error`: one line naming the closest valid name.

Nothing here knows which options exist (that is `schema.py`).
"""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import re
from dataclasses import field
from fractions import Fraction
from typing import Any, Callable, Iterable, Optional, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError, UserError
from ..keys import NUMBER

# Integer options must fit in a signed 32-bit int unless they say otherwise (`bounds=`): shapes, counts and
# intervals beyond it cannot be allocated or run (an embedding of 2**31 rows is terabytes) and fail deep inside
# torch instead of here. Seeds take anything torch.manual_seed and numpy's generators take: 0 .. 2**63-1.
INT_MAX = 2**31 - 1
SEED_MAX = 2**63 - 1
# sampling temperatures in (0, MIN_TEMPERATURE) are refused: there sampling is greedy decoding for any logit gap
# above 1e-4 (the runner-up's odds are below exp(-100)), and dividing logits by a smaller number can overflow
# float32 (3.4e38) into inf and NaN probabilities; temperature 0 is greedy decoding itself
MIN_TEMPERATURE = 1e-6
DEFAULT_INT_BOUNDS = (-INT_MAX, INT_MAX)


def option(default: Any, help: str, choices: Optional[list] = None,
           check: Optional[Callable[[Any], Optional[str]]] = None, metavar: Optional[str] = None, cli: bool = True,
           *, parse: Optional[Callable[[Any], Any]] = None, bounds: Optional[tuple[int, int]] = None, resume_safe: bool = False, bookkeeping: bool = False,
           sweep_reserved: Optional[str] = None,
           name_part: Optional[Callable[[Any, Any], Optional[str]]] = None, group: Optional[str] = None,
           aliases: tuple = (), near_names: Optional[dict] = None, keywords: Optional[dict] = None,
           numeric: bool = False, common: bool = False):
    """A config field and every fact about its flag.

    - `help`, `choices` (None allowed = unset), `check(v) -> message | None`, `metavar`, `cli` (False: not a flag).
    - `parse(raw) -> value`: for an option whose value is not one plain type (e.g. `micro_batch`: N or 'auto'): turns
      a CLI string or config-file value into the typed value, once, raising ValueError(why) if it cannot; `check`
      then checks values set directly (the Python API).
    - `bounds=(lo, hi)`: inclusive range of an integer option (default `DEFAULT_INT_BOUNDS`).
    - `resume_safe=True`: may be given with `--resume` without changing the run (devices, logging, caching).
    - `bookkeeping=True`: differs between runs without changing what was trained; `compare` ignores it.
    - `sweep_reserved="reason"`: `lmsprint sweep` sets it itself for every run; the reason is shown if a user does.
    - `name_part(value, cfg) -> str | None`: this option's piece of the derived run name (None: no piece).
    - `group="schedule"`: the --help group of the flag (default: its config section).
    - `aliases=("learning_rate",)`: other names of the same flag (nanoGPT's), accepted on the command line.
    - `near_names={"eval_iters": "why"}`: other tools' names of a related but not identical setting; typing one
      answers with this flag and the reason instead of a guess.
    - `keywords={"full": None}`: words accepted in place of a value (any case), and the value each stands for.
    - `numeric=True`: a string option whose values are numbers in a syntax of its own (e.g. lm-eval's 'auto:N');
      its `check` applies the number rules, and the tests feed it the same bad numbers as an int or float option.
    - `common=True`: one of the most used flags, listed by the short `--help` (the others by `--help GROUP`).
    """
    md = {"help": help, "choices": choices, "check": check, "parse": parse, "metavar": metavar, "cli": cli,
          "bounds": bounds,
          "resume_safe": resume_safe, "bookkeeping": bookkeeping, "sweep_reserved": sweep_reserved,
          "name_part": name_part, "group": group, "aliases": tuple(aliases), "near_names": dict(near_names or {}),
          "keywords": dict(keywords or {}), "numeric": numeric, "common": common}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=md)
    return field(default=default, metadata=md)


# ---------------------------------------------------------------------------------------------------- checks


def positive(v):
    return None if v is not None and v > 0 else "must be > 0"


def nonneg(v):
    return None if v is not None and v >= 0 else "must be >= 0"


def frac(v):
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def frac_open(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def duration_check(v):
    try:
        parse_duration(v)
    except ValueError:
        return f"cannot parse '{v}' as a duration; use e.g. 90s, 5m, 3h or 1h30m"
    return None


# ---------------------------------------------------------------------------------------------------- parsing

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
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", s)
    if not parts or re.sub(r"[0-9.\sa-z]", "", s) or "".join(a + b for a, b in parts) != s.replace(" ", ""):
        raise ValueError(text)
    total = 0.0
    for num, unit in parts:
        unit = unit or None
        if unit not in _UNIT:
            raise ValueError(text)
        total += float(num) * _UNIT[unit]
    if total <= 0 or not math.isfinite(total):
        raise ValueError(text)
    return total


def parse_budget(text) -> tuple[str, float]:
    """A target budget (`ladder --at`, `forecast --at`): '25000' / '2.5e4' / '25k' -> ('iterations', 25000.0);
    '3h' / '90m' / '1h30m' -> ('time', seconds). Raises ValueError saying what is wrong."""
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    why = "is neither a number of iterations (e.g. 25000) nor a duration (e.g. 3h, 90m)"
    v = None
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?(e[0-9]+)?", s):
        v = float(s)
    elif re.fullmatch(r"[0-9]+(\.[0-9]+)?k", s):
        v = float(s[:-1]) * 1000
    if v is not None:
        if not math.isfinite(v) or v > INT_MAX:
            raise ValueError(f"must be at most {INT_MAX:,} iterations")
        if v < 1 or v != int(v):
            raise ValueError("must be a whole number of iterations >= 1")
        return "iterations", float(int(v))
    try:
        secs = parse_duration(s) if s.isascii() else None
    except ValueError:
        secs = None
    if not secs:
        raise ValueError(why)
    return "time", secs


def parse_fractions(text) -> list:
    """`ladder --rungs`: '1/16,1/8,0.25' -> [Fraction(1, 16), Fraction(1, 8), Fraction(1, 4)] (sorted, distinct,
    each in (0, 1]). Raises ValueError saying what is wrong."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            f = Fraction(part) if part.isascii() else None
        except (ValueError, ZeroDivisionError, OverflowError):
            f = None
        if f is None:
            raise ValueError(f"'{part}' is not a fraction of the target; use e.g. 1/16,1/8,1/4")
        if not 0 < f <= 1:
            raise ValueError(f"{part}: each rung must be a fraction of the target in (0, 1]")
        out.append(f)
    if not out:
        raise ValueError("is empty; use e.g. 1/16,1/8,1/4")
    return sorted(set(out))


def parse_seed_list(text) -> list[int]:
    """`ladder --seeds`: '2' -> [0, 1] (a count); '0,3,7' -> [0, 3, 7] (a list). Raises ValueError."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(re.fullmatch(r"[0-9]+", p) for p in parts if p) or not any(parts):
        raise ValueError("is neither a number of seeds (e.g. 2) nor a list of seeds (e.g. 0,3,7)")
    nums = [int(p) for p in parts if p]
    if any(n > SEED_MAX for n in nums):
        raise ValueError(f"seeds must be at most {SEED_MAX}")
    if len(parts) == 1:
        if nums[0] < 1 or nums[0] > 1000:
            raise ValueError("a number of seeds must be in 1..1000")
        return list(range(nums[0]))
    return list(dict.fromkeys(nums))


def _problem(parse):
    """An option `check` from a parser that raises ValueError(what is wrong)."""
    def check(v) -> Optional[str]:
        try:
            parse(v)
        except ValueError as e:
            return str(e)
        return None
    return check


budget_check = _problem(parse_budget)
fractions_check = _problem(parse_fractions)
seed_list_check = _problem(parse_seed_list)


def parse_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(v)


# ASCII digits only (str.isdigit and int() also take '²', '١' and '1_000'); an exponent form must be an exact integer
_INT = re.compile(r"[+-]?[0-9]+")
_INT_EXP = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?[eE]\+?[0-9]{1,3}")
_KIND = {bool: "true/false", int: "an integer", float: "a number"}


def base_type(tp):
    """Optional[X] -> X."""
    if get_origin(tp) is Union:
        return [a for a in get_args(tp) if a is not type(None)][0]
    return tp


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _to_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if _INT.fullmatch(s):
            return int(s)
        if _INT_EXP.fullmatch(s):
            d = decimal.Decimal(s)
            if d == d.to_integral_value():
                return int(d)
    raise ValueError(value)


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range: refused as not finite by value_problem
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        return float(value.strip())  # inf / nan parse here and are refused by value_problem with a clear reason
    raise ValueError(value)


def convert(name: str, f: dataclasses.Field, tp, value):
    """A raw value (CLI string or config-file scalar) -> the field's type; ConfigError naming the option."""
    parse = f.metadata.get("parse")
    if parse is not None:
        try:
            return parse(value)
        except ValueError as e:
            raise ConfigError(f"`{name}` {_shown(value)}: {e}")
    base = base_type(tp)
    words = f.metadata.get("keywords") or {}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and base is not str):
        if get_origin(tp) is Union or f.default is None:
            return None
        raise ConfigError(f"`{name}` cannot be empty; {f.metadata['help']}")
    try:
        if base is bool:
            return parse_bool(value)
        if base is int:
            return _to_int(value)
        if base is float:
            return _to_float(value)
        if isinstance(value, (list, dict, set, tuple)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError, decimal.InvalidOperation):
        kind = " or ".join([_KIND.get(base, "a string"), *(f"'{w}'" for w in words)])
        raise ConfigError(f"`{name}`: '{shown(value)}' is not {kind}")


def value_problem(f: dataclasses.Field, tp, v) -> Optional[str]:
    """Type, finiteness and range of a (non-None) numeric value, whatever set it; an error message or None."""
    if f.metadata.get("parse") is not None:  # not one plain type: its `check` says what is allowed
        return None
    base = base_type(tp)
    if base is int:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        lo, hi = f.metadata.get("bounds") or DEFAULT_INT_BOUNDS
        if v > hi:
            return f"must be at most {hi}"
        if v < lo:
            return f"must be at least {lo}"
    elif base is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "must be a number"
        if not math.isfinite(v):
            return "must be a finite number"
    elif base is bool and not isinstance(v, bool):
        return "must be true or false"
    return None


def field_problem(f: dataclasses.Field, tp, v) -> Optional[str]:
    """The first rule a (typed) value breaks: type/finiteness/range, then `choices`, then `check`; or None."""
    msg = value_problem(f, tp, v) if v is not None else None
    if msg:
        return msg
    choices = f.metadata.get("choices")
    if choices is not None and v not in choices:
        return "is not one of: " + ", ".join(str(c) for c in choices if c is not None)
    check = f.metadata.get("check")
    return check(v) if check is not None and v is not None else None


def shown(value) -> str:
    """A value as the user wrote it, but a very long one shortened (a 400-digit integer as 9.99e+399)."""
    text = _shown(value).strip() if not isinstance(value, str) else value.strip()
    if len(text) <= 24:
        return text
    digits = text.lstrip("+-")
    if digits.isascii() and digits.isdigit():
        return f"{text[:len(text) - len(digits)]}{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"
    return text[:21] + "..."


def temperature_problem(v: float) -> Optional[str]:
    """The one rule for a sampling temperature (the CLI's `--temperature` and the API's `generate`)."""
    if not math.isfinite(v) or v < 0 or 0 < v < MIN_TEMPERATURE:
        return f"must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}"
    return None


def parse_value(name: str, f: dataclasses.Field, tp, raw):
    """A raw value (a CLI string, a file's scalar) -> the option's typed value that keeps every rule of
    `field_problem`; otherwise ConfigError "`name` RAW: what is wrong" (the CLI shows `--name RAW: ...`)."""
    v = convert(name, f, tp, raw)
    msg = field_problem(f, tp, v)
    if msg:
        raise ConfigError(f"`{name}` {shown(raw) if str(raw).strip() else repr(raw)}: {msg}")
    return v


def is_numeric(f: dataclasses.Field, tp) -> bool:
    """Does this option take numbers (an int or float option, or a string option marked `numeric`)?"""
    return base_type(tp) in (int, float) or bool(f.metadata.get("numeric"))


# ---------------------------------------------------------------------------------------------------- walking


def iter_fields(obj_or_cls, prefix: tuple = ()):
    """Yield (path, dataclass_field, type) for every leaf option in a dataclass tree, depth first, in field order."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, prefix + (f.name,))
        else:
            yield prefix + (f.name,), f, tp


def owner(cfg, path: tuple):
    """The section object holding the option at `path`."""
    obj = cfg
    for p in path[:-1]:
        obj = getattr(obj, p)
    return obj


def unknown_name_error(name: str, names: Iterable[str], where: str = "flag") -> UserError:
    """'unknown flag 'lrr'; did you mean --lr?' (the hint names the closest of `names`)."""
    close = difflib.get_close_matches(name, [n for n in names if n != name], n=1, cutoff=0.5)  # never the typed one
    hint = f"; did you mean --{close[0]}?" if close else "; see lmsprint train --help"
    return UserError(f"unknown {where} '{name}'{hint}")

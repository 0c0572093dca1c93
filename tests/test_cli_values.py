"""Every numeric flag of every subcommand follows train's value rules (type, finiteness, range, ASCII digits): a
bad value is one line, exit 2, nothing written. The flags are read from the parsers themselves (each action made
from an `option(...)` carries its field), never from a list kept here, so a flag added to any subcommand is fed
the same bad values without editing this file."""

from __future__ import annotations

import argparse

import pytest

from lmsprint.cli import COMMANDS, build_parser
from lmsprint.config.options import is_numeric

BAD = {"nan": "nan", "inf": "inf", "negative": "-1", "overflow": "1e400", "fullwidth_digits": "\uff11\uff12",
       "empty": "", "huge_int": "9" * 400}
# value-taking flags of a command that are not options (they name files/runs, never numbers)
NOT_OPTIONS = {"train": {"--config", "--resume", "--resume_override"}}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _positionals(p: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the command's required positionals (a bad flag value is refused before they are
    looked at)."""
    return ["x" for a in p._actions if not a.option_strings and a.nargs not in ("*", "?")]


def numeric_flags() -> list[tuple[str, str, list]]:
    out = []
    for command in COMMANDS:
        p = _subparser(command)
        for a in p._actions:
            opt = getattr(a, "option", None)
            if opt is not None and is_numeric(opt[1], opt[2]):
                out.append((command, a.option_strings[0], _positionals(p)))
    return out


FLAGS = numeric_flags()


def test_every_subcommand_has_its_numeric_flags_enumerated():
    commands = {c for c, _, _ in FLAGS}
    assert commands >= set(COMMANDS) - {"compare", "export"}  # (compare and export took no number when written)
    flags = {(c, f) for c, f, _ in FLAGS}
    for expected in [("eval", "--eval_tokens"), ("eval", "--limit"), ("eval", "--num_fewshot"),
                     ("eval", "--batch_size"),
                     ("generate", "--temperature"), ("generate", "--seed"), ("generate", "--max_new_tokens"),
                     ("bench", "--peak_flops"), ("bench", "--warmup"), ("bench", "--world_size"), ("bench", "--lr"),
                     ("sweep", "--parallel"), ("sweep", "--seeds"), ("prepare", "--val_fraction"),
                     ("prepare", "--max_docs"), ("train", "--lr")]:
        assert expected in flags


def test_every_value_flag_is_defined_by_an_option():
    """No subcommand flag takes a value outside the option machinery (e.g. a bare `type=int`, which takes
    '１２' and 'nan' rules of its own)."""
    for command in COMMANDS:
        for a in _subparser(command)._actions:
            if not a.option_strings or a.nargs == 0 or a.dest in ("help",) or a.dest is argparse.SUPPRESS:
                continue
            if a.option_strings[0] in NOT_OPTIONS.get(command, ()):
                assert a.type is None
                continue
            assert getattr(a, "option", None) is not None, f"{command} {a.option_strings[0]} is no option(...)"
            assert a.type not in (int, float)


@pytest.mark.parametrize("command,flag,positionals", FLAGS, ids=[f"{c}{f}" for c, f, _ in FLAGS])
def test_bad_numbers_are_one_line_exit_2(command, flag, positionals, in_process, tmp_path):
    for case, value in BAD.items():
        p = in_process(command, *positionals, flag, value)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (case, p.stderr[-2000:])
        assert lines[0].startswith(f"lmsprint: error: {flag}"), (case, lines[0])
        assert "Traceback" not in p.stderr and p.stdout == ""
    assert list(tmp_path.iterdir()) == []  # refused before any work: nothing created


@pytest.mark.parametrize("argv,fragment", [
    (["eval", "r", "--eval_tokens", "inf"], "--eval_tokens: 'inf' is not an integer or 'full'"),
    (["eval", "r", "--eval_tokens", "0"], "--eval_tokens 0: must be > 0"),
    (["eval", "r", "--batch_size", "auto:abc"], "--batch_size auto:abc: must be a positive integer, 'auto', or"),
    (["eval", "r", "--batch_size", "auto:0"], "--batch_size auto:0"),
    (["eval", "r", "--limit", "1.5"], "--limit 1.5: must be a whole number of examples when >= 1"),
    (["eval", "r", "--num_fewshot", "-1"], "--num_fewshot -1: must be >= 0"),
    (["generate", "r", "--temperature", "nan"], "--temperature nan: must be a finite number"),
    (["generate", "r", "--temperature", "1e-45"], "--temperature 1e-45: must be 0 (greedy) or at least 0.001"),
    (["generate", "r", "--seed", "1e23"], "--seed 1e23: must be at most 9223372036854775807"),
    (["generate", "r", "--seed", "-1"], "--seed -1: must be at least 0"),
    (["generate", "r", "--num_samples", "0"], "--num_samples 0: must be > 0"),
    (["generate", "r", "--max_new_tokens", "9" * 400], "--max_new_tokens 9.99e+399: must be at most 2147483647"),
    (["bench", "--peak_flops", "-1"], "--peak_flops -1: must be > 0"),
    (["bench", "--peak_flops", "nan"], "--peak_flops nan: must be a finite number"),
    (["bench", "--compile_backend", "no_such_backend"], "--compile_backend 'no_such_backend' is not a torch.compile "
                                                        "backend; use one of: inductor"),
    (["bench", "--compile_backend", "bad name!"], "--compile_backend bad name!: is not a torch.compile backend name"),
    (["bench", "--suite", "tpu"], "--suite tpu: is not one of: gpu, cpu"),
    (["sweep", "--seeds", "0,１"], "--seeds 0,１: seed '１' is not an integer"),
    (["sweep", "--seeds", "0,-3"], "--seeds 0,-3: seed '-3' must be at least 0"),
    (["sweep", "--parallel", "0"], "--parallel 0: must be > 0"),
    (["export", "r", "o", "--dtype", "int8"], "--dtype int8: is not one of: float32, bfloat16, float16"),
    (["compare", "r", "--metric", "loss"], "--metric loss: is not one of: val/loss"),
])
def test_value_errors_say_what_is_wrong(argv, fragment, in_process):
    p = in_process(*argv)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("lmsprint: error: "), p.stderr[-2000:]
    assert fragment in lines[0], lines[0]


def test_good_values_parse_to_typed_values():
    p = _subparser("eval")
    ns = p.parse_args(["r", "--eval_tokens", "FULL", "--limit", "0.5", "--batch_size", "auto:4"])
    assert ns.eval_tokens is None and ns.limit == 0.5 and ns.batch_size == "auto:4"
    assert p.parse_args(["r", "--eval_tokens", "1e5"]).eval_tokens == 100000
    ns = _subparser("generate").parse_args(["r", "--temperature", "0", "--seed", "1e3", "--top_k", "0"])
    assert (ns.temperature, ns.seed, ns.top_k) == (0.0, 1000, 0) and isinstance(ns.seed, int)
    ns = _subparser("compare").parse_args(["--no_report", "a", "b"])  # a switch never swallows a positional
    assert ns.runs == ["a", "b"] and ns.no_report is True
    ns = _subparser("sweep").parse_args(["--grid", "lr=1,2", "--grid", "seed=1", "--seeds", "0,1"])
    assert ns.grid == ["lr=1,2", "seed=1"] and ns.seeds == "0,1"

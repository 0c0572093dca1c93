"""`lmsprint forecast RUN [RUN ...] --at BUDGET [--metric val/loss] [--json] [--plot PATH | --no_plot]`: the
command-line part (arguments, the table or JSON, the plot file, the exit status). Runs are found as `compare`
finds them (track/discover.py); grouping into arms, the fit, the bootstrap and the checks are in
track/forecast.py. When no arm gets a number the answer is one line saying what to run, exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import UserError
from ..files import json_text
from ..track.forecast import LEVEL, Forecast, fmt_budget, forecast_runs, plot_forecast
from ..track.report import text_table


def _plot_path(path) -> str:
    if path:
        if os.path.exists(path):
            raise UserError(f"--plot '{path}' already exists; plots are never overwritten, choose a new file")
        return path
    base = os.path.join("reports", "forecast-" + time.strftime("%Y%m%d-%H%M%S"))
    for i in range(1, 10000):
        p = f"{base}.png" if i == 1 else f"{base}-{i}.png"
        if not os.path.exists(p):
            return p
    raise UserError("too many forecast plots in ./reports; pass --plot PATH")


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def table(fc: Forecast) -> str:
    header = ["arm", "rungs", "seeds", "runs", "forecast", f"{LEVEL:.0%} interval", "p_best", "backtest", "status"]
    rows = []
    for a in fc.arms:
        bt = "-" if a.backtest_error is None else f"{a.backtest_error:+.4f} ({100 * a.backtest_rel:+.1f}%)"
        rows.append([a.arm, ",".join(fmt_budget(fc.kind, x).replace(",", "") for x in a.rungs),
                     ",".join(str(s) for s in a.seeds), str(a.n_runs), _num(a.forecast),
                     "-" if a.low is None else f"{a.low:.4f} - {a.high:.4f}",
                     "-" if a.p_best is None else f"{a.p_best:.2f}", bt, a.status])
    return text_table(header, rows)


def run_forecast(args: argparse.Namespace) -> int:
    if args.at is None:
        raise UserError("--at BUDGET is required: iterations (e.g. --at 25000) or a duration (e.g. --at 3h)")
    fc = forecast_runs(args.runs, args.at, args.metric)
    if not fc.live:
        why = "; ".join(f"{a.arm}: {a.message}" for a in fc.arms) or "no runs"
        raise UserError(f"no forecast at {fmt_budget(fc.kind, fc.target)}: {why}")
    plot = None
    if not args.no_plot:
        try:
            plot = plot_forecast(fc, _plot_path(args.plot))
        except ImportError:
            print("plot skipped: matplotlib is not installed (pip install 'lmsprint[plots]')", file=sys.stderr)
    if args.json:
        print(json_text([a.as_json() for a in fc.arms], indent=2))
        if plot:
            print(f"plot: {plot}", file=sys.stderr)
        return 0
    unit = " iterations" if fc.kind == "iterations" else " of training time"
    print(f"forecast of {fc.metric} at {fmt_budget(fc.kind, fc.target)}{unit}: L(x) = E + A*x^-alpha per arm "
          f"(scipy least_squares, bounds), {LEVEL:.0%} intervals from {fc.n_draws} bootstrap draws over seeds and "
          "rungs, p_best from the same draws jointly")
    print()
    print(table(fc))
    print()
    for a in fc.arms:
        print(f"{a.arm}: {a.status}: {a.message}")
        if a.left_out:
            print("  left out: " + ", ".join(f"{n} ({why})" for n, why in a.left_out))
    refused = [a.arm for a in fc.arms if a.status == "refused"]
    if refused and len(fc.live) > 0 and len(fc.arms) > 1:
        print(f"p_best is among the arms with a forecast; {', '.join(refused)} could not be ranked")
    if plot:
        print(f"plot: {plot}")
    return 0

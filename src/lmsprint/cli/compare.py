"""`lmsprint compare RUN...`: the command-line part (printing, the report folder); the work is in
track/discover.py (finding and loading runs), track/valsets.py (which runs share a val set), track/stats.py (arms,
tests), track/target.py (time to target) and track/report.py. The flags are `arguments.CompareOptions`."""

from __future__ import annotations

import argparse

from ..track.report import compare, unique_out_dir, write_report


def run_compare(args: argparse.Namespace) -> int:
    c = compare(args.runs, metric=args.metric, only_complete=args.only_complete, reference=args.reference,
                target=args.target)
    print(c.text())
    if not args.no_report:
        out = unique_out_dir(args.out)
        path = write_report(c, out, args.runs)
        print(f"report: {path}")
    return 0

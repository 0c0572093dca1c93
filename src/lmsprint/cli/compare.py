"""`lmsprint compare RUN...`: the command-line part (arguments, printing, the report folder); the work is in
track/discover.py (finding and loading runs), track/stats.py (seed groups, noise rule) and track/report.py."""

from __future__ import annotations

import argparse

from .. import keys as K
from ..track.report import compare, unique_out_dir, write_report
from ..track.stats import NOISE_RULE


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "Runs differing only by seed/data_seed are grouped (mean ± sample sd). " + NOISE_RULE[0].upper() + \
        NOISE_RULE[1:] + "."
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories, folders holding runs (searched recursively) or glob patterns")
    p.add_argument("--out", default=None, help="report folder (default: ./reports/compare-<timestamp>; an existing "
                   "non-empty folder is refused, never overwritten)")
    p.add_argument("--metric", default=K.VAL_LOSS, choices=list(K.VAL_KEYS),
                   help="final metric whose group differences get a noise verdict (default: val/loss)")
    p.add_argument("--reference", default=None, metavar="GROUP_OR_RUN_GLOB",
                   help="judge every seed group against this one (its label as shown, or a glob matching the names "
                   "or paths of its runs, e.g. 'base_s*') instead of against the best group")
    p.add_argument("--only_complete", action="store_true", help="skip runs whose status is not complete")
    p.add_argument("--no_report", action="store_true", help="print the table only; write no report folder")


def run_compare(args: argparse.Namespace) -> int:
    c = compare(args.runs, metric=args.metric, only_complete=args.only_complete, reference=args.reference)
    print(c.text())
    if not args.no_report:
        out = unique_out_dir(args.out)
        path = write_report(c, out, args.runs)
        print(f"report: {path}")
    return 0

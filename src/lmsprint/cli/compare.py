"""`lmsprint compare RUN...`: the command-line part (arguments, printing, the report folder); the work is in
track/discover.py (finding and loading runs), track/valsets.py (which runs share a val set), track/stats.py (arms,
tests), track/target.py (time to target) and track/report.py."""

from __future__ import annotations

import argparse

from .. import keys as K
from ..track.report import compare, unique_out_dir, write_report
from ..track.stats import METHOD


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Runs are ranked only against runs whose final eval scored the same val set (val token file hash, "
                "tokens evaluated, sequence length, tokenizer); others get tables of their own. Runs differing only "
                "by seed/data_seed form an arm (mean ± sample sd). " + METHOD[0].upper() + METHOD[1:] + ".")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories, folders holding runs (searched recursively) or glob patterns")
    p.add_argument("--out", default=None, help="report folder (default: ./reports/compare-<timestamp>; an existing "
                   "non-empty folder is refused, never overwritten)")
    p.add_argument("--metric", default=K.VAL_LOSS, choices=list(K.VAL_KEYS),
                   help="final metric the arms are tested on (default: val/loss)")
    p.add_argument("--reference", default=None, metavar="ARM_OR_RUN_GLOB",
                   help="judge every arm against this one (its label as shown, or a glob matching the names or paths "
                   "of its runs, e.g. 'base_s*') instead of against the best arm by mean")
    p.add_argument("--target", default=None, metavar="METRIC=VALUE",
                   help="e.g. val/loss=3.28: each arm's one-sided p that its mean final METRIC is at or below VALUE "
                   "(at or above for val/acc; scipy.stats.ttest_1samp, modded-nanogpt's record rule: p < 0.01) and "
                   "its time to target (the first periodic eval reaching it: median [min-max], runs that reached "
                   "it); default: the target every run recorded with `train --target`, if they share one")
    p.add_argument("--only_complete", action="store_true", help="skip runs whose status is not complete")
    p.add_argument("--no_report", action="store_true", help="print the table only; write no report folder")


def run_compare(args: argparse.Namespace) -> int:
    c = compare(args.runs, metric=args.metric, only_complete=args.only_complete, reference=args.reference,
                target=args.target)
    print(c.text())
    if not args.no_report:
        out = unique_out_dir(args.out)
        path = write_report(c, out, args.runs)
        print(f"report: {path}")
    return 0

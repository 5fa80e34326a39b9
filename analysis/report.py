"""`python -m analysis.report EXPERIMENT`: `<experiment>/analysis/report.md` with PNG figures.

Sections: summary (mean +- std over seeds per backbone x head), each head against softmax
on its backbone (paired over seeds), accuracy against epoch time with the Pareto front,
learning curves of the best trials, trials surviving each ASHA rung, confusion matrices
(fine and coarse, with class names), parameter importance (Optuna, where a study has enough
trials), the heads' cost (measured and from complexity()), observations computed from the
numbers, and provenance with the caveat that fits the data. Test-set numbers come from
`analysis.retrain` (final.parquet); without it the report says so and shows the search alone.
"""
from __future__ import annotations

import argparse
import sys

from common.cli import ArgumentParser, guard


def __getattr__(name: str):
    """`analysis.report.build_report`, `plot_confusion`, ...: the sections live in analysis.report_doc, loaded on
    first use (pandas, torch and matplotlib take seconds; `--help` needs none of them)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from analysis import report_doc

    return getattr(report_doc, name)


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m analysis.report", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="the experiment folder (<storage>/<name>)")
    args = p.parse_args(argv)
    from analysis.report_doc import build_report

    print(f"wrote {build_report(args.experiment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

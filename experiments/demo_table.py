"""Print one compact table from `oirl evaluate` reports (what `make demo` ends with).

    python experiments/demo_table.py models/mawps.evaluate.json models/gsm8k.evaluate.json

One row per report: the bundle's default policy (chosen by cross-validation at
training), argmax and conservative, the best single prompt chosen on training data,
the oracle (best logged prompt per query) and the share of the best-single -> oracle
gap the default policy recovers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(reports: list[dict]) -> str:
    header = ("| log | test queries | oirl default policy | argmax | conservative | best single prompt (train) | oracle | gap recovered |\n"
              "|---|---|---|---|---|---|---|---|")
    rows = []
    for report in reports:
        policies, default = report["policies"], report["default_policy"]
        best = report["best_single_prompt"]
        rows.append(
            f"| {', '.join(Path(p).name for p in report['logs'])} | {report['queries']} | {policies[default]:.3f} ({default}) "
            f"| {policies['argmax']:.3f} | {policies['conservative']:.3f} | {best['success_rate']:.3f} ({best['prompt_id']}) "
            f"| {report['oracle']:.3f} | {report['gap_recovered'][default]:.2f} |"
        )
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="JSON reports written by `oirl evaluate --out`.")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            parser.exit(2, f"error: {path}: not a readable `oirl evaluate --out` report ({exc})\n")
    try:
        text = table(reports)
    except KeyError as exc:
        parser.exit(2, f"error: a report lacks the field {exc} (write it with `oirl evaluate --out`)\n")
    print(text)
    return text


if __name__ == "__main__":
    main()

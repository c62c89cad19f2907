"""``oirl calibrate``: routing on a budget (:mod:`oirl.learn.calibration`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from oirl.cli.options import CACHE_OPTION
from oirl.errors import OirlError


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--queries", "queries_file", required=True, type=click.Path(path_type=Path),
              help="A sample of your own queries, no rewards needed: JSONL with a 'query' field per line, or Parquet (a file, directory or glob) with a 'query' column.")
@click.option("--max-share", "max_share", metavar="ARM=SHARE", help="At most SHARE (0 to 1) of the calls go to ARM, the bundle's dearest prompt, e.g. gpt-4-0613:cot=0.3.")
@click.option("--budget", type=float, metavar="COST", help="At most COST per query on average, in the unit of the bundle's costs (any number of prompts).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the calibrated bundle here (new, empty, or an existing bundle) [default: replace MODEL_DIR, atomically].")
@CACHE_OPTION
def calibrate(model_dir: Path, queries_file: Path, max_share: str | None, budget: float | None, out_dir: Path | None, cache_dir: Path) -> None:
    """Choose the cost-aware policy's cost weight from a sample of your queries so that the dearest prompt gets at most
    a share of the calls (--max-share) or the mean cost per query stays within --budget, and make that policy the bundle's default."""
    from oirl.data.batch import query_sources, read_query_partition
    from oirl.learn.calibration import Budget, calibrate, check_target, parse_share_cap
    from oirl.recommender.bundle import check_output_directory, load_bundle, save_bundle

    if (max_share is None) == (budget is None):
        raise OirlError("give exactly one of --max-share ARM=SHARE or --budget COST")
    target = parse_share_cap(max_share) if max_share is not None else Budget(budget)
    out = check_output_directory(out_dir if out_dir is not None else model_dir)
    rec = load_bundle(model_dir, cache_dir=cache_dir)
    check_target(rec, target)  # before the queries are read and embedded
    queries = [q for source in query_sources(queries_file) for q in read_query_partition(source)["query"]]
    calibrated = calibrate(rec, queries, target, source=Path(queries_file).name)
    save_bundle(calibrated, out)
    click.echo(json.dumps({"bundle": str(out), "default_policy": calibrated.default_policy, "cost_weight": calibrated.cost_weight,
                           "calibration": calibrated.calibration,
                           "before": {"default_policy": rec.default_policy, "cost_weight": rec.cost_weight}}))

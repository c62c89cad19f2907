"""``oirl import``: published logs and log files into oirl's schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from oirl.cli.options import FORCE_OPTION, _names, read_costs

# --------------------------------------------------------------------------- import


@click.group("import")
def import_() -> None:
    """Import published logs, or convert a log file, into oirl's log schema."""


@import_.command("prompt-oirl")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder holding prompt-oirl-llama2/, gsm8k/ and svamp-mawps/ (e.g. ../shared/data). Without it, the files are downloaded from their public repositories.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="logs", show_default=True, help="Where the log files go.")
@click.option("--datasets", default="gsm8k,svamp,mawps", show_default=True, help="Comma-separated datasets to import.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet", show_default=True, help="Log file format.")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("logs/raw/prompt-oirl"), show_default=True, help="Where downloads go (only without --data-dir).")
@FORCE_OPTION
def import_prompt_oirl_command(data_dir: Path | None, out_dir: Path, datasets: str, fmt: str, raw_dir: Path, force: bool) -> None:
    """The LLaMA-2 logs of Prompt-OIRL: {ds}.<fmt> (6 training prompts) and {ds}_heldout.<fmt> (10 held-out prompts)."""
    from oirl.data.importers.prompt_oirl import DATASETS, import_prompt_oirl

    chosen = _names(datasets, DATASETS, DATASETS, "--datasets")
    if data_dir is None:
        from oirl.data.importers.download import download_release

        data_dir = download_release(raw_dir, datasets=chosen)
    for summary in import_prompt_oirl(data_dir, out_dir, datasets=chosen, fmt=fmt, force=force):
        click.echo(json.dumps(summary))


@import_.command("cruxeval")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder holding cruxeval/ (e.g. ../shared/data).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="logs", show_default=True, help="Where the log file goes.")
@click.option("--temperature", type=float, default=0.2, show_default=True, help="Sampling temperature of the arms to import (0.2 or 0.8).")
@click.option("--costs", "costs_file", type=click.Path(path_type=Path), help="JSON object arm id ('model:style') -> cost per call, replacing the default table.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet", show_default=True, help="Log file format.")
@FORCE_OPTION
def import_cruxeval_command(data_dir: Path, out_dir: Path, temperature: float, costs_file: Path | None, fmt: str, force: bool) -> None:
    """CRUXEval input prediction: one row per (sample, model:style arm), reward = n_correct / n_generations."""
    from oirl.data.importers.cruxeval import import_cruxeval

    costs = read_costs(costs_file) if costs_file else None
    click.echo(json.dumps(import_cruxeval(data_dir, out_dir, temperature=temperature, fmt=fmt, costs=costs, force=force)))


@import_.command("logs")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "target", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output log file (.csv, .jsonl or .parquet).")
@FORCE_OPTION
def import_logs_command(source: Path, target: Path, force: bool) -> None:
    """Validate a CSV/JSONL/Parquet log and write it in canonical form (any of the three formats)."""
    from oirl._outputs import check_replaceable, is_oirl_parquet
    from oirl.data.logs import read_logs, write_logs

    check_replaceable(target, is_oirl_parquet, force=force)  # before reading: a refusal costs nothing
    frame = read_logs(source)
    write_logs(frame, target, force=force)
    click.echo(json.dumps({"file": str(target), "rows": len(frame), "queries": int(frame["query_id"].nunique()), "prompts": int(frame["prompt_id"].nunique())}))

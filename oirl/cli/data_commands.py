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


# --------------------------------------------------------------------------- eval tools


def _import_out_option(default: str):
    return click.option("--out", "out_file", type=click.Path(path_type=Path), default=default, show_default=True,
                        help="Log file to write (.parquet, .jsonl or .csv); an existing one only if oirl wrote it (or --force).")


SCORE_RANGE_OPTION = click.option("--score-range", default=None, metavar="LO:HI", help="Scale numeric scores from this range to [0, 1] [default: as they are when in [0, 1], else from the range seen, with a warning].")


@import_.command("promptfoo")
@click.argument("results", type=click.Path(path_type=Path))
@_import_out_option("logs/promptfoo.parquet")
@click.option("--reward", type=click.Choice(["pass", "score"]), default="pass", show_default=True, help="Reward from pass/fail, or from promptfoo's score.")
@SCORE_RANGE_OPTION
@click.option("--query-vars", default=None, help="Comma-separated test vars that make the query [default: the vars the prompts use].")
@FORCE_OPTION
def import_promptfoo_command(results: Path, out_file: Path, reward: str, score_range: str | None, query_vars: str | None, force: bool) -> None:
    """promptfoo's results file (promptfoo eval --output results.json, .jsonl or .csv): one row per (test case, prompt or provider x prompt)."""
    from oirl.data.importers.eval_tools import check_output_file, parse_score_range, write_import
    from oirl.data.importers.promptfoo import read_promptfoo

    check_output_file(out_file, force=force)  # before parsing: a refusal costs nothing
    names = [v.strip() for v in query_vars.split(",") if v.strip()] if query_vars else None
    frame, summary = read_promptfoo(results, reward=reward, score_range=parse_score_range(score_range), query_vars=names)
    click.echo(json.dumps(write_import(frame, out_file, summary, force=force)))


@import_.command("lm-eval")
@click.argument("directory", type=click.Path(path_type=Path))
@_import_out_option("logs/lm_eval.parquet")
@click.option("--metric", default=None, help="Per-sample metric to take as the reward, in every task [default: each task's first].")
@click.option("--filter", "filter_name", default=None, help="Filter whose records to read, for tasks with several [default: each task's first].")
@click.option("--query-field", default=None, help="Document field that holds the query [default: question, query, input, ... whichever the document has].")
@FORCE_OPTION
def import_lm_eval_command(directory: Path, out_file: Path, metric: str | None, filter_name: str | None, query_field: str | None, force: bool) -> None:
    """lm-evaluation-harness runs (lm_eval ... --log_samples --output_path DIR): one row per (document, model x task)."""
    from oirl.data.importers.eval_tools import check_output_file, write_import
    from oirl.data.importers.lm_eval import read_lm_eval

    check_output_file(out_file, force=force)
    frame, summary = read_lm_eval(directory, metric=metric, filter_name=filter_name, query_field=query_field)
    click.echo(json.dumps(write_import(frame, out_file, summary, force=force)))


@import_.command("inspect")
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_import_out_option("logs/inspect.parquet")
@click.option("--scorer", default=None, help="Scorer whose values are the reward [default: each log's first].")
@SCORE_RANGE_OPTION
@FORCE_OPTION
def import_inspect_command(logs: tuple[Path, ...], out_file: Path, scorer: str | None, score_range: str | None, force: bool) -> None:
    """Inspect AI logs (.eval or .json files, or folders of them): one row per (sample, model x task x solver)."""
    from oirl.data.importers.eval_tools import check_output_file, parse_score_range, write_import
    from oirl.data.importers.inspect_logs import read_inspect

    check_output_file(out_file, force=force)
    frame, summary = read_inspect(list(logs), scorer=scorer, score_range=parse_score_range(score_range))
    click.echo(json.dumps(write_import(frame, out_file, summary, force=force)))

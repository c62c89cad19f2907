"""The ``oirl`` command line: a thin shell over :class:`oirl.recommender.Recommender`.

User mistakes (an :class:`~oirl.errors.OirlError`) print one line ``error: …`` on
stderr and exit with code 2; nothing is left half-written.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from oirl.embed import DEFAULT_EMBEDDER
from oirl.errors import OirlError
from oirl.features import FEATURE_LAYOUTS
from oirl.names import AUTO_MODEL, CV_GROUPS, REWARD_MODEL_NAMES
from oirl.select import POLICIES

CACHE_OPTION = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OIRL_EMBEDDINGS_DIR",
    default="embeddings",
    show_default=True,
    help="Embedding cache directory [env: OIRL_EMBEDDINGS_DIR].",
)


class OirlGroup(click.Group):
    """Every user mistake, ours or click's (a bad option value, an unknown choice), ends
    as one line ``error: …`` on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (OirlError, click.UsageError) as exc:
            message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
            click.echo(f"error: {' '.join(message.split())}", err=True)
            sys.exit(2)
        except OSError as exc:  # a path we cannot create, read or write: the user's to fix, not a bug
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(2)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=OirlGroup)
@click.version_option(package_name="oirl")
def cli() -> None:
    """oirl: recommend the best prompt per query from logged outcomes (offline, no LLM calls)."""
    warnings.showwarning = _one_line_warnings


# --------------------------------------------------------------------------- import


@cli.group("import")
def import_() -> None:
    """Import published logs, or convert a log file, into oirl's log schema."""


@import_.command("prompt-oirl")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder holding prompt-oirl-llama2/, gsm8k/ and svamp-mawps/ (e.g. ../shared/data). Without it, the files are downloaded from their public repositories.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="logs", show_default=True, help="Where the log files go.")
@click.option("--datasets", default="gsm8k,svamp,mawps", show_default=True, help="Comma-separated datasets to import.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet", show_default=True, help="Log file format.")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("logs/raw/prompt-oirl"), show_default=True, help="Where downloads go (only without --data-dir).")
def import_prompt_oirl_command(data_dir: Path | None, out_dir: Path, datasets: str, fmt: str, raw_dir: Path) -> None:
    """The LLaMA-2 logs of Prompt-OIRL: {ds}.<fmt> (6 training prompts) and {ds}_heldout.<fmt> (10 held-out prompts)."""
    from oirl.importers.prompt_oirl import DATASETS, import_prompt_oirl

    chosen = _names(datasets, DATASETS, DATASETS, "--datasets")
    if data_dir is None:
        from oirl.importers.download import download_release

        data_dir = download_release(raw_dir, datasets=chosen)
    for summary in import_prompt_oirl(data_dir, out_dir, datasets=chosen, fmt=fmt):
        click.echo(json.dumps(summary))


@import_.command("cruxeval")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder holding cruxeval/ (e.g. ../shared/data).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="logs", show_default=True, help="Where the log file goes.")
@click.option("--temperature", type=float, default=0.2, show_default=True, help="Sampling temperature of the arms to import (0.2 or 0.8).")
@click.option("--costs", "costs_file", type=click.Path(path_type=Path), help="JSON object arm id ('model:style') -> cost per call, replacing the default table.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet", show_default=True, help="Log file format.")
def import_cruxeval_command(data_dir: Path, out_dir: Path, temperature: float, costs_file: Path | None, fmt: str) -> None:
    """CRUXEval input prediction: one row per (sample, model:style arm), reward = n_correct / n_generations."""
    from oirl.importers.cruxeval import import_cruxeval

    costs = read_costs(costs_file) if costs_file else None
    click.echo(json.dumps(import_cruxeval(data_dir, out_dir, temperature=temperature, fmt=fmt, costs=costs)))


@import_.command("logs")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "target", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output log file (.csv, .jsonl or .parquet).")
def import_logs_command(source: Path, target: Path) -> None:
    """Validate a CSV/JSONL/Parquet log and write it in canonical form (any of the three formats)."""
    from oirl.logs import read_logs, write_logs

    frame = read_logs(source)
    write_logs(frame, target)
    click.echo(json.dumps({"file": str(target), "rows": len(frame), "queries": int(frame["query_id"].nunique()), "prompts": int(frame["prompt_id"].nunique())}))


def _import_out_option(default: str):
    return click.option("--out", "out_file", type=click.Path(path_type=Path), default=default, show_default=True,
                        help="Log file to write (.parquet, .jsonl or .csv); an existing file is replaced only if oirl wrote it.")


SCORE_RANGE_OPTION = click.option("--score-range", default=None, metavar="LO:HI", help="Scale numeric scores from this range to [0, 1] [default: as they are when in [0, 1], else from the range seen, with a warning].")


@import_.command("promptfoo")
@click.argument("results", type=click.Path(path_type=Path))
@_import_out_option("logs/promptfoo.parquet")
@click.option("--reward", type=click.Choice(["pass", "score"]), default="pass", show_default=True, help="Reward from pass/fail, or from promptfoo's score.")
@SCORE_RANGE_OPTION
@click.option("--query-vars", default=None, help="Comma-separated test vars that make the query [default: the vars the prompts use].")
def import_promptfoo_command(results: Path, out_file: Path, reward: str, score_range: str | None, query_vars: str | None) -> None:
    """promptfoo's results file (promptfoo eval --output results.json): one row per (test case, prompt or provider x prompt)."""
    from oirl.importers.eval_tools import check_output_file, parse_score_range, write_import
    from oirl.importers.promptfoo import read_promptfoo

    check_output_file(out_file)
    names = [v.strip() for v in query_vars.split(",") if v.strip()] if query_vars else None
    frame, summary = read_promptfoo(results, reward=reward, score_range=parse_score_range(score_range), query_vars=names)
    click.echo(json.dumps(write_import(frame, out_file, summary)))


@import_.command("lm-eval")
@click.argument("directory", type=click.Path(path_type=Path))
@_import_out_option("logs/lm_eval.parquet")
@click.option("--metric", default=None, help="Per-sample metric to take as the reward [default: each task's first].")
@click.option("--filter", "filter_name", default=None, help="Filter whose records to read, for tasks with several [default: each task's first].")
@click.option("--query-field", default=None, help="Document field that holds the query [default: question, query, input, ... whichever the document has].")
def import_lm_eval_command(directory: Path, out_file: Path, metric: str | None, filter_name: str | None, query_field: str | None) -> None:
    """lm-evaluation-harness runs (lm_eval ... --log_samples --output_path DIR): one row per (document, model x task)."""
    from oirl.importers.eval_tools import check_output_file, write_import
    from oirl.importers.lm_eval import read_lm_eval

    check_output_file(out_file)
    frame, summary = read_lm_eval(directory, metric=metric, filter_name=filter_name, query_field=query_field)
    click.echo(json.dumps(write_import(frame, out_file, summary)))


@import_.command("inspect")
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_import_out_option("logs/inspect.parquet")
@click.option("--scorer", default=None, help="Scorer whose values are the reward [default: each log's first].")
@SCORE_RANGE_OPTION
def import_inspect_command(logs: tuple[Path, ...], out_file: Path, scorer: str | None, score_range: str | None) -> None:
    """Inspect AI logs (.eval or .json files, or folders of them): one row per (sample, model x task x solver)."""
    from oirl.importers.eval_tools import check_output_file, parse_score_range, write_import
    from oirl.importers.inspect_logs import read_inspect

    check_output_file(out_file)
    frame, summary = read_inspect(list(logs), scorer=scorer, score_range=parse_score_range(score_range))
    click.echo(json.dumps(write_import(frame, out_file, summary)))


# --------------------------------------------------------------------------- train


@cli.command()
@click.argument("log_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model bundle directory to write (new, empty, or an existing bundle to replace).")
@click.option("--model", type=click.Choice([AUTO_MODEL, *REWARD_MODEL_NAMES]), default=AUTO_MODEL, show_default=True, help="Reward model: 'auto' chooses by cross-validated selection value; a name forces that backend.")
@click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True, help="'minilm' (offline all-MiniLM-L6-v2), 'minilm-static' (a static model distilled from it on first use, ~300x faster), 'hashing', 'static:FOLDER', or any sentence-transformers name or local path.")
@click.option("--layout", type=click.Choice(FEATURE_LAYOUTS), default=None, help="Pair features from the query and prompt vectors [default: the model's own: concat for trees and knn, concat-product for logistic and mlp].")
@click.option("--split-column", default="split", show_default=True, help="Column that marks the split (ignored when the log has no such column).")
@click.option("--train-split", default="train", show_default=True, help="Value of --split-column whose rows are trained on.")
@click.option("--cv-folds", type=click.IntRange(2, 20), default=3, show_default=True, help="Cross-validation folds for model, margin and policy choice.")
@click.option("--cv-groups", type=click.Choice(CV_GROUPS), default="text", show_default=True, help="What a held-out fold means: 'text' = unseen questions (new traffic), 'instance' = new samples of known questions (the paper's protocol).")
@click.option("--importance-weights/--no-importance-weights", default=False, show_default=True, help="Partial-feedback logs: weight each logged row by 1 / propensity when fitting the reward model.")
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|tcp://HOST:PORT", help="Train on a Dask cluster: 'local' (2 worker processes), 'local:N', or an existing scheduler. Models: auto (knn or lightgbm), lightgbm, knn.")
@CACHE_OPTION
def train(log_file: Path, out_dir: Path, model: str, embedder: str, layout: str | None, split_column: str, train_split: str,
          cv_folds: int, cv_groups: str, importance_weights: bool, dask_spec: str | None, cache_dir: Path) -> None:
    """Train a reward model on LOG_FILE (a file, or a directory or glob of Parquet files) and save it as a bundle in --out."""
    from oirl.bundle import check_output_directory
    from oirl.logs import read_logs, training_rows
    from oirl.recommender import Recommender

    check_output_directory(out_dir)  # refuse before hours of work, not after
    if dask_spec:
        from oirl.distributed import check_training_options, dask_client, parse_dask_spec, train_distributed

        parse_dask_spec(dask_spec)
        check_training_options(model, cv_groups)
        if importance_weights:
            raise OirlError("--importance-weights is not available with --dask")
        with dask_client(dask_spec) as client:
            rec = train_distributed(client, log_file, model=model, embedder=embedder, layout=layout, split_column=split_column,
                                    train_split=train_split, cv_folds=cv_folds, cv_groups=cv_groups, cache_dir=cache_dir, progress=True)
    else:
        rows = training_rows(read_logs(log_file), split_column, train_split, source=str(log_file))
        rec = Recommender.train(rows, model=model, embedder=embedder, layout=layout, cv_folds=cv_folds, cv_groups=cv_groups,
                                cache_dir=cache_dir, progress=True, source=str(log_file), importance_weights=importance_weights)
    rec.save(out_dir)
    metrics = rec.metadata["metrics"]
    click.echo(model_selection_table(metrics["model_selection"], cv_groups), err=True)
    click.echo(json.dumps({
        "bundle": str(out_dir), "training": rec.metadata["training"], "model": rec.model.name, "params": rec.model.get_params(),
        "layout": rec.layout, "default_policy": rec.default_policy,
        "conservative_margin": None if rec.margin == float("inf") else rec.margin,
        "cv_selection": metrics["cross_validation"]["selection"], "cv_roc_auc": metrics["cross_validation"]["reward_model"]["roc_auc"],
    }))


def model_selection_table(rows: list[dict], cv_groups: str, limit: int = 12) -> str:
    """The model-selection table as Markdown: the chosen option, the prior and the best others."""
    chosen = [r for r in rows if r["chosen"]]
    others = sorted((r for r in rows if not r["chosen"]), key=lambda r: -r["value"])
    prior = [r for r in others if r["option"] == "prior"]
    shown = chosen + prior + [r for r in others if r["option"] != "prior"][: max(0, limit - 2)]
    lines = [f"model selection ({len(rows)} options, cross-validated by {cv_groups}; one-standard-error rule toward simpler):",
             "| option | CV value | SE vs best | chosen |", "|---|---|---|---|"]
    for r in shown:
        lines.append(f"| {r['option']} | {r['value']:.4f} | {r['se_vs_best']:.4f} | {'yes' if r['chosen'] else ''} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- recommend


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--query", "query_text", help="One query text.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), help="JSONL file with a 'query' (and optional 'query_id') field per line, a Parquet file or a directory or glob of Parquet files with a 'query' column.")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), help="JSONL file with 'prompt' and optional 'prompt_id' per line (default: the bundle's prompts).")
@click.option("--top-k", type=click.IntRange(1), help="Keep only the K best of the ranking.")
@click.option("--policy", type=click.Choice(list(POLICIES)), default=None, help="Selection policy [default: the bundle's, chosen by cross-validation at training].")
@click.option("--cost-weight", type=click.FloatRange(0), default=0.0, show_default=True, help="Lambda of the cost-aware policy: reward minus lambda x cost.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Write the picks as Parquet partitions part-00000.parquet, ... (query, query_id if given, prompt_id, prompt, score) to this new directory instead of printing JSON lines.")
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|tcp://HOST:PORT", help="With --out: score and write the partitions on a Dask cluster ('local', 'local:N' or an existing scheduler).")
@CACHE_OPTION
def recommend(model_dir: Path, query_text: str | None, queries_file: Path | None, candidates_file: Path | None, top_k: int | None, policy: str | None, cost_weight: float,
              out_dir: Path | None, dask_spec: str | None, cache_dir: Path) -> None:
    """Print the recommended prompt for each query, one JSON line per query, in input order (or write Parquet partitions with --out)."""
    from oirl.recommender import Recommender

    if (query_text is None) == (queries_file is None):
        raise OirlError("give exactly one of --query TEXT or --queries FILE")
    if out_dir is not None or dask_spec:
        from oirl.distributed import dask_client, parse_dask_spec, recommend_to_parquet

        if dask_spec:
            parse_dask_spec(dask_spec)
        if out_dir is None or queries_file is None or top_k is not None:
            raise OirlError("--dask needs --out DIR" if out_dir is None else "--out needs --queries FILE and writes the pick only (no --top-k)")
        options = {"candidates": read_candidates(candidates_file) if candidates_file else None, "policy": policy,
                   "cost_weight": cost_weight, "cache_dir": cache_dir}
        with dask_client(dask_spec) as client:  # None without --dask
            summary = recommend_to_parquet(model_dir, queries_file, out_dir, client=client, **options)
        click.echo(json.dumps(summary))
        return
    if query_text is not None:
        queries = [query_text]
    elif queries_file.suffix.lower() == ".jsonl":
        queries = [r["query"] for r in read_jsonl_records(queries_file, required=("query",))]
    else:  # a Parquet file, directory or glob
        from oirl.distributed import query_sources, read_query_partition

        queries = [q for source in query_sources(queries_file) for q in read_query_partition(source)["query"]]
    candidates = read_candidates(candidates_file) if candidates_file else None
    rec = Recommender.load(model_dir, cache_dir=cache_dir)
    rec.check_policy(policy, rec.resolve_candidates(candidates), rec.candidate_costs(candidates))  # e.g. cost-aware without costs: fail before embedding
    for result in rec.recommend(queries, candidates, policy=policy, top_k=top_k, cost_weight=cost_weight):
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))


# --------------------------------------------------------------------------- evaluate


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("log_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Evaluate rows whose --split-column equals this.")
@click.option("--split-column", default="split", show_default=True, help="Column that marks the split; a log without it is evaluated whole, with a warning.")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), help="JSONL of candidate prompts to restrict the evaluation to.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report here.")
@click.option("--costs", "costs_file", type=click.Path(path_type=Path), help="JSON object prompt id -> cost (default: the logs' cost column, else the bundle's).")
@click.option("--cost-weights", default="0,0.001,0.003,0.01,0.03,0.1,0.3,1,3", show_default=True, help="Lambdas to sweep for the cost-aware policy (when every prompt has a cost).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the reward-cost curve here (PNG).")
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|tcp://HOST:PORT", help="Score the logs on a Dask cluster ('local', 'local:N' or an existing scheduler); full-information logs only, no off-policy estimates.")
@CACHE_OPTION
def evaluate(model_dir: Path, log_files: tuple[Path, ...], split: str, split_column: str, candidates_file: Path | None, out_file: Path | None,
             costs_file: Path | None, cost_weights: str, plot_file: Path | None, dask_spec: str | None, cache_dir: Path) -> None:
    """Selection success of each policy vs best single prompt, oracle and random; reward-model metrics;
    with costs, the cost-aware policy's reward-cost curve over --cost-weights."""
    import pandas as pd

    from oirl._atomic import write_text_atomic
    from oirl.logs import read_logs, split_rows
    from oirl.recommender import Recommender

    if dask_spec:
        from oirl.distributed import dask_client, evaluate_distributed, parse_dask_spec

        parse_dask_spec(dask_spec)
    rec = Recommender.load(model_dir, cache_dir=cache_dir)
    source = " + ".join(map(str, log_files))
    candidates = read_candidates(candidates_file) if candidates_file else None
    try:
        weights = [float(w) for w in cost_weights.split(",") if w.strip()]
    except ValueError:
        raise OirlError(f"--cost-weights: expected comma-separated numbers, got {cost_weights!r}") from None
    costs = read_costs(costs_file) if costs_file else None
    if dask_spec:
        with dask_client(dask_spec) as client:
            result = evaluate_distributed(client, model_dir, list(log_files), split=split, split_column=split_column, candidates=candidates,
                                          costs=costs, cost_weights=weights, cache_dir=cache_dir)
    else:
        frames = []
        for path in log_files:
            frame = read_logs(path)
            if split_column not in frame.columns:
                warnings.warn(f"{path}: no column {split_column!r}; evaluating every row (training rows included, if any)", stacklevel=1)
            frames.append(split_rows(frame, split_column, split, source=str(path)))
        logs = concat_logs(frames, log_files) if len(frames) > 1 else frames[0]
        result = rec.evaluate(logs, candidates, costs=costs, cost_weights=weights, source=source)
    report = {"model": str(model_dir), "logs": [str(p) for p in log_files], "split_column": split_column, "split": split, **result}
    if plot_file and "cost_sweep" not in result:  # still write the report: the evaluation itself succeeded
        if out_file:
            write_text_atomic(out_file, json.dumps(report, indent=2) + "\n")
        raise OirlError("--plot needs a cost for every evaluated prompt (a cost column or --costs); the report was written without the plot")
    if plot_file:
        from oirl.evaluate import plot_reward_cost

        sweep = result["cost_sweep"]
        plot_reward_cost({"oirl cost-aware": pd.DataFrame(sweep["curve"])}, pd.DataFrame(sweep["single_prompts"]), plot_file,
                         f"reward vs cost ({', '.join(p.name for p in log_files)})")
    text = json.dumps(report, indent=2)
    if out_file:
        write_text_atomic(out_file, text + "\n")
    click.echo(text)


# --------------------------------------------------------------------------- reproduce


@cli.command()
@click.option("--benchmark", type=click.Choice(["prompt-oirl", "cruxeval-input", "ope"]), default="prompt-oirl", show_default=True, help="Which tables to reproduce ('ope': partial feedback, by simulation).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("../shared/data"), show_default=True, help="Folder of the released data (see ../shared/data/README.md).")
@click.option("--datasets", default=None, help="Comma-separated datasets [default: gsm8k,svamp,mawps; for ope: svamp,mawps,cruxeval].")
@click.option("--protocol", type=click.Choice(["paper", "disjoint", "both"]), default="both", show_default=True, help="Splits: the paper's (--cv-groups instance), question-disjoint (every default), or both.")
@click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True, help="Embedder, as for 'oirl train'.")
@click.option("--authors-config/--no-authors-config", default=False, show_default=True, help="Also time the authors' XGBoost configuration on MAWPS (about 10 minutes).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(100), default=None, help="Bootstrap resamples per interval [default: 2000; for ope, 500 per simulated log].")
@click.option("--limit", type=click.IntRange(10), default=None, help="Keep the first N training and N test query instances (a toy-size run).")
@click.option("--repetitions", type=click.IntRange(1), default=100, show_default=True, help="ope: simulated logs per logging policy.")
@click.option("--learn-repetitions", type=click.IntRange(0), default=10, show_default=True, help="ope: bundles trained on simulated partial logs, per dataset.")
@click.option("--learn-datasets", default="mawps", show_default=True, help="ope: datasets whose partial logs train bundles (comma-separated).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Where tables, CSVs and plots go [default: experiments/results/<benchmark>].")
@CACHE_OPTION
def reproduce(benchmark: str, data_dir: Path, datasets: str | None, protocol: str, embedder: str, authors_config: bool, n_boot: int | None,
              limit: int | None, repetitions: int, learn_repetitions: int, learn_datasets: str, out_dir: Path, cache_dir: Path) -> None:
    """Regenerate the benchmark tables through 'oirl train' + 'oirl evaluate' (Markdown, CSV, PNG under --out)."""
    from oirl.importers.prompt_oirl import DATASETS
    from oirl.reproduce.prompt_oirl import PROTOCOLS
    from oirl.reproduce.prompt_oirl import reproduce as run
    from oirl.reproduce.report import markdown_table

    out_dir = out_dir or Path("experiments/results") / benchmark
    if benchmark == "ope":
        from oirl.reproduce.ope_simulation import DATASETS as OPE_DATASETS
        from oirl.reproduce.ope_simulation import reproduce_ope

        chosen = _names(datasets, OPE_DATASETS, OPE_DATASETS, "--datasets")
        learn = _names(learn_datasets, chosen, (), "--learn-datasets")
        result = reproduce_ope(data_dir, out_dir, datasets=chosen, repetitions=repetitions, learn_repetitions=learn_repetitions,
                               learn_datasets=learn,
                               n_boot=n_boot or 500, cache_dir=cache_dir, embedder=embedder, limit=limit)
        click.echo((out_dir / "ope_estimators.md").read_text())
        click.echo(f"tables, CSVs and plots in {out_dir}; total {result['timings']['total']:.0f} s")
        return
    if benchmark == "cruxeval-input":
        from oirl.reproduce.cruxeval import reproduce_cruxeval

        result = reproduce_cruxeval(data_dir, out_dir, cache_dir=cache_dir, embedder=embedder, n_boot=n_boot or 2000, limit=limit)
        click.echo(markdown_table(result["overall"]) + "\n\n" + markdown_table(result["styles"]))
        click.echo(f"tables, CSVs and plots in {out_dir}; total {result['timings']['total']:.0f} s")
        return
    chosen = _names(datasets, DATASETS, DATASETS, "--datasets")
    protocols = PROTOCOLS if protocol == "both" else (protocol,)
    result = run(data_dir, out_dir, datasets=chosen, protocols=protocols, cache_dir=cache_dir, embedder=embedder,
                 authors_config=authors_config, n_boot=n_boot or 2000, limit=limit)
    click.echo((out_dir / "summary_k6.md").read_text())
    click.echo(f"tables, CSVs and plots in {out_dir}; total {result['timings']['total']:.0f} s")


# --------------------------------------------------------------------------- serve


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes (each loads the bundle and the embedding model).")
@click.option("--explore", default=None, metavar="epsilon:E|softmax:T", help="Default exploration of /v1/recommend, e.g. epsilon:0.1 or softmax:0.05 (a request's 'explore' overrides it).")
@click.option("--decisions", "decisions", is_flag=False, flag_value="logs/decisions.sqlite", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Record every recommendation in this SQLite file before answering, and take outcomes at /v1/feedback [flag alone: logs/decisions.sqlite].")
def serve(model_dir: Path, host: str, port: int, workers: int, explore: str | None, decisions: Path | None) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn). Set OIRL_API_KEY to require a bearer key."""
    import os

    from oirl.recommender import Recommender
    from oirl.select import parse_exploration

    try:
        import uvicorn
    except ImportError:
        raise OirlError("the service needs the [serve] extra: pip install 'oirl[serve]'") from None
    if explore:
        parse_exploration(explore)  # a bad setting fails here, in one line
    Recommender.load(model_dir)  # fail here, with a clear message, before any worker starts
    if decisions is not None:
        from oirl.decisions import DecisionStore

        decisions.parent.mkdir(parents=True, exist_ok=True)
        DecisionStore(decisions).close()  # create or migrate it once, and refuse a file that is not one
    os.environ["OIRL_MODEL_DIR"] = str(model_dir.resolve())
    os.environ["OIRL_EXPLORE"] = explore or ""
    os.environ["OIRL_DECISIONS"] = str(decisions.resolve()) if decisions is not None else ""
    uvicorn.run("oirl.serve:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="info")


@cli.command("export-decisions")
@click.argument("decisions", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Partial log to write (.parquet, .jsonl or .csv).")
def export_decisions(decisions: Path, out_file: Path) -> None:
    """Write the served decisions that have feedback as a partial log (for 'oirl train' and 'oirl evaluate').

    One row per decision: decision_id, query_id (= the decision id, so repeated query
    texts stay separate), query, prompt_id, prompt, reward, propensity, model_version,
    created_at, feedback_at.
    """
    from oirl.decisions import DecisionStore

    if not decisions.is_file():
        raise OirlError(f"{decisions}: no such decision database (start 'oirl serve --decisions {decisions}')")
    with DecisionStore(decisions) as store:
        click.echo(json.dumps(store.export(out_file)))


# --------------------------------------------------------------------------- input files


def _names(text: str | None, allowed: tuple[str, ...], default: tuple[str, ...], option: str) -> tuple[str, ...]:
    """Comma-separated names, each one of ``allowed`` (``default`` when not given)."""
    if text is None:
        return default
    chosen = tuple(d.strip() for d in text.split(",") if d.strip())
    unknown = [d for d in chosen if d not in allowed]
    if unknown or not chosen:
        raise OirlError(f"{option}: unknown name(s) {', '.join(unknown) or '(none given)'} (choose from {', '.join(allowed)})")
    return chosen


def read_jsonl_records(path: Path, *, required: tuple[str, ...]) -> list[dict]:
    """JSON objects from a JSONL file, each with non-empty string ``required`` fields."""
    from oirl.logs import iter_jsonl_objects

    records = []
    for number, record in iter_jsonl_objects(path):
        for field in required:
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                raise OirlError(f"{path}, line {number}, field {field!r}: missing or empty text")
        records.append(record)
    if not records:
        raise OirlError(f"{path}: no records")
    return records


def read_costs(path: Path) -> dict[str, float]:
    """A JSON object mapping prompt (arm) id -> cost per call (a finite number >= 0)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OirlError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OirlError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OirlError(f"{path}: expected a JSON object mapping prompt id -> cost")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise OirlError(f"{path}, field {key!r}: cost {value!r} is not a finite number >= 0")
    return {str(k): float(v) for k, v in data.items()}


def read_candidates(path: Path):
    from oirl.recommender import Candidate

    records = read_jsonl_records(path, required=("prompt",))
    for number, record in enumerate(records, start=1):
        cost = record.get("cost")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < float("inf")):
            raise OirlError(f"{path}, record {number}, field 'cost': {cost!r} is not a finite number >= 0")
    return [Candidate(r["prompt"], str(r.get("prompt_id") or ""), r.get("cost")) for r in records]


def concat_logs(frames: list, files: tuple[Path, ...]):
    """Several evaluated logs as one: they must agree on the optional numeric columns
    (a cost or a propensity known for some rows only would be meaningless)."""
    import pandas as pd

    from oirl.logs import validate_logs

    for column in ("cost", "propensity"):
        having = [f for f, frame in zip(files, frames, strict=True) if column in frame.columns]
        if having and len(having) != len(files):
            lacking = next(f for f, frame in zip(files, frames, strict=True) if column not in frame.columns)
            raise OirlError(f"{having[0]} has a {column!r} column and {lacking} has none; give every log the same optional columns")
    merged = pd.concat(frames, ignore_index=True)
    text = [c for c in merged.columns if c not in ("reward", "cost", "propensity")]
    merged[text] = merged[text].fillna("")  # an extra column of one log only
    return validate_logs(merged, source=" + ".join(map(str, files)))


def main() -> None:
    cli(prog_name="oirl")


if __name__ == "__main__":
    sys.exit(main())

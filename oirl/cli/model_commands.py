"""``oirl train``, ``oirl recommend`` and ``oirl evaluate``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from oirl.cli.names import AUTO_MODEL, CV_GROUPS, REWARD_MODEL_NAMES
from oirl.cli.options import CACHE_OPTION, FORCE_OPTION, read_candidates, read_costs, read_jsonl_records
from oirl.embed.base import DEFAULT_EMBEDDER
from oirl.errors import OirlError
from oirl.policy.policies import POLICIES
from oirl.reward.features import FEATURE_LAYOUTS

# --------------------------------------------------------------------------- train


@click.command()
@click.argument("log_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model bundle directory to write (new, empty, or an existing bundle to replace).")
@click.option("--model", type=click.Choice([AUTO_MODEL, *REWARD_MODEL_NAMES]), default=AUTO_MODEL, show_default=True, help="Reward model: 'auto' chooses by cross-validated selection value; a name forces that backend.")
@click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True, help="'minilm' (offline all-MiniLM-L6-v2), 'minilm-static' (a static model distilled from it on first use, ~300x faster), 'hashing', 'static:FOLDER', or any sentence-transformers name or local path.")
@click.option("--layout", type=click.Choice(FEATURE_LAYOUTS), default=None, help="Pair features from the query and prompt vectors [default: the model's own: concat for trees and knn, concat-product for logistic and mlp].")
@click.option("--split-column", default="split", show_default=True, help="Column that marks the split (ignored when the log has no such column).")
@click.option("--train-split", default="train", show_default=True, help="Value of --split-column whose rows are trained on.")
@click.option("--cv-folds", type=click.IntRange(2, 20), default=3, show_default=True, help="Cross-validation folds for model, margin and policy choice.")
@click.option("--cv-groups", type=click.Choice(CV_GROUPS), default="text", show_default=True, help="What a held-out fold means: 'text' = unseen questions (new traffic), 'instance' = new samples of known questions (the paper's protocol).")
@click.option("--importance-weights/--no-importance-weights", default=False, show_default=True, help="Partial-feedback logs: weight each logged row by 1 / propensity when fitting the reward model.")
@click.option("--incumbent", "incumbent_dir", type=click.Path(file_okay=False, path_type=Path), help="The deployed bundle: its default policy is valued like the other options and stays unless one beats it by the selection rule (then --out is left as it was; it may be the incumbent's own directory).")
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|tcp://HOST:PORT", help="Train on a Dask cluster: 'local' (2 worker processes), 'local:N', or an existing scheduler. Models: auto (knn or lightgbm), lightgbm, knn.")
@CACHE_OPTION
def train(log_files: tuple[Path, ...], out_dir: Path, model: str, embedder: str, layout: str | None, split_column: str, train_split: str,
          cv_folds: int, cv_groups: str, importance_weights: bool, incumbent_dir: Path | None, dask_spec: str | None, cache_dir: Path) -> None:
    """Train a reward model on LOG... (files, or directories or globs of Parquet files; several logs are combined, e.g. a
    harness's full log and a deployment's exported decisions) and save it as a bundle in --out."""
    from oirl.embed.registry import get_embedder
    from oirl.learn.selection import IncumbentKept
    from oirl.learn.train import train_recommender
    from oirl.recommender.bundle import check_output_directory, load_bundle, save_bundle

    check_output_directory(out_dir)  # refuse before hours of work, not after
    get_embedder(embedder)  # an unknown name fails here, offline, naming the valid ones
    incumbent = load_bundle(incumbent_dir, cache_dir=cache_dir) if incumbent_dir else None
    try:
        if dask_spec:
            from oirl.distributed.cluster import dask_client, parse_dask_spec
            from oirl.distributed.engine import check_training_options, train_distributed

            parse_dask_spec(dask_spec)
            check_training_options(model, cv_groups)  # before a cluster starts
            if importance_weights or incumbent or len(log_files) > 1:
                raise OirlError("--dask trains on one log, without --importance-weights or --incumbent")
            with dask_client(dask_spec) as client:
                rec = train_distributed(client, log_files[0], model=model, embedder=embedder, layout=layout, split_column=split_column,
                                        train_split=train_split, cv_folds=cv_folds, cv_groups=cv_groups, cache_dir=cache_dir, progress=True)
        else:
            # The paths go through: the trainer reads and validates each log once, and combines them.
            rec = train_recommender(list(log_files), split_column=split_column, train_split=train_split, model=model, embedder=embedder,
                                    layout=layout, cv_folds=cv_folds, cv_groups=cv_groups, cache_dir=cache_dir, progress=True,
                                    importance_weights=importance_weights, incumbent=incumbent)
    except IncumbentKept as kept:  # the deployment stays as it is: nothing to write
        click.echo(model_selection_table(kept.rows, cv_groups), err=True)
        click.echo(json.dumps({"kept": "incumbent", "incumbent": str(incumbent_dir), "bundle": str(out_dir), "written": False,
                               "reason": str(kept)}))
        return
    save_bundle(rec, out_dir)
    metrics = rec.metadata["metrics"]
    click.echo(model_selection_table(metrics["model_selection"], cv_groups, metrics["cross_validation"]["selection"].get("chosen")), err=True)
    click.echo(json.dumps(training_summary(rec, out_dir)))


def model_selection_table(rows: list[dict], cv_groups: str, chosen_figures: dict | None = None, limit: int = 12) -> str:
    """The model-selection table as Markdown: the chosen option, the prior and the best others,
    and (``chosen_figures``, :func:`oirl.learn.train.cv_metrics`) why the chosen option's CV
    value is optimistic and what the rule is worth on folds it did not choose on."""
    chosen = [r for r in rows if r["chosen"]]
    others = sorted((r for r in rows if not r["chosen"]), key=lambda r: -r["value"])
    fixed = [r for r in others if r["option"] in ("prior", "incumbent")]
    shown = chosen + fixed + [r for r in others if r["option"] not in ("prior", "incumbent")][: max(0, limit - 1 - len(fixed))]
    partial = any(r.get("departure_support") is not None for r in rows)
    baseline = "the deployed bundle (incumbent)" if any(r["option"] == "incumbent" for r in rows) else "the prior"
    lines = [f"model selection ({len(rows)} options, cross-validated by {cv_groups}): an option clears {baseline} with a gain over "
             "3 standard errors; the simplest within one standard error of the best that cleared is chosen",
             "| option | CV value | gain over baseline | SE | " + ("support | " if partial else "") + "cleared | chosen |",
             "|---|---|---|---|" + ("---|" if partial else "") + "---|---|"]
    for r in shown:
        support = f"{r['departure_support']:.0f} | " if partial and r.get("departure_support") is not None else ("| " if partial else "")
        lines.append(f"| {r['option']} | {r['value']:.4f} | {r['gain_over_baseline']:+.4f} | {r['se_vs_baseline']:.4f} | {support}"
                     f"{'yes' if r.get('cleared_baseline') else ''} | {'yes' if r['chosen'] else ''} |")
    if chosen_figures and chosen_figures.get("held_out_fold_value") is not None:
        lines.append(f"the chosen option's CV value ({chosen_figures['cv_value']:.4f}) is optimistic: measured on the folds that chose it "
                     f"among {len(rows)} options; held out fold by fold (each fold valued by what the rule chose on the others: "
                     f"{', '.join(chosen_figures['held_out_fold_choices'])}) the selection is worth "
                     f"{chosen_figures['held_out_fold_value']:.4f} (SE {chosen_figures['held_out_fold_se']:.4f})")
    return "\n".join(lines)


def training_summary(rec, out_dir: Path) -> dict:
    """What ``oirl train`` prints: the option chosen (the prior included), the model the
    bundle carries and what it is used for, and the cross-validated figures."""
    metrics = rec.metadata["metrics"]
    chosen = next(r for r in metrics["model_selection"] if r["chosen"])
    prior_chosen = chosen["option"] == "prior"
    return {
        "bundle": str(out_dir),
        "chosen": {"option": chosen["option"], "policy": rec.default_policy,
                   "conservative_margin": None if rec.margin == float("inf") else rec.margin,
                   "means": f"always the best training prompt, {rec.default_prompt_id!r}" if prior_chosen else
                            f"the {rec.default_policy} policy over the {rec.model.name} reward model"},
        "reward_model": {"kind": rec.model.name, "params": rec.model.get_params(), "layout": rec.layout,
                         "role": "ranks the candidates (--policy argmax and rankings); the default policy keeps the best training prompt"
                                 if prior_chosen else "scores every candidate for the default policy"},
        "training": rec.metadata["training"],
        "cv_selection": metrics["cross_validation"]["selection"], "cv_roc_auc": metrics["cross_validation"]["reward_model"]["roc_auc"],
    }


# --------------------------------------------------------------------------- recommend


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--query", "query_text", help="One query text.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), help="JSONL file with a 'query' (and optional 'query_id') field per line, a Parquet file or a directory or glob of Parquet files with a 'query' column.")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), help="JSONL file with 'prompt' and optional 'prompt_id' per line (default: the bundle's prompts).")
@click.option("--top-k", type=click.IntRange(1), help="Keep only the K best of the ranking.")
@click.option("--policy", type=click.Choice(list(POLICIES)), default=None, help="Selection policy [default: the bundle's, chosen by cross-validation at training].")
@click.option("--cost-weight", type=click.FloatRange(0), default=None, help="Lambda of the cost-aware policy: reward minus lambda x cost [default: the bundle's, set by 'oirl calibrate', else 0].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Write the picks as Parquet partitions part-00000.parquet, ... (query, query_id if given, prompt_id, prompt, score) to this new directory instead of printing JSON lines.")
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|tcp://HOST:PORT", help="With --out: score and write the partitions on a Dask cluster ('local', 'local:N' or an existing scheduler).")
@CACHE_OPTION
def recommend(model_dir: Path, query_text: str | None, queries_file: Path | None, candidates_file: Path | None, top_k: int | None, policy: str | None, cost_weight: float | None,
              out_dir: Path | None, dask_spec: str | None, cache_dir: Path) -> None:
    """Print the recommended prompt for each query, one JSON line per query, in input order (or write Parquet partitions with --out)."""
    from oirl.recommender.bundle import load_bundle

    if (query_text is None) == (queries_file is None):
        raise OirlError("give exactly one of --query TEXT or --queries FILE")
    if out_dir is not None or dask_spec:
        from oirl.data.batch import recommend_to_parquet

        if out_dir is None or queries_file is None or top_k is not None:
            raise OirlError("--dask needs --out DIR" if out_dir is None else "--out needs --queries FILE and writes the pick only (no --top-k)")
        options = {"candidates": read_candidates(candidates_file) if candidates_file else None, "policy": policy, "cost_weight": cost_weight}
        if not dask_spec:
            summary = recommend_to_parquet(load_bundle(model_dir, cache_dir=cache_dir), queries_file, out_dir, **options)
        else:  # only now: the plain command never loads Dask
            from oirl.distributed.batch import part_writer
            from oirl.distributed.cluster import dask_client, parse_dask_spec

            parse_dask_spec(dask_spec)
            rec = load_bundle(model_dir, cache_dir=cache_dir)
            with dask_client(dask_spec) as client:
                summary = recommend_to_parquet(rec, queries_file, out_dir, write_parts=part_writer(client, model_dir, cache_dir), **options)
        click.echo(json.dumps(summary))
        return
    if query_text is not None:
        queries = [query_text]
    elif queries_file.suffix.lower() == ".jsonl":
        queries = [r["query"] for r in read_jsonl_records(queries_file, required=("query",))]
    else:  # a Parquet file, directory or glob
        from oirl.data.batch import query_sources, read_query_partition

        queries = [q for source in query_sources(queries_file) for q in read_query_partition(source)["query"]]
    candidates = read_candidates(candidates_file) if candidates_file else None
    rec = load_bundle(model_dir, cache_dir=cache_dir)
    rec.policy(policy, rec.resolve_candidates(candidates), costs=rec.candidate_costs(candidates))  # e.g. cost-aware without costs: fail before embedding
    for result in rec.recommend(queries, candidates, policy=policy, top_k=top_k, cost_weight=cost_weight):
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))


# --------------------------------------------------------------------------- evaluate


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("log_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Evaluate rows whose --split-column equals this.")
@click.option("--split-column", default="split", show_default=True, help="Column that marks the split; a log without it is evaluated whole, with a warning.")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), help="JSONL of candidate prompts to restrict the evaluation to.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report here.")
@click.option("--costs", "costs_file", type=click.Path(path_type=Path), help="JSON object prompt id -> cost (default: the logs' cost column, else the bundle's).")
@click.option("--cost-weights", default="0,0.001,0.003,0.01,0.03,0.1,0.3,1,3", show_default=True, help="Lambdas to sweep for the cost-aware policy (when every prompt has a cost).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the reward-cost curve here (PNG); without a cost for every prompt the report is written without it, with a warning.")
@click.option("--cost-unit", default=None, metavar="TEXT", help="The unit of the costs (e.g. 'milli-dollars per call'), for the plot's axis [default: unnamed].")
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|tcp://HOST:PORT", help="Score the logs on a Dask cluster ('local', 'local:N' or an existing scheduler); full-information logs only, no off-policy estimates.")
@click.option("--against", "against_dir", type=click.Path(file_okay=False, path_type=Path), help="A deployed bundle: also report the off-policy difference of MODEL_DIR's default policy minus its own, with a 95%% interval over questions.")
@FORCE_OPTION
@CACHE_OPTION
def evaluate(model_dir: Path, log_files: tuple[Path, ...], split: str, split_column: str, candidates_file: Path | None, out_file: Path | None,
             costs_file: Path | None, cost_weights: str, plot_file: Path | None, cost_unit: str | None, dask_spec: str | None, against_dir: Path | None, force: bool,
             cache_dir: Path) -> None:
    """Selection success of each policy vs best single prompt, oracle and random; reward-model metrics;
    with costs, the cost-aware policy's reward-cost curve over --cost-weights."""
    import pandas as pd

    from oirl._atomic import write_text_atomic
    from oirl._outputs import check_replaceable, is_oirl_json, is_oirl_png, json_mark
    from oirl.data.combine import combine_logs
    from oirl.data.logs import read_logs, split_rows
    from oirl.evaluation.report import evaluate_recommender
    from oirl.recommender.bundle import load_bundle

    if dask_spec:
        from oirl.distributed.cluster import dask_client, parse_dask_spec
        from oirl.distributed.evaluate import evaluate_distributed

        parse_dask_spec(dask_spec)
    if out_file:
        check_replaceable(out_file, lambda path: is_oirl_json(path, "evaluate report"), force=force)
    if plot_file:
        check_replaceable(plot_file, is_oirl_png, force=force, option="--plot")
    rec = load_bundle(model_dir, cache_dir=cache_dir)
    source = " + ".join(map(str, log_files))
    candidates = read_candidates(candidates_file) if candidates_file else None
    try:
        weights = [float(w) for w in cost_weights.split(",") if w.strip()]
    except ValueError:
        raise OirlError(f"--cost-weights: expected comma-separated numbers, got {cost_weights!r}") from None
    costs = read_costs(costs_file) if costs_file else None
    unsplit = []
    if dask_spec and against_dir:
        raise OirlError("--against needs the off-policy estimates, which --dask does not compute")
    if dask_spec:
        with dask_client(dask_spec) as client:
            result = evaluate_distributed(client, model_dir, list(log_files), split=split, split_column=split_column, candidates=candidates,
                                          costs=costs, cost_weights=weights, cache_dir=cache_dir)
    else:
        frames, unsplit = [], []
        for path in log_files:
            frame = read_logs(path)
            if split_column not in frame.columns:
                unsplit.append(str(path))
                warnings.warn(f"{path}: no column {split_column!r}; evaluating every row (training rows included, if any)", stacklevel=1)
            frames.append(split_rows(frame, split_column, split, source=str(path)))
        logs = combine_logs(frames, [str(p) for p in log_files])
        result = evaluate_recommender(rec, logs, candidates, costs=costs, cost_weights=weights, source=source)
        if against_dir:
            from oirl.evaluation.compare import compare_bundles

            result["against"] = {"bundle": str(against_dir), **compare_bundles(rec, load_bundle(against_dir, cache_dir=cache_dir), logs)}
    # The rows actually evaluated: a log without the split column is evaluated whole.
    selected = f"{split_column} == {split!r}" if not unsplit else ("every row (no split column)" if len(unsplit) == len(log_files)
                                                                  else f"{split_column} == {split!r}; every row of {', '.join(unsplit)}")
    report = {**json_mark("evaluate report"), "model": str(model_dir), "logs": [str(p) for p in log_files],
              "split_column": split_column if not unsplit else None, "split": split if not unsplit else None, "rows": selected, **result}
    if plot_file and "cost_sweep" not in result:  # the evaluation succeeded: write what it can, say what it cannot
        reason = ("--plot needs a cost for every evaluated prompt (a cost column, --costs or the bundle's), a full-information "
                  "log and at least one --cost-weights value")
        warnings.warn(f"{source}: the plot {plot_file} was not drawn: {reason}", stacklevel=1)
        report["plot"] = {"file": str(plot_file), "written": False, "reason": reason}
    elif plot_file:
        from oirl.evaluation.costs import plot_reward_cost

        sweep = result["cost_sweep"]
        curves = {"oirl cost-aware (--cost-weights)": pd.DataFrame(sweep["curve"])}
        routed = ((result.get("routing") or {}).get("all_arms") or {})
        if routed.get("curve"):  # the exact curve over every cost weight, as the router metrics see it
            curves[f"oirl cost-aware, every weight (APGR {routed['apgr']:.3f})"] = pd.DataFrame(routed["curve"])
        axis = plot_reward_cost(curves, pd.DataFrame(sweep["single_prompts"]), plot_file,
                                f"reward vs cost ({', '.join(p.name for p in log_files)})", unit=cost_unit)
        report["plot"] = {"file": str(plot_file), "written": True, **axis}
    text = json.dumps(report, indent=2)
    if out_file:
        write_text_atomic(out_file, text + "\n")
    click.echo(text)

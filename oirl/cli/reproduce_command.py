"""``oirl reproduce``: the benchmark tables.
"""

from __future__ import annotations

from pathlib import Path

import click

from oirl.cli.options import CACHE_OPTION, _names
from oirl.embed.base import DEFAULT_EMBEDDER

# --------------------------------------------------------------------------- reproduce


@click.command()
@click.option("--benchmark", type=click.Choice(["prompt-oirl", "cruxeval-input", "ope", "loop", "generalize"]), default="prompt-oirl", show_default=True, help="Which tables to reproduce ('ope': partial feedback, by simulation; 'loop': serve, learn from the feedback, redeploy, beside Vowpal Wabbit; 'generalize': each reward-model family on questions never trained on).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("../shared/data"), show_default=True, help="Folder of the released data (see ../shared/data/README.md).")
@click.option("--datasets", default=None, help="Comma-separated datasets [default: gsm8k,svamp,mawps; for ope: svamp,mawps,cruxeval; for loop: mawps,gsm8k,svamp; for generalize: mawps,svamp,gsm8k,cruxeval].")
@click.option("--seeds", default="0,1,2", show_default=True, help="generalize: hash seeds of the question-disjoint SVAMP and MAWPS splits (0 is the README's).")
@click.option("--protocol", type=click.Choice(["paper", "disjoint", "both"]), default="both", show_default=True, help="Splits: the paper's (--cv-groups instance), question-disjoint (every default), or both.")
@click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True, help="Embedder, as for 'oirl train'.")
@click.option("--authors-config/--no-authors-config", default=False, show_default=True, help="Also time the authors' XGBoost configuration on MAWPS (about 10 minutes).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(100), default=None, help="Bootstrap resamples per interval [default: 2000; for ope, 500 per simulated log].")
@click.option("--limit", type=click.IntRange(10), default=None, help="Keep the first N training and N test query instances (a toy-size run).")
@click.option("--repetitions", type=click.IntRange(1), default=100, show_default=True, help="ope: simulated logs per logging policy.")
@click.option("--learn-repetitions", type=click.IntRange(0), default=10, show_default=True, help="ope: bundles trained on simulated partial logs, per dataset.")
@click.option("--learn-datasets", default="mawps", show_default=True, help="ope: datasets whose partial logs train bundles (comma-separated).")
@click.option("--rounds", type=click.IntRange(1), default=6, show_default=True, help="loop: rounds (each serves every training question once).")
@click.option("--explore", default="squarecb:100", show_default=True, help="loop: the service's exploration, as for 'oirl serve --explore'.")
@click.option("--loop-cv-groups", type=click.Choice(["text", "instance"]), default=None, help="loop: 'oirl train --cv-groups' each round [default: instance on MAWPS and SVAMP, whose test questions recur among the served ones; text on GSM8K].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Where tables, CSVs and plots go [default: experiments/results/<benchmark>].")
@CACHE_OPTION
def reproduce(benchmark: str, data_dir: Path, datasets: str | None, protocol: str, embedder: str, authors_config: bool, n_boot: int | None,
              limit: int | None, repetitions: int, learn_repetitions: int, learn_datasets: str, rounds: int, explore: str, loop_cv_groups: str | None,
              out_dir: Path, cache_dir: Path, seeds: str) -> None:
    """Regenerate the benchmark tables through 'oirl train' + 'oirl evaluate' (Markdown, CSV, PNG under --out)."""
    from oirl.data.importers.prompt_oirl import DATASETS
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
    if benchmark == "loop":
        from oirl.reproduce.loop import reproduce_loop

        chosen = _names(datasets, DATASETS, ("mawps", "gsm8k", "svamp"), "--datasets")
        result = reproduce_loop(data_dir, out_dir, datasets=chosen, rounds=rounds, explore=explore, cv_groups=loop_cv_groups,
                                cache_dir=cache_dir, embedder=embedder, limit=limit)
        for name in result["datasets"]:
            click.echo((out_dir / f"loop_{name}.md").read_text())
        click.echo(f"tables, CSVs and plots in {out_dir}")
        return
    if benchmark == "generalize":
        from oirl.reproduce.generalize import DATASETS as GENERALIZE_DATASETS
        from oirl.reproduce.generalize import reproduce_generalize

        chosen = _names(datasets, GENERALIZE_DATASETS, GENERALIZE_DATASETS, "--datasets")
        try:
            seed_values = tuple(int(s) for s in seeds.split(","))
        except ValueError:
            raise click.BadParameter(f"{seeds!r}: comma-separated integers", param_hint="--seeds") from None
        result = reproduce_generalize(data_dir, out_dir, datasets=tuple(chosen), seeds=seed_values, cache_dir=cache_dir, embedder=embedder,
                                      limit=limit)
        click.echo((out_dir / "generalize.md").read_text())
        click.echo(f"tables, CSV and plot in {out_dir}; total {result['total_seconds']:.0f} s")
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

"""``oirl init``: a bundle for a new deployment, before any outcome is logged (cold start)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from oirl.cli.options import CACHE_OPTION, read_candidates
from oirl.embed.base import DEFAULT_EMBEDDER


@click.command("init")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL file: one arm per line, {\"prompt_id\", \"prompt\", \"cost\"?, \"model\"?, \"params\"?} "
                   "(params: temperature, top_p, max_tokens; the gateway sets model and params on the upstream call).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model bundle directory to write (new, empty, or an existing bundle to replace).")
@click.option("--default", "default", default=None, help="The prompt id to serve until there are outcomes [default: the first].")
@click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True, help="Embedder, as for 'oirl train'.")
@CACHE_OPTION
def init(prompts_file: Path, out_dir: Path, default: str | None, embedder: str, cache_dir: Path) -> None:
    """Write a bundle with no reward model yet: the default prompt for every query, which
    'oirl serve --explore' explores around (softmax over its equal scores is uniform)."""
    from oirl.embed.registry import get_embedder
    from oirl.recommender.bundle import check_output_directory, save_bundle
    from oirl.recommender.cold import cold_start

    check_output_directory(out_dir)
    get_embedder(embedder)  # an unknown name fails here, naming the valid ones
    prompts, arms = read_candidates(prompts_file, arms=True)
    rec = cold_start(prompts, default=default, embedder=embedder, cache_dir=cache_dir, arms=arms)
    save_bundle(rec, out_dir)
    click.echo(json.dumps({"bundle": str(out_dir), "prompts": [p.prompt_id for p in rec.prompts], "default_prompt_id": rec.default_prompt_id,
                           "reward_model": None, "costs": rec.costs or None, "arms": rec.arms or None}))

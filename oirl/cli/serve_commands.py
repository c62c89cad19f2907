"""``oirl serve`` and ``oirl export-decisions``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from oirl.errors import OirlError

# --------------------------------------------------------------------------- serve


@click.command()
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

    from oirl.policy.explore import parse_exploration
    from oirl.recommender.bundle import load_bundle

    try:
        import uvicorn
    except ImportError:
        raise OirlError("the service needs the [serve] extra: pip install 'oirl[serve]'") from None
    if explore:
        parse_exploration(explore)  # a bad setting fails here, in one line
    load_bundle(model_dir)  # fail here, with a clear message, before any worker starts
    if decisions is not None:
        from oirl.serve.decisions import DecisionStore

        decisions.parent.mkdir(parents=True, exist_ok=True)
        DecisionStore(decisions).close()  # create or migrate it once, and refuse a file that is not one
    os.environ["OIRL_MODEL_DIR"] = str(model_dir.resolve())
    os.environ["OIRL_EXPLORE"] = explore or ""
    os.environ["OIRL_DECISIONS"] = str(decisions.resolve()) if decisions is not None else ""
    uvicorn.run("oirl.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="info")


@click.command("export-decisions")
@click.argument("decisions", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Partial log to write (.parquet, .jsonl or .csv).")
def export_decisions(decisions: Path, out_file: Path) -> None:
    """Write the served decisions that have feedback as a partial log (for 'oirl train' and 'oirl evaluate').

    One row per decision: decision_id, query_id (= the decision id, so repeated query
    texts stay separate), query, prompt_id, prompt, reward, propensity, model_version,
    created_at, feedback_at.
    """
    from oirl.serve.decisions import DecisionStore

    if not decisions.is_file():
        raise OirlError(f"{decisions}: no such decision database (start 'oirl serve --decisions {decisions}')")
    with DecisionStore(decisions) as store:
        click.echo(json.dumps(store.export(out_file)))

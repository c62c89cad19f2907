"""``oirl serve`` and ``oirl export-decisions``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path

import click

from oirl.errors import OirlError

WORKER_START_SECONDS = 180  # a worker started by a reload must be serving within this
#: What a service that records decisions explores with unless told otherwise: the policy's
#: pick with probability .9 + .1 / K, every other prompt .1 / K. Bounded around the
#: default (a cold bundle's too), and what lets its own traffic teach it (users forget
#: --explore; a service that never explores learns nothing about the prompts it does not serve).
RECORDING_EXPLORE = "epsilon:0.1"

# --------------------------------------------------------------------------- serve


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes (each loads the bundle and the embedding model).")
@click.option("--explore", default=None, metavar="epsilon:E|softmax:T|squarecb:G|none", help=f"Default exploration of /v1/recommend, e.g. epsilon:0.1, softmax:0.05 or squarecb:50 (a request's 'explore' overrides it) [default: {RECORDING_EXPLORE} with --decisions, else none].")
@click.option("--decisions", "decisions", is_flag=False, flag_value="logs/decisions.sqlite", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Record every recommendation in this SQLite file before answering, and take outcomes at /v1/feedback [flag alone: logs/decisions.sqlite].")
@click.option("--online/--no-online", default=True, show_default=True, help="With --decisions: the feedback since the bundle was trained moves what is served before the next retrain (per-prompt offsets, kept in the decision file).")
@click.option("--upstream", default=None, metavar="URL",
              help="Also be an OpenAI-compatible gateway: POST /v1/chat/completions picks the prompt (and the arm's model) for "
                   "the last user message and forwards the call to this base URL (e.g. http://127.0.0.1:8080/v1).")
@click.option("--upstream-key-env", default=None, metavar="NAME",
              help="The environment variable holding the upstream's API key (never the key itself on the command line).")
@click.option("--upstream-concurrency", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Requests with the upstream at once, per worker; one more gets a 503 at once.")
@click.option("--upstream-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True, metavar="SECONDS",
              help="Longest wait for each read from the upstream (a stream's next event included); then a 504.")
def serve(model_dir: Path, host: str, port: int, workers: int, explore: str | None, decisions: Path | None, online: bool,
          upstream: str | None, upstream_key_env: str | None, upstream_concurrency: int, upstream_timeout: float) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn). Set OIRL_API_KEY to require a bearer key.

    SIGHUP (or POST /v1/admin/reload) swaps in the bundle now at MODEL_DIR: requests under
    way finish on the old one, a missing or corrupt one is refused and the old one keeps serving.
    With --upstream it is also a drop-in gateway for OpenAI clients (base_url=http://HOST:PORT/v1).
    """

    from oirl.policy.explore import parse_exploration
    from oirl.serve.scoring import ServedModel

    try:
        import uvicorn
    except ImportError:
        raise OirlError("the service needs the [serve] extra: pip install 'oirl[serve]'") from None
    if explore is None and decisions is not None:
        explore = RECORDING_EXPLORE
    explore = None if explore == "none" else explore
    if explore:
        parse_exploration(explore)  # a bad setting fails here, in one line
    if upstream_key_env is not None and upstream is None:
        raise OirlError("--upstream-key-env needs --upstream URL")
    if upstream is not None:
        from oirl.serve.gateway import UpstreamSettings

        UpstreamSettings(upstream, key_env=upstream_key_env, max_in_flight=upstream_concurrency, timeout_seconds=upstream_timeout)
    ServedModel.load(model_dir)  # fail here, with a clear message, before any worker starts
    if decisions is not None:
        from oirl.decisions.store import DecisionStore

        decisions.parent.mkdir(parents=True, exist_ok=True)
        DecisionStore(decisions).close()  # create or migrate it once, and refuse a file that is not one
    listener = _listen(host, port)
    os.environ["OIRL_MODEL_DIR"] = str(model_dir.resolve())
    os.environ["OIRL_EXPLORE"] = explore or ""
    os.environ["OIRL_DECISIONS"] = str(decisions.resolve()) if decisions is not None else ""
    os.environ["OIRL_WORKERS"] = str(workers)
    os.environ["OIRL_ONLINE"] = "1" if online else "0"
    # the gateway's settings; the key stays in the variable it is in (only its name is passed on)
    os.environ["OIRL_UPSTREAM"] = upstream or ""
    os.environ["OIRL_UPSTREAM_KEY_ENV"] = upstream_key_env or ""
    os.environ["OIRL_UPSTREAM_CONCURRENCY"] = str(upstream_concurrency)
    os.environ["OIRL_UPSTREAM_TIMEOUT"] = str(upstream_timeout)
    settings = {"factory": True, "host": host, "port": port, "workers": workers, "log_level": "info"}
    # On SIGHUP uvicorn's supervisor gives a new worker this long to start before it keeps the old
    # one and aborts the restart; its default (5 s) is less than loading torch and MiniLM takes.
    settings["timeout_worker_healthcheck"] = WORKER_START_SECONDS
    try:
        config = uvicorn.Config("oirl.serve.app:app_from_env", **settings)
    except TypeError:  # an older uvicorn without the setting
        del settings["timeout_worker_healthcheck"]
        config = uvicorn.Config("oirl.serve.app:app_from_env", **settings)
    if workers > 1:  # as uvicorn.run does, on the socket bound here
        from uvicorn.supervisors import Multiprocess

        _start_resource_tracker_deaf_to_hangup()
        click.echo(f"INFO:     oirl serving on http://{host}:{listener.getsockname()[1]} with {workers} workers", err=True)
        Multiprocess(config, sockets=[listener]).run()
    else:
        server = uvicorn.Server(config)
        server.run(sockets=[listener])
        if not server.started:
            sys.exit(3)  # the app failed to start; uvicorn has said why


def _start_resource_tracker_deaf_to_hangup() -> None:
    """Start multiprocessing's resource tracker (the supervisor's helper process) with SIGHUP
    blocked, which it keeps: a SIGHUP to the process group would otherwise kill it ("resource_tracker:
    process died unexpectedly ... resources might leak") on each reload."""
    import signal
    from multiprocessing import resource_tracker

    if not hasattr(signal, "SIGHUP"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _listen(host: str, port: int):
    """A socket bound to (host, port) as uvicorn binds one; a port in use is a one-line error."""

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise OirlError(f"cannot listen on {host}:{port}: port {port} is in use (stop what uses it or choose another --port)") from None
        raise OirlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.set_inheritable(True)  # the workers' processes take it over
    return listener


@click.command("export-decisions")
@click.argument("decisions", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Partial log to write (.parquet, .jsonl or .csv); must not exist unless --force.")
@click.option("--feedback-window", type=click.FloatRange(min=0, min_open=True), default=24 * 3600.0, show_default=True,
              metavar="SECONDS", help="A reward counts when it arrived within this many seconds of its decision.")
@click.option("--missing-reward", type=click.FloatRange(0, 1), default=None, metavar="R",
              help="Reward for decisions whose window passed without one (default: leave them out).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def export_decisions(decisions: Path, out_file: Path, feedback_window: float, missing_reward: float | None, force: bool) -> None:
    """Write the served decisions whose outcome is known as a partial log (for 'oirl train' and 'oirl evaluate').

    One row per decision: decision_id, query_id (= the decision id, so repeated query
    texts stay separate), query, prompt_id, prompt, reward, propensity, candidate_ids
    (JSON list of the prompt ids offered), model_version, created_at, feedback_at.
    Decisions younger than the window without feedback wait for a later export; older
    ones are left out, or get --missing-reward. Prints a JSON summary of the counts.
    """
    from oirl.data.logs import log_format
    from oirl.decisions.store import DecisionStore

    if not decisions.is_file():
        raise OirlError(f"{decisions}: no such decision database (start 'oirl serve --decisions {decisions}')")
    log_format(out_file)  # an unknown extension fails before the existence check
    if out_file.exists() and not force:
        raise OirlError(f"{out_file}: already exists; choose a new --out file or add --force to replace it")
    with DecisionStore(decisions) as store:
        click.echo(json.dumps(store.export(out_file, feedback_window=feedback_window, missing_reward=missing_reward)))

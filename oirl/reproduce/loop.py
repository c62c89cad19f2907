"""``oirl reproduce --benchmark loop``: does a deployment served by oirl get better round after round?

A full-information log is the environment (see :mod:`oirl.reproduce.loop_environment`).
The loop runs only through what a user has, the command line and the HTTP API:

1. ``oirl init --prompts PROMPTS.jsonl --out SERVED`` (cold start: no outcome yet);
2. ``oirl serve SERVED --decisions DB --explore METHOD:P`` on a loopback port;
3. each round: every training instance once, in a fresh random order, from ``clients``
   threads with :class:`oirl.client.Client` (recommend, then the environment's reward for
   the served prompt through feedback);
4. ``oirl export-decisions DB`` (every round so far), ``oirl evaluate SERVED`` on this
   round's decisions (the DR estimate of the policy that served them) and on the test
   rows (its true value), ``oirl train EXPORT --out SERVED --incumbent SERVED`` (a new
   bundle only if it beats the one that served), ``POST /v1/admin/reload``.

Beside it, on the same stream: Vowpal Wabbit (:data:`VW_CONFIGS`), the best fixed
prompt and oirl trained on the full-information log. Writes, per dataset, the rounds
as CSV and Markdown and the learning curves as PNG under the output folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl.data.logs import write_logs
from oirl.errors import OirlError
from oirl.policy.explore import parse_exploration
from oirl.reproduce.loop_environment import VW_CONFIGS, Environment, load_environment, vowpal_wabbit_stream
from oirl.reproduce.report import markdown_table

DEFAULT_EXPLORE = "squarecb:100"
#: ``oirl train --cv-groups`` per dataset, by what "new" means for its test questions: on
#: MAWPS and SVAMP (paper split) every test question occurs among the served ones (as other
#: samples), so held-out folds of new samples of known questions mirror it; GSM8K's test
#: questions are new. The same choice as the paper protocol and the OPE simulation.
LOOP_CV_GROUPS = {"mawps": "instance", "svamp": "instance", "gsm8k": "text"}


def oirl_command(*args: object, cache_dir: Path | None = None) -> dict[str, Any]:
    """Run ``oirl ARGS`` as a user would; its JSON answer (the last line of stdout)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "oirl.cli", *map(str, args), *(("--cache-dir", str(cache_dir)) if cache_dir else ())],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise OirlError(f"oirl {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1] if args[0] != "evaluate" else done.stdout)


class Server:
    """``oirl serve`` in a subprocess on a free loopback port, up until :meth:`stop`."""

    def __init__(self, model_dir: Path, decisions: Path, explore: str, cache_dir: Path, log_file: Path):
        import socket

        import httpx

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("OIRL_API_KEY", None)
        env["OIRL_EMBEDDINGS_DIR"] = str(cache_dir)
        self._log = open(log_file, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "oirl.cli", "serve", str(model_dir), "--port", str(port), "--decisions",
                                         str(decisions), "--explore", explore],
                                        env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise OirlError(f"oirl serve did not start (see {log_file})")

    def reload(self) -> str:
        import httpx

        response = httpx.post(f"{self.base}/v1/admin/reload", timeout=300)
        response.raise_for_status()
        return response.json()["model_version"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def serve_round(base: str, env: Environment, order: np.ndarray, clients: int) -> pd.DataFrame:
    """Every instance of ``order`` once through the service, ``clients`` at a time: recommend,
    then the environment's reward for the served prompt. One row per decision."""
    from oirl.client import Client

    todo = iter(range(len(order)))
    lock = threading.Lock()
    rows: list[dict[str, Any] | None] = [None] * len(order)

    def client_thread() -> None:
        with Client(base, timeout=120, deadline=600) as client:
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                i = int(order[k])
                rec = client.recommend(env.train_questions[i])
                reward = env.reward_of(i, rec.prompt_id)
                client.feedback(rec, reward)
                rows[k] = {"instance": i, "decision_id": rec.decision_id, "prompt_id": rec.prompt_id, "propensity": rec.propensity,
                           "reward": reward, "model_version": rec.model_version}

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_thread) for _ in range(clients)]:
            future.result()
    return pd.DataFrame(rows)


def run_loop(env: Environment, work: Path, *, rounds: int, explore: str, clients: int, cv_groups: str, cache_dir: Path,
             embedder: str, seed: int = 0, progress: bool = True) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The loop of the module docstring; one row per round, and each round's order."""
    from oirl.recommender.bundle import load_bundle

    work.mkdir(parents=True, exist_ok=True)
    served, decisions = work / "served", work / "decisions.sqlite"
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": p, "prompt": t}) + "\n" for p, t in zip(env.prompt_ids, env.prompts, strict=True)))
    test_log = write_logs(env.test_log, work / "test.parquet", force=True)
    served_questions = write_logs(env.train_log, work / "served-questions.parquet", force=True)  # full information: the DR estimand
    oirl_command("init", "--prompts", prompts, "--out", served, "--embedder", embedder, cache_dir=cache_dir)
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(env.train_questions)) for _ in range(rounds)]
    server = Server(served, decisions, explore, cache_dir, work / "server.log")
    records = []
    try:
        for r, order in enumerate(orders, start=1):
            started = time.perf_counter()
            version = load_bundle(served, cache_dir=cache_dir).fingerprint
            stream = serve_round(server.base, env, order, clients)
            serve_seconds = time.perf_counter() - started
            export = work / f"decisions-{r}.parquet"
            counts = oirl_command("export-decisions", decisions, "--out", export)
            this_round = pd.read_parquet(export)
            this_round = this_round[this_round["decision_id"].isin(stream["decision_id"])]
            round_log = write_logs(this_round, work / f"round-{r}.parquet", force=True)
            estimate = oirl_command("evaluate", served, round_log, cache_dir=cache_dir)
            truth = oirl_command("evaluate", served, test_log, cache_dir=cache_dir)
            policy = truth["default_policy"]
            on_served = oirl_command("evaluate", served, served_questions, "--split", "train", cache_dir=cache_dir)["policies"][policy]
            dr = estimate["ope"]["estimates"][policy]["dr"]
            train_started = time.perf_counter()
            trained = oirl_command("train", export, "--out", served, "--incumbent", served, "--cv-groups", cv_groups, cache_dir=cache_dir)
            train_seconds = time.perf_counter() - train_started
            new_version = server.reload()
            kept = trained.get("kept") == "incumbent"
            records.append({
                "round": r, "decisions": int(counts["rows"]),
                "served_version": version, "versions_matching": float((stream["model_version"] == version).mean()),
                "stream_reward": float(stream["reward"].mean()), "deployed_policy": policy,
                "test_value": float(truth["policies"][policy]), "dr_estimate": dr["value"], "dr_low": dr["ci"][0], "dr_high": dr["ci"][1],
                "dr_covers_test_value": bool(dr["ci"][0] <= truth["policies"][policy] <= dr["ci"][1]),
                "value_on_served_questions": float(on_served), "dr_covers_served_value": bool(dr["ci"][0] <= on_served <= dr["ci"][1]),
                "trained": "incumbent kept" if kept else trained["chosen"]["option"], "reloaded_version": new_version,
                "serve_seconds": round(serve_seconds, 1), "train_seconds": round(train_seconds, 1),
                "round_seconds": round(time.perf_counter() - started, 1),
            })
            if progress:
                print(json.dumps({"dataset": env.name, **records[-1]}), file=sys.stderr, flush=True)
    finally:
        server.stop()
    return pd.DataFrame(records), orders


def references(env: Environment, orders: list[np.ndarray], work: Path, *, cache_dir: Path, embedder: str,
               full_information: bool) -> dict[str, Any]:
    """Vowpal Wabbit on the same stream, the best fixed prompt, oirl on the full log."""
    from oirl.embed.cached import CachedEmbedder
    from oirl.embed.registry import get_embedder

    vectors = CachedEmbedder(get_embedder(embedder), cache_dir)
    train_vectors, test_vectors = vectors.embed(env.train_questions), vectors.embed(env.test_questions)
    out: dict[str, Any] = {"vw": {}}
    for name, arguments in VW_CONFIGS.items():
        started = time.perf_counter()
        out["vw"][name] = vowpal_wabbit_stream(env, orders, train_vectors, test_vectors, arguments)
        out["vw"][name + " seconds"] = round(time.perf_counter() - started, 1)
    best = env.best_prompt()
    out["best_prompt"] = {"prompt_id": env.prompt_ids[best], "test_value": float(env.test_rewards[:, best].mean())}
    out["oracle"] = float(env.test_rewards.max(axis=1).mean())
    if full_information:
        full = write_logs(env.train_log, work / "full.parquet", force=True)
        oirl_command("train", full, "--out", work / "full-information", "--embedder", embedder, cache_dir=cache_dir)
        report = oirl_command("evaluate", work / "full-information", write_logs(env.test_log, work / "test.parquet", force=True),
                              cache_dir=cache_dir)
        out["full_information"] = float(report["policies"][report["default_policy"]])
    return out


def plot_curves(name: str, table: pd.DataFrame, refs: dict[str, Any], path: Path) -> None:
    """Test value and stream reward by round: oirl, each VW configuration, the bars."""
    import matplotlib.pyplot as plt

    from oirl._plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    x = table["round"]
    titles = {"test_value": f"{name}: deployed policy's value on the test questions", "stream_reward": f"{name}: mean reward of the stream"}
    for ax, column in zip(axes, titles, strict=True):
        ax.plot(x, table[column], marker="o", label="oirl (served, retrained each round)")
        for config, rounds in refs["vw"].items():
            if not config.endswith("seconds"):
                ax.plot(x, [r[column] for r in rounds], marker=".", linestyle="--", label=config)
        ax.axhline(refs["best_prompt"]["test_value"], color="grey", linestyle=":", label="best fixed prompt (test)")
        if "full_information" in refs:
            ax.axhline(refs["full_information"], color="green", linestyle=":", label="oirl on the full log (test)")
        ax.set_xlabel("round (each training question served once)")
    axes[0].set_title(titles["test_value"], fontsize=10)
    axes[0].grid(alpha=0.3)
    save_figure(fig, axes[1], path, titles["stream_reward"], legend_fontsize=7)


def reproduce_loop(data_dir: Path, out_dir: Path, *, datasets: list[str], rounds: int = 6, explore: str = DEFAULT_EXPLORE, clients: int = 8,
                   cv_groups: str | None = None, cache_dir: Path, embedder: str, limit: int | None = None,
                   full_information: bool = True) -> dict[str, Any]:
    """The loop on each dataset; tables, plots and a JSON summary under ``out_dir``."""
    import tempfile

    from oirl._atomic import write_text_atomic

    parse_exploration(explore)  # a bad --explore fails here, in one line, not after a server start
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"explore": explore, "clients": clients, "rounds": rounds, "datasets": {}}
    for name in datasets:
        env = load_environment(data_dir, name, limit)
        groups = cv_groups or LOOP_CV_GROUPS[name]
        with tempfile.TemporaryDirectory(prefix=f"oirl-loop-{name}-") as tmp:
            table, orders = run_loop(env, Path(tmp), rounds=rounds, explore=explore, clients=clients, cv_groups=groups, cache_dir=cache_dir,
                                    embedder=embedder)
            refs = references(env, orders, Path(tmp), cache_dir=cache_dir, embedder=embedder, full_information=full_information)
        for config, per_round in refs["vw"].items():
            if not config.endswith("seconds"):
                table[f"{config} stream"] = [r["stream_reward"] for r in per_round]
                table[f"{config} test"] = [r["test_value"] for r in per_round]
        table.to_csv(out_dir / f"loop_{name}.csv", index=False)
        shown = table.drop(columns=["served_version", "reloaded_version"])
        write_text_atomic(out_dir / f"loop_{name}.md", markdown_table(shown) + "\n")
        plot_curves(name, table, refs, out_dir / f"loop_{name}.png")
        summary["datasets"][name] = {"cv_groups": groups, "train_instances": len(env.train_questions), "test_instances": len(env.test_questions),
                                     "references": refs, "rounds": table.to_dict("records")}
    write_text_atomic(out_dir / "loop.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary

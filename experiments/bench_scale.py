"""Scale benchmark: a synthetic partitioned log of a million rows, trained end to end on Dask.

    python experiments/bench_scale.py --data-dir ../shared/data            # 1,000,000 rows, about 20 minutes
    python experiments/bench_scale.py --rows 40000 --slice-rows 16000 --compare-rows 16000   # a short version

The log is built from the real question texts in ``--data-dir`` (GSM8K train and test,
SVAMP and MAWPS; about 14,000 distinct questions): ``rows / 8`` query instances x 8
prompts, each instance a question drawn at random with a short per-instance suffix
(``(ref 0001234)``), so nearly every instance text is distinct. Rewards are Bernoulli
draws with a planted per-query pattern: the base questions are clustered (k-means, 6
clusters, on their embedding by the benchmark's embedder), each cluster has its own best
prompt (+0.25), on top of per-prompt base rates and a per-question difficulty. Every
instance of one tenth of the base questions (by hash) is a test instance: the held-out
questions are never trained on, in any variant.

Stages, all through the code the CLI runs (:func:`oirl.learn.train.fit_bundle` on :class:`oirl.distributed.engine.DaskEngine`) on ``local:N``:
build (write the Parquet partitions), read (validate, encode), embed (shuffle by text,
embed with ``minilm-static``, pivot), CV/select, fit, save, evaluate (``oirl evaluate
--dask`` on the test split) and recommend (``oirl recommend --out --dask`` on the test
queries). A sampler records every process's resident memory (the driver, the nanny and
the workers) twice a second, and the driver's own peak is ``ru_maxrss``.

Then: 1- vs 2-worker throughput on a slice (embedding rows/s from a cold vector cache,
training rows/s for CV + final fit), and on a ``--compare-rows`` slice the Dask-trained
bundle against the in-memory one (``Recommender.train``, ``--model auto``), both
evaluated on the same held-out instances. "Planted" values use the known success
probabilities (noise-free); "realized" ones the logged Bernoulli rewards. The gap
recovered is (policy - best single prompt) / (oracle - best single prompt), the best
single prompt chosen on training data.

Writes ``experiments/results/bench_scale.json`` atomically and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from oirl.distributed.batch import part_writer
from oirl.learn.train import train_recommender
from oirl.recommender.bundle import load_bundle, save_bundle

N_PROMPTS = 8
N_CLUSTERS = 6
BOOST = 0.25
BASE_RATES = np.array([0.30, 0.40, 0.36, 0.34, 0.33, 0.35, 0.32, 0.31])
GiB = 2**30


# --------------------------------------------------------------------------- the synthetic log


def base_questions(data_dir: Path) -> list[str]:
    """Distinct question texts of GSM8K (train and first 1,000 test), SVAMP and MAWPS."""
    from oirl.data.importers.prompt_oirl import DATASETS, load_questions

    return list(dict.fromkeys(q for ds in DATASETS for q in load_questions(data_dir, ds)))


def planted_probabilities(vectors: np.ndarray, boost: float = BOOST, seed: int = 0) -> np.ndarray:
    """(n_questions, 8) success probability of each prompt on each base question: base
    rates, a per-question difficulty, and ``boost`` for the prompt planted as best in the
    question's cluster (k-means on its embedding; cluster c plants prompt c + 2)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    clusters = KMeans(n_clusters=N_CLUSTERS, n_init=3, random_state=seed).fit_predict(vectors)
    p = BASE_RATES[None, :] + rng.uniform(-0.12, 0.12, size=(len(vectors), 1))
    p[np.arange(len(vectors)), clusters + 2] += boost
    return np.clip(p, 0.02, 0.98)


def is_test_question(question: str) -> bool:
    return hashlib.sha256(question.encode("utf-8")).digest()[0] % 10 == 0


def build_log(data_dir: Path, out: Path, rows: int, partitions: int, *, embedder: str, cache_dir: Path, boost: float = BOOST,
              seed: int = 0) -> dict:
    """Write the log as ``out/log/part-NNNNN.parquet`` and the test queries as
    ``out/test_queries/part-NNNNN.parquet``; returns what the scoring needs (the planted
    probabilities of the test instances, by query id). The base questions are embedded
    with ``embedder`` (into ``cache_dir``) to plant the pattern."""
    from oirl.data.importers.prompt_oirl import PROMPTS
    from oirl.embed.cached import CachedEmbedder
    from oirl.embed.registry import get_embedder

    questions = base_questions(data_dir)
    p = planted_probabilities(CachedEmbedder(get_embedder(embedder), cache_dir).embed(questions), boost, seed)
    test_question = np.array([is_test_question(q) for q in questions])
    prompts = list(PROMPTS.items())[:N_PROMPTS]
    n_instances = rows // N_PROMPTS
    rng = np.random.default_rng(seed + 1)
    base = rng.integers(0, len(questions), size=n_instances)
    draws = rng.random((n_instances, N_PROMPTS)) < p[base]
    (out / "log").mkdir(parents=True)
    (out / "test_queries").mkdir()
    test_ids, test_p, test_rewards = [], [], []
    bounds = np.linspace(0, n_instances, partitions + 1).astype(int)
    for k in range(partitions):
        idx = np.arange(bounds[k], bounds[k + 1])
        ids = [f"s-{i:07d}" for i in idx]
        texts = [f"{questions[b]} (ref {i:07d})" for i, b in zip(idx, base[idx], strict=True)]
        split = np.where(test_question[base[idx]], "test", "train")
        frame = pd.DataFrame({  # lists, not numpy string arrays (4 bytes x the longest text per cell)
            "query_id": [i for i in ids for _ in range(N_PROMPTS)], "query": [t for t in texts for _ in range(N_PROMPTS)],
            "prompt_id": [pid for pid, _ in prompts] * len(idx), "prompt": [text for _, text in prompts] * len(idx),
            "reward": draws[idx].astype(np.float64).ravel(), "split": np.repeat(split, N_PROMPTS),
        })
        frame.to_parquet(out / "log" / f"part-{k:05d}.parquet", index=False)
        test = split == "test"
        pd.DataFrame({"query_id": [i for i, t in zip(ids, test, strict=True) if t], "query": [q for q, t in zip(texts, test, strict=True) if t]}
                     ).to_parquet(out / "test_queries" / f"part-{k:05d}.parquet", index=False)
        test_ids += [i for i, t in zip(ids, test, strict=True) if t]
        test_p.append(p[base[idx][test]])
        test_rewards.append(draws[idx][test].astype(np.float64))
    return {"questions": len(questions), "instances": n_instances, "prompt_ids": [pid for pid, _ in prompts],
            "test_ids": pd.Index(test_ids), "test_p": np.vstack(test_p), "test_rewards": np.vstack(test_rewards),
            "partition_rows": int(np.diff(bounds).max() * N_PROMPTS)}


def planted_scores(picks: pd.DataFrame, built: dict, prior: dict[str, float]) -> dict:
    """Planted (expected) and realized values of a policy's picks on the test instances,
    with the best single prompt (by training mean) and the oracle, and the gap recovered."""
    rows = built["test_ids"].get_indexer(picks["query_id"])
    if (rows < 0).any():
        raise RuntimeError("a recommended query id is not a test instance")
    cols = pd.Index(built["prompt_ids"]).get_indexer(picks["prompt_id"])
    p, r = built["test_p"][rows], built["test_rewards"][rows]
    best = pd.Index(built["prompt_ids"]).get_loc(max(prior, key=prior.get))
    out = {}
    for kind, values in (("planted", p), ("realized", r)):
        policy, single, oracle = values[np.arange(len(rows)), cols].mean(), values[:, best].mean(), values.max(axis=1).mean()
        out[kind] = {"policy": float(policy), "best_single": float(single), "oracle": float(oracle),
                     "gap_recovered": float((policy - single) / (oracle - single)) if oracle > single else None}
    out["instances"] = int(len(rows))
    return out


# --------------------------------------------------------------------------- memory


class MemorySampler:
    """Peak resident memory of this process and its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.peaks: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self):
        import psutil

        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss
                role = "driver" if proc.pid == self.me.pid else _role(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            entry = self.peaks.setdefault(proc.pid, {"pid": proc.pid, "role": role, "peak_rss_bytes": 0})
            entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], rss)

    def report(self) -> list[dict]:
        return sorted(({**e, "peak_rss_gib": round(e["peak_rss_bytes"] / GiB, 3)} for e in self.peaks.values()),
                      key=lambda e: -e["peak_rss_bytes"])


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "multiprocessing.spawn" in text or "spawn_main" in text:
        return "dask worker or nanny (spawned)"
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    return "child: " + text[:80]


def driver_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# --------------------------------------------------------------------------- stages


def copy_static_model(cache_dir: Path) -> str | None:
    """Reuse an already distilled minilm-static from the default cache (its one-off
    distillation is not part of the benchmark); vectors still start cold."""
    from oirl.embed.base import default_cache_dir

    for folder in sorted((Path(default_cache_dir()) / "static").glob("minilm-static-*")):
        if folder.is_dir() and all((folder / f).is_file() for f in ("model.safetensors", "tokenizer.json", "config.json")):
            shutil.copytree(folder, cache_dir / "static" / folder.name)
            return folder.name
    return None


def train_on(client, log: Path, cache_dir: Path, embedder: str, model: str = "auto"):
    from oirl.distributed.engine import train_distributed

    started = time.perf_counter()
    rec = train_distributed(client, log, model=model, embedder=embedder, cache_dir=cache_dir, progress=True)
    engine = rec.metadata["metrics"]["engine"]
    timings = {**engine["prepare_seconds"], "cv_select": engine["stage_seconds"]["cross_validation"], "fit": engine["stage_seconds"]["fit"],
               "train_total": time.perf_counter() - started}
    return rec, timings


def slice_dir(log: Path, target: Path, rows: int, partition_rows: int) -> Path:
    """A log of the first partitions (links), about ``rows`` rows."""
    target.mkdir()
    files = sorted(log.glob("part-*.parquet"))[: max(1, round(rows / partition_rows))]
    for f in files:
        (target / f.name).symlink_to(f.resolve())
    return target


def train_rows_of(log: Path) -> int:
    import pyarrow.parquet as pq

    return int(sum((pq.read_table(f, columns=["split"]).column("split").to_numpy(zero_copy_only=False) == "train").sum()
                   for f in sorted(log.glob("part-*.parquet"))))


def compare_with_memory(client, tmp: Path, log: Path, built: dict, rows: int, cache_dir: Path, embedder: str) -> dict:
    """Dask vs in-memory training on the same ``rows`` training rows, scored on the same
    held-out instances (every test instance of the log): with ``--model auto`` (whose
    in-memory candidates are more: 18 knn settings, logistic, LightGBM, centred LightGBM,
    MLP) and like for like with ``--model lightgbm`` and ``--model knn``."""
    from oirl.data.logs import read_logs, training_rows

    frame = pd.concat([pd.read_parquet(f) for f in sorted(log.glob("part-*.parquet"))[: max(1, -(-rows // built["partition_rows"]) + 1)]])
    train = frame[frame["split"] == "train"].head(rows)
    (tmp / "compare").mkdir()
    train.to_parquet(tmp / "compare" / "part-00000.parquet", index=False)
    logs = training_rows(read_logs(tmp / "compare"), "split", "train", source="compare")
    queries = pd.concat([pd.read_parquet(f) for f in sorted((tmp / "test_queries").glob("part-*.parquet"))], ignore_index=True)
    out = {"train_rows": int(len(train)), "held_out_instances": int(len(queries))}
    for model in ("auto", "lightgbm", "knn"):
        started = time.perf_counter()
        dask_rec, _ = train_on(client, tmp / "compare", cache_dir, embedder, model)
        dask_seconds = time.perf_counter() - started
        started = time.perf_counter()
        memory_rec = train_recommender(logs, model=model, embedder=embedder, cache_dir=cache_dir, progress=True)
        memory_seconds = time.perf_counter() - started
        values, block = {}, {}
        for name, rec, seconds in (("dask", dask_rec, dask_seconds), ("in_memory", memory_rec, memory_seconds)):
            picks = rec.recommend(queries["query"].tolist())
            scored = planted_scores(pd.DataFrame({"query_id": queries["query_id"], "prompt_id": [r.prompt_id for r in picks]}), built, rec.prior)
            values[name] = scored
            block[name] = {"model": rec.model.name, "policy": rec.default_policy, "margin": None if np.isinf(rec.margin) else rec.margin,
                           "train_seconds": round(seconds, 1), "planted": scored["planted"], "realized": scored["realized"]}
        for kind in ("planted", "realized"):
            block[f"{kind}_difference"] = abs(values["dask"][kind]["policy"] - values["in_memory"][kind]["policy"])
        out[f"model_{model}"] = block
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rows", type=int, default=1_000_000, help="Log rows (a multiple of 8 prompts).")
    parser.add_argument("--partitions", type=int, default=None, help="Parquet files [default: one per 62,500 rows, at least 4].")
    parser.add_argument("--workers", type=int, default=2, help="Local Dask workers of the main run.")
    parser.add_argument("--embedder", default="minilm-static")
    parser.add_argument("--slice-rows", type=int, default=125_000, help="Rows of the 1- vs 2-worker throughput slice (0: skip).")
    parser.add_argument("--compare-rows", type=int, default=50_000, help="Training rows of the Dask vs in-memory comparison (0: skip).")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_scale.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from oirl._atomic import write_text_atomic
    from oirl.data.batch import recommend_to_parquet
    from oirl.distributed.cluster import dask_client
    from oirl.distributed.evaluate import evaluate_distributed

    partitions = args.partitions or max(4, round(args.rows / 62_500))
    result: dict = {"command": "python experiments/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "rows": args.rows, "partitions": partitions, "workers": args.workers, "embedder": args.embedder, "cores": os.cpu_count()}
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        cache_dir = tmp / "embeddings"
        result["static_model_reused"] = copy_static_model(cache_dir) if args.embedder == "minilm-static" else None
        with MemorySampler() as memory:
            started = time.perf_counter()
            built = build_log(args.data_dir, tmp, args.rows, partitions, embedder=args.embedder, cache_dir=cache_dir)
            stages["build"] = time.perf_counter() - started
            result.update(base_questions=built["questions"], instances=built["instances"], test_instances=len(built["test_ids"]))
            print(f"built {args.rows:,} rows in {partitions} partitions in {stages['build']:.1f} s", file=sys.stderr)
            with dask_client(f"local:{args.workers}") as client:
                rec, timings = train_on(client, tmp / "log", cache_dir, args.embedder)
                stages.update({k: timings[k] for k in ("read", "embed", "cv_select", "fit")})
                tick = time.perf_counter()
                save_bundle(rec, tmp / "model")
                stages["save"] = time.perf_counter() - tick
                # what the report needs from the bundle; then drop it, as `oirl train` exits before `oirl evaluate` runs
                result["training"] = {k: rec.metadata["training"][k] for k in ("rows", "query_instances", "distinct_queries")}
                result["chosen"] = {"model": rec.model.name, "policy": rec.default_policy, "margin": None if np.isinf(rec.margin) else rec.margin,
                                    "cv_selection": rec.metadata["metrics"]["cross_validation"]["selection"]}
                prior = rec.prior
                del rec
                gc.collect()
                tick = time.perf_counter()
                report = evaluate_distributed(client, tmp / "model", [tmp / "log"], cache_dir=cache_dir)
                stages["evaluate"] = time.perf_counter() - tick
                tick = time.perf_counter()
                recommend_to_parquet(load_bundle(tmp / "model", cache_dir=cache_dir), tmp / "test_queries", tmp / "picks",
                                     write_parts=part_writer(client, tmp / "model", cache_dir))
                stages["recommend"] = time.perf_counter() - tick
            stages["end_to_end"] = sum(stages.values())
        driver_peak = driver_peak_rss()
        picks = pd.concat([pd.read_parquet(f) for f in sorted((tmp / "picks").glob("part-*.parquet"))], ignore_index=True)
        result["evaluate_report"] = {k: report[k] for k in ("queries", "policies", "best_single_prompt", "oracle", "random", "gap_recovered")}
        result["held_out"] = planted_scores(picks, built, prior)
        result["stage_seconds"] = {k: round(v, 1) for k, v in stages.items()}
        processes = memory.report()
        result["memory"] = {"driver_peak_rss_gib": round(driver_peak / GiB, 3), "processes": processes,
                            "max_process_peak_rss_gib": max(p["peak_rss_gib"] for p in processes)}

        if args.slice_rows:
            log_slice = slice_dir(tmp / "log", tmp / "slice", args.slice_rows, built["partition_rows"])
            n_train = train_rows_of(log_slice)
            throughput = {"slice_train_rows": n_train}
            for workers in (1, 2):
                cold = tmp / f"embeddings-{workers}"
                if result["static_model_reused"]:
                    shutil.copytree(cache_dir / "static", cold / "static")
                with dask_client(f"local:{workers}") as client:
                    _, t = train_on(client, log_slice, cold, args.embedder)
                throughput[f"{workers}_worker"] = {
                    "embed_rows_per_s": round(n_train / t["embed"], 1), "train_rows_per_s": round(n_train / (t["cv_select"] + t["fit"]), 1),
                    "seconds": {k: round(v, 1) for k, v in t.items()},
                }
            for kind in ("embed_rows_per_s", "train_rows_per_s"):
                throughput[f"speedup_{kind}"] = round(throughput["2_worker"][kind] / throughput["1_worker"][kind], 2)
            result["throughput"] = throughput

        if args.compare_rows:
            with dask_client(f"local:{args.workers}") as client:
                result["dask_vs_in_memory"] = compare_with_memory(client, tmp, tmp / "log", built, args.compare_rows, cache_dir, args.embedder)

    result["targets"] = {
        "end_to_end_minutes": round(stages["end_to_end"] / 60, 2), "end_to_end_within_30_min": stages["end_to_end"] <= 1800,
        "driver_peak_within_1_gib": result["memory"]["driver_peak_rss_gib"] <= 1.0,
        "every_process_within_3_gib": result["memory"]["max_process_peak_rss_gib"] <= 3.0,
    }
    for model in ("auto", "lightgbm", "knn"):
        if "dask_vs_in_memory" in result:
            block = result["dask_vs_in_memory"][f"model_{model}"]
            result["targets"][f"{model}: dask_within_0.005_of_in_memory_planted"] = block["planted_difference"] <= 0.005
            result["targets"][f"{model}: dask_within_0.005_of_in_memory_realized"] = block["realized_difference"] <= 0.005
    text = json.dumps(result, indent=2)
    write_text_atomic(args.out, text + "\n")
    print(table(result))
    return json.loads(text)


def table(result: dict) -> str:
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["stage_seconds"].items()]
    held = result["held_out"]
    lines += ["", "| held-out (test) instances | policy | best single | oracle | gap recovered |", "|---|---|---|---|---|"]
    for kind in ("planted", "realized"):
        h = held[kind]
        gap = "n/a" if h["gap_recovered"] is None else f"{h['gap_recovered']:.3f}"
        lines.append(f"| {kind} ({held['instances']:,}) | {h['policy']:.4f} | {h['best_single']:.4f} | {h['oracle']:.4f} | {gap} |")
    mem = result["memory"]
    lines += ["", f"driver peak RSS {mem['driver_peak_rss_gib']:.3f} GiB; largest process peak {mem['max_process_peak_rss_gib']:.3f} GiB"]
    if "throughput" in result:
        t = result["throughput"]
        lines += ["", "| workers | embed rows/s | train rows/s |", "|---|---|---|"]
        lines += [f"| {n} | {t[f'{n}_worker']['embed_rows_per_s']:,.0f} | {t[f'{n}_worker']['train_rows_per_s']:,.0f} |" for n in (1, 2)]
    if "dask_vs_in_memory" in result:
        c = result["dask_vs_in_memory"]
        lines += ["", f"{c['train_rows']:,} training rows, {c['held_out_instances']:,} held-out instances (planted / realized value of the default policy):",
                  "| --model | dask | in memory | difference |", "|---|---|---|---|"]
        for model in ("auto", "lightgbm", "knn"):
            b = c[f"model_{model}"]
            cell = {n: f"{b[n]['model']} {b[n]['policy']}: {b[n]['planted']['policy']:.4f} / {b[n]['realized']['policy']:.4f}" for n in ("dask", "in_memory")}
            lines.append(f"| {model} | {cell['dask']} | {cell['in_memory']} | {b['planted_difference']:.4f} / {b['realized_difference']:.4f} |")
    lines += ["", json.dumps(result["targets"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

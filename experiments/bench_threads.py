"""How many threads a LightGBM fit should get on a small shared machine.

    python experiments/bench_threads.py --data-dir ../shared/data

Fits oirl's LightGBM reward model (300 trees) on GSM8K pair features (MiniLM vectors
from the embedding cache; embedded on first use) at two sizes — 630 rows (105
questions x 6 prompts) and every training row (44,838) — with one thread, two threads
and oirl's choice (``oirl._threads.training_threads``), each with OpenMP's default
spinning waits (what LightGBM did before) and with passive waits (what oirl sets), on
an idle machine and with the other core kept busy by a second process. Each setting
runs in a fresh subprocess, since OpenMP reads its settings once. Prints a table and
writes ``experiments/results/bench_threads.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

FIT = """
import json, sys, time
import numpy as np
data = np.load(sys.argv[1])
X, y = data["X"], data["y"]
from oirl.reward.trees import LightGBMReward
threads = None if sys.argv[2] == "auto" else int(sys.argv[2])
started = time.perf_counter()
model = LightGBMReward(n_jobs=threads).fit(X, y)
print(json.dumps({"seconds": time.perf_counter() - started, "threads": model.booster_.params.get("num_threads")}))
"""


def busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def features(data_dir: Path, cache_dir: Path, n_queries: int | None):
    import numpy as np

    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs
    from oirl.data.matrix import LogMatrix
    from oirl.embed.cached import CachedEmbedder
    from oirl.embed.registry import get_embedder
    from oirl.reward.features import grid_features

    logs = build_logs(data_dir, "gsm8k", TRAINING_PROMPTS)
    logs = logs[logs["split"] == "train"]
    if n_queries:
        logs = logs[logs["query_id"].isin(logs["query_id"].unique()[:n_queries])]
    matrix = LogMatrix.from_logs(logs, CachedEmbedder(get_embedder("minilm"), cache_dir).embed)
    X = grid_features(matrix.query_vectors[matrix.text_index], matrix.prompt_vectors)
    return X, matrix.rewards.ravel().astype(np.float64)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"))
    parser.add_argument("--sizes", default="105,0", help="Questions per size (0: every training question).")
    parser.add_argument("--loads", default="idle,other core busy", help="Machine loads to measure under.")
    parser.add_argument("--threads", default="1,2,auto", help="Thread settings to measure.")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_threads.json"))
    args = parser.parse_args(argv)

    import tempfile

    import numpy as np

    from oirl._atomic import write_text_atomic

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            X, y = features(args.data_dir, args.cache_dir, n or None)
            path = Path(tmp) / f"data{n}.npz"
            np.savez(path, X=X, y=y)
            for load in args.loads.split(","):
                for wait in ("active (OpenMP default)", "passive (oirl)"):
                    for threads in args.threads.split(","):
                        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                        env["OMP_WAIT_POLICY"] = "ACTIVE" if wait.startswith("active") else "PASSIVE"
                        hog = None
                        if load != "idle":
                            hog = multiprocessing.Process(target=busy, args=(time.time() + 3600,), daemon=True)
                            hog.start()
                        try:
                            out = subprocess.run([sys.executable, "-c", FIT, str(path), threads], env=env, capture_output=True,
                                                 text=True, timeout=1800, check=True)
                        finally:
                            if hog is not None:
                                hog.terminate()
                                hog.join()
                        fit = json.loads(out.stdout.strip().splitlines()[-1])
                        row = {"rows": int(len(y)), "load": load, "waits": wait, "threads asked": threads,
                               "threads used": fit["threads"], "seconds": round(fit["seconds"], 2)}
                        results.append(row)
                        print(json.dumps(row), flush=True)
    report = {"results": results}
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print("| rows | load | waits | threads asked | threads used | seconds |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']} | {r['load']} | {r['waits']} | {r['threads asked']} | {r['threads used']} | {r['seconds']} |")
    return report


if __name__ == "__main__":
    main()

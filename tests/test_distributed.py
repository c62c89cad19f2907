"""Dask training, evaluation and batch recommendation on a LocalCluster (2 workers, 1 thread each).

The log is the scale benchmark's synthetic log (real question texts, a planted
per-question best prompt) at a few thousand rows, embedded with the hashing embedder.
"""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from oirl.cli.main import cli
from oirl.data.questions import QuestionKey
from oirl.distributed.batch import part_writer
from oirl.errors import LogFormatError, OirlError  # noqa: E402
from oirl.evaluation.report import evaluate_recommender
from oirl.recommender.bundle import load_bundle, save_bundle

ROWS = 4800  # 600 instances x 8 prompts


def load_bench():
    from experiment_scripts import load

    return load("bench_scale")


@pytest.fixture(scope="module")
def client():
    from oirl.distributed.cluster import dask_client

    with dask_client("local:2") as c:
        assert len(c.scheduler_info()["workers"]) == 2
        yield c


@pytest.fixture(scope="module")
def synthetic(data_dir, tmp_path_factory):
    """The benchmark's log in 4 Parquet files, its test queries, and a dask-trained bundle."""
    work = tmp_path_factory.mktemp("scale")
    built = load_bench().build_log(data_dir, work, ROWS, 4, embedder="hashing", cache_dir=work / "emb", boost=0.5)
    return work, built


@pytest.fixture(scope="module")
def dask_bundle(client, synthetic):
    from oirl.distributed.engine import train_distributed

    work, _ = synthetic
    rec = train_distributed(client, work / "log", embedder="hashing", cache_dir=work / "emb")
    engine = rec.metadata["metrics"]["engine"]
    assert engine["name"] == "DaskEngine" and set(engine["stage_seconds"]) == {"prepare", "cross_validation", "fit"}
    assert set(engine["prepare_seconds"]) == {"read", "embed"} and engine["workers"] == 2
    return rec, save_bundle(rec, work / "model")


def in_memory_matrix(work):
    from oirl.data.logs import read_logs, training_rows
    from oirl.data.matrix import LogMatrix
    from oirl.embed.cached import CachedEmbedder
    from oirl.embed.registry import get_embedder

    rows = training_rows(read_logs(work / "log"), "split", "train", source="log")
    return rows, LogMatrix.from_logs(rows, CachedEmbedder(get_embedder("hashing"), work / "emb").embed, question_key=QuestionKey())


def test_the_dask_bundle_loads_and_matches_the_in_memory_choice(dask_bundle, synthetic):
    from oirl.learn.candidates import AUTO_CANDIDATES
    from oirl.learn.selection import select_model

    rec, path = dask_bundle
    work, _ = synthetic
    loaded = load_bundle(path, cache_dir=work / "emb")
    meta = json.loads((path / "bundle.json").read_text())
    rows, matrix = in_memory_matrix(work)
    assert meta["training"]["rows"] == len(rows) and meta["training"]["query_instances"] == len(matrix.query_ids)
    assert [p.prompt_id for p in loaded.prompts] == matrix.prompt_ids  # first-seen order, as in memory
    assert loaded.prior == pytest.approx(dict(zip(matrix.prompt_ids, matrix.prompt_means(), strict=True)))
    options = {r["option"] for r in meta["metrics"]["model_selection"]}
    assert {"prior", "lightgbm conservative", "lightgbm argmax", "knn(alpha=2.0,k=20,query_tau=0.05) argmax"} <= options
    assert len(options) == 1 + 2 * 19  # the prior, and two policies of 18 neighbour settings and LightGBM
    queries = ["Tom has 3 apples and buys 5 more. How many apples does he have?", "A car drives 60 miles per hour for 3 hours. How far?"]
    assert np.allclose(loaded.score(queries), rec.score(queries))
    # In memory, on the same folds (the hash of the text) and candidates: the neighbour
    # settings' CV values are the same, LightGBM's close, and the same family is chosen.
    from oirl.distributed.fitting import text_folds

    folds = text_folds(matrix, (QuestionKey().hashes(matrix.texts) % np.uint64(3)).astype(int), 3)  # the hash of the question
    memory = select_model(matrix, tuple(c for c in AUTO_CANDIDATES if c.model in ("knn", "lightgbm")), folds=folds)
    dask_values = {r["option"]: r["value"] for r in meta["metrics"]["model_selection"]}
    for row in memory.table:
        tolerance = 1e-9 if row["option"].startswith(("knn", "prior")) else 0.05  # data-parallel trees, 540 instances
        assert dask_values[row["option"]] == pytest.approx(row["value"], abs=tolerance), row["option"]
    assert memory.spec.model == rec.model.name


def test_the_neighbour_model_is_the_same_fit_and_lightgbm_close(client, synthetic):
    from oirl.distributed.engine import train_distributed
    from oirl.learn.crossfit import fit_on
    from oirl.reward.neighbours import NeighbourReward
    from oirl.reward.trees import LightGBMReward

    work, _ = synthetic
    _, matrix = in_memory_matrix(work)
    probe = matrix.query_vectors[:200]
    knn = train_distributed(client, work / "log", model="knn", embedder="hashing", cache_dir=work / "emb")
    memory = fit_on(NeighbourReward(), matrix, "concat")
    # The same state; float32 cosines summed in another order move a few near-tied weights.
    assert np.allclose(knn.model.predict_grid(probe, matrix.prompt_vectors), memory.predict_grid(probe, matrix.prompt_vectors), atol=1e-4)
    lgbm = train_distributed(client, work / "log", model="lightgbm", model_params={"n_estimators": 60}, embedder="hashing",
                             cache_dir=work / "emb")
    memory = fit_on(LightGBMReward(n_estimators=60), matrix, "concat")
    dask_scores, memory_scores = (m.predict_grid(probe, matrix.prompt_vectors, "concat") for m in (lgbm.model, memory))
    assert np.abs(dask_scores - memory_scores).mean() < 0.02  # data-parallel trees differ a little
    assert np.corrcoef(dask_scores.ravel(), memory_scores.ravel())[0, 1] > 0.9


def test_evaluate_on_the_workers_gives_the_in_memory_report(client, dask_bundle, synthetic):
    from oirl.data.logs import read_logs, split_rows
    from oirl.distributed.evaluate import evaluate_distributed

    _, path = dask_bundle
    work, _ = synthetic
    report = evaluate_distributed(client, path, [work / "log"], cache_dir=work / "emb")
    rec = load_bundle(path, cache_dir=work / "emb")
    expected = evaluate_recommender(rec, split_rows(read_logs(work / "log"), "split", "test", source="log"))
    for key in ("queries", "policies", "best_single_prompt", "oracle", "random", "gap_recovered", "seen_in_training"):
        assert report[key] == pytest.approx(expected[key]), key
    assert report["reward_model"]["roc_auc"] == pytest.approx(expected["reward_model"]["roc_auc"])
    assert "refused" in report["ope"]


def test_batch_recommend_writes_ordered_partitions(client, dask_bundle, synthetic, tmp_path):
    from oirl.data.batch import recommend_to_parquet

    _, path = dask_bundle
    work, _ = synthetic
    summary = recommend_to_parquet(load_bundle(path, cache_dir=work / "emb"), work / "test_queries", tmp_path / "picks",
                                   write_parts=part_writer(client, path, work / "emb"))
    inputs = sorted((work / "test_queries").glob("part-*.parquet"))
    parts = sorted((tmp_path / "picks").glob("part-*.parquet"))
    assert (tmp_path / "picks" / "_SUCCESS").is_file() and [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(inputs))]
    assert summary["partitions"] == len(inputs) and not list(tmp_path.glob(".picks*"))
    rec = load_bundle(path, cache_dir=work / "emb")
    for source, part in zip(inputs, parts, strict=True):
        given, written = pd.read_parquet(source), pd.read_parquet(part)
        assert list(written.columns) == ["query", "query_id", "prompt_id", "prompt", "score"]
        assert written["query_id"].tolist() == given["query_id"].tolist()  # input order within a partition
        expected = rec.recommend(given["query"].tolist())
        assert written["prompt_id"].tolist() == [r.prompt_id for r in expected]
        # The same picks; the scores agree to float32 noise: a worker's BLAS may sum the cosines in
        # another order than this process (its thread count differs), which moves near-tied
        # neighbour weights a little (the full suite once failed on exact closeness here).
        assert np.allclose(written["score"], [r.score for r in expected], rtol=0, atol=1e-3)
    # The same through the CLI without Dask, then once more over its own output (replaced whole).
    for _ in range(2):
        result = CliRunner().invoke(cli, ["recommend", str(path), "--queries", str(work / "test_queries"), "--out", str(tmp_path / "cli"),
                                          "--cache-dir", str(work / "emb")])
        assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["queries"] == sum(len(pd.read_parquet(p)) for p in inputs)
    for a, b in zip(parts, sorted((tmp_path / "cli").glob("part-*.parquet")), strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


def test_batch_recommend_takes_the_costs_given_with_the_candidates(dask_bundle, synthetic, tmp_path):
    from oirl.data.batch import recommend_to_parquet
    from oirl.recommender.recommender import Candidate

    _, path = dask_bundle
    work, _ = synthetic
    rec = load_bundle(path, cache_dir=work / "emb")
    priced = [Candidate(p.prompt, p.prompt_id, float(i)) for i, p in enumerate(rec.prompts)]  # the bundle has no costs
    recommend_to_parquet(rec, work / "test_queries", tmp_path / "picks", candidates=priced, policy="cost-aware", cost_weight=0.05)
    source = sorted((work / "test_queries").glob("part-*.parquet"))[0]
    written = pd.read_parquet(tmp_path / "picks" / "part-00000.parquet")
    expected = rec.recommend(pd.read_parquet(source)["query"].tolist(), priced, policy="cost-aware", cost_weight=0.05)
    assert written["prompt_id"].tolist() == [r.prompt_id for r in expected]


def test_a_bad_partition_is_named_by_file_row_and_column(client, tmp_path, synthetic):
    from oirl.distributed.read import read_log_partitions

    work, _ = synthetic
    good = pd.read_parquet(work / "log" / "part-00000.parquet").head(16)
    (tmp_path / "bad").mkdir()
    good.to_parquet(tmp_path / "bad" / "a.parquet", index=False)
    good.assign(reward=[0.0] * 5 + [1.5] + [0.0] * 10).to_parquet(tmp_path / "bad" / "b.parquet", index=False)
    rows = read_log_partitions(tmp_path / "bad")
    with pytest.raises(LogFormatError, match=r"b.parquet, row 6, column 'reward': 1.5 is outside \[0, 1\]"):
        client.compute(rows).result()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{log}", "--out", "{tmp}/m", "--dask", "bogus"], r"--dask 'bogus': expected local, local:N"),
        (["train", "{log}", "--out", "{tmp}/m", "--dask", "local:0"], r"--dask 'local:0': expected"),
        (["train", "{log}", "--out", "{tmp}/m", "--dask", "tcp://nohost"], r"--dask 'tcp://nohost': expected"),
        (["train", "{log}", "--out", "{tmp}/m", "--dask", "local", "--model", "mlp"], r"--model mlp cannot train under --dask"),
        (["train", "{log}", "--out", "{tmp}/m", "--dask", "local", "--cv-groups", "instance"], r"groups by question text only"),
        (["evaluate", "{model}", "{log}", "--dask", "local:x"], r"--dask 'local:x': expected"),
        (["recommend", "{model}", "--queries", "{queries}", "--dask", "tcp:/x", "--out", "{tmp}/o"], r"--dask 'tcp:/x': expected"),
        (["recommend", "{model}", "--queries", "{queries}", "--dask", "local"], r"--dask needs --out DIR"),
        (["recommend", "{model}", "--queries", "{queries}", "--out", "{tmp}/o", "--top-k", "2"], r"no --top-k"),
        (["recommend", "{model}", "--queries", "{queries}", "--out", "{log}"], r"--out .*log: exists, is not empty and is not an 'oirl recommend' output"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(dask_bundle, synthetic, tmp_path, args, message):
    import re

    work, _ = synthetic
    values = {"log": work / "log", "tmp": tmp_path, "model": dask_bundle[1], "queries": work / "test_queries"}
    result = CliRunner().invoke(cli, [a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), result.stderr


def test_the_scale_benchmark_runs_at_toy_size(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = load_bench().main(["--data-dir", str(data_dir), "--rows", "2400", "--partitions", "3", "--embedder", "hashing",
                                "--slice-rows", "0", "--compare-rows", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["training"]["query_instances"] + result["test_instances"] == 300
    assert result["held_out"]["instances"] == result["test_instances"]
    assert set(result["stage_seconds"]) >= {"build", "read", "embed", "cv_select", "fit", "evaluate", "recommend", "end_to_end"}
    assert 0 < result["memory"]["driver_peak_rss_gib"] and any(p["role"] != "driver" for p in result["memory"]["processes"])


def test_oirl_error_is_the_type_raised_for_a_bad_spec():
    from oirl.distributed.cluster import parse_dask_spec

    assert parse_dask_spec("local") == ("local", 2) and parse_dask_spec("local:3") == ("local", 3)
    assert parse_dask_spec("tcp://10.0.0.5:8786") == ("tcp", "tcp://10.0.0.5:8786")
    with pytest.raises(OirlError):
        parse_dask_spec("local:")

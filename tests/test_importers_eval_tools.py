"""Importers of eval-tool outputs, on files written by the real tools (tests/fixtures, see
experiments/make_eval_tool_fixtures.sh): promptfoo, lm-evaluation-harness and Inspect AI.

Expected rows are worked out here from the raw files, independently of the importers.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from experiment_scripts import load

from oirl.cli import cli
from oirl.data.importers.inspect_logs import read_inspect
from oirl.data.importers.lm_eval import read_lm_eval
from oirl.data.importers.promptfoo import read_promptfoo
from oirl.data.logs import read_logs
from oirl.errors import LogFormatError

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTFOO_VERSIONS = ("0.123.1", "0.92.2")
LM_EVAL_VERSIONS = ("0.4.13", "0.4.2")
INSPECT_RUNS = ("0.3.285-eval", "0.3.285-json", "0.3.130-eval", "0.3.40-json")
LETTERS = {"C": 1.0, "I": 0.0, "P": 0.5, "N": 0.0}


def unpacked(source: Path, target: Path) -> Path:
    """A copy of a fixture file or folder with its .gz files unpacked: the bytes the tool wrote."""
    if source.is_file():
        source, single = source.parent, source.name
    else:
        single = None
    for path in sorted(source.rglob("*")):
        if not path.is_file() or (single and path.name != single):
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".gz":
            out.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copyfile(path, out)
    return target / single.removesuffix(".gz") if single else target


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------- promptfoo


@pytest.fixture
def promptfoo_file(request, tmp_path) -> Path:
    return unpacked(FIXTURES / "promptfoo" / request.param / "results.json.gz", tmp_path / "raw")


@pytest.mark.parametrize("promptfoo_file", PROMPTFOO_VERSIONS, indirect=True)
def test_promptfoo_rows_are_the_results_promptfoo_recorded(promptfoo_file):
    raw = json.loads(promptfoo_file.read_text())
    labels = {i: p["label"] for i, p in enumerate(raw["results"]["prompts"])}
    expected = {(f"test-{r['testIdx']}", f"{r['provider']['label']}:{labels[r['promptIdx']]}"): r for r in raw["results"]["results"]}
    for reward in ("pass", "score"):
        frame, summary = read_promptfoo(promptfoo_file, reward=reward)
        assert len(frame) == len(expected) == 96 and frame["query_id"].nunique() == 24
        assert set(frame["prompt_id"]) == {"mock-high:plain", "mock-high:step-by-step", "mock-low:plain", "mock-low:step-by-step"}
        for row in frame.itertuples():
            result = expected[(row.query_id, row.prompt_id)]
            assert row.reward == (float(result["success"]) if reward == "pass" else result["score"])
            assert row.query == result["vars"]["question"] and result["vars"]["answer"] not in row.query.split()
            assert row.cost == result["cost"] and row.llm == result["provider"]["label"]
            template = raw["results"]["prompts"][result["promptIdx"]]["raw"]
            assert row.prompt == f"provider: {row.llm}\n\nprompt: {template}"
    assert summary["tool_version"] == (raw.get("metadata") or {}).get("promptfooVersion", "not recorded")
    assert set(frame["reward"]) == {0.0, 0.5, 1.0}  # promptfoo's scores: right, off by one, wrong
    # Real per-query differences: some queries are won by one arm and lost by another.
    wide = frame.pivot(index="query_id", columns="prompt_id", values="reward")
    assert ((wide.max(axis=1) > wide.min(axis=1)).sum() >= 5) and wide.idxmax(axis=1).nunique() > 1


def test_promptfoo_version_outside_the_tested_range_warns_and_an_unknown_format_fails(tmp_path):
    path = unpacked(FIXTURES / "promptfoo" / "0.123.1" / "results.json.gz", tmp_path)
    raw = json.loads(path.read_text())
    raw["metadata"]["promptfooVersion"] = "0.200.1"
    path.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match=r"written by promptfoo 0\.200\.1, newer than the versions this importer was tested with"):
        read_promptfoo(path)
    raw["results"]["version"] = 4
    path.write_text(json.dumps(raw))
    with pytest.raises(LogFormatError, match=r"field 'results.version': results format 4 is not supported"):
        read_promptfoo(path)


def test_promptfoo_query_vars_and_scaled_scores(tmp_path):
    path = unpacked(FIXTURES / "promptfoo" / "0.123.1" / "results.json.gz", tmp_path)
    frame, _ = read_promptfoo(path, query_vars=["question", "answer"])
    assert frame["query"].str.match(r"question: What is .*\nanswer: -?\d+$").all()
    raw = json.loads(path.read_text())
    for result in raw["results"]["results"]:
        result["score"] *= 10  # a custom scale, 0..10
    path.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match=r"scores run from 0 to 10, outside \[0, 1\]"):
        scaled, _ = read_promptfoo(path, reward="score")
    assert set(scaled["reward"]) == {0.0, 0.5, 1.0}
    scaled, _ = read_promptfoo(path, reward="score", score_range=(0, 20))
    assert set(scaled["reward"]) == {0.0, 0.25, 0.5}


def promptfoo_exports(raw: dict, directory: Path, csv_layout: str = "cell", glued_jsonl: bool = False) -> dict[str, Path]:
    """The run of one results.json written as promptfoo writes its three ``--output`` formats:
    JSON as is; JSONL one result object per line (``glued_jsonl``: promptfoo 0.92, batches of
    10 appended without a newline between them); CSV with a column per var, then per prompt
    ``[provider] label`` holding ``[PASS] (1.00)\n\noutput\n\nPass Reason: ...`` (promptfoo
    0.92 to 0.123, ``csv_layout="cell"``) or the output followed by Status, Score, Named
    Scores, Grader Reason and Comment columns (later versions, ``"columns"``)."""
    import csv

    directory.mkdir(parents=True, exist_ok=True)
    summary = raw["results"]
    paths = {"json": directory / "results.json", "jsonl": directory / "results.jsonl", "csv": directory / "results.csv"}
    paths["json"].write_text(json.dumps(raw, indent=2))
    lines = [json.dumps(r) for r in summary["results"]]
    if glued_jsonl:
        paths["jsonl"].write_text("".join("\n".join(lines[i:i + 10]) for i in range(0, len(lines), 10)))
    else:
        paths["jsonl"].write_text("\n".join(lines) + "\n")
    var_names = list(dict.fromkeys(k for r in summary["results"] for k in r["vars"]))
    prompts = summary["prompts"]
    by_test: dict[int, dict[int, dict]] = {}
    for r in summary["results"]:
        by_test.setdefault(r["testIdx"], {})[r["promptIdx"]] = r

    def status(r):
        return "PASS" if r["success"] else "FAIL" if r.get("failureReason", 1) == 1 else "ERROR"

    with paths["csv"].open("w", newline="") as out:
        writer = csv.writer(out)
        if csv_layout == "cell":
            writer.writerow([*var_names, *(f"[{p['provider']}] {p['label']}" for p in prompts)])
        else:
            writer.writerow(["Description", *var_names, *(c for p in prompts for c in (f"[{p['provider']}] {p['label']}", "Status", "Score",
                                                                                      "Named Scores", "Grader Reason", "Comment"))])
        for test in sorted(by_test):
            results = by_test[test]
            first = next(iter(results.values()))
            cells = [first["vars"][name] for name in var_names]
            for index in range(len(prompts)):
                r = results[index]
                output, reason = (r.get("response") or {}).get("output", ""), (r.get("gradingResult") or {}).get("reason")
                if csv_layout == "cell":
                    grade = f"\n\n{'Pass' if r['success'] else 'Fail'} Reason: {reason}" if r.get("gradingResult") else ""
                    cells.append(f"[{status(r)}] ({r['score']:.2f})\n\n{output}{grade}")
                else:
                    cells += [output, status(r), f"{r['score']:.2f}", "", reason or "", ""]
            writer.writerow(cells if csv_layout == "cell" else [first["testCase"]["description"], *cells])
    return paths


@pytest.mark.parametrize("version, csv_layout", [("0.123.1", "cell"), ("0.92.2", "cell"), ("0.123.1", "columns")])
def test_promptfoo_json_jsonl_and_csv_exports_of_one_run_import_to_the_same_rows(version, csv_layout, tmp_path):
    """Issue 21, item 5: ``-o results.jsonl`` and ``-o results.csv`` were refused as "not valid
    JSON". One run (a real promptfoo results file, one result turned into a provider error)
    written in all three formats imports to the same rows; the CSV records no templates, no
    cost and no test index, so it needs --query-vars when several vars could be the query."""
    raw = json.loads(unpacked(FIXTURES / "promptfoo" / version / "results.json.gz", tmp_path / "raw").read_text())
    broken = raw["results"]["results"][5]
    broken.update(success=False, score=0, gradingResult=None, error="provider crashed", failureReason=2)
    paths = promptfoo_exports(raw, tmp_path / "run", csv_layout, glued_jsonl=version == "0.92.2")
    key = ["query_id", "prompt_id"]
    for reward in ("pass", "score"):
        with pytest.warns(UserWarning, match="1 result"):
            from_json, _ = read_promptfoo(paths["json"], reward=reward)
        assert len(from_json) == 95
        with pytest.warns(UserWarning, match="1 result"):
            from_jsonl, summary = read_promptfoo(paths["jsonl"], reward=reward)
        assert summary["format"] == "jsonl" and summary["query_vars"] == ["question"]
        pd.testing.assert_frame_equal(from_jsonl.sort_values(key).reset_index(drop=True), from_json.sort_values(key).reset_index(drop=True))
        with pytest.warns(UserWarning, match="1 result"):
            from_csv, _ = read_promptfoo(paths["csv"], reward=reward, query_vars=["question"])
        assert "cost" not in from_csv.columns
        shared = ["query_id", "query", "prompt_id", "reward", "llm"]
        pd.testing.assert_frame_equal(from_csv.sort_values(key).reset_index(drop=True)[shared],
                                      from_json.sort_values(key).reset_index(drop=True)[shared])
        assert set(from_csv["prompt"]) == {f"provider: {p}\n\nprompt: {label}" for p in ("mock-high", "mock-low")
                                           for label in ("plain", "step-by-step")}
    with pytest.raises(LogFormatError, match=r"results\.csv: this export does not record the prompt templates, .* --query-vars "
                                             r"\(vars: answer, question\)"):
        read_promptfoo(paths["csv"])
    result = run("import", "promptfoo", paths["csv"], "--query-vars", "question", "--out", tmp_path / "csv.parquet")
    assert result.exit_code == 0, result.output
    assert len(read_logs(tmp_path / "csv.parquet")) == 95


# --------------------------------------------------------------------------- lm-eval


def lm_eval_expected(directory: Path) -> dict:
    """(question, model, task) -> the metric lm-eval recorded, read straight from the files."""
    expected = {}
    for results_file in sorted(directory.rglob("results*.json")):
        results = json.loads(results_file.read_text())
        args = results["config"]["model_args"]
        args = args if isinstance(args, str) else ",".join(f"{k}={v}" for k, v in args.items())
        model = f"{results['config']['model']}({args})"
        for task, config in results["configs"].items():
            metric = config["metric_list"][0]["metric"]
            wanted = (config.get("filter_list") or [{"name": "none"}])[0]["name"]
            if results_file.name == "results.json":  # lm-eval 0.4.2: one JSON array per task, no filter named
                [samples] = results_file.parent.glob(f"*_{task}.jsonl")
                records = json.loads(samples.read_text())
            else:
                date = results_file.stem.removeprefix("results_")
                records = [json.loads(line) for line in (results_file.parent / f"samples_{task}_{date}.jsonl").read_text().splitlines()]
                records = [r for r in records if r["filter"] == wanted]
            for record in records:
                expected[(record["doc"]["question"], model, task)] = record[metric]
    return expected


@pytest.mark.parametrize("version", LM_EVAL_VERSIONS)
def test_lm_eval_rows_are_the_metrics_lm_eval_recorded_matched_across_task_variants(version, tmp_path):
    directory = unpacked(FIXTURES / "lm_eval" / version, tmp_path / "raw")
    expected = lm_eval_expected(directory)
    frame, summary = read_lm_eval(directory)
    assert len(frame) == len(expected) == 24 * 2 * 3
    assert sorted(frame["prompt_id"].unique()) == [f"arith-mock(skill={s}):arith_{t}" for s in ("high", "low") for t in ("cot", "mc", "plain")]
    for row in frame.itertuples():
        assert row.reward == expected[(row.query, row.llm, row.prompt_id.split(":")[1])]
    # Every document is one query with all six arms: the variants were matched by document.
    assert frame["query_id"].nunique() == 24 and frame.groupby("query_id")["prompt_id"].nunique().eq(6).all()
    assert frame.groupby("query_id")["query"].nunique().eq(1).all()
    assert summary["tasks"]["arith_cot"] == {"metric": "exact_match", "filter": "get-answer"}
    assert summary["tasks"]["arith_mc"] == {"metric": "acc", "filter": "none"}
    assert summary["tool_version"] == ("0.4.13" if version == "0.4.13" else "before 0.4.3 (not recorded)")
    cot = frame[frame["prompt_id"].str.endswith("arith_cot")]["prompt"].iloc[0]
    assert "Let's think step by step" in cot and cot.startswith("model: arith-mock(skill=")


def test_lm_eval_both_layouts_give_the_same_log(tmp_path):
    new, _ = read_lm_eval(unpacked(FIXTURES / "lm_eval" / "0.4.13", tmp_path / "new"))
    old, _ = read_lm_eval(unpacked(FIXTURES / "lm_eval" / "0.4.2", tmp_path / "old"))
    key = ["query_id", "prompt_id"]
    pd.testing.assert_frame_equal(new.sort_values(key).reset_index(drop=True), old.sort_values(key).reset_index(drop=True))


def test_lm_eval_newer_version_warns_and_an_incomplete_samples_file_fails(tmp_path):
    directory = unpacked(FIXTURES / "lm_eval" / "0.4.13", tmp_path)
    results_file = sorted(directory.rglob("results_*.json"))[0]
    results = json.loads(results_file.read_text())
    results["lm_eval_version"] = "0.5.1"
    results_file.write_text(json.dumps(results))
    with pytest.warns(UserWarning, match=r"written by lm-eval 0\.5\.1, newer than"):
        read_lm_eval(directory)
    samples = results_file.parent / f"samples_arith_plain_{results_file.stem.removeprefix('results_')}.jsonl"
    samples.write_text("".join(samples.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(LogFormatError, match=r"23 documents under filter 'none', but .* records 24 .*incomplete"), pytest.warns(UserWarning):
        read_lm_eval(directory)


# --------------------------------------------------------------------------- Inspect


def zip_member(path: Path, name: str) -> bytes:
    """One member of a .eval archive; Zstandard ones (method 93, unknown to zipfile before
    Python 3.14) decompressed from the raw bytes after the member's local header."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
        if info.compress_type != 93:
            return archive.read(info)
    import pyarrow

    data = path.read_bytes()
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    return pyarrow.decompress(data[start : start + info.compress_size], decompressed_size=info.file_size, codec="zstd", asbytes=True)


def inspect_logs(directory: Path) -> list[tuple[dict, list[dict]]]:
    """(header, samples) of each log in a folder, read straight from the files."""
    logs = []
    for path in sorted(directory.iterdir()):
        if path.suffix == ".json":
            log = json.loads(path.read_text())
            logs.append((log, log["samples"]))
        else:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.startswith("samples/")]
            logs.append((json.loads(zip_member(path, "header.json")), [json.loads(zip_member(path, n)) for n in names]))
    return logs


@pytest.mark.parametrize("run_name", INSPECT_RUNS)
def test_inspect_rows_are_the_grades_inspect_recorded(run_name, tmp_path):
    directory = unpacked(FIXTURES / "inspect" / run_name, tmp_path / "raw")
    logs = inspect_logs(directory)
    grades: dict[tuple, list[float]] = {}
    for header, samples in logs:
        for sample in samples:
            key = (sample["input"], header["eval"]["model"], header["eval"]["task_args"]["style"])
            grades.setdefault(key, []).append(LETTERS[sample["scores"]["near_match"]["value"]])
    frame, summary = read_inspect([directory])
    assert len(frame) == len(grades) == 96 and frame["query_id"].nunique() == 24
    assert frame.groupby("query_id")["prompt_id"].nunique().eq(4).all()
    for row in frame.itertuples():
        style = "cot" if "style=cot" in row.prompt_id else "plain"
        assert row.reward == pytest.approx(sum(grades[(row.query, row.llm, style)]) / len(grades[(row.query, row.llm, style)]))
        assert row.query_id == next(s["id"] for _, samples in logs for s in samples if s["input"] == row.query)
    epochs = {header["eval"]["config"]["epochs"] for header, _ in logs}
    assert summary["scores_per_row"] == max(epochs) and summary["tool_version"] == run_name.split("-")[0]
    if max(epochs) > 1:  # epochs that disagree average to rewards other than the grades
        assert (~frame["reward"].isin([0.0, 0.5, 1.0])).any()
    cot = frame.loc[frame["prompt_id"].str.contains("style=cot"), "prompt"].iloc[0]
    assert "chain_of_thought(template=" in cot and "step-by-step" in cot


def test_inspect_zstandard_and_deflate_archives_and_json_logs_agree(tmp_path):
    frames = {}
    for run_name in ("0.3.285-eval", "0.3.130-eval", "0.3.40-json"):
        frame, _ = read_inspect([unpacked(FIXTURES / "inspect" / run_name, tmp_path / run_name)])
        frames[run_name] = frame[["query_id", "prompt_id", "reward"]].sort_values(["query_id", "prompt_id"]).reset_index(drop=True)
    for run_name in ("0.3.130-eval", "0.3.40-json"):
        pd.testing.assert_frame_equal(frames["0.3.285-eval"], frames[run_name])
    files = sorted((tmp_path / "0.3.285-eval").iterdir())
    with zipfile.ZipFile(files[0]) as archive:
        assert {i.compress_type for i in archive.infolist()} == {93}  # the format Python 3.11's zipfile cannot read


def test_inspect_other_scorer_numeric_scores_and_version_checks(tmp_path):
    directory = unpacked(FIXTURES / "inspect" / "0.3.40-json", tmp_path)
    frame, summary = read_inspect([directory], scorer="match")
    assert summary["scorer"] == "match" and set(frame["reward"]) == {0.0, 1.0}  # match grades C or I only
    letters, _ = read_inspect([directory])
    assert read_inspect([directory], score_range=(0, 2))[0].equals(letters)  # a range scales numbers, not grades
    for path in directory.iterdir():  # the same grades as points out of 10
        _edit_json(path, lambda log: [s["scores"]["near_match"].update(value={"C": 10, "P": 5, "I": 0}[s["scores"]["near_match"]["value"]])
                                      for s in log["samples"]])
    with pytest.warns(UserWarning, match=r"scores run from 0 to 10, outside \[0, 1\]"):
        points, _ = read_inspect([directory])
    assert points.equals(letters) and read_inspect([directory], score_range=(0, 10))[0].equals(letters)
    path = sorted(directory.iterdir())[0]
    log = json.loads(path.read_text())
    log["eval"]["packages"]["inspect_ai"] = "0.2.9"
    path.write_text(json.dumps(log))
    with pytest.warns(UserWarning, match=r"written by inspect-ai 0\.2\.9, older than the versions this importer was tested with"):
        read_inspect([path], score_range=(0, 10))
    log["version"] = 3
    path.write_text(json.dumps(log))
    with pytest.raises(LogFormatError, match=r"field 'version': log format 3 is not supported"):
        read_inspect([path], score_range=(0, 10))


# --------------------------------------------------------------------------- the CLI end to end


@pytest.mark.parametrize("tool, source", [
    ("promptfoo", "promptfoo/0.123.1/results.json.gz"), ("lm-eval", "lm_eval/0.4.13"), ("inspect", "inspect/0.3.285-eval")])
def test_import_then_train_and_evaluate_through_the_cli(tool, source, tmp_path):
    raw = unpacked(FIXTURES / source, tmp_path / "raw")
    log = tmp_path / "log.parquet"
    result = run("import", tool, raw, "--out", log)
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout)
    assert summary["file"] == str(log) and summary["rows"] == len(read_logs(log)) and summary["queries"] == 24
    result = run("train", log, "--out", tmp_path / "model", "--model", "knn", "--cv-folds", "2", "--cache-dir", tmp_path / "emb")
    assert result.exit_code == 0, result.output + result.stderr
    result = run("evaluate", tmp_path / "model", log, "--cache-dir", tmp_path / "emb")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["logs"] == [str(log)] and "oracle" in json.dumps(report)
    result = run("import", tool, raw, "--out", log)  # a log oirl wrote is replaced
    assert result.exit_code == 0, result.stderr


def test_import_refuses_to_overwrite_a_file_oirl_did_not_write(tmp_path):
    raw = unpacked(FIXTURES / "promptfoo" / "0.123.1" / "results.json.gz", tmp_path / "raw")
    notes = tmp_path / "notes.csv"
    notes.write_text("query,answer\nWhat is 1 + 1?,2\n")
    result = run("import", "promptfoo", raw, "--out", notes)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: --out {notes}: exists and was not written by oirl; refusing")
    assert len(result.stderr.splitlines()) == 1 and notes.read_text() == "query,answer\nWhat is 1 + 1?,2\n"
    # A Parquet file with the right columns that oirl did not write is refused too; --force replaces it.
    frame, _ = read_promptfoo(raw)
    mine = tmp_path / "mine.parquet"
    frame.to_parquet(mine, index=False)
    assert run("import", "promptfoo", raw, "--out", mine).exit_code == 2
    assert run("import", "promptfoo", raw, "--out", mine, "--force").exit_code == 0
    assert run("import", "promptfoo", raw, "--out", mine).exit_code == 0  # now oirl wrote it


def _edit_json(path: Path, edit) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().split("\n")
    record = json.loads(lines[number - 1])
    edit(record)
    lines[number - 1] = json.dumps(record)
    path.write_text("\n".join(lines))


def _edit_eval_member(path: Path, member: str, edit) -> None:
    """Rewrite one sample of a (deflate) .eval archive, the other members copied as they are."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            if info.filename == member:
                document = json.loads(data)
                edit(document)
                data = json.dumps(document).encode()
            archive.writestr(info, data)


def _corrupt(tool: str, raw: Path) -> tuple[Path, str]:
    """Corrupt one record of a real file; return the file and the error's expected tail."""
    if tool == "promptfoo-success":
        _edit_json(raw, lambda d: d["results"]["results"][5].update(success="yes"))
        return raw, r"results\[5\], field 'success': expected true or false, got 'yes'"
    if tool == "promptfoo-prompt":
        _edit_json(raw, lambda d: d["results"]["results"][7].update(promptIdx=9))
        return raw, r"results\[7\], field 'promptIdx': expected an index below 4, got 9"
    if tool == "promptfoo-truncated":
        raw.write_text(raw.read_text()[:5000])
        return raw, r": not valid JSON: .* \(line \d+, column \d+\)"
    if tool == "lm-eval-metric":
        samples = sorted(raw.rglob("samples_arith_cot_*.jsonl"))[0]
        _edit_line(samples, 4, lambda r: r.update(exact_match=3))
        return samples, r", line 4, field 'exact_match': 3 is not a per-sample score in \[0, 1\]"
    if tool == "lm-eval-doc":
        samples = sorted(raw.rglob("samples_arith_mc_*.jsonl"))[0]
        _edit_line(samples, 9, lambda r: r.pop("doc"))
        return samples, r", line 9, field 'doc': expected the document as an object, got NoneType"
    if tool == "lm-eval-0.4.2":
        samples = raw / "low" / "skill__low_arith_mc.jsonl"
        _edit_json(samples, lambda records: records[2].update(acc="x"))
        return samples, r", record 2, field 'acc': 'x' is not a per-sample score in \[0, 1\]"
    if tool == "inspect-json":
        path = sorted(raw.iterdir())[1]
        _edit_json(path, lambda d: d["samples"][3]["scores"]["near_match"].update(value="maybe"))
        return path, r", samples\[3\] \(id 'q03', epoch 1\), field 'scores.near_match.value': 'maybe' is not a grade"
    if tool == "inspect-eval":
        path = sorted(raw.iterdir())[2]
        _edit_eval_member(path, "samples/q11_epoch_1.json", lambda s: s.update(input=42))
        return path, r", member samples/q11_epoch_1.json, field 'input': expected text or chat messages, got int"
    raise AssertionError(tool)


CORRUPTIONS = {
    "promptfoo-success": ("promptfoo", "promptfoo/0.123.1/results.json.gz"),
    "promptfoo-prompt": ("promptfoo", "promptfoo/0.92.2/results.json.gz"),
    "promptfoo-truncated": ("promptfoo", "promptfoo/0.123.1/results.json.gz"),
    "lm-eval-metric": ("lm-eval", "lm_eval/0.4.13"),
    "lm-eval-doc": ("lm-eval", "lm_eval/0.4.13"),
    "lm-eval-0.4.2": ("lm-eval", "lm_eval/0.4.2"),
    "inspect-json": ("inspect", "inspect/0.3.40-json"),
    "inspect-eval": ("inspect", "inspect/0.3.130-eval"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupt_record_is_one_error_line_naming_file_record_and_field(case, tmp_path):
    tool, source = CORRUPTIONS[case]
    raw = unpacked(FIXTURES / source, tmp_path / "raw")
    corrupted, expected = _corrupt(case, raw)
    out = tmp_path / "out" / "log.parquet"
    result = run("import", tool, raw, "--out", out)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {corrupted}, ") or line.startswith(f"error: {corrupted}: "), line
    assert re.search(expected, line[len(f"error: {corrupted}"):]), line
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


# --------------------------------------------------------------------------- the generator's own files


def test_the_committed_mock_and_questions_are_what_the_fixtures_were_made_with(tmp_path):
    """experiments/eval_tool_fixtures (questions, mock model) cannot drift from the committed fixtures."""
    arith = load("eval_tool_fixtures/arith")
    questions = {q["question"]: q for q in arith.questions()}
    raw = json.loads(unpacked(FIXTURES / "promptfoo" / "0.123.1" / "results.json.gz", tmp_path).read_text())
    for result in raw["results"]["results"]:
        skill = "high" if result["provider"]["label"] == "mock-high" else "low"
        answer = arith.mock_answer(result["prompt"]["raw"], skill)
        expected = answer if arith.style_of(result["prompt"]["raw"]) == "plain" else f"Adding up the parts. The answer is {answer}."
        assert result["response"]["output"] == expected
        assert questions[result["vars"]["question"]]["answer"] == result["vars"]["answer"]
    assert len({r["vars"]["question"] for r in raw["results"]["results"]}) == len(questions) == arith.N_QUESTIONS
    for samples in (FIXTURES / "lm_eval" / "0.4.13").rglob("samples_arith_mc_*.jsonl"):
        docs = [json.loads(line)["doc"] for line in samples.read_text().splitlines()]
        assert docs == list(questions.values())

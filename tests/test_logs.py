import json

import pandas as pd
import pytest

from oirl.data.logs import read_logs, training_rows, write_logs
from oirl.data.schema import text_id
from oirl.errors import LogFormatError

GOOD = [
    {"query_id": "q1", "query": "What is 2 + 2?", "prompt_id": "nan", "prompt": "The answer is:", "reward": "1", "split": "train"},
    {"query_id": "q1", "query": "What is 2 + 2?", "prompt_id": "CoT", "prompt": "Let's think step by step: ", "reward": "0", "split": "train"},
    {"query_id": "q2", "query": "What is 3 + 5?\nAnswer with a number.", "prompt_id": "NA", "prompt": "Solve it.", "reward": "0.5", "split": "test"},
]


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_round_trip_in_every_format_keeps_ids_as_strings(tmp_path, suffix):
    frame = read_logs(write_csv(tmp_path / "in.csv", GOOD))
    out = write_logs(frame, tmp_path / f"out{suffix}")
    again = read_logs(out)
    assert again["prompt_id"].tolist() == ["nan", "CoT", "NA"]
    assert again["reward"].tolist() == [1.0, 0.0, 0.5]
    assert again["query"][2] == "What is 3 + 5?\nAnswer with a number."
    pd.testing.assert_frame_equal(frame, again)


def test_missing_ids_are_derived_from_texts_and_correct_is_an_alias(tmp_path):
    rows = [{"query": "a?", "prompt": "p1", "correct": "True"}, {"query": "a?", "prompt": "p2", "correct": "false"}]
    frame = read_logs(write_jsonl(tmp_path / "l.jsonl", rows))
    assert frame["reward"].tolist() == [1.0, 0.0]
    assert frame["query_id"].nunique() == 1 and frame["query_id"][0] == text_id("a?", "q")
    assert frame["prompt_id"].tolist() == [text_id("p1", "p"), text_id("p2", "p")]


def test_duplicate_keys_are_averaged_with_a_warning(tmp_path):
    rows = [dict(GOOD[0]), dict(GOOD[0], reward="0"), GOOD[1]]
    with pytest.warns(UserWarning, match="2 rows share 1 .* averaged"):
        frame = read_logs(write_csv(tmp_path / "d.csv", rows))
    assert len(frame) == 2
    assert frame.set_index("prompt_id").loc["nan", "reward"] == 0.5


def test_same_text_under_several_query_ids_stays_separate(tmp_path):
    rows = [dict(GOOD[0], query_id="a"), dict(GOOD[0], query_id="b", reward="0")]
    frame = read_logs(write_csv(tmp_path / "r.csv", rows))
    assert frame["query_id"].tolist() == ["a", "b"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"drop": "reward"}, r"missing column\(s\) reward"),
        ({"drop": "query"}, r"missing column\(s\) query"),
        ({"row": 1, "reward": "1.5"}, r"row 2 \(line 3\), column 'reward': 1.5 is outside \[0, 1\]"),
        ({"row": 0, "reward": "-0.1"}, r"row 1 \(line 2\), column 'reward': -0.1 is outside"),
        ({"row": 2, "reward": "yes"}, r"row 3 \(line 4\), column 'reward': a non-numeric \('yes'\) value"),
        ({"row": 2, "reward": ""}, r"row 3 \(line 4\), column 'reward': a missing value"),
        ({"row": 1, "query": "   "}, r"row 2 \(line 3\), column 'query': empty query text"),
        ({"row": 2, "prompt": ""}, r"row 3 \(line 4\), column 'prompt': empty prompt text"),
        ({"row": 1, "prompt_id": "nan"}, r"row 2 \(line 3\), column 'prompt': prompt_id 'nan' has a different text"),
        ({"row": 0, "cost": "cheap"}, r"row 1 \(line 2\), column 'cost': 'cheap' is not a number"),
    ],
)
def test_bad_csv_rows_are_named_by_file_row_and_column(tmp_path, change, message):
    rows = [dict(r, cost="1") for r in GOOD]
    change = dict(change)
    if "drop" in change:
        rows = [{k: v for k, v in r.items() if k != change["drop"]} for r in rows]
    else:
        rows[change.pop("row")].update(change)
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(LogFormatError, match=message) as info:
        read_logs(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"query": "a", "prompt": "b", "reward": 1}\n{"query": "a", "prompt": "c", "reward": \n', r"line 2: not valid JSON"),
        ('[1, 2]\n', r"line 1: expected a JSON object"),
        ('\n\n', r"holds no records"),
        ('{"query": "a", "prompt": "b", "reward": 2}\n', r"line 1, column 'reward': 2 is outside"),
        ('{"query": "a", "prompt": "b", "reward": null}\n', r"line 1, column 'reward': a missing value"),
    ],
)
def test_bad_jsonl_is_named_by_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(LogFormatError, match=message):
        read_logs(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.parquet", b"PAR1 this is not parquet", r"not a readable Parquet file"),
        ("empty.csv", b"", r"the file is empty"),
        ("quotes.csv", b'query,prompt,reward\n"unterminated,p,1\n', r"not a readable CSV file|row 1"),
        ("logs.txt", b"query,prompt,reward\n", r"unknown log format '.txt'"),
    ],
)
def test_unparsable_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match=message):
        read_logs(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(LogFormatError, match="no such log file"):
        read_logs(tmp_path / "nope.csv")


def test_training_rows_filters_the_split_and_rejects_an_empty_one(tmp_path):
    frame = read_logs(write_csv(tmp_path / "s.csv", GOOD))
    assert training_rows(frame, "split", "train", source="s").shape[0] == 2
    assert training_rows(frame.drop(columns="split"), "split", "train", source="s").shape[0] == 3
    with pytest.raises(LogFormatError, match="no rows with split == 'dev'"):
        training_rows(frame, "split", "dev", source="s")


def test_a_failed_write_leaves_no_file(tmp_path):
    frame = read_logs(write_csv(tmp_path / "in.csv", GOOD))
    target = tmp_path / "out.parquet"
    with pytest.raises(ValueError):
        write_logs(frame.assign(reward=[object(), 1, 2]), target)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_jsonl_texts_may_hold_unicode_line_separators(tmp_path):
    rows = [dict(GOOD[0], query="Line one\u2028line two\x85end")]
    frame = read_logs(write_csv(tmp_path / "u.csv", rows))
    again = read_logs(write_logs(frame, tmp_path / "u.jsonl"))
    assert again["query"][0] == "Line one\u2028line two\x85end"


def test_duplicates_are_never_averaged_across_splits(tmp_path):
    """A test outcome must not merge into the training row of the same key."""
    rows = [dict(GOOD[0], reward="1", split="train"), dict(GOOD[0], reward="0", split="test"), GOOD[1]]
    frame = read_logs(write_csv(tmp_path / "s.csv", rows))
    assert len(frame) == 3
    train = training_rows(frame, "split", "train", source="s.csv")
    assert train.set_index("prompt_id").loc["nan", "reward"] == 1.0


def test_duplicates_within_a_custom_split_column_are_averaged_after_selection(tmp_path):
    from oirl.data.logs import split_rows

    rows = [dict(GOOD[0], fold="a", reward="1"), dict(GOOD[0], fold="a", reward="0"), dict(GOOD[0], fold="b", reward="1")]
    rows = [{k: v for k, v in r.items() if k != "split"} for r in rows]
    with pytest.warns(UserWarning, match="averaged"):
        frame = read_logs(write_csv(tmp_path / "f.csv", rows))  # no split column: all three merge at read time
    assert len(frame) == 1
    rows[1]["query_id"] = "q1"
    frame = pd.DataFrame(rows)
    frame["reward"] = frame["reward"].astype(float)
    with pytest.warns(UserWarning, match="averaged"):
        picked = split_rows(frame, "fold", "a", source="f")
    assert len(picked) == 1 and picked["reward"][0] == 0.5
    assert split_rows(frame, "fold", "b", source="f")["reward"].tolist() == [1.0]


@pytest.mark.parametrize(
    "propensities, message",
    [
        (["0.5", "", "1"], r"row 2 \(line 3\), column 'propensity': missing value"),
        (["0.5", "0", "1"], r"column 'propensity': 0 is outside \(0, 1\]"),
        (["0.5", "1.5", "1"], r"column 'propensity': 1.5 is outside \(0, 1\]"),
        (["0.5", "abc", "1"], r"column 'propensity': 'abc' is not a number"),
        (["0.7", "0.6", "1"], r"query instance 'q1' \(split 'train'\) has several prompts logged with propensities summing to 1.3 > 1"),
    ],
)
def test_bad_propensities_are_named(tmp_path, propensities, message):
    rows = [dict(row, propensity=p) for row, p in zip(GOOD, propensities, strict=True)]
    with pytest.raises(LogFormatError, match=message):
        read_logs(write_csv(tmp_path / "p.csv", rows))


def test_propensities_and_coverage(tmp_path):
    from oirl.data.schema import coverage

    rows = [dict(row, propensity=p) for row, p in zip(GOOD, ["0.5", "0.25", "1"], strict=True)]
    frame = read_logs(write_csv(tmp_path / "p.csv", rows))
    assert frame["propensity"].tolist() == [0.5, 0.25, 1.0]
    assert coverage(frame) == "partial"  # q2 has only one of three prompts
    assert coverage(frame[frame["query_id"] == "q1"]) == "full"


# --------------------------------------------------------------------------- directories and globs of Parquet files


def write_parts(directory, parts):
    """Write each list of rows as directory/part-<i>.parquet (strings, as a reader would see them)."""
    directory.mkdir(exist_ok=True)
    for i, rows in enumerate(parts):
        pd.DataFrame(rows).to_parquet(directory / f"part-{i}.parquet", index=False)
    return directory


def test_a_directory_or_glob_of_parquet_files_reads_as_one_log(tmp_path):
    logs = write_parts(tmp_path / "logs", [GOOD[:2], GOOD[2:]])
    (logs / "_SUCCESS").write_text("")  # markers and hidden files are not partitions
    (logs / ".part-9.parquet.tmp").write_text("half written")
    whole = read_logs(write_csv(tmp_path / "whole.csv", GOOD))
    pd.testing.assert_frame_equal(read_logs(logs), whole)
    pd.testing.assert_frame_equal(read_logs(str(logs / "part-*.parquet")), whole)
    pd.testing.assert_frame_equal(read_logs(logs / "part-1.parquet"), whole.iloc[2:].reset_index(drop=True))


def test_keys_repeated_across_files_are_averaged_with_a_warning(tmp_path):
    logs = write_parts(tmp_path / "logs", [GOOD[:1], [dict(GOOD[0], reward="0"), GOOD[1]]])
    with pytest.warns(UserWarning, match="2 rows share 1 .* averaged"):
        frame = read_logs(logs)
    assert len(frame) == 2 and frame.set_index("prompt_id").loc["nan", "reward"] == 0.5


@pytest.mark.parametrize(
    "parts, pattern, message",
    [
        ([GOOD[:2], [dict(GOOD[2], reward="2")]], None, r"part-1.parquet, row 1, column 'reward': 2 is outside \[0, 1\]"),
        ([GOOD[:2], [dict(GOOD[2], prompt_id="CoT")]], None,
         r"part-1.parquet, column 'prompt': prompt_id 'CoT' has a different text here than in .*part-0.parquet"),
        ([GOOD[:2], [{k: v for k, v in GOOD[2].items() if k != "split"}]], None, r"part-1.parquet: columns .* differ from those of .*part-0.parquet"),
        ([GOOD], "*.csv", r"no file matches this pattern"),
        ([GOOD], "part-*", None),
    ],
)
def test_partitioned_log_errors_name_the_file(tmp_path, parts, pattern, message):
    logs = write_parts(tmp_path / "logs", parts)
    if pattern == "part-*":  # a pattern matching a file that is not Parquet
        (logs / "part-x.csv").write_text("query,prompt,reward\n")
        message = r"part-x.csv: not a .parquet file"
    with pytest.raises(LogFormatError, match=message):
        read_logs(str(logs / pattern) if pattern else logs)


def test_an_empty_directory_is_not_a_log(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogFormatError, match=r"empty: a log directory must hold \*.parquet files; found none"):
        read_logs(tmp_path / "empty")

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from oirl.data.importers import PROMPTS, import_prompt_oirl
from oirl.data.importers.download import _SOURCES, download_release, release_files
from oirl.data.importers.prompt_oirl import read_outcomes
from oirl.data.logs import read_logs
from oirl.errors import OirlError

# The README table of ../shared/data: queries per dataset and the paper's split.
EXPECTED = {
    "gsm8k": {"train": 7473, "test": 1000, "distinct": 8473},
    "svamp": {"train": 15000, "test": 4690, "distinct": 3961},
    "mawps": {"train": 6000, "test": 1685, "distinct": 1744},
}


@pytest.mark.parametrize("dataset", EXPECTED)
def test_import_reproduces_the_release_counts(imported_logs, dataset):
    expected = EXPECTED[dataset]
    logs = read_logs(imported_logs / f"{dataset}.parquet")
    queries = logs.drop_duplicates("query_id")
    assert (queries["split"] == "train").sum() == expected["train"]
    assert (queries["split"] == "test").sum() == expected["test"]
    assert queries["query"].nunique() == expected["distinct"]
    assert len(logs) == 6 * (expected["train"] + expected["test"])
    assert sorted(logs["prompt_id"].unique()) == sorted(list(PROMPTS)[:6])

    heldout = read_logs(imported_logs / f"{dataset}_heldout.parquet")
    assert set(heldout["split"]) == {"test"}
    assert len(heldout) == 10 * expected["test"]
    # Held-out line i is query row n_train + i: the ids must line up with the test rows.
    assert set(heldout["query_id"]) == set(queries.loc[queries["split"] == "test", "query_id"])


def test_joined_rows_carry_the_right_texts_and_outcomes(imported_logs):
    gsm8k = read_logs(imported_logs / "gsm8k.parquet").set_index(["query_id", "prompt_id"])
    first = gsm8k.loc[("gsm8k-0", "nan")]
    assert first["query"].startswith("Natalia sold clips to 48 of her friends")
    assert first["prompt"] == "The answer is:" and first["reward"] == 1.0  # line "(0, True)"
    assert gsm8k.loc[("gsm8k-7473", "CoT"), "split"] == "test"
    # Test accuracies quoted in the issue: CoT .240 and nan .248 on the 1,000 test queries.
    test = gsm8k[gsm8k["split"] == "test"].groupby(level="prompt_id")["reward"].mean()
    assert test["CoT"] == pytest.approx(0.240) and test["nan"] == pytest.approx(0.248)

    mawps = read_logs(imported_logs / "mawps.parquet")
    text = mawps.loc[mawps["query_id"] == "mawps-0", "query"].iloc[0]
    assert "number0" not in text and text.startswith("Mary is baking a cake . The recipe wants 8.0 cups")


def test_the_nan_prompt_id_survives_every_format(data_dir, tmp_path):
    for fmt in ("csv", "jsonl"):
        import_prompt_oirl(data_dir, tmp_path / fmt, datasets=("mawps",), fmt=fmt)
        assert "nan" in set(read_logs(tmp_path / fmt / f"mawps.{fmt}")["prompt_id"])


def test_outcome_files_are_checked_line_by_line(tmp_path):
    path = tmp_path / "o.txt"
    path.write_text("(0, True)\n(2, False)\n")
    with pytest.raises(OirlError, match=r"line 2: index 2 out of order"):
        read_outcomes(path, 2)
    path.write_text("(0, True)\n(1, maybe)\n")
    with pytest.raises(OirlError, match=r"line 2: expected '\(index, True\|False\)'"):
        read_outcomes(path, 2)
    path.write_text("(0, True)\n")
    with pytest.raises(OirlError, match="1 lines, expected 2"):
        read_outcomes(path, 2)


def test_a_wrong_data_dir_names_the_missing_file(tmp_path):
    with pytest.raises(OirlError, match=r"missing file .*gsm8k.*train.jsonl"):
        import_prompt_oirl(tmp_path, tmp_path / "out", datasets=("gsm8k",))


def _public_layout(data_dir: Path, root: Path, datasets) -> None:
    """Lay out files as the public repositories do (raw host / repo / branch / path)."""
    for relative in release_files(datasets):
        for local_prefix, (repo, branches, remote_prefix) in _SOURCES.items():
            if relative.startswith(local_prefix + "/"):
                # Serve only the *first* branch for Prompt-OIRL but the second for SVAMP,
                # so the branch fallback is exercised too.
                branch = branches[1] if repo == "arkilpatel/SVAMP" else branches[0]
                target = root / repo / branch / remote_prefix / relative[len(local_prefix) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data_dir / relative, target)


@pytest.fixture
def local_raw_host(data_dir, tmp_path):
    root = tmp_path / "www"
    _public_layout(data_dir, root, ("mawps",))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_then_import_matches_the_local_import(local_raw_host, data_dir, tmp_path):
    raw = download_release(tmp_path / "raw", datasets=("mawps",), base_url=local_raw_host)
    downloaded = import_prompt_oirl(raw, tmp_path / "from_download", datasets=("mawps",))
    local = import_prompt_oirl(data_dir, tmp_path / "from_local", datasets=("mawps",))
    assert [{k: v for k, v in s.items() if k != "file"} for s in downloaded] == [
        {k: v for k, v in s.items() if k != "file"} for s in local
    ]
    assert read_logs(tmp_path / "from_download" / "mawps.parquet").equals(read_logs(tmp_path / "from_local" / "mawps.parquet"))


def test_download_failure_is_a_clear_error(local_raw_host, tmp_path):
    with pytest.raises(OirlError, match=r"could not download .*HTTP 404"):
        download_release(tmp_path / "raw", datasets=("gsm8k",), base_url=local_raw_host)

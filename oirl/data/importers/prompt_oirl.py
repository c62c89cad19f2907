"""Importer for the released LLaMA-2 logs of Prompt-OIRL (Sun et al., ICLR 2024).

The release stores one ``(index, True|False)`` line per query and prompt; the query
texts live in two other repositories (GSM8K; SVAMP/MAWPS folds). This module joins
them exactly as the data README describes and writes, per dataset,

* ``{ds}.<ext>``: the six training prompts on train and test queries,
* ``{ds}_heldout.<ext>``: the ten held-out ``gpt4_*`` prompts on the test queries,

with ``query_id = {ds}-{row}`` and the paper's split in ``split``. The expected counts
of the README table are checked, so a wrong join fails loudly instead of training on
mismatched rows.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from oirl.data.logs import iter_jsonl_objects, write_logs
from oirl.data.schema import validate_logs
from oirl.errors import OirlError

LLM = "llama-2-7b-chat"

#: alias -> prompt text, in the order of the paper (and of the ``critics`` arrays).
PROMPTS: dict[str, str] = {
    "nan": "The answer is:",
    "CoT": "Let's think step by step: ",
    "APE": "Let\u2019s work this out in a step by step way to be sure we have the right answer: ",
    "Dis": "3 experts are discussing the question with a discussion, trying to solve it step by step, "
    "and make sure the result is correct: ",
    "ToT": "Imagine three different experts are answering this question. All experts will write down 1 step "
    "of their thinking, then share it with the group. Then all experts will go on to the next step, etc. "
    "If any expert realises they're wrong at any point then they leave",
    "Decomp": "First, decompose the question into several sub-questions that needs to solve, and then solve "
    "each question step by step: ",
    "gpt4_0": "Approaching this logically, the steps to find the answer are: ",
    "gpt4_1": "Let's break this down into manageable steps to fully understand the problem: ",
    "gpt4_2": "Consider this as a puzzle, each piece contributing to the final answer. Let's place each piece, "
    "one by one: ",
    "gpt4_3": "Three scholars are analyzing this query from various perspectives, working collaboratively to "
    "build a comprehensive answer. Each contributes a step: ",
    "gpt4_4": "Let's solve this like a detective would solve a mystery, gathering clues and building up to the "
    "final solution step by step: ",
    "gpt4_5": "Imagine we're navigating a maze; each decision brings us closer to the center. Let's map our route: ",
    "gpt4_6": "Envision a round table meeting of expert problem solvers. Each participant suggests a step, "
    "building towards a consensus answer: ",
    "gpt4_7": "Like an architect constructing a building, let's design our answer carefully, layer by layer: ",
    "gpt4_8": "As if we are assembling a complex machine, let's put it together piece by piece: ",
    "gpt4_9": "Three wise philosophers are debating this question, each contributing a different aspect of the "
    "answer. Let's follow their discourse: ",
}
TRAINING_PROMPTS = list(PROMPTS)[:6]
HELDOUT_PROMPTS = list(PROMPTS)[6:]
DATASETS = ("gsm8k", "svamp", "mawps")


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset's queries come from and how the paper split them."""

    n_queries: int
    n_train: int  # rows [0, n_train) are train, the rest test

    @property
    def n_test(self) -> int:
        return self.n_queries - self.n_train


LAYOUTS = {
    "gsm8k": DatasetLayout(n_queries=8473, n_train=7473),
    "svamp": DatasetLayout(n_queries=19690, n_train=15000),
    "mawps": DatasetLayout(n_queries=7685, n_train=6000),
}
_SVAMP_FOLDERS = {"svamp": "cv_svamp_augmented", "mawps": "cv_mawps"}
_LINE = re.compile(r"^\(\s*(\d+)\s*,\s*(True|False)\s*\)$")
_PLACEHOLDER = re.compile(r"number(\d+)")


# --------------------------------------------------------------------------- query texts


def load_questions(data_dir: Path, dataset: str) -> list[str]:
    """The question text of every row the logs refer to, in log order."""
    if dataset == "gsm8k":
        train = _read_gsm8k(data_dir / "gsm8k" / "train.jsonl")
        test = _read_gsm8k(data_dir / "gsm8k" / "test.jsonl")[:1000]
        return train + test
    folder = data_dir / "svamp-mawps" / _SVAMP_FOLDERS[dataset]
    questions: list[str] = []
    for fold in range(5):
        questions += _read_svamp_fold(folder / f"fold{fold}" / "train.csv")
    return questions


def _read_gsm8k(path: Path) -> list[str]:
    _require(path)
    questions = []
    for number, record in iter_jsonl_objects(path):
        if not isinstance(record.get("question"), str):
            raise OirlError(f"{path}, line {number}: expected a 'question' text field")
        questions.append(record["question"])
    return questions


def _read_svamp_fold(path: Path) -> list[str]:
    _require(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"Question", "Numbers"} - set(reader.fieldnames or [])
        if missing:
            raise OirlError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return [_fill_numbers(row["Question"], row["Numbers"], path, i) for i, row in enumerate(reader, start=2)]


def _fill_numbers(question: str, numbers: str, path: Path, line: int) -> str:
    """Replace each ``number{i}`` with the i-th entry of ``Numbers`` (one regex pass, so
    ``number1`` never clobbers the start of ``number10``)."""
    values = numbers.split()

    def substitute(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(values):
            raise OirlError(f"{path}, line {line}: {match.group(0)} has no entry in Numbers {numbers!r}")
        return values[index]

    return _PLACEHOLDER.sub(substitute, question)


# --------------------------------------------------------------------------- outcome files


def read_outcomes(path: Path, expected_lines: int) -> list[bool]:
    """Parse a ``(index, True|False)`` file whose indices must run 0, 1, 2, … in order."""
    _require(path)
    outcomes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _LINE.match(line.strip())
        if not match:
            raise OirlError(f"{path}, line {number}: expected '(index, True|False)', got {line[:60]!r}")
        if int(match.group(1)) != number - 1:
            raise OirlError(f"{path}, line {number}: index {match.group(1)} out of order (expected {number - 1})")
        outcomes.append(match.group(2) == "True")
    if len(outcomes) != expected_lines:
        raise OirlError(f"{path}: {len(outcomes)} lines, expected {expected_lines}")
    return outcomes


def _outcome_files(chat_logs: Path, dataset: str, alias: str, layout: DatasetLayout) -> list[tuple[Path, int, int]]:
    """(file, first row it covers, number of lines) for one prompt of one dataset."""
    folder = chat_logs / dataset
    if alias in HELDOUT_PROMPTS:
        return [(folder / f"llama_{dataset}_corr_{alias}.txt", layout.n_train, layout.n_test)]
    if dataset == "gsm8k":  # GSM8K keeps train and test outcomes in separate files
        return [
            (folder / f"llama_gsm8k_corr_{alias}.txt", 0, layout.n_train),
            (folder / f"llama_gsm8k_test_corr_{alias}.txt", layout.n_train, layout.n_test),
        ]
    return [(folder / f"llama_{dataset}_corr_{alias}.txt", 0, layout.n_queries)]


def build_logs(data_dir: str | Path, dataset: str, prompts: list[str]) -> pd.DataFrame:
    """The canonical log frame of ``dataset`` for the given prompt aliases."""
    if dataset not in LAYOUTS:
        raise OirlError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    data_dir = Path(data_dir)
    layout = LAYOUTS[dataset]
    questions = load_questions(data_dir, dataset)
    if len(questions) != layout.n_queries:
        raise OirlError(f"{dataset}: found {len(questions)} questions under {data_dir}, expected {layout.n_queries}")
    chat_logs = data_dir / "prompt-oirl-llama2" / "chat_logs"
    columns: dict[str, list] = {k: [] for k in ("query_id", "query", "prompt_id", "prompt", "reward", "split")}
    for alias in prompts:
        for path, first_row, n_lines in _outcome_files(chat_logs, dataset, alias, layout):
            for offset, correct in enumerate(read_outcomes(path, n_lines)):
                row = first_row + offset
                columns["query_id"].append(f"{dataset}-{row}")
                columns["query"].append(questions[row])
                columns["prompt_id"].append(alias)
                columns["prompt"].append(PROMPTS[alias])
                columns["reward"].append("1" if correct else "0")
                columns["split"].append("train" if row < layout.n_train else "test")
    frame = pd.DataFrame(columns)
    frame["llm"] = LLM
    return validate_logs(frame, source=f"{dataset} import")


def import_prompt_oirl(
    data_dir: str | Path, out_dir: str | Path, *, datasets: tuple[str, ...] = DATASETS, fmt: str = "parquet", force: bool = False,
) -> list[dict]:
    """Import the release under ``data_dir`` into ``out_dir``; returns one summary per file."""
    out_dir = Path(out_dir)
    summaries = []
    for dataset in datasets:
        layout = LAYOUTS.get(dataset)
        for suffix, prompts in (("", TRAINING_PROMPTS), ("_heldout", HELDOUT_PROMPTS)):
            frame = build_logs(data_dir, dataset, prompts)
            _check_counts(frame, dataset, layout, heldout=bool(suffix))
            path = write_logs(frame, out_dir / f"{dataset}{suffix}.{fmt}", force=force)
            queries = frame.drop_duplicates("query_id")
            summaries.append(
                {
                    "file": str(path),
                    "dataset": dataset,
                    "prompts": len(prompts),
                    "rows": len(frame),
                    "queries": len(queries),
                    "train_queries": int((queries["split"] == "train").sum()),
                    "test_queries": int((queries["split"] == "test").sum()),
                    "distinct_texts": int(queries["query"].nunique()),
                }
            )
    return summaries


def _check_counts(frame: pd.DataFrame, dataset: str, layout: DatasetLayout, *, heldout: bool) -> None:
    queries = frame.drop_duplicates("query_id")
    expected = (0, layout.n_test) if heldout else (layout.n_train, layout.n_test)
    found = (int((queries["split"] == "train").sum()), int((queries["split"] == "test").sum()))
    if found != expected:
        raise OirlError(f"{dataset}: the join gave {found} train/test queries, the release has {expected}")


def _require(path: Path) -> None:
    if not path.is_file():
        raise OirlError(f"missing file {path} (is --data-dir the folder that holds prompt-oirl-llama2/, gsm8k/ and svamp-mawps/?)")

"""Importer for CRUXEval input prediction: (model, prompting style) arms with soft rewards.

One log row per (sample, arm): ``query`` is the function source plus the target output
(``code + "\\nassert f(??) == " + output``), ``prompt`` a readable arm description,
``prompt_id`` = ``{model}:{style}``, ``reward`` = n_correct / n_generations (a
fraction: unparseable generations count as wrong), ``llm`` the model, ``cost`` the
default price of one call (below), plus ``style`` and ``n_generations``.

Default cost table (``cost`` column, in US$ per 1,000 calls, i.e. milli-dollars a call):
one call is taken as 600 prompt tokens plus 150 completion tokens with direct
prompting and 600 with step-by-step (cot) prompting, which is why cot arms are dearer.
API models use their public list prices per million tokens (input / output);
open models are priced as hosted open models, $0.02 per million tokens per billion
parameters (Mixtral: its 13B active parameters). Pass ``costs`` (arm id -> cost) to
use other prices.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from oirl.data.logs import iter_jsonl_objects, write_logs
from oirl.data.schema import validate_logs
from oirl.errors import OirlError

PROMPT_TOKENS = 600
COMPLETION_TOKENS = {"direct": 150, "cot": 600}
STYLE_TEXT = {"direct": "direct answer prompting", "cot": "step-by-step (chain-of-thought) prompting"}
# $ per million tokens (input, output), public list prices.
API_PRICES = {
    "gpt-3.5-turbo-0613": (1.5, 2.0),
    "gpt-4-0613": (30.0, 60.0),
    "gpt-4-turbo-2024-04-09": (10.0, 30.0),
    "gpt-4o": (5.0, 15.0),
    "claude-3-opus-20240229": (15.0, 75.0),
}
# Billions of parameters of the open models (active parameters for mixtures of experts).
OPEN_MODEL_BILLIONS = {
    "codellama-7b": 7, "codellama-13b": 13, "codellama-34b": 34,
    "codellama-python-7b": 7, "codellama-python-13b": 13, "codellama-python-34b": 34,
    "codetulu-2-34b": 34, "deepseek-base-1.3b": 1.3, "deepseek-base-6.7b": 6.7, "deepseek-base-33b": 33,
    "deepseek-instruct-1.3b": 1.3, "deepseek-instruct-6.7b": 6.7, "deepseek-instruct-33b": 33,
    "magicoder-ds-7b": 6.7, "mistral-7b": 7, "mixtral-8x7b": 13, "phi-1": 1.3, "phi-1.5": 1.3, "phi-2": 2.7,
    "phind": 34, "starcoderbase-7b": 7, "starcoderbase-16b": 16, "wizard-13b": 13, "wizard-34b": 34,
}
OPEN_PRICE_PER_BILLION = 0.02  # $ per million tokens per billion parameters


def arm_id(model: str, style: str) -> str:
    return f"{model}:{style}"


def arm_description(model: str, style: str) -> str:
    return f"{model} with {STYLE_TEXT[style]}"


def default_cost(model: str, style: str) -> float:
    """Price of one call in milli-dollars (see the module docstring)."""
    if model in API_PRICES:
        price_in, price_out = API_PRICES[model]
    elif model in OPEN_MODEL_BILLIONS:
        price_in = price_out = OPEN_PRICE_PER_BILLION * OPEN_MODEL_BILLIONS[model]
    else:
        raise OirlError(f"no default cost for model {model!r}; pass a --costs file")
    dollars = (PROMPT_TOKENS * price_in + COMPLETION_TOKENS[style] * price_out) / 1e6
    return round(dollars * 1000, 6)


def load_tasks(path: Path) -> dict[str, str]:
    """sample id -> the input-prediction query text."""
    if not path.is_file():
        raise OirlError(f"missing file {path} (is --data-dir the folder holding cruxeval/?)")
    tasks = {}
    for number, record in iter_jsonl_objects(path):
        if not all(isinstance(record.get(k), str) for k in ("id", "code", "output")):
            raise OirlError(f"{path}, line {number}: expected a JSON object with id, code and output texts")
        tasks[record["id"]] = record["code"] + "\nassert f(??) == " + record["output"]
    return tasks


def build_logs(data_dir: str | Path, temperature: float = 0.2, costs: dict[str, float] | None = None) -> pd.DataFrame:
    """The canonical log frame: one row per (sample, arm) at ``temperature``."""
    folder = Path(data_dir) / "cruxeval"
    tasks = load_tasks(folder / "cruxeval.jsonl")
    scored = folder / "input_prediction_scored.csv"
    if not scored.is_file():
        raise OirlError(f"missing file {scored}")
    rows = []
    with scored.open(encoding="utf-8", newline="") as handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            try:
                if abs(float(record["temperature"]) - temperature) > 1e-9:
                    continue
                n, correct = int(record["n_generations"]), int(record["n_correct"])
                model, style, sample = record["model"], record["prompt"], record["sample_id"]
            except (KeyError, ValueError) as exc:
                raise OirlError(f"{scored}, line {line}: malformed row ({exc})") from None
            if n <= 0 or not 0 <= correct <= n:
                raise OirlError(f"{scored}, line {line}: n_correct {correct} with n_generations {n}")
            if style not in STYLE_TEXT:
                raise OirlError(f"{scored}, line {line}: unknown prompting style {style!r}")
            if sample not in tasks:
                raise OirlError(f"{scored}, line {line}: sample {sample!r} is not in cruxeval.jsonl")
            pid = arm_id(model, style)
            rows.append({
                "query_id": sample, "query": tasks[sample], "prompt_id": pid, "prompt": arm_description(model, style),
                "reward": correct / n, "llm": model,
                "cost": costs[pid] if costs and pid in costs else default_cost(model, style),
                "style": style, "n_generations": n,
            })
    if not rows:
        raise OirlError(f"{scored}: no rows at temperature {temperature}")
    frame = pd.DataFrame(rows)
    frame["reward"] = frame["reward"].map(repr)  # validate_logs parses every value from text
    frame["cost"] = frame["cost"].map(repr)
    frame["n_generations"] = frame["n_generations"].astype(str)
    return validate_logs(frame, source=str(scored))


def import_cruxeval(
    data_dir: str | Path, out_dir: str | Path, *, temperature: float = 0.2, fmt: str = "parquet", costs: dict[str, float] | None = None,
    force: bool = False,
) -> dict:
    """Write ``cruxeval_input_t{temperature}.<fmt>`` and return a summary."""
    frame = build_logs(data_dir, temperature, costs)
    n_samples, n_arms = frame["query_id"].nunique(), frame["prompt_id"].nunique()
    if len(frame) != n_samples * n_arms:
        raise OirlError(f"cruxeval: {len(frame)} rows for {n_samples} samples x {n_arms} arms; some arms miss samples")
    path = write_logs(frame, Path(out_dir) / f"cruxeval_input_t{temperature}.{fmt}", force=force)
    return {"file": str(path), "samples": int(n_samples), "arms": int(n_arms), "rows": int(len(frame)),
            "models": int(frame["llm"].nunique()), "mean_reward": float(frame["reward"].mean())}

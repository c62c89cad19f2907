"""Options and input files shared by the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from oirl.errors import OirlError

FORCE_OPTION = click.option("--force", is_flag=True, help="Replace an existing output file even if oirl did not write it.")

CACHE_OPTION = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OIRL_EMBEDDINGS_DIR",
    default="embeddings",
    show_default=True,
    help="Embedding cache directory [env: OIRL_EMBEDDINGS_DIR].",
)


# --------------------------------------------------------------------------- input files


def _names(text: str | None, allowed: tuple[str, ...], default: tuple[str, ...], option: str) -> tuple[str, ...]:
    """Comma-separated names, each one of ``allowed`` (``default`` when not given)."""
    if text is None:
        return default
    chosen = tuple(d.strip() for d in text.split(",") if d.strip())
    unknown = [d for d in chosen if d not in allowed]
    if unknown or not chosen:
        raise OirlError(f"{option}: unknown name(s) {', '.join(unknown) or '(none given)'} (choose from {', '.join(allowed)})")
    return chosen


def read_jsonl_records(path: Path, *, required: tuple[str, ...]) -> list[dict]:
    """JSON objects from a JSONL file, each with non-empty string ``required`` fields."""
    from oirl.data.logs import iter_jsonl_objects

    records = []
    for number, record in iter_jsonl_objects(path):
        for field in required:
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                raise OirlError(f"{path}, line {number}, field {field!r}: missing or empty text")
        records.append(record)
    if not records:
        raise OirlError(f"{path}: no records")
    return records


def read_costs(path: Path) -> dict[str, float]:
    """A JSON object mapping prompt (arm) id -> cost per call (a finite number >= 0)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OirlError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OirlError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OirlError(f"{path}: expected a JSON object mapping prompt id -> cost")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise OirlError(f"{path}, field {key!r}: cost {value!r} is not a finite number >= 0")
    return {str(k): float(v) for k, v in data.items()}


def read_candidates(path: Path, *, arms: bool = False):
    """Candidates from a JSONL file of ``{"prompt_id"?, "prompt", "cost"?}``; with ``arms``
    also ``"model"?`` and ``"params"?`` (:mod:`oirl.recommender.arms`), returned as
    ``(candidates, {prompt_id: arm})``."""
    from oirl.recommender.arms import arm_settings
    from oirl.recommender.recommender import Candidate

    records = read_jsonl_records(path, required=("prompt",))
    for number, record in enumerate(records, start=1):
        cost = record.get("cost")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < float("inf")):
            raise OirlError(f"{path}, record {number}, field 'cost': {cost!r} is not a finite number >= 0")
    candidates = [Candidate(r["prompt"], str(r.get("prompt_id") or ""), r.get("cost")) for r in records]
    if not arms:
        return candidates
    settings = {c.prompt_id: arm_settings(r.get("model"), r.get("params"), where=f"{path}, record {number}")
                for number, (c, r) in enumerate(zip(candidates, records, strict=True), start=1)}
    return candidates, settings

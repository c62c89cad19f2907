"""Importer for Inspect AI eval logs (``.eval`` archives and ``.json`` logs).

Each log is one run of a task: one model, one solver plan, every sample scored (maybe
over several epochs). The logs given (files, or folders of them) merge into one log,
one row per (sample, arm):

* arm = model x task (with its arguments) x solver plan: ``prompt_id`` joins the parts
  that differ between the logs (``mockllm/high:arith(style=cot):chain_of_thought+generate``);
  ``prompt`` the varying parts in full (the solvers with their parameters, such as a
  system message or a prompt template);
* ``query``: the sample's input (a text, or the text of its chat messages);
  ``query_id``: the sample id, matched across logs by id and input;
* ``reward``: the chosen scorer's value (the log's first scorer, or ``scorer``): letter
  grades C/I/P/N as 1/0/0.5/0 (Inspect's own mapping), booleans as 1/0, numbers as
  they are when in [0, 1] and else scaled (``score_range``, or the range seen), then
  averaged over the sample's epochs;
* ``llm``: the model.

``.eval`` files are zip archives; recent Inspect compresses them with Zstandard, which
Python's ``zipfile`` reads only from Python 3.14, so such members are decompressed with
pyarrow's zstd codec (pyarrow is already an oirl dependency).
"""

from __future__ import annotations

import json
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from oirl.data.importers.eval_tools import (
    Arm,
    arm_names,
    check_tool_version,
    content_key,
    number,
    readable_query_ids,
    scale_scores,
    to_log,
)
from oirl.errors import LogFormatError

#: inspect-ai versions whose logs this importer was tested on (oldest, newest).
TESTED_VERSIONS = ("0.3.40", "0.3.285")
#: Log file format versions (the log's ``version`` field) it reads.
LOG_VERSIONS = (1, 2)
#: Inspect's letter grades (``value_to_float``): correct, incorrect, partial, no answer.
LETTER_GRADES = {"C": 1.0, "I": 0.0, "P": 0.5, "N": 0.0}
_ZIP_ZSTANDARD = 93
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip local file header, up to the name and extra lengths


@dataclass(frozen=True)
class _Scored:
    """One scored sample of one arm (one epoch of it)."""

    arm: Arm
    natural_id: str
    key: str  # the sample's identity across logs: its id and input
    query: str
    score: float
    numeric: bool  # a number from the scorer (scaled), not a letter grade or a boolean (already in [0, 1])


@dataclass
class EvalLog:
    """The parts of one log the importer reads: its header and an iterator over its samples."""

    path: Path
    header: dict
    samples: Iterator[tuple[str, dict]]  # (where, sample)


def read_inspect(paths: list[str | Path], *, scorer: str | None = None, score_range: tuple[float, float] | None = None) -> tuple[pd.DataFrame, dict]:
    """(canonical log frame, summary dict) of the given logs (files, or folders holding ``.eval`` / ``.json`` logs)."""
    files = log_files([Path(p) for p in paths])
    records: list[_Scored] = []
    versions: set[str] = set()
    scorers: set[str] = set()
    skipped = 0
    for path in files:
        log = open_log(path)
        version = ((log.header["eval"].get("packages") or {}).get("inspect_ai"))
        check_tool_version("inspect-ai", version, TESTED_VERSIONS, str(path))
        versions.add(str(version or "not recorded"))
        arm = log_arm(log)
        name = scorer or _first_scorer(log)
        scorers.add(name)
        status = log.header.get("status")
        if status != "success":
            warnings.warn(f"{path}: the eval's status is {status!r}, not 'success'; importing the samples it scored", stacklevel=2)
        for where, sample in log.samples:
            value, numeric = _score(sample, name, where)
            if value is None:
                skipped += 1
                continue
            query = _input_text(sample.get("input"), where)
            sample_id = sample.get("id")
            records.append(_Scored(arm, str(sample_id), content_key({"id": sample_id, "input": query}), query, value, numeric))
    if skipped:
        warnings.warn(f"{paths[0] if len(paths) == 1 else 'the logs'}: {skipped} sample(s) have no score from the scorer "
                      "(errors or unscored); left out", stacklevel=2)
    if not records:
        raise LogFormatError(f"{', '.join(map(str, files))}: no scored samples to import")
    scores = pd.Series([r.score for r in records], dtype="float64")
    to_scale = pd.Series([r.numeric for r in records])
    if to_scale.any():
        scores[to_scale] = scale_scores(scores[to_scale], score_range, ", ".join(map(str, files)))
    ids = readable_query_ids([(r.natural_id, r.key) for r in records])
    names = arm_names(r.arm for r in records)
    rows = pd.DataFrame({"query_id": [ids[r.key] for r in records], "query": [r.query for r in records],
                         "prompt_id": [names[r.arm][0] for r in records], "prompt": [names[r.arm][1] for r in records],
                         "llm": [dict(r.arm.parts)["model"] for r in records], "reward": scores.to_numpy()})
    # Epochs of one sample (and repeated runs of one arm) are draws of one arm on one query: their mean is the reward.
    per_query = rows.groupby(["query_id", "prompt_id"], sort=False).agg(
        query=("query", "first"), prompt=("prompt", "first"), llm=("llm", "first"), reward=("reward", "mean"), draws=("reward", "size"))
    frame = to_log(per_query.reset_index().drop(columns="draws").to_dict("records"), ", ".join(map(str, files)))
    draws = sorted(set(per_query["draws"].tolist()))
    found = sorted(versions)
    return frame, {"tool": "inspect-ai", "tool_version": found[0] if len(found) == 1 else found, "logs": len(files),
                   "scorer": sorted(scorers)[0] if len(scorers) == 1 else sorted(scorers),
                   "scores_per_row": draws[0] if len(draws) == 1 else draws, "unscored_samples_left_out": skipped}


def log_files(paths: list[Path]) -> list[Path]:
    """The log files named: files as given, folders by their ``*.eval`` and ``*.json`` files (recursively)."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".eval", ".json")
                           and not p.name.startswith(".") and p.name not in ("logs.json", "listing.json"))
            if not found:
                raise LogFormatError(f"{path}: no Inspect log (.eval or .json file) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise LogFormatError(f"{path}: no such file or folder")
    return files


def open_log(path: Path) -> EvalLog:
    """Read a log's header (and check it); its samples are read as they are iterated."""
    if path.suffix == ".eval":
        header, samples = _open_eval_archive(path)
    elif path.suffix == ".json":
        header = _json(path.read_bytes(), str(path))
        samples = _json_samples(path, header)
    else:
        raise LogFormatError(f"{path}: not an Inspect log (expected a .eval or .json file)")
    if header.get("version") not in LOG_VERSIONS:
        raise LogFormatError(f"{path}, field 'version': log format {header.get('version')!r} is not supported (this importer reads "
                             f"{', '.join(map(str, LOG_VERSIONS))}, written by inspect-ai {TESTED_VERSIONS[0]} to {TESTED_VERSIONS[1]})")
    spec = header.get("eval")
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str) or not isinstance(spec.get("task"), str):
        raise LogFormatError(f"{path}, field 'eval': expected the eval spec with its task and model")
    return EvalLog(path, header, samples)


def log_arm(log: EvalLog) -> Arm:
    """Model x task (with arguments) x solver plan of one log."""
    spec, plan = log.header["eval"], log.header.get("plan") or {}
    steps = plan.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("solver"), str) for s in steps):
        raise LogFormatError(f"{log.path}, field 'plan.steps': expected solver steps with a 'solver' name")
    args = spec.get("task_args") or {}
    if not isinstance(args, dict):
        raise LogFormatError(f"{log.path}, field 'eval.task_args': expected an object of task arguments")
    task = spec["task"] + (f"({', '.join(f'{k}={_short(v)}' for k, v in args.items())})" if args else "")
    solvers = "+".join(s["solver"] for s in steps) or "none"
    plan_text = "\n".join(f"{s['solver']}({', '.join(f'{k}={_text(v)}' for k, v in (s.get('params') or {}).items())})" for s in steps)
    return Arm(parts=(("model", spec["model"]), ("task", task), ("solver", solvers)), texts=(("solver", plan_text or solvers),))


def _short(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _text(value: object) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _first_scorer(log: EvalLog) -> str:
    for entry in (log.header["eval"].get("scorers") or []) + ((log.header.get("results") or {}).get("scores") or []):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            return entry["name"]
    raise LogFormatError(f"{log.path}, field 'eval.scorers': the log names no scorer; name one with --scorer")


def _score(sample: dict, scorer: str, where: str) -> tuple[float | None, bool]:
    """(the sample's value from ``scorer`` as a number, whether it is a plain number to scale); None when it has no score.

    Letter grades map to Inspect's own values and booleans to 1/0; those are rewards already.
    """
    scores = sample.get("scores")
    if not scores:
        return None, False
    if not isinstance(scores, dict):
        raise LogFormatError(f"{where}, field 'scores': expected an object of scores, got {type(scores).__name__}")
    if scorer not in scores:
        raise LogFormatError(f"{where}, field 'scores': no scorer {scorer!r} (scorers: {', '.join(scores)}); choose one with --scorer")
    score = scores[scorer]
    value = score.get("value") if isinstance(score, dict) else None
    if isinstance(value, str) and value.strip().upper() in LETTER_GRADES:
        return LETTER_GRADES[value.strip().upper()], False
    parsed = number(value)
    if parsed is None:
        raise LogFormatError(f"{where}, field 'scores.{scorer}.value': {value!r} is not a grade (C, I, P, N), a boolean or a number")
    return parsed, not isinstance(value, bool)


def _input_text(value: object, where: str) -> str:
    """A sample's input as text: the string, or its chat messages' text (``role: text`` lines when several)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        parts = []
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise LogFormatError(f"{where}, field 'input[{i}]': expected a chat message object")
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "\n".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
            if not isinstance(content, str):
                raise LogFormatError(f"{where}, field 'input[{i}].content': expected text or content parts")
            parts.append((str(message.get("role", "user")), content))
        text = parts[0][1] if len(parts) == 1 else "\n".join(f"{role}: {content}" for role, content in parts)
    else:
        raise LogFormatError(f"{where}, field 'input': expected text or chat messages, got {type(value).__name__}")
    if not text.strip():
        raise LogFormatError(f"{where}, field 'input': empty input")
    return text


# --------------------------------------------------------------------------- files


def _json(data: bytes, where: str) -> dict:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogFormatError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise LogFormatError(f"{where}: expected a JSON object, got {type(document).__name__}")
    return document


def _json_samples(path: Path, log: dict) -> Iterator[tuple[str, dict]]:
    samples = log.get("samples")
    if not isinstance(samples, list):
        raise LogFormatError(f"{path}, field 'samples': expected the list of samples (was the eval run with log_samples off?)")

    def iterate():
        for index, sample in enumerate(samples):
            if not isinstance(sample, dict):
                raise LogFormatError(f"{path}, samples[{index}]: expected a JSON object")
            yield f"{path}, samples[{index}] (id {sample.get('id')!r}, epoch {sample.get('epoch')!r})", sample

    return iterate()


def _open_eval_archive(path: Path) -> tuple[dict, Iterator[tuple[str, dict]]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise LogFormatError(f"{path}: not a readable .eval archive ({exc})") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if "header.json" not in members:
            raise LogFormatError(f"{path}: no header.json in the archive (an unfinished eval?)")
        header = _json(_member_bytes(path, archive, members["header.json"]), f"{path}, member header.json")
        names = sorted(n for n in members if n.startswith("samples/") and n.endswith(".json"))
        samples = [(f"{path}, member {n}", _json(_member_bytes(path, archive, members[n]), f"{path}, member {n}")) for n in names]
    return header, iter(samples)


def _member_bytes(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's content; Zstandard members through pyarrow where this Python's zipfile lacks it."""
    if info.compress_type != _ZIP_ZSTANDARD or sys.version_info >= (3, 14):
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, NotImplementedError, zlib.error) as exc:
            raise LogFormatError(f"{path}, member {info.filename}: cannot be read ({exc})") from None
    import pyarrow as pa

    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise LogFormatError(f"{path}, member {info.filename}: corrupt archive (no local header)")
        handle.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
        compressed = handle.read(info.compress_size)
    try:
        data = pa.decompress(compressed, decompressed_size=info.file_size, codec="zstd", asbytes=True)
    except (OSError, ValueError) as exc:
        raise LogFormatError(f"{path}, member {info.filename}: corrupt Zstandard data ({exc})") from None
    if zlib.crc32(data) != info.CRC:
        raise LogFormatError(f"{path}, member {info.filename}: CRC mismatch (a corrupt archive)")
    return data

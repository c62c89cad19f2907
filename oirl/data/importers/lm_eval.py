"""Importer for lm-evaluation-harness per-sample logs (``lm_eval ... --log_samples --output_path DIR``).

Every run (one model on some tasks) leaves a results file with the model and the task
configs, and one samples file per task with a record per document and filter. All runs
found under DIR merge into one log, one row per (document, arm):

* arm = model x task: ``prompt_id`` joins the parts that differ between the runs
  (``arith_cot``, or ``gpt2:arith_cot`` for ``--model_args pretrained=gpt2``); ``prompt`` is the task's
  template (description + ``doc_to_text``, its few-shot count and, for multiple-choice
  tasks, that choices are scored by likelihood), with the model in front when several;
* ``query``: the document's question (the first of :data:`QUERY_FIELDS` it has, or
  ``query_field``); ``query_id``: ``doc-<doc id>``, matched across tasks by the document's
  content, so a plain and a chain-of-thought variant of one task share their queries
  (a doc id that names different documents in different tasks gets a content hash);
* ``reward``: the task's per-sample metric (its first, or ``metric``) under its first
  filter (or ``filter_name``); it must be a number in [0, 1] (exact_match, acc, ...);
* ``llm``: the model.

Two layouts are read. lm-eval 0.4.3 and later write ``<model>/results_<date>.json``
and ``samples_<task>_<date>.jsonl`` (JSON Lines) per run, several runs of one model in
one folder; 0.4.2 and before write ``results.json`` and ``<model_args>_<task>.jsonl``,
which despite its name holds one indented JSON array, and name no filter per record.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from oirl.data.importers.eval_tools import Arm, arm_names, check_tool_version, content_key, number, readable_query_ids, to_log
from oirl.data.logs import iter_jsonl_objects
from oirl.errors import LogFormatError

#: lm-eval versions whose files this importer was tested on (oldest, newest).
TESTED_VERSIONS = ("0.4.2", "0.4.13")
#: Document fields taken as the query, in this order, unless --query-field says otherwise.
QUERY_FIELDS = ("question", "query", "input", "problem", "prompt", "text", "sentence", "goal", "ctx", "context", "passage")
#: The model_args keys lm-eval itself names a model by (peft and delta before pretrained).
MODEL_NAME_KEYS = ("peft", "delta", "pretrained", "model", "path", "engine")
_RESULTS = re.compile(r"^results_(?P<date>.+)\.json$")
_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")


@dataclass(frozen=True)
class Run:
    """One ``lm_eval`` invocation: its results file, model and the samples file of each task."""

    results_file: Path
    document: dict
    samples: dict[str, Path]  # task -> samples file
    legacy: bool  # the layout of lm-eval 0.4.2 and before

    @property
    def model(self) -> str:
        return model_label(self.document.get("config") or {})

    @property
    def version(self) -> str | None:
        return self.document.get("lm_eval_version")


def read_lm_eval(directory: str | Path, *, metric: str | None = None, filter_name: str | None = None,
                 query_field: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(canonical log frame, summary dict) of every run found under ``directory``."""
    directory = Path(directory)
    runs = find_runs(directory)
    for version in sorted({r.version for r in runs if r.version}):
        check_tool_version("lm-eval", version, TESTED_VERSIONS, str(directory))
    records, chosen = [], {}
    for run in runs:
        for task, path in run.samples.items():
            config = _task_config(run, task)
            task_metric, task_filter = _metric_and_filter(run, task, config, metric, filter_name)
            chosen[task] = {"metric": task_metric, "filter": task_filter}
            arm = Arm(parts=(("model", run.model), ("task", task)), texts=(("task", task_prompt(config, task)),))
            records += [(arm, *r) for r in _task_records(run, task, path, task_metric, task_filter, query_field)]
    ids = readable_query_ids([(natural, key) for _, natural, key, _, _ in records])
    names = arm_names(arm for arm, *_ in records)
    rows = [{"query_id": ids[key], "query": query, "prompt_id": names[arm][0], "prompt": names[arm][1], "reward": reward,
             "llm": dict(arm.parts)["model"]} for arm, _, key, query, reward in records]
    frame = to_log(rows, str(directory))
    versions = sorted({r.version or "before 0.4.3 (not recorded)" for r in runs})
    return frame, {"tool": "lm-eval", "tool_version": versions[0] if len(versions) == 1 else versions, "runs": len(runs),
                   "tasks": chosen}


def find_runs(directory: Path) -> list[Run]:
    """Every run under ``directory`` (recursively), each with the samples file of each of its tasks."""
    if not directory.is_dir():
        raise LogFormatError(f"{directory}: not a directory (give the --output_path folder of 'lm_eval ... --log_samples')")
    runs: list[Run] = []
    claimed: set[Path] = set()
    for results_file in sorted(directory.rglob("*.json")):
        found = _RESULTS.match(results_file.name)
        if found:
            samples = {m["task"]: p for p in sorted(results_file.parent.glob(f"samples_*_{found['date']}.jsonl"))
                       if (m := _SAMPLES.match(p.name)) and m["date"] == found["date"]}
            runs.append(Run(results_file, _load_results(results_file), samples, legacy=False))
        elif results_file.name == "results.json":
            document = _load_results(results_file)
            prefix = re.sub("/|=", "__", _model_args_text((document.get("config") or {}).get("model_args")))
            samples = {task: results_file.parent / f"{prefix}_{task}.jsonl" for task in sorted(document.get("configs") or {})}
            runs.append(Run(results_file, document, {t: p for t, p in samples.items() if p.is_file()}, legacy=True))
        else:
            continue
        if not runs[-1].samples:
            raise LogFormatError(f"{results_file}: no samples file of its run beside it (run lm_eval with --log_samples)")
        claimed.update(runs[-1].samples.values())
    if not runs:
        raise LogFormatError(f"{directory}: no lm-eval results file (results_<date>.json, or results.json before 0.4.3) under it")
    stray = sorted(p for p in directory.rglob("*.jsonl") if p not in claimed)
    if stray:
        warnings.warn(f"{stray[0]}: a samples file of no run found here (its results file is missing or names other "
                      f"tasks); not read{f', nor {len(stray) - 1} more' if len(stray) > 1 else ''}", stacklevel=2)
    return runs


def model_label(config: dict) -> str:
    """The model's name as lm-eval names it (``pretrained=...`` etc.), else ``model(args)``."""
    args = config.get("model_args")
    pairs = dict(args) if isinstance(args, dict) else dict(p.split("=", 1) for p in _model_args_text(args).split(",") if "=" in p)
    for key in MODEL_NAME_KEYS:
        if pairs.get(key):
            return str(pairs[key])
    text = _model_args_text(args)
    return f"{config.get('model') or 'model'}({text})" if text else str(config.get("model") or "model")


def task_prompt(config: dict, task: str) -> str:
    """What distinguishes a task variant's prompting: description, template, shots, scoring."""
    template = config.get("doc_to_text")
    text = f"{config.get('description') or ''}{template if isinstance(template, str) else task}"
    shots = config.get("num_fewshot") or 0
    if shots:
        text += f"\n({shots}-shot)"
    if config.get("output_type") == "multiple_choice":
        text += f"\n(choices {config.get('doc_to_choice')} scored by likelihood)"
    return text


def _model_args_text(args: object) -> str:
    if isinstance(args, dict):
        return ",".join(f"{k}={v}" for k, v in args.items())
    return str(args or "")


def _load_results(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogFormatError(f"{path}: not a readable lm-eval results file: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("configs"), dict):
        raise LogFormatError(f"{path}, field 'configs': expected lm-eval's task configs (is this an lm-eval results file?)")
    return document


def _task_config(run: Run, task: str) -> dict:
    config = run.document["configs"].get(task)
    if not isinstance(config, dict):
        raise LogFormatError(f"{run.results_file}, field 'configs.{task}': no config of task {task!r}, whose samples are in "
                             f"{run.samples[task]}")
    return config


def _metric_and_filter(run: Run, task: str, config: dict, metric: str | None, filter_name: str | None) -> tuple[str, str]:
    metrics = [str(m["metric"]) for m in config.get("metric_list") or [] if isinstance(m, dict) and m.get("metric")]
    filters = filter_names(config)
    if metric is None and not metrics:
        raise LogFormatError(f"{run.results_file}, field 'configs.{task}.metric_list': no metric listed; name one with --metric")
    if filter_name is not None and filter_name not in filters and len(filters) > 1:
        raise LogFormatError(f"{run.results_file}, field 'configs.{task}.filter_list': no filter {filter_name!r} "
                             f"(filters: {', '.join(filters)})")
    return metric or metrics[0], filter_name if filter_name is not None and filter_name in filters else filters[0]


def filter_names(config: dict) -> list[str]:
    """A task's filters in the config's order (lm-eval writes one record per document and filter); ``none`` without any."""
    return [str(f["name"]) for f in config.get("filter_list") or [] if isinstance(f, dict) and f.get("name")] or ["none"]


def _task_records(run: Run, task: str, path: Path, metric: str, filter_name: str, query_field: str | None):
    """(natural id, content key, query text, reward) of each document of one task, under one filter."""
    filters = filter_names(_task_config(run, task))
    seen: dict[int, int] = {}
    occurrences: dict[str, int] = {}
    out = []
    for where, record in _sample_records(path, run.legacy):
        doc_id, doc = record.get("doc_id"), record.get("doc")
        if isinstance(doc_id, bool) or not isinstance(doc_id, int):
            raise LogFormatError(f"{where}, field 'doc_id': expected an integer, got {doc_id!r}")
        if not isinstance(doc, dict):
            raise LogFormatError(f"{where}, field 'doc': expected the document as an object, got {type(doc).__name__}")
        if run.legacy:  # no filter named: records come filter by filter, in the config's order
            repeat = seen[doc_id] = seen.get(doc_id, -1) + 1
            if repeat >= len(filters):
                raise LogFormatError(f"{where}, field 'doc_id': document {doc_id} appears {repeat + 1} times for {len(filters)} filter(s)")
            record_filter = filters[repeat]
        else:
            record_filter = record.get("filter", "none")
        if record_filter != filter_name:
            continue
        reward = _reward(record, metric, where)
        query = _query(doc, query_field, where)
        key = content_key(doc)
        occurrences[key] = occurrences.get(key, 0) + 1  # the same document twice in a task: keep both, in order
        if occurrences[key] > 1:
            key = f"{key}#{occurrences[key]}"
        out.append((f"doc-{doc_id}", key, query, reward))
    expected = ((run.document.get("n-samples") or {}).get(task) or {}).get("effective")
    if isinstance(expected, int) and expected != len(out):
        raise LogFormatError(f"{path}: {len(out)} documents under filter {filter_name!r}, but {run.results_file.name} records "
                             f"{expected} (n-samples.{task}.effective); the samples file is incomplete")
    return out


def _sample_records(path: Path, legacy: bool):
    """(where, record) of a samples file: JSON Lines, or one JSON array before lm-eval 0.4.3."""
    if not legacy:
        for number_, record in iter_jsonl_objects(path):
            yield f"{path}, line {number_}", record
        return
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogFormatError(f"{path}: not valid JSON (lm-eval before 0.4.3 writes one JSON array here): {exc}") from None
    if not isinstance(records, list):
        raise LogFormatError(f"{path}: expected a JSON array of sample records, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise LogFormatError(f"{path}, record {index}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}, record {index}", record


def _reward(record: dict, metric: str, where: str) -> float:
    if metric not in record:
        present = [k for k, v in record.items() if number(v) is not None and k not in ("doc_id",)]
        raise LogFormatError(f"{where}, field {metric!r}: no such metric in the record (numeric fields: {', '.join(present) or 'none'})")
    value = number(record[metric])
    if value is None or not 0.0 <= value <= 1.0:
        raise LogFormatError(f"{where}, field {metric!r}: {record[metric]!r} is not a per-sample score in [0, 1]; "
                             "choose a per-sample metric such as exact_match or acc with --metric")
    return value


def _query(doc: dict, query_field: str | None, where: str) -> str:
    fields = [query_field] if query_field else [f for f in QUERY_FIELDS if f in doc]
    if not fields or fields[0] not in doc:
        raise LogFormatError(f"{where}, field 'doc{'.' + query_field if query_field else ''}': no query field in the document "
                             f"(fields: {', '.join(doc) or 'none'}); name one with --query-field")
    value = doc[fields[0]]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if not text.strip():
        raise LogFormatError(f"{where}, field 'doc.{fields[0]}': empty query text")
    return text

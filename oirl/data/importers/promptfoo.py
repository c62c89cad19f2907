"""Importer for promptfoo's results file (``promptfoo eval --output results.json``, or the
same run's ``results.jsonl`` or ``results.csv``).

promptfoo runs every prompt with every provider on every test case and grades each
output with the test's assertions. One log row per graded result:

* ``prompt_id`` / ``prompt``: the prompt (its label, else ``prompt1``, ``prompt2``, ...
  in config order; its template as text), with the provider in front when the file
  has several providers;
* ``query_id`` = ``test-{testIdx}``; ``query``: the test's vars that the prompt
  templates use (``{{question}}``), one value as is, several as ``name: value`` lines,
  so an expected answer kept in a var the prompts do not use stays out of the query;
* ``reward``: pass/fail (``success``), or with ``reward="score"`` promptfoo's score
  (the weighted mean of the assertion scores), scaled to [0, 1] when it is not;
* ``llm``: the provider's label (else its id); ``cost``: promptfoo's cost of the call,
  when it records one for every result.

Results whose provider failed (promptfoo's failure reason "error", or no grading at
all) are left out with a warning: they say nothing about the prompt.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from oirl.data.importers.eval_tools import Arm, arm_names, check_tool_version, number, scale_scores, to_log
from oirl.errors import LogFormatError

#: promptfoo versions whose results files this importer was tested on (oldest, newest).
TESTED_VERSIONS = ("0.92.2", "0.123.1")
#: The results-summary format versions it reads (``results.version``).
SUMMARY_VERSIONS = (3,)
REWARDS = ("pass", "score")
_FAILURE_ERROR = 2  # promptfoo's ResultFailureReason.ERROR: the provider failed, no grade
_TEMPLATE_VAR = re.compile(r"\{\{-?\s*([A-Za-z_]\w*)")


def read_promptfoo(path: str | Path, *, reward: str = "pass", score_range: tuple[float, float] | None = None,
                   query_vars: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """(canonical log frame, summary dict) of one promptfoo results file: ``--output``
    ``results.json``, ``results.jsonl`` or ``results.csv`` (by its suffix), the same rows
    from each as far as the format records them (see :func:`_read_csv`)."""
    path = Path(path)
    if reward not in REWARDS:
        raise LogFormatError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    suffix = path.suffix.lower()
    run = _read_jsonl(path) if suffix == ".jsonl" else _read_csv(path) if suffix == ".csv" else _read_json(path)
    check_tool_version("promptfoo", run.tool_version, TESTED_VERSIONS, str(path))
    templates = run.templates
    used_vars = query_vars or list(dict.fromkeys(v for raw, _, _ in templates.values() for v in _TEMPLATE_VAR.findall(raw)))
    if not used_vars and not run.templates_known:
        names = sorted({name for _, result in run.results if isinstance(result.get("vars"), dict) for name in result["vars"]})
        if len(names) > 1:  # every var as the query would put an expected answer into it
            raise LogFormatError(f"{path}: this export does not record the prompt templates, so which test vars make the query is "
                                 f"unknown; give them with --query-vars (vars: {', '.join(names)})")

    rows, arms, scores, skipped, graded = [], [], [], 0, 0
    for where, result in run.results:
        if not isinstance(result, dict):
            raise LogFormatError(f"{where}: expected a JSON object, got {type(result).__name__}")
        if _provider_failed(result):
            skipped += 1
            continue
        graded += result.get("gradingResult") is not None
        prompt_index = _index(result, "promptIdx", max(templates) + 1 if templates else 0, where)
        test_index = _index(result, "testIdx", None, where)
        template, prompt_label, prompt_provider = templates[prompt_index]
        provider = _provider_label(result.get("provider", prompt_provider), where)
        variables = result.get("vars", (result.get("testCase") or {}).get("vars"))
        if not isinstance(variables, dict):
            raise LogFormatError(f"{where}, field 'vars': expected an object of test variables, got {type(variables).__name__}")
        row = {"query_id": f"test-{test_index}", "query": _query_text(variables, used_vars, where), "llm": provider,
               "cost": _cost(result, where)}
        if reward == "pass":
            if not isinstance(result.get("success"), bool):
                raise LogFormatError(f"{where}, field 'success': expected true or false, got {result.get('success')!r}")
            row["reward"] = float(result["success"])
        else:
            score = number(result.get("score"))
            if score is None:
                raise LogFormatError(f"{where}, field 'score': expected a number, got {result.get('score')!r}")
            scores.append(score)
        rows.append(row)
        arms.append(Arm(parts=(("provider", provider), ("prompt", prompt_label)), texts=(("prompt", template),)))
    if rows and not graded:
        raise LogFormatError(f"{path}: no result carries a grade (gradingResult); give the tests assertions so that promptfoo grades them")
    if skipped:
        warnings.warn(f"{path}: {skipped} result(s) are provider errors (no grade); left out", stacklevel=2)
    if reward == "score" and rows:
        for row, value in zip(rows, scale_scores(pd.Series(scores, dtype="float64"), score_range, str(path)), strict=True):
            row["reward"] = float(value)
    names = arm_names(arms)
    for row, arm in zip(rows, arms, strict=True):
        row["prompt_id"], row["prompt"] = names[arm]
    costs = [row["cost"] for row in rows]
    if any(c is None for c in costs):
        if any(c is not None for c in costs):
            warnings.warn(f"{path}: promptfoo recorded a cost for some results only; the log has no cost column", stacklevel=2)
        for row in rows:
            del row["cost"]
    frame = to_log(rows, str(path))
    return frame, {"tool": "promptfoo", "tool_version": run.tool_version or "not recorded", "format": suffix.lstrip(".") or "json",
                   "reward": reward, "query_vars": used_vars, "provider_errors_left_out": skipped}


@dataclass
class _Run:
    """One promptfoo run as a results file holds it: each prompt's (template text, arm
    label, provider) by ``promptIdx``, and the results (where, as promptfoo's
    ``EvaluateResult`` objects)."""

    templates: dict[int, tuple[str, str, object]]
    results: list[tuple[str, object]]
    tool_version: str | None = None
    templates_known: bool = True  # False: some prompt's text is only its label (which vars it uses is unknown)


def _read_json(path: Path) -> _Run:
    """``--output results.json``: the summary with its prompt table and every result."""
    document = _load(path)
    summary_block = _field(document, "results", dict, path, "the top level")
    version = summary_block.get("version")
    if version not in SUMMARY_VERSIONS:
        raise LogFormatError(f"{path}, field 'results.version': results format {version!r} is not supported (this importer reads "
                             f"format {', '.join(map(str, SUMMARY_VERSIONS))}, written by promptfoo {TESTED_VERSIONS[0]} to {TESTED_VERSIONS[1]})")
    prompts = _field(summary_block, "prompts", list, path, "results")
    results = _field(summary_block, "results", list, path, "results")
    return _Run(templates={i: _prompt_template(p, i, path) for i, p in enumerate(prompts)},
                results=[(f"{path}, results[{i}]", r) for i, r in enumerate(results)],
                tool_version=(document.get("metadata") or {}).get("promptfooVersion"))


def _read_jsonl(path: Path) -> _Run:
    """``--output results.jsonl``: one result object per line, the same objects as the JSON's
    ``results.results``, with no prompt table. Each prompt's template is its label when
    the label is the template (promptfoo's default), else rebuilt from the rendered
    prompts: the vars whose values every one of them contains become ``{{var}}``."""
    text = _text(path)
    decoder, results, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            break
        line = text.count("\n", 0, at) + 1
        try:
            value, at = decoder.raw_decode(text, at)  # promptfoo 0.92 appends batches without a newline between them
        except json.JSONDecodeError as exc:
            raise LogFormatError(f"{path}, line {line}: not valid JSON: {exc.msg}; give the file written by "
                                 "'promptfoo eval --output results.jsonl'") from None
        results.append((f"{path}, line {line}", value))
    by_prompt: dict[int, list[tuple[str, dict]]] = {}
    for where, result in results:
        if isinstance(result, dict):
            by_prompt.setdefault(_index(result, "promptIdx", None, where), []).append((where, result))
    templates, known = {}, True
    for index, members in sorted(by_prompt.items()):
        where, first = members[0]
        prompt = first.get("prompt")
        if not isinstance(prompt, dict) or not isinstance(prompt.get("raw"), str):
            raise LogFormatError(f"{where}, field 'prompt': expected the prompt promptfoo sent ({{raw, label}})")
        label = prompt.get("label") if isinstance(prompt.get("label"), str) and prompt["label"].strip() else f"prompt{index + 1}"
        if _TEMPLATE_VAR.search(label):
            templates[index] = (label, f"prompt{index + 1}", first.get("provider"))
            continue
        template = _rebuilt_template([r for _, r in members])
        known &= template is not None
        templates[index] = (template or label, label, first.get("provider"))
    return _Run(templates=templates, results=results, templates_known=known)


def _rebuilt_template(results: list[dict]) -> str | None:
    """The template behind the rendered prompts of one prompt's results, or None when it is
    ambiguous: a var is put back as ``{{var}}`` when its value occurs exactly once in every
    rendered prompt, and every result must give the same template."""
    rendered = [(r.get("prompt") or {}).get("raw") for r in results]
    variables = [r.get("vars", (r.get("testCase") or {}).get("vars")) for r in results]
    if not all(isinstance(t, str) for t in rendered) or not all(isinstance(v, dict) for v in variables):
        return None
    as_text = [{k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in vs.items()} for vs in variables]
    names = [n for n in as_text[0] if all(vs.get(n) and text.count(vs[n]) == 1 for vs, text in zip(as_text, rendered, strict=True))]
    if not names:
        return None
    templates = set()
    for vs, text in zip(as_text, rendered, strict=True):
        for name in sorted(names, key=lambda n: -len(vs[n])):  # longest first: a value inside another stays inside it
            text = text.replace(vs[name], "{{" + name + "}}")
        templates.add(text)
    return templates.pop() if len(templates) == 1 else None


_CSV_CELL = re.compile(r"^\[(PASS|FAIL|ERROR)\] \(([^,)]*)")  # promptfoo's cell: "[PASS] (1.00)\n\noutput\n\nPass Reason: ..."
_CSV_PROMPT = re.compile(r"^\[(.*?)\] (.+)$", re.DOTALL)  # a prompt's column: "[provider] label"
_STATUS_REASON = {"PASS": 0, "FAIL": 1, "ERROR": _FAILURE_ERROR}


def _read_csv(path: Path) -> _Run:
    """``--output results.csv``: a row per test case, a column per var, then per prompt a
    column ``[provider] label`` holding ``[PASS] (score) output`` (promptfoo 0.92 to
    0.123; later versions add Status and Score columns, read when present). The CSV
    records no test index (rows are numbered in file order, as promptfoo writes them by
    test), no template (a prompt's text is its label, the template when it was not given
    one) and no cost; scores are rounded to two decimals."""
    try:
        table = list(csv.reader(io.StringIO(_text(path), newline="")))
    except csv.Error as exc:
        raise LogFormatError(f"{path}: not a valid CSV file ({exc})") from None
    if not table:
        raise LogFormatError(f"{path}: empty file; give the file written by 'promptfoo eval --output results.csv'")
    header, body = table[0], table[1:]
    status_columns = "Status" in header
    prompt_columns = [i for i, name in enumerate(header) if _CSV_PROMPT.match(name) and (not status_columns or header[i + 1:i + 2] == ["Status"])]
    if not prompt_columns:
        raise LogFormatError(f"{path}: no prompt column ('[provider] label') in the header; is this promptfoo's results CSV?")
    var_columns = [i for i in range(prompt_columns[0]) if not (status_columns and i == 0 and header[0] == "Description")]
    templates, results = {}, []
    for index, column in enumerate(prompt_columns):
        provider, label = _CSV_PROMPT.match(header[column]).groups()
        templates[index] = (label, f"prompt{index + 1}" if _TEMPLATE_VAR.search(label) else label, provider)
    for number_, row in enumerate(body):
        where = f"{path}, row {number_ + 2}"
        if len(row) != len(header):
            raise LogFormatError(f"{where}: {len(row)} columns, the header has {len(header)}")
        variables = {header[i]: row[i] for i in var_columns}
        for index, column in enumerate(prompt_columns):
            cell = row[column]
            if status_columns:
                status, score, reason = row[column + 1], row[column + 2], row[header.index("Grader Reason", column)]
                if not status:
                    continue  # no result of this prompt for this test
            else:
                if not cell:
                    continue
                found = _CSV_CELL.match(cell)
                if not found:
                    raise LogFormatError(f"{where}, column {header[column]!r}: expected '[PASS] (score) ...' or '[FAIL] ...', got {cell[:40]!r}")
                (status, score), reason = found.groups(), re.search(r"\n(Pass|Fail) Reason: ", cell)
            if status not in _STATUS_REASON:
                raise LogFormatError(f"{where}, column {header[column]!r}: unknown status {status!r} (PASS, FAIL or ERROR)")
            results.append((f"{where}, column {header[column]!r}", {
                "promptIdx": index, "testIdx": number_, "provider": templates[index][2], "vars": variables, "success": status == "PASS",
                "score": _csv_score(score), "failureReason": _STATUS_REASON[status], "gradingResult": {} if reason else None}))
    return _Run(templates=templates, results=results, templates_known=all(_TEMPLATE_VAR.search(t) for t, _, _ in templates.values()))


def _csv_score(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "undefined": promptfoo recorded no score


def _provider_failed(result: dict) -> bool:
    """Whether the provider failed (no output to grade), as opposed to an output that failed its assertions."""
    if "failureReason" in result:  # recent promptfoo: 0 none, 1 assertion, 2 error
        return result["failureReason"] == _FAILURE_ERROR
    return bool(result.get("error")) and not result.get("gradingResult")  # older ones set 'error' for failed assertions too


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a CSV opened and saved by a spreadsheet may carry a byte-order mark
    except (FileNotFoundError, IsADirectoryError):
        raise LogFormatError(f"{path}: no such file (give the file written by 'promptfoo eval --output results.json', "
                             "'.jsonl' or '.csv')") from None
    except UnicodeDecodeError as exc:
        raise LogFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _load(path: Path) -> dict:
    try:
        document = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise LogFormatError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); "
                             "give the file written by 'promptfoo eval --output results.json' (or results.jsonl, results.csv)") from None
    if not isinstance(document, dict):
        raise LogFormatError(f"{path}: expected a JSON object (promptfoo's results file), got {type(document).__name__}")
    return document


def _field(block: dict, name: str, kind: type, path: Path, where: str):
    value = block.get(name)
    if not isinstance(value, kind):
        raise LogFormatError(f"{path}, field {name!r} of {where}: expected {'an object' if kind is dict else 'a list'}, "
                             f"got {type(value).__name__}; is this promptfoo's results file?")
    return value


def _prompt_template(prompt: object, index: int, path: Path) -> tuple[str, str, object]:
    """(template, label for the arm id, provider) of ``results.prompts[index]``."""
    where = f"{path}, results.prompts[{index}]"
    if not isinstance(prompt, dict) or not isinstance(prompt.get("raw"), str) or not prompt["raw"].strip():
        raise LogFormatError(f"{where}, field 'raw': expected the prompt's template text")
    label = prompt.get("label")
    return prompt["raw"], label if isinstance(label, str) and label.strip() and label != prompt["raw"] else f"prompt{index + 1}", prompt.get("provider")


def _index(result: dict, name: str, size: int | None, where: str) -> int:
    value = result.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (size is not None and value >= size):
        expected = f"an index below {size}" if size is not None else "an index >= 0"
        raise LogFormatError(f"{where}, field {name!r}: expected {expected}, got {value!r}")
    return value


def _provider_label(provider: object, where: str) -> str:
    if isinstance(provider, str) and provider.strip():
        return provider
    if isinstance(provider, dict):
        for key in ("label", "id"):
            if isinstance(provider.get(key), str) and provider[key].strip():
                return provider[key]
    raise LogFormatError(f"{where}, field 'provider': expected a provider id or {{id, label}}, got {provider!r}")


def _query_text(variables: dict, names: list[str], where: str) -> str:
    names = names or sorted(variables)  # prompts that name no var (functions, files): every var is the query
    missing = [n for n in names if n not in variables]
    if missing:
        raise LogFormatError(f"{where}, field 'vars': no var {missing[0]!r} (vars: {', '.join(sorted(variables)) or 'none'})")
    values = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in (variables[n] for n in names)]
    return values[0] if len(values) == 1 else "\n".join(f"{n}: {v}" for n, v in zip(names, values, strict=True))


def _cost(result: dict, where: str) -> float | None:
    value = result.get("cost", (result.get("response") or {}).get("cost"))
    if value is None:
        return None
    cost = number(value)
    if cost is None or cost < 0 or isinstance(value, bool):
        raise LogFormatError(f"{where}, field 'cost': expected a number >= 0, got {value!r}")
    return cost

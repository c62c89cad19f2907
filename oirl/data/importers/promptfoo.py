"""Importer for promptfoo's results file (``promptfoo eval --output results.json``).

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

import json
import re
import warnings
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
    """(canonical log frame, summary dict) of one promptfoo results file."""
    path = Path(path)
    if reward not in REWARDS:
        raise LogFormatError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    document = _load(path)
    summary_block = _field(document, "results", dict, path, "the top level")
    version = summary_block.get("version")
    if version not in SUMMARY_VERSIONS:
        raise LogFormatError(f"{path}, field 'results.version': results format {version!r} is not supported (this importer reads "
                             f"format {', '.join(map(str, SUMMARY_VERSIONS))}, written by promptfoo {TESTED_VERSIONS[0]} to {TESTED_VERSIONS[1]})")
    tool_version = (document.get("metadata") or {}).get("promptfooVersion")
    check_tool_version("promptfoo", tool_version, TESTED_VERSIONS, str(path))
    prompts = _field(summary_block, "prompts", list, path, "results")
    results = _field(summary_block, "results", list, path, "results")
    templates = [_prompt_template(p, i, path) for i, p in enumerate(prompts)]
    used_vars = query_vars or list(dict.fromkeys(v for raw, _, _ in templates for v in _TEMPLATE_VAR.findall(raw)))

    rows, arms, scores, skipped, graded = [], [], [], 0, 0
    for index, result in enumerate(results):
        where = f"{path}, results[{index}]"
        if not isinstance(result, dict):
            raise LogFormatError(f"{where}: expected a JSON object, got {type(result).__name__}")
        if _provider_failed(result):
            skipped += 1
            continue
        graded += result.get("gradingResult") is not None
        prompt_index = _index(result, "promptIdx", len(templates), where)
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
    return frame, {"tool": "promptfoo", "tool_version": tool_version or "not recorded", "reward": reward,
                   "query_vars": used_vars, "provider_errors_left_out": skipped}


def _provider_failed(result: dict) -> bool:
    """Whether the provider failed (no output to grade), as opposed to an output that failed its assertions."""
    if "failureReason" in result:  # recent promptfoo: 0 none, 1 assertion, 2 error
        return result["failureReason"] == _FAILURE_ERROR
    return bool(result.get("error")) and not result.get("gradingResult")  # older ones set 'error' for failed assertions too


def _load(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise LogFormatError(f"{path}: no such file (give the file written by 'promptfoo eval --output results.json')") from None
    except UnicodeDecodeError as exc:
        raise LogFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise LogFormatError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); "
                             "give the JSON file written by 'promptfoo eval --output results.json'") from None
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

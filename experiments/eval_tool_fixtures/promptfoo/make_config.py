"""Write promptfooconfig.yaml: 2 prompts x 2 providers (mock skills) x the arithmetic questions.

Each test grades the last number of the output with a JavaScript assertion: score 1 when
right, 0.5 when off by one, else 0, passing at 1. ``answer`` is a var the prompts do not
use (the expected answer, as promptfoo suites usually carry it).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from arith import questions  # noqa: E402

# Several lines: promptfoo runs a multi-line value as a function body (one line as an expression).
GRADE = """const m = String(output).match(/-?\\d+/g);
const got = m ? Number(m[m.length - 1]) : NaN;
const want = Number(context.vars.answer);
return got === want ? 1 : Math.abs(got - want) === 1 ? 0.5 : 0;
"""


def main() -> None:
    config = {
        "description": "made-up arithmetic, plain vs step-by-step prompting, two mock skills",
        "prompts": [
            {"id": "plain", "label": "plain", "raw": "Question: {{question}}\nAnswer with the number only."},
            {"id": "cot", "label": "step-by-step", "raw": "Question: {{question}}\nLet's think step by step, then end with 'The answer is N.'"},
        ],
        "providers": [
            {"id": "file://provider.py", "label": "mock-high", "config": {"skill": "high"}},
            {"id": "file://provider.py", "label": "mock-low", "config": {"skill": "low"}},
        ],
        "defaultTest": {"assert": [{"type": "javascript", "value": GRADE, "threshold": 1}]},
        "tests": [{"description": q["id"], "vars": {"question": q["question"], "answer": q["answer"]}} for q in questions()],
    }
    # JSON is valid YAML; promptfoo reads either.
    sys.stdout.write(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Made-up arithmetic questions and a deterministic mock model, shared by the three eval tools.

The fixtures under tests/fixtures/{promptfoo,lm_eval,inspect} are written by the real
tools (see experiments/make_eval_tool_fixtures.sh); what differs between them is only
the tool. The mock model answers each question right or wrong by a fixed rule that
depends on the question, the prompting style it sees and its own skill, so the logs
carry real per-query, per-arm differences:

* plain prompting is right on additions and subtractions, wrong on most products;
* step-by-step prompting is right on products and subtractions, wrong on additions
  whose sum is odd;
* choosing among listed answers (the multiple-choice variant) is wrong when the sum of
  the operands is a multiple of 4, right otherwise;
* the ``low`` skill model is also wrong whenever the first operand exceeds 60;
* asked the same prompt again (a second epoch), the model is wrong when the second
  operand is a multiple of 5, so repeated samples of one question can disagree;
* a wrong answer is off by one (a near miss) when the first operand is even, else off by 7.

Run as a script it writes the questions as JSONL (id, question, answer, choices, label) to stdout.
"""

from __future__ import annotations

import json
import random
import re
import sys

N_QUESTIONS = 24
_QUESTION = re.compile(r"What is (\d+) ([+\-*]) (\d+)\?")


def questions(n: int = N_QUESTIONS, seed: int = 16) -> list[dict]:
    """n questions {id, question, answer, choices, label}, the same on every machine.

    ``choices`` lists the right answer and the mock's two kinds of wrong answer (off by
    one and off by 7) plus one more, rotated by the question number; ``label`` is the
    index of the right one.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        op = "+-*"[i % 3]
        a, b = rng.randint(2, 99), rng.randint(2, 12 if op == "*" else 99)
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        options = [answer, answer + 1, answer + 7, answer - 3]
        shift = i % 4
        options = options[shift:] + options[:shift]
        out.append({"id": f"q{i:02d}", "question": f"What is {a} {op} {b}?", "answer": str(answer),
                    "choices": [str(o) for o in options], "label": options.index(answer)})
    return out


def style_of(prompt: str) -> str:
    """'cot' when the prompt asks to think step by step, 'mc' when it offers choices, else 'plain'."""
    lowered = prompt.lower()
    if "step by step" in lowered or "step-by-step" in lowered:
        return "cot"
    if "choices:" in lowered:
        return "mc"
    return "plain"


def is_right(a: int, op: str, b: int, style: str, skill: str) -> bool:
    if skill == "low" and a > 60:
        return False
    if style == "cot":
        return not (op == "+" and (a + b) % 2 == 1)
    if style == "mc":
        return (a + b) % 4 != 0
    return op != "*" or b <= 3


def mock_answer(prompt: str, skill: str = "high", attempt: int = 1) -> str:
    """The mock model's final answer to the (last) question found in ``prompt``, on its ``attempt``-th try."""
    found = _QUESTION.findall(prompt)
    if not found:
        return "I do not know."
    a, op, b = found[-1]
    a, b = int(a), int(b)
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    if is_right(a, op, b, style_of(prompt), skill) and not (attempt > 1 and b % 5 == 0):
        return str(answer)
    return str(answer + (1 if a % 2 == 0 else 7))


if __name__ == "__main__":
    for record in questions():
        sys.stdout.write(json.dumps(record) + "\n")

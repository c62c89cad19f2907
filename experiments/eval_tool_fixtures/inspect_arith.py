"""Inspect AI task over the made-up arithmetic questions (see arith.py), two prompting styles.

``arith(style="plain")`` sends the question as is; ``arith(style="cot")`` wraps it in
Inspect's chain-of-thought template. Two scorers grade the final answer: ``near_match``
gives C (right), P (off by one) or I (wrong), ``match(numeric=True)`` gives C or I.
"""

from __future__ import annotations

import re

from arith import questions
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import CORRECT, INCORRECT, PARTIAL, Score, Target, accuracy, match, scorer
from inspect_ai.solver import TaskState, chain_of_thought, generate

# Inspect's own chain-of-thought template, spelled out so that the mock of older versions
# can precompute its answers (recent versions hand the mock the messages themselves).
COT_TEMPLATE = """
{prompt}

Before answering, reason in a step-by-step manner as to get the right answer. Provide your answer at the end on its own line in the form "ANSWER: $ANSWER" (without quotes) where $ANSWER is the answer to the question.
"""


@scorer(metrics=[accuracy()])
def near_match():
    async def score(state: TaskState, target: Target) -> Score:
        found = re.findall(r"-?\d+", state.output.completion)
        answer = found[-1] if found else ""
        if answer == target.text:
            value = CORRECT
        elif answer and abs(int(answer) - int(target.text)) == 1:
            value = PARTIAL
        else:
            value = INCORRECT
        return Score(value=value, answer=answer)

    return score


@task
def arith(style: str = "plain") -> Task:
    dataset = [Sample(id=q["id"], input=q["question"], target=q["answer"]) for q in questions()]
    solver = [chain_of_thought(COT_TEMPLATE), generate()] if style == "cot" else [generate()]
    return Task(dataset=dataset, solver=solver, scorer=[near_match(), match(numeric=True)])

"""An application on oirl's HTTP service: ask for the prompt, call the LLM, send the outcome back.

    oirl serve models/gsm8k --decisions logs/decisions.sqlite &
    python experiments/example_app.py --base-url http://127.0.0.1:8000 --n 50

The LLM is a stand-in (:func:`stand_in_llm`): a deterministic toy that "solves" simple
arithmetic questions and errs more or less often depending on the kind of question and
the style of the prompt — a direct prompt suits one-step sums, a step-by-step prompt
multi-step word problems. Per question the app asks oirl which prompt to use, calls the
stand-in with it, checks the answer and sends the reward (1 right, 0 wrong) to
``/v1/feedback``; ``oirl export-decisions`` then turns those into a log to learn from.
Because the stand-in is deterministic, the summary also says how the bundle's default
prompt would have done on the same questions. Needs a server started with
``--decisions`` (otherwise there is no decision to send the outcome for).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from oirl.client import Client, OirlClientError  # noqa: E402

# How often the stand-in is right, by the kind of question and the style of the prompt.
ACCURACY = {
    ("one step", "direct"): 0.92, ("one step", "step by step"): 0.80, ("one step", "experts"): 0.70,
    ("multi step", "direct"): 0.35, ("multi step", "step by step"): 0.75, ("multi step", "experts"): 0.60,
}


@dataclass(frozen=True)
class Question:
    text: str
    kind: str  # "one step" or "multi step"
    answer: int


def make_questions(n: int, seed: int) -> list[Question]:
    """``n`` distinct arithmetic questions, alternating one-step sums and multi-step word problems."""
    rng = random.Random(seed)
    names, things = ["Tom", "Ana", "Sam", "Mia", "Raj", "Lea"], ["apples", "marbles", "stamps", "pencils", "shells"]
    questions: dict[str, Question] = {}
    while len(questions) < n:
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        if len(questions) % 2 == 0:
            q = Question(f"What is {a} plus {b}?", "one step", a + b)
        else:
            name, thing = rng.choice(names), rng.choice(things)
            q = Question(f"{name} has {a} {thing}, buys {c} bags of {b} {thing} each and gives away {a // 2}. "
                         f"How many {thing} does {name} have now?", "multi step", a + c * b - a // 2)
        questions.setdefault(q.text, q)
    return list(questions.values())


def prompt_style(prompt: str) -> str:
    text = prompt.lower()
    return "experts" if "expert" in text else "step by step" if "step" in text else "direct"


def stand_in_llm(question: Question, prompt: str) -> int:
    """The stand-in's answer to ``question`` under ``prompt``: right with the probability
    ACCURACY gives, else off by a little; the same inputs always give the same answer."""
    digest = hashlib.blake2b(f"{prompt}\x00{question.text}".encode(), digest_size=8).digest()
    draw = int.from_bytes(digest, "big") / 2**64
    if draw < ACCURACY[question.kind, prompt_style(prompt)]:
        return question.answer
    return question.answer + 1 + int(draw * 1000) % 3


def run(client: Client, questions: list[Question]) -> dict:
    """Recommend, call the stand-in, send the reward, per question; the summary as a dict."""
    prompts = client.prompts()
    default = next(p.prompt for p in prompts.prompts if p.prompt_id == prompts.default_prompt_id)
    served: Counter[str] = Counter()
    right = default_right = recorded = duplicates = 0
    policy = None
    for question in questions:
        rec = client.recommend(question.text)
        policy = rec.policy
        reward = float(stand_in_llm(question, rec.prompt) == question.answer)
        result = client.feedback(rec, reward)
        served[rec.prompt_id] += 1
        right += int(reward)
        default_right += int(stand_in_llm(question, default) == question.answer)
        recorded += result.recorded
        duplicates += result.duplicate
    return {"questions": len(questions), "model_version": prompts.model_version, "policy": policy,
            "right with oirl's prompt": right, "right with the default prompt": default_right,
            "default prompt": prompts.default_prompt_id, "feedback recorded": recorded, "duplicates": duplicates,
            "prompts served": dict(served.most_common())}


def summary(report: dict, base_url: str) -> str:
    n, oirl, default = report["questions"], report["right with oirl's prompt"], report["right with the default prompt"]
    served = ", ".join(f"{p} {k}" for p, k in report["prompts served"].items())
    return "\n".join([
        f"{n} questions against {base_url} (model {report['model_version']}, policy {report['policy']})",
        f"  right with oirl's prompt: {oirl} ({oirl / n:.0%})",
        f"  right with the default prompt ({report['default prompt']}) on the same questions: {default} ({default / n:.0%})",
        f"  feedback recorded: {report['feedback recorded']} ({report['duplicates']} duplicates)",
        f"  prompts served: {served}",
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the oirl service (default: %(default)s)")
    parser.add_argument("--n", type=int, default=50, help="questions to answer (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("OIRL_API_KEY"), help="the server's key (default: $OIRL_API_KEY)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the questions (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        with Client(args.base_url, api_key=args.api_key) as client:
            report = run(client, make_questions(args.n, args.seed))
    except (OirlClientError, ValueError) as exc:  # ValueError: a --base-url that is no http(s) address
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(report, indent=2) if args.json else summary(report, args.base_url))
    return report


if __name__ == "__main__":
    main()

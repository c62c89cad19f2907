"""Run the arithmetic task with Inspect AI's mock model: 2 skills x 2 styles, one log each.

usage: python run_inspect.py LOG_DIR {eval,json} [--epochs N]

``mockllm/<skill>`` answers by arith.mock_answer, so the runs are offline and
deterministic. Recent inspect-ai versions take the mock's custom outputs as a callable
of the messages it is sent; older ones (before callables) take an iterable, so there
the answers are precomputed in dataset order and samples run one at a time. Either
way every logged answer is checked against the rule afterwards.
"""

from __future__ import annotations

import argparse
import inspect

from arith import mock_answer, questions
from inspect_ai import eval as inspect_eval
from inspect_ai.model import ModelOutput, get_model
from inspect_ai.model._providers.mockllm import MockLLM
from inspect_arith import COT_TEMPLATE, arith

CALLABLE_OUTPUTS = "Callable" in str(inspect.signature(MockLLM.__init__).parameters["custom_outputs"].annotation)


def output(skill: str, prompt: str, attempt: int = 1) -> ModelOutput:
    result = ModelOutput.from_content(model=skill, content=f"ANSWER: {mock_answer(prompt, skill, attempt)}")
    if CALLABLE_OUTPUTS:
        from inspect_ai.model import ModelUsage

        # Token counts given here: left unset, recent mocks count them with tiktoken, which downloads its tables.
        result.usage = ModelUsage(input_tokens=len(prompt.split()), output_tokens=2, total_tokens=len(prompt.split()) + 2)
    return result


def mock_model(skill: str, style: str, epochs: int):
    if CALLABLE_OUTPUTS:
        attempts: dict[str, int] = {}  # prompt -> calls so far: the n-th call is the n-th epoch

        def respond(messages, *_):
            prompt = messages[-1].text
            attempts[prompt] = attempts.get(prompt, 0) + 1
            return output(skill, prompt, attempts[prompt])

        return get_model(f"mockllm/{skill}", custom_outputs=respond)
    template = COT_TEMPLATE if style == "cot" else "{prompt}"
    # Sample by sample, each one's epochs in turn (as Inspect runs them with max_samples=1).
    prompts = [(template.format(prompt=q["question"]), epoch) for q in questions() for epoch in range(1, epochs + 1)]
    return get_model(f"mockllm/{skill}", custom_outputs=[output(skill, p, epoch) for p, epoch in prompts])


def check(log, skill: str) -> None:
    """Every logged completion is the rule's answer to the prompt the model was sent."""
    for sample in log.samples:
        expected = f"ANSWER: {mock_answer(sample.messages[-2].text, skill, sample.epoch)}"
        if sample.output.completion != expected:
            raise SystemExit(f"sample {sample.id} epoch {sample.epoch}: logged {sample.output.completion!r}, expected {expected!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_dir")
    parser.add_argument("log_format", choices=["eval", "json"])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    options = {} if args.log_format == "json" and not CALLABLE_OUTPUTS else {"log_format": args.log_format}
    for skill in ("high", "low"):
        for style in ("plain", "cot"):
            [log] = inspect_eval(arith(style=style), model=mock_model(skill, style, args.epochs), log_dir=args.log_dir,
                                 epochs=args.epochs, max_samples=1, max_connections=1, **options)
            if log.status != "success":
                raise SystemExit(f"{skill}/{style}: the eval ended with status {log.status}: {log.error}")
            check(log, skill)


if __name__ == "__main__":
    main()

"""lm-evaluation-harness's own command line, with an offline mock model registered first.

usage: python run_lm_eval.py <the usual lm_eval arguments> --model arith-mock --model_args skill=high

The model ``arith-mock`` answers by arith.mock_answer: generate_until returns the
number (the step-by-step variant wraps it in 'The answer is N.'), loglikelihood puts
its highest score on the choice equal to that answer. Everything else (task loading
from --include_path, scoring, the --log_samples files) is the harness's own code.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

from arith import mock_answer, style_of


class _ExactMatch:
    """Stand-in for the Hub's ``exact_match`` metric script (string equality, as the tasks here ask)."""

    def compute(self, references, predictions, **options):
        if options:
            raise NotImplementedError(f"options {sorted(options)} are not supported offline")
        return {"exact_match": sum(r == p for r, p in zip(references, predictions, strict=True)) / len(references)}


def _offline_exact_match() -> None:
    """lm-eval before 0.4.3 fetches the exact_match metric script from the Hugging Face Hub
    when it is imported; offline, this stands in a local one that computes the same."""
    import evaluate

    hub_load = evaluate.load
    evaluate.load = lambda name, *args, **kwargs: _ExactMatch() if name == "exact_match" else hub_load(name, *args, **kwargs)


if tuple(int(p) for p in version("lm_eval").split(".")[:3]) < (0, 4, 3):
    _offline_exact_match()

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402


@register_model("arith-mock")
class ArithMock(LM):
    def __init__(self, skill: str = "high", **_: object) -> None:
        super().__init__()
        self.skill = skill

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ArithMock:
        args = dict(part.split("=", 1) for part in arg_string.split(",") if part)
        return cls(**args)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context = request.args[0]
            answer = mock_answer(context, self.skill)
            out.append(f" Adding up the parts. The answer is {answer}." if style_of(context) == "cot" else answer)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            picked = continuation.strip() == mock_answer(context, self.skill)
            out.append((-0.1 if picked else -5.0, picked))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("arith-mock scores choices and generates only")


if __name__ == "__main__":
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:  # very old harnesses
        from lm_eval.__main__ import main as cli_evaluate
    sys.exit(cli_evaluate())

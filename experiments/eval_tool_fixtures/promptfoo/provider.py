"""promptfoo Python provider: the offline arithmetic mock of ../arith.py.

``config.skill`` picks the mock's skill. The reply carries a made-up cost (in US$,
0.2 milli-dollars per 1,000 prompt characters plus a fixed 0.05 per call) so that the
results file records one, as it does for priced API providers.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.join(_HERE, "..")]  # arith.py: beside this file in a run folder, else one up

from arith import mock_answer, style_of  # noqa: E402


def call_api(prompt, options, context):
    skill = (options.get("config") or {}).get("skill", "high")
    answer = mock_answer(prompt, skill)
    output = f"Adding up the parts. The answer is {answer}." if style_of(prompt) == "cot" else answer
    cost = round(0.00005 + 0.0000002 * len(prompt), 8)
    return {"output": output, "cost": cost, "tokenUsage": {"prompt": len(prompt.split()), "completion": len(output.split()),
                                                           "total": len(prompt.split()) + len(output.split())}}

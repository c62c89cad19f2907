"""The loop learns: serve, take feedback, retrain with --incumbent, reload — beside Vowpal Wabbit.

    python experiments/bench_loop.py --data-dir ../shared/data [--datasets mawps,gsm8k,svamp] [--rounds 6]

The same as ``oirl reproduce --benchmark loop`` (see oirl/reproduce/loop.py for what a
round does): a full-information log is the environment; every round serves each
training question once through ``oirl serve`` with exploration and 8 concurrent clients,
answers each decision with the logged reward, exports, retrains and reloads. Writes
loop_<dataset>.{csv,md,png} and loop.json under experiments/results/loop/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oirl.reproduce.loop import DEFAULT_EXPLORE, reproduce_loop


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--datasets", default="mawps,gsm8k,svamp")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--explore", default=DEFAULT_EXPLORE, help="The service's exploration, as for 'oirl serve --explore'.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cv-groups", default=None, choices=["text", "instance"], help="'oirl train --cv-groups' each round (default: per dataset, see LOOP_CV_GROUPS).")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"))
    parser.add_argument("--limit", type=int, default=None, help="Keep the first N training and N test instances (toy size).")
    parser.add_argument("--no-full-information", action="store_true", help="Skip training oirl on the full log (a reference).")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/loop"))
    args = parser.parse_args(argv)
    return reproduce_loop(args.data_dir, args.out, datasets=args.datasets.split(","), rounds=args.rounds, explore=args.explore,
                          clients=args.clients, cv_groups=args.cv_groups, cache_dir=args.cache_dir, embedder=args.embedder,
                          limit=args.limit, full_information=not args.no_full_information)


if __name__ == "__main__":
    main()

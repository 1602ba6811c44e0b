"""Intent classifier speed and accuracy: sentences per second on one core over the labelled sets.

    python -m bench.intents [--repeat 5]

The process is pinned to one core and timed in CPU time. Every line of tests/data/intents_*.tsv
is classified in its dialog state; "first pass" starts with an empty per-word cache. The
holdout's figure is its accuracy only: its lines are never printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rtcore.intents.base import read_labelled
from rtcore.intents.classifier import default_classifier

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SETS = ("intents_test.tsv", "intents_dev.tsv", "intents_holdout.tsv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="passes over each set (default 5)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    classifier = default_classifier()
    print(f"{'set':<22} {'lines':>6} {'accuracy':>9} {'sentences/s':>12} {'ms/sentence':>12} {'first pass/s':>13}")
    for name in SETS:
        rows = read_labelled(DATA / name)
        classifier._token_vector.cache_clear()  # the first pass sees every word for the first time
        started = time.process_time()
        correct = sum(classifier.classify(text, state).intent == intent for state, text, intent in rows)
        cold = len(rows) / (time.process_time() - started)
        started = time.process_time()
        for _ in range(args.repeat):
            for state, text, _intent in rows:
                classifier.classify(text, state)
        cpu = time.process_time() - started
        rate = len(rows) * args.repeat / cpu
        print(f"{name:<22} {len(rows):>6} {correct / len(rows):>9.1%} {rate:>12.0f} {1000 / rate:>12.3f} {cold:>13.0f}")


if __name__ == "__main__":
    main()

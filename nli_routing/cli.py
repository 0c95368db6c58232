"""The ``nli-routing`` command line: small utilities around the library.

    nli-routing generate-sci --out data/sci_synthetic      # the project's implicative data
    nli-routing list                                       # registered learners and recipe methods
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _list(_: argparse.Namespace) -> None:
    from .routing import EXPLORATION_PRESETS, LEARNERS
    from .training.experiment import METHODS

    print("learners:    " + ", ".join(sorted(LEARNERS)))
    print("exploration: " + ", ".join(f"{k} {v.to_dict()}" for k, v in EXPLORATION_PRESETS.items()))
    print("SCI methods: " + ", ".join(sorted(METHODS)))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nli-routing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate-sci", help="generate SCI-style implicative data (see --help)", add_help=False)
    sub.add_parser("list", help="list learners, exploration presets and SCI methods").set_defaults(func=_list)
    if argv and argv[0] == "generate-sci":
        from .data.synthetic import main as generate

        generate(argv[1:])
        return
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

"""What every recipe does first, written once: parse the flags into the recipe's dataclasses (with its
training defaults), answer a bad flag or bad data in one line, set up logging.

    parser, (recipe, data_args, model_cfg, train_cfg) = parse_recipe(
        (RecipeArgs, DataArgs, NLIModelConfig, TrainConfig), RECIPE_TRAIN_DEFAULTS, argv)
    ...
    parser.error(f"{path}: line 3: ...")    # one line on stderr, exit status 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from transformers import HfArgumentParser

__all__ = ["RecipeParser", "check_model_path", "parse_recipe", "setup_logging"]

#: libraries whose INFO lines drown a recipe's own
NOISY_LOGGERS = ("datasets", "httpx", "urllib3")


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one line, ``<prog>: error: <message> (--help lists the flags)``,
    with exit status 2, instead of argparse's usage dump of every flag before the message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def check_model_path(flag: str, path: str | None) -> None:
    """A pretrained model given as a local path (``/``, ``./``, ``../``, ``~``) must be a folder; anything else
    is a Hub id, left to the Hub (a ``ValueError`` naming the flag otherwise)."""
    if path and path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().is_dir():
        raise ValueError(f"{flag} {path}: no such folder (a local path must be a model folder; anything else is "
                         "read as a Hub id)")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _take_preset(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--preset NAME`` (or ``--preset=NAME``) out of ``argv``: (NAME or None, the other arguments)."""
    rest, name, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--preset":
            if i + 1 >= len(argv):
                raise ValueError("--preset needs a name")
            name, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--preset="):
            name = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return name, rest


def parse_recipe(
    dataclass_types: Sequence[type], defaults: dict[str, Any] | None = None, argv: list[str] | None = None,
    prog: str | None = None, preset_family: str | None = None,
) -> tuple[RecipeParser, tuple]:
    """``(parser, dataclasses)`` of the command line ``argv`` (``sys.argv[1:]`` when None); a value a
    dataclass refuses (its ``__post_init__``) is a one-line error naming the flag, exit status 2.

    ``preset_family`` (``"nli"`` / ``"image"``) adds ``--preset NAME`` (:mod:`~nli_routing.experiments.presets`):
    the preset's settings become the defaults, so a flag given on the command line still wins; the settings
    applied are logged."""
    from .presets import PRESETS, preset_values

    parser = RecipeParser(list(dataclass_types), prog=prog or (sys.argv[0].rsplit("/", 1)[-1] or None))
    for action in parser._actions:  # HfArgumentParser gives --no_X the help of --X: say what it does
        if any(o.startswith("--no_") for o in action.option_strings) and action.const is False:
            action.help = f"turn --{action.dest} off (it is on by default)"
            action.default = argparse.SUPPRESS  # (the flag's own action sets the default; no "(default: False)")
    parser.set_defaults(**(defaults or {}))
    argv = list(sys.argv[1:] if argv is None else argv)
    applied: dict[str, Any] = {}
    if preset_family is not None:
        parser.add_argument("--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS,
                            help="a named set of settings: thesis = the thesis' configuration (README, 'The thesis' "
                                 "configuration in one flag'); flags given on the command line win")
        try:
            name, argv = _take_preset(argv)
            if name is not None:
                known = {a.dest for a in parser._actions}
                applied = preset_values(name, preset_family, known)
                parser.set_defaults(**applied)
        except ValueError as err:
            parser.error(str(err))
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    for args in parsed:  # a results folder that is a file fails at the end of a run: say so now
        out = getattr(args, "output_dir", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            parser.error(f"--output_dir {out}: is a file, not a folder")
        if out is not None and any(p.exists() and not p.is_dir() for p in Path(out).parents):
            parser.error(f"--output_dir {out}: a parent of it is a file")
    setup_logging()
    if applied:
        values = {k: getattr(next(a for a in parsed if hasattr(a, k)), k) for k in applied}
        changed = {k: v for k, v in values.items() if v != applied[k]}
        logging.getLogger(__name__).info(
            "preset %s: %s%s", name, ", ".join(f"{k}={v}" for k, v in values.items()),
            f" (given on the command line: {', '.join(changed)})" if changed else "")
    return parser, tuple(parsed)

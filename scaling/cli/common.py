"""Shared CLI plumbing: absl flag sets with an ml_collections `--config` file flag, and logging."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags


def setup_logging(verbose: bool = False) -> None:
    """Configures root logging to stderr (INFO, or DEBUG when verbose); quiets chatty libraries."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("absl", "jax._src", "orbax", "etils", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def new_flag_values(argv: list[str] | None = None, with_config: bool = True,
                    config_help: str = "") -> flags.FlagValues:
    """Returns a fresh FlagValues (optionally with `--config FILE` and `--config.a.b=v` overrides)."""
    fv = flags.FlagValues()
    if with_config:
        config_flags.DEFINE_config_file(
            "config", default=None, flag_values=fv, lock_config=True, sys_argv=list(sys.argv if argv is None else argv),
            help_string=config_help or "Config file (a Python file with get_config()); any field "
            "can be overridden, e.g. --config.model.d_model=128.")
    flags.DEFINE_boolean("verbose", False, "Debug logging.", flag_values=fv)
    return fv


def parse(fv: flags.FlagValues, argv: list[str], description: str) -> list[str] | None:
    """Parses argv into fv; prints help and returns None on --help; returns positional args."""
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(f"usage: {argv[0]} [flags]\n\n{description}\n\nflags:")
        print(fv.get_help(include_special_flags=False))
        return None
    try:
        rest = fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        # config_flags reports a misspelt override as AttributeError/KeyError ("Did you mean ...")
        message = str(err).strip("'\"").replace("\\n", " ").replace("\n", " ")
        print(f"{argv[0]}: invalid flag: {message}", file=sys.stderr)
        raise SystemExit(2) from err
    return rest[1:]


def run_with_errors(fn: Callable[[], int]) -> int:
    """Runs fn; turns config errors into a one-line message and exit code 2."""
    from scaling.config import ConfigError

    try:
        return fn()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

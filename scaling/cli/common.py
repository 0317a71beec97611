"""Shared CLI plumbing: absl flag sets with an ml_collections `--config` file flag, logging, and
the one way user errors end a command: one line naming the file or field, exit code 2, no stack
trace unless `--debug`."""

from __future__ import annotations

import logging
import pathlib
import sys
import traceback
from typing import Callable

from absl import flags
from ml_collections import config_flags

EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad command-line argument, file or directory; the message names it."""


def non_negative_int(text: str) -> int:
    """Returns `text` as an int >= 0 (an argparse `type`); a clear argparse error otherwise."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _number(text: str, lo: float, hi: float, closed: bool) -> float:
    """Returns `text` as a float in [lo, hi] (closed) or (lo, hi); an argparse error otherwise."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    inside = lo <= value <= hi if closed else lo < value < hi
    if not inside:
        bounds = f"[{lo:g}, {hi:g}]" if closed else f"({lo:g}, {hi:g})"
        raise argparse.ArgumentTypeError(f"{value} must be in {bounds}")
    return value


def open_unit_float(text: str) -> float:
    """Returns `text` as a float strictly inside (0, 1) (an argparse `type`, e.g. a CI level)."""
    return _number(text, 0.0, 1.0, closed=False)


def unit_float(text: str) -> float:
    """Returns `text` as a float in [0, 1] (an argparse `type`, e.g. a fraction or threshold)."""
    return _number(text, 0.0, 1.0, closed=True)


def setup_logging(verbose: bool = False) -> None:
    """Configures root logging to stderr (INFO, or DEBUG when verbose); quiets chatty libraries."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("absl", "jax._src", "orbax", "etils", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def new_flag_values(argv: list[str] | None = None, with_config: bool = True,
                    config_help: str = "") -> flags.FlagValues:
    """Returns a fresh FlagValues (with --verbose, --debug and optionally `--config FILE` and
    `--config.a.b=v` overrides)."""
    fv = flags.FlagValues()
    if with_config:
        config_flags.DEFINE_config_file(
            "config", default=None, flag_values=fv, lock_config=True,
            sys_argv=list(sys.argv if argv is None else argv),
            help_string=config_help or "Config file (a Python file with get_config()); any field "
            "can be overridden, e.g. --config.model.d_model=128.")
    flags.DEFINE_boolean("verbose", False, "Debug logging.", flag_values=fv)
    flags.DEFINE_boolean("debug", False, "On an error, also print its stack trace (errors in "
                         "your input are otherwise one line naming the file or field).",
                         flag_values=fv)
    return fv


def config_file_arg(argv: list[str]) -> str | None:
    """Returns the value of `--config FILE` / `--config=FILE` in argv, or None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def fail(message: str, debug: bool = False) -> int:
    """Prints `error: message` (and the current stack trace if debug) to stderr; returns 2."""
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def parse(fv: flags.FlagValues, argv: list[str], description: str) -> list[str] | None:
    """Parses argv into fv (loading --config FILE); prints help and returns None on --help;
    returns the positional args. Bad flags and unreadable config files exit with code 2."""
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(f"usage: {argv[0]} [flags]\n\n{description}\n\nflags:")
        print(fv.get_help(include_special_flags=False))
        return None
    debug = "--debug" in argv
    path = config_file_arg(argv) if "config" in fv else None
    if path is not None and not pathlib.Path(path).is_file():
        raise SystemExit(fail(f"config file {path} not found", debug))
    try:
        rest = fv(argv)
        if path is not None:
            fv.config  # noqa: B018 - loads the file now, so its errors are reported here
    except SyntaxError as err:
        raise SystemExit(fail(f"config file {err.filename or path}: invalid syntax at line "
                              f"{err.lineno}: {err.msg}", debug)) from err
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        # config_flags reports a misspelt override as AttributeError/KeyError ("Did you mean ...")
        message = str(err).strip("'\"").replace("\\n", " ").replace("\n", " ")
        raise SystemExit(fail(f"{argv[0]}: invalid flag: {message}", debug)) from err
    except Exception as err:  # noqa: BLE001 - raised by the config file's own get_config()
        raise SystemExit(fail(f"config file {path}: get_config() raised "
                              f"{type(err).__name__}: {err}", debug)) from err
    return rest[1:]


def is_user_error(err: BaseException) -> bool:
    """Returns True for errors in the user's input (config, files, data names, budgets).

    Besides the project's own error types, the data layer's ValueErrors that name a config field
    (`config.data.tfds_name=...: no TFDS dataset of that name`) are user errors by convention."""
    from experiments.common import ExperimentError
    from scaling.config import ConfigError, ConfigFileError
    from scaling.data.prepared import PreparedDataError
    from scaling.sweeps.manifest import ManifestError
    from scaling.sweeps.spec import SweepError

    if isinstance(err, (ConfigError, ConfigFileError, SweepError, ManifestError, ExperimentError,
                        UsageError, PreparedDataError)):
        return True
    return isinstance(err, ValueError) and str(err).startswith("config.")


def run_with_errors(fn: Callable[[], int], debug: bool = False) -> int:
    """Runs fn; turns a user error into one line `error: ...` and exit code 2 (the stack trace
    only with debug); other exceptions propagate with their trace."""
    try:
        return fn()
    except Exception as err:
        if not is_user_error(err):
            raise
        return fail(str(err), debug)

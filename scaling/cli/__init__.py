"""The `scaling` command: one entry point, one subcommand per job. Only this package parses flags."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module under scaling.cli, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train (or resume) one run from a config file into a run directory"),
    "data": ("data", "tokenize a dataset once into sharded files (prepare) or check them (verify)"),
    "evaluate": ("evaluate", "evaluate a run's checkpoints: validation loss and task metrics"),
    "export": ("export", "write a checkpoint as a Hugging Face model (config, safetensors, tokenizer)"),
    "sweep": ("sweep", "expand a sweep config into runs and train them (local or Ray backend)"),
    "sweep-status": ("sweep_status", "show a sweep's runs with status, step and last loss"),
    "compress": ("compress", "quantize and/or prune a run's checkpoint into a new run directory"),
    "fit": ("fit", "fit a scaling law to any CSV (your runs or published data)"),
    "analyze": ("analyze", "turn one or more sweep roots into a report with tables and figures"),
    "experiment": ("experiment", "run a whole study end to end (sweep, evaluation, report)"),
}

USAGE = """usage: scaling <command> [flags]   (scaling <command> --help for its flags)

JAX/Flax toolkit for neural scaling-law and emergence studies.

commands:
{commands}
"""


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Runs the `scaling` command line; returns the process exit code."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if len(argv) >= 2 else 2
    command = argv[1]
    if command not in COMMANDS:
        print(f"scaling: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"scaling.cli.{COMMANDS[command][0]}")
    return int(module.main([f"scaling {command}"] + argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

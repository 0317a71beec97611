"""Flags for multi-process runs, shared by the commands that train or evaluate."""

from __future__ import annotations

from absl import flags


def define(fv: flags.FlagValues) -> None:
    """Adds --coordinator_address, --num_processes and --process_id to `fv`."""
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0 for a multi-process run (or env "
                        "SCALING_COORDINATOR_ADDRESS; SCALING_DISTRIBUTED=auto on SLURM/TPU).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.",
                         flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.",
                         flag_values=fv)


def initialize(fv: flags.FlagValues) -> bool:
    """Initializes jax.distributed from the parsed flags or the environment; True if it did."""
    from scaling import distributed

    return distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)

"""Multi-process JAX: `jax.distributed.initialize` from explicit values or the environment.

Explicit arguments win; otherwise SCALING_COORDINATOR_ADDRESS / SCALING_NUM_PROCESSES /
SCALING_PROCESS_ID are read; otherwise, on a cluster JAX can detect (SLURM, TPU pods, ...),
`jax.distributed.initialize()` is called with no arguments when SCALING_DISTRIBUTED=auto.
The CPU backend's gloo collectives are selected so that cross-process collectives work without MPI.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Initializes jax.distributed if a multi-process run is requested; returns True if it did."""
    global _initialized
    if _initialized:
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("SCALING_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("SCALING_NUM_PROCESSES"):
        num_processes = int(env["SCALING_NUM_PROCESSES"])
    if process_id is None and env.get("SCALING_PROCESS_ID"):
        process_id = int(env["SCALING_PROCESS_ID"])
    auto = env.get("SCALING_DISTRIBUTED") == "auto"
    if coordinator_address is None and not auto:
        return False
    # Only affects the CPU backend (harmless on GPU/TPU hosts); without it CPU processes have no
    # cross-process collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    _initialized = True
    log.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
             jax.process_count(), jax.device_count())
    return True

"""A population's training batches on the host: each distinct data stream read once per step.

Members of a learning-rate or weight-decay sweep read the same training batches (one data config
and seed). `Streams` reads each distinct stream once per step, through its first member's
iterator, and hands the batch to every member that reads it: a K-member LR sweep prepares one
batch per step instead of K, and runs one data thread instead of K competing for the
interpreter. Every member still sees exactly the batches it would see alone, and checkpoints
its stream's position.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import ml_collections
import numpy as np

from scaling.train.population_step import PopulationError

Batch = dict[str, np.ndarray]


def stream_key(config: ml_collections.ConfigDict) -> str:
    """Returns what decides a run's training batches: its data config, seed, model and batch size."""
    return json.dumps({"data": config.data.to_dict(), "seed": int(config.seed),
                       "model": config.model.to_dict(),
                       "batch_size": int(config.train.batch_size)}, sort_keys=True, default=repr)


def stream_leaders(configs: Sequence[ml_collections.ConfigDict]) -> list[int]:
    """Returns, per member, the index of the first member whose training batches are the same
    (its own index when there is none before it)."""
    first: dict[str, int] = {}
    return [first.setdefault(stream_key(c), i) for i, c in enumerate(configs)]


def stack_batches(batches: Sequence[Batch], names: Sequence[str]) -> Batch:
    """Returns the members' batches stacked on a new leading axis; clear error if shapes differ."""
    shapes = [{k: (np.shape(v), np.asarray(v).dtype) for k, v in b.items()} for b in batches]
    for name, s in zip(names[1:], shapes[1:]):
        if s != shapes[0]:
            raise PopulationError(
                f"member {name}'s batch {s} differs from member {names[0]}'s {shapes[0]}; "
                "members need batches of one shape")
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Streams:
    """The members' training batches, each distinct stream (`stream_leaders`) read once per step.

    `members` are the population's host-side members: each has `config`, `data_iter`, `done`,
    `num_steps` and `workdir`; a stream is read through its first member's iterator.
    """

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = members
        self.leaders = stream_leaders([m.config for m in members])
        self.groups: dict[int, list[int]] = {}
        for i, lead in enumerate(self.leaders):
            self.groups.setdefault(lead, []).append(i)
        self.current: dict[int, Batch] = {}
        self.names = [m.workdir.name for m in members]  # for the shape error, named once

    def next_K(self, step: int) -> Batch:
        """Returns the stacked batches [K, ...] for the step after `step`. A stream advances
        while one of its members still trains; finished members repeat a batch their step
        ignores."""
        for lead, group in self.groups.items():
            if lead not in self.current or any(
                    not self.members[j].done and step < self.members[j].num_steps for j in group):
                self.current[lead] = next(self.members[lead].data_iter)
        return stack_batches([self.current[lead] for lead in self.leaders], self.names)

    def state(self, i: int) -> dict[str, Any]:
        """Returns member i's data position (its stream's), for its checkpoint."""
        return self.members[self.leaders[i]].data_iter.get_state()

"""A real two-process jax.distributed run on CPU: each process reads its own shard of the stream."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scaling import config as config_lib
from scaling import data
from scaling.data import text as text_lib
from scaling.data.corpora import stdlib_corpus
from tests.conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    port, pid, data_dir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)
    from scaling import config as config_lib
    from scaling import data
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = data_dir
    c.data.seq_len = 16
    c.train.batch_size = 8
    it = data.make_train_iterator(c)  # process index and count from jax
    assert (jax.process_index(), jax.process_count()) == (pid, 2)
    np.save(out, np.stack([next(it)["inputs"] for _ in range(3)]))
    jax.distributed.shutdown()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_jax_processes_read_disjoint_shards(tmp_path):
    data_dir = tmp_path / "tfds"
    stdlib_corpus.ensure_built(data_dir, "tiny")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(1))
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(data_dir),
                               str(tmp_path / f"{i}.npy")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in procs:
        try:
            out, _ = p.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed worker timed out")
        assert p.returncode == 0, out[-3000:]
    shards = [np.load(tmp_path / f"{i}.npy") for i in range(2)]

    text_lib.clear_cache()
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(data_dir)
    c.data.seq_len = 16
    c.train.batch_size = 8
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    single = np.stack([next(it)["inputs"] for _ in range(3)])
    assert shards[0].shape == (3, 4, 16)
    np.testing.assert_array_equal(np.concatenate(shards, axis=1), single)
    assert not np.array_equal(shards[0], shards[1])

"""The host allocator policy: freed large blocks are reused without new page faults."""

import os
import subprocess
import sys

import pytest

from scaling import host_memory

# A fresh process mallocs, writes and frees a 64 MB block a few times (as XLA:CPU does with a
# step's temporary buffers), and prints the minor page faults of the last round: with the policy
# the block is reused in place. (Not numpy: it may back large arrays with huge pages.)
PROBE = """
import ctypes, resource, sys
from scaling import host_memory
print(host_memory.retain_freed_memory(), file=sys.stderr)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
for i in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


def _last_round_faults(policy: str) -> tuple[int, str]:
    env = {**os.environ, host_memory.ENV_VAR: policy}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                          check=True)
    return int(proc.stdout.split()[-1]), proc.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(not host_memory.is_glibc(), reason="the policy is glibc's mallopt")
def test_retained_memory_is_reused_without_page_faults():
    retained, retained_note = _last_round_faults("retain")
    system, system_note = _last_round_faults("system")
    assert "retains freed memory" in retained_note and "system default" in system_note
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert system > pages // 2  # glibc unmaps the block on free: every round faults it in again
    assert retained < pages // 20


def test_unknown_policy_is_named():
    env = {**os.environ, host_memory.ENV_VAR: "jemalloc"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "SCALING_HOST_MALLOC='jemalloc'" in proc.stderr


"""Compression of trained checkpoints: post-training quantization (qwix) and magnitude pruning.

`compress_run` turns one checkpoint of a run into a new run directory holding the compressed
weights and a run.json record of what was done (`scaling compress` on the command line).
"""

from scaling.compress.run import compress_run, tag
from scaling.compress.spec import CompressionError, PruneSpec, QuantSpec, prune_spec, quant_spec

__all__ = ["compress_run", "tag", "CompressionError", "PruneSpec", "QuantSpec", "prune_spec", "quant_spec"]

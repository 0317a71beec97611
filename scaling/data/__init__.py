"""Data: tokenizers, the offline stdlib corpus, TFDS text pipelines, capability tasks, augmentation.

The training loop calls exactly these entry points (see `pipeline` for the row/batch layout):
  * `resolve(config)` -> config copy with model.vocab_size / input_dim / num_classes filled in;
  * `make_train_iterator(config, workdir)` -> endless iterator of this process's batches with
    `get_state()` / `set_state()`;
  * `make_eval_batches(config, workdir)` -> fixed validation batches (global rows);
  * `make_task_eval(config, workdir)` -> fixed held-out task batches (answer-only weights);
  * `num_unique_tokens(config, workdir)` -> tokens a text split holds.
"""

from scaling.data.corpora.stdlib_corpus import StdlibCorpus, ensure_built
from scaling.data.pipeline import (DataIterator, make_eval_batches, make_task_eval,
                                   make_train_iterator, num_unique_tokens, resolve)
from scaling.data.tokenizers import Tokenizer, make_tokenizer

__all__ = [
    "DataIterator", "StdlibCorpus", "Tokenizer", "ensure_built", "make_eval_batches",
    "make_task_eval", "make_tokenizer", "make_train_iterator", "num_unique_tokens", "resolve",
]

"""`scaling data prepare|verify`: tokenize a dataset once into sharded files, or check them."""

from __future__ import annotations

import sys

from scaling.cli import common

DESCRIPTION = """\
scaling data prepare --config CFG [--config.data.<field>=...] --out DIR [--workers N]
    Tokenizes the splits of config.data's TFDS dataset (default: data.split and data.eval_split)
    with config.data's tokenizer, once, into ArrayRecord shards under DIR with a manifest
    (dataset, tokenizer fingerprint, document and token counts, SHA-256 of every file). Several
    worker processes write the shards in parallel. A trained tokenizer (bpe, sentencepiece) is
    trained first and saved in DIR/tokenizer/. DIR must be new or empty; it appears only when
    complete.
    Train from it with --config.data.prepared_dir=DIR: the same rows in the same order as
    tokenizing in memory, but memory no longer grows with data.num_tokens and a resume does not
    tokenize again.

scaling data verify DIR
    Checks every shard and index of DIR against the manifest's sizes and SHA-256; exit code 1
    and one line per problem if any."""


def _prepare(argv: list[str]) -> int:
    from absl import flags

    fv = common.new_flag_values(argv)
    flags.DEFINE_string("out", None, "Directory to write (new or empty).", flag_values=fv)
    flags.DEFINE_list("splits", [], "Splits to prepare (default: data.split, data.eval_split).",
                      flag_values=fv)
    flags.DEFINE_integer("workers", 1, "Worker processes that write shards in parallel.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("shards", 0, "Shards per split (0: one per worker, and at least one "
                         "per 2^20 documents).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("record_tokens", 16_384, "Tokens per record at most (a longer "
                         "document takes several records).", lower_bound=1, flag_values=fv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if fv.config is None or fv.out is None:
        return common.fail("--config and --out are required (see scaling data --help)")
    if rest:
        return common.fail(f"unexpected arguments {rest}")
    common.setup_logging(fv.verbose)

    def run() -> int:
        from scaling import config as config_lib
        from scaling.data import prepare as prepare_lib

        config_lib.validate(fv.config)
        from tqdm import tqdm

        bar = tqdm(total=None, desc="shards", unit="shard", disable=not sys.stderr.isatty())

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        manifest = prepare_lib.prepare(fv.config, fv.out, fv.splits or None, workers=fv.workers,
                                       shards=fv.shards, record_tokens=fv.record_tokens,
                                       progress=progress)
        bar.close()
        tok = manifest["tokenizer"]
        print(f"prepared {manifest['tfds_name']} with tokenizer {tok['name']} "
              f"({tok['vocab_size']} ids) in {fv.out}")
        for split, info in manifest["splits"].items():
            print(f"  {split}: {info['num_docs']} documents, {info['stream_tokens']} tokens "
                  f"(EOS included), {len(info['shards'])} shards")
        return 0

    return common.run_with_errors(run, fv.debug)


def _verify(argv: list[str]) -> int:
    fv = common.new_flag_values(argv, with_config=False)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if len(rest) != 1:
        return common.fail("give exactly one prepared directory (see scaling data --help)")

    def run() -> int:
        from scaling.data import prepare as prepare_lib

        problems = prepare_lib.verify(rest[0])
        for problem in problems:
            print(problem)
        print(f"{rest[0]}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0

    return common.run_with_errors(run, fv.debug)


def main(argv: list[str]) -> int:
    """Runs `scaling data prepare|verify`; returns the exit code (2: bad input)."""
    actions = {"prepare": _prepare, "verify": _verify}
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(f"usage: {argv[0]} prepare|verify [flags]\n\n{DESCRIPTION}")
        return 0 if len(argv) >= 2 else 2
    if argv[1] not in actions:
        return common.fail(f"{argv[0]}: unknown action {argv[1]!r}; use prepare or verify")
    return actions[argv[1]]([f"{argv[0]} {argv[1]}"] + argv[2:])

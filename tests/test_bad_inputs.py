"""Nothing wrong passes silently: a table of bad inputs to every command.

Each case runs the `scaling` command in-process and asserts the exit code (2), a one-line message
on stderr naming the field, flag or file, no stack trace, and that nothing in an existing run
directory, sweep root or input file changed. Almost every case fails during validation, before
anything is compiled or any data is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil

import pytest

from scaling import cli
from scaling import config as config_lib

LM_TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm_tiny.py")
SWEEP_FILE = "from scaling.sweeps.testing import tiny_sweep\n\n\ndef get_config():\n" \
             "    return tiny_sweep()\n"


def _snapshot(root: pathlib.Path) -> dict[str, tuple]:
    """Returns {relative path: (kind, size, sha1, mtime_ns)} of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        if p.is_dir():
            out[str(p.relative_to(root))] = ("dir", st.st_mtime_ns)
        else:
            out[str(p.relative_to(root))] = ("file", st.st_size,
                                             hashlib.sha1(p.read_bytes()).hexdigest(),
                                             st.st_mtime_ns)
    return out


def _make_run_dir(path: pathlib.Path) -> None:
    """Writes a finished-looking run directory (files only; no real checkpoint contents)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(config_lib.to_json(config_lib.default_config()))
    (path / "run.json").write_text(json.dumps({"version": 1, "id": "abc", "name": path.name,
                                               "num_steps": 2}))
    (path / "status.json").write_text(json.dumps({"status": "completed", "step": 2,
                                                  "error": None}))
    (path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n')
    (path / "checkpoints" / "2").mkdir(parents=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> pathlib.Path:
    """Returns a directory holding an existing run, sweep roots, config files and a CSV."""
    w = tmp_path_factory.mktemp("world")
    _make_run_dir(w / "run")
    _make_run_dir(w / "root" / "runs" / "r0")
    (w / "root" / "manifest.json").write_text(json.dumps(
        {"version": 1, "name": "s", "runs": [{"id": "abc", "name": "r0", "dir": "runs/r0",
                                              "status": "completed", "attempts": 1}]}))
    _make_run_dir(w / "garbage_run")
    (w / "garbage_run" / "config.json").write_text("{not json")
    _make_run_dir(w / "typo_run")
    (w / "typo_run" / "config.json").write_text(json.dumps({"model": {"d_modle": 32}}))
    _make_run_dir(w / "no_run_json")
    (w / "no_run_json" / "run.json").unlink()
    _make_run_dir(w / "no_ckpt")
    shutil.rmtree(w / "no_ckpt" / "checkpoints")
    (w / "bad_root").mkdir()
    (w / "bad_root" / "manifest.json").write_text("[1, 2")
    (w / "empty_dir").mkdir()
    (w / "a_file").write_text("not a directory\n")
    (w / "typo.py").write_text("from scaling.config import default_config\n\n\ndef get_config():"
                               "\n    c = default_config()\n    c.model.d_modle = 32\n"
                               "    return c\n")
    (w / "syntax.py").write_text("def get_config(:\n    pass\n")
    (w / "raises.py").write_text("def get_config():\n    raise RuntimeError('no such preset')\n")
    (w / "sweep.py").write_text(SWEEP_FILE)
    (w / "sweep_typo.py").write_text(
        "from scaling.sweeps.testing import tiny_sweep\n\n\ndef get_config():\n"
        "    s = tiny_sweep()\n    s.base.optim.weight_decy = 0.1\n    return s\n")
    (w / "points.csv").write_text("N,D,loss\n1e6,2e7,3.1\n2e6,4e7,2.9\n4e6,8e7,2.7\n")
    (w / "one_point.csv").write_text("N,loss\n" + "1e6,3.1\n" * 16)
    (w / "two_points.csv").write_text("N,loss\n" + "1e6,3.1\n2e6,2.9\n" * 8)
    return w


# (id, argv after `scaling`, fragments the error must contain). {w} is the world directory.
# Every case must exit 2 with one line on stderr and leave `world` unchanged.
TRAIN = "train --config " + LM_TINY + " --workdir {w}/run"
# a real 3-step run with checkpoints (the `trained_run` fixture), and the same command to resume it
TRAINED = ("train --config " + LM_TINY + " --workdir {trained} "
           "--config.data.tfds_name=stdlib_corpus/tiny --config.data.tfds_data_dir={data} "
           "--config.train.num_steps=3 --config.train.batch_size=8 --config.data.seq_len=32 "
           "--config.train.eval_at_checkpoints=False --config.train.progress=False")
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # ------------------------------------------------------------------ train: config files
    ("train-missing-config-file", "train --config {w}/nope.py --workdir {w}/run",
     ("config file", "nope.py", "not found")),
    ("train-config-syntax-error", "train --config {w}/syntax.py --workdir {w}/run",
     ("syntax.py", "invalid syntax at line 1")),
    ("train-config-raises", "train --config {w}/raises.py --workdir {w}/run",
     ("raises.py", "RuntimeError: no such preset")),
    ("train-typo-inside-config-file", "train --config {w}/typo.py --workdir {w}/run",
     ("config.model.d_modle=32", "unknown field", "did you mean model.d_model")),
    ("train-typo-override", TRAIN + " --config.model.d_modle=3", ("d_modle",)),
    ("train-no-workdir", "train --config " + LM_TINY, ("--workdir",)),
    ("train-workdir-is-a-file", "train --config " + LM_TINY + " --workdir {w}/a_file",
     ("--workdir", "a_file", "not a directory")),
    ("train-workdir-garbage-config-json",
     "train --config " + LM_TINY + " --workdir {w}/garbage_run",
     ("garbage_run/config.json", "JSON")),
    ("train-unknown-flag", TRAIN + " --stop_aftr=3", ("stop_aftr",)),
    # ------------------------------------------------------------------ train: data (found when
    # the data is opened, so into a new run directory {fresh}; nothing is compiled)
    ("train-unknown-tfds-name", "train --config " + LM_TINY + " --workdir {fresh} "
     "--config.data.tfds_name=lm1bb", ("config.data.tfds_name='lm1bb'", "no TFDS dataset")),
    ("train-unknown-split", "train --config " + LM_TINY + " --workdir {fresh} "
     "--config.data.tfds_name=stdlib_corpus/tiny --config.data.tfds_data_dir={data} "
     "--config.data.split=trian", ("config.data.split", "'trian'")),
    ("train-budget-larger-than-corpus", "train --config " + LM_TINY + " --workdir {fresh} "
     "--config.data.tfds_name=stdlib_corpus/tiny --config.data.tfds_data_dir={data} "
     "--config.data.num_tokens=1000000000", ("config.data.num_tokens=1000000000", "holds only")),
    # ------------------------------------------------------------------ train: resume (a real run)
    ("train-resume-changed-lr", TRAINED + " --config.optim.lr=1e-3",
     ("cannot resume", "optim.lr: 0.003 → 0.001")),
    ("train-resume-changed-num-steps", TRAINED.replace("num_steps=3", "num_steps=5"),
     ("cannot resume", "train.num_steps: 3 → 5")),
    ("train-resume-changed-d-model", TRAINED + " --config.model.d_model=32",
     ("cannot resume", "model.d_model: 64 → 32")),
    ("train-resume-changed-epochs", TRAINED + " --config.data.epochs=2",
     ("cannot resume", "data.epochs")),
    # ------------------------------------------------------------------ train: domains
    ("optim.b1", TRAIN + " --config.optim.b1=1.5", ("config.optim.b1=1.5", "[0, 1)")),
    ("optim.b2", TRAIN + " --config.optim.b2=1.0", ("config.optim.b2=1.0",)),
    ("optim.lr-inf", TRAIN + " --config.optim.lr=inf", ("config.optim.lr=inf", "finite")),
    ("optim.lr-nan", TRAIN + " --config.optim.lr=nan", ("config.optim.lr=nan",)),
    ("optim.lr-zero", TRAIN + " --config.optim.lr=0", ("config.optim.lr=0",)),
    ("optim.clip_norm", TRAIN + " --config.optim.clip_norm=-1", ("config.optim.clip_norm=-1",)),
    ("optim.eps", TRAIN + " --config.optim.eps=-1e-8", ("config.optim.eps=",)),
    ("optim.weight_decay", TRAIN + " --config.optim.weight_decay=-0.1",
     ("config.optim.weight_decay=-0.1",)),
    ("optim.warmup_steps", TRAIN + " --config.optim.warmup_steps=-1",
     ("config.optim.warmup_steps=-1",)),
    ("optim.final_lr_frac", TRAIN + " --config.optim.final_lr_frac=1.5",
     ("config.optim.final_lr_frac=1.5",)),
    ("optim.wsd_decay_frac", TRAIN + " --config.optim.wsd_decay_frac=0",
     ("config.optim.wsd_decay_frac=0",)),
    ("optim.name", TRAIN + " --config.optim.name=adamax", ("config.optim.name='adamax'",)),
    ("data.eval_tokens-negative", TRAIN + " --config.data.eval_tokens=-5",
     ("config.data.eval_tokens=-5", "one row")),
    ("data.eval_tokens-below-a-row", TRAIN + " --config.data.eval_tokens=100",
     ("config.data.eval_tokens=100",)),
    ("checkpoint.every", TRAIN + " --config.checkpoint.every=-1", ("config.checkpoint.every=-1",)),
    ("checkpoint.log_max", TRAIN + " --config.checkpoint.log_max=0",
     ("config.checkpoint.log_max=0",)),
    ("checkpoint.max_to_keep", TRAIN + " --config.checkpoint.max_to_keep=-2",
     ("config.checkpoint.max_to_keep=-2",)),
    ("model.vocab_size-below-tokenizer", TRAIN + " --config.model.vocab_size=128",
     ("config.model.vocab_size=128", "259 ids of the byte tokenizer")),
    ("model.vocab_size-below-bpe", TRAIN + " --config.model.vocab_size=512 "
     "--config.data.tokenizer=bpe --config.data.tokenizer_vocab_size=1024",
     ("config.model.vocab_size=512", "1024")),
    ("model.rope_theta", TRAIN + " --config.model.rope_theta=0", ("config.model.rope_theta=0",)),
    ("model.norm_eps", TRAIN + " --config.model.norm_eps=0", ("config.model.norm_eps=0",)),
    ("model.init_std", TRAIN + " --config.model.init_std=-0.02", ("config.model.init_std=-0.02",)),
    ("model.d_model-heads", TRAIN + " --config.model.d_model=65", ("config.model.d_model=65",)),
    ("model.n_heads", TRAIN + " --config.model.n_heads=0", ("config.model.n_heads=0",)),
    ("model.head_dim", TRAIN + " --config.model.head_dim=-8", ("config.model.head_dim=-8",)),
    ("model.positions", TRAIN + " --config.model.positions=alibi",
     ("config.model.positions='alibi'",)),
    ("model.resid_dropout", TRAIN + " --config.model.resid_dropout=1.0",
     ("config.model.resid_dropout=1.0",)),
    ("train.batch_size", TRAIN + " --config.train.batch_size=0", ("config.train.batch_size=0",)),
    ("train.microbatches", TRAIN + " --config.train.microbatches=3",
     ("config.train.microbatches=3",)),
    ("train.label_smoothing", TRAIN + " --config.train.label_smoothing=1.0",
     ("config.train.label_smoothing=1.0",)),
    ("train.z_loss", TRAIN + " --config.train.z_loss=-1", ("config.train.z_loss=-1",)),
    ("train.log_every", TRAIN + " --config.train.log_every=0", ("config.train.log_every=0",)),
    ("train.eval_every", TRAIN + " --config.train.eval_every=-5", ("config.train.eval_every=-5",)),
    ("train.num_steps", TRAIN + " --config.train.num_steps=0", ("config.train.num_steps=0",)),
    ("data.seq_len", TRAIN + " --config.data.seq_len=0", ("config.data.seq_len=0",)),
    ("data.seq_len-too-long", TRAIN + " --config.data.seq_len=4096",
     ("config.data.seq_len=4096", "max_seq_len")),
    ("data.num_tokens", TRAIN + " --config.data.num_tokens=-1", ("config.data.num_tokens=-1",)),
    ("data.epochs", TRAIN + " --config.data.epochs=0", ("config.data.epochs=0",)),
    ("data.prefetch", TRAIN + " --config.data.prefetch=-1", ("config.data.prefetch=-1",)),
    ("data.source-needs-task", TRAIN + " --config.data.source=task", ("config.data.task.name",)),
    ("data.task.name", TRAIN + " --config.data.source=task --config.data.task.name=parity",
     ("config.data.task.name='parity'", "unknown task")),
    ("data.task.mix_rate", TRAIN + " --config.data.task.mix_rate=2",
     ("config.data.task.mix_rate=2",)),
    ("data.augment.span_length", TRAIN + " --config.data.augment.span_length=0",
     ("config.data.augment.span_length=0",)),
    ("data.tokenizer-hf-without-path", TRAIN + " --config.data.tokenizer=hf",
     ("config.data.tokenizer_path",)),
    ("seed", TRAIN + " --config.seed=-1", ("config.seed=-1",)),
    ("mesh.fsdp", TRAIN + " --config.mesh.fsdp=0", ("config.mesh.fsdp=0",)),
    # ------------------------------------------------------------------ evaluate
    ("evaluate-no-run-dir", "evaluate", ("RUN_DIR",)),
    ("evaluate-missing-dir", "evaluate {w}/nope", ("nope", "not a directory")),
    ("evaluate-a-file", "evaluate {w}/a_file", ("a_file", "not a directory")),
    ("evaluate-not-a-run-dir", "evaluate {w}/empty_dir", ("empty_dir", "no config.json")),
    ("evaluate-garbage-config-json", "evaluate {w}/garbage_run",
     ("garbage_run/config.json", "not valid JSON")),
    ("evaluate-typo-in-config-json", "evaluate {w}/typo_run",
     ("typo_run/config.json", "config.model.d_modle=32")),
    ("evaluate-missing-run-json", "evaluate {w}/no_run_json", ("no_run_json/run.json",)),
    ("evaluate-no-checkpoints", "evaluate {w}/no_ckpt", ("no_ckpt", "no checkpoints")),
    ("evaluate-bad-steps", "evaluate {w}/run --steps=first", ("--steps='first'",)),
    ("evaluate-missing-step", "evaluate {w}/run --steps=1,2", ("--steps", "[1]", "available: [2]")),
    # ------------------------------------------------------------------ sweep
    ("sweep-missing-config-file", "sweep --config {w}/nope.py --root {w}/root",
     ("nope.py", "not found")),
    ("sweep-no-root", "sweep --config {w}/sweep.py", ("--root",)),
    ("sweep-root-is-a-file", "sweep --config {w}/sweep.py --root {w}/a_file",
     ("--root", "a_file", "not a directory")),
    ("sweep-garbage-manifest", "sweep --config {w}/sweep.py --root {w}/bad_root",
     ("bad_root/manifest.json",)),
    ("sweep-empty-sizes", "sweep --config {w}/sweep.py --root {w}/root --config.sizes=()",
     ("sweep.sizes", "axis is empty")),
    ("sweep-empty-tokens", "sweep --config {w}/sweep.py --root {w}/root --config.tokens=()",
     ("sweep.tokens", "axis is empty")),
    ("sweep-empty-flops", "sweep --config {w}/sweep.py --root {w}/root --config.flops=()",
     ("sweep.flops", "axis is empty")),
    ("sweep-empty-seeds", "sweep --config {w}/sweep.py --root {w}/root --config.seeds=()",
     ("sweep.seeds", "empty")),
    ("sweep-negative-size", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.sizes=(-5.0,)", ("sweep.sizes", "-5.0")),
    ("sweep-infinite-budget", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.tokens=(1e400,)", ("sweep.tokens", "inf")),
    ("sweep-two-data-axes", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.flops=(1e12,)", ("at most one of",)),
    ("sweep-workers", "sweep --config {w}/sweep.py --root {w}/root --workers=-3",
     ("--workers=-3",)),
    ("sweep-max-retries", "sweep --config {w}/sweep.py --root {w}/root --max_retries=-1",
     ("--max_retries=-1",)),
    ("sweep-unknown-field", "sweep --config {w}/sweep.py --root {w}/root --config.sizez=(1e4,)",
     ("sizez",)),
    ("sweep-typo-in-base-of-file", "sweep --config {w}/sweep_typo.py --root {w}/root",
     ("sweep.base", "config.optim.weight_decy", "did you mean optim.weight_decay")),
    ("sweep-base-domain", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.base.optim.b1=1.5", ("sweep.base", "config.optim.b1=1.5")),
    ("sweep-axis-unknown-field", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.axes=({{'optim.wieght_decay':(0.1,)}},)", ("optim.wieght_decay",)),
    ("sweep-axis-bad-value", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.axes=({{'optim.b1':(0.9,1.5)}},)", ("config.optim.b1=1.5",)),
    ("sweep-base-vocab", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.base.model.vocab_size=200", ("sweep.base", "config.model.vocab_size=200")),
    ("sweep-min-steps", "sweep --config {w}/sweep.py --root {w}/root --config.min_steps=0",
     ("sweep.min_steps=0",)),
    ("sweep-max-unique-tokens", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.max_unique_tokens=-2", ("sweep.max_unique_tokens=-2",)),
    ("sweep-lr-rule", "sweep --config {w}/sweep.py --root {w}/root --config.lr.rule=cosine",
     ("sweep.lr.rule='cosine'",)),
    ("sweep-resources-cpus", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.resources.cpus=-1", ("sweep.resources.cpus=-1",)),
    ("sweep-family-layers", "sweep --config {w}/sweep.py --root {w}/root "
     "--config.family.min_layers=0", ("sweep.family.min_layers=0",)),
    ("sweep-dry-run-bad-base", "sweep --config {w}/sweep.py --dry-run "
     "--config.base.data.eval_tokens=-5", ("config.data.eval_tokens=-5",)),
    # ------------------------------------------------------------------ sweep-status
    ("sweep-status-missing", "sweep-status {w}/nope", ("nope", "manifest.json")),
    ("sweep-status-not-a-root", "sweep-status {w}/empty_dir", ("empty_dir", "manifest.json")),
    ("sweep-status-garbage-manifest", "sweep-status {w}/bad_root", ("bad_root/manifest.json",)),
    ("sweep-status-watch", "sweep-status {w}/root --watch=-1", ("--watch=-1",)),
    # ------------------------------------------------------------------ experiment
    ("experiment-unknown", "experiment quickstrat --root {w}/exp", ("quickstrat",)),
    ("experiment-no-name", "experiment --root {w}/exp", ("NAME",)),
    ("experiment-scale", "experiment quickstart --root {w}/exp --scale=huge", ("--scale",)),
    ("experiment-workers", "experiment quickstart --root {w}/exp --workers=-1",
     ("--workers=-1",)),
    ("experiment-bootstrap", "experiment quickstart --root {w}/exp --bootstrap=-5",
     ("--bootstrap=-5",)),
    ("experiment-root-is-a-file", "experiment quickstart --root {w}/a_file --scale=tiny",
     ("--root", "a_file", "not a directory")),
    # ------------------------------------------------------------------ fit
    ("fit-missing-csv", "fit {w}/nope.csv --law chinchilla", ("nope.csv",)),
    ("fit-unknown-law", "fit {w}/points.csv --law chinchila", ("--law", "chinchila")),
    ("fit-bad-columns", "fit {w}/points.csv --law power-n --columns N", ("--columns",)),
    ("fit-unknown-role", "fit {w}/points.csv --law power-n --columns Q=N", ("--columns", "'Q'")),
    ("fit-missing-column", "fit {w}/points.csv --law power-n --columns N=params",
     ("'params'",)),
    ("fit-one-point-repeated", "fit {w}/one_point.csv --law power-n --bootstrap 0",
     ("distinct", "15 duplicate rows")),
    ("fit-two-points-repeated", "fit {w}/two_points.csv --law power-n --bootstrap 0",
     ("distinct", "14 duplicate rows")),
    ("fit-negative-bootstrap", "fit {w}/points.csv --law power-n --bootstrap=-1",
     ("--bootstrap", "-1 must be >= 0")),
    ("fit-level-out-of-range", "fit {w}/points.csv --law power-n --level 1.5",
     ("--level", "must be in (0, 1)")),
    # ------------------------------------------------------------------ analyze
    ("analyze-negative-bootstrap", "analyze {w}/root --out {w}/report --bootstrap=-1",
     ("--bootstrap", "-1 must be >= 0")),
    ("analyze-threshold-out-of-range", "analyze {w}/root --out {w}/report --subtask-threshold 2",
     ("--subtask-threshold", "must be in [0, 1]")),
    ("analyze-missing-root", "analyze {w}/nope --out {w}/report", ("nope", "not found")),
    ("analyze-no-out", "analyze {w}/root", ("--out",)),
]


def _run(argv: list[str]) -> int:
    handlers, level = list(logging.root.handlers), logging.root.level
    try:
        return cli.main(["scaling"] + argv)
    except SystemExit as exit_:  # flag parsing (absl and argparse) exits with the code
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:  # the commands log to the stderr of the moment: capsys's, closed after the case
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1].split()[0] for c in CASES}
    assert commands >= {"train", "sweep", "sweep-status", "fit", "analyze", "evaluate",
                        "experiment"}


@pytest.fixture(scope="module")
def trained_run(world, stdlib_tiny_data_dir) -> pathlib.Path:
    """Returns world/trained: a completed 3-step run with real checkpoints, trained by the CLI."""
    workdir = world / "trained"
    argv = TRAINED.format(trained=workdir, data=stdlib_tiny_data_dir).split()
    assert _run(argv) == 0
    assert (workdir / "checkpoints" / "3").is_dir()
    return workdir


@pytest.mark.parametrize("case,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_that_changes_nothing(world, tmp_path, request, capsys, case,
                                                        args, fragments):
    data = request.getfixturevalue("stdlib_tiny_data_dir") if "{data}" in args else ""
    trained = request.getfixturevalue("trained_run") if "{trained}" in args else ""
    capsys.readouterr()  # drop what building those fixtures printed: only the command's output counts
    before = _snapshot(world)
    argv = [a.format(w=world, fresh=tmp_path / "fresh", data=data, trained=trained)
            for a in args.split()]
    code = _run(argv)
    err = capsys.readouterr().err
    assert code == 2, f"{case}: exit code {code}; stderr:\n{err}"
    for fragment in fragments:
        assert fragment in err, f"{case}: {fragment!r} not in stderr:\n{err}"
    assert "Traceback" not in err, err
    assert _snapshot(world) == before, f"{case}: files changed"

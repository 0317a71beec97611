"""lm-evaluation-harness scores as eval.jsonl rows: `scaling evaluate --harness` on a local, offline
task; `--import_harness` of a real lm_eval results file; `scaling analyze` shows the metric."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from scaling.cli import main as cli_main

# A multiple-choice completion task on Python source (the corpus the test run trains on).
DOCS = [("import o", ["s", "x", "q"], 0), ("def f(sel", ["f", "z", "k"], 0),
        ("return Non", ["e", "a", "q"], 0), ("    if x is ", ["None", "qqqq", "zzzz"], 0),
        ("for i in ran", ["ge", "zz", "qu"], 0), ("class Fo", ["o", "9", "$"], 0),
        ("print(se", ["lf", "zz", "qq"], 0), ("x = Tr", ["ue", "qq", "zx"], 0)]

TASK_YAML = """task: scaling_tiny_completion
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

FIXTURE = pathlib.Path(__file__).parent / "data" / "harness" / "lm_eval_results.json"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Nothing may download: Hugging Face hub and datasets offline, caches under tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def write_task(directory: pathlib.Path) -> pathlib.Path:
    """Returns a directory holding the local task definition and its data."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "scaling_tiny_completion.jsonl"
    data.write_text("".join(json.dumps({"context": c, "choices": ch, "gold": g}) + "\n"
                            for c, ch, g in DOCS))
    (directory / "scaling_tiny_completion.yaml").write_text(TASK_YAML.format(data=data))
    return directory


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory, stdlib_tiny_data_dir):
    from scaling import config as config_lib
    from scaling.train.loop import train

    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.data.eval_tokens = 256
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2
    c.optim.lr = 3e-2
    c.train.batch_size, c.train.num_steps, c.train.progress = 8, 8, False
    c.train.eval_at_checkpoints = True
    c.checkpoint.log_max = 4
    workdir = tmp_path_factory.mktemp("byte_run")
    train(c, workdir)
    return workdir


def own_accuracy(run_dir: pathlib.Path, step: int) -> float:
    """Returns the task accuracy computed with the project's own forward pass (argmax of the
    summed log-probability of each choice's bytes after the context)."""
    import jax

    from scaling import config as config_lib
    from scaling.export.run import restore_params
    from scaling.models import make_model

    config = config_lib.load_json(run_dir / "config.json")
    params, _ = restore_params(run_dir, config, step)
    seqs = [(list((c + ch).encode()), len(c.encode())) for c, chs, _ in DOCS for ch in chs]
    t = config.model.max_seq_len
    tokens_BT = np.zeros((len(seqs), t), np.int32)  # causal: padding after a sequence is unseen
    for i, (ids, _) in enumerate(seqs):
        tokens_BT[i, :len(ids)] = ids
    logits_BTV = make_model(config.model).apply({"params": params}, tokens_BT)
    logp_BTV = np.asarray(jax.nn.log_softmax(logits_BTV, axis=-1))
    scores = np.asarray([sum(logp_BTV[i, j - 1, ids[j]] for j in range(n_ctx, len(ids)))
                         for i, (ids, n_ctx) in enumerate(seqs)]).reshape(len(DOCS), -1)
    return float(np.mean(np.argmax(scores, axis=1) == [g for _, _, g in DOCS]))


def test_cli_harness_scores_checkpoints_into_eval_jsonl(byte_run, tmp_path, offline, capsys):
    tasks = write_task(tmp_path / "tasks")
    assert cli_main(["scaling", "evaluate", str(byte_run), "--harness",
                     "scaling_tiny_completion", "--harness_include", str(tasks),
                     "--steps", "1,8", "--harness_batch_size", "4"]) == 0
    assert "harness/scaling_tiny_completion/acc=" in capsys.readouterr().out
    rows = [json.loads(x) for x in (byte_run / "eval.jsonl").read_text().splitlines()]
    harness = {(r["step"], r["metric"]): r for r in rows if r["metric"].startswith("harness/")}
    assert set(harness) == {(s, f"harness/scaling_tiny_completion/{m}") for s in (1, 8)
                            for m in ("acc", "acc_stderr")}
    run = json.loads((byte_run / "run.json").read_text())
    for step in (1, 8):
        row = harness[(step, "harness/scaling_tiny_completion/acc")]
        assert row["value"] == pytest.approx(own_accuracy(byte_run, step))
        assert row["tokens"] == step * run["tokens_per_step"]
        assert row["flops"] == pytest.approx(row["tokens"] * run["flops_per_token"])
        assert row["n_params_nonembed"] == run["n_params_nonembed"]
        saved = json.loads((byte_run / "harness" / f"{step}.json").read_text())
        assert saved["results"]["scaling_tiny_completion"]["acc,none"] == row["value"]
    # the run's own evaluation rows at those steps are kept
    assert {(r["step"], r["metric"]) for r in rows} >= {(1, "val/loss"), (8, "val/loss")}
    # and the report shows the metric
    assert cli_main(["scaling", "analyze", str(byte_run), "--out", str(tmp_path / "rep"),
                     "--bootstrap", "0"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "harness/scaling_tiny_completion/acc" in report


def test_import_harness_results_file(tmp_path, capsys):
    """A results file lm_eval wrote (tests/data/harness, see its README) becomes rows at a step."""
    from analysis.synthetic import write_run

    write_run(tmp_path / "run", run_id="r", N=1e6, D=4096 * 64, axes={}, tasks=False)
    results = json.loads(FIXTURE.read_text())
    want = results["results"]["scaling_tiny_completion"]["acc,none"]
    argv = ["scaling", "evaluate", str(tmp_path / "run"), "--import_harness", str(FIXTURE),
            "--steps", "64"]
    assert cli_main(argv) == 0
    assert cli_main(argv) == 0  # importing again replaces the step's harness rows
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    imported = [r for r in rows if r["metric"].startswith("harness/")]
    assert sorted(r["metric"] for r in imported) == [
        "harness/scaling_tiny_completion/acc", "harness/scaling_tiny_completion/acc_stderr"]
    acc = next(r for r in imported if r["metric"].endswith("/acc"))
    assert acc["value"] == want and acc["step"] == 64 and acc["tokens"] == 64 * 4096
    assert math.isclose(acc["flops"], 64 * 4096 * 6e6)
    assert any(r["metric"] == "val/loss" and r["step"] == 64 for r in rows)
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"t": {"alias": "t"}}}))
    assert cli_main(argv[:4] + [str(bad), "--steps", "64"]) == 2
    assert f"{bad}: lm_eval results: no numeric metric" in capsys.readouterr().err


def test_harness_rows_keep_scores_only():
    """Only lm_eval's "<metric>,<filter>" numbers become rows; a filter other than "none" is kept
    in the name; "N/A" stderrs, aliases and sample counts are not scores."""
    from scaling.export.harness import HarnessError, harness_rows

    run = {"tokens_per_step": 100, "flops_per_token": 6.0, "n_params": 10, "n_params_nonembed": 8}
    results = {"results": {"gsm": {"alias": "gsm", "sample_len": 8, "exact_match,strict-match": 0.5,
                                   "exact_match_stderr,strict-match": "N/A",
                                   "exact_match,none": 0.25}}}
    rows = harness_rows(results, 3, run)
    assert {r["metric"]: r["value"] for r in rows} == {
        "harness/gsm/exact_match/strict-match": 0.5, "harness/gsm/exact_match": 0.25}
    assert all(r["step"] == 3 and r["tokens"] == 300 and r["flops"] == 1800.0 for r in rows)
    with pytest.raises(HarnessError, match="no 'results'"):
        harness_rows({"res": {}}, 3, run)

"""Evaluation of checkpoints: values equal an independent computation; rows are replaced, not duplicated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling import config as config_lib
from scaling import data as data_lib
from scaling.evaluate import evaluate_run, select_steps
from scaling.train.loop import train


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory, stdlib_tiny_data_dir):
    c = config_lib.default_config()
    c.data.source = "mixture"
    c.data.task.name = "addition"
    c.data.task.mix_rate = 0.3
    c.data.task.eval_examples = 64
    c.data.task.params = {"n_digits": 2}
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.data.eval_tokens = 2048
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2
    c.train.batch_size, c.train.num_steps, c.train.progress = 8, 8, False
    c.checkpoint.log_max = 4
    workdir = tmp_path_factory.mktemp("mixture")
    train(c, workdir)
    return workdir


def test_select_steps():
    assert select_steps([1, 2, 4], "all") == [1, 2, 4]
    assert select_steps([1, 2, 4], "last") == [4]
    assert select_steps([1, 2, 4], "1,4") == [1, 4]
    with pytest.raises(ValueError, match=r"\[3\]"):
        select_steps([1, 2, 4], "3")


def test_evaluate_all_checkpoints_and_replace_rows(mixture_run):
    rows = evaluate_run(mixture_run, "all", progress=False)
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], {})[r["metric"]] = r["value"]
    assert sorted(by_step) == [1, 2, 4, 8]
    for metrics in by_step.values():
        assert {"val/loss", "addition/exact_match", "addition/answer_logprob",
                "addition/token_accuracy"} <= set(metrics)
        assert 0.0 <= metrics["addition/exact_match"] <= 1.0
        assert metrics["addition/answer_logprob"] < 0.0
        # the per-example sum is the per-token mean times the answer length
        assert metrics["addition/answer_seq_logprob"] == pytest.approx(
            metrics["addition/answer_logprob"] * metrics["addition/answer_tokens"], rel=1e-6)
        assert metrics["addition/answer_tokens"] >= 2
    evaluate_run(mixture_run, "last", progress=False)
    lines = [json.loads(x) for x in (mixture_run / "eval.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["metric"]) for r in lines]
    assert len(keys) == len(set(keys)), "re-evaluation duplicated rows"
    assert {k[0] for k in keys} == {1, 2, 4, 8}


def test_val_loss_equals_independent_computation(mixture_run):
    """The evaluator's val/loss equals a plain numpy cross-entropy over the same batches."""
    from scaling.models import make_model

    config = config_lib.from_dict(json.loads((mixture_run / "config.json").read_text()))
    rows = [json.loads(x) for x in (mixture_run / "eval.jsonl").read_text().splitlines()]
    reported = {r["step"]: r["value"] for r in rows if r["metric"] == "val/loss"}
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore(
        (mixture_run / "checkpoints" / "8" / "state").absolute())
    model = make_model(config.model)
    nll = weight = 0.0
    for b in data_lib.make_eval_batches(config, mixture_run):
        logits = np.asarray(model.apply({"params": state["params"]}, b["inputs"]), np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        tgt = np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
        nll += float(((logz - tgt) * b["weights"]).sum())
        weight += float(b["weights"].sum())
    np.testing.assert_allclose(reported[8], nll / weight, rtol=1e-4)


def test_subtask_answer_logprob_equals_independent_computation(mixture_run):
    """Per-subtask answer_logprob equals a numpy log-softmax over that subtask's answer tokens, and
    the token-weighted mean over subtasks equals the overall answer_logprob."""
    import orbax.checkpoint as ocp

    from scaling.models import make_model

    rows = evaluate_run(mixture_run, "8", progress=False)
    reported = {r["metric"]: r["value"] for r in rows}
    config = config_lib.from_dict(json.loads((mixture_run / "config.json").read_text()))
    state = ocp.StandardCheckpointer().restore(
        (mixture_run / "checkpoints" / "8" / "state").absolute())
    model = make_model(config.model)
    lp_sum: dict[int, float] = {}
    n_tok: dict[int, float] = {}
    for b in data_lib.make_task_eval(config, mixture_run):
        logits = np.asarray(model.apply({"params": state["params"]}, b["inputs"]), np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        tgt = np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
        lp_n = ((tgt - logz) * b["weights"]).sum(-1)
        w_n = b["weights"].sum(-1)
        for i in np.unique(b["subtask"][w_n > 0]):
            m = (b["subtask"] == i) & (w_n > 0)
            lp_sum[int(i)] = lp_sum.get(int(i), 0.0) + float(lp_n[m].sum())
            n_tok[int(i)] = n_tok.get(int(i), 0.0) + float(w_n[m].sum())
    assert len(lp_sum) >= 2, "the fixture should hold several subtasks"
    sub = {int(k.split("/")[1].removeprefix("subtask_")): v for k, v in reported.items()
           if k.startswith("addition/subtask_") and k.endswith("/answer_logprob")}
    assert sorted(sub) == sorted(lp_sum)
    for i in lp_sum:
        assert sub[i] < 0.0
        np.testing.assert_allclose(sub[i], lp_sum[i] / n_tok[i], rtol=1e-4)
    pooled = sum(sub[i] * n_tok[i] for i in sub) / sum(n_tok.values())
    np.testing.assert_allclose(pooled, reported["addition/answer_logprob"], rtol=1e-5)

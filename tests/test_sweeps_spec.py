"""Sweep declarations: IsoFLOP budgets, the model-family rule, axes, rules, names, validation.

Pure tests (no training): expanding a sweep only resolves configs and does the accounting.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from scaling import config as config_lib
from scaling.models import accounting
from scaling.sweeps import manifest as manifest_lib
from scaling.sweeps import runner, spec, testing
from scaling.sweeps.spec import SweepError
from tests.conftest import REPO_ROOT

SWEEP_CONFIGS = REPO_ROOT / "configs" / "sweeps"


def test_isoflop_dry_run_every_run_within_one_step_of_its_budget():
    sweep = spec.load_sweep(str(SWEEP_CONFIGS / "isoflop_tiny.py"))
    runs = spec.expand(sweep)
    budgets = sorted({r.budget for r in runs})
    assert len(budgets) >= 3 and budgets == sorted(sweep.flops)
    assert len(runs) >= 12
    for budget in budgets:
        assert len({r.n for r in runs if r.budget == budget}) >= 4
    for r in runs:
        cfg = r.config
        # recompute everything from the run's own resolved config, independently of the sweep
        assert cfg.model.vocab_size > 0
        fpt = accounting.flops_per_token(cfg.model, cfg.data.seq_len)
        step_flops = fpt * cfg.train.batch_size * cfg.data.seq_len
        steps = config_lib.train_steps(cfg)
        c = steps * step_flops
        assert steps == r.steps >= sweep.min_steps
        assert c == pytest.approx(r.c, rel=1e-12)
        assert r.d == steps * cfg.train.batch_size * cfg.data.seq_len
        # rounding to whole steps: within half a step's FLOPs, so certainly within one
        assert abs(c - r.budget) <= 0.5 * step_flops + 1e-6
        assert abs(c - r.budget) <= step_flops
        # family rule: the achieved non-embedding N is within the stated tolerance of the target
        n = accounting.param_counts(cfg.model)["non_embedding"]
        assert n == r.n
        assert abs(n / r.axes["N_target"] - 1) <= sweep.family.tolerance
        assert r.id == config_lib.config_hash(cfg)
        assert cfg.name == r.name and r.dir == f"runs/{r.name}"
    assert len({r.name for r in runs}) == len(runs)
    assert len({r.id for r in runs}) == len(runs)
    # at a fixed budget, bigger models train on fewer tokens
    for budget in budgets:
        at = sorted((r for r in runs if r.budget == budget), key=lambda r: r.n)
        assert [r.d for r in at] == sorted((r.d for r in at), reverse=True)



def test_isoflop_window_keeps_the_sizes_near_each_budgets_ratio_and_slides_with_c():
    sweep = spec.load_sweep(str(SWEEP_CONFIGS / "isoflop_tiny.py"))
    full = spec.expand(sweep)
    ratios = sorted(r.d / r.n for r in full)
    lo, hi = ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]  # the middle half
    sweep.isoflop_window = (lo, hi)
    skipped: list[str] = []
    runs = spec.expand(sweep, skipped)
    kept = {(r.budget, r.n) for r in runs}
    # exactly the (budget, N) pairs whose D/N is inside the window, computed from the full grid
    assert kept == {(r.budget, r.n) for r in full if lo <= r.d / r.n <= hi}
    assert 0 < len(runs) < len(full)
    assert len(skipped) == len({(r.budget, r.n) for r in full}) - len(kept)
    assert all("outside isoflop_window" in line for line in skipped)
    # larger budgets keep larger models: the window slides up in N with C
    budgets = sorted({r.budget for r in runs})
    smallest = [min(r.n for r in runs if r.budget == b) for b in budgets]
    assert smallest == sorted(smallest) and smallest[0] < smallest[-1]


@pytest.mark.parametrize("window,message", [
    ((20.0,), r"sweep.isoflop_window=\(20.0,\): must be \(lowest, highest\)"),
    ((50.0, 10.0), r"sweep.isoflop_window=\(50.0, 10.0\): must be"),
    ((0.0, 10.0), r"must be"),
    ((1e9, 2e9), r"budget C=\S+ fits no size \(.*D/N=.*isoflop_window=\(1000000000.0, "),
])
def test_isoflop_window_bad_values_are_named(window, message):
    sweep = spec.load_sweep(str(SWEEP_CONFIGS / "isoflop_tiny.py"))
    sweep.isoflop_window = window
    with pytest.raises(SweepError, match=message):
        spec.expand(sweep)


def test_isoflop_window_needs_flop_budgets():
    s = testing.tiny_sweep()
    s.isoflop_window = (1.0, 100.0)
    with pytest.raises(SweepError, match=r"sweep.isoflop_window: needs IsoFLOP budgets"):
        spec.expand(s)

def test_dry_run_cli_prints_the_run_table(capsys):
    from scaling.cli import sweep as sweep_cli

    code = sweep_cli.main(["scaling sweep", "--config", str(SWEEP_CONFIGS / "isoflop_tiny.py"),
                           "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:7] == ["name", "N", "D", "C", "steps", "batch", "lr"]
    runs = spec.expand(spec.load_sweep(str(SWEEP_CONFIGS / "isoflop_tiny.py")))
    for r in runs:
        assert r.name in out and r.id in out
    assert f"{len(runs)} runs" in out


@pytest.mark.parametrize("target", [5e4, 1e5, 2e5, 1e6, 1e7])
def test_family_rule_hits_target_within_tolerance(target):
    family = spec.default_sweep().family  # head_dim 16, aspect 16 (slack 2), tolerance 10%
    model = spec.resolve(config_lib.default_config()).model
    shape, n = spec.family_shape(model, target, family)
    assert abs(n / target - 1) <= family.tolerance
    assert shape["d_model"] % family.head_dim == 0
    assert shape["n_heads"] * family.head_dim == shape["d_model"]
    aspect = shape["d_model"] / shape["n_layers"]
    assert family.aspect / family.aspect_slack <= aspect <= family.aspect * family.aspect_slack
    for k, v in shape.items():
        model[k] = v
    assert accounting.param_counts(model)["non_embedding"] == n


def test_family_rule_rejects_unreachable_target():
    family = spec.default_sweep().family
    model = spec.resolve(config_lib.default_config()).model
    with pytest.raises(SweepError, match=r"N=5k is not reachable within tolerance 0.1"):
        spec.family_shape(model, 5e3, family)  # the smallest shapes have 3.4k and 6.7k


def test_mlp_family_width_rule():
    s = spec.default_sweep()
    s.base.model.kind = "mlp"
    s.base.data.source = "task"
    s.base.data.task.name = "sparse_parity"
    s.sizes = (2e4, 8e4)
    s.tokens = (64 * 50,)
    s.base.train.batch_size = 64
    runs = spec.expand(s)
    assert len(runs) == 2
    for r in runs:
        assert abs(r.n / r.axes["N_target"] - 1) <= s.family.tolerance
        assert r.config.model.mlp_width % s.family.width_multiple == 0
        assert r.steps == 50 and r.config.train.num_steps == 50


def test_axes_product_zip_seeds_and_names():
    s = testing.tiny_sweep()
    s.axes = ({"optim.weight_decay": (0.0, 0.1)},
              {"model.resid_dropout": (0.0, 0.1), "optim.warmup_steps": (2, 5)})
    s.seeds = (0, 1)
    runs = spec.expand(s)
    assert len(runs) == 2 * 2 * 2 * 2  # sizes x wd x (dropout, warmup) zipped x seeds
    combos = {(r.n, r.config.optim.weight_decay, r.config.model.resid_dropout,
               r.config.optim.warmup_steps, r.config.seed) for r in runs}
    assert len(combos) == len(runs)
    for r in runs:  # zipped fields move together
        assert (r.config.model.resid_dropout, r.config.optim.warmup_steps) in ((0.0, 2), (0.1, 5))
        assert r.axes["optim.weight_decay"] == r.config.optim.weight_decay
        assert r.axes["seed"] == r.config.seed
        assert f"-wd{r.config.optim.weight_decay:g}-" in r.name
        assert r.name.endswith(f"-s{r.config.seed}")
        assert r.name.startswith(f"N{spec.format_count(r.n)}-D{spec.format_count(r.d)}-")


def test_run_source_axes_name_runs_by_the_source_run_not_its_path():
    s = testing.tiny_sweep(sizes=(testing.TINY_SIZES[0],))
    sources = ["/data/study/pretrain/runs/N3k-s0", "/data/study/pretrain/runs/N3k-s0:40",
               "/elsewhere/runs/N3k-s0/"]
    s.axes = ({"train.init_from": sources},)
    runs = spec.expand(s)
    assert [r.config.train.init_from for r in runs] == sources
    names = [r.name for r in runs]
    assert all("data" not in n and "study" not in n and "elsewhere" not in n for n in names), names
    assert "-from_N3k-s0_40-" in names[1]
    # the same source name from two places: still two run directories, told apart by their ids
    for i in (0, 2):
        assert names[i] == f"N{spec.format_count(runs[i].n)}-D{spec.format_count(runs[i].d)}-from_N3k-s0-s0-" \
                           f"{runs[i].id[:6]}"
    assert len({r.dir for r in runs}) == 3


def test_tokens_per_param_and_batch_lr_rules():
    s = testing.tiny_sweep()
    s.tokens = None
    s.tokens_per_param = (2.0,)
    s.batch.rule = "table"
    s.batch.table = ((5e3, 4), (1e9, 8))
    s.lr.rule = "power"
    s.lr.ref_n = 3376.0
    s.lr.ref_value = 1e-2
    s.lr.exponent = -0.5
    runs = sorted(spec.expand(s), key=lambda r: r.n)
    small, big = runs
    assert (small.batch, big.batch) == (4, 8)
    assert small.lr == pytest.approx(1e-2 * (small.n / 3376) ** -0.5)
    assert big.lr == pytest.approx(1e-2 * (big.n / 3376) ** -0.5) and big.lr < small.lr
    for r in runs:
        tps = r.batch * r.config.data.seq_len
        assert abs(r.d - 2.0 * r.n) <= tps / 2
    # an axis that sets a rule's field wins over the rule
    s.axes = ({"optim.lr": (1e-3,)},)
    assert {r.lr for r in spec.expand(s)} == {1e-3}


def test_mup_lr_rule_sets_parameterization():
    s = testing.tiny_sweep()
    s.lr.rule = "mup"
    s.lr.base_width = 16
    s.lr.ref_value = 2e-2
    for r in spec.expand(s):
        assert r.config.model.parameterization == "mup"
        assert r.config.model.mup_base_width == 16
        assert r.lr == 2e-2


def _bad(**kw):
    s = testing.tiny_sweep()
    for k, v in kw.items():
        node = s
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return s


INVALID = [
    ("unknown axis field", _bad(axes=({"optim.wieght_decay": (0.0, 0.1)},)),
     r"unknown field 'optim.wieght_decay'"),
    ("empty axis", _bad(axes=({"optim.weight_decay": ()},)), r"axis 'optim.weight_decay' is empty"),
    ("empty seeds", _bad(seeds=()), r"sweep.seeds: axis is empty"),
    ("zip lengths", _bad(axes=({"optim.lr": (1e-3, 2e-3), "optim.b2": (0.9,)},)),
     r"zipped fields have different lengths"),
    ("flop budget too small", _bad(tokens=None, flops=(1e3, 1e12), min_steps=4),
     r"budget C=1e3 fits no size \(N=3.38k needs >= "),
    ("token budget too small", _bad(tokens=(64,)),
     r"token budget D=64 is too small for the model with N=3.38k"),
    ("duplicate runs", _bad(axes=({"optim.weight_decay": (0.1, 0.1)},)), r"duplicate runs"),
    ("duplicate via sizes", _bad(sizes=(3.4e3, 3.5e3)), r"duplicate runs N3.38k-"),
    ("two data axes", _bad(tokens_per_param=(20.0,)), r"at most one of"),
    ("bad run value", _bad(axes=({"model.positions": ("rope", "alibi")},)),
     r"config.model.positions='alibi'"),
    ("wrong type", _bad(axes=({"model.n_layers": (1.5,)},)),
     r"'model.n_layers' cannot take value 1.5"),
    ("unreachable size", _bad(sizes=(5e3,)), r"N=5k is not reachable"),
    ("bad rule", _bad(lr__rule="cosine"), r"sweep.lr.rule='cosine'"),
    ("seed as axis", _bad(axes=({"seed": (1, 2)},)), r"field 'seed' cannot be an axis"),
    ("length axis with budget", _bad(axes=({"train.num_steps": (5, 10)},)),
     r"\['train.num_steps'\] conflict with the data axis"),
    ("batch vs devices", _bad(resources__devices_per_process=8),
     r"on 8 devices: config.train.batch_size=4"),
]


@pytest.mark.parametrize("what,sweep,message", INVALID, ids=[x[0] for x in INVALID])
def test_invalid_sweeps_fail_before_anything_starts(tmp_path, what, sweep, message):
    root = tmp_path / "root"
    with pytest.raises(SweepError, match=message):
        runner.run_sweep(sweep, root, progress=False)
    assert not root.exists()  # nothing written, no run started


def test_unknown_sweep_field_fails():
    s = testing.tiny_sweep()
    s.sizez = (1e4,)
    with pytest.raises(SweepError, match=r"sweep.sizez: unknown sweep field"):
        spec.expand(s)


def test_invalid_sweep_cli_exits_2_naming_the_field(tmp_path, capsys):
    from scaling.cli import sweep as sweep_cli

    cfg = tmp_path / "tiny_cfg.py"
    cfg.write_text("from scaling.sweeps.testing import tiny_sweep\n\n\n"
                   "def get_config():\n    return tiny_sweep()\n")
    root = tmp_path / "root"
    code = sweep_cli.main(["scaling sweep", "--config", str(cfg), "--root", str(root),
                           "--config.axes=({'optim.wieght_decay': (0.1,)},)"])
    assert code == 2
    assert "unknown field 'optim.wieght_decay'" in capsys.readouterr().err
    assert not root.exists()


def test_configs_sweeps_expand():
    files = sorted(p for p in SWEEP_CONFIGS.glob("*.py") if not p.name.startswith("_"))
    names = {p.stem for p in files}
    assert {"isoflop_tiny", "size_data_tiny", "ablation_tiny"} <= names
    for path in files:
        sweep = spec.load_sweep(str(path))
        runs = spec.expand(sweep)
        assert runs, path
        if path.stem == "size_data_tiny":
            assert len(runs) == len(sweep.sizes) * len(sweep.tokens) >= 12
            for r in runs:
                assert abs(r.d - r.axes["D_target"]) <= r.tokens_per_step / 2
        if path.stem == "ablation_tiny":
            assert any(len(group) for group in sweep.axes)
            assert len({r.config.optim.weight_decay for r in runs}) == 2


def test_manifest_merge_keeps_runs_and_is_atomic(tmp_path):
    runs = spec.expand(testing.tiny_sweep())
    entries = [r.manifest_entry() for r in runs]
    m = manifest_lib.merge({"version": 1, "runs": []}, entries[:1])
    m["runs"][0]["status"] = "completed"
    m["runs"][0]["attempts"] = 1
    m = manifest_lib.merge(m, entries)  # re-merging keeps status, appends the new run
    assert [e["id"] for e in m["runs"]] == [r.id for r in runs]
    assert m["runs"][0]["status"] == "completed" and m["runs"][1]["status"] == "pending"
    manifest_lib.write_manifest(tmp_path, m)
    back = manifest_lib.read_manifest(tmp_path)
    assert back["runs"] == m["runs"] and back["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temp file left
    with pytest.raises(ValueError, match="duplicated"):
        manifest_lib.write_manifest(tmp_path, {"runs": m["runs"] + m["runs"][:1]})
    assert json.loads((tmp_path / "manifest.json").read_text())["runs"] == m["runs"]


def test_prepare_writes_run_dirs_and_rejects_changed_configs(tmp_path, capsys):
    sweep = testing.tiny_sweep()
    runs = spec.expand(sweep)
    runner.prepare(tmp_path, sweep, runs)
    for r in runs:
        d = tmp_path / r.dir
        run = json.loads((d / "run.json").read_text())
        assert run["id"] == r.id and run["axes"] == r.axes and run["version"] == 1
        assert run["n_params_nonembed"] == r.n and run["num_steps"] == r.steps
        assert json.loads((d / "status.json").read_text())["status"] == "pending"
        cfg = config_lib.from_dict(json.loads((d / "config.json").read_text()))
        assert config_lib.config_hash(cfg) == r.id  # what the worker loads is the same run
    m = manifest_lib.read_manifest(tmp_path)
    assert [e["id"] for e in m["runs"]] == [r.id for r in runs]
    assert {e["status"] for e in m["runs"]} == {"pending"}
    from scaling.cli import sweep_status

    assert sweep_status.main(["scaling sweep-status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(r.name in out for r in runs) and "pending 2" in out and "no runner active" in out
    assert sweep_status.main(["scaling sweep-status", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["id"], r["status"], r["step"]) for r in rows] == [(r.id, "pending", 0) for r in runs]
    assert sweep_status.main(["scaling sweep-status", str(tmp_path / "nope")]) == 2
    changed = testing.tiny_sweep()
    changed.base.optim.b2 = 0.99  # same names, different configs
    with pytest.raises(SweepError, match="its config changed"):
        runner.prepare(tmp_path, changed, spec.expand(changed))


def test_format_helpers():
    assert spec.format_count(3.2e6) == "3.2M" and spec.format_count(50e6) == "50M"
    assert spec.format_count(999) == "999" and spec.format_count(1234) == "1.23k"
    assert spec.format_flops(1e15) == "1e15" and spec.format_flops(2.5e14) == "2.5e14"
    assert math.isclose(float(spec.format_flops(3e11).replace("e", "e+")), 3e11)
    assert pathlib.Path(spec.run_name({"seed": 0}, 3_200_000, 50_000_000, {}, None)).name == \
        "N3.2M-D50M-s0"


def test_budgets_beyond_the_unique_cap_repeat_data_for_the_same_steps(stdlib_tiny_data_dir):
    sweep = spec.load_sweep(str(SWEEP_CONFIGS / "isoflop_tiny.py"))
    uncapped = {r.name: r for r in spec.expand(sweep)}
    cap = 300_000
    sweep.max_unique_tokens = cap
    capped = spec.expand(sweep)
    assert [r.name for r in capped] == list(uncapped)  # same runs, same names, same D and C
    repeated = 0
    for r in capped:
        cfg, ref = r.config, uncapped[r.name]
        assert (r.steps, r.d, r.c) == (ref.steps, ref.d, ref.c)
        assert config_lib.train_steps(cfg) == r.steps
        if ref.d <= cap - 1:
            assert cfg.data.num_tokens == ref.config.data.num_tokens and cfg.data.epochs == 1
            continue
        repeated += 1
        assert cfg.data.num_tokens <= cap - 1
        assert cfg.data.num_tokens % r.tokens_per_step == 0  # whole batches per epoch
        assert cfg.data.epochs > 1
        assert cfg.data.num_tokens * cfg.data.epochs == pytest.approx(r.d, rel=1e-9)
    assert 0 < repeated < len(capped)
    # -1: the cap is the base split's own size (the tiny corpus holds ~3e5 byte tokens)
    sweep.max_unique_tokens = -1
    sweep.base.data.tfds_name = "stdlib_corpus/tiny"
    sweep.base.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    from scaling.data import num_unique_tokens
    total = num_unique_tokens(spec.resolve(sweep.base))
    for r in spec.expand(sweep):
        assert r.config.data.num_tokens <= total - 1 and r.steps == uncapped[r.name].steps
    sweep.max_unique_tokens = -2
    with pytest.raises(SweepError, match=r"sweep.max_unique_tokens=-2"):
        spec.expand(sweep)

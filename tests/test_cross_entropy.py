"""The record field cross_entropy: the mean natural-log cross-entropy of the model's outputs as logits,
(1/n) Σ_i [logsumexp(ŷ_i) − ŷ_i[y_i]], for probes with class labels (`loss` stays the MSE).

Checked against a slow, obvious reference (torch.log_softmax in float64 of the tiny model's outputs,
recomputed here), for invariance under a constant added to every logit, the all-equal-logits
identity log C, nulls where it does not apply, and through every path a sum flows: numpy and torch
accumulators, the Gram route, `fdl analyze` / `report` / `compare`, several probes and layers, the
resume of a store written before the field existed, and torchrun --shard-probe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fdl_cli.extract import LayerSpec, extract
from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import measure
from fdl_cli.store import StoreReader
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_analyze import fdl
from tests.test_distributed import _make_run, _single, _stored, _torchrun
from tests.tiny_models import mlp

N, C = 300, 3
BATCH = 64
LAYER = [LayerSpec(module="1", use_input=False)]  # the ReLU's output: the penultimate features


def _probe(seed: int = 0, n: int = N, classes: int = C) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, classes, size=n)


def _outputs(model: torch.nn.Module, x: np.ndarray, *, batch: int = BATCH) -> torch.Tensor:
    """The model's outputs on the probe, in the batches fdl runs (so the float32 rounding is the same)."""
    with torch.inference_mode():
        parts = [model(torch.from_numpy(x[start : start + batch])) for start in range(0, len(x), batch)]
    return torch.cat(parts)


def _reference(outputs: torch.Tensor, labels: np.ndarray) -> float:
    """The slow, obvious definition: −mean log_softmax(ŷ)[y] in float64."""
    log_probs = torch.log_softmax(outputs.to(torch.float64), dim=1)
    return float(-log_probs[torch.arange(len(labels)), torch.from_numpy(labels)].mean())


def _analysed(model: torch.nn.Module, x: np.ndarray, y: np.ndarray | None, *, task: str = "classes",
              dtype: str = "float32", **options: object) -> dict:
    options = {"batch_size": BATCH, "anchor_size": 100, **options}  # anchors end inside a batch (a split update)
    result = extract(model.to(torch.float64) if dtype == "float64" else model, LAYER, x, y, task=task,
                     device=torch.device("cpu"), dtype=dtype, **options)  # type: ignore[arg-type]
    return measure(result["1"].moments).scalars


# ---------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize(
    "options",
    [{}, {"keep_features": lambda width: True}, {"product_dtype": "float32"}, {"batch_size": 7}],
    ids=["torch-in-place", "gram-route", "float32-products", "batches-of-7"],
)
def test_matches_log_softmax_in_float64(options: dict) -> None:
    model = mlp(4, 8, C, seed=3)
    x, y = _probe()
    got = _analysed(model, x, y, **options)["cross_entropy"]
    want = _reference(_outputs(model, x, batch=int(options.get("batch_size", BATCH))), y)
    assert 0.5 < want < 3.0  # not a trivial value
    assert got == pytest.approx(want, rel=1e-13, abs=0)


def test_numpy_and_torch_accumulators_agree_with_the_reference() -> None:
    rng = np.random.default_rng(5)
    features, outputs = rng.normal(size=(N, 6)), rng.normal(size=(N, 10)) * 4.0 + 20.0  # shifted outputs
    labels = rng.integers(0, 10, size=N)
    want = _reference(torch.from_numpy(outputs), labels)
    for convert in (lambda a: a, torch.from_numpy):
        accumulator = MomentAccumulator(task="classes")
        for start in range(0, N, 50):
            accumulator.update(*(convert(a[start : start + 50]) for a in (features, outputs, labels)))
        moments = accumulator.moments()
        assert moments.shift_o is not None  # the other sums are about the first batch's means; this one not
        assert measure(moments).scalars["cross_entropy"] == pytest.approx(want, rel=1e-13, abs=0)


def test_merged_shards_sum_as_one_pass() -> None:
    rng = np.random.default_rng(6)
    features, outputs, labels = rng.normal(size=(N, 5)), rng.normal(size=(N, 4)), rng.integers(0, 4, size=N)
    parts = []
    for rows in (slice(0, 120), slice(120, N)):
        accumulator = MomentAccumulator(task="classes")
        accumulator.update(features[rows], outputs[rows], labels[rows])
        parts.append(accumulator.moments())
    merged = parts[0].merge(parts[1])
    want = _reference(torch.from_numpy(outputs), labels)
    assert merged.sum_xent == pytest.approx(want * N, rel=1e-13)
    assert measure(merged).scalars["cross_entropy"] == pytest.approx(want, rel=1e-13, abs=0)


def test_a_confident_prediction_keeps_its_relative_precision() -> None:
    """Margins of 30 to 40: each term is ~1e-13 to 1e-17. Formed as log(Σ exp(ŷ − max)) it would be the
    log of a sum rounded next to 1, off by up to ~1e-3 relative; fdl's log1p of the other terms is
    exact to rounding (checked against 50-digit arithmetic)."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(7)
    outputs = rng.normal(size=(64, 5))
    labels = rng.integers(0, 5, size=64)
    outputs[np.arange(64), labels] += rng.uniform(30.0, 40.0, size=64)
    accumulator = MomentAccumulator(task="classes")
    accumulator.update(torch.from_numpy(rng.normal(size=(64, 3))), torch.from_numpy(outputs), torch.from_numpy(labels))
    got = measure(accumulator.moments()).scalars["cross_entropy"]
    with mpmath.workdps(50):
        total = mpmath.fsum(
            mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row)) - mpmath.mpf(float(row[label]))
            for row, label in zip(outputs, labels, strict=True)
        )
        want = float(total / 64)
    assert 1e-17 < want < 1e-12
    assert got == pytest.approx(want, rel=1e-13, abs=0)


# ------------------------------------------------------------------------------- invariance, identity


def _head_shifted(shift: float) -> torch.nn.Module:
    model = mlp(4, 8, C, seed=4).to(torch.float64)  # shifted in float64: no float32 rounding of the bias
    with torch.no_grad():
        model[2].bias += shift  # every logit moves by the same constant
    return model


@pytest.mark.parametrize("shift", [1000.0, -1000.0, 0.75])
def test_a_constant_added_to_every_logit_changes_nothing(shift: float) -> None:
    """±1000: exp of the raw logits over- or underflows float64; the model runs in float64 so that
    the shifted logits carry no float32 rounding of their own."""
    x, y = _probe(1)
    plain = _analysed(_head_shifted(0.0), x, y, dtype="float64")["cross_entropy"]
    shifted = _analysed(_head_shifted(shift), x, y, dtype="float64")["cross_entropy"]
    assert math.isfinite(shifted) and plain > 0.1
    assert shifted == pytest.approx(plain, rel=1e-11, abs=0)


@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
def test_all_equal_logits_give_log_c(classes: int) -> None:
    """A zero head with equal biases: every class has probability 1/C, so the cross-entropy is log C,
    to the rounding of one log1p(C − 1) and of a mean of 256 equal terms (two ulps)."""
    model = mlp(4, 8, classes, seed=2)
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.fill_(0.37)
    x, y = _probe(2, n=256, classes=classes)
    got = _analysed(model, x, y)["cross_entropy"]
    assert abs(got - math.log(classes)) <= 2 * math.ulp(math.log(classes))


# ------------------------------------------------------------------------------------------ nulls


def test_null_for_regression_targets_and_for_a_probe_without_targets() -> None:
    model = mlp(4, 8, C, seed=3)
    x, y = _probe()
    targets = np.random.default_rng(9).normal(size=(N, C))
    regression = _analysed(model, x, targets, task="regression")
    assert regression["cross_entropy"] is None and regression["loss"] is not None and regression["r2"] is not None
    unlabelled = _analysed(model, x, None, task="none")
    assert unlabelled["cross_entropy"] is None and unlabelled["loss"] is None
    assert _analysed(model, x, y)["cross_entropy"] is not None


def test_null_for_regression_through_the_cli(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "run")
    x = np.load(run / "probe.npz")["x"]
    np.savez(run / "regression.npz", x=x, y=np.random.default_rng(1).normal(size=(len(x), C)))
    store = tmp_path / "r.h5"
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", run / "regression.npz", "--out", store, "--steps", "0,10", "--json")
    assert done.code == 0, done.stderr
    records = json.loads(fdl("report", store, "--json").stdout)
    assert [r["cross_entropy"] for r in records] == [None, None]
    assert all(r["r2"] is not None for r in records)
    with h5py.File(store, "r") as handle:
        trajectory = handle["trajectories"]["probe"]
        assert np.isnan(trajectory[next(iter(trajectory))]["cross_entropy"][()]).all()


# ------------------------------------------------------------------------------------- through the CLI


def _cli_reference(run: Path, probe: str = "probe.npz") -> dict[int, float]:
    """Each checkpoint's cross-entropy on the probe, from its own weights (the fdl defaults: float32
    forward pass, batches of 512)."""
    data = np.load(run / probe)
    expected = {}
    for path in sorted(run.glob("step_*.safetensors")):
        model = mlp(4, 8, C)
        model.load_state_dict(load_file(str(path)))
        expected[int(path.stem.split("_")[1])] = _reference(_outputs(model.eval(), data["x"], batch=512), data["y"])
    return expected


def _analyze_cli(run: Path, store: Path, *extra: str) -> None:
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", run / "probe.npz", "--out", store, "--json", *extra)
    assert done.code == 0, done.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("xent") / "run")


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_analyze_then_report_json_csv_table_html(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    _analyze_cli(run, store)
    expected = _cli_reference(run)
    records = json.loads(fdl("report", store, "--json").stdout)
    assert sorted(r["step"] for r in records) == sorted(expected)
    for record in records:
        assert record["cross_entropy"] == pytest.approx(expected[record["step"]], rel=1e-12, abs=0)
        assert record["loss"] is not None  # the MSE is still there
    assert list(records[0])[-1] == "cross_entropy"  # after the other extras (MEASURE_FIELDS order)
    csv_lines = fdl("report", store, "--format", "csv").stdout.splitlines()
    header = csv_lines[0].split(",")
    assert float(csv_lines[1].split(",")[header.index("cross_entropy")]) == pytest.approx(expected[0], rel=1e-12)
    table = fdl("report", store).stderr  # the human table (stdout is for machine-readable output)
    header = next(line for line in table.splitlines() if line.startswith("step"))
    assert "CE" in header.split() and "loss" not in header.split()  # in the MSE's place for classes
    assert "CE = cross_entropy (mean cross-entropy, natural log" in " ".join(table.split())
    page = tmp_path / "r.html"
    assert fdl("report", store, "--html", page).code == 0
    assert 'title="cross_entropy"' in page.read_text()


def test_compare_carries_it(run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _analyze_cli(run, a, "--steps", "0,10")
    _analyze_cli(run, b, "--steps", "0,10")
    compared = json.loads(fdl("compare", a, b, "--json").stdout)
    assert [step["step_a"] for step in compared["steps"]] == [0, 10]  # a loop over no steps would pass
    for step in compared["steps"]:
        assert step["a"]["cross_entropy"] is not None and step["a"]["cross_entropy"] == step["b"]["cross_entropy"]
        assert step["differences"]["cross_entropy"] == 0.0
    assert "delta_cross_entropy" in fdl("compare", a, b, "--format", "csv").stdout.splitlines()[0]


def test_several_probes_and_layers(run: Path, tmp_path: Path) -> None:
    """The outputs do not depend on the hooked layer: both layers of a probe have the same value, on
    the 300-sample probe through the torch in-place route, on the 6-sample one through the Gram route
    (8 features, and 4 at the model's input, against 6 samples: the Gram route for the first)."""
    data = np.load(run / "probe.npz")
    np.savez(run / "small.npz", x=data["x"][:6], y=data["y"][:6])
    store = tmp_path / "m.h5"
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", f"big={run / 'probe.npz'}", "--probe", f"small={run / 'small.npz'}",
               "--layer", "1", "--layer", "0:input", "--out", store, "--steps", "0,20", "--json")
    assert done.code == 0, done.stderr
    records = json.loads(fdl("report", store, "--json").stdout)
    assert len(records) == 2 * 2 * 2
    for probe, file in (("big", "probe.npz"), ("small", "small.npz")):
        probe_data = np.load(run / file)
        for step in (0, 20):
            model = mlp(4, 8, C)
            model.load_state_dict(load_file(str(run / f"step_{step}.safetensors")))
            want = _reference(_outputs(model.eval(), probe_data["x"], batch=512), probe_data["y"])
            values = [r["cross_entropy"] for r in records if r["probe"] == probe and r["step"] == step]
            assert len(values) == 2
            for value in values:
                assert value == pytest.approx(want, rel=1e-12, abs=0), (probe, step)


# ----------------------------------------------------------------------------- a store without it


def _as_written_before_the_field(store: Path) -> None:
    """What an fdl before cross_entropy wrote: no attribute in the checkpoint groups, no trajectory."""
    with h5py.File(store, "r+") as handle:
        for group in handle["checkpoints"].values():
            for probe in group.values():
                for leaf in probe.values():
                    del leaf.attrs["cross_entropy"]
        for probe in handle["trajectories"].values():
            for layer in probe.values():
                del layer["cross_entropy"]


def test_a_store_written_before_the_field_reads_and_resumes(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "old.h5"
    _analyze_cli(run, store, "--steps", "0,10,30")
    before = _stored(store)
    _as_written_before_the_field(store)

    with StoreReader(store) as reader:  # read as it is: null, without a warning or a rebuild
        assert reader.warnings == []
        records = reader.records()
        assert [r["cross_entropy"] for r in records] == [None, None, None]
        assert reader.arrays(10).scalars["cross_entropy"] is None
    for record in records:
        assert {k: v for k, v in record.items() if k != "cross_entropy"} == {
            k: v for k, v in before[record["step"]].items() if k != "cross_entropy"}
    report = fdl("report", store, "--json")
    assert report.code == 0 and "warning" not in report.stderr
    table = fdl("report", store)
    assert table.code == 0  # the narrow table keeps the MSE loss: no cross-entropy to show
    assert "loss" in next(line for line in table.stderr.splitlines() if line.startswith("step")).split()

    _analyze_cli(run, store)  # resume: the other four checkpoints (step 30 is refreshed: step 20 is new)
    expected = _cli_reference(run)
    with StoreReader(store) as reader:
        assert reader.warnings == []
        records = {r["step"]: r for r in reader.records()}
    assert sorted(records) == sorted(expected)
    for step, record in records.items():
        if step in (0, 10, 30):  # analysed by the "older" fdl: left as they were
            assert record["cross_entropy"] is None, step
        else:
            assert record["cross_entropy"] == pytest.approx(expected[step], rel=1e-12, abs=0), step
    assert records[30]["prev_step"] == 20
    with h5py.File(store, "r") as handle:  # the trajectories were rewritten with the field
        column = handle["trajectories"]["probe"]["2:input"]["cross_entropy"][()]
    assert np.isnan(column[:2]).all() and np.isnan(column[3]) and np.isfinite(column[[2, 4, 5, 6]]).all()

    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", run / "probe.npz", "--out", store, "--json", "--overwrite")
    assert done.code == 0, done.stderr
    overwritten = _stored(store)
    assert sorted(overwritten) == sorted(expected)  # all() over no records would pass
    assert all(r["cross_entropy"] is not None for r in overwritten.values())
    for step, record in overwritten.items():  # the steps the older fdl left null are now computed
        assert record["cross_entropy"] == pytest.approx(expected[step], rel=1e-12, abs=0), step


def test_trajectories_rewritten_without_the_field_read_it_from_the_checkpoint_groups(run: Path, tmp_path: Path) -> None:
    """An earlier fdl resuming this fdl's store rewrites the trajectories with the fields it knows
    (and leaves the groups it does not touch as they were): the values are still in the groups."""
    store = tmp_path / "mixed.h5"
    _analyze_cli(run, store, "--steps", "0,10")
    before = _stored(store)
    with h5py.File(store, "r+") as handle:
        del handle["trajectories"]["probe"]["2:input"]["cross_entropy"]
    with StoreReader(store) as reader:
        assert reader.warnings == []
        assert {r["step"]: r["cross_entropy"] for r in reader.records()} == {
            step: record["cross_entropy"] for step, record in before.items()}
    _analyze_cli(run, store, "--steps", "0,10,20")
    with h5py.File(store, "r") as handle:
        column = handle["trajectories"]["probe"]["2:input"]["cross_entropy"][()]
    assert column.tolist() == [before[0]["cross_entropy"], before[10]["cross_entropy"], _stored(store)[20]["cross_entropy"]]


def test_compare_an_old_store_with_a_new_one(run: Path, tmp_path: Path) -> None:
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    _analyze_cli(run, old, "--steps", "0,10")
    _as_written_before_the_field(old)
    _analyze_cli(run, new, "--steps", "0,10")
    compared = json.loads(fdl("compare", old, new, "--json").stdout)
    assert [step["differences"]["cross_entropy"] for step in compared["steps"]] == [None, None]
    assert all(step["b"]["cross_entropy"] is not None for step in compared["steps"])


# ---------------------------------------------------------------------------------------- torchrun


def test_shard_probe_equals_one_process(run: Path, tmp_path: Path) -> None:
    """Two gloo ranks, each summing its half of the probe; the sums are all-reduced."""
    _single(run, tmp_path / "single.h5", steps=(0, 30, 60))
    expected = _stored(tmp_path / "single.h5")
    _torchrun(run, tmp_path / "two.h5", "--shard-probe", "--steps", "0,30,60")
    got = _stored(tmp_path / "two.h5")
    assert sorted(got) == [0, 30, 60]
    for step, record in expected.items():
        assert record["cross_entropy"] is not None
        assert got[step]["cross_entropy"] == pytest.approx(record["cross_entropy"], rel=1e-13, abs=0), step

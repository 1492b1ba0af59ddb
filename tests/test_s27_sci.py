"""Every number fdl prints or stores against a SPEC-only float64 reference (tests/spec_reference_s27.py).

Real data (scikit-learn's bundled digits), a tiny tanh MLP trained for a few steps, a checkpoint a step, and
`fdl analyze` / `export` / `report` / `compare` / `classify` run as a user runs them. The network computes in
float64 (a float32 gain parameter makes it a model that mixes dtypes on purpose, which fdl keeps as it is:
docs/usage.md, "The factory and the weights"), so the features fdl extracts are the ones this file computes
to float64 rounding and the comparison holds at rtol 1e-9. The exceptions, each principled:

- the overlaps are taken by fdl from the eigenfunction values it *stores* in float32 (docs/store.md), so they
  and the stored eigenfunctions are compared at one float32 ulp (1.2e-7; the overlaps measured within 2.1e-9);
- a plain float32 model (`test_float32_model_within_its_own_rounding`) moves the measures by its own rounding
  when fdl's forward pass picks other kernels than this file's (docs/measures.md, "Invariances of a float32
  model"): compared there at 1e-5, from features this file extracts in float32 and casts to float64 (here the
  two passes agree, measured within 5e-14; the bound is for a pass of another batch shape or thread count).

Where SPEC leaves a choice open the reference is told the one docs/measures.md documents (marked (choice)):
the centered targets' energy under --center, NC1's Σ_B about the probe mean, unweighted over the C' classes
present, the overlap's divisor d (= k in the non-degenerate case here).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from tests import spec_reference_s27 as ref
from tests.cli_run import fdl_in_process, model_file

sklearn_datasets = pytest.importorskip("sklearn.datasets")

RTOL = 1e-9
STEPS = 5
N_PROBE = 240

MODEL = '''
import numpy as np
import torch
from torch import nn


class Wide(nn.Linear):
    """A float32 nn.Linear that computes in float64 (fdl keeps float32 weights; the forward's float64 is its own)."""

    def forward(self, x):
        return nn.functional.linear(x.double(), self.weight.double(), self.bias.double())


class Head(Wide):
    """The head: reads features scaled by `scale` and rotated by `rot`, and undoes both, so the outputs stay."""

    scale, rot = 1.0, None

    def forward(self, x):
        x = x.double() if self.rot is None else x.double() @ self.rot.T
        return super().forward(x / self.scale)


class Net(nn.Module):
    """64-24-12-C tanh MLP in float64 (float32 with wide=False); the penultimate features ×scale, rotated."""

    def __init__(self, out=10, scale=1.0, rotate=0, wide=True):
        super().__init__()
        linear = Wide if wide else nn.Linear
        self.l1, self.l2 = linear(64, 24), linear(24, 12)
        self.head = Head(12, out) if wide else nn.Linear(12, out)
        self.scale, self.rot = scale, None
        if rotate:
            self.rot = torch.from_numpy(np.linalg.qr(np.random.default_rng(rotate).standard_normal((12, 12)))[0])
        self.head.scale, self.head.rot = scale, self.rot

    def penultimate(self, x):
        h = torch.tanh(self.l2(torch.tanh(self.l1(x)))) * self.scale
        return h if self.rot is None else h @ self.rot

    def forward(self, x):
        return self.head(self.penultimate(x))


def build(out=10, scale=1.0, rotate=0, wide=True):
    return Net(out, scale, rotate, wide)
'''


def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = sklearn_datasets.load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def _targets(x: np.ndarray, labels: np.ndarray, regression: bool) -> np.ndarray:
    if not regression:
        return labels
    # three smooth functions of the image: ink, left-right balance, the label scaled
    ink = x.mean(1)
    balance = x.reshape(-1, 8, 8)[:, :, :4].mean((1, 2)) - x.reshape(-1, 8, 8)[:, :, 4:].mean((1, 2))
    return np.stack([ink, balance, labels / 9.0], 1).astype(np.float32)


def _train(module: Any, folder: Path, regression: bool, kwargs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Full-batch SGD on 600 training digits, a state_dict saved before each of STEPS steps and after the last."""
    x, labels = _digits()
    y = _targets(x, labels, regression)
    torch.manual_seed(0)
    net = module.build(**kwargs)
    xt, yt = torch.from_numpy(x[:600]), torch.from_numpy(y[:600])
    opt = torch.optim.SGD(net.parameters(), lr=0.5 if not regression else 0.2)
    saved = []
    for step in range(STEPS + 1):
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        torch.save(state, folder / f"step_{step}.pt")
        saved.append(state)
        if step == STEPS:
            break
        opt.zero_grad()
        out = net(xt)
        loss = torch.nn.functional.mse_loss(out, yt.to(out.dtype)) if regression else \
            torch.nn.functional.cross_entropy(out, yt)
        loss.backward()
        opt.step()
    return saved


def _analyze(root: Path, name: str, run: Path, probe: Path, kwargs: dict[str, Any], *options: object) -> Path:
    """`fdl analyze ... --json` into NAME.h5, its JSON Lines kept beside it as NAME.jsonl."""
    store = root / f"{name}.h5"
    done = fdl_in_process("analyze", run, "--model", f"{root / 'model.py'}:build", "--model-kwargs",
                          json.dumps(kwargs), "--probe", probe, "--out", store, "--json", "--commit-interval", 0, *options)
    assert done.returncode == 0, done.stderr
    (root / f"{name}.jsonl").write_text(done.stdout, encoding="utf-8")
    return store


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The runs, their probes and stores: cls (classification), reg (regression, 3 outputs), opt (cls with
    --center --reference 2 --anchor-size 40 --dlr-energy 1), scaled (penultimate ×7, head ÷7), rotated
    (penultimate rotated by an orthogonal R, head by R), perm (cls on the probe's rows permuted), f32 (the
    same checkpoints run in float32), no3 (a probe without the class 3, first and last checkpoints)."""
    root = tmp_path_factory.mktemp("s27sci")
    module = model_file(root, MODEL)
    x, labels = _digits()
    rows = slice(1000, 1000 + N_PROBE)
    perm = np.random.default_rng(1).permutation(N_PROBE)
    no_threes = np.flatnonzero(labels != 3)[1000:1060]
    probes = {"cls": (x[rows], labels[rows]), "reg": (x[rows], _targets(x, labels, True)[rows]),
              "perm": (x[rows][perm], labels[rows][perm]), "no3": (x[no_threes], labels[no_threes])}
    for name, (px, py) in probes.items():
        np.savez(root / f"{name}.npz", x=px, y=py)
    states = {}
    for name, regression, kwargs in (("cls", False, {}), ("reg", True, {"out": 3})):
        (root / name).mkdir()
        states[name] = _train(module, root / name, regression, kwargs)
    kwargs = {"cls": {}, "reg": {"out": 3}, "opt": {}, "scaled": {"scale": 7.0}, "rotated": {"rotate": 5},
              "perm": {}, "f32": {"wide": False}, "no3": {}}
    stores = {
        "cls": _analyze(root, "cls", root / "cls", root / "cls.npz", kwargs["cls"]),
        "reg": _analyze(root, "reg", root / "reg", root / "reg.npz", kwargs["reg"]),
        "opt": _analyze(root, "opt", root / "cls", root / "cls.npz", kwargs["opt"], "--center", "--reference",
                        2, "--anchor-size", 40, "--dlr-energy", 1),
        "scaled": _analyze(root, "scaled", root / "cls", root / "cls.npz", kwargs["scaled"]),
        "rotated": _analyze(root, "rotated", root / "cls", root / "cls.npz", kwargs["rotated"]),
        "perm": _analyze(root, "perm", root / "cls", root / "perm.npz", kwargs["perm"]),
        "f32": _analyze(root, "f32", root / "cls", root / "cls.npz", kwargs["f32"]),
        "no3": _analyze(root, "no3", root / "cls", root / "no3.npz", kwargs["no3"], "--steps", f"0,{STEPS}"),
    }
    return {"root": root, "module": module, "probes": probes, "states": states, "stores": stores,
            "kwargs": kwargs, "perm": perm}


# ------------------------------------------------------------------ the reference, from the checkpoints


def _forward(lab: dict[str, Any], run: str, state: dict[str, torch.Tensor], x: np.ndarray) -> tuple[np.ndarray, ...]:
    """(features, outputs) of one checkpoint on x, as float64 (a float32 model's cast after its forward)."""
    net = lab["module"].build(**lab["kwargs"][run])
    net.load_state_dict(state)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return (net.penultimate(xt).double().numpy(), net(xt).double().numpy())


def _reference(lab: dict[str, Any], run: str, states: str = "cls", probe: str = "cls", center: bool = False,
               reference: int = 0, anchors: int = 4096, energy: float = 0.99) -> list[dict[str, Any]]:
    """Every record field and stored array of each checkpoint, from SPEC through tests/spec_reference_s27."""
    x, targets = lab["probes"][probe]
    regression = targets.dtype.kind == "f"
    feats = [_forward(lab, run, state, x) for state in lab["states"][states]]
    params = [[t.numpy() for name, t in state.items()] for state in lab["states"][states]]
    m = min(len(x), anchors)
    n_out = feats[0][1].shape[1]
    out = []
    for step, (f, o) in enumerate(feats):
        r = ref.checkpoint_measures(f, o, targets, classification=not regression, center=center, energy=energy)
        c = min(n_out, r["rank"])
        r["pi_hat_C"] = float(np.sum(r["utility"][:c]))
        r["pi_star_C"] = float(np.sum(r["quality"][:c]))
        r["nc1"] = None if regression else ref.nc1(f, targets, n_out, weighting="classes about the probe mean")
        if regression:
            r["r2_outputs"] = [ref.performance(o[:, [j]], targets[:, [j]], False)["r2"] for j in range(n_out)]
        else:
            terms = [np.log(np.sum(np.exp(row))) - row[label] for row, label in zip(o, targets, strict=True)]
            r["cross_entropy"] = float(np.mean(terms))
        r["param_norm"] = ref.param_norm(params[step])
        r["param_dist_init"] = ref.relative_distance(params[step], params[reference])
        ref_f, ref_e = feats[reference][0], None
        r["cka_init"] = ref.cka(f[:m], ref_f[:m])
        r["cka_prev"] = ref.cka(f[:m], feats[step - 1][0][:m]) if step else None
        r["prev_step"] = step - 1 if step else None
        r["anchor_efuncs"] = r["efuncs"][:m]
        out.append(r)
    for step, r in enumerate(out):
        ref_e = out[reference]["anchor_efuncs"]
        r["overlap_init"] = ref.overlap(r["anchor_efuncs"], ref_e, n_out)
        r["overlap_prev"] = ref.overlap(r["anchor_efuncs"], out[step - 1]["anchor_efuncs"], n_out) if step else None
    return out


FLOAT_FIELDS = ("d_lr", "dlr_alignment", "feature_pr", "pi_star_C", "pi_hat_C", "cka_init", "cka_prev",
                "nc1", "param_norm", "param_dist_init", "accuracy", "loss", "r2", "cross_entropy")
INT_FIELDS = {"rank": "rank", "output_rank": "output_rank", "prev_step": "prev_step",
              **{f"k{round(t * 100)}_{kind}": f"k_{'star' if kind == 'quality' else 'hat'}_{t}"
                 for t in ref.TAUS for kind in ("quality", "utility")}}
EFF_DIMS = {"eff_dim": "d_rho", "eff_dim_quality": "d_quality", "eff_dim_utility": "d_utility"}
OVERLAP_RTOL = 1.2e-7  # taken from the stored float32 eigenfunctions: one float32 ulp (measured ≤ 2.1e-9)


def _close(got: Any, want: Any, rtol: float, where: str) -> None:
    if want is None:
        assert got is None, f"{where}: {got} where the reference has none"
        return
    assert got is not None, f"{where}: null where the reference has {want}"
    assert math.isclose(got, want, rel_tol=rtol, abs_tol=rtol * 1e-3), f"{where}: {got!r} vs reference {want!r}"


def _check_record(record: dict[str, Any], want: dict[str, Any], where: str, rtol: float = RTOL,
                  absent: tuple[str, ...] = ()) -> None:
    """Every numeric field of one record (fdl's JSON / CSV / store) against the reference's (but `absent`)."""
    for name in FLOAT_FIELDS:
        _close(record.get(name), want.get(name), rtol, f"{where} {name}")
    for name, key in EFF_DIMS.items():
        _close(record.get(name), want.get(key), rtol, f"{where} {name}")
    for name, key in INT_FIELDS.items():
        if name not in absent:
            assert record.get(name) == want.get(key), f"{where} {name}: {record.get(name)} vs reference {want.get(key)}"
    for name in ("overlap_init", "overlap_prev"):
        _close(record.get(name), want.get(name), max(rtol, OVERLAP_RTOL), f"{where} {name}")
    if "r2_outputs" in want and "store attributes" not in where:  # the store holds them as an array (below)
        got = record["r2_outputs"]
        got = json.loads(got) if isinstance(got, str) else got
        np.testing.assert_allclose(got, want["r2_outputs"], rtol=rtol, err_msg=f"{where} r2_outputs")
        _close(record["r2_min"], min(want["r2_outputs"]), rtol, f"{where} r2_min")
        assert record["r2_min_output"] == int(np.argmin(want["r2_outputs"])), where


def _run(*args: object) -> str:
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _csv_rows(text: str) -> list[dict[str, Any]]:
    """CSV cells as JSON would hold them: '' null, numbers as numbers (int when whole and written so)."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        parsed: dict[str, Any] = {}
        for key, cell in row.items():
            if cell == "":
                parsed[key] = None
            else:
                try:
                    parsed[key] = int(cell)
                except ValueError:
                    try:
                        parsed[key] = float(cell)
                    except ValueError:
                        parsed[key] = cell
        rows.append(parsed)
    return rows


def _records_everywhere(store: Path) -> dict[str, list[dict[str, Any]]]:
    """The records of one store as each reading command gives them, and as the store holds them."""
    root = store.parent
    columns = json.loads(_run("export", store, "--what", "trajectories", "--format", "json"))
    views = {
        "analyze --json": [json.loads(line) for line in (root / f"{store.stem}.jsonl").read_text().splitlines()],
        "report --json": json.loads(_run("report", store, "--json")),
        "report --format csv": _csv_rows(_run("report", store, "--format", "csv")),
        "export trajectories json": [{k: v[i] for k, v in columns.items()} for i in range(len(columns["step"]))],
        "export trajectories csv": _csv_rows(_run("export", store, "--what", "trajectories", "--format", "csv")),
    }
    with h5py.File(store, "r") as h5:
        stored = []
        for step in sorted(int(k.split("_")[1]) for k in h5["checkpoints"]):
            attrs = h5[f"checkpoints/step_{step}/probe/head:input"].attrs
            stored.append({"step": step, **{k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}})
        views["store attributes"] = stored
    return views


CASES = {
    "cls": ("cls", {}),
    "reg": ("reg", {"states": "reg", "probe": "reg"}),
    "opt": ("cls", {"center": True, "reference": 2, "anchors": 40, "energy": 1.0}),
}


@pytest.fixture(scope="module")
def wanted(lab: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {name: _reference(lab, run, **options) for name, (run, options) in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_printed_and_stored_record_field_is_specs(lab: dict[str, Any], wanted: dict[str, Any],
                                                        case: str) -> None:
    """analyze --json, report --json / csv, export trajectories json / csv and the store's attributes all hold
    SPEC's number for every field (rtol 1e-9; overlaps one float32 ulp), checkpoint by checkpoint."""
    for view, records in _records_everywhere(lab["stores"][case]).items():
        assert [r["step"] for r in records] == list(range(STEPS + 1)), view
        for record, want in zip(records, wanted[case], strict=True):
            _check_record(record, want, f"{case} {view} step {record['step']}")
            assert record["n_probe"] == N_PROBE and record["n_features"] == 12


def _export(store: Path, what: str) -> dict[int, Any]:
    return {row["step"]: row[what] for row in json.loads(_run("export", store, "--what", what, "--format", "json"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_stored_array_is_specs(lab: dict[str, Any], wanted: dict[str, Any], case: str) -> None:
    """eigenvalues, quality, utility (export json and csv), eigenvectors with SPEC's sign convention,
    eigenfunctions on the anchors (stored float32: one ulp), feature_mean (--center) and r2_outputs."""
    store = lab["stores"][case]
    arrays = {what: _export(store, what) for what in ("eigenvalues", "quality", "utility", "eigenfunctions")}
    as_csv = _csv_rows(_run("export", store, "--what", "eigenvalues", "--format", "csv"))
    with h5py.File(store, "r") as h5:
        groups = {s: h5[f"checkpoints/step_{s}/probe/head:input"] for s in range(STEPS + 1)}
        stored = {s: {k: g[k][()] for k in g} for s, g in groups.items()}
    x = lab["probes"][CASES[case][1].get("probe", "cls")][0]
    for step, want in enumerate(wanted[case]):
        for what in ("eigenvalues", "quality", "utility"):
            np.testing.assert_allclose(arrays[what][step], want[what], rtol=RTOL, atol=1e-15, err_msg=f"{what} {step}")
        csv_values = [(r["k"], r["eigenvalues"]) for r in as_csv if r["step"] == step]
        assert [k for k, _ in csv_values] == list(range(1, want["rank"] + 1))
        np.testing.assert_allclose([v for _, v in csv_values], want["eigenvalues"], rtol=RTOL)
        np.testing.assert_allclose(stored[step]["eigenvectors"], want["eigvecs"], rtol=RTOL, atol=1e-12)
        anchors = want["anchor_efuncs"]
        np.testing.assert_allclose(arrays["eigenfunctions"][step], anchors, rtol=1.2e-7, atol=1.2e-7 * np.abs(anchors).max())
        assert stored[step]["eigenfunctions"].dtype == np.float32
        if CASES[case][1].get("center"):
            features = _forward(lab, "cls", lab["states"]["cls"][step], x)[0]
            np.testing.assert_allclose(stored[step]["feature_mean"], features.mean(0), rtol=RTOL)
        else:
            assert "feature_mean" not in stored[step]
        if case == "reg":
            np.testing.assert_allclose(stored[step]["r2_outputs"], want["r2_outputs"], rtol=RTOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dlr_factorises_in_the_printed_numbers(lab: dict[str, Any], wanted: dict[str, Any], case: str) -> None:
    """SPEC §4: 1 − D_LR = A·√(PR / r_Ŷ) holds between the fields fdl prints, and the reference's p×p
    spectrum is the n×n Gram's (SPEC §2), so the reference does not rest on one route."""
    for record, want in zip(json.loads(_run("report", lab["stores"][case], "--json")), wanted[case], strict=True):
        lhs = 1.0 - record["d_lr"]
        rhs = record["dlr_alignment"] * math.sqrt(record["feature_pr"] / record["output_rank"])
        assert lhs == pytest.approx(rhs, rel=1e-12)
        assert want["output_rank"] < 10 or CASES[case][1].get("energy") == 1.0  # η = 0.99 drops weak directions
    x = lab["probes"]["cls"][0]
    f = _forward(lab, "cls", lab["states"]["cls"][-1], x)[0]
    for center in (False, True):
        np.testing.assert_allclose(ref.spectrum(f, center)[0], ref.gram_spectrum(f, center), rtol=1e-10)


def test_nc1_is_the_documented_reading_of_spec(lab: dict[str, Any], wanted: dict[str, Any]) -> None:
    """SPEC §6 leaves Σ_B's weighting open; on this unbalanced probe (class counts 18..30) the three readings
    differ by more than rtol 1e-9, and fdl's is docs/measures.md's: classes unweighted, about the probe mean."""
    x, labels = lab["probes"]["cls"]
    counts = np.bincount(labels, minlength=10)
    assert counts.min() != counts.max()
    f = _forward(lab, "cls", lab["states"]["cls"][-1], x)[0]
    readings = {w: ref.nc1(f, labels, 10, w) for w in ("counts", "classes about the probe mean", "classes")}
    stored = json.loads(_run("report", lab["stores"]["cls"], "--json"))[-1]["nc1"]
    assert stored == pytest.approx(readings["classes about the probe mean"], rel=RTOL)
    for other in ("counts", "classes"):
        assert abs(readings[other] / stored - 1) > 1e-6, other


def test_nc1_with_a_class_absent_divides_by_the_classes_present(lab: dict[str, Any]) -> None:
    """SPEC §6 writes (1/C) tr(Σ_W Σ_B⁺); fdl divides by the C' classes the probe holds (docs/measures.md, a
    choice: Σ_B has rank C' − 1 then, as C − 1 with every class present). On a probe without 3s: C'/C = 9/10."""
    x, labels = lab["probes"]["no3"]
    records = json.loads(_run("report", lab["stores"]["no3"], "--json"))
    assert [r["step"] for r in records] == [0, STEPS]
    for record in records:
        f = _forward(lab, "cls", lab["states"]["cls"][record["step"]], x)[0]
        as_fdl = ref.nc1(f, labels, 10, "classes about the probe mean", per_present=True)
        assert record["nc1"] == pytest.approx(as_fdl, rel=RTOL)
        assert ref.nc1(f, labels, 10, "classes about the probe mean") == pytest.approx(0.9 * as_fdl, rel=1e-12)


def _pair(lab: dict[str, Any], a: str, b: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return list(zip(json.loads(_run("report", lab["stores"][a], "--json")),
                    json.loads(_run("report", lab["stores"][b], "--json")), strict=True))


NUMBERS = tuple(FLOAT_FIELDS) + tuple(INT_FIELDS) + tuple(EFF_DIMS) + ("overlap_init", "overlap_prev", "regime")


@pytest.mark.parametrize("variant", ["scaled", "rotated", "perm"])
def test_invariances_end_to_end(lab: dict[str, Any], variant: str) -> None:
    """Features ×7 (head ÷7), rotated by an orthogonal R (head by Rᵀ), or the probe's rows permuted: every record
    field equal to the plain run's to 1e-9; eigenvalues ×49 / equal; eigenfunctions equal (rotation: v ↦ Rᵀv,
    signs by SPEC's convention) or their rows permuted. Row order: only the anchor fields (CKA, overlaps, the
    stored eigenfunctions, hence the regime) see the first m rows; here m = n, the same set of points, so they
    stay too (with m < n they would not: docs/measures.md, 'Row order')."""
    for plain, other in _pair(lab, "cls", variant):
        for name in NUMBERS:
            a, b = plain[name], other[name]
            assert (a is None) == (b is None), name
            if isinstance(a, float):
                assert b == pytest.approx(a, rel=1e-9, abs=1e-12), f"{variant} {name} step {plain['step']}"
            else:
                assert a == b, f"{variant} {name} step {plain['step']}"
    with h5py.File(lab["stores"]["cls"], "r") as h0, h5py.File(lab["stores"][variant], "r") as h1:
        for step in range(STEPS + 1):
            g0, g1 = (h[f"checkpoints/step_{step}/probe/head:input"] for h in (h0, h1))
            scale = 49.0 if variant == "scaled" else 1.0
            np.testing.assert_allclose(g1["eigenvalues"][()], scale * g0["eigenvalues"][()], rtol=1e-9)
            e0, e1 = g0["eigenfunctions"][()].astype(np.float64), g1["eigenfunctions"][()].astype(np.float64)
            v0, v1 = g0["eigenvectors"][()], g1["eigenvectors"][()]
            if variant == "perm":
                e0 = e0[lab["perm"]]
            if variant == "rotated":
                rotation = lab["module"].build(rotate=5).rot.numpy()
                v0 = rotation.T @ v0
                signs = np.sign(v0[np.argmax(np.abs(v0), axis=0), range(v0.shape[1])])
                v0, e0 = v0 * signs, e0 * signs  # SPEC's convention picks the sign of the rotated vector
            np.testing.assert_allclose(v1, v0, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(e1, e0, rtol=0, atol=1e-6 * np.abs(e0).max())


def test_compare_json_is_the_references_differences(lab: dict[str, Any], wanted: dict[str, Any]) -> None:
    """`fdl compare cls reg --json` (same inputs, other targets): each field's B − A is the difference of the
    references', and the cross-run overlap A·B at k = C_A is SPEC §5's O_k between the two runs' eigenfunctions."""
    done = json.loads(_run("compare", lab["stores"]["cls"], lab["stores"]["reg"], "--json"))
    assert [s["step_a"] for s in done["steps"]] == list(range(STEPS + 1))
    table = _csv_rows(_run("compare", lab["stores"]["cls"], lab["stores"]["reg"], "--format", "csv"))
    for row, line, a, b in zip(done["steps"], table, wanted["cls"], wanted["reg"], strict=True):
        for side, want in (("a", a), ("b", b)):
            _check_record(row[side], want, f"compare --json {side} step {row['step_a']}")
            columns = {k[2:]: v for k, v in line.items() if k.startswith(f"{side}_")}
            _check_record(columns, want, f"compare csv {side} step {row['step_a']}", absent=("prev_step",))
        for name, value in row["differences"].items():
            cell = line[f"delta_{name}"]
            assert cell == (json.dumps(value) if isinstance(value, list) else value), name
        assert line["overlap"] == row["overlap"]
        assert row["overlap_k"] == 10
        _close(row["overlap"], ref.overlap(a["anchor_efuncs"], b["anchor_efuncs"], 10), OVERLAP_RTOL, "overlap A·B")
        for name in ("d_lr", "dlr_alignment", "feature_pr", "pi_star_C", "pi_hat_C", "cka_init", "param_norm", "loss"):
            want = b[name] - a[name]
            scale = max(abs(a[name]), abs(b[name]))
            assert row["differences"][name] == pytest.approx(want, rel=0, abs=RTOL * scale), name
        for name, key in EFF_DIMS.items():
            assert row["differences"][name] == pytest.approx(b[key] - a[key], rel=0, abs=RTOL * max(a[key], b[key]))
        for name, key in INT_FIELDS.items():
            if name == "prev_step":  # matched steps, no difference taken
                continue
            assert row["differences"][name] == (None if a[key] is None or b[key] is None else b[key] - a[key]), name
    last_a, last_b = wanted["cls"][-1]["d_lr"], wanted["reg"][-1]["d_lr"]
    assert done["richer"] == ("a" if last_a < last_b - 1e-3 else "b" if last_b < last_a - 1e-3 else "equal")


def _regime(record: dict[str, Any], reference: int, n_out: int) -> str:
    """docs/regimes.md's rule for one checkpoint (SPEC §7), default thresholds, from the reference's numbers."""
    if record["step"] == reference:
        return "coefficient"
    cka, overlap = record["cka_init"], record["overlap_init"]
    if cka is None and overlap is None:
        return "undetermined"
    static = (cka is None or cka >= 0.99) and (overlap is None or overlap >= 0.95)
    if (cka is not None and cka >= 0.99) and overlap is not None and overlap < 0.8:
        return "undetermined"
    if static:
        return "coefficient"
    return "MF" if record["k_hat_0.95"] <= n_out + 1 else "EF"


@pytest.mark.parametrize("case", ["cls", "opt"])
def test_classify_reads_specs_numbers(lab: dict[str, Any], wanted: dict[str, Any], case: str) -> None:
    """`fdl classify --json`: its trajectory is SPEC §7's rule applied to the reference's numbers, and its
    evidence quotes them (minimum and final CKA / overlap, final k95, D_LR, Π̂(C), accuracy)."""
    reference = CASES[case][1].get("reference", 0)
    want = wanted[case]
    for step, r in enumerate(want):
        r["step"] = step
    done = json.loads(_run("classify", lab["stores"][case], "--json"))
    assert [t["regime"] for t in done["trajectory"]] == [_regime(r, reference, 10) for r in want]
    evidence, final = done["evidence"], want[-1]
    assert evidence["reference_step"] == reference and evidence["final_step"] == STEPS
    for name in ("cka_init", "d_lr", "pi_hat_C", "accuracy"):
        _close(evidence[f"final_{name}"], final[name], RTOL, f"final_{name}")
    _close(evidence["final_overlap_init"], final["overlap_init"], OVERLAP_RTOL, "final_overlap_init")
    assert evidence["final_k95_utility"] == final["k_hat_0.95"]
    after = [r for r in want if r["step"] > reference]
    _close(evidence["min_cka_init"], min(r["cka_init"] for r in after), RTOL, "min_cka_init")
    _close(evidence["min_overlap_init"], min(r["overlap_init"] for r in after), OVERLAP_RTOL, "min_overlap_init")
    assert done["regime"] == _regime(final, reference, 10)


def test_float32_model_within_its_own_rounding(lab: dict[str, Any]) -> None:
    """A plain float32 network: fdl's numbers against the reference on the float32 features this file extracts,
    cast to float64. fdl's part is exact; the model's float32 rounding (kernel choice by batch shape) is not
    SPEC §8's to bound (docs/measures.md, 'Invariances of a float32 model'): 1e-5 covers it here."""
    want = _reference(lab, "f32")
    records = json.loads(_run("report", lab["stores"]["f32"], "--json"))
    for record, r in zip(records, want, strict=True):
        _check_record(record, r, f"f32 step {record['step']}", rtol=1e-5)

"""Regression probes as a researcher of 1-D regression (the e_k(x) of the paper) uses them: a tanh MLP fitting
sin(3x) from inputs of shape (n,) without a feature axis, targets of shape (n,).

Checked against a float64 computation from the checkpoints' own features (tests/reference.py): the stored
spectrum, Q*_k (`export --what quality`), Π*(C), k95 of Π* and r2. Invariances a user relies on, end to end:
targets × 1e6 or × 1e-6 change no field but loss and r2 (which compare the raw outputs with them), nor the verdict;
targets + 1e3 under --center change none either; y of shape (n, 1) and x of shape (n, 1) read as (n,).

Fixed here (each test failed before): under --center the e_k(x) figure drew the target uncentered, a flat line at
1 for sin(3x) + 1e3, where Π* measures the centered target against centered eigenfunctions; and the error for
targets too large for float64 said their scale changes no measure but loss, when r2 changes too; and `fdl compare`
gave a rounding difference of Π*(C) between y and y × 1e6 as "largest B − A −0.0000".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests.cli_run import fdl_in_process as fdl  # noqa: E402
from tests.cli_run import model_file  # noqa: E402
from tests.reference import reference_measures  # noqa: E402

MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    # inputs of shape (b,) or (b, 1); one output, returned as (b,)
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh())
        self.head = nn.Linear(12, 1)

    def forward(self, x):
        return self.head(self.body(x.reshape(len(x), 1))).squeeze(-1)


def build():
    return Net()
"""

STEPS = (0, 100, 1500)
LR = 0.3
N = 96
#: the fields measured against the targets whose value depends on their scale and offset (the raw outputs are
#: compared with them as they are)
SCALED = {"loss", "r2"}


def _records(lab: dict[str, Any], probe: str) -> list[dict[str, Any]]:
    done = fdl("report", lab["stores"][probe], "--probe", probe, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sin(3x) run of 3 checkpoints (plain GD) and its probes: `plain` (x, y of shape (n,)), `column` (both (n, 1)),
    `big` / `tiny` (y × 1e6 / × 1e-6, float64), `offset` (y + 1e3), analysed in one pass into raw.h5, and under
    --center `centered` and `shifted` (y + 1e3) into centered.h5 (`stores`: each probe's store)."""
    root = tmp_path_factory.mktemp("s31regress")
    module = model_file(root, MODEL)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, N).astype(np.float32)  # not sorted: the figure must sort it
    y = np.sin(3.0 * x).astype(np.float64)
    net = module.build()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    (root / "run").mkdir()
    for step in range(max(STEPS) + 1):  # full-batch gradient descent by hand: torch.optim imports torch._dynamo (3 s)
        if step in STEPS:
            torch.save(net.state_dict(), root / "run" / f"step_{step}.pt")
        net.zero_grad()
        torch.nn.functional.mse_loss(net(xt), yt).backward()
        with torch.no_grad():
            for parameter in net.parameters():
                parameter -= LR * parameter.grad
    probes = {"plain": (x, y), "column": (x[:, None], y[:, None]), "big": (x, y * 1e6), "tiny": (x, y * 1e-6),
              "centered": (x, y), "shifted": (x, y + 1e3), "offset": (x, y + 1e3)}
    for name, (px, py) in probes.items():
        np.savez(root / f"{name}.npz", x=px, y=py)
    stores = {}
    for store, names, center in (("raw", ("plain", "column", "big", "tiny", "offset"), ()),
                                 ("centered", ("centered", "shifted"), ("--center",))):
        given = [arg for name in names for arg in ("--probe", f"{name}={root / name}.npz")]
        done = fdl("analyze", root / "run", "--model", f"{root / 'model.py'}:build", *given, "-o",
                   root / f"{store}.h5", *center)
        assert done.returncode == 0, done.stderr
        stores.update((name, root / f"{store}.h5") for name in names)
    return {"root": root, "module": module, "x": x, "y": y, "stores": stores}


def test_one_d_regression_measures_are_float64_brute_force(lab: dict[str, Any]) -> None:
    """Inputs (n,) and targets (n,): eigenvalues, Q*_k, Π*(C), k95 of Π*, Π̂(C) and r2 of every checkpoint are
    those of an explicit float64 eigendecomposition of the checkpoint's features (tests/reference.py)."""
    records = _records(lab, "plain")
    quality = {row["step"]: row["quality"] for row in json.loads(
        fdl("export", lab["stores"]["plain"], "--probe", "plain", "--what", "quality", "--json").stdout)}
    values = {row["step"]: row["eigenvalues"] for row in json.loads(
        fdl("export", lab["stores"]["plain"], "--probe", "plain", "--what", "eigenvalues", "--json").stdout)}
    assert [r["step"] for r in records] == list(STEPS)
    for record in records:
        net = lab["module"].build()
        net.load_state_dict(torch.load(lab["root"] / "run" / f"step_{record['step']}.pt"))
        with torch.no_grad():
            xt = torch.from_numpy(lab["x"])
            features = net.body(xt.reshape(-1, 1)).double().numpy()
            outputs = net(xt).double().numpy()[:, None]
        want = reference_measures(features, outputs, targets=lab["y"][:, None])
        step = record["step"]
        np.testing.assert_allclose(values[step], want.eigenvalues, rtol=1e-9, atol=1e-12 * want.eigenvalues[0])
        np.testing.assert_allclose(quality[step], want.quality, rtol=0, atol=1e-9)
        for name in ("pi_star_C", "pi_hat_C", "r2", "loss", "eff_dim", "d_lr"):
            assert record[name] == pytest.approx(want.scalars[name], rel=1e-9), (name, step)
        for name in ("rank", "k95_quality", "k90_quality", "k95_utility", "n_outputs"):
            assert record[name] == want.scalars[name], (name, step)
    assert records[-1]["n_outputs"] == 1 and records[-1]["r2"] > 0.9  # the run fits sin(3x)


def _differing(a: list[dict[str, Any]], b: list[dict[str, Any]], rel: float) -> set[str]:
    """The record fields whose values differ between two stores' records (floats beyond `rel`)."""
    out = set()
    for ra, rb in zip(a, b, strict=True):
        for name, va in ra.items():
            vb = rb[name]
            if isinstance(va, float) and isinstance(vb, float):
                if vb != pytest.approx(va, rel=rel, abs=1e-12):
                    out.add(name)
            elif va != vb and name not in ("path", "sha256", "probe"):
                out.add(name)
    return out


@pytest.mark.parametrize("variant", ["big", "tiny"])
def test_scaling_the_targets_changes_only_loss_and_r2(lab: dict[str, Any], variant: str) -> None:
    """y × 1e6 or × 1e-6 (float64): Π*, Q*, k_τ of Π*, the regime and every other field are those of y; only loss
    and r2, which compare the raw outputs with the targets as they are, move. `fdl classify`'s verdict is the
    same."""
    plain, scaled = _records(lab, "plain"), _records(lab, variant)
    assert _differing(plain, scaled, rel=1e-9) == SCALED
    verdicts = [json.loads(fdl("classify", lab["stores"][name], "--probe", name, "--json").stdout)
                for name in ("plain", variant)]
    assert verdicts[0]["regime"] == verdicts[1]["regime"]
    assert verdicts[0]["trajectory"] == verdicts[1]["trajectory"]


def test_shifting_the_targets_under_center_changes_only_loss_and_r2(lab: dict[str, Any]) -> None:
    """y + 1e3 under --center: the centered Q* and every field but loss and r2 are those of y."""
    assert _differing(_records(lab, "centered"), _records(lab, "shifted"), rel=1e-9) == SCALED


def test_without_center_the_targets_mean_is_measured(lab: dict[str, Any]) -> None:
    """Uncentered (the default) Q* measures y with its mean, as docs/usage.md says: for sin(3x) + 1e3 the mean is
    nearly all of the energy, and Π*(C) differs from sin(3x)'s on the same features (0.035 against 0.74 here)."""
    plain, offset = _records(lab, "plain"), _records(lab, "offset")
    assert _differing(plain, offset, rel=1e-9) >= SCALED | {"pi_star_C", "eff_dim_quality"}
    assert abs(offset[-1]["pi_star_C"] - plain[-1]["pi_star_C"]) > 0.1


def test_a_feature_axis_of_one_changes_nothing(lab: dict[str, Any]) -> None:
    """x and y of shape (n, 1) give the records of x and y of shape (n,)."""
    assert _differing(_records(lab, "plain"), _records(lab, "column"), rel=0) == set()


def _figure(lab: dict[str, Any], probe: str) -> Any:
    from fdl_cli import report as rep
    from fdl_cli.figures import series_figures

    run = rep.load_run(lab["stores"][probe], probe=probe)
    return {stem: figure for stem, _, figure in series_figures(run, run.series[0])}["eigenfunctions"]


def _target_line(figure: Any, panel: int = 0) -> Any:
    lines = [line for line in figure.axes[panel].get_lines() if line.get_label().startswith("target")]
    assert len(lines) == 1
    return lines[0]


def test_the_eigenfunction_figure_draws_the_target_sorted_by_x(lab: dict[str, Any]) -> None:
    """The e_k(x) figure of the unsorted 1-D probe: each curve drawn in increasing x, the target as y / its RMS."""
    figure = _figure(lab, "plain")
    assert [ax.get_title() for ax in figure.axes] == [f"step {s}" for s in STEPS]
    line = _target_line(figure)
    xs, ys = line.get_xdata(), line.get_ydata()
    assert np.all(np.diff(xs) >= 0)
    order = np.argsort(lab["x"])
    y = lab["y"]
    np.testing.assert_allclose(ys, y[order] / np.sqrt(np.mean(y**2)), rtol=1e-12)
    assert line.get_label() == "target (unit RMS)"
    for ax in figure.axes:
        assert all(np.all(np.diff(curve.get_xdata()) >= 0) for curve in ax.get_lines())


def test_the_eigenfunction_figure_under_center_draws_the_centered_target(lab: dict[str, Any]) -> None:
    """Under --center the eigenfunctions have mean 0 and Π* measures y − ȳ: the figure drew y + 1e3 over its
    uncentered RMS, a flat line at 1 that shows nothing of sin(3x). It draws the centered target now, said so
    in its legend, the same curve for y and y + 1e3."""
    order = np.argsort(lab["x"])
    centered = lab["y"][order] - lab["y"].mean()
    for name in ("centered", "shifted"):
        line = _target_line(_figure(lab, name))
        assert line.get_label() == "target − its mean (unit RMS)"
        np.testing.assert_allclose(line.get_ydata(), centered / np.sqrt(np.mean(centered**2)), rtol=1e-9, atol=1e-12)


def test_targets_too_large_for_float64_say_that_r2_depends_on_their_scale_too(tmp_path: Path) -> None:
    """The fix said "no measure but loss depends on their scale"; r2 compares the raw outputs with them too."""
    (tmp_path / "run").mkdir()
    torch.save(model_file(tmp_path, MODEL).build().state_dict(), tmp_path / "run" / "step_0.pt")
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    np.savez(tmp_path / "huge.npz", x=x, y=np.sin(3.0 * x.astype(np.float64)) * 1e70)
    done = fdl("analyze", tmp_path / "run", "--model", f"{tmp_path / 'model.py'}:build", "--probe",
               tmp_path / "huge.npz", "-o", tmp_path / "huge.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "regression targets 'y' are too large" in done.stderr
    assert "no measure but loss" not in done.stderr
    assert "loss and r2" in done.stderr
    assert not (tmp_path / "huge.h5").exists()


def test_compare_shows_a_rounding_difference_in_its_digits_not_as_zero(lab: dict[str, Any]) -> None:
    """`fdl compare` of the run against y and y × 1e6: Π*(C) differs by float64 rounding (~1e-16), which the
    line gave as "pi_star_C: differs at 3 steps, largest B − A −0.0000", a difference that reads as none;
    eff_dim_quality's beside it read "−1.456e-12". It is given in two significant digits now."""
    done = fdl("compare", lab["stores"]["plain"], lab["stores"]["big"], "--probe", "plain", "--probe-b", "big")
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    lines = {line.split(":")[0]: line for line in said.splitlines() if ": differs at" in line}
    assert "pi_star_C" in lines, said
    for line in lines.values():
        shown = line.rsplit("largest B − A ", 1)[1]
        assert float(shown.replace("−", "-")) != 0.0, line

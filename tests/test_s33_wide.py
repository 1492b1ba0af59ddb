"""Wide layers on a probe of fewer inputs than units (n < p): the n×n Gram route, its null space, and a probe too
small for the MF-vs-EF rule (k95_utility ≤ rank ≤ n)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process

P, N_IN, C = 96, 5, 8  # p = 96 units > n; the first layer's output spans N_IN + 1 directions (uncentered)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three checkpoints of a 5-96-8 ReLU MLP (other seeds: the features move) and two probes of the same 5-d
    inputs: 40 points (n < p, the Gram route) and 8 points (n ≤ C + mf_extra = 9)."""
    from tests.tiny_models import mlp

    root = tmp_path_factory.mktemp("wide")
    (root / "ck").mkdir()
    for step in range(3):
        torch.save(mlp(N_IN, P, C, seed=step).state_dict(), root / "ck" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, N_IN)).astype(np.float32)
    np.savez(root / "probe.npz", x=x, y=np.arange(40) % C)
    np.savez(root / "small.npz", x=x[:8], y=np.arange(8) % C)
    kwargs = json.dumps({"n_in": N_IN, "hidden": P, "n_out": C})
    for name, layer in (("probe", "0"), ("small", "2:input")):
        done = fdl_in_process(
            "analyze",
            root / "ck",
            "--model",
            "tests.tiny_models:mlp",
            "--model-kwargs",
            kwargs,
            "--probe",
            root / f"{name}.npz",
            "--layer",
            layer,
            "-o",
            root / f"{name}.h5",
        )
        assert done.returncode == 0, done.stderr
    return root


def _gram_reference(root: Path, step: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """The features of the probe (float32 model, float64 after) and the n×n Gram's spectrum, largest first."""
    from tests.tiny_models import mlp

    model = mlp(N_IN, P, C, seed=0)
    model.load_state_dict(torch.load(root / "ck" / f"step_{step}.pt"))
    x = torch.from_numpy(np.load(root / "probe.npz")["x"])
    with torch.no_grad():
        feats = model[: layer + 1](x).double().numpy()
    values = np.linalg.eigvalsh(feats @ feats.T / len(feats))[::-1]
    return feats, values


def test_a_rank_deficient_wide_layer_keeps_its_rank_and_no_null_eigenvalue(wide: Path) -> None:
    """n = 40 < p = 96 and the layer (an affine map of 5 inputs) of rank 6: the Gram's 34 null eigenvalues
    (rounding, ~1e-16 of ρ_1) are cut, the kept ones are the Gram's, and k_τ counts kept ones alone."""
    import h5py

    with h5py.File(wide / "probe.h5") as store:
        series = store["trajectories/probe/0"]
        for index, step in enumerate(series["step"][:]):
            _, values = _gram_reference(wide, int(step), 0)
            assert values[N_IN + 1] / values[0] < 1e-12  # the null space is there
            stored = store[f"checkpoints/step_{step}/probe/0/eigenvalues"][:]
            assert int(series["rank"][index]) == len(stored) == N_IN + 1
            np.testing.assert_allclose(stored, values[: N_IN + 1], rtol=1e-10)
            for field in ("k90_utility", "k95_utility", "k99_utility", "k99_quality"):
                assert 1 <= int(series[field][index]) <= N_IN + 1, field
            assert float(series["eff_dim"][index]) <= N_IN + 1


def test_classify_says_a_probe_of_at_most_c_plus_mf_extra_inputs_cannot_read_ef(wide: Path) -> None:
    """8 probe inputs before an 8-class head: k95_utility ≤ rank ≤ n = 8 ≤ C + mf_extra = 9, so EF is out of
    reach whatever the 96 units learned (an ImageNet head of 1 000 classes and a probe of one image a class is
    the same case). The narrow-layer note blamed the layer ("its width, or a bottleneck before it"), and said
    nothing where the verdict was not MF; the note names the probe, in the text and in --json."""
    text = fdl_in_process("classify", wide / "small.h5")
    assert text.returncode == 0, text.stderr
    said = text.stdout + text.stderr
    assert "the probe is too small for the rule to find EF" in said, said
    assert "n = 8 probe inputs ≤ C + mf_extra = 9" in said, said
    assert "bottleneck" not in said and "the layer has" not in said, said
    verdict = json.loads(fdl_in_process("classify", wide / "small.h5", "--json").stdout)
    assert "the probe is too small" in verdict["evidence"]["small_probe"]
    gone = fdl_in_process("classify", wide / "probe.h5")
    assert "too small" not in gone.stdout + gone.stderr

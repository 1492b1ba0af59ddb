"""Small audit findings: D_LR's floor under η < 1 for many classes, k_τ at an exact threshold, and where a
model's keyword arguments came from in the error that rejects them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import Moments, dynamical_low_rank, k_tau, measure
from tests.cli_run import REPO, fdl_in_process, model_file


def _collapsed(classes: int) -> Moments:
    """The statistics of collapsed, balanced, isotropic classes: F = Ŷ = one-hot, one sample a class."""
    labels = np.arange(classes)
    onehot = np.eye(classes)
    accumulator = MomentAccumulator(task="classes")
    accumulator.update(onehot, onehot.copy(), labels)
    return accumulator.moments()


def _floor(classes: int, percent: int = 99) -> float:
    """1 − √(⌈η(C−1)⌉/(C−1)), η = percent/100, in integers up to the square root."""
    kept = -(-percent * (classes - 1) // 100)
    return 1.0 - math.sqrt(kept / (classes - 1))


@pytest.mark.parametrize(
    ("classes", "rank", "floor"),
    [(10, 9, 0.0), (100, 99, 0.0), (101, 99, 0.0050126), (200, 198, 0.0025157), (1000, 990, 0.0045147)],
)
def test_collapsed_classes_read_the_floor_of_the_energy_cut_and_zero_under_eta_1(
    classes: int, rank: int, floor: float
) -> None:
    """docs/measures.md: under the default η = 0.99 a flat spectrum of C − 1 output directions keeps
    ⌈η(C−1)⌉ of them, so D_LR of perfectly collapsed classes is 1 − √(⌈η(C−1)⌉/(C−1)), not 0, once C > 100;
    --dlr-energy 1 keeps all of them and reads 0. `measure` (what is stored) at C = 101; the function it calls
    elsewhere, as a full `measure` at C = 1 000 costs ~4 s."""
    moments = _collapsed(classes)
    default = measure(moments).scalars if classes == 101 else vars(dynamical_low_rank(moments))
    assert default["output_rank"] == rank
    assert default["d_lr"] == pytest.approx(_floor(classes), abs=1e-11)
    assert default["d_lr"] == pytest.approx(floor, abs=1e-7)
    every = dynamical_low_rank(moments, energy_share=1.0)
    assert (every.output_rank, every.d_lr) == (classes - 1, pytest.approx(0.0, abs=1e-11))


def test_k_tau_exactly_at_the_threshold_is_not_decided_by_the_rounding_of_the_sums() -> None:
    """C = 20 classes, F = Ŷ = one-hot: every Q̂_k = 1/20, so Π(18) = 0.9 = 0.9·Π(20) exactly and k90 = 18; the
    float64 sums gave Π(18) = 0.9000000000000004 against 0.9·Π(r) = 0.9000000000000005, and k90 = 19."""
    scalars = measure(_collapsed(20)).scalars
    assert (scalars["k90_utility"], scalars["k95_utility"], scalars["k99_utility"]) == (18, 19, 20)
    assert (scalars["k90_quality"], scalars["k95_quality"], scalars["k99_quality"]) == (18, 19, 20)


def test_k_tau_below_the_threshold_by_more_than_rounding_takes_the_next_k() -> None:
    """The tolerance is the sums' rounding (r·eps of Π(r), 6.7e-16 here), not more: 2 ulps short of 0.9 reach it,
    1e-13 short do not."""
    assert k_tau(np.array([0.45, 0.9 - 2.3e-16, 1.0]), 0.9) == 2
    assert k_tau(np.array([0.45, 0.9 - 1e-13, 1.0]), 0.9) == 3
    assert k_tau(np.array([0.3, 0.45 - 1e-13, 0.5]), 0.9) == 3


# ------------------------------------------------------------------- where the model's kwargs came from


def _sample_run(tmp_path: Path, toml: str) -> Path:
    """The sample run's model, probe and first checkpoint in a folder of their own, with this fdl.toml."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.py", "probe.npz", "step_0.safetensors"):
        shutil.copy(REPO / "sample_checkpoints" / name, run / name)
    (run / "fdl.toml").write_text(toml, encoding="utf-8")
    return run


def test_kwargs_of_the_command_line_for_the_model_of_fdl_toml_are_named_as_the_command_line_s(tmp_path: Path) -> None:
    """`fdl analyze sample_checkpoints --model-kwargs '{"hidden": 32}'`: the fix said "wrong model or model_kwargs
    in sample_checkpoints/fdl.toml?", an fdl.toml without model_kwargs; it names the flag that gave them."""
    out = tmp_path / "sample.h5"
    done = fdl_in_process("analyze", "sample_checkpoints", "--model-kwargs", '{"hidden": 32}', "--out", out)
    toml = Path("sample_checkpoints") / "fdl.toml"
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"do not fit the model built by {toml}'s model (model.py:build)" in done.stderr
    assert (
        f"fix: wrong model in {toml}, or wrong --model-kwargs given on the command line? (the sizes in the "
        "checkpoint say which width/depth it was); fix the model there or the --model-kwargs, or give --model "
        "too, which overrides the fdl.toml's"
    ) in done.stderr
    assert "model_kwargs in" not in done.stderr
    assert not out.exists()


def test_kwargs_of_fdl_toml_for_the_model_of_the_command_line_are_named_as_the_fdl_toml_s(tmp_path: Path) -> None:
    """--model names fdl.toml's own model, whose model_kwargs it takes: the fix said "wrong --model or
    --model-kwargs?", a flag never given."""
    run = _sample_run(tmp_path, 'model = "model.py:build"\nprobe = "probe.npz"\nmodel_kwargs = { hidden = 32 }\n')
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "--out", out)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "do not fit the model built by --model" in done.stderr
    assert (
        f"fix: wrong --model, or wrong model_kwargs in {run / 'fdl.toml'}? (the sizes in the checkpoint say "
        "which width/depth it was); fix them there, or pass --model-kwargs JSON, which overrides them"
    ) in done.stderr
    assert "--model or --model-kwargs?" not in done.stderr


def test_a_checkpoint_of_another_width_names_where_the_kwargs_that_fit_the_reference_came_from(tmp_path: Path) -> None:
    """fdl.toml's model with --model-kwargs that fit the reference, and a later checkpoint of another width: the
    fix said "check the model and model_kwargs in fdl.toml", which has none."""
    run = _sample_run(tmp_path, 'model = "model.py:build"\nprobe = "probe.npz"\n')
    narrower = model_file(run, (run / "model.py").read_text(encoding="utf-8")).build(hidden=32)
    save_file(narrower.state_dict(), str(run / "step_7.safetensors"))
    done = fdl_in_process("analyze", run, "--model-kwargs", '{"hidden": 64}', "--out", tmp_path / "run.h5")
    assert done.returncode == 1 and "1 checkpoint analysed, 1 failed" in done.stderr
    assert (
        f"or, if it is the run's, check the model in {run / 'fdl.toml'} and the --model-kwargs given on the command line"
    ) in " ".join(done.stderr.split())

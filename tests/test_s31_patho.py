"""Training runs gone wrong, as a researcher meets them: a checkpoint whose forward pass overflows, a ReLU layer
that died, a collapse to chance. What `fdl analyze`, `report` and `classify` say of each, as the user reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

STEPS = (0, 10, 20)


def _edited(state: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    state = {name: value.clone() for name, value in state.items()}
    if step == 30:  # every hidden ReLU dead: features 0, outputs the head's bias (constant)
        state["0.bias"][:] = -1e3
    elif step == 40:  # finite weights whose float32 forward pass overflows (a diverged run)
        state["0.weight"][:] = 3e38
        state["0.bias"][:] = 3e38
    elif step == 50:  # hidden activations ~1e5: finite in float32, past float16's 65504
        state["0.weight"] *= 1e5
        state["0.bias"] *= 1e5
    elif step == 60:  # all hidden ReLUs but one dead: features of rank 1, the function a guess of the largest class
        state["0.bias"][1:] = -1e3
    return state


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-8-3 ReLU MLP trained 20 SGD steps (checkpoints 0, 10, 20), then three broken checkpoints made from
    the last weights: 30 dead, 40 overflowing in float32, 50 overflowing in float16 only, 60 collapsed to rank 1."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("patho")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    np.savez(root / "probe.npz", x=x, y=y)
    (root / "ckpts").mkdir()
    model = mlp(4, 8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            torch.save(model.state_dict(), root / "ckpts" / f"step_{step}.pt")
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for step in (30, 40, 50, 60):
        torch.save(_edited(model.state_dict(), step), root / "ckpts" / f"step_{step}.pt")
    return root


def _analyze(run: Path, out: Path, *options: str):
    return fdl_in_process("analyze", run / "ckpts", "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          json.dumps({"n_in": 4, "hidden": 8, "n_out": 3}), "--probe", run / "probe.npz",
                          "-o", out, *options)


@pytest.fixture(scope="module")
def store(run: Path) -> tuple[Path, object]:
    out = run / "float32.h5"
    return out, _analyze(run, out)


def test_float32_overflow_is_called_divergence_not_a_dtype_to_change(run: Path, store) -> None:
    out, done = store
    assert done.returncode == 1, done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 1 and "step_40.pt" in failed[0], done.stderr
    lines = done.stderr.split(failed[0], 1)[1].splitlines()[1:]
    reason = "\n".join([failed[0], *[line for line in lines[:2] if line.startswith("  ")]])
    # The model already runs in float32, the widest dtype fdl offers: "use --dtype float32" sends the user
    # round in a circle. The reason says the forward pass overflowed in float32 and how to skip the file.
    assert "--dtype float32" not in reason, reason
    assert "float32" in reason and "diverged" in reason and "--steps" in reason, reason
    assert "the features" in reason, reason  # which values were not finite: the hooked layer's already
    listed = fdl_in_process("report", out, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [record["step"] for record in json.loads(listed.stdout)] == [0, 10, 20, 30, 50, 60]


def test_float16_overflow_still_points_at_float32(run: Path, tmp_path: Path) -> None:
    done = _analyze(run, tmp_path / "f16.h5", "--dtype", "float16", "--steps", "0,50")
    assert done.returncode == 1, done.stderr
    reason = done.stderr.split("step_50.pt", 1)[1].split("warning:", 1)[0]
    assert "float16" in reason and "--dtype float32" in reason, reason


def test_report_says_which_d_lr_values_are_the_degenerate_rule(store) -> None:
    out, _ = store
    done = fdl_in_process("report", out)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "degenerate rule" in line]  # the text report is on stderr
    # Step 30's ReLUs are dead: its outputs are the head's bias, constant over the probe, and D_LR reads 1.0
    # (the laziest value) by the rule for 0/0, which analyze warned of and classify and compare say; the
    # report's table and its "final:" line showed 1.0000 as a measurement.
    assert len(lines) == 1 and "step 30" in lines[0] and "1.0" in lines[0], done.stderr
    assert "step 50" not in lines[0] and "step 20" not in lines[0] and "60" not in lines[0]


def test_classify_says_a_confident_regime_ends_at_chance(store) -> None:
    out, _ = store
    done = fdl_in_process("classify", out)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    # Step 60 kept one ReLU of eight: the features moved (CKA to step 0 far below 0.99) and collapsed onto one
    # direction, k95 of Π̂ is 1, and the rule reads MF, while the network predicts the largest class everywhere.
    assert "regime: MF" in text, text
    final = [line for line in text.splitlines() if line.startswith("at step 60, the final checkpoint")]
    assert len(final) == 1 and "accuracy is 0.5167" in final[0] and "chance 0.5167" in final[0], text


def test_a_diverged_first_checkpoint_is_named_as_the_reference(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    state = torch.load(run / "ckpts" / "step_0.pt")
    state["0.weight"][0, 0] = float("nan")
    torch.save(state, folder / "step_0.pt")
    (folder / "step_10.pt").write_bytes((run / "ckpts" / "step_10.pt").read_bytes())
    done = fdl_in_process("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          json.dumps({"n_in": 4, "hidden": 8, "n_out": 3}), "--probe", run / "probe.npz",
                          "-o", tmp_path / "run.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    # Step 10 is fine, yet nothing was analysed: the error says why (step 0 is the reference), as it does for a
    # reference given with --reference, where it read as any one failed checkpoint before.
    assert "step_0.pt: tensor '0.weight' (8, 4) holds NaN or Inf" in done.stderr, done.stderr
    assert "the reference checkpoint" in done.stderr and "cannot go on" in done.stderr, done.stderr


def test_labels_that_are_not_0_to_c_minus_1_get_the_remapping(run: Path, tmp_path: Path) -> None:
    data = np.load(run / "probe.npz")
    np.savez(tmp_path / "named.npz", x=data["x"], y=np.array([3, 7, 9])[data["y"]])  # 3 classes named 3, 7, 9
    done = fdl_in_process("analyze", run / "ckpts", "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          json.dumps({"n_in": 4, "hidden": 8, "n_out": 3}), "--probe", tmp_path / "named.npz",
                          "-o", tmp_path / "run.h5", "--steps", "0")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "has class label 9 but the model has 3 outputs" in done.stderr, done.stderr
    # Three distinct labels for three outputs: numbered otherwise, not too many. The fix says how to renumber them
    # (and that the order must be the model's), where it said only to use another probe or model.
    fix = next(line for line in done.stderr.splitlines() if line.lstrip().startswith("fix:"))
    assert "3 distinct labels (3, 7, 9)" in fix and "np.unique(y, return_inverse=True)" in fix, fix
    assert not (tmp_path / "run.h5").exists()


def test_compare_does_not_say_every_matched_step_beside_steps_left_out(run: Path, store, tmp_path: Path) -> None:
    out, _ = store
    again = _analyze(run, tmp_path / "again.h5", "--steps", "0,10,20,30")
    assert again.returncode == 0, again.stderr
    done = fdl_in_process("compare", out, tmp_path / "again.h5")
    assert done.returncode == 0, done.stderr
    verdict = next(line for line in (done.stdout + done.stderr).splitlines() if "equally rich" in line)
    # Step 30's outputs are constant in both runs (D_LR 1.0 by the degenerate rule): left out of the verdict, so
    # the tie holds at 3 of the 4 matched steps, not "at every matched step" followed by "Left out: step 30".
    assert "at every matched step." not in verdict, verdict
    assert "3 of the 4 matched steps" in verdict and "Left out of this verdict: step 30" in verdict, verdict

"""Messages found wrong by a researcher's use of the CLI (session 13), each pinned by a test that failed
before its fix.

- A checkpoint whose loader error names its path already was printed with the path twice
  ("error: X: X: tensor 'head.weight' ... holds NaN or Inf", "failed: X: the weights in X do not fit").
- `--weights NAME` that names nothing listed the key prefixes inside the model's own state_dict, not the
  entries of the checkpoint's dict that hold weights (`{"model": ..., "model_ema": ...}`), which are
  what the user can pass.
- A probe of fewer samples than the overlaps' k was told to "raise --anchor-size", which cannot help:
  the anchor subset is already the whole probe.
Commands run in-process through the console entry point (`fdl_cli.cli.main`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_analyze import fdl
from tests.test_io_fixes import MODEL, SMALL, _wide_terminal  # noqa: F401 - the autouse fixture applies here too
from tests.tiny_models import mlp


def _probe(root: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    path = root / "probe.npz"
    np.savez(path, x=rng.normal(size=(n, 4)).astype(np.float32), y=rng.integers(0, 3, n))
    return path


def test_a_failed_checkpoint_is_named_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10, 20):
        state = mlp(seed=step).state_dict()
        if step == 10:
            state["2.weight"][0, 0] = float("nan")
        torch.save(state, run / f"ckpt_{step:06d}.pt")
    bad = str(run / "ckpt_000010.pt")
    result = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path)),
                 "--out", str(tmp_path / "run.h5"), *SMALL)
    assert result.code == 1, result.stderr
    assert "holds NaN or Inf" in result.stderr
    assert f"{bad}: {bad}" not in result.stderr, result.stderr
    assert "failed: " + bad in result.stderr  # the summary still names the file
    strict = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path)),
                 "--out", str(tmp_path / "strict.h5"), "--strict", *SMALL)
    assert strict.code == 1
    assert f"{bad}: {bad}" not in strict.stderr, strict.stderr


def test_weights_that_name_nothing_list_the_entries_holding_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 5):
        state = mlp(seed=step).state_dict()
        torch.save({"model": state, "model_ema": state, "optimizer": {}, "step": step}, run / f"ckpt_{step}.pt")
    result = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path)),
                 "--out", str(tmp_path / "run.h5"), "--weights", "ema", *SMALL)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "model_ema" in result.stderr, result.stderr
    ok = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path)),
             "--out", str(tmp_path / "run.h5"), "--weights", "model_ema", *SMALL)
    assert ok.code == 0, ok.stderr


def test_a_probe_smaller_than_k_is_not_told_to_raise_anchor_size(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 5):
        torch.save(mlp(n_out=3, seed=step).state_dict(), run / f"ckpt_{step}.pt")
    small = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path, n=3)),
                "--out", str(tmp_path / "small.h5"), "--batch-size", "16")
    assert "the anchor subset has 3 points" in small.stderr, small.stderr
    assert "raise --anchor-size" not in small.stderr
    assert "use a probe of more than 3 samples" in small.stderr
    cut = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path, n=24)),
              "--out", str(tmp_path / "cut.h5"), "--anchor-size", "2", "--batch-size", "16")
    assert "raise --anchor-size" in cut.stderr, cut.stderr  # there the anchor size is the limit


def test_compare_names_store_b_options_for_store_b(tmp_path: Path) -> None:
    """`--probe test` picks store A's series and, by default, store B's: when store B names its probe
    otherwise, the error must point at --probe-b (the listing said `--probe probe`, which then fails on
    store A); a store B of several series is told to pick with --probe-b / --layer-b."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 5):
        torch.save(mlp(seed=step).state_dict(), run / f"ckpt_{step}.pt")
    probe = _probe(tmp_path)
    two, one = tmp_path / "two.h5", tmp_path / "one.h5"
    assert fdl("analyze", str(run), "--model", MODEL, "--probe", f"test={probe}", "--probe", f"train={probe}",
               "--out", str(two), *SMALL).code == 0
    assert fdl("analyze", str(run), "--model", MODEL, "--probe", str(probe), "--out", str(one), *SMALL).code == 0
    missing = fdl("compare", str(two), str(one), "--probe", "test")
    assert missing.code == 1 and "Traceback" not in missing.stderr
    assert "--probe-b probe" in missing.stderr, missing.stderr
    several = fdl("compare", str(one), str(two))
    assert several.code == 1
    assert "--probe-b NAME" in several.stderr, several.stderr
    assert fdl("compare", str(two), str(one), "--probe", "test", "--probe-b", "probe").code == 0
    assert fdl("compare", str(one), str(two), "--probe-b", "test").code == 0


def test_a_metric_in_the_name_is_not_the_step(tmp_path: Path) -> None:
    """Names that carry a metric after the step (`model_step600_loss0.154.pt`, Lightning's
    `{epoch}-{step}-{val_loss:.2f}`) were ordered by the digits after the decimal point: step 600 was
    stored as step 154, before step 450 (stored as 200), and every trajectory was scrambled."""
    from fdl_cli.checkpoints import discover_checkpoints

    run = tmp_path / "run"
    run.mkdir()
    for step, loss in ((0, 2.0), (150, 0.5), (300, 0.286), (600, 0.154)):
        torch.save(mlp(seed=step).state_dict(), run / f"model_step{step}_loss{loss:.3f}.pt")
    torch.save(mlp(seed=1).state_dict(), run / "epoch=3-step=120-val_loss=0.25.pt")
    steps = {ref.path.name: ref.step for ref in discover_checkpoints([run]).checkpoints}
    assert steps == {
        "model_step0_loss2.000.pt": 0, "model_step150_loss0.500.pt": 150, "model_step300_loss0.286.pt": 300,
        "model_step600_loss0.154.pt": 600, "epoch=3-step=120-val_loss=0.25.pt": 120,
    }


@pytest.mark.parametrize(("name", "step"), [
    ("model_step600_loss0.154.pt", 600), ("step200_lr1e-4.pt", 200), ("1e-3_lr_step50.pt", 50),
    ("epoch=3-step=120-val_loss=0.25.ckpt", 120), ("epoch=3-step=120-val_loss=0.25-v1.ckpt", 120),
    ("step100.0.pt", 100), ("model_100.1.pt", 100), ("v1.5_step100.pt", 100), ("model.100.pt", 100),
    ("run.2.step_300.pt", 300), ("mobilenet-v2_step100.pt", 100), ("ckpt_000100.pt", 100), ("epoch_9.pt", 9),
    ("model-v2.pt", 2), ("final.pt", None),
])
def test_the_step_a_name_gives(tmp_path: Path, name: str, step: int | None) -> None:
    """Scientific notation (`lr1e-4`: every file of such a run was step 4) and Lightning's `-v1` suffix (step 1)
    are not the step; nor is a decimal's fraction (`step100.0` was step 0). Found by the session 13 review."""
    from fdl_cli.checkpoints import _name_step

    path = tmp_path / name
    path.write_bytes(b"")
    assert _name_step(path) == step

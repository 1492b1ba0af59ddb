"""Session 24, review of the last merges: discovery's skip of a flat dict whose names the run's other checkpoints
do not hold (`_foreign_flat_dicts`), ... Each test of a fix failed before it."""

from __future__ import annotations

from pathlib import Path

import torch

from fdl_cli.checkpoints import discover_checkpoints
from tests.test_s16_ecosystems import STEPS, _sd

torch.set_num_threads(1)


def test_flat_checkpoints_outnumbering_an_all_tensor_file_are_kept(tmp_path: Path) -> None:
    """A run of `{**sd, "step": s}` files beside one file of tensors only (metrics saved as `{"losses": ...,
    "accs": ...}`, named with a step): the tensors-only file was taken as the run's weights and every real
    checkpoint skipped as "a training job's metrics", the run reduced to the metrics file (before the skip was
    added all four were analysed, the metrics file failing alone). The names most files hold are the run's."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save({**_sd(index), "step": step}, folder / f"step_{step}.pt")
    torch.save({"losses": torch.randn(50), "accs": torch.rand(50)}, folder / "metrics_7.pt")
    found = discover_checkpoints([folder])
    assert [(ref.path.name, ref.step) for ref in found.checkpoints] == [
        ("metrics_7.pt", 7), *((f"step_{s}.pt", s) for s in STEPS)]
    assert not [note for note in found.notes if note.startswith("skipped step_")], found.notes


def test_a_run_whose_layout_changes_midway_keeps_every_checkpoint(tmp_path: Path) -> None:
    """A guard: early saves `{"model": sd, ...}` under DDP (`module.`), later ones `{**sd, "step": s}` compiled
    (`_orig_mod.`), and a metrics file beside them: the five checkpoints kept, the metrics file skipped."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate((100, 200), 1):
        model = {f"module.{key}": value for key, value in _sd(index).items()}
        torch.save({"model": model, "optimizer": {"state": {}}, "step": step}, folder / f"step_{step}.pt")
    for index, step in enumerate((300, 400, 500), 3):
        torch.save({**{f"_orig_mod.{key}": value for key, value in _sd(index).items()}, "step": step},
                   folder / f"step_{step}.pt")
    torch.save({"losses": torch.randn(5), "accs": torch.rand(5), "epoch": 3}, folder / "metrics.pt")
    found = discover_checkpoints([folder])
    assert [ref.step for ref in found.checkpoints] == [100, 200, 300, 400, 500]
    assert [note[:22] for note in found.notes if note.startswith("skipped")] == ["skipped metrics.pt: te"]


def test_a_half_model_with_its_batchnorm_kept_in_float32_is_widened() -> None:
    """`model.half()` with BatchNorm turned back to float32 (apex's O2, HF's `_keep_in_fp32_modules`), pickled
    whole: it holds float32 tensors, so since `in_float32` asked only for one it ran as it was, float16 linear
    weights on float32 inputs ("mat1 and mat2 must have the same dtype"). Its float16 tensors widen (exactly); a
    float64 layer kept on purpose beside them keeps its dtype."""
    from torch import nn

    from fdl_cli.extract import prepare_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 2)).half()
    model[1].float()
    model[4].double()
    weights = model[0].weight.detach().clone()
    prepared = prepare_model(model, device=torch.device("cpu"), dtype="float32")
    assert [prepared[index].weight.dtype for index in (0, 1, 3, 4)] == [torch.float32] * 3 + [torch.float64]
    assert torch.equal(prepared[0].weight, weights.float())
    with torch.no_grad():
        out = prepared[:4](torch.randn(5, 4))
    assert out.dtype == torch.float32 and out.shape == (5, 3)

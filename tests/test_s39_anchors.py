"""A probe whose anchor subset, its first m rows (SPEC §5), misrepresents its classes.

cka_init, cka_prev, overlap_init and overlap_prev (and the regime that rests on them) see the first m rows alone. A
probe sorted by class (a torchvision ImageFolder validation set) gave them a few classes silently: the sample's
probe sorted by label, --anchor-size 100, gave anchors of classes [47, 51, 2] of 10 and cka_init 0.875 at step 1000
against 0.550 unsorted. analyze now warns where the anchors' class mix is far from the probe's
(`probes.anchor_class_skew`), and stays silent on a shuffled probe, even of 1 000 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fdl_cli.probes import anchor_class_skew
from tests.cli_run import REPO, fdl_in_process
from tests.tiny_models import mlp


def test_a_shuffled_probe_is_not_warned_even_of_many_classes() -> None:
    """ImageNet-like: 1 000 classes of 50, 4 096 anchors of 50 000, where ~1.4 % of the classes are absent from
    random anchors and their class mix differs from the probe's by ~0.19 by chance; and 10 or 2 classes."""
    cases = [
        (np.repeat(np.arange(1000), 50), 4096),
        (np.repeat(np.arange(10), 500), 4096),
        (np.repeat(np.arange(2), 50), 10),
        (np.repeat(np.arange(3), 100), 30),
    ]
    for labels, m in cases:
        for seed in range(5):
            assert anchor_class_skew(np.random.default_rng(seed).permutation(labels), m) is None, (labels.max(), m)


def test_a_sorted_probe_is_warned() -> None:
    imagenet = anchor_class_skew(np.repeat(np.arange(1000), 50), 4096)
    assert imagenet is not None
    assert (imagenet.held, imagenet.classes, imagenet.m, imagenet.n) == (82, 1000, 4096, 50000)
    assert abs(imagenet.distance - 0.918) < 1e-9 and imagenet.random < 0.25
    # the audit's default case: 10 classes of 500, the first 4 096 of 5 000 rows lack class 9 alone
    ten = anchor_class_skew(np.repeat(np.arange(10), 500), 4096)
    assert ten is not None and (ten.held, ten.classes) == (9, 10)
    assert abs(ten.distance - 0.5 * (8 * (500 / 4096 - 0.1) + (0.1 - 96 / 4096) + 0.1)) < 1e-9


def test_every_row_an_anchor_is_never_warned() -> None:
    assert anchor_class_skew(np.repeat(np.arange(10), 50), 500) is None
    assert anchor_class_skew(np.repeat(np.arange(10), 50), 4096) is None


def test_the_bundled_sample_probe_is_not_warned_and_sorted_it_is() -> None:
    labels = np.load(REPO / "sample_checkpoints" / "probe.npz")["y"]
    for m in (20, 100, 250, 499):
        assert anchor_class_skew(labels, m) is None, m
    skew = anchor_class_skew(np.sort(labels), 100)  # the audit's: anchors of classes [47, 51, 2] of 10
    assert skew is not None and (skew.held, skew.classes) == (3, 10)


def _analyze(tmp_path: Path, labels: np.ndarray, name: str) -> str:
    run = tmp_path / "run"
    if not run.is_dir():
        run.mkdir()
        for step in (0, 10):
            torch.save(mlp(4, 8, 4, seed=step).state_dict(), run / f"step_{step}.pt")
    x = np.random.default_rng(1).normal(size=(len(labels), 4)).astype(np.float32)
    np.savez(tmp_path / f"{name}.npz", x=x, y=labels)
    done = fdl_in_process(
        "analyze",
        run,
        "--model",
        "tests.tiny_models:mlp",
        "--model-kwargs",
        '{"n_in": 4, "hidden": 8, "n_out": 4}',
        "--probe",
        tmp_path / f"{name}.npz",
        "--anchor-size",
        "40",
        "--out",
        tmp_path / f"{name}.h5",
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_analyze_warns_of_a_class_sorted_probe_and_not_of_it_shuffled(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(4), 30)  # sorted: the first 40 rows hold classes 0 (30) and 1 (10)
    said = " ".join(_analyze(tmp_path, labels, "sorted").split())
    probe = tmp_path / "sorted.npz"
    assert (
        f"warning: probe 'probe' ({probe}): its first 40 of 120 rows, the anchor subset (--anchor-size 40), hold "
        "2 of its 4 classes, in a class mix that differs from the probe's by 0.50 (total variation"
    ) in said
    assert "cka_init, cka_prev, overlap_init and overlap_prev, and the regime that rests on them, see those rows" in said
    assert "shuffle the probe's rows once, x and y alike, with a fixed seed, and analyse it into a new store" in said
    assert "--anchor-size 120 (every row)" in said
    shuffled = _analyze(tmp_path, np.random.default_rng(0).permutation(labels), "shuffled")
    assert "anchor subset" not in shuffled and "class mix" not in shuffled

"""The anchor-skew check where m is small for the classes (session 40).

With 100 anchors of a probe of 1 000 classes, random rows are as far from the probe's class mix (total variation
~0.9) as sorted ones, so last session's check stayed silent on a sorted probe there; but random rows hold ~95 of the
classes and sorted ones 2. The anchors are now also flagged where they hold fewer than half the classes the fewest
of the random draws held."""

from __future__ import annotations

import numpy as np
import pytest

from fdl_cli.probes import anchor_class_skew, anchor_skew_warning

THOUSAND = np.repeat(np.arange(1000), 50)
HUNDRED = np.repeat(np.arange(100), 20)
#: one class of 5 000 rows beside 1 000 classes of one row: random rows hold few classes too
SINGLETONS = np.concatenate([np.zeros(5000, dtype=np.int64), np.arange(1, 1001)])


@pytest.mark.parametrize(("labels", "m", "held"), [(THOUSAND, 100, 2), (THOUSAND, 10, 1), (HUNDRED, 20, 1),
                                                    (np.repeat(np.arange(10), 500), 10, 1)])
def test_a_sorted_probe_with_few_anchors_for_its_classes_is_warned(labels: np.ndarray, m: int, held: int) -> None:
    skew = anchor_class_skew(labels, m)
    assert skew is not None and (skew.m, skew.held, skew.classes) == (m, held, labels.max() + 1)


@pytest.mark.parametrize(("labels", "m"), [(THOUSAND, 10), (THOUSAND, 100), (THOUSAND, 300), (HUNDRED, 5),
                                           (HUNDRED, 50), (SINGLETONS, 10), (SINGLETONS, 100), (SINGLETONS, 1000)])
def test_shuffled_probes_with_few_anchors_for_their_classes_are_not_warned(labels: np.ndarray, m: int) -> None:
    for seed in range(20):
        assert anchor_class_skew(np.random.default_rng(seed).permutation(labels), m) is None, seed


def test_the_warning_says_which_way_the_anchors_fall_short() -> None:
    few = anchor_class_skew(THOUSAND, 100)
    assert few is not None
    said = anchor_skew_warning("probe", few)
    assert ("its first 100 of 50000 rows, the anchor subset (--anchor-size 100), hold 2 of its 1000 classes, far fewer "
            "than 100 rows drawn at random hold: is the probe sorted by class?") in said
    mixed = anchor_class_skew(THOUSAND, 4096)
    assert mixed is not None and "in a class mix that differs from the probe's by 0.92 (total variation" in (
        anchor_skew_warning("probe", mixed))

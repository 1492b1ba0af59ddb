"""The check that a DCP tensor's chunks cover it exactly once (`dcp.check_chunks`): what it says of valid grids,
valid tilings that are no grid, overlaps, gaps, duplicates, chunks outside the tensor and chunks of no elements,
checked against a count of each element's chunks over many random layouts, damaged ones among them."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import dcp
from fdl_cli.errors import CheckpointError
from tests.test_s26_rev_dcp import _handmade, _tensors

Box = tuple[tuple[int, ...], tuple[int, ...]]  # offsets, sizes


def _entry(size: tuple[int, ...], boxes: list[Box]) -> dcp.Entry:
    chunks = tuple(dcp.Chunk(o, s, "__0_0.distcp", i, 4 * math.prod(s)) for i, (o, s) in enumerate(boxes))
    return dcp.Entry("model.w", ("model", "w"), torch.float32, size, chunks)


def _said(tmp_path: Path, size: tuple[int, ...], boxes: list[Box]) -> str | None:
    """The message of `check_chunks` on one tensor of these chunks (its shard there), or None where it passes."""
    (tmp_path / "__0_0.distcp").touch()
    try:
        dcp.check_chunks(tmp_path, [_entry(size, boxes)])
    except CheckpointError as exc:
        return " ".join(str(exc).split())
    return None


def _staircase(rows: int) -> list[Box]:
    """Row r of a rows x (rows + 1) tensor cut in two at column r + 1: a valid tiling, no grid, of 2 * rows chunks
    that cut the tensor into rows * (rows + 1) pieces."""
    return [box for r in range(rows) for box in (((r, 0), (1, r + 1)), ((r, r + 1), (1, rows - r)))]


def _slabs(slabs: int) -> tuple[tuple[int, ...], list[Box]]:
    """A slabs x w x w tensor (w = slabs + 1), slab k cut into three at its own places along dimensions 1 and 2:
    a valid tiling of 3 * slabs chunks, no grid, whose edges cut the tensor into slabs * w**2 pieces."""
    w = slabs + 1
    boxes: list[Box] = []
    for k in range(slabs):
        a, b = 1 + k, slabs - k
        boxes += [((k, 0, 0), (1, a, w)), ((k, a, 0), (1, w - a, b)), ((k, a, b), (1, w - a, w - b))]
    return (slabs, w, w), boxes


# --------------------------------------------------------------------------- what the user is told


BRICK = [((0, 0), (1, 4)), ((0, 4), (1, 2)), ((1, 0), (1, 2)), ((1, 2), (1, 4)), ((2, 0), (1, 3)), ((2, 3), (1, 3))]
PINWHEEL = [((0, 0), (2, 1)), ((2, 0), (1, 2)), ((1, 2), (2, 1)), ((0, 1), (1, 2)), ((1, 1), (1, 1))]


@pytest.mark.parametrize(("size", "boxes", "said"), [
    ((6, 5), [((r, c), (h, w)) for r, h in ((0, 1), (1, 3), (4, 2)) for c, w in ((0, 2), (2, 3))], None),
    ((3, 6), BRICK, None),
    ((3, 3), PINWHEEL, None),
    ((4,), [((2,), (0,)), ((0,), (4,)), ((4,), (0,))], None),  # chunks of no elements, one at the very end
    ((), [((), ())], None),
    ((0, 3), [((0, 0), (0, 3))], None),
    ((4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4)), ((0, 0), (2, 4))], "two chunks of model.w overlap (at [0, 0] and "
     "[0, 0])"),
    ((3, 6), [*BRICK[:3], ((1, 1), (1, 5)), *BRICK[4:]], "two chunks of model.w overlap (at [1, 0] and [1, 1])"),
    ((3, 6), BRICK[:-1], "the chunks of model.w hold 15 of its 18 elements (size [3, 6])"),
    ((4, 4), [((0, 0), (2, 4)), ((3, 0), (1, 4))], "the chunks of model.w hold 12 of its 16 elements (size [4, 4])"),
    # as many elements as the tensor, one of them twice and one never
    ((3, 3), [*PINWHEEL[:4], ((0, 0), (1, 1))], "two chunks of model.w overlap (at [0, 0] and [0, 0])"),
    ((), [((), ()), ((), ())], "two chunks of model.w overlap (at [] and [])"),
    ((), [], "the chunks of model.w hold 0 of its 1 elements (size [])"),
    ((4, 4), [((0, 0), (4, 4)), ((1, 3), (2, 2))], "a chunk of model.w at [1, 3] of size [2, 2] lies outside its "
     "size [4, 4]"),
    ((4,), [((0,), (4,)), ((5,), (0,))], "a chunk of model.w at [5] of size [0] lies outside its size [4]"),
], ids=["grid", "brick", "pinwheel", "zero-size", "scalar", "empty-tensor", "duplicate", "overlap", "gap",
        "grid-gap", "overlap-and-gap", "scalar-twice", "scalar-none", "outside", "zero-size-outside"])
def test_what_each_layout_is_told(tmp_path: Path, size: tuple[int, ...], boxes: list[Box], said: str | None) -> None:
    told = _said(tmp_path, size, boxes)
    assert (told is None) if said is None else (told is not None and said in told), told


def test_a_valid_tiling_cut_into_millions_of_pieces_is_accepted(tmp_path: Path) -> None:
    """4200 chunks, each row of a 2100 x 2101 tensor cut in two at its own column, cut it into 4.4 million pieces:
    past the grid of pieces fdl checked, so that a valid layout was refused as one fdl does not check."""
    assert _said(tmp_path, (2100, 2101), _staircase(2100)) is None
    broken = _staircase(2100)
    broken[1002] = broken[1000]  # row 500's first chunk twice, none of row 501's: damaged, and still refused
    assert "the 4200 chunks of model.w cut it into 4412100 pieces, a layout fdl does not check" in (
        _said(tmp_path, (2100, 2101), broken) or "")


def test_a_grid_with_a_gap_is_told_its_gap_however_many_pieces(tmp_path: Path) -> None:
    """2100 one-element chunks on the diagonal of a 2100 x 2100 tensor are a grid's cells, most of them missing: the
    elements they hold are counted, where the 4.4 million pieces had the layout refused as one fdl does not check.
    One of them again, after another again, is an overlap: the first chunk lying on one before it, and that one."""
    diagonal = [((i, i), (1, 1)) for i in range(2100)]
    assert "the chunks of model.w hold 2100 of its 4410000 elements (size [2100, 2100])" in (
        _said(tmp_path, (2100, 2100), diagonal) or "")
    assert "two chunks of model.w overlap (at [9, 9] and [9, 9])" in (
        _said(tmp_path, (2100, 2100), [*diagonal, diagonal[9], diagonal[7]]) or "")


def test_a_valid_tiling_of_millions_of_pieces_is_read(tmp_path: Path) -> None:
    """What `fdl` loads from a folder whose 3-D tensor is cut, slab by slab, at places of each slab's own: 486
    chunks that cut it into over 4 million pieces, read whole and right where it was refused."""
    size, boxes = _slabs(162)
    assert math.prod(len({o[d] for o, _ in boxes} | {o[d] + s[d] for o, s in boxes}) - 1 for d in range(3)) > 2**22
    whole = torch.arange(math.prod(size), dtype=torch.float32).reshape(size)
    pieces = [(o, s, whole[tuple(slice(a, a + n) for a, n in zip(o, s, strict=True))].clone()) for o, s in boxes]
    _handmade(tmp_path / "step-3", "w", torch.float32, size, pieces)
    assert torch.equal(_tensors(tmp_path / "step-3")["w"], whole)


# ------------------------------------------------------------------ against a count of each element's chunks


def _tile(rng: random.Random, lo: list[int], hi: list[int], depth: int = 0) -> list[Box]:
    """A random exact tiling of the box [lo, hi): cut in two along a dimension, or into a pinwheel of five along
    two (no cut runs through it), each piece tiled again."""
    spans = [end - start for start, end in zip(lo, hi, strict=True)]
    if depth > 4 or rng.random() < 0.25:
        return [(tuple(lo), tuple(spans))]
    wide = [d for d, n in enumerate(spans) if n >= 3]
    if len(wide) >= 2 and rng.random() < 0.3:
        x, y = rng.sample(wide, 2)
        a, b = sorted(rng.sample(range(lo[x] + 1, hi[x]), 2))
        c, e = sorted(rng.sample(range(lo[y] + 1, hi[y]), 2))
        out: list[Box] = []
        for (x0, x1), (y0, y1) in [((lo[x], b), (lo[y], c)), ((b, hi[x]), (lo[y], e)), ((a, hi[x]), (e, hi[y])),
                                   ((lo[x], a), (c, hi[y])), ((a, b), (c, e))]:
            sub_lo, sub_hi = list(lo), list(hi)
            sub_lo[x], sub_hi[x], sub_lo[y], sub_hi[y] = x0, x1, y0, y1
            out += _tile(rng, sub_lo, sub_hi, depth + 1)
        return out
    cuttable = [d for d, n in enumerate(spans) if n >= 2]
    if not cuttable:
        return [(tuple(lo), tuple(spans))]
    d = rng.choice(cuttable)
    at = rng.randrange(lo[d] + 1, hi[d])
    left_hi, right_lo = list(hi), list(lo)
    left_hi[d] = right_lo[d] = at
    return _tile(rng, lo, left_hi, depth + 1) + _tile(rng, right_lo, hi, depth + 1)


def _damage(rng: random.Random, size: tuple[int, ...], boxes: list[Box]) -> list[Box]:
    boxes = list(boxes)
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        kind = rng.choice(["drop", "twice", "grow", "shrink", "shift", "extra", "empty"])
        i = rng.randrange(len(boxes))
        offsets, sizes = map(list, boxes[i])
        d = rng.randrange(len(size)) if size else None
        if kind == "drop" and len(boxes) > 1:
            del boxes[i]
        elif kind == "twice":
            boxes.insert(rng.randrange(len(boxes) + 1), boxes[i])
        elif kind == "empty":  # anywhere within the tensor, of no elements
            at = tuple(rng.randrange(n + 1) for n in size)
            boxes.insert(rng.randrange(len(boxes) + 1), (at, tuple(0 if k == d else rng.randrange(n - a + 1)
                                                                   for k, (a, n) in enumerate(zip(at, size, strict=True)))))
        elif kind == "extra":
            at = tuple(rng.randrange(n) for n in size if n)
            if len(at) == len(size):
                boxes.append((at, tuple(rng.randrange(1, n - a + 1) for a, n in zip(at, size, strict=True))))
        elif d is not None:
            if kind == "grow":
                sizes[d] += 1
            elif kind == "shrink" and sizes[d] > 1:
                sizes[d] -= 1
            elif kind == "shift":
                offsets[d] = max(0, offsets[d] + rng.choice([-1, 1]))
            boxes[i] = (tuple(offsets), tuple(sizes))
    return boxes


def _counted(size: tuple[int, ...], boxes: list[Box]) -> str:
    """What the layout is, from each element's count of chunks: 'outside', 'overlap', 'gap' or 'exact'."""
    if any(a + s > n for offsets, sizes in boxes for a, s, n in zip(offsets, sizes, size, strict=True)):
        return "outside"
    count = np.zeros(size, dtype=np.int64)
    for offsets, sizes in boxes:
        count[tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))] += 1
    return "overlap" if (count > 1).any() else "gap" if (count == 0).any() else "exact"


def _overlapping(boxes: list[Box], first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    """Whether a chunk at offsets `first` and another at `second` share an element."""
    at = [[i for i, (o, s) in enumerate(boxes) if o == place and 0 not in s] for place in (first, second)]
    return any(i != j and all(a < c + t and c < a + s for a, s, c, t in zip(*boxes[i], *boxes[j], strict=True))
               for i in at[0] for j in at[1])


@pytest.mark.parametrize("seed", range(4))
def test_the_check_agrees_with_a_count_of_each_element(tmp_path: Path, seed: int) -> None:
    """Random layouts of tensors of 0 to 3 dimensions, grids and tilings that are none, many of them damaged
    (a chunk dropped, twice, grown, shrunk or moved, one added, one of no elements added): each is told exact,
    an overlap of two chunks that do overlap, a gap of the elements the chunks hold, or a chunk outside, as the
    count of each element's chunks says."""
    rng = random.Random(seed)
    told = {"exact": 0, "overlap": 0, "gap": 0, "outside": 0}
    for _ in range(400):
        size = tuple(rng.randrange(1, 7) for _ in range(rng.choice([0, 1, 2, 2, 3, 3])))
        boxes = _tile(rng, [0] * len(size), list(size))
        if rng.random() < 0.3:  # a grid: the same cuts through every row and column
            cuts = [sorted({0, n, *rng.sample(range(1, n + 1), rng.randrange(n))}) for n in size]
            boxes = [(tuple(c[0] for c in cell), tuple(c[1] - c[0] for c in cell))
                     for cell in itertools.product(*(list(itertools.pairwise(c)) for c in cuts))]
        rng.shuffle(boxes)
        boxes = _damage(rng, size, boxes)
        kind = _counted(size, boxes)
        said = _said(tmp_path, size, boxes)
        told[kind] += 1
        if kind == "exact":
            assert said is None, (size, boxes, said)
        elif kind == "outside":
            assert said is not None and "lies outside its size" in said, (size, boxes, said)
        elif kind == "gap":
            volume = sum(math.prod(s) for _, s in boxes if 0 not in s)
            assert said is not None and (f"the chunks of model.w hold {volume} of its {math.prod(size)} elements "
                                         f"(size {list(size)})") in said, (size, boxes, said)
        else:
            assert said is not None and "two chunks of model.w overlap (at " in said, (size, boxes, said)
            pair = said.split("overlap (at ")[1].split(")")[0].split(" and ")
            places = [tuple(int(v) for v in text.strip("[]").split(", ") if v) for text in pair]
            assert _overlapping(boxes, places[0], places[1]), (size, boxes, said)
    assert min(told.values()) >= 20, told  # each outcome is tried

"""Review of the store's `refused` list and of compare's step alignment: what `fdl compare` and `fdl export` say of
a store with refused checkpoints, how a low-precision overflow is named, and `align_steps` against a brute-force
oracle on the inputs a random search rarely draws (duplicates, one step, none, negative and huge steps)."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from fdl_cli.report import Match, align_steps
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _make_run, _spoil
from tests.test_s31_refused import run, store  # noqa: F401 - the module fixtures of a diverged run (steps 30, 40)

# ------------------------------------------------------------------------ a store with refusals, other readers


def _analyze_with(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """test_s31_refused's `fdl analyze` of the tiny run, with more options."""
    return fdl_in_process("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
                          "--probe", folder / "probe.npz", "--anchor-size", "100", "-o", out, *extra)


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "refused:" in line]


def test_compare_names_each_runs_refused_steps_on_stderr(store: Path, tmp_path: Path) -> None:  # noqa: F811
    """compare said nothing of a run whose steps 30 and 40 were refused: its table stopped at step 20 as if the
    run had ended there, while report and classify named them."""
    other = tmp_path / "other.h5"
    other.write_bytes(store.read_bytes())
    for args in ((), ("--json",)):
        done = fdl_in_process("compare", store, other, *args)
        assert done.returncode == 0, done.stderr
        notes = _notes(done.stderr)
        assert notes == [
            f"note: run A ({store}): refused: steps 30, 40 (NaN or Inf weights: the run diverged?), by `fdl analyze`: "
            "not in the store, so the comparison covers steps 0–20 only",
            f"note: run B ({other}): refused: steps 30, 40 (NaN or Inf weights: the run diverged?), by `fdl analyze`: "
            "not in the store, so the comparison covers steps 0–20 only",
        ], done.stderr
        if args:
            assert "refused:" not in done.stdout  # the records as they were
            json.loads(done.stdout)
    once = fdl_in_process("compare", store, store)
    assert [note.split(": refused:")[0] for note in _notes(once.stderr)] == [f"note: runs A and B ({store})"], once.stderr


def test_export_names_the_refused_steps_on_stderr(store: Path) -> None:  # noqa: F811
    done = fdl_in_process("export", store, "--what", "trajectories", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == [0, 10, 20]
    assert _notes(done.stderr) == [
        "note: refused: steps 30, 40 (NaN or Inf weights: the run diverged?), by `fdl analyze`: not in the store, so "
        "this export covers steps 0–20 only"], done.stderr


def test_a_float16_overflow_is_not_called_a_diverged_run(tmp_path: Path) -> None:
    """Weights of 1e5 are finite and fit float32 but not float16: the forward pass in --dtype float16 overflows,
    which `--dtype float32` cures. The store recorded it as the float32 overflow of a diverged run, and report and
    classify asked "the run diverged?"."""
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    path = folder / "step_20.safetensors"
    state = load_file(str(path))
    state["0.weight"].fill_(1e5)
    save_file(state, str(path))
    out = tmp_path / "run.h5"
    done = _analyze_with(folder, out, "--dtype", "float16")
    assert done.returncode == 1, done.stderr
    said = fdl_in_process("classify", out)
    assert said.returncode == 0, said.stderr
    assert _notes(said.stdout + said.stderr) == [
        "refused: step 20 (a float16 forward pass that overflowed to inf or NaN: float32 holds more, `fdl analyze "
        "--dtype float32` into another --out), "
        "by `fdl analyze`: not in the store, so the verdict covers steps 0–10 only"], said.stdout + said.stderr
    # a script reads which kind of refusal it is, as the line says it, without parsing the reason
    listed = json.loads(fdl_in_process("classify", out, "--json").stdout)["refused_steps"]
    assert [(item["step"], item["kind"]) for item in listed] == [(20, "overflow_float16")], listed
    # analysed again in float32 (a store holds one --dtype's numbers: --overwrite), it is stored and not listed
    again = _analyze_with(folder, out, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert _notes(fdl_in_process("classify", out).stdout) == []


# --------------------------------------------------------------------------------------------- align_steps


def _nearest(step: int, others: set[int]) -> set[int]:
    best = min(abs(other - step) for other in others)
    return {other for other in others if abs(other - step) == best}


def _oracle_size(a: set[int], b: set[int]) -> int:
    """The largest number of pairs of mutual nearest steps (each a nearest of the other), each step used once,
    by trying every subset of the candidate pairs."""
    if not a or not b:
        return 0
    edges = [(x, y) for x in a for y in _nearest(x, b) if x in _nearest(y, a)]
    for size in range(min(len(a), len(b)), 0, -1):
        for chosen in itertools.combinations(edges, size):
            if len({x for x, _ in chosen}) == size and len({y for _, y in chosen}) == size:
                return size
    return 0


def _check(steps_a: list[int], steps_b: list[int]) -> list[Match]:
    matches = align_steps(steps_a, steps_b)
    a, b = set(steps_a), set(steps_b)
    pairs = [(m.step_a, m.step_b) for m in matches]
    assert len({x for x, _ in pairs}) == len(pairs) and len({y for _, y in pairs}) == len(pairs), pairs  # once each
    for x, y in pairs:
        assert x in a and y in b and y in _nearest(x, b) and x in _nearest(y, a), (steps_a, steps_b, pairs)
    assert [x for x, _ in pairs] == sorted(x for x, _ in pairs)  # in A's step order
    assert all(x == y for x, y in pairs if x in b)  # an equal step is always its own pair
    assert len(pairs) == _oracle_size(a, b), (steps_a, steps_b, pairs)
    swapped = {(y, x) for x, y in ((m.step_a, m.step_b) for m in align_steps(steps_b, steps_a))}
    assert swapped == set(pairs), (steps_a, steps_b)  # the pairs do not depend on which run is A
    return matches


@pytest.mark.parametrize(("steps_a", "steps_b", "expected"), [
    ([], [], []),
    ([], [0, 10], []),
    ([5], [], []),
    ([7], [7], [(7, 7)]),
    ([7], [0, 14], [(7, 0)]),  # a single step midway: the earlier
    ([10, 10, 10, 20], [20, 20, 10], [(10, 10), (20, 20)]),  # duplicates count once
    ([0, 0, 10, 20], [5, 15, 25, 25], [(0, 5), (10, 15), (20, 25)]),
    ([-30, -20, -10], [-25, -15, -5], [(-30, -25), (-20, -15), (-10, -5)]),
    ([2**70, 2**70 + 10], [2**70 + 5], [(2**70, 2**70 + 5)]),
    ([-(2**70), 2**70], [0], [(-(2**70), 0)]),
])
def test_align_steps_on_edge_inputs(steps_a: list[int], steps_b: list[int], expected: list[tuple[int, int]]) -> None:
    assert [(m.step_a, m.step_b) for m in _check(steps_a, steps_b)] == expected


def test_align_steps_agrees_with_the_oracle_on_duplicated_negative_and_huge_steps() -> None:
    rng = random.Random(31)
    for _ in range(400):
        offset = rng.choice([0, -50, 2**64, -(2**63)])
        a = [offset + rng.randrange(-6, 7) * rng.choice([1, 5]) for _ in range(rng.randrange(0, 6))]
        b = [offset + rng.randrange(-6, 7) * rng.choice([1, 5]) for _ in range(rng.randrange(0, 6))]
        matches = _check(a, b)
        # a shift of every step shifts the pairs alike: nothing hangs on the steps' size or sign
        shifted = align_steps([x - offset for x in a], [y - offset for y in b])
        assert [(m.step_a + offset, m.step_b + offset) for m in shifted] == [(m.step_a, m.step_b) for m in matches]


def test_strict_records_the_refusal_it_stops_at_on_a_resume_as_on_a_fresh_run(tmp_path: Path) -> None:
    """`--strict` stopped at step 30's NaN weights: a fresh run recorded the refusal (committed with the steps
    before it), a resume over a store of steps 0 - 20 did not (nothing else to commit, and nothing is committed
    alone after an error), so report and classify then said nothing of step 30."""
    folder = _make_run(tmp_path / "run", [0, 10, 20, 30])
    spoiled = folder / "step_30.safetensors"
    spoiled.rename(tmp_path / "step_30.safetensors")
    out = tmp_path / "run.h5"
    assert _analyze_with(folder, out).returncode == 0
    (tmp_path / "step_30.safetensors").rename(spoiled)
    _spoil(folder, 30, "nan")
    done = _analyze_with(folder, out, "--strict")
    assert done.returncode == 1 and "--strict stops" in done.stderr, done.stderr
    said = fdl_in_process("report", out)
    assert [line.split(" (")[0] for line in _notes(said.stderr)] == ["refused: step 30"], said.stderr

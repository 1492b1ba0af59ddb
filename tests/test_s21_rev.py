"""Adversarial review of the twenty-first session's changes (h_s21_rev).

- `fdl analyze --abandon-addition` on a store whose addition finished (nothing pending): the refusal of the
  resume named the probe to give and --overwrite, with no word of why the option given was of no use.
- --watch: an fdl.toml written again with the very bytes the run read (a trainer's callback that writes it
  at every save, an editor's save without an edit) was said to have "changed after this run started".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture


def test_abandon_addition_on_a_store_whose_addition_finished_says_why_there_is_nothing_to_give_up(
    run: Path, tmp_path: Path  # noqa: F811 - the fixture's value
) -> None:
    store = tmp_path / "s.h5"
    assert analyze(run, store, "--commit-interval", "0").code == 0
    assert analyze(run, store, "--probe", f"test={run / 'test.npz'}").code == 0  # added to every checkpoint
    on_disk = store.read_bytes()
    refused = analyze(run, store, "--abandon-addition")
    assert refused.code == 1 and "Traceback" not in refused.stderr
    text = " ".join(refused.stderr.split())
    assert ("fix: --abandon-addition gives up only an addition that stopped before it was done (probes or layers at "
            "some checkpoints only), and probe 'test' is at every checkpoint of the store: there is none to give up; "
            "the store also holds the probe 'test'") in text
    assert "give it too, --probe test=PATH" in text  # the ways out said as before
    assert store.read_bytes() == on_disk


def test_watch_is_silent_about_an_fdl_toml_written_again_with_the_bytes_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_prev_walkback import _arrive
    from tests.test_s20_toml import _settled_write, _watch
    from tests.test_s21_watch import _watched_with_toml

    source, folder, first = _watched_with_toml(tmp_path)
    toml = folder / "fdl.toml"

    def save(name: str) -> Callable[[], None]:  # a trainer's save: the checkpoint, and its fdl.toml again
        def step() -> None:
            _arrive(source, folder, name)
            toml.write_text(first)
            past = time.time() - 30
            os.utime(toml, (past, past))
        return step

    edited = 'model = "model.py:mlp"\nprobe = "probe.npz"\ntop_k = 8\n'
    reporter, records = _watch(monkeypatch, folder, tmp_path / "w.h5", [
        save("step_10.safetensors"), lambda: None, save("step_20.safetensors"), lambda: None,
        lambda: _settled_write(toml, edited), lambda: None,  # an edit: said
        lambda: _settled_write(toml, first), lambda: None,  # back as the run read it: said (it changed)
        lambda: _settled_write(toml, first), lambda: None,  # the same bytes again: not a change
    ])
    assert [record["step"] for record in records] == [0, 10, 20]
    assert reporter.warnings == [
        f"{toml} changed after this run started, and is not read again: it sets top_k = 8 (this run: 3), and the "
        "running watch keeps its settings until it is restarted, as the checkpoints of one store are measured one "
        "way; to apply it, stop, and run fdl analyze again with --overwrite (or another --out)"]
    assert [note for note in reporter.notes if "after this run started" in note] == [
        f"{toml} changed after this run started: it sets what the run uses already"]


def test_compare_counts_a_field_null_in_one_run_only_as_a_difference(tmp_path: Path) -> None:
    """Π̂(C) of a zero head is null now, 0.0 in a store written before (or a value in the other run): compare
    said 'no field differs at any matched step', and left a field null on one side out of its summary."""
    from tests.test_report import SCALARS, make_store, run_fdl

    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", scalars={step: {**values, **({"pi_hat_C": None, "nc1": 1.5} if step else {})}
                                               for step, values in SCALARS.items()})
    result = run_fdl("compare", str(a), str(b))
    assert result.returncode == 0, result.stderr
    steps = len(SCALARS) - 1
    assert f"pi_hat_C: null in one run only at {steps} steps (run B at {steps}, where run A has a value)" \
        in result.stderr
    assert f"nc1: null in one run only at {steps} steps (run A at {steps}, where run B has a value)" in result.stderr
    assert "no field differs at any matched step" not in result.stderr
    same = run_fdl("compare", str(a), str(a))
    assert "no field differs at any matched step" in same.stderr and "null in one run only" not in same.stderr

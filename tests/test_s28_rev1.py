"""A review of three changes: names bounded in messages, an older store's probe chance recorded by a resume with
nothing new, and compare's sentence on which run learned features.

The chance is committed alone (nothing else to store) only by a run that ends without an error: docs/store.md
says a run that ends in an error or a Ctrl-C leaves an older store without it, and the next resume records it."""

from __future__ import annotations

import hashlib
import json

import pytest

from fdl_cli import pipeline, signals
from tests.cli_run import fdl_in_process
from tests.test_s27_compat import _analyze, _chance, _run
from tests.test_s28_resume import old_store  # noqa: F401 - the fixture: (checkpoints, an old store, its chance)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ the chance alone, after a Ctrl-C


def test_a_ctrl_c_before_the_new_checkpoint_is_stored_leaves_an_old_store_as_it_was(
        tmp_path, old_store, monkeypatch) -> None:  # noqa: F811 - the fixture's value
    """The resume has a new checkpoint (step 20) and is stopped by Ctrl-C while reading it: nothing of this run
    is stored. The writer's flush after the run (before the `with` block saw the interrupt) committed the
    chance alone all the same."""
    ckpts, out, fresh = old_store
    _run(tmp_path, (20,))
    before = _digest(out)
    load = pipeline._load

    def interrupted(ref, *args, **kwargs):
        if ref.step == 20:
            raise signals.Interrupted()
        return load(ref, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_load", interrupted)
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    monkeypatch.undo()
    assert done.returncode == 130, done.stderr
    assert _chance(out) == {}
    assert _digest(out) == before
    done = _analyze(tmp_path, ckpts, out)  # the next resume records it, with step 20
    assert "1 checkpoint analysed, 2 already in the store" in done.stderr, done.stderr
    assert _chance(out) == fresh


# ------------------------------------------------------------------ the same under torchrun (rank 0 writes)

#: `fdl` under torchrun with one failure injected (BOOM): "open", rank 0 fails while it takes in the ranks' part
#: stores, after it opened the store; "run", step 20's read runs out of memory on the rank that analyses it
_WRAPPER = """\
import os, sys
from fdl_cli import pipeline, sharding
from fdl_cli.errors import ResourceError, StoreError
if os.environ["BOOM"] == "open" and os.environ.get("RANK") == "0":
    def take_in(*args, **kwargs):
        raise StoreError("the part stores could not be read (injected)")
    sharding._take_in_rank_parts = take_in
elif os.environ["BOOM"] == "run":
    load = pipeline._load
    def loaded(ref, *args, **kwargs):
        if ref.step == 20:
            raise ResourceError("step 20 needs more memory than there is (injected)")
        return load(ref, *args, **kwargs)
    pipeline._load = loaded
from fdl_cli.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("boom", ["open", "run"])
def test_under_torchrun_a_run_that_fails_leaves_an_old_store_as_it_was(
        tmp_path, old_store, boom) -> None:  # noqa: F811 - the fixture's value
    """Rank 0 closes its writer outside a `with` block (after an error too), so the chance was committed alone
    by a run that failed, where one process leaves the store as it was."""

    from tests.ranks import torchrun

    ckpts, out, fresh = old_store
    _run(tmp_path, (20,))
    before = _digest(out)
    wrapper = tmp_path / "boom.py"
    wrapper.write_text(_WRAPPER, encoding="utf-8")
    done = torchrun(str(wrapper), "analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--probe",
                    str(tmp_path / "probe.npz"), "-o", str(out), "--device", "cpu", direct=True, env={"BOOM": boom})
    assert done.returncode != 0 and "(injected)" in done.stderr, done.stderr
    assert _chance(out) == {}
    assert _digest(out) == before


# ------------------------------------------------------------------ a probe's other keys, bounded as its others


@pytest.mark.parametrize(("key", "before", "after"), [
    ("mask", "not read: ", "; fdl gives the model 'x' alone"),
    ("y_test", "has no targets under the names fdl reads (y, targets, labels, Y, label, target): ",
     ", one value a sample, is not read"),
])
def test_a_probe_s_unread_keys_are_shown_as_its_other_keys_are(tmp_path, key, before, after) -> None:
    """The note on a probe's arrays fdl does not read, and the warning on its targets saved under another name,
    listed the keys whole: a key of 3 000 characters with a newline made a note of two lines, one of 3 000
    characters (a probe's keys are bounded in its errors: "has no inputs")."""
    import numpy as np

    ckpts = _run(tmp_path, (0,))
    name = key + "\nline two" + "m" * (3000 - len(key))
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    extra = np.ones((40, 6), np.float32) if key == "mask" else np.arange(40) % 4
    np.savez(tmp_path / "p.npz", x=x, **({"y": np.arange(40) % 4} if key == "mask" else {}), **{name: extra})
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe", tmp_path / "p.npz",
                          "-o", tmp_path / "p.h5", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    shown = key + "\\x0aline two" + "m" * (80 - len(key) - 9) + "… (3009 characters)"
    assert before + shown + after in done.stderr, done.stderr[:2000]
    assert max(map(len, done.stderr.splitlines())) < 800


# ------------------------------------------------------------------ compare: which run learned features


def test_the_run_that_moved_is_said_to_by_the_measures_that_moved(tmp_path) -> None:
    """A run whose top-C eigenspace rotated (overlap to 0.8) under a CKA to its reference a hair under 1: the
    sentence said its features moved with "CKA to its reference down to 1.0000", the one measure that did not
    move, read as a CKA that never dropped."""
    from tests.test_report import SCALARS, make_store

    def store(name, seed, values):
        return make_store(tmp_path / f"{name}.h5", seed=seed,
                          scalars={step: {**SCALARS[step], **values(i)} for i, step in enumerate(SCALARS)})

    lazy = store("lazy", 3, lambda i: {"d_lr": [0.9, 0.6, 0.1][i], "cka_init": 1.0, "overlap_init": 1.0})
    rotated = store("rotated", 0, lambda i: {"cka_init": [1.0, 0.99999996, 0.99999993][i],
                                             "overlap_init": [1.0, 0.9, 0.8][i]})
    done = fdl_in_process("compare", lazy, rotated, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)["verdict"]
    assert verdict.endswith(" Of the two runs, only B's features moved (top-C overlap to 0.8000): B learned "
                            "features, A did not; A's lower D_LR comes from its readout of fixed features."), verdict


# ------------------------------------------------------------------ a part store of an older fdl, taken in


def test_a_part_store_written_before_the_chance_is_taken_in_without_a_write_of_its_own(tmp_path) -> None:
    """A torchrun job's part store left by an fdl that did not record the probe's chance: the writer that the
    take-in opens on the part for its lock alone committed the chance into it when it closed, after the part was
    removed, taken in whole: "could not write s.h5.rank-1", a warning that the part was left as it is (it was
    gone), and no note of the checkpoints taken in (their records missing from --json too)."""
    import h5py

    from tests.test_prev_walkback import _make_run
    from tests.test_s22_small import _part_after_20

    folder = _make_run(tmp_path / "run")
    args = ("--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}', "--probe", folder / "probe.npz",
            "--anchor-size", "100", "--batch-size", "64", "--device", "cpu")
    full, out, part = tmp_path / "full.h5", tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    for store, steps in ((full, ()), (out, ("--steps", "0"))):
        done = fdl_in_process("analyze", folder, *args, *steps, "-o", store)
        assert done.returncode == 0, done.stderr
    _part_after_20(folder, full, part, (30, 40, 50, 60))
    with h5py.File(part, "r+") as stored:
        for name in ("chance_accuracy", "label_entropy"):
            del stored["probes/probe"].attrs[name]
    done = fdl_in_process("analyze", folder, *args, "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert "was left as it is" not in done.stderr and "could not write" not in done.stderr, done.stderr
    assert "4 checkpoints that a rank of an interrupted torchrun job stored in s.h5.rank-1 were added to s.h5" \
        in done.stderr, done.stderr
    assert not part.exists()
    printed = [json.loads(line)["step"] for line in done.stdout.splitlines() if '"step"' in line]
    assert sorted(printed) == [10, 20, 30, 40, 50, 60], printed


def test_a_probe_s_class_names_in_its_error_are_bounded_as_names_are(tmp_path) -> None:
    """Labels saved as text: the error quotes a few of them, whole: a label of 3 000 characters made a line of
    3 000 characters (its newline was escaped, `repr`)."""
    import numpy as np

    ckpts = _run(tmp_path, (0,))
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "p.npz", x=x, y=np.array(["cat\n" + "c" * 3000, "dog"] * 20))
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe", tmp_path / "p.npz",
                          "-o", tmp_path / "p.h5", "--device", "cpu")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[:2000]
    assert "  got: e.g. 'cat\\n" + "c" * 76 + "'… (3004 characters), 'dog' (2 distinct names)\n" in done.stderr, \
        done.stderr[:2000]

"""How `fdl analyze` keeps a store honest (session 16), and the types of `fdl classify`'s thresholds.

1. A stored checkpoint's file overwritten by a copy of another step's file: the copy was skipped as a
   duplicate (its step key says the other step), and the store kept the old numbers of the step without a
   word; `--redo` then said no checkpoint has that step, though its file is there.
2. Damaged arrays (a failed Fletcher-32 checksum) of a stored checkpoint that a resume reads back: the
   checkpoint compared with it was stored with a null cka_prev, and the successor refresh then stopped the
   run naming --redo. Refused now before any checkpoint is analysed.
3. `fdl classify --json` printed the counts mf_extra and final_window as floats (1.0, 3.0), and the text
   output rounded a threshold such as 0.9999999 to "1".
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.test_analyze import analyze, fdl, run  # noqa: F401 - `run` is the module's fixture
from tests.test_s15_redo import _assert_same_store, _flip_chunk


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder(run: Path, folder: Path, steps: tuple[int, ...], *, step_key: bool = False) -> Path:  # noqa: F811
    """The run's checkpoints of `steps`; with `step_key`, each a training-loop dict holding its step."""
    folder.mkdir()
    for step in steps:
        source = run / "ckpts" / f"epoch_{step}.pt"
        if step_key:
            torch.save({"step": step, "model": torch.load(source, weights_only=True)}, folder / f"epoch_{step}.pt")
        else:
            shutil.copyfile(source, folder / f"epoch_{step}.pt")
    return folder


def _stored(store: Path) -> dict[int, str]:
    with StoreReader(store) as reader:
        return {record["step"]: record["sha256"] for record in reader.records()}


# ------------------------------------------------------------------ 1. a stored file replaced by a copy


@pytest.mark.parametrize("step_key", [False, True], ids=["step-from-name", "step-key"])
def test_a_stored_file_overwritten_by_a_copy_of_another_steps_file_is_refused(
    run: Path, tmp_path: Path, step_key: bool,  # noqa: F811
) -> None:
    folder = _folder(run, tmp_path / "ckpts", (0, 10, 20, 30), step_key=step_key)
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    original, stored = (folder / "epoch_10.pt").read_bytes(), _stored(store)
    before = _sha(store)
    shutil.copyfile(folder / "epoch_20.pt", folder / "epoch_10.pt")  # same weights, and same step key
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "Traceback" not in refused.stderr and refused.records == []
    now = ", now step 20: " if step_key else ", now "
    assert (
        f"error: 1 checkpoint file changed since it was analysed into {store}: step 10 ({folder / 'epoch_10.pt'}"
        f"{now}a copy of {folder / 'epoch_20.pt'}, the file stored as step 20); the store holds the numbers of "
        "the file it replaced"
    ) in refused.stderr
    assert (
        "fix: restore the files (each the checkpoint saved at its step), or remove the copy of step 10 (the store "
        "keeps the numbers of the file it replaced, as for a deleted file), or re-analyse everything with "
        "--overwrite (or another --out)\n"
    ) in refused.stderr  # no --redo 10: it would store step 20's numbers as step 10's
    assert _sha(store) == before
    if step_key:
        # --redo 10 finds no checkpoint of step 10, and says why: its file is there, holding step 20
        redo = analyze(run, store, "--redo", "10", sources=(str(folder),))
        assert redo.code == 1 and "Traceback" not in redo.stderr and redo.records == []
        assert (
            f"error: --redo 10: no checkpoint of this run has step 10: {folder / 'epoch_10.pt'}, which {store} "
            f"analysed as step 10, now holds step 20 (from its metadata:step), with the same weights as "
            f"{folder / 'epoch_20.pt'}, and is left out as a copy of it"
        ) in redo.stderr
        assert (f"fix: --redo analyses a checkpoint again at the step its file holds: restore the checkpoint saved "
                f"at step 10 as {folder / 'epoch_10.pt'} to analyse it again, or remove the copy") in redo.stderr
        assert _sha(store) == before
    # either fix the message names: the copy removed (the store keeps step 10), or the file restored
    (folder / "epoch_10.pt").unlink()
    removed = analyze(run, store, sources=(str(folder),))
    assert removed.code == 0, removed.stderr
    assert _stored(store) == stored
    (folder / "epoch_10.pt").write_bytes(original)
    restored = analyze(run, store, sources=(str(folder),))
    assert restored.code == 0 and restored.records == [] and _stored(store) == stored


def test_a_rolling_file_now_a_copy_of_a_stored_step_is_still_no_changed_file(run: Path, tmp_path: Path) -> None:  # noqa: F811
    """The rule of item 1 is for files named by their step: a rolling `last.pt` stored as step 10 (no
    step-10 file of its own) that training rewrote with step 20, beside step 20's own file, is a file whose
    earlier step is gone (docs/store.md), as before."""
    folder = _folder(run, tmp_path / "ckpts", (0, 10, 20), step_key=True)
    (folder / "epoch_10.pt").rename(folder / "last.pt")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    with StoreReader(store) as reader:
        assert reader.file_identities()[10][0] == str(folder / "last.pt")
    shutil.copyfile(folder / "epoch_20.pt", folder / "last.pt")
    resumed = analyze(run, store, sources=(str(folder),))
    assert resumed.code == 0, resumed.stderr
    assert "skipped last.pt: same weights and step (20) as epoch_20.pt" in resumed.stderr


# ---------------------------------------------------- 2. damaged arrays of a stored checkpoint read back


def _damage(store: Path, step: int) -> None:
    with h5py.File(store, "r") as handle:
        (series,) = [f"{probe}/{layer}" for probe in handle[f"checkpoints/step_{step}"]
                     for layer in handle[f"checkpoints/step_{step}/{probe}"]]
    _flip_chunk(store, f"checkpoints/step_{step}/{series}/eigenfunctions")


@pytest.mark.parametrize(
    ("stored", "damaged", "added", "why", "fix"),
    [
        # appended after the damaged one: its previous
        ((0, 10, 20), 20, 30, "step 30, analysed now, is compared with it (cka_prev, overlap_prev)",
         "run the same command with --redo 20: it analyses that checkpoint again from its file first, then the others"),
        # inserted before the damaged one: its successor, whose cka_prev is taken again
        ((0, 10, 30), 30, 20, "it is compared with step 20, analysed now, once that is stored (its cka_prev, "
         "overlap_prev are taken again)",
         "run the same command with --redo 30: it analyses that checkpoint again from its file first, then the others"),
        # the reference: every checkpoint is compared with it, and --redo cannot take it
        ((0, 10, 20), 0, 30, "the reference, which step 30 and every checkpoint analysed now are compared with "
         "(cka_init, overlap_init)", "restore {store} from a backup, or re-analyse everything with --overwrite"),
    ],
    ids=["previous", "successor", "reference"],
)
def test_damaged_arrays_read_back_refuse_the_run_before_any_work(
    run: Path, tmp_path: Path, stored: tuple[int, ...], damaged: int, added: int, why: str, fix: str,  # noqa: F811
) -> None:
    folder = _folder(run, tmp_path / "ckpts", stored)
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    _damage(store, damaged)
    before = _sha(store)
    shutil.copyfile(run / "ckpts" / f"epoch_{added}.pt", folder / f"epoch_{added}.pt")
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert refused.records == []  # nothing analysed: step 30 with a null cka_prev was stored before
    assert (f"error: {store} is damaged at checkpoint step {damaged} (probe/2:input), which this run reads back: "
            f"{why}; nothing was analysed") in refused.stderr
    assert "fix: " + fix.format(store=store) in refused.stderr
    assert _sha(store) == before
    if damaged == 0:
        return
    redone = analyze(run, store, "--redo", str(damaged), sources=(str(folder),))
    assert redone.code == 0, redone.stderr
    assert sorted(record["step"] for record in redone.records) == sorted({damaged, added, 30})
    scratch = tmp_path / "scratch.h5"
    assert analyze(run, scratch, sources=(str(folder),)).code == 0
    _assert_same_store(store, scratch)


def test_damage_met_while_reading_a_previous_checkpoint_stops_instead_of_storing_a_null_cka_prev(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Damage the up-front check does not see (the store damaged after it) stops the run where the
    previous checkpoint is read back, and nothing compared with nothing is stored."""
    from fdl_cli import pipeline

    folder = _folder(run, tmp_path / "ckpts", (0, 10, 20))
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    _damage(store, 20)
    shutil.copyfile(run / "ckpts" / "epoch_30.pt", folder / "epoch_30.pt")
    monkeypatch.setattr(pipeline, "_check_stored_to_read", lambda *args: None, raising=False)
    stopped = analyze(run, store, sources=(str(folder),))
    assert stopped.code == 1 and "Traceback" not in stopped.stderr and stopped.records == []
    assert (f"error: {store} is damaged at checkpoint step 20 (probe/2:input), which step 30, analysed now, is "
            "compared with (cka_prev, overlap_prev)") in stopped.stderr
    assert "fix: run the same command with --redo 20 (the checkpoints analysed before this one are stored)" in (
        stopped.stderr)
    assert sorted(_stored(store)) == [0, 10, 20]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--shard-probe",)], ids=["checkpoint-sharding", "shard-probe"])
def test_torchrun_refuses_damaged_arrays_read_back_on_every_rank(tmp_path: Path, extra: tuple[str, ...]) -> None:
    """Rank 0 checks the stored checkpoints the ranks will read back and tells every rank, before any
    work: a rank stopping alone would leave the others waiting in a collective (--shard-probe)."""
    from tests.test_distributed import _args, _make_run, _torchrun_process

    run_dir = _make_run(tmp_path / "run")
    aside = tmp_path / "aside"
    aside.mkdir()
    for step in (50, 60):
        (run_dir / f"step_{step}.safetensors").rename(aside / f"step_{step}.safetensors")
    out = tmp_path / "s.h5"
    # the store the job resumes, made by one process in this one (the same store as two ranks': test_distributed)
    first = fdl(*_args(run_dir, out, *extra))
    assert first.code == 0, first.stderr[-3000:]
    _damage(out, 40)
    before = _sha(out)
    for step in (50, 60):
        (aside / f"step_{step}.safetensors").rename(run_dir / f"step_{step}.safetensors")
    refused = _torchrun_process(run_dir, out, *extra)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert (f"{out} is damaged at checkpoint step 40 (probe/2:input), which this run reads back: step 50, analysed "
            "now, is compared with it (cka_prev, overlap_prev); nothing was analysed") in refused.stderr
    assert "fix: run the same command with --redo 40" in refused.stderr
    assert "fdl_cli/" not in refused.stderr and refused.stdout == ""
    assert _sha(out) == before


# ------------------------------------------------------------------------ 3. classify's thresholds


def _classify(store: Path, *extra: str) -> tuple[int, str, str]:
    done = fdl("classify", str(store), *extra)
    return done.code, done.stdout, done.stderr


@pytest.fixture(scope="module")
def classified(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    store = tmp_path_factory.mktemp("classify") / "s.h5"
    assert analyze(run, store).code == 0
    return store


def test_classify_json_prints_the_count_thresholds_as_integers(classified: Path) -> None:
    code, out, _ = _classify(classified, "--json")
    assert code == 0
    assert ('"thresholds": {"cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8, "mf_extra": 1, '
            '"final_window": 3}') in out
    thresholds = json.loads(out)["thresholds"]
    assert [type(thresholds[name]) for name in thresholds] == [float, float, float, int, int]
    code, out, _ = _classify(classified, "--json", "--threshold", "mf_extra=2", "--threshold", "final_window=5.0",
                             "--threshold", "cka_static=1", "--threshold", "overlap_static=1")
    assert code == 0
    thresholds = json.loads(out)["thresholds"]
    assert thresholds == {"cka_static": 1.0, "overlap_static": 1.0, "overlap_moved": 0.8, "mf_extra": 2,
                          "final_window": 5}
    assert [type(thresholds[name]) for name in thresholds] == [float, float, float, int, int]
    # a fractional mf_extra (k95 ≤ C + 1.5 is k95 ≤ C + 1) is printed as given
    code, out, _ = _classify(classified, "--json", "--threshold", "mf_extra=1.5")
    assert code == 0 and json.loads(out)["thresholds"]["mf_extra"] == 1.5
    assert "C + mf_extra = 4.5" in json.loads(out)["evidence"]["rule"]


def test_classify_text_shows_every_digit_of_a_threshold(classified: Path) -> None:
    code, out, err = _classify(classified, "--threshold", "cka_static=0.9999999", "--threshold", "mf_extra=-0")
    assert code == 0 and out == ""
    assert "thresholds: cka_static = 0.9999999, overlap_static = 0.95, overlap_moved = 0.8, mf_extra = 0, " \
           "final_window = 3\n" in err
    assert "features moved (below 0.9999999 or 0.95)" in err  # the rule said "below 1"
    code, _, err = _classify(classified, "--threshold", "cka_static=1.0000001")
    assert code == 1 and "got: cka_static=1.0000001 is outside [0, 1]" in err  # "cka_static=1 is outside"

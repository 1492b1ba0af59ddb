"""`fdl analyze ... --redo STEPS`: analyse stored checkpoints again, keep the rest of the store.

Before it, a stored checkpoint whose file changed since it was analysed, or whose stored arrays were
damaged, could only be mended with --overwrite, which analyses every checkpoint of the run again.
`--redo` analyses the named ones again from their files, replaces their entries, and recomputes
cka_prev / overlap_prev of the stored checkpoints compared with them; the store it leaves equals,
dataset by dataset and attribute by attribute, one analysed from scratch with the same files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests import warm
from tests.cli_run import fdl_in_process
from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture

ROOT = Path(__file__).resolve().parents[1]


def _copy(run: Path, folder: Path) -> Path:  # noqa: F811 - `run` is the fixture's value
    shutil.copytree(run / "ckpts", folder)
    return folder


def _retrain(folder: Path, step: int, factor: float = 1.5) -> None:
    """The file of `step` replaced by other weights (a re-run with another learning rate), same name."""
    state = torch.load(folder / f"epoch_{step}.pt", weights_only=True)
    generator = torch.Generator().manual_seed(step)
    # not a multiple of the weights: a ReLU network's features would only scale, and CKA not move
    torch.save({name: value * factor + 0.3 * torch.randn(value.shape, generator=generator)
                for name, value in state.items()}, folder / f"epoch_{step}.pt")


def _dump(store: Path) -> dict[str, Any]:
    """Every attribute and dataset of the store by its HDF5 path; not the root's `created` time, nor where and
    when its checkpoints were computed (the root's `history` and each checkpoint group's index into it)."""
    items: dict[str, Any] = {}
    with h5py.File(store, "r") as handle:
        for name, value in handle.attrs.items():
            if name not in ("created", "history"):
                items[f"/@{name}"] = value

        def visit(name: str, node: Any) -> None:
            for key, value in node.attrs.items():
                if not (key == "history" and name.startswith("checkpoints/step_") and name.count("/") == 1):
                    items[f"{name}@{key}"] = value
            if isinstance(node, h5py.Dataset):
                items[name] = node[()]

        handle.visititems(visit)
    return items


def _assert_same_store(store: Path, scratch: Path) -> None:
    mine, theirs = _dump(store), _dump(scratch)
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        a, b = mine[key], theirs[key]
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), key
        else:
            assert a == b, key


def _group(store: Path, step: int) -> dict[str, Any]:
    return {key: value for key, value in _dump(store).items() if key.startswith(f"checkpoints/step_{step}")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return sorted(a) == sorted(b) and all(
        np.array_equal(a[key], b[key], equal_nan=True) if isinstance(a[key], np.ndarray) else a[key] == b[key]
        for key in a
    )


def test_a_changed_checkpoint_redone_gives_the_store_of_a_run_from_scratch(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    _retrain(folder, 20)
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1
    # the error of a changed file names the remedy for exactly that checkpoint
    assert "or analyse only that checkpoint again: the same command with --redo 20" in refused.stderr
    redone = analyze(run, store, "--redo", "20", sources=(str(folder),))
    assert redone.code == 0, redone.stderr
    # step 20 analysed again, step 30 (compared with it) updated; nothing else printed
    assert [record["step"] for record in redone.records] == [20, 30]
    assert "1 checkpoint analysed (1 of them again: --redo), 3 already in the store, 1 updated" in redone.stderr
    scratch = tmp_path / "scratch.h5"
    assert analyze(run, scratch, sources=(str(folder),)).code == 0
    _assert_same_store(store, scratch)
    with StoreReader(store) as reader:
        identity = reader.file_identities()[20]
    assert identity[0] == str(folder / "epoch_20.pt") and identity[1] == _sha(folder / "epoch_20.pt")
    # a resume now finds every file as analysed
    again = analyze(run, store, sources=(str(folder),))
    assert again.code == 0 and again.records == []


def test_a_redone_middle_step_refreshes_its_successors_prev_measures_only(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    with StoreReader(store) as reader:
        before = {record["step"]: record for record in reader.records()}
    untouched = {step: _group(store, step) for step in (0, 30)}
    _retrain(folder, 10, factor=0.5)
    redone = analyze(run, store, "--redo", "10", sources=(str(folder),))
    assert redone.code == 0, redone.stderr
    after = {record["step"]: record for record in redone.records}
    assert sorted(after) == [10, 20]
    assert after[20]["prev_step"] == 10
    assert after[20]["cka_prev"] != before[20]["cka_prev"]
    assert after[20]["overlap_prev"] != before[20]["overlap_prev"]
    # the rest of step 20's record is its own, unchanged
    for name, value in before[20].items():
        if name not in ("cka_prev", "overlap_prev"):
            assert after[20][name] == value, name
    for step, group in untouched.items():
        assert _same(_group(store, step), group), step
    scratch = tmp_path / "scratch.h5"
    assert analyze(run, scratch, sources=(str(folder),)).code == 0
    _assert_same_store(store, scratch)


def test_two_consecutive_changed_steps_redone_together(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    _retrain(folder, 10, factor=0.5)
    _retrain(folder, 20, factor=1.5)
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "or analyse only those checkpoints again: the same command with --redo 10,20" in (
        refused.stderr
    )
    redone = analyze(run, store, "--redo", "20,10", sources=(str(folder),))
    assert redone.code == 0, redone.stderr
    assert [record["step"] for record in redone.records] == [10, 20, 30]
    scratch = tmp_path / "scratch.h5"
    assert analyze(run, scratch, sources=(str(folder),)).code == 0
    _assert_same_store(store, scratch)


def _flip_chunk(store: Path, dataset: str) -> None:
    """Flip bytes of a checksummed dataset's first chunk in the file: its reads then fail (fletcher32)."""
    with h5py.File(store, "r") as handle:
        info = handle[dataset].id.get_chunk_info(0)
        offset, size = info.byte_offset, info.size
    data = bytearray(store.read_bytes())
    for index in range(offset, offset + min(size, 16)):
        data[index] ^= 0xFF
    store.write_bytes(bytes(data))


def test_damaged_arrays_of_a_step_are_named_with_redo_and_redone(run: Path, tmp_path: Path) -> None:  # noqa: F811
    from tests.test_analyze import fdl

    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    intact = tmp_path / "intact.h5"
    shutil.copyfile(store, intact)
    with h5py.File(store, "r") as handle:
        (series,) = [f"{probe}/{layer}" for probe in handle["checkpoints/step_10"]
                     for layer in handle[f"checkpoints/step_10/{probe}"]]
    _flip_chunk(store, f"checkpoints/step_10/{series}/eigenvalues")
    exported = fdl("export", str(store), "--what", "eigenvalues")
    assert exported.code == 1 and "Traceback" not in exported.stderr
    assert "is damaged at checkpoint step 10" in exported.stderr
    assert f"`fdl analyze ... --out {store} --redo 10`" in exported.stderr
    redone = analyze(run, store, "--redo", "10", sources=(str(folder),))
    assert redone.code == 0, redone.stderr
    assert [record["step"] for record in redone.records] == [10, 20]
    _assert_same_store(store, intact)  # the same files: the numbers of the first run, bit for bit
    assert fdl("export", str(store), "--what", "eigenvalues").code == 0


@pytest.mark.parametrize(
    ("redo", "message"),
    [
        ("15", "holds no checkpoint at step 15"),
        ("20", "no checkpoint of this run has step 20"),
        ("0", "step 0 is the reference checkpoint"),
        ("10,0", "step 0 is the reference checkpoint"),
    ],
)
def test_a_redo_that_cannot_be_done_is_refused_and_changes_nothing(
    run: Path, tmp_path: Path, redo: str, message: str,  # noqa: F811
) -> None:
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    (folder / "epoch_20.pt").unlink()  # stored, and no longer among the run's checkpoints
    before = _sha(store)
    refused = analyze(run, store, "--redo", redo, sources=(str(folder),))
    assert refused.code == 1 and "Traceback" not in refused.stderr and refused.records == []
    assert message in refused.stderr
    assert _sha(store) == before
    assert not list(tmp_path.glob("s.h5.tmp-*"))


def test_a_redo_whose_successor_file_is_gone_is_refused(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    (folder / "epoch_30.pt").unlink()
    before = _sha(store)
    refused = analyze(run, store, "--redo", "20", sources=(str(folder),))
    assert refused.code == 1
    assert "the stored step 30 is compared with step 20 (cka_prev, overlap_prev) and its file is not" in refused.stderr
    assert _sha(store) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--overwrite",), "--redo 10 and --overwrite together"),
        (("--watch",), "--redo 10 and --watch together"),
    ],
)
def test_redo_with_overwrite_or_watch_is_refused(run: Path, tmp_path: Path, extra: tuple[str, ...], message: str) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    before = _sha(store)
    refused = analyze(run, store, "--redo", "10", *extra, sources=(str(folder),))
    assert refused.code == 1 and message in refused.stderr
    assert _sha(store) == before


def test_redo_without_a_store_or_with_a_malformed_list(run: Path, tmp_path: Path) -> None:  # noqa: F811
    missing = analyze(run, tmp_path / "none.h5", "--redo", "10")
    assert missing.code == 1 and "there is no store at" in missing.stderr
    assert not (tmp_path / "none.h5").exists()
    for bad in ("", "1,a"):
        usage = analyze(run, tmp_path / "none.h5", "--redo", bad)
        assert usage.code == 2 and "--redo" in usage.stderr


def test_redo_under_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch, run: Path, tmp_path: Path) -> None:  # noqa: F811
    # the world as torchrun describes it to each rank; the refusal comes before any collective
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("fdl_cli.distributed.QUIET_EXIT_GRACE", 0.01)
    refused = analyze(run, tmp_path / "s.h5", "--redo", "10")
    # every rank refuses alike: rank 1 exits 1 and leaves the message to rank 0 (session 19)
    assert refused.code == 1 and refused.stderr == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    refused = analyze(run, tmp_path / "s.h5", "--redo", "10")
    assert refused.code == 1 and "--redo 10 runs as one process, not under torchrun" in refused.stderr


#: A model whose process kills itself (SIGKILL) at the FDL_KILL_AT-th forward pass of a batch of more
#: than one input, a second after it is called (what was added before is committed by then, with
#: --commit-interval 0): a crash at a chosen moment of a redo.
KILLING_MODEL = textwrap.dedent("""
    import os, signal, time
    from tests.tiny_models import mlp

    calls = [0]

    def build():
        model = mlp(4, 8, 3)
        limit = int(os.environ.get("FDL_KILL_AT", "0"))

        def hook(module, args):
            if args[0].shape[0] > 1:
                calls[0] += 1
                if calls[0] == limit:
                    time.sleep(1.0)
                    os.kill(os.getpid(), signal.SIGKILL)

        model.register_forward_pre_hook(hook)
        return model
""")


def test_a_redo_killed_at_any_pass_leaves_old_or_new_entries_and_a_second_redo_completes(
    run: Path, tmp_path: Path,  # noqa: F811
) -> None:
    (tmp_path / "killing.py").write_text(KILLING_MODEL)
    folder = _copy(run, tmp_path / "ckpts")
    original = tmp_path / "original.h5"
    argv = [sys.executable, "-m", "fdl_cli", "analyze", str(folder), "--model", f"{tmp_path}/killing.py:build",
            "--probe", str(run / "probe.npz"), "--commit-interval", "0"]
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # the stores before and after the retraining: in this process (FDL_KILL_AT unset, nothing is killed), ~2 s
    # of `import torch` less each; only the killed redos need a process of their own (the redos that finish them
    # run here too: what they must show, a whole store and no copy left, does not depend on the process); the killed
    # ones are warm children (tests/warm.py), real processes killed as any, without their own `import torch`
    assert fdl_in_process(*argv[3:], "--out", original).returncode == 0
    _retrain(folder, 10, factor=0.5)
    _retrain(folder, 20, factor=1.5)
    scratch = tmp_path / "scratch.h5"
    assert fdl_in_process(*argv[3:], "--out", scratch).returncode == 0
    old = {step: _group(original, step) for step in (10, 20, 30)}
    new = {step: _group(scratch, step) for step in (10, 20, 30)}
    states = set()
    # --redo 10,20: step 10 (its successor 20 is redone itself), then step 20 with its successor 30, compared
    # with it, in one commit
    # forward passes of a redo of 10,20: 1 the reference's anchors, 2 step 10, 3 step 20, 4 step 30's anchors
    for kill_at in (2, 4):
        store = tmp_path / f"s{kill_at}.h5"
        shutil.copyfile(original, store)
        killed = warm.run([*argv, "--out", str(store), "--redo", "10,20"],
                          env={**environment, "FDL_KILL_AT": str(kill_at)}, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        with StoreReader(store) as reader:  # it opens, whole
            assert reader.warnings == [] and [record["step"] for record in reader.records()] == [0, 10, 20, 30]
        state = []
        for step in (10, 20, 30):
            group = _group(store, step)
            assert _same(group, old[step]) or _same(group, new[step]), (kill_at, step)
            state.append(_same(group, new[step]))
        assert state[1] == state[2], kill_at  # never step 20's new numbers beside 30's comparison with the old
        states.add(tuple(state))
        finished = fdl_in_process(*argv[3:], "--out", store, "--redo", "10,20")
        assert finished.returncode == 0, finished.stderr
        _assert_same_store(store, scratch)
        assert not list(tmp_path.glob(f"s{kill_at}.h5.tmp-*"))
    # killed while step 10 was analysed: nothing of the redo stored; while step 30's comparison with the new
    # step 20 was computed: step 10 stored anew, 20 and 30 as they were
    assert states == {(False, False, False), (True, False, False)}


def test_a_redone_checkpoint_whose_file_fails_stops_the_run_and_keeps_its_entry(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    kept = {step: _group(store, step) for step in (0, 10, 20, 30)}
    state = torch.load(folder / "epoch_20.pt", weights_only=True)
    torch.save({name: torch.full_like(value, float("nan")) for name, value in state.items()}, folder / "epoch_20.pt")
    failed = analyze(run, store, "--redo", "10,20", sources=(str(folder),))
    assert failed.code == 1 and "Traceback" not in failed.stderr
    assert "(--redo 20: the store keeps its earlier numbers for step 20; the run stops here)" in failed.stderr
    # step 10 (the same file) was redone to the same numbers; 20 and 30 are as they were
    for step, group in kept.items():
        assert _same(_group(store, step), group), step

"""Resuming stores that hold, or would hold, one checkpoint file at two steps (session 19, tiny MLPs on the CPU).

- A store written before fdl recorded file signatures, resumed with step options that read a stored file
  at a step past every stored step (another --step-offset or --step-regex): the file was analysed again and
  stored a second time, exit 0, where a store with signatures refuses it (session 18). Now hashed and
  refused alike.
- A store already damaged so by an fdl before session 18 (a file stored at two steps): every resume was
  refused (whichever step options), with a fix that could not work, and only --overwrite, which computes
  everything again, went on. The error now names the steps and `--drop` of the steps this run does not
  read, which removes them (and compares the checkpoints after them with the one before again), keeping
  every other checkpoint as stored.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.store import StoreReader
from tests.test_reliability_inputs import MODEL, SMALL, _weights, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_reliability_inputs import fdl as _fdl

torch.set_num_threads(1)


def fdl(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """`fdl ARGV` in this process, as the console script runs it: (exit status, stdout, stderr)."""
    return _fdl(capsys, *(str(arg) for arg in argv))


def _run(tmp_path: Path, steps: tuple[int, ...] = (0, 10, 20)) -> tuple[Path, Path]:
    """A folder of step_<step>.safetensors (distinct weights) and a probe."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate(steps):
        save_file(_weights(index), str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return folder, probe


def _steps(store: Path) -> list[int]:
    with StoreReader(store) as reader:
        return [record["step"] for record in reader.records()]


def _drop_signatures(store: Path) -> None:
    """Make `store` a store written before fdl recorded file signatures."""
    with h5py.File(store, "r+") as handle:
        for group in handle["checkpoints"].values():
            del group.attrs["file_signature"]


# ------------------------------------------------------------- a store without signatures, a file read later


def _restarted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """run1: steps 0, 10, 20; run2: the job restarted after step 20 with its step count reset, its step_10 and
    step_20 the steps 30 and 40 (`--step-offset run2=20`); and the probe."""
    run1, probe = _run(tmp_path)
    run2 = tmp_path / "run2"
    run2.mkdir()
    for index, step in enumerate((10, 20)):
        save_file(_weights(3 + index), str(run2 / f"step_{step}.safetensors"))
    return run1, run2, probe


@pytest.mark.parametrize("signatures", [True, False], ids=["signatures", "no-signatures"])
def test_a_stored_file_read_past_every_stored_step_is_refused_with_or_without_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signatures: bool
) -> None:
    """Stored with `--step-offset run2=20` (steps 0 .. 40), resumed with run2=100: run2's files, unchanged,
    at steps 110 and 120, after every stored step. Refused when the store recorded signatures (session 18);
    a store written before them analysed both again and stored each at a second step, exit 0."""
    run1, run2, probe = _restarted(tmp_path)
    out = tmp_path / "run.h5"
    common = [run1, run2, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20")
    assert status == 0, err
    assert _steps(out) == [0, 10, 20, 30, 40]
    if not signatures:
        _drop_signatures(out)
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=100")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"error: {run2 / 'step_10.safetensors'}, which {out} analysed as step 30, is step 110 in this run "
            "(from its name + 100, --step-offset) (and 1 more file so)") in flat, flat
    assert out.read_bytes() == before


def test_a_file_rewritten_past_every_stored_step_is_no_refusal_without_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file training goes on rewriting (latest.safetensors, its step in its metadata) holds a later step
    now: with its content changed it is a new checkpoint, not a stored one read at another step, in a store
    without signatures as in one with."""
    folder, probe = _run(tmp_path, steps=(0,))
    latest = folder / "latest.safetensors"
    save_file(_weights(1), str(latest), metadata={"step": "10"})
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, err
    assert _steps(out) == [0, 10]
    _drop_signatures(out)
    save_file(_weights(2), str(latest), metadata={"step": "20"})  # training saved step 20 over it
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, " ".join(err.split())
    assert _steps(out) == [0, 10, 20]


def test_a_stored_file_read_at_another_stored_step_without_signatures_names_both_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored with `--step-offset run2=20`, signatures not recorded, resumed with run2=10: run2/step_20
    (stored as 40) is read at 30, a stored step, and run2/step_10 (stored as 30) at 20. Said "holds other
    files' numbers ... restore the files", which sent the user to files that are as they were; with
    signatures it is the refusal that names both steps and the step options (session 18)."""
    run1, run2, probe = _restarted(tmp_path)
    out = tmp_path / "run.h5"
    common = [run1, run2, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20")
    assert status == 0, err
    _drop_signatures(out)
    before = out.read_bytes()
    (run1 / "step_20.safetensors").unlink()  # run2/step_10 read at 20 is then the only file of step 20
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=10")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"error: {run2 / 'step_10.safetensors'}, which {out} analysed as step 30, is step 20 in this run "
            "(from its name + 10, --step-offset) (and 1 more file so)") in flat, flat
    assert "other --step-offset / --step-regex options than the run that made the store" in flat
    assert "holds other files' numbers" not in flat
    assert out.read_bytes() == before


# ------------------------------------------------------------------ a store holding one file at two steps


def _records(store: Path) -> list[dict[str, Any]]:
    with StoreReader(store) as reader:
        return reader.records()


def _arrays(store: Path) -> dict[int, Any]:
    with StoreReader(store) as reader:
        return {step: reader.arrays(step) for step in reader.steps()}


def _stored_again(store: Path, source: Path, steps: tuple[int, ...], **replaced: Any) -> None:
    """Write `source`'s checkpoints of `steps` into `store`, as a resume by an fdl before session 18 did when
    its step options read stored files at other steps (the entries that fdl computed: those of a run with
    those options, whose earlier steps are the same files)."""
    from dataclasses import replace

    from fdl_cli.store import StoreWriter

    with StoreReader(store) as reader:
        provenance, probes = reader.provenance, list(reader.probes().values())
    with StoreReader(source) as reader:
        entries = [reader.entry(step) for step in steps]
    with StoreWriter(store, provenance=provenance, probes=probes, background=False) as writer:
        for entry in entries:
            writer.add(replace(entry, **replaced.get(str(entry.step), {})))


def _damaged(root: Path) -> tuple[list[Any], Path, Path, Path, Path]:
    """The store of --step-offset run2=20 (steps 0 .. 40), into which an fdl before session 18 resumed with
    run2=100 stored run2's files again at 110 and 120; and the stores of each offset alone (all in `root`)."""
    from tests.test_analyze import fdl as in_process

    run1, run2, probe = _restarted(root)
    common: list[Any] = [run1, run2, "--model", MODEL, "--probe", probe, *SMALL]
    twenty, hundred, out = root / "twenty.h5", root / "hundred.h5", root / "run.h5"
    for store, offset in ((twenty, 20), (hundred, 100), (out, 20)):
        done = in_process("analyze", *common, "-o", store, "--step-offset", f"{run2}={offset}")
        assert done.code == 0 and "Traceback" not in done.stderr, done.stderr
    _stored_again(out, hundred, (110, 120))
    assert _steps(out) == [0, 10, 20, 30, 40, 110, 120]
    return common, run2, out, twenty, hundred


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], tuple[list[Any], Path, Path, Path, Path]]:
    """`damaged(tmp_path)`: `_damaged`'s runs and stores, made once for the module: its two run folders and probe,
    which the tests that use them only read, stay where they were made; its three stores (the damaged one, run.h5,
    and those of each offset) are copied into `tmp_path`, each test changing its own."""
    made: list[tuple[list[Any], Path, Path, Path, Path]] = []

    def copy(tmp_path: Path) -> tuple[list[Any], Path, Path, Path, Path]:
        if not made:
            made.append(_damaged(tmp_path_factory.mktemp("damaged")))
        common, run2, *stores = made[0]
        out, twenty, hundred = (shutil.copyfile(store, tmp_path / store.name) for store in stores)
        return common, run2, out, twenty, hundred

    return copy


def test_a_store_holding_files_at_two_steps_names_them_and_drop_mends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """Every resume of such a store was refused ("the store would hold the same checkpoint at two steps ...
    give the options that read the steps as the store has them"), whichever the options: only --overwrite
    went on. The error names both steps of each file and `--drop` of those this run does not read, which
    leaves the store of the options given, every other checkpoint as it was."""
    common, run2, out, twenty, _ = damaged(tmp_path)
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"error: {out} holds the same checkpoint file at two steps: {run2 / 'step_10.safetensors'} at steps 30 "
            f"and 110; {run2 / 'step_20.safetensors'} at steps 40 and 120") in flat, flat
    assert "run the same command with --drop 110,120: it removes those steps" in flat
    assert "got: this run reads them at steps 30, 40; the store holds them at steps 110, 120 as well" in flat
    assert "would hold the same checkpoint at two steps" not in flat
    assert out.read_bytes() == before

    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "110,120")
    flat = " ".join(err.split())
    assert status == 0, flat
    assert "dropped steps 110, 120" in flat and "2 dropped (--drop 110,120)" in flat and "5 already in the store" in flat
    assert _records(out) == _records(twenty)
    assert _arrays(out) == _arrays(twenty)
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20")
    assert status == 0 and "5 already in the store" in err, err


def test_readers_warn_of_a_file_stored_at_two_steps_until_it_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """Only `fdl analyze` told: `fdl report`, `classify`, `compare` and `export` showed steps 110 and 120 (copies of 30
    and 40) as checkpoints of their own, in silence. Each now warns once, naming the files and their steps and
    the command that names the steps to --drop; the mended store reads without it."""
    common, run2, out, twenty, _ = damaged(tmp_path)
    said = (f"the store holds the same checkpoint file at two steps: {run2 / 'step_10.safetensors'} at steps 30, 110; "
            f"{run2 / 'step_20.safetensors'} at steps 40, 120 (stored a second time by a resume with "
            "other --step-offset / --step-regex options, which fdl now refuses)")
    for argv in (("report", out), ("classify", out), ("compare", out, twenty), ("report", out, "--format", "json"),
                 ("export", out, "--what", "eigenvalues", "--format", "csv")):
        status, stdout, err = fdl(capsys, *argv)
        flat = " ".join(err.split())
        assert status == 0, flat
        assert flat.count(said) == 1, (argv, flat)
        assert f"and --out {out}: it names the steps to remove with --drop" in flat
        assert "two steps" not in stdout  # machine output stays clean
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "110,120")
    assert status == 0, err
    status, _, err = fdl(capsys, "report", out)
    assert status == 0 and "two steps" not in err, err


def test_drop_of_one_step_is_said_in_the_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One file stored again (at 110): the note read "dropped step 110 (each a second copy ...)"."""
    run1, run2, probe = _restarted(tmp_path)
    common: list[Any] = [run1, run2, "--model", MODEL, "--probe", probe, *SMALL]
    hundred, out = tmp_path / "hundred.h5", tmp_path / "run.h5"
    for store, offset in ((hundred, 100), (out, 20)):
        status, _, err = fdl(capsys, "analyze", *common, "-o", store, "--step-offset", f"{run2}={offset}")
        assert status == 0, err
    _stored_again(out, hundred, (110,))
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "110")
    flat = " ".join(err.split())
    assert status == 0, flat
    assert "dropped step 110 (a second copy of the file stored at another step)" in flat, flat
    assert _steps(out) == [0, 10, 20, 30, 40]


def test_drop_keeps_the_steps_the_run_reads_whichever_options_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """The same damaged store resumed with run2=100: the error names --drop 30,40, which leaves the store of
    run2=100 (the steps 110 and 120 were compared with step 20, as that run compares them)."""
    common, run2, out, _, hundred = damaged(tmp_path)
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=100")
    flat = " ".join(err.split())
    assert status == 1 and "run the same command with --drop 30,40" in flat, flat
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=100", "--drop", "30,40")
    assert status == 0, err
    assert _records(out) == _records(hundred)


def test_drop_refuses_what_would_lose_a_checkpoint_and_leaves_the_store_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """--drop of a step whose file the store holds nowhere else (or of every copy), of a step not stored, of a
    step this run reads (analysed again at once), with --overwrite, or a malformed list: refused, the store
    byte for byte as it was."""
    common, run2, out, _, _ = damaged(tmp_path)
    before = out.read_bytes()
    base = [*common, "-o", out, "--step-offset", f"{run2}=20"]
    for drop, message in (
        ("10", f"--drop 10: {out} would hold {common[0] / 'step_10.safetensors'} (step 10) at no step any more"),
        ("30,110", f"--drop 30,110: {out} would hold {run2 / 'step_10.safetensors'} (step 30) at no step any more"),
        ("99,110", f"--drop 99,110: {out} holds no checkpoint at step 99"),
        ("30", f"--drop 30: this run reads {run2 / 'step_10.safetensors'} as step 30"),
    ):
        status, _, err = fdl(capsys, "analyze", *base, "--drop", drop)
        flat = " ".join(err.split())
        assert status == 1 and f"error: {message}" in flat, flat
        assert out.read_bytes() == before
    status, _, err = fdl(capsys, "analyze", *base, "--drop", "110", "--overwrite")
    assert status == 1 and "--drop 110 and --overwrite together" in err, err
    status, _, err = fdl(capsys, "analyze", *base, "--drop", "1a")
    assert status == 2, err
    assert out.read_bytes() == before


def _read_by_regex_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[Any], Path, Path, Path]:
    """A store of step_0 .. step_30 (run.h5), resumed by an fdl before session 18 with a --step-regex that read
    step_10 as step 1 (and so on): it stored steps 1, 2, 3, and step 10, after them, was compared with step 3
    (the file of step 30: the successor refresh); the analyse options, the folder, the store and the store of
    the files read by their names (names.h5)."""
    folder, probe = _run(tmp_path, steps=(0, 10, 20, 30))
    common: list[Any] = [folder, "--model", MODEL, "--probe", probe, *SMALL]
    regex = ["--step-regex", r"step_(\d+?)0?\.safetensors"]
    names, read, out = tmp_path / "names.h5", tmp_path / "regex.h5", tmp_path / "run.h5"
    for store, options in ((names, []), (read, regex), (out, [])):
        status, _, err = fdl(capsys, "analyze", *common, "-o", store, *options)
        assert status == 0, err
    assert _steps(read) == [0, 1, 2, 3]
    # step 10 compared with step 3 (step_30's file), as the old resume refreshed it: a run of 0, 3, 10
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, source in (("step_0", "step_0"), ("step_3", "step_30"), ("step_10", "step_10")):
        (mixed / f"{name}.safetensors").write_bytes((folder / f"{source}.safetensors").read_bytes())
    status, _, err = fdl(capsys, "analyze", mixed, "--model", MODEL, "--probe", probe, *SMALL, "-o", tmp_path / "m.h5")
    assert status == 0, err
    _stored_again(out, read, (1, 2, 3))
    _stored_again(out, tmp_path / "m.h5", (10,), **{"10": {"path": str(folder / "step_10.safetensors")}})
    with StoreReader(out) as reader:
        assert [r["prev_step"] for r in reader.records()] == [None, 0, 1, 2, 3, 10, 20]
    return common, folder, out, names


def test_drop_compares_the_checkpoint_after_a_dropped_step_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store of `_read_by_regex_too`: --drop 1,2,3 compares step 10 with step 0 again: the store of the
    files read by their names."""
    common, folder, out, names = _read_by_regex_too(tmp_path, capsys)
    status, _, err = fdl(capsys, "analyze", *common, "-o", out)
    flat = " ".join(err.split())
    assert status == 1 and "run the same command with --drop 1,2,3" in flat, flat
    before = out.read_bytes()
    (folder / "step_10.safetensors").rename(tmp_path / "away.safetensors")  # its comparison cannot be taken again
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3")
    flat = " ".join(err.split())
    assert status == 1 and ("error: --drop 1,2,3: the stored step 10 is compared with a dropped step (cka_prev, "
                            "overlap_prev), and is to be compared with step 0 instead, but the file of step 10 is "
                            "not among this run's checkpoints") in flat, flat
    assert out.read_bytes() == before
    (tmp_path / "away.safetensors").rename(folder / "step_10.safetensors")
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3")
    flat = " ".join(err.split())
    assert status == 0, flat
    assert "1 stored checkpoint compared again with the one kept before (step 10 with 0)" in flat, flat
    assert _records(out) == _records(names)


def test_drop_given_in_part_names_every_step_to_drop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    common, run2, out, _, _ = damaged(tmp_path)
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "110")
    flat = " ".join(err.split())
    assert status == 1 and f"{run2 / 'step_20.safetensors'} at steps 40 and 120" in flat, flat
    assert "run the same command with --drop 110,120" in flat
    assert out.read_bytes() == before


def test_store_writer_drop_removes_steps_in_one_commit_with_the_entries_given(tmp_path: Path) -> None:
    """`StoreWriter.drop`: the groups and trajectory rows go, in the commit that stores the entries given; a
    step not stored is a ValueError, and nothing is written."""
    from dataclasses import replace

    from fdl_cli.store import StoreWriter

    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    assert fdl_quiet(folder, probe, out) == 0
    with StoreReader(out) as reader:
        provenance, probes, entry = reader.provenance, list(reader.probes().values()), reader.entry(20)
    changed = replace(entry, series=tuple(replace(item, scalars={**item.scalars, "prev_step": None, "cka_prev": None,
                                                                  "overlap_prev": None}) for item in entry.series))
    before = out.read_bytes()
    with StoreWriter(out, provenance=provenance, probes=probes, background=False) as writer:
        with pytest.raises(ValueError, match=r"steps \[5\] are not stored"):
            writer.drop([5])
        with pytest.raises(ValueError, match="given as entries too"):
            writer.drop([20], changed)
    assert out.read_bytes() == before
    with StoreWriter(out, provenance=provenance, probes=probes, background=False) as writer:
        assert writer.drop([10], changed) == [changed]
        assert sorted(writer.completed()) == [0, 20]
    with StoreReader(out) as reader:
        assert not reader.warnings
        assert [(r["step"], r["prev_step"]) for r in reader.records()] == [(0, None), (20, None)]
    with h5py.File(out, "r") as handle:
        assert sorted(handle["checkpoints"]) == ["step_0", "step_20"]


def fdl_quiet(folder: Path, probe: Path, out: Path) -> int:
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze

    summary = run_analyze(AnalyzeOptions(sources=(str(folder),), model_spec=MODEL, probe_specs=(str(probe),), out=out,
                                         top_k=4, anchor_size=16, batch_size=16))
    return 1 if summary.failed else 0

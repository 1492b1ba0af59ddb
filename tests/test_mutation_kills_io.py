"""Outputs of the non-numeric logic (discovery, loading, the per-checkpoint orchestration, the store,
reports, compare and export) checked against independent values where a mutation-testing pass found
that a plausible defect went unnoticed by the rest of the suite. Each test names the mutant it kills.

Independent values: hand-built stores and checkpoints whose expected output is known by
construction (steps chosen, eigenfunctions made orthonormal by hand, the README's and docs/store.md's
stated rules).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import CheckpointRef, discover_checkpoints, load_checkpoint
from fdl_cli.fields import MEASURE_FIELDS
from fdl_cli.report import Run, Series, compare_runs
from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreReader, StoreWriter
from tests.cli_run import tiny_model_beside
from tests.test_analyze import fdl
from tests.test_io_fixes import MODEL
from tests.tiny_models import mlp

MLP_KEYS = sorted(mlp().state_dict())
PROBE = ProbeInfo("probe", "c" * 64, 6, "classes", 3)


def _probe(path: Path, n: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(size=(n, 4)).astype(np.float32), y=rng.integers(0, 3, n))
    return path


def _series(layer: str = "a", *, seed: int = 0, eigenfunctions: np.ndarray | None = None,
            **scalars: Any) -> SeriesEntry:
    rng = np.random.default_rng(seed)
    values = {name: None for name in MEASURE_FIELDS}
    values.update({"n_outputs": 3, "d_lr": float(rng.random())}, **scalars)
    functions = rng.normal(size=(6, 3)) if eigenfunctions is None else eigenfunctions
    return SeriesEntry(
        probe="probe", layer=layer, scalars=values, eigenvalues=np.arange(5.0, 0.0, -1.0),
        eigenvectors=rng.normal(size=(4, functions.shape[1])), eigenfunctions=functions, utility=np.linspace(0, 1, 5),
    )


def _entry(step: int, *series: SeriesEntry) -> CheckpointEntry:
    return CheckpointEntry(step=step, path=f"/run/step_{step}.pt", sha256=f"{step:064x}", series=series or (_series(),))


def _store(path: Path, entries: list[CheckpointEntry], layers: tuple[str, ...] = ("a",)) -> Path:
    provenance = {"probes": {"probe": "c" * 64}, "layers": list(layers)}
    with StoreWriter(path, provenance=provenance, probes=[PROBE]) as writer:
        for entry in entries:
            writer.add(entry)
    return path


# ------------------------------------------------------------------------------------ discovery


def test_step_regex_finds_its_group_anywhere_in_the_name(tmp_path: Path) -> None:
    """README: ordered by the first group of --step-regex (a search, as `re.search`: 'step_(\\d+)' finds
    the step inside a longer name). The last integer of these names is the epoch, not the step.
    Kills `step_regex.match(path.name)` (anchored at the start: every file skipped, no checkpoints)."""
    for step, epoch in ((300, 1), (0, 0), (1200, 2)):
        torch.save(mlp(seed=epoch).state_dict(), tmp_path / f"run_step_{step}_ep{epoch}.pt")
    found = discover_checkpoints([tmp_path], step_regex=r"step_(\d+)").checkpoints
    assert [(ref.step, ref.path.name, ref.step_source) for ref in found] == [
        (0, "run_step_0_ep0.pt", "step_regex"),
        (300, "run_step_300_ep1.pt", "step_regex"),
        (1200, "run_step_1200_ep2.pt", "step_regex"),
    ]


def test_every_picks_among_the_steps_given(tmp_path: Path) -> None:
    """--help: --every with --steps picks among those steps (every N-th of them, the first and the last
    kept). Steps 0,20,30,40 every 2: 0, 30 and the last, 40. Kills --every applied to all checkpoints
    before --steps (which gives 0, 20, 40)."""
    for step in (0, 10, 20, 30, 40):
        torch.save(mlp(seed=step).state_dict(), tmp_path / f"step_{step}.pt")
    found = discover_checkpoints([tmp_path], steps=[0, 20, 30, 40], every=2).checkpoints
    assert [ref.step for ref in found] == [0, 30, 40]


# -------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("prefix", ["_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_compile_and_ddp_prefixes_are_stripped_in_any_nesting(tmp_path: Path, prefix: str) -> None:
    """README: DDP's `module.` and torch.compile's `_orig_mod.` prefixes are stripped (torch.compile of a
    DDP model saves `_orig_mod.module.`). Kills one pass over the prefixes instead of repeating until
    none is left, and `_orig_mod.` left out of the stripped prefixes."""
    state = mlp(seed=3).state_dict()
    torch.save({"state_dict": {prefix + key: value for key, value in state.items()}}, tmp_path / "step_5.pt")
    loaded = load_checkpoint(CheckpointRef(path=tmp_path / "step_5.pt", step=5, step_source="name", kind="state_dict"))
    assert loaded.state_dict is not None
    assert sorted(loaded.state_dict) == MLP_KEYS
    assert all(torch.equal(loaded.state_dict[key], state[key]) for key in MLP_KEYS)


def test_weights_prefix_under_a_compiled_module(tmp_path: Path) -> None:
    """--weights ema on a compiled LightningModule's keys (`_orig_mod.model.*`, `_orig_mod.ema.*`): the
    EMA copy's tensors, under the model's own names. Kills `_orig_mod.` left out of the stripped
    prefixes (no key then starts with `ema.`: an error)."""
    model, ema = mlp(seed=1).state_dict(), mlp(seed=2).state_dict()
    keys = {f"_orig_mod.model.{k}": v for k, v in model.items()} | {f"_orig_mod.ema.{k}": v for k, v in ema.items()}
    torch.save({"state_dict": keys}, tmp_path / "step_5.ckpt")
    ref = CheckpointRef(path=tmp_path / "step_5.ckpt", step=5, step_source="name", kind="state_dict")
    loaded = load_checkpoint(ref, weights="ema")
    assert loaded.state_dict is not None and sorted(loaded.state_dict) == MLP_KEYS
    assert all(torch.equal(loaded.state_dict[key], ema[key]) for key in MLP_KEYS)


# ------------------------------------------------------------------------------ the orchestration


def test_a_refreshed_successor_whose_file_was_replaced_with_the_same_size_and_time_is_refused(tmp_path: Path) -> None:
    """docs/store.md: a file replaced by one of the same size whose time was set back is still hashed
    when fdl reads it "... or to refresh it". Step 20 (stored, compared with 0) is replaced so that its
    signature is unchanged; analysing step 10 would refresh 20 against 10 with the new file's anchors
    and the old file's stored eigenfunctions. Kills the sha256 check of `_refresh_successors` skipped."""
    folder = tmp_path / "run"
    folder.mkdir()
    for seed, step in enumerate((0, 10, 20)):
        save_file(mlp(seed=seed).state_dict(), str(folder / f"step_{step}.safetensors"))
    probe = _probe(tmp_path / "probe.npz")
    store = tmp_path / "s.h5"
    common = ("analyze", folder, "--model", MODEL, "--probe", probe, "--out", store, "--json")
    first = fdl(*common, "--steps", "0,20")
    assert first.code == 0, first.stderr
    with StoreReader(store) as reader:
        before = {record["step"]: record for record in reader.records()}
    assert before[20]["prev_step"] == 0
    target = folder / "step_20.safetensors"
    stat = os.stat(target)
    save_file(mlp(seed=7).state_dict(), str(target))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(target).st_size, os.stat(target).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = fdl(*common, "--steps", "10")
    assert second.code == 1, second.stderr
    assert "changed since it was analysed" in second.stderr
    with StoreReader(store) as reader:
        after = {record["step"]: record for record in reader.records()}
    assert after[20] == before[20]  # still the numbers of the file that was analysed


def test_probe_and_layer_given_on_the_command_line_win_over_the_manifest(tmp_path: Path) -> None:
    """README: an option given on the command line wins over fdl.toml. The manifest names probe.npz
    (40 samples) and layer 0; the command line gives another probe (30 samples) and layer 2:input.
    Kills the manifest's probe, or its layer, taking precedence."""
    folder = tmp_path / "run"
    folder.mkdir()
    for seed, step in enumerate((0, 10)):
        torch.save(mlp(seed=seed).state_dict(), folder / f"step_{step}.pt")
    _probe(folder / "probe.npz", n=40)
    (folder / "fdl.toml").write_text(f'model = "{tiny_model_beside(folder)}"\nprobe = "probe.npz"\nlayer = "0"\n')
    other = _probe(tmp_path / "other.npz", n=30, seed=1)
    done = fdl("analyze", folder, "--out", tmp_path / "s.h5", "--json", "--probe", other, "--layer", "2:input")
    assert done.code == 0, done.stderr
    assert [record["n_probe"] for record in done.records] == [30, 30]
    with StoreReader(tmp_path / "s.h5") as reader:
        assert reader.series() == [("probe", "2:input")]
        assert reader.provenance["layers"] == ["2:input"]


# ------------------------------------------------------------------------------------ the store


def test_a_step_added_twice_before_a_commit_stores_the_last(tmp_path: Path) -> None:
    """StoreWriter: adding a step already stored (or buffered) replaces it. Two adds of step 5 in one
    commit: the store holds the second, its records and its arrays. Kills the first of a step winning
    in the commit plan."""
    old = _entry(5, _series(seed=1, d_lr=0.25))
    new = CheckpointEntry(5, "/run/new_5.pt", "e" * 64, (_series(seed=2, d_lr=0.75),))
    with StoreWriter(tmp_path / "s.h5", provenance={}, probes=[PROBE], min_interval=3600, background=False) as writer:
        assert writer.add(old) == [] and writer.add(new) == []  # throttled: both go in the flush's commit
        writer.flush()
    with StoreReader(tmp_path / "s.h5") as reader:
        [record] = reader.records()
        assert (record["path"], record["sha256"], record["d_lr"]) == ("/run/new_5.pt", "e" * 64, 0.75)
        assert reader.arrays(5) == new.series[0]


def test_a_group_renamed_by_hand_is_read_from_the_groups_not_the_trajectories(tmp_path: Path) -> None:
    """docs/store.md: trajectories that disagree with the complete checkpoint groups are not used (the
    records are rebuilt from the groups). A group moved to another step by hand leaves as many
    groups as trajectory rows. Kills the consistency check comparing counts instead of steps."""
    store = _store(tmp_path / "s.h5", [_entry(step, _series(seed=step, d_lr=step / 100)) for step in (0, 10, 20)])
    with h5py.File(store, "r+") as handle:
        handle.move("checkpoints/step_20", "checkpoints/step_30")
        handle["checkpoints/step_30"].attrs["step"] = np.int64(30)
    with StoreReader(store) as reader:
        assert reader.steps() == [0, 10, 30]
        assert [(r["step"], r["d_lr"]) for r in reader.records()] == [(0, 0.0), (10, 0.1), (30, 0.2)]
        assert any("inconsistent" in warning for warning in reader.warnings)


def test_a_group_that_lost_one_of_several_series_is_redone(tmp_path: Path) -> None:
    """docs/store.md / StoreReader: a complete group lacking one of the store's series is damaged,
    skipped by the readers and redone by the next `fdl analyze`. With two layers and one deleted,
    step 10 is neither read nor counted as done. Kills only groups with no series at all being dropped
    (the step then counts as stored forever while the deleted series lacks it)."""
    entries = [_entry(step, _series("a", seed=step), _series("b", seed=step + 1)) for step in (0, 10, 20)]
    store = _store(tmp_path / "s.h5", entries, layers=("a", "b"))
    with h5py.File(store, "r+") as handle:
        del handle["checkpoints/step_10/probe/b"]
    with StoreReader(store) as reader:
        assert reader.steps(layer="a") == [0, 20] and reader.steps(layer="b") == [0, 20]
    provenance = {"probes": {"probe": "c" * 64}, "layers": ["a", "b"]}
    with StoreWriter(store, provenance=provenance, probes=[PROBE]) as writer:
        assert sorted(writer.completed()) == [0, 20]


# ----------------------------------------------------------------------------- compare / export


def _run(path: str, d_lr: list[float], steps: list[int]) -> Run:
    records = [{"step": step, "d_lr": value} for step, value in zip(steps, d_lr, strict=True)]
    return Run(path=Path(path), provenance={}, probes={}, series=[Series("probe", "a", records)], several=False)


def test_a_run_richer_at_every_matched_step_is_said_so() -> None:
    """B has the lower D_LR at each of the three matched steps: "at every matched step", not "from
    step 10 on". Kills the walk back over equal signs stopping one step short of the first."""
    comparison = compare_runs(_run("a.h5", [0.9, 0.8, 0.7], [0, 10, 20]), _run("b.h5", [0.5, 0.4, 0.3], [0, 10, 20]),
                              overlap=False)
    assert comparison.verdict.startswith("Run B is richer than run A (lower D_LR) at every matched step (")
    later = compare_runs(_run("a.h5", [0.1, 0.8, 0.7], [0, 10, 20]), _run("b.h5", [0.5, 0.4, 0.3], [0, 10, 20]),
                         overlap=False)
    assert later.verdict.startswith("Run B is richer than run A (lower D_LR) from step 10 on (")


def test_eigenfunction_csv_rows_are_step_point_k_value(tmp_path: Path) -> None:
    """`fdl export --what eigenfunctions --format csv`: columns step, point, k (from 1), value, with
    value = e_k(x_point) as stored. Kills point and k written in each other's columns."""
    functions = np.arange(18, dtype=np.float32).reshape(6, 3) / 8  # exact in float32; value = (3·point + k-1)/8
    store = _store(tmp_path / "s.h5", [_entry(7, _series(eigenfunctions=functions))])
    done = fdl("export", store, "--what", "eigenfunctions", "--format", "csv")
    assert done.code == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["step", "point", "k", "value"]
    assert len(rows) == 1 + 6 * 3
    for step, point, k, value in rows[1:]:
        assert int(step) == 7
        assert float(value) == (3 * int(point) + int(k) - 1) / 8


def test_cross_run_overlap_is_of_the_top_c_eigenfunctions(tmp_path: Path) -> None:
    """`fdl compare`: the overlap A·B is O_C of the top-C (C = n_outputs = 3) eigenfunctions (SPEC §5).
    A's top 3 span e1, e2, e3; B's e1, e2, e4: O_3 = 2/3 (O_1 would be 1). Each side's record is its own
    run's, and the difference is B − A. Kills k = 1, and the JSON "a" record taken from run B."""
    eye = np.eye(6)
    a = eye[:, [0, 1, 2, 3]]
    b = eye[:, [0, 1, 3, 2]]
    store_a = _store(tmp_path / "a.h5", [_entry(0, _series(eigenfunctions=a, d_lr=0.5))])
    store_b = _store(tmp_path / "b.h5", [_entry(0, _series(eigenfunctions=b, d_lr=0.125))])
    done = fdl("compare", store_a, store_b, "--format", "json")
    assert done.code == 0, done.stderr
    [step] = json.loads(done.stdout)["steps"]
    assert step["overlap"] == pytest.approx(2 / 3, abs=1e-12)
    assert (step["a"]["d_lr"], step["b"]["d_lr"], step["differences"]["d_lr"]) == (0.5, 0.125, -0.375)


# --------------------------------------------------------- a model whose own child is named `module`

WRAPPED_MODEL = '''
from torch import nn
from tests.tiny_models import mlp


class Wrapped(nn.Module):
    """A model whose only child is an attribute named `module` (its state_dict keys start with module.)."""

    def __init__(self):
        super().__init__()
        self.module = mlp()

    def forward(self, x):
        return self.module(x)


def build():
    return Wrapped()
'''


@pytest.mark.parametrize("saved_as", ["", "module."])
def test_a_model_whose_child_is_named_module_loads_its_own_state_dict(tmp_path: Path, saved_as: str) -> None:
    """Loading strips `module.` (DDP's) from a checkpoint's keys; a model whose own names begin with it
    (its child is the attribute `module`) was then refused: "4 missing key(s): module.0.weight, ...;
    4 unexpected key(s): 0.weight, ...", though the file is exactly its state_dict (or DDP's, with
    module.module.). Its records equal those of the same weights in the plain MLP (param_norm too,
    taken from the file's float32 values under --dtype bfloat16)."""
    (tmp_path / "wrapped.py").write_text(WRAPPED_MODEL)
    wrapped, plain = tmp_path / "wrapped", tmp_path / "plain"
    wrapped.mkdir()
    plain.mkdir()
    for seed, step in enumerate((0, 10)):
        state = mlp(seed=seed).state_dict()
        torch.save({saved_as + "module." + key: value for key, value in state.items()}, wrapped / f"step_{step}.pt")
        torch.save(state, plain / f"step_{step}.pt")
    probe = _probe(tmp_path / "probe.npz")
    common = ("--probe", probe, "--json", "--dtype", "bfloat16")
    mine = fdl("analyze", wrapped, "--model", f"{tmp_path / 'wrapped.py'}:build", "--layer", "module.2:input",
               "--out", tmp_path / "w.h5", *common)
    assert mine.code == 0, mine.stderr
    theirs = fdl("analyze", plain, "--model", MODEL, "--layer", "2:input", "--out", tmp_path / "p.h5", *common)
    assert theirs.code == 0, theirs.stderr
    assert len(mine.records) == 2
    for got, want in zip(mine.records, theirs.records, strict=True):
        assert {k: v for k, v in got.items() if k not in ("path", "sha256")} == {
            k: v for k, v in want.items() if k not in ("path", "sha256")}

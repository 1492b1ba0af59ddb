"""Damaged stores and probe files: every reader gives a result or an FdlError, never another exception.

* targeted damage (truncation, flipped bytes, a missing group, a newer schema) through every
  reading command of the CLI: exit 0 (reading what is intact, with warnings) or 1, never a traceback;
* hypothesis fuzzing (bounded: fixed example counts, no deadline) of byte flips and truncations of a
  valid store and of valid probe files (.npz, .pt, .safetensors, .h5).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

from fdl_cli import report as rep
from fdl_cli.cli import main
from fdl_cli.errors import FdlError
from fdl_cli.probes import load_probe
from fdl_cli.store import StoreReader

try:
    from tests.tiny_models import mlp
except ImportError:  # tests/ is not a package
    from tiny_models import mlp  # type: ignore[no-redef]

torch.set_num_threads(1)
MODEL = f"{Path(__file__).resolve().parent / 'tiny_models.py'}:mlp"
FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _fdl(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.fixture(scope="module")
def valid_store(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "ckpts").mkdir()
    for step in range(4):
        save_file({k: v.contiguous() for k, v in mlp(seed=step).state_dict().items()},
                  str(folder / "ckpts" / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(16, 4)).astype(np.float32), y=rng.integers(0, 3, 16))
    store = folder / "run.h5"
    assert _fdl("analyze", str(folder / "ckpts"), "--model", MODEL, "--probe", str(folder / "probe.npz"),
                "--out", str(store), "--top-k", "3", "--anchor-size", "8") == 0
    return store.read_bytes()


def _read_everything(path: Path) -> None:
    """What the reading commands do: open, list records, read every stored array, load the run."""
    with StoreReader(path) as reader:
        reader.records()
        for probe, layer in reader.series():
            for step in reader.steps(probe=probe, layer=layer):
                reader.arrays(step, probe=probe, layer=layer)
    rep.load_run(path).records()


def _damaged(tmp_path: Path, data: bytes, flips: list[tuple[int, int]], cut: int | None) -> Path:
    damaged = bytearray(data if cut is None else data[:cut])
    for position, mask in flips:
        if damaged:
            damaged[position % len(damaged)] ^= mask
    path = tmp_path / "damaged.h5"
    path.write_bytes(bytes(damaged))
    return path


# ------------------------------------------------------------------------ targeted damage, via the CLI


def _damage_cases(tmp_path: Path, data: bytes) -> dict[str, Path]:
    cases: dict[str, Path] = {}

    def copy(name: str) -> Path:
        path = tmp_path / f"{name}.h5"
        path.write_bytes(data)
        cases[name] = path
        return path

    (tmp_path / "truncated_half.h5").write_bytes(data[: len(data) // 2])
    cases["truncated_half"] = tmp_path / "truncated_half.h5"
    (tmp_path / "truncated_tail.h5").write_bytes(data[:-100])
    cases["truncated_tail"] = tmp_path / "truncated_tail.h5"
    (tmp_path / "empty.h5").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.h5"
    flipped = bytearray(data)
    for position in range(len(data) // 3, len(data), len(data) // 7):
        flipped[position] ^= 0xFF
    (tmp_path / "flipped.h5").write_bytes(bytes(flipped))
    cases["flipped"] = tmp_path / "flipped.h5"
    with h5py.File(copy("no_trajectories"), "r+") as handle:
        del handle["trajectories"]
    with h5py.File(copy("no_step_group"), "r+") as handle:
        del handle["checkpoints/step_2"]
    with h5py.File(copy("no_checkpoints"), "r+") as handle:
        del handle["checkpoints"]
    with h5py.File(copy("no_probes"), "r+") as handle:
        del handle["probes"]
    with h5py.File(copy("incomplete_group"), "r+") as handle:
        del handle["checkpoints/step_1"].attrs["complete"]
    with h5py.File(copy("missing_array"), "r+") as handle:
        group = handle["checkpoints/step_3"]
        leaf = group[next(iter(group))]
        del leaf[next(iter(leaf))]["eigenvalues"]
    with h5py.File(copy("newer_schema"), "r+") as handle:
        handle.attrs["schema_version"] = np.int64(99)
    with h5py.File(copy("not_fdl"), "r+") as handle:
        handle.attrs["format"] = "something-else"
    with h5py.File(copy("bad_provenance"), "r+") as handle:
        handle.attrs["provenance"] = "{not json"
    return cases


def test_reading_commands_on_damaged_stores_never_trace_back(
    tmp_path: Path, valid_store: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _damage_cases(tmp_path, valid_store)
    other = tmp_path / "intact.h5"
    other.write_bytes(valid_store)
    commands: list[list[str]] = [
        ["report", "{s}", "--format", "json"],
        ["report", "{s}"],
        ["classify", "{s}", "--json"],
        ["compare", "{s}", str(other), "--format", "json"],
        ["export", "{s}", "--what", "trajectories", "--format", "json"],
        ["export", "{s}", "--what", "eigenvalues", "--format", "csv"],
    ]
    outcomes: dict[str, set[int]] = {}
    for name, path in cases.items():
        for command in commands:
            argv = [part.replace("{s}", str(path)) for part in command]
            capsys.readouterr()
            try:
                status = _fdl(*argv)
            except BaseException as exc:  # noqa: BLE001 - any escape is the failure under test
                pytest.fail(f"{name}: fdl {' '.join(argv)} raised {type(exc).__name__}: {exc}")
            err = capsys.readouterr().err
            assert "Traceback" not in err, (name, argv, err)
            assert status in (0, 1, 3), (name, argv, status, err)
            if status == 1:
                assert "error:" in err, (name, argv, err)
            outcomes.setdefault(name, set()).add(status)
    for name in ("truncated_half", "empty", "newer_schema", "not_fdl"):
        assert outcomes[name] == {1}, name
    capsys.readouterr()
    assert _fdl("report", str(cases["newer_schema"])) == 1
    assert "upgrade fdl" in capsys.readouterr().err
    assert _fdl("report", str(cases["no_step_group"]), "--format", "json") == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and '"step": 2' not in captured.out and '"step": 3' in captured.out


# ------------------------------------------------------------------------------------------- fuzzing


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=0, max_size=6),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)),
)
def test_fuzzed_stores_read_or_raise_fdl_errors(
    tmp_path_factory: pytest.TempPathFactory, valid_store: bytes, flips: list[tuple[int, int]], cut: int | None
) -> None:
    if not flips and cut is None:
        flips = [(len(valid_store) // 2, 0xFF)]
    path = _damaged(tmp_path_factory.mktemp("store"), valid_store, flips, cut)
    try:
        _read_everything(path)
    except FdlError:
        pass


def _probe_files(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    np.savez(folder / "p.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, folder / "p.pt")
    save_numpy({"x": x, "y": y}, str(folder / "p.safetensors"))
    with h5py.File(folder / "p.h5", "w") as handle:
        handle["x"], handle["y"] = x, y
    return {suffix: (folder / f"p{suffix}").read_bytes() for suffix in (".npz", ".pt", ".safetensors", ".h5")}


@pytest.fixture(scope="module")
def valid_probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _probe_files(tmp_path_factory.mktemp("probes"))


@FUZZ
@given(
    suffix=st.sampled_from([".npz", ".pt", ".safetensors", ".h5"]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=0, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4_000)),
)
def test_fuzzed_probe_files_load_or_raise_fdl_errors(
    tmp_path_factory: pytest.TempPathFactory, valid_probes: dict[str, bytes], suffix: str,
    flips: list[tuple[int, int]], cut: int | None,
) -> None:
    data = valid_probes[suffix]
    damaged = bytearray(data if cut is None else data[:cut])
    for position, mask in flips or [(len(damaged) // 2, 0x5A)]:
        if damaged:
            damaged[position % len(damaged)] ^= mask
    path = tmp_path_factory.mktemp("probe") / f"probe{suffix}"
    path.write_bytes(bytes(damaged))
    try:
        probe = load_probe(path)
    except FdlError:
        return
    assert probe.x.shape[0] >= 1
    if probe.x.dtype.kind == "f":
        assert np.isfinite(probe.x).all()

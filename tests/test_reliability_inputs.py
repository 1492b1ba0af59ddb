"""Hostile and broken inputs, end to end through the console entry point (`fdl_cli.cli.main`).

Hostile pickles in every loading path, corrupt checkpoints beside good ones (reported, skipped,
exit 1; nothing already stored changes), bad probes (a clear error before any work), and
numerically hostile features (dead ReLUs, 1e30 activations, float16 overflow: no NaN in the store).
The commands run in-process (same entry point as the `fdl` script) to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.cli import main
from fdl_cli.fields import MEASURE_FIELDS
from fdl_cli.store import StoreReader

try:
    from tests.tiny_models import mlp
except ImportError:  # tests/ is not a package
    from tiny_models import mlp  # type: ignore[no-redef]

torch.set_num_threads(1)
MODEL = f"{Path(__file__).resolve().parent / 'tiny_models.py'}:mlp"
SMALL = ["--top-k", "4", "--anchor-size", "16", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


def fdl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `fdl ARGV` as the console script does; returns (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(argv))
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


def _weights(seed: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in mlp(seed=seed, **kwargs).state_dict().items()}


def _probe(path: Path, n: int = 24, **arrays: Any) -> Path:
    rng = np.random.default_rng(1)
    contents = {"x": rng.normal(size=(n, 4)).astype(np.float32), "y": rng.integers(0, 3, n)}
    contents.update(arrays)
    np.savez(path, **{k: v for k, v in contents.items() if v is not None})
    return path


def _records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def _group_bytes(store: Path) -> dict[str, str]:
    """sha256 of every stored checkpoint group: its attributes and every dataset's bytes."""
    digests: dict[str, str] = {}
    with h5py.File(store, "r") as handle:
        for name, group in handle["checkpoints"].items():
            digest = hashlib.sha256()

            def visit(path: str, node: Any, digest: Any = digest) -> None:
                digest.update(path.encode())
                for key in sorted(node.attrs):
                    digest.update(f"{key}={node.attrs[key]!r}".encode())
                if isinstance(node, h5py.Dataset):
                    digest.update(np.ascontiguousarray(node[()]).tobytes())

            visit("", group)
            group.visititems(visit)
            digests[name] = digest.hexdigest()
    return digests


# ------------------------------------------------------------------------------------ hostile pickles


class Payload:
    """Runs `touch MARKER` when unpickled by anything that runs pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickles_are_refused_by_analyze_in_every_loading_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    evil = Payload(marker)
    probe = _probe(tmp_path / "probe.npz")
    (tmp_path / "scan").mkdir()
    torch.save({**_weights(0), "x": evil}, tmp_path / "scan" / "model_1.pt")  # type: ignore[dict-item]
    torch.save({"model_state_dict": _weights(0), "step": 3, "cb": evil}, tmp_path / "loop_3.pt")
    torch.save({"state_dict": _weights(0), "extra": [evil]}, tmp_path / "pytorch_4.bin")
    torch.save({"state_dict": _weights(0), "hparams": evil}, tmp_path / "light_5.ckpt")
    (tmp_path / "checkpoint-6").mkdir()
    torch.save({**_weights(0), "x": evil}, tmp_path / "checkpoint-6" / "pytorch_model.bin")  # type: ignore[dict-item]
    torch.save({**_weights(0), "x": evil}, tmp_path / "legacy_7.pt", _use_new_zipfile_serialization=False)  # type: ignore[dict-item]
    sources = {
        "folder scan": tmp_path / "scan",
        "explicit training-loop dict": tmp_path / "loop_3.pt",
        ".bin": tmp_path / "pytorch_4.bin",
        ".ckpt": tmp_path / "light_5.ckpt",
        "HF sub-folder": tmp_path / "checkpoint-6",
        "legacy pickle": tmp_path / "legacy_7.pt",
    }
    for label, source in sources.items():
        store = tmp_path / f"{label.replace(' ', '_')}.h5"
        status, out, err = fdl(capsys, "analyze", str(source), "--model", MODEL, "--probe", str(probe),
                               "--out", str(store), "--json", *SMALL)
        assert status == 1, label
        assert "could run code" in err and "--trust-pickle" in err and "system" in err, (label, err)
        assert out == "" and not store.exists(), label
        assert not marker.exists(), f"{label}: the payload ran"
    # paths on stdin (`-`), and `fdl inspect`: same refusal
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tmp_path / 'pytorch_4.bin'}\n"))
    status, out, err = fdl(capsys, "analyze", "-", "--model", MODEL, "--probe", str(probe),
                           "--out", str(tmp_path / "stdin.h5"), "--json", *SMALL)
    assert status == 1 and "--trust-pickle" in err and out == "" and not marker.exists()
    status, _, err = fdl(capsys, "inspect", str(tmp_path / "loop_3.pt"), "--model", MODEL)
    assert status == 1 and "--trust-pickle" in err and not marker.exists()


def test_trust_pickle_is_the_only_way_to_load_a_whole_module_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = _probe(tmp_path / "probe.npz")
    torch.save(mlp(seed=3), tmp_path / "whole_3.pt")
    status, out, err = fdl(capsys, "analyze", str(tmp_path / "whole_3.pt"), "--probe", str(probe),
                           "--out", str(tmp_path / "refused.h5"), *SMALL)
    assert status == 1 and "--trust-pickle" in err and not (tmp_path / "refused.h5").exists()
    status, out, err = fdl(capsys, "analyze", str(tmp_path / "whole_3.pt"), "--probe", str(probe),
                           "--out", str(tmp_path / "trusted.h5"), "--trust-pickle", "--json", *SMALL)
    assert status == 0, err
    warning = [line for line in err.splitlines() if "--trust-pickle" in line]
    assert warning and "warning" in warning[0] and "runs any code" in " ".join(err.split())
    assert [r["step"] for r in _records(out)] == [3]


# ---------------------------------------------------------------------------------- corrupt inputs


def _corrupt_folder(folder: Path) -> dict[str, str]:
    """Good checkpoints at steps 0-2, one bad file per kind at steps 3-8; returns name -> expected reason."""
    folder.mkdir()
    for step in range(3):
        save_file(_weights(step), str(folder / f"step_{step}.safetensors"))
    whole = (folder / "step_2.safetensors").read_bytes()
    (folder / "step_3.safetensors").write_bytes(whole[: len(whole) // 2])
    (folder / "step_4.pt").write_bytes(np.random.default_rng(4).bytes(300))
    (folder / "step_5.pt").write_bytes(b"")
    buffer = io.BytesIO()
    torch.save(_weights(6), buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(folder / "step_6.pt", "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            dst.writestr(item, payload[: len(payload) // 2] if "/data/" in item.filename else payload)
    nan = _weights(7)
    nan["0.weight"][1, 2] = float("nan")
    nan["2.bias"][0] = float("inf")
    save_file(nan, str(folder / "step_7.safetensors"))
    save_file(_weights(8, n_in=5), str(folder / "step_8.safetensors"))
    return {
        "step_3.safetensors": "truncated",
        "step_4.pt": "not a valid zip archive or pickle",
        "step_5.pt": "empty",
        "step_6.pt": "step_6.pt",
        "step_7.safetensors": "NaN or Inf",
        "step_8.safetensors": "do not fit",
    }


def test_corrupt_checkpoints_are_reported_skipped_and_leave_the_store_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ckpts"
    expected = _corrupt_folder(folder)
    probe = _probe(tmp_path / "probe.npz")
    store = tmp_path / "run.h5"
    common = ["--model", MODEL, "--probe", str(probe), "--out", str(store), "--json", *SMALL]
    status, out, err = fdl(capsys, "analyze", *(str(folder / f"step_{s}.safetensors") for s in (0, 1)), *common)
    assert status == 0 and [r["step"] for r in _records(out)] == [0, 1], err
    before = _group_bytes(store)
    # --strict stops at the first bad file, before any work; the store is untouched
    status, out, err = fdl(capsys, "analyze", str(folder), *common, "--strict")
    assert status == 1 and out == "" and "--strict" in err
    assert _group_bytes(store) == before
    # default: every bad file reported with its path and reason, the good one analysed, exit 1
    status, out, err = fdl(capsys, "analyze", str(folder), *common)
    assert status == 1
    assert [r["step"] for r in _records(out)] == [2]
    failed = [line.strip() for line in err.splitlines() if line.strip().startswith("failed:")]
    assert len(failed) == len(expected), err
    flat = " ".join(err.split())
    for name, reason in expected.items():
        assert any(name in line for line in failed), (name, err)
        assert reason in flat, (name, reason, err)
    after = _group_bytes(store)
    assert {k: after[k] for k in before} == before, "a stored checkpoint group changed"
    with StoreReader(store) as reader:
        assert reader.steps() == [0, 1, 2] and not reader.warnings


# ------------------------------------------------------------------------------------- bad probes


def _bad_probes(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    inf_x = x.copy()
    inf_x[5, 0] = np.inf
    cases: dict[str, tuple[Path, str]] = {
        "nan_x": (_probe(tmp_path / "nan_x.npz", x=nan_x), "NaN or Inf"),
        "inf_x": (_probe(tmp_path / "inf_x.npz", x=inf_x), "NaN or Inf"),
        "nan_y": (_probe(tmp_path / "nan_y.npz", y=np.where(np.arange(24) == 2, np.nan, 0.5)[:, None]
                         .repeat(3, axis=1)), "NaN or Inf"),
        "wide_x": (_probe(tmp_path / "wide_x.npz", x=rng.normal(size=(24, 5)).astype(np.float32)), "does not fit"),
        "image_x": (_probe(tmp_path / "image_x.npz", x=rng.normal(size=(24, 1, 2, 2)).astype(np.float32)),
                    "does not fit"),
        "text_x": (_probe(tmp_path / "text_x.npz", x=np.array(["a"] * 24)), "dtype"),
        "complex_x": (_probe(tmp_path / "complex_x.npz", x=x.astype(np.complex64)), "dtype"),
        "empty": (_probe(tmp_path / "empty.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64)), "empty"),
        "labels_high": (_probe(tmp_path / "labels_high.npz", y=np.full(24, 3)), "class label 3"),
        "labels_negative": (_probe(tmp_path / "labels_negative.npz", y=np.full(24, -1)), "negative"),
        "targets_width": (_probe(tmp_path / "targets_width.npz", y=rng.normal(size=(24, 2))), "regression target"),
        "lengths": (_probe(tmp_path / "lengths.npz", y=rng.integers(0, 3, 23)), "same first dimension"),
        "no_x": (_probe(tmp_path / "no_x.npz", x=None, z=x), "no inputs"),
    }
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    cases["garbage"] = (tmp_path / "garbage.npz", "cannot read the probe")
    return cases


def test_bad_probes_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in range(2):
        save_file(_weights(step), str(folder / f"step_{step}.safetensors"))
    good = _probe(tmp_path / "good.npz")
    store = tmp_path / "run.h5"
    status, _, err = fdl(capsys, "analyze", str(folder), "--model", MODEL, "--probe", str(good), "--out",
                         str(store), *SMALL)
    assert status == 0, err
    before = store.read_bytes()
    for label, (probe, reason) in _bad_probes(tmp_path).items():
        for out_store in (store, tmp_path / f"new_{label}.h5"):
            status, out, err = fdl(capsys, "analyze", str(folder), "--model", MODEL, "--probe", str(probe),
                                   "--out", str(out_store), "--json", *SMALL)
            assert status == 1 and out == "", (label, err)
            assert reason in " ".join(err.split()) and str(probe.name) in err, (label, reason, err)
            assert "analysed" not in err, (label, "work started")
        assert store.read_bytes() == before, label
        assert not (tmp_path / f"new_{label}.h5").exists(), label


# ------------------------------------------------------------------------------ hostile numerics


def _assert_no_nan(store: Path) -> None:
    """No NaN anywhere but in trajectory columns of fields that do not apply (null)."""
    with h5py.File(store, "r") as handle:
        def visit(path: str, node: Any) -> None:
            for key, value in node.attrs.items():
                if isinstance(value, float | np.floating):
                    assert math.isfinite(value), f"{path}@{key} = {value}"
            if isinstance(node, h5py.Dataset) and node.dtype.kind == "f" and not path.startswith("trajectories/"):
                assert np.isfinite(node[()]).all(), path

        handle.visititems(visit)
    with StoreReader(store) as reader:
        for record in reader.records():
            for name in MEASURE_FIELDS:
                value = record[name]
                assert value is None or not isinstance(value, float) or math.isfinite(value), (name, value)
        for step in reader.steps():
            entry = reader.arrays(step)
            for name in ("eigenvalues", "eigenvectors", "eigenfunctions", "utility", "quality"):
                array = getattr(entry, name)
                assert array is None or np.isfinite(array).all(), (step, name)


def test_numerically_hostile_features_give_defined_results_or_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    probe = _probe(tmp_path / "probe.npz")
    save_file(_weights(0), str(folder / "step_0.safetensors"))
    dead = _weights(1)
    dead["0.weight"].zero_()
    dead["0.bias"].fill_(-1.0)  # every hidden ReLU is 0 on every input
    save_file(dead, str(folder / "step_1.safetensors"))
    huge = _weights(2)
    huge["0.weight"].mul_(1e30)  # hidden activations ~1e30; float32 holds them, their squares need float64
    huge["2.weight"].mul_(1e-30)
    save_file(huge, str(folder / "step_2.safetensors"))
    store = tmp_path / "run.h5"
    status, out, err = fdl(capsys, "analyze", str(folder), "--model", MODEL, "--probe", str(probe),
                           "--out", str(store), "--json", *SMALL)
    assert status == 0, err
    records = {r["step"]: r for r in _records(out)}
    assert records[1]["rank"] == 0 and records[1]["n_features"] == 8
    assert records[2]["rank"] >= 1
    _assert_no_nan(store)
    # float16: activations past 65504 overflow to inf -> a clear per-checkpoint error, nothing stored
    big = _weights(3)
    big["0.weight"].mul_(1e5)
    (folder / "step_1.safetensors").unlink()
    (folder / "step_2.safetensors").unlink()
    save_file(big, str(folder / "step_3.safetensors"))
    store16 = tmp_path / "half.h5"
    status, out, err = fdl(capsys, "analyze", str(folder), "--model", MODEL, "--probe", str(probe),
                           "--out", str(store16), "--json", "--dtype", "float16", *SMALL)
    assert status == 1, err
    assert [r["step"] for r in _records(out)] == [0]
    assert "step_3.safetensors" in err and "non-finite" in " ".join(err.split())
    _assert_no_nan(store16)
    with StoreReader(store16) as reader:
        assert reader.steps() == [0]


def test_hostile_file_names_do_not_break_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    save_file(_weights(0), str(folder / "step_0.safetensors"))
    (folder / "bad[bold]_[red]1.pt").write_bytes(pickle.dumps([1, 2]) + b"\x00garbage")
    status, _, err = fdl(capsys, "analyze", str(folder), "--model", MODEL, "--probe",
                         str(_probe(tmp_path / "probe.npz")), "--out", str(tmp_path / "s.h5"), *SMALL)
    assert status == 1 and "bad[bold]_[red]1.pt" in err

"""Probe loading in every format and alias, and every bad probe rejected with a clear ProbeError."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe, parse_probe_spec, validate_probe

torch.set_num_threads(1)


def _xy() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    return x, y


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **arrays)  # type: ignore[arg-type]
    elif path.suffix == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    elif path.suffix == ".safetensors":
        save_file(arrays, str(path))
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle[key] = value
    return path


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors", ".h5", ".hdf5"])
@pytest.mark.parametrize(
    ("x_key", "y_key"), [("x", "y"), ("inputs", "targets"), ("data", "labels"), ("images", "labels"), ("X", "Y")]
)
def test_each_format_and_alias(tmp_path: Path, suffix: str, x_key: str, y_key: str) -> None:
    x, y = _xy()
    path = _write(tmp_path / f"p{suffix}", {x_key: x, y_key: y.astype(np.int32)})
    probe = load_probe(path, name="train")
    np.testing.assert_array_equal(probe.x, x)
    assert probe.x.dtype == np.float32
    np.testing.assert_array_equal(probe.y, y)
    assert probe.y is not None and probe.y.dtype == np.int64
    assert (probe.name, probe.task, probe.n_classes, probe.n) == ("train", "classes", 3, 6)
    assert probe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pt_tuple_and_regression_targets(tmp_path: Path) -> None:
    x = torch.linspace(-1, 1, 5)
    torch.save((x, x.double() ** 2), tmp_path / "p.pt")
    probe = load_probe(tmp_path / "p.pt")
    assert probe.x.shape == (5, 1) and probe.task == "regression" and probe.n_classes is None
    assert probe.y is not None and probe.y.shape == (5, 1) and probe.y.dtype == np.float64
    np.testing.assert_allclose(probe.y[:, 0], (x.double() ** 2).numpy())


def test_tokens_kept_as_int64_and_no_targets(tmp_path: Path) -> None:
    tokens = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    probe = load_probe(_write(tmp_path / "t.npz", {"x": tokens}))
    assert probe.x.dtype == np.int64 and probe.x.shape == (2, 3)
    assert probe.y is None and probe.task is None and probe.n_classes is None


def test_one_hot_integer_targets_become_labels(tmp_path: Path) -> None:
    x, y = _xy()
    probe = load_probe(_write(tmp_path / "p.npz", {"x": x, "y": np.eye(4, dtype=np.int64)[y]}))
    np.testing.assert_array_equal(probe.y, y)


def test_positional_npz(tmp_path: Path) -> None:
    x, y = _xy()
    np.savez(tmp_path / "p.npz", x, y)
    probe = load_probe(tmp_path / "p.npz")
    np.testing.assert_array_equal(probe.y, y)


def test_parse_probe_spec(tmp_path: Path) -> None:
    assert parse_probe_spec("a.npz") == ("probe", Path("a.npz"))
    assert parse_probe_spec("test=b.npz") == ("test", Path("b.npz"))
    assert parse_probe_spec("/abs/c.npz") == ("probe", Path("/abs/c.npz"))
    odd = tmp_path / "lr=0.1.npz"
    odd.write_bytes(b"")
    assert parse_probe_spec(str(odd)) == ("probe", odd)
    with pytest.raises(ProbeError):
        parse_probe_spec("train=")


def test_validate_probe(tmp_path: Path) -> None:
    x, y = _xy()
    probe = load_probe(_write(tmp_path / "p.npz", {"x": x, "y": y}))
    validate_probe(probe, n_outputs=3)
    with pytest.raises(ProbeError, match="class label 2 but the model has 2 outputs"):
        validate_probe(probe, n_outputs=2)
    regression = load_probe(_write(tmp_path / "r.npz", {"x": x, "y": np.ones((6, 2))}))
    validate_probe(regression, n_outputs=2)
    with pytest.raises(ProbeError, match="2 regression target"):
        validate_probe(regression, n_outputs=3)


def _bad(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    x, y = _xy()
    nan_x = x.copy()
    nan_x[2, 1] = np.nan
    inf_y = np.ones(6)
    inf_y[4] = np.inf
    (tmp_path / "p.csv").write_text("1,2\n")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    return {
        "missing": (tmp_path / "nope.npz", "not found"),
        "format": (tmp_path / "p.csv", "unknown format"),
        "corrupt": (tmp_path / "junk.npz", "cannot read"),
        "no x": (_write(tmp_path / "k.npz", {"features": x, "y": y}), "keys: features, y"),
        "nan x": (_write(tmp_path / "nx.npz", {"x": nan_x}), r"'x' holds NaN or Inf \(first at index \(2, 1\)\)"),
        "inf y": (_write(tmp_path / "iy.npz", {"x": x, "y": inf_y}), "'y' holds NaN or Inf"),
        "empty": (_write(tmp_path / "e.npz", {"x": np.zeros((0, 2))}), "empty"),
        "lengths": (_write(tmp_path / "l.npz", {"x": x, "y": y[:4]}), "x has 6 samples"),
        "negative": (_write(tmp_path / "n.npz", {"x": x, "y": y - 1}), "negative class label"),
        "3-d y": (_write(tmp_path / "d.npz", {"x": x, "y": np.zeros((6, 2, 2))}), r"shape \(6, 2, 2\)"),
        "not one-hot": (_write(tmp_path / "o.npz", {"x": x, "y": np.ones((6, 3), dtype=np.int64)}), "one-hot"),
        "strings": (_write(tmp_path / "s.npz", {"x": np.array(["a", "b"])}), "dtype"),
    }


def test_each_bad_probe_is_a_probe_error_naming_the_file(tmp_path: Path) -> None:
    for label, (path, expected) in _bad(tmp_path).items():
        with pytest.raises(ProbeError, match=expected) as err:
            load_probe(path)
        assert path.name in str(err.value), label
        assert "fix:" in str(err.value), label


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, fdl_cli.probes; print('torch' in sys.modules, 'h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_probe_name_that_is_no_identifier_is_a_clear_error(tmp_path: Path) -> None:
    """`--probe my-probe=p.npz` ended in a traceback from the store (probe names name its groups and
    columns: letters, digits and '_'); a file whose name holds '=' is still a path."""
    with pytest.raises(ProbeError, match="may hold ASCII letters, digits and '_' only") as raised:
        parse_probe_spec("my-probe=p.npz")
    assert "--probe my_probe=p.npz" in raised.value.message
    # names outside _NAME's characters are names too, refused as such (they were taken for a file of the
    # whole text, "probe file ünï=p.npz not found"); a folder's '=' keeps a path a path
    for name, fixed in (("ünï", "_n_"), ("my probe", "my_probe"), ("a:b", "a_b"), ("1st", "_1st")):
        with pytest.raises(ProbeError, match="may hold ASCII letters") as raised:
            parse_probe_spec(f"{name}=p.npz")
        assert f"--probe {fixed}=p.npz" in raised.value.message
    assert parse_probe_spec("runs/lr=0.1/probe.npz") == ("probe", Path("runs/lr=0.1/probe.npz"))
    odd = tmp_path / "a.b=c.npz"
    odd.write_bytes(b"")
    assert parse_probe_spec(str(odd)) == ("probe", odd)


def test_labels_per_position_are_named_as_such(tmp_path: Path) -> None:
    """A language model's probe keeps a label per token ((n, L), -100 where ignored): it was refused as
    "not one-hot" with no word of what fdl takes for a sequence."""
    tokens = np.random.default_rng(0).integers(0, 50, size=(6, 5))
    labels = np.concatenate([tokens[:, 1:], np.full((6, 1), -100)], axis=1)
    path = tmp_path / "lm.npz"
    np.savez(path, x=tokens, y=labels)
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    message = raised.value.message
    assert "is not one-hot" in message and f"values -100 .. {labels.max()}: a label per position" in message
    assert "one per sequence, e.g. its class or y[:, -1]" in message


def test_a_column_of_class_labels_is_not_named_labels_per_position(tmp_path: Path) -> None:
    """Integer labels saved as a column ((n, 1), y.reshape(-1, 1)) were said to be "a label per position
    (a language model's next tokens)"; they are one label per sample, in a column."""
    path = tmp_path / "column.npz"
    np.savez(path, x=np.zeros((6, 3), np.float32), y=np.array([0, 2, 1, 2, 0, 1]).reshape(-1, 1))
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    message = raised.value.message
    assert "one label per sample, in a column" in message and "per position" not in message
    assert "y = y[:, 0]" in message

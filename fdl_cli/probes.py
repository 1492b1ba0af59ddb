"""Load and validate probe sets (inputs ``x`` and optional targets ``y``) before any analysis runs.

Formats: ``.npz``, ``.pt``/``.pth`` (``torch.load(weights_only=True)``), ``.safetensors``,
``.h5``/``.hdf5``. torch, safetensors and h5py are imported only when such a file is read, so
importing this module stays light.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fdl_cli.errors import ProbeError

X_KEYS = ("x", "inputs", "data")
Y_KEYS = ("y", "targets", "labels")
PROBE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors", ".h5", ".hdf5")
DEFAULT_NAME = "probe"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Probe:
    """A probe set, validated on load.

    Attributes:
        name: ``"probe"``, or NAME of ``--probe NAME=path``.
        x: (n, ...) float32/float64 inputs, or int64 token ids. 1-D float inputs become (n, 1).
        y: (n,) int64 class labels, or (n, C) float64 regression targets; ``None`` without targets.
        task: ``"classes"``, ``"regression"`` or ``None`` (no targets).
        n_classes: max label + 1 for classes, else ``None``.
        sha256: hex digest of the file's bytes.
    """

    name: str
    path: Path
    x: np.ndarray
    y: np.ndarray | None
    task: str | None
    n_classes: int | None
    sha256: str

    @property
    def n(self) -> int:
        """Number of probe points."""
        return int(self.x.shape[0])


def parse_probe_spec(spec: str, *, base_dir: Path | None = None) -> tuple[str, Path]:
    """``"a.npz"`` -> ``("probe", a.npz)``; ``"train=a.npz"`` -> ``("train", a.npz)``.

    A relative path is taken relative to ``base_dir`` when given. A spec naming an existing file
    is a path even if it contains ``=``.
    """
    name, sep, rest = spec.partition("=")
    if sep and _NAME.match(name) and not rest.strip():
        raise ProbeError(f"--probe {spec!r} has no path after '='", fix="e.g. --probe train=a.npz")
    if sep and _NAME.match(name) and rest and not Path(spec).exists():
        path_text = rest
    else:
        name, path_text = DEFAULT_NAME, spec
    if not path_text.strip():
        raise ProbeError(f"--probe {spec!r} has no path", fix="e.g. --probe probe.npz or --probe train=a.npz")
    path = Path(path_text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return name, path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _read_pt(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ProbeError(
            f"the probe {path} holds pickled Python objects beyond tensors; fdl refused to load it",
            got=str(exc).strip().splitlines()[-1][:200],
            fix="save only tensors: torch.save({'x': x, 'y': y}, path), or use .npz/.safetensors",
        ) from None
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2:
        obj = dict(zip(("x", "y"), obj, strict=False))
    elif isinstance(obj, torch.Tensor):
        obj = {"x": obj}
    if not isinstance(obj, Mapping):
        raise ProbeError(
            f"the probe {path} holds a {type(obj).__name__}",
            got=type(obj).__name__,
            fix="save a dict {'x': ..., 'y': ...} or a tuple (x, y) of tensors",
        )
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        elif isinstance(value, np.ndarray):
            out[str(key)] = value
    return out


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def _read_h5(path: Path) -> dict[str, Any]:
    import h5py  # read-only use of a user's file; the store module owns writing HDF5

    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle if isinstance(handle[key], h5py.Dataset)}


_READERS = {
    ".npz": _read_npz,
    ".pt": _read_pt,
    ".pth": _read_pt,
    ".safetensors": _read_safetensors,
    ".h5": _read_h5,
    ".hdf5": _read_h5,
}


def _pick(arrays: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in arrays:
            return key, arrays[key]
    return None, None


def _check_finite(path: Path, key: str, values: np.ndarray) -> None:
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ProbeError(
            f"the probe {path}: '{key}' holds NaN or Inf (first at index {tuple(int(i) for i in bad)})",
            fix="clean or drop those samples before saving the probe",
        )


def _inputs(path: Path, key: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ProbeError(
            f"the probe {path}: '{key}' has dtype {x.dtype}",
            got=str(x.dtype),
            fix="x must hold numbers (float inputs or integer token ids)",
        )
    if x.ndim == 0 or x.shape[0] == 0:
        raise ProbeError(
            f"the probe {path} is empty: '{key}' has shape {x.shape}",
            fix="save at least one sample, shape (n, ...)",
        )
    if x.dtype.kind in "iu":
        return x.astype(np.int64)
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    _check_finite(path, key, x)
    return x.reshape(-1, 1) if x.ndim == 1 else x


def _targets(path: Path, key: str, y: Any, n: int) -> tuple[np.ndarray, str, int | None]:
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ProbeError(
            f"the probe {path}: '{key}' has dtype {y.dtype}",
            got=str(y.dtype),
            fix="y must hold integer class labels or float regression targets",
        )
    if y.ndim == 0 or y.shape[0] != n:
        raise ProbeError(
            f"the probe {path}: x has {n} samples but '{key}' has shape {y.shape}",
            fix="x and y need the same first dimension",
        )
    if y.ndim > 2:
        raise ProbeError(
            f"the probe {path}: '{key}' has shape {y.shape}",
            fix="y must be (n,) class labels or (n,) / (n, C) regression targets",
        )
    if y.dtype.kind in "biu":
        if y.ndim == 2:
            if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
                raise ProbeError(
                    f"the probe {path}: integer '{key}' of shape {y.shape} is not one-hot",
                    fix="give (n,) class labels, or float (n, C) regression targets",
                )
            y = y.argmax(axis=1)
        labels = y.astype(np.int64)
        if labels.min() < 0:
            first = int(np.argmax(labels < 0))
            raise ProbeError(
                f"the probe {path}: '{key}' holds a negative class label ({labels[first]} at {first})",
                fix="class labels must be 0..C-1",
            )
        return labels, "classes", int(labels.max()) + 1
    targets = y.astype(np.float64)
    _check_finite(path, key, targets)
    return (targets.reshape(-1, 1) if targets.ndim == 1 else targets), "regression", None


def load_probe(path: Path, *, name: str = DEFAULT_NAME) -> Probe:
    """Read and check a probe file: ``x`` (aliases ``inputs``, ``data``), optional ``y`` (``targets``, ``labels``).

    Integer ``y`` are class labels (a one-hot integer matrix is turned into labels); float ``y``
    are regression targets. Raises ProbeError naming the file for any problem found.
    """
    path = Path(path)
    if path.is_dir():
        raise ProbeError(
            f"probe {path} is a directory; expected a probe file",
            got="a directory",
            fix=f"pass the probe file itself, e.g. --probe {path / 'probe.npz'} ({', '.join(PROBE_SUFFIXES)})",
        )
    if not path.is_file():
        raise ProbeError(
            f"probe file {path} not found", fix="check the --probe path (or the probe in fdl.toml)"
        )
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ProbeError(
            f"probe {path}: unknown format {path.suffix!r}",
            got=path.suffix,
            fix=f"save it as one of {', '.join(PROBE_SUFFIXES)}",
        )
    try:
        arrays = reader(path)
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file
        raise ProbeError(
            f"cannot read the probe {path}",
            got=f"{type(exc).__name__}: {exc}"[:300],
            fix="the file is corrupt or not of the format its suffix says",
        ) from None
    if "x" not in arrays and set(arrays) <= {"arr_0", "arr_1"} and "arr_0" in arrays:
        arrays = {"x": arrays["arr_0"], **({"y": arrays["arr_1"]} if "arr_1" in arrays else {})}
    x_key, x = _pick(arrays, X_KEYS)
    if x_key is None:
        raise ProbeError(
            f"the probe {path} has no inputs",
            got="keys: " + (", ".join(sorted(arrays)) or "none"),
            fix=f"store the inputs under one of {', '.join(X_KEYS)}",
        )
    inputs = _inputs(path, x_key, x)
    y_key, y = _pick(arrays, Y_KEYS)
    targets, task, n_classes = (None, None, None)
    if y_key is not None:
        targets, task, n_classes = _targets(path, y_key, y, inputs.shape[0])
    return Probe(
        name=name, path=path, x=inputs, y=targets, task=task, n_classes=n_classes, sha256=_file_sha256(path)
    )


def validate_probe(probe: Probe, *, n_outputs: int) -> None:
    """Check the targets against the model's number of outputs C (labels < C, target width == C)."""
    if probe.y is None:
        return
    if probe.task == "classes" and probe.n_classes is not None and probe.n_classes > n_outputs:
        raise ProbeError(
            f"the probe {probe.path} ({probe.name}) has class label {probe.n_classes - 1} but the model has "
            f"{n_outputs} outputs",
            got=f"labels 0..{probe.n_classes - 1}",
            fix="use the probe that matches this model, or the right --model-kwargs for its output size",
        )
    if probe.task == "regression" and probe.y.shape[1] != n_outputs:
        raise ProbeError(
            f"the probe {probe.path} ({probe.name}) has {probe.y.shape[1]} regression target(s) per sample but "
            f"the model has {n_outputs} outputs",
            got=f"y shape {probe.y.shape}",
            fix="targets must be (n, C) with C the model's outputs",
        )


def probe_batches(probe: Probe, batch_size: int) -> Iterator[tuple[int, int]]:
    """Index ranges ``(start, stop)`` covering the probe in order, ``batch_size`` samples each."""
    if batch_size < 1:
        raise ProbeError(f"--batch-size must be positive, got {batch_size}", fix="e.g. --batch-size 256")
    for start in range(0, probe.n, batch_size):
        yield start, min(start + batch_size, probe.n)

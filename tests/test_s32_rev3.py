"""A review of the object-array names of an .npz probe, the Python lists of a .pt probe, and run_all.sh's arguments.

- An .npz's arrays of Python objects were named from their .npy headers only while every member was an .npy: one
  other member (a `meta.json` written into the zip) sent the message back to "or is not an .npz at all". Of more
  than four such arrays four were named as if they were all, and long names cut the message mid-name (at 300
  characters), dropping "fdl never unpickles a probe". An unread array (`names` beside x and y) was told to be saved
  as `np.asarray(x, ...)`.
- A .pt probe's targets kept as a Python list that is not one flat list of numbers or of strings (one-hot rows
  `[[0, 1], ...]`, a list of mixed items, an empty list) were left unread without a word: the run was analysed as
  one without targets.
- `examples/run_all.sh a b` ran into b, silently; `run_all.sh OUT --n-train 1200` took 1200 for OUT and gave every
  example a bare `--n-train`; an option no example takes failed in the first example's argparse.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe
from tests.test_s32_paper import _stub_run_all as _run_all

RUN_ALL = Path(__file__).resolve().parents[1] / "examples" / "run_all.sh"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _refusal(path: Path) -> str:
    with pytest.raises(ProbeError) as caught:
        load_probe(path)
    return str(caught.value)


X = _npy(np.zeros((3, 2), np.float32))
NAMES = _npy(np.array(["cat", "dog", "cat"], dtype=object))


def test_an_object_array_is_named_beside_a_member_that_is_no_npy(tmp_path: Path) -> None:
    said = _refusal(_zip(tmp_path / "p.npz", {"meta.json": b"{}", "x.npy": X, "y.npy": NAMES}))
    assert "its array 'y' holds pickled Python objects" in said
    assert "class names numbered 0..C-1" in said


def test_more_object_arrays_than_named_are_counted_and_long_names_do_not_cut_the_message(tmp_path: Path) -> None:
    members = {"x.npy": X, **{f"{'n' * 90}{i}.npy": NAMES for i in range(6)}}
    said = _refusal(_zip(tmp_path / "p.npz", members))
    got = next(line for line in said.splitlines() if "got:" in line)
    assert "(6 in all)" in got
    assert got.endswith("fdl never unpickles a probe")


def test_an_unread_object_array_is_not_told_to_be_saved_as_x(tmp_path: Path) -> None:
    said = _refusal(_zip(tmp_path / "p.npz", {"x.npy": X, "y.npy": _npy(np.arange(3)), "names.npy": NAMES}))
    assert "its array 'names' holds pickled Python objects" in said
    assert "np.asarray(x" not in said
    assert "fdl reads only the inputs and the targets" in said


@pytest.mark.parametrize(("labels", "shown"), [
    ([[0, 1], [1, 0], [0, 1], [1, 0]], None),  # one-hot rows: read as the (n, 2) array they make, labels 1, 0, ...
    ([0, "cat", 1, 2], "items of mixed types: int, str"),
    ([], "an empty list"),
    ([[0, 1], [1], [0, 1], [1, 0]], "lists of different lengths"),
])
def test_targets_kept_as_a_python_list_are_read_or_refused_never_dropped(
        tmp_path: Path, labels: list, shown: str | None) -> None:
    probe = tmp_path / "p.pt"
    torch.save({"x": torch.zeros(4, 3), "y": labels}, probe)
    if shown is None:
        loaded = load_probe(probe)
        assert loaded.y is not None and np.asarray(loaded.y).tolist() == [1, 0, 1, 0]
        return
    said = _refusal(probe)
    assert "'y' is a Python list that fdl cannot read as one array" in said
    assert shown in said
    assert "torch.tensor(y)" in said


@pytest.mark.parametrize(("args", "said"), [
    (("a", "b"), "run_all.sh: two folders given, 'a' and 'b'"),
    (("out", "--n-train", "1200"), "run_all.sh: unknown option '--n-train'"),
    (("--out", "x"), "run_all.sh: unknown option '--out'"),
])
def test_run_all_refuses_what_it_cannot_pass_on_before_running_anything(
        tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    done = _run_all(tmp_path, *args)
    assert done.returncode == 2
    assert said in done.stderr
    assert "usage: examples/run_all.sh [OUT] [--tiny]" in done.stderr
    assert not (tmp_path / "calls.log").exists()  # no example started


def test_run_all_keeps_a_folder_with_spaces_whole(tmp_path: Path) -> None:
    done = _run_all(tmp_path, "--tiny", "my runs")
    assert done.returncode == 0, done.stderr
    calls = [line for line in (tmp_path / "calls.log").read_text().splitlines() if not line.startswith("-c|")]
    assert calls[0] == f"{RUN_ALL.parent / 'rich_vs_lazy'}.py|--out|my runs/rich_vs_lazy|--tiny|"
    assert len(calls) == 4

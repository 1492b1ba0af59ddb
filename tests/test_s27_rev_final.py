"""Fresh-eyes review of session 27's merged changes: a process the user's own code starts by spawn after fdl served a
model folder (the Python API), a --trust-pickle checkpoint whose un-importable objects hide weights, and the note of a
stepless copy under --trust-pickle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests import warm

_REPO = Path(__file__).resolve().parents[1]

_SPAWNS = """\
import sys
sys.path[:0] = [{repo!r}, {site!r}]
import multiprocessing, time
from fdl_cli import checkpoints

if __name__ == "__main__":
    checkpoints.resolve_model_factory({model!r})
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    print("child exit code", child.exitcode)
"""


def test_a_spawned_child_that_cannot_import_fdl_runs_as_it_did(tmp_path: Path) -> None:
    """A script that puts fdl on its own sys.path (a source checkout, a notebook's sys.path.append), loads a model
    folder through the Python API, then starts a process of its own by spawn: the child unpickled fdl's hand-over of
    the folder's modules before multiprocessing gave it the parent's sys.path, "No module named 'fdl_cli'", and died
    (exit code 1) where it ran before fdl served model folders to spawned children."""
    (tmp_path / "model.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 3)\n")
    script = tmp_path / "spawns.py"
    script.write_text(_SPAWNS.format(repo=str(_REPO), site=str(Path(torch.__file__).parents[1]),
                                     model=f"{tmp_path / 'model.py'}:build"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # a real process: -S is an interpreter option, which a warm one (tests/warm.py) does not take
    # -S: no site-packages, so fdl's editable install is not found either, only the script's sys.path has it
    done = subprocess.run([sys.executable, "-S", str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "child exit code 0" in done.stdout, done.stderr
    assert "No module named 'fdl_cli'" not in done.stderr, done.stderr


_SAVES = """\
import sys

import torch


class Config(dict):  # a training script's own config, a dict of its class (an EasyDict not installed here)
    pass


kind = sys.argv[2]
inner = torch.ones(3, 4) if kind == "weights" else 0.1
torch.save({"model": {"w": torch.ones(3, 4)}, "config": Config(lr=inner), "step": 5}, sys.argv[1])
"""


def _saved_by_script(tmp_path: Path, kind: str) -> Path:
    """A checkpoint saved by a script run as `python train.py`: its dict-like Config is `__main__.Config`."""
    (tmp_path / "train.py").write_text(_SAVES)
    path = tmp_path / f"{kind}.pt"
    saved = warm.run([sys.executable, str(tmp_path / "train.py"), str(path), kind], timeout=120)
    assert saved.returncode == 0, saved.stderr
    return path


def test_a_dict_config_class_that_cannot_be_imported_is_read_as_a_placeholder(tmp_path: Path) -> None:
    """A training script's config of a dict class of its own (its items pickled as SETITEMS): the placeholder took no
    items, so the file failed as a class that cannot be imported, where an object config of the same script was read
    as a placeholder and the weights analysed."""
    from tests.cli_run import fdl_in_process

    path = _saved_by_script(tmp_path, "plain")
    done = fdl_in_process("inspect", "--trust-pickle", path)
    said = " ".join(done.stderr.split()) + " ".join(done.stdout.split())
    assert done.returncode == 0, said
    assert "holds objects of classes that cannot be imported here (__main__.Config;" in said, said
    assert "total: 12 values in 1 tensor" in said, said


def test_weights_among_the_items_of_a_class_that_cannot_be_imported_are_not_dropped(tmp_path: Path) -> None:
    """The same dict class holding a tensor among its items: not read as a placeholder (its tensors would be lost
    unsaid), the error says the class cannot be imported."""
    from tests.cli_run import fdl_in_process

    path = _saved_by_script(tmp_path, "weights")
    done = fdl_in_process("inspect", "--trust-pickle", path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, said
    assert f"error: cannot unpickle {path}: it holds an object whose class cannot be imported here" in said, said

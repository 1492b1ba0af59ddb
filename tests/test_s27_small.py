"""Session 27's two small gaps.

1. With HOME unwritable (a container run as another user, a cluster's read-only home) and no MPLCONFIGDIR, each
   `fdl report --plots` / `fdl compare --plots` gave matplotlib a private temporary folder, removed at exit, so
   matplotlib built its font cache again on every run (0.3 s here with 38 fonts; seconds, and matplotlib's
   "building the font cache" warning after 5 s, with thousands). fdl now keeps it in a folder of the user's own
   under the temporary folder, fdl-mpl-UID, used only when it is a real folder (no link) the user owns, that no
   one else may write; else the private folder as before.
2. `fdl inspect`'s line below the table for a module whose output has no batch dimension first said "a table of
   positions" also of a module that squeezed, flattened or averaged the batch away: it names both.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.cli_run import fdl_in_process, model_file
from tests.test_report import make_store
from tests.test_s20_out import _report, _without_matplotlib_settings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners and modes")

# ------------------------------------------------ 1. matplotlib's font cache with HOME unwritable


def _env_without_home(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose HOME cannot be written (under a file) and who set no MPLCONFIGDIR; the
    temporary folder is the test's own."""
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp").mkdir()
    return _without_matplotlib_settings(HOME=str(tmp_path / "file" / "home"), TMPDIR=str(tmp_path / "tmp"))


def _report_plots(store: Path, plots: Path, env: dict[str, str]) -> str:
    status, _, stderr = _report(store, "--format", "csv", "--plots", plots, env=env)
    assert status == 0, stderr
    return stderr


# The cache kept and found again by a second run, with HOME unwritable: the two runs of tests/test_s20_out.py's
# test_with_home_unwritable_the_report_says_nothing_of_matplotlib check it (each fdl report here is a fresh process,
# ~3 s of CPU).


@pytest.mark.parametrize("planted", ["link", "group_writable", "others"])
def test_a_cache_folder_someone_else_could_write_is_not_used(tmp_path: Path, planted: str) -> None:
    """A name in a shared /tmp anyone could have made first: a link to a folder of theirs, a folder others may
    write, or one they own. fdl uses the private folder removed at exit, as before, and writes nothing there."""
    if planted == "others" and os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    env = _env_without_home(tmp_path)
    cache = tmp_path / "tmp" / f"fdl-mpl-{os.geteuid()}"
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if planted == "link":
        cache.symlink_to(theirs)
    else:
        cache.mkdir()
        if planted == "group_writable":
            cache.chmod(0o770)
        else:
            cache.chmod(0o700)
            os.chown(cache, os.geteuid() + 4242, -1)
    store = make_store(tmp_path / "run.h5", steps=(0, 10))
    assert _report_plots(store, tmp_path / "a", env) == f"wrote 8 figure files to {tmp_path / 'a'}\n"
    assert list(theirs.iterdir()) == []
    if planted != "link":
        assert list(cache.iterdir()) == []
    assert sorted(path.name for path in (tmp_path / "tmp").iterdir()) == [cache.name]  # the private one went


# ------------------------------------------------ 2. `fdl inspect`'s "no batch dim" line

_NO_BATCH_LINE = ("no batch dim: the module's output does not begin with the sample's batch of 1 (a table shared by "
                  "every sample, such as positions, or an output that lost its batch dimension to .squeeze(), "
                  ".flatten(), .view(-1) or a mean over the batch): not a feature layer, its rows are no samples' "
                  "(analyze refuses it as --layer)")

_MODEL = """
import torch
from torch import nn

class Positions(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(12, 6))

    def forward(self, x):
        return self.table[:4]

class Lose(nn.Module):
    def forward(self, x):
        return {lose}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.{name} = {module}
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        h = x.reshape(len(x), 4, 6)
        self.{name}(h)
        return self.fc(x)

def build():
    return Net()
"""


@pytest.mark.parametrize(("name", "module", "lose", "shape"), [
    ("pos", "Positions()", "x", [4, 6]),
    ("squeeze", "Lose()", "x.squeeze()", [4, 6]),
    ("flatten", "Lose()", "x.flatten()", [24]),
    ("view", "Lose()", "x.view(-1)", [24]),
    ("pooled", "Lose()", "x.mean(0)", [4, 6]),
])
def test_inspect_says_why_a_module_has_no_batch_dimension_in_words_true_of_each_cause(
    tmp_path: Path, name: str, module: str, lose: str, shape: list[int],
) -> None:
    built = model_file(tmp_path, _MODEL.format(name=name, module=module, lose=lose))
    torch.save(built.build().state_dict(), tmp_path / "step_0.pt")
    model = f"{tmp_path}/model.py:build"
    table = fdl_in_process("inspect", tmp_path / "step_0.pt", "--model", model)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stderr.splitlines() if line.startswith(f"│ {name} "))
    assert f"{shape} (no batch dim)" in row
    assert _NO_BATCH_LINE + "\n" in table.stderr
    done = fdl_in_process("inspect", tmp_path / "step_0.pt", "--model", model, "--json")
    notes = {row["name"]: row["note"] for row in json.loads(done.stdout)["modules"]}
    assert notes == {"": None, name: "no batch dimension: not a feature layer", "fc": None}

"""Review of session 26's changes: model folders' own builtins (`_Load`), transformer layers (`padded_sequences`,
`first_input`) and extra-state digests (`_dedupe`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fdl_cli import checkpoints
from fdl_cli.checkpoints import resolve_model_factory
from tests.test_s25_note import _clean_imports  # noqa: F401 - the fixture

_LAZY = """\
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        import s26r_ext
        import torch.nn.functional as F
        return F.relu(self.fc(x))


def build():
    return Net()
"""


@pytest.mark.usefixtures("_clean_imports")
def test_a_library_installed_under_a_model_folder_is_imported_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A model folder holding a virtual environment (project/.venv, its site-packages on sys.path): the libraries
    its forward imported were taken for the folder's own modules, and the next load's import of one took it out
    of sys.modules and ran it again (torch run twice dies: 'Only a single TORCH_LIBRARY ...')."""
    site = tmp_path / "a" / ".venv" / "lib" / "site-packages"
    (site / "s26r_ext").mkdir(parents=True)
    (site / "s26r_ext" / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'a').write('x')\n")
    monkeypatch.syspath_prepend(str(site))
    nets = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "model.py").write_text(_LAZY)
        nets.append(resolve_model_factory(f"{tmp_path / name / 'model.py'}:build")())
    x = torch.ones(1, 2)
    for net in nets * 2:
        net(x)
    assert (tmp_path / "ran").read_text() == "x"
    assert "s26r_ext" not in checkpoints._OWNERS  # noqa: SLF001


@pytest.mark.usefixtures("_clean_imports")
def test_an_import_in_the_forward_pass_is_judged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `import torch.nn.functional as F` in a forward pass looked up where every module it named lives
    (os.path.realpath of each, ~250 us a call, 0.9 us before loads had their own imports): judged once now."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.py").write_text(_LAZY)
    (tmp_path / "m" / "s26r_ext.py").write_text("")
    net = resolve_model_factory(f"{tmp_path / 'm' / 'model.py'}:build")()
    net(torch.ones(1, 2))
    looked: list[object] = []
    real = checkpoints._module_homes  # noqa: SLF001
    monkeypatch.setattr(checkpoints, "_module_homes", lambda module: looked.append(module) or real(module))
    for _ in range(5):
        net(torch.ones(1, 2))
    assert looked == []


@pytest.mark.usefixtures("_clean_imports")
def test_a_name_a_folder_module_sets_in_builtins_is_found_by_the_folders_code(tmp_path: Path) -> None:
    """`import builtins; builtins.X = ...` in a folder's module, then X read by the folder's code (gettext.install's
    `_`): NameError, the folder's code had a copy of the builtins taken before."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "s26r_setup.py").write_text("import builtins\nbuiltins.S26R_WIDTH = 3\n")
    (tmp_path / "m" / "model.py").write_text(
        "import s26r_setup\nfrom torch import nn\n\n\ndef build():\n    return nn.Linear(2, S26R_WIDTH)\n")
    try:
        assert resolve_model_factory(f"{tmp_path / 'm' / 'model.py'}:build")().out_features == 3
    finally:
        vars(__import__("builtins")).pop("S26R_WIDTH", None)
    with pytest.raises(NameError, match="S26R_NONE"):  # a name set nowhere is still no name
        exec("S26R_NONE", {"__builtins__": checkpoints._Load(str(tmp_path), None).builtins})  # noqa: S102, SLF001


_WARNING_MODEL = """\
import warnings
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        warnings.warn("s26r: the model's own warning")
        return self.head(self.fc(x).relu())


def build():
    return Net()
"""


def test_a_warning_of_the_models_forward_is_not_repeated_at_every_batch(tmp_path: Path) -> None:
    """A `warnings.catch_warnings()` around each forward pass (to hide torch's nested-tensor notice) made Python
    forget the warnings it had shown: the model's own warning, shown once per checkpoint before, came again at every
    batch (40 samples in batches of 8: 14 times for 3 checkpoints, 6 in batches of 40). A process of its own each,
    as Python shows such a warning once a process."""
    import sys

    import numpy as np

    from tests import warm

    (tmp_path / "model.py").write_text(_WARNING_MODEL)
    namespace: dict = {}
    exec(compile(_WARNING_MODEL, str(tmp_path / "model.py"), "exec"), namespace)  # noqa: S102 - the test's model
    (tmp_path / "run").mkdir()
    for step in (0, 1, 2):
        torch.manual_seed(step)
        torch.save({"model": namespace["build"]().state_dict(), "step": step}, tmp_path / "run" / f"ckpt_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(40, 4)).astype("float32"), y=rng.integers(0, 3, 40))
    shown = []
    for batch in (8, 40):
        done = warm.run([sys.executable, "-m", "fdl_cli", "analyze", str(tmp_path / "run"), "--model",
                         f"{tmp_path / 'model.py'}:build", "--probe", str(tmp_path / "probe.npz"),
                         "--batch-size", str(batch), "--out", str(tmp_path / f"s{batch}.h5")], timeout=300)
        assert done.returncode == 0, done.stderr
        shown.append(done.stderr.count("s26r: the model's own warning"))
    assert shown[0] == shown[1] > 0


def test_equal_sets_in_an_extra_state_have_one_digest() -> None:
    """A set in a module's extra state was pickled in its own iteration order, which differs between equal sets
    ({8, 16} and {16, 8}) and between processes for strings (PYTHONHASHSEED): equal states, other digests."""
    from fdl_cli.checkpoints import weights_digest

    tensors = {"w": torch.ones(2)}
    assert list({8, 16}) != list({16, 8})
    assert (weights_digest(tensors, {"m._extra_state": {"ids": {8, 16}}})
            == weights_digest(tensors, {"m._extra_state": {"ids": {16, 8}}})
            != weights_digest(tensors, {"m._extra_state": {"ids": {8, 17}}}))
    assert (weights_digest(tensors, {"m._extra_state": frozenset({"a", "b"})})
            != weights_digest(tensors, {"m._extra_state": {"a", "b"}}))


def test_a_load_changes_no_warning_filter_the_model_s_forward_would_meet(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader thread's `catch_warnings()` + `simplefilter("ignore")` around each torch.load put an ignore-all
    filter in the process's filters while the main thread ran the model (its warnings hidden during a load), and
    restoring them made Python forget the warnings it had shown: how often a model's warning came depended on the
    threads' timing (6 against 4 in CI). A load now leaves the filters as they were, with no ignore-all in them."""
    import warnings

    from fdl_cli import checkpoints

    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    during: list[list[tuple]] = []
    real = torch.load

    def load(*args: object, **kwargs: object) -> object:
        during.append(list(warnings.filters))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    getattr(checkpoints, "_quiet_loads", lambda: None)()  # as at fdl's import (pytest resets filters per test)
    before = list(warnings.filters)
    assert checkpoints._load_weights_only(tmp_path / "w.pt")["w"].tolist() == [0.0, 0.0]
    assert during and during[0] == before
    assert list(warnings.filters) == before
    assert not any(action == "ignore" and message is None and module is None and category is Warning
                   for action, message, category, module, _ in during[0])

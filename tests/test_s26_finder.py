"""Model folders loaded more than once in one process (the Python API): each loaded model's lazy imports (an
`import layers` in its factory or forward pass) are served by the load that created it, under that load's rules
(an fdl.toml's model refuses compiled code, --model's takes it), never by whichever folder was loaded last."""

from __future__ import annotations

import os
import py_compile
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli.checkpoints import CompiledCodeError, resolve_model_factory
from tests import warm
from tests.test_s23_sec2 import _linear_run
from tests.test_s25_note import _clean_imports  # noqa: F401 - the fixture

_LAZY_MODEL = """\
from torch import nn


def width():
    import s26f_layers
    return s26f_layers.WIDTH


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, width())

    def forward(self, x):
        import s26f_layers
        return self.fc(x) * s26f_layers.SCALE


def build():
    return Net()
"""


def _folder(place: Path, width: int, scale: float) -> Path:
    place.mkdir(parents=True)
    (place / "model.py").write_text(_LAZY_MODEL)
    (place / "s26f_layers.py").write_text(f"WIDTH = {width}\nSCALE = {scale}\n")
    return place


@pytest.mark.usefixtures("_clean_imports")
@pytest.mark.parametrize("first_built_early", [False, True])
def test_two_folders_with_same_named_modules_each_get_their_own(tmp_path: Path, first_built_early: bool) -> None:
    """Folders a and b, each a model.py whose factory and forward import its neighbour s26f_layers lazily (widths
    3 and 5): whichever imported s26f_layers first, the other model got that module, a network of the other's
    shape, and its forward the other's scale."""
    import torch

    a = resolve_model_factory(f"{_folder(tmp_path / 'a', 3, 1.0) / 'model.py'}:build")
    if first_built_early:
        assert a().fc.out_features == 3
    b = resolve_model_factory(f"{_folder(tmp_path / 'b', 5, 2.0) / 'model.py'}:build")
    net_b = b()
    assert net_b.fc.out_features == 5
    net_a = a()
    assert net_a.fc.out_features == 3
    with torch.no_grad():
        for net in (net_a, net_b):
            net.fc.weight.fill_(1.0)
            net.fc.bias.zero_()
        x = torch.ones(1, 4)
        assert net_b(x).tolist() == [[8.0] * 5]  # forward imports lazily again: its own SCALE
        assert net_a(x).tolist() == [[4.0] * 3]
        assert net_b(x).tolist() == [[8.0] * 5]


@pytest.mark.usefixtures("_clean_imports")
def test_two_folders_with_same_named_packages_each_get_their_own_submodules(tmp_path: Path) -> None:
    """The same with a package s26f_pkg in each folder, whose submodules import each other relatively and which the
    factory imports lazily three ways (`from pkg import sub`, `from pkg.inner import W`, `import pkg.sub as s`)."""
    factories = []
    for name, width in (("a", 3), ("b", 5)):
        package = tmp_path / name / "s26f_pkg"
        (package / "sub").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "inner.py").write_text(f"W = {width}\n")
        (package / "sub" / "__init__.py").write_text("from .. import inner\nW = inner.W\n")
        (tmp_path / name / "model.py").write_text(
            "def build():\n    from s26f_pkg import sub\n    from s26f_pkg.inner import W\n"
            "    import s26f_pkg.sub as s\n    return (sub.W, W, s.W)\n")
        factories.append(resolve_model_factory(f"{tmp_path / name / 'model.py'}:build"))
    a, b = factories
    assert [a(), b(), a(), b()] == [(3, 3, 3), (5, 5, 5), (3, 3, 3), (5, 5, 5)]


def _both_ways(tmp_path: Path) -> tuple[Path, Path]:
    """A folder whose model.py imports s26f_helper lazily in its factory: a .pyc of no source (compiled code)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.py").write_text("from torch import nn\n\n\ndef build():\n    import s26f_helper\n"
                                  "    return nn.Linear(s26f_helper.IN, 3)\n")
    manifest = run / "fdl.toml"
    manifest.write_text('model = "model.py:build"\n')
    compiled(run, "s26f_helper", tmp_path / "ran")
    return run, manifest


def compiled(folder: Path, name: str, ran: Path) -> None:
    """`folder/name.pyc`, of no source beside it, whose run appends 'x' to `ran` and sets IN = 4."""
    source = ran.parent / f"{name}_source.py"
    source.write_text(f"open({str(ran)!r}, 'a').write('x')\nIN = 4\n")
    py_compile.compile(str(source), cfile=str(folder / f"{name}.pyc"), doraise=True)


@pytest.mark.usefixtures("_clean_imports")
def test_an_fdl_toml_model_loaded_before_the_users_own_still_refuses_compiled_code(tmp_path: Path) -> None:
    """The fdl.toml's model loaded first, then --model of the same model.py: the fdl.toml model's lazy import was
    served by --model's finder (inserted last), which takes compiled code, and ran the .pyc."""
    run, manifest = _both_ways(tmp_path)
    by_manifest = resolve_model_factory("model.py:build", base_dir=run, module_dir=run, named_by=manifest)
    own = resolve_model_factory(f"{run / 'model.py'}:build")
    with pytest.raises(CompiledCodeError, match=r"s26f_helper\.pyc, which Python would import as s26f_helper"):
        by_manifest()
    assert not (tmp_path / "ran").exists()
    assert own().in_features == 4  # the user's own: taken, as Python takes it
    assert (tmp_path / "ran").read_text() == "x"
    with pytest.raises(CompiledCodeError):  # even with the module imported now, for the other load
        by_manifest()
    assert (tmp_path / "ran").read_text() == "x"


@pytest.mark.usefixtures("_clean_imports")
def test_the_users_own_model_loaded_before_an_fdl_toml_one_still_takes_compiled_code(tmp_path: Path) -> None:
    """--model first, then the folder's fdl.toml naming the same model.py: the user's own model's lazy import was
    served by the fdl.toml's finder (inserted last) and refused its compiled code, which Python imports."""
    run, manifest = _both_ways(tmp_path)
    own = resolve_model_factory(f"{run / 'model.py'}:build")
    by_manifest = resolve_model_factory("model.py:build", base_dir=run, module_dir=run, named_by=manifest)
    assert own().in_features == 4
    assert (tmp_path / "ran").read_text() == "x"
    with pytest.raises(CompiledCodeError):
        by_manifest()
    assert own().in_features == 4
    assert (tmp_path / "ran").read_text() == "x"  # imported once: the module is the user's load's


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}

    def take(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset) and item.dtype.kind in "fiub":
            arrays[name] = item[()]

    with h5py.File(path, "r") as store:
        store.visititems(take)
    return arrays


_RUN_MODEL = """\
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        import s26f_layers
        self.fc = nn.Linear(4, 3)
        self.scale = s26f_layers.SCALE

    def forward(self, x):
        import s26f_layers
        return self.fc(x) * s26f_layers.SCALE


def build():
    return Net()
"""


def _scaled_run(place: Path, scale: float) -> Path:
    run = _linear_run(place, 'model = "model.py:build"\n')
    (run / "model.py").write_text(_RUN_MODEL)
    (run / "s26f_layers.py").write_text(f"SCALE = {scale}\n")
    for step in (0, 10):  # the checkpoints' keys are the Linear's: prefixed for Net.fc
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(run / f"step_{step}.safetensors"))
        save_file({f"fc.{k}": v for k, v in tensors.items()}, str(run / f"step_{step}.safetensors"))
    return run


@pytest.mark.usefixtures("_clean_imports")
def test_two_analyses_in_one_process_store_what_two_processes_store(tmp_path: Path) -> None:
    """run_analyze on run a, then on run b (same-named model.py and s26f_layers.py, forward scaling the output by
    1 and by 3): the stores equal those of two separate processes."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze

    runs = [_scaled_run(tmp_path / "a", 1.0), _scaled_run(tmp_path / "b", 3.0)]
    apart = [tmp_path / "apart_a.h5", tmp_path / "apart_b.h5"]
    script = tmp_path / "apart" / "analyze.py"  # a folder of its own: the script's folder is first on its sys.path
    script.parent.mkdir()
    script.write_text(
        "import sys; from pathlib import Path; from fdl_cli.pipeline import AnalyzeOptions, run_analyze; "
        "run_analyze(AnalyzeOptions(sources=(sys.argv[1],), out=Path(sys.argv[2]), device='cpu'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for run, out in zip(runs, apart, strict=True):
        done = warm.run([sys.executable, str(script), str(run), str(out)], env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    together = [tmp_path / "together_a.h5", tmp_path / "together_b.h5"]
    for run, out in zip(runs, together, strict=True):
        run_analyze(AnalyzeOptions(sources=(str(run),), out=out, device="cpu"))
    for alone, joint in zip(apart, together, strict=True):
        first, second = _store_arrays(alone), _store_arrays(joint)
        assert sorted(first) == sorted(second)
        assert first, "no arrays stored"
        for name in first:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    a_arrays, b_arrays = _store_arrays(apart[0]), _store_arrays(apart[1])
    assert any(not np.array_equal(a_arrays[n], b_arrays[n]) for n in a_arrays if a_arrays[n].dtype.kind == "f")


@pytest.mark.usefixtures("_clean_imports")
def test_a_folder_resolved_again_after_another_reads_its_edited_neighbour(tmp_path: Path) -> None:
    """Folder a, then folder b (same-named neighbour), then a's model file again after an edit of a's neighbour:
    the second resolution of a reads its folder anew (as a new process does), so the neighbour a's load kept from
    the first time must not be put back in place of the edited one when a's code imports it."""
    folder_a = _folder(tmp_path / "a", 3, 1.0)
    spec_a = f"{folder_a / 'model.py'}:build"
    assert resolve_model_factory(spec_a)().fc.out_features == 3
    assert resolve_model_factory(f"{_folder(tmp_path / 'b', 5, 2.0) / 'model.py'}:build")().fc.out_features == 5
    (folder_a / "s26f_layers.py").write_text("WIDTH = 7\nSCALE = 1.0\n")
    assert resolve_model_factory(spec_a)().fc.out_features == 7

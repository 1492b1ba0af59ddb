"""An audit of fdl's error messages: each bad input here got a message that missed what, where or how to fix it
(a vague fix, a Python exception's own words with nothing of the user's, a name left out though known). Each
is run as the user runs it and must say what went wrong, where, and how to mend it: exit 1, no traceback."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.cli_run import fdl_in_process
from tests.test_s26_rev_source import _clean_imports  # noqa: F401 - the fixture


def _run(folder: Path) -> Path:
    """One checkpoint of nn.Linear(4, 3), a probe of 4 inputs and 3 classes, and model.py building the Linear."""
    folder.mkdir(parents=True)
    layer = torch.nn.Linear(4, 3)
    save_file({name: tensor.detach().clone() for name, tensor in layer.state_dict().items()},
              str(folder / "step_0.safetensors"))
    generator = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=generator.standard_normal((12, 4)).astype(np.float32), y=np.arange(12) % 3)
    (folder / "model.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 3)\n")
    return folder


def _fails(*args: object) -> str:
    """What `fdl ARGS` said, on one line, after checking it failed as fdl's errors do: exit 1, no traceback."""
    done = fdl_in_process(*args)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said and "fix: " in said, said
    return said


def _analyze(run: Path, tmp_path: Path, model: str, *more: object) -> str:
    return _fails("analyze", run, "--model", model, "--probe", run / "probe.npz", "--out", tmp_path / "a.h5", *more)


@pytest.mark.usefixtures("_clean_imports")
def test_a_model_spec_with_two_colons_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model model.py:build:extra` said "cannot import model.py:build", "No module named 'model.py:build';
    'model' is not a package", and "install the package or put it on PYTHONPATH"."""
    run = _run(tmp_path / "run")
    monkeypatch.chdir(run)
    for file in ("model.py", f"{run / 'model.py'}"):
        said = _analyze(run, tmp_path, f"{file}:build:extra")
        assert f"error: --model '{file}:build:extra' holds 2 colons" in said, said
        assert f"fix: give one ':' between the file or module and its factory, e.g. --model {file}:build" in said, said
        assert "not a package" not in said and "install the package" not in said, said


@pytest.mark.usefixtures("_clean_imports")
def test_a_factory_raising_says_which_arguments_it_was_given(tmp_path: Path) -> None:
    """A factory raising inside (a value of --model-kwargs of the wrong type) had the fix "check --model and
    --model-kwargs", naming neither the factory nor the arguments it was called with."""
    run = _run(tmp_path / "run")
    (run / "model.py").write_text("from torch import nn\n\ndef build(hidden=8):\n    return nn.Linear(4, hidden)\n")
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:build", "--model-kwargs", '{"hidden": "wide"}')
    assert "got: TypeError: " in said, said
    assert ("fix: check --model and --model-kwargs: build, called with --model-kwargs '{\"hidden\": \"wide\"}', "
            "raised it; give each argument a value of the type it takes (or mend the model's code where it "
            "raised)") in said, said
    (run / "model.py").write_text("def build():\n    raise ValueError('no such width')\n")
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:build")
    assert ("fix: check --model and --model-kwargs: build, called without arguments, raised it; mend the model's "
            "code where it raised, or give it the arguments it needs as --model-kwargs") in said, said


@pytest.mark.usefixtures("_clean_imports")
@pytest.mark.parametrize(("code", "what", "fix"), [
    ("from torch import nn\n\ndef build():\n    return nn.Linear(4, 3), None\n",
     "the --model factory build returned a tuple, not a torch.nn.Module",
     "return the network alone from build (`return model`, not `return model, optimizer`)"),
    ("class Net:\n    pass\n",
     "the --model factory Net returned a Net, not a torch.nn.Module",
     "make Net a torch.nn.Module (class Net(nn.Module), calling super().__init__()), or name a factory that "
     "returns one"),
    ("def build():\n    net = 3\n",
     "the --model factory build returned None, not a torch.nn.Module",
     "make build return the network it builds (`return net`)"),
])
def test_a_factory_not_returning_a_module_says_which_and_what_to_return(tmp_path: Path, code: str, what: str,
                                                                        fix: str) -> None:
    """It said "the --model factory did not return a torch.nn.Module", got: tuple, fix: "the factory must return
    the network": not which factory, and nothing of a (model, optimizer) pair or a class not derived from
    nn.Module."""
    run = _run(tmp_path / "run")
    (run / "model.py").write_text(code)
    factory = "Net" if "class" in code else "build"
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:{factory}")
    assert f"error: {what}" in said and f"fix: {fix}" in said, said


@pytest.mark.usefixtures("_clean_imports")
def test_a_factory_name_that_is_no_callable_says_what_to_name(tmp_path: Path) -> None:
    """`build = 5`: the fix was "check the name after ':'"."""
    run = _run(tmp_path / "run")
    (run / "model.py").write_text("from torch import nn\n\nbuild = 5\n\ndef make():\n    return nn.Linear(4, 3)\n")
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:build")
    assert "got: 'build' there is an int, not a function or class; callables there: make" in said, said
    assert (f"fix: name after ':' a function or class of {run / 'model.py'} that builds the network, e.g. "
            f"--model {run / 'model.py'}:make") in said, said


def test_an_empty_probe_file_says_it_is_empty(tmp_path: Path) -> None:
    """An empty probe.pt (a save that never ran) said "got: EOFError: "."""
    run = _run(tmp_path / "run")
    (tmp_path / "probe.pt").write_bytes(b"")
    said = _fails("inspect", run / "step_0.safetensors", "--model", f"{run / 'model.py'}:build", "--probe",
                  tmp_path / "probe.pt")
    assert f"error: cannot read the probe {tmp_path / 'probe.pt'} got: the file is empty (0 bytes)" in said, said
    assert "EOFError" not in said, said


def test_an_h5_probe_that_is_not_hdf5_says_what_it_is(tmp_path: Path) -> None:
    """A probe.h5 that is a CSV said h5py's "OSError: Unable to synchronously open file (file signature not
    found)"."""
    run = _run(tmp_path / "run")
    (tmp_path / "probe.h5").write_text("x0,x1,label\n")
    said = _fails("inspect", run / "step_0.safetensors", "--model", f"{run / 'model.py'}:build", "--probe",
                  tmp_path / "probe.h5")
    assert "got: not an HDF5 file: its first bytes are b'x0,x1,la'" in said, said
    assert "synchronously" not in said and "OSError" not in said, said


def test_probe_inputs_of_text_say_so_once(tmp_path: Path) -> None:
    """x of strings said "'x' has dtype <U3" and again "got: <U3"; numpy's dtype code was all it said."""
    run = _run(tmp_path / "run")
    np.savez(tmp_path / "p.npz", x=np.array(["cat", "dog"]), y=np.array([0, 1]))
    said = _fails("inspect", run / "step_0.safetensors", "--model", f"{run / 'model.py'}:build", "--probe",
                  tmp_path / "p.npz")
    assert f"error: the probe {tmp_path / 'p.npz'}: 'x' holds text (dtype <U3), not numbers" in said, said
    assert "got: e.g. 'cat', 'dog'" in said and "got: <U3" not in said, said
    assert ("fix: x must hold numbers (float inputs or integer token ids): turn text into token ids with the "
            "model's tokenizer first") in said, said


def test_one_probe_given_twice_says_its_name_and_that_it_is_repeated(tmp_path: Path) -> None:
    """`--probe p.npz --probe p.npz` said "two probes have the same name", naming neither the name nor that one file
    was given twice, and only after reading both."""
    run = _run(tmp_path / "run")
    probe = run / "probe.npz"
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:build", "--probe", probe)
    assert f"error: two probes have the same name, 'probe' got: {probe}, {probe}" in said, said
    assert f"fix: give {probe} once" in said, said
    other = tmp_path / "probe.npz"
    other.write_bytes(probe.read_bytes())
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:build", "--probe", other)
    assert f"fix: name them apart: --probe probe={probe} --probe probe_2={other}" in said, said


def test_a_threshold_without_equals_says_what_is_missing(tmp_path: Path) -> None:
    """`--threshold 0.9` said "bad threshold '0.9'" and "got: 0.9", the same again."""
    run = _run(tmp_path / "run")
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "--probe", run / "probe.npz",
                          "--out", tmp_path / "a.h5")
    assert done.returncode == 0, done.stderr
    said = _fails("classify", tmp_path / "a.h5", "--threshold", "0.9")
    assert "error: bad threshold '0.9': no '=' between a name and a value" in said, said
    assert "got: 0.9" not in said, said
    assert "fix: write it as NAME=VALUE, e.g. --threshold cka_static=0.98" in said, said


def test_compare_says_a_store_records_no_probe_digest(tmp_path: Path) -> None:
    """A store without the record of its probe (written by hand, or damaged) showed "sha256 None…"."""
    run = _run(tmp_path / "run")
    for name in ("a.h5", "b.h5"):
        done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "--probe", run / "probe.npz",
                              "--out", tmp_path / name)
        assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "b.h5", "a") as store:
        del store["probes"]
    said = _fails("compare", tmp_path / "a.h5", tmp_path / "b.h5")
    assert f"{tmp_path / 'b.h5'}: probe 'probe' sha256 not recorded" in said, said
    assert "None" not in said, said


@pytest.mark.usefixtures("_clean_imports")
def test_weights_refused_by_the_models_own_loading_code_say_why(tmp_path: Path) -> None:
    """Keys and shapes that fit, refused by the model's own load_state_dict hook: it said "got: Error(s) in loading
    state_dict for Linear:" (torch's first line, the reason on the next) and "fix: wrong --model or
    --model-kwargs?"."""
    run = _run(tmp_path / "run")
    (run / "model.py").write_text(
        "from torch import nn\n\ndef build():\n    net = nn.Linear(4, 3)\n"
        "    net.register_load_state_dict_post_hook(lambda module, keys: keys.missing_keys.append('scale'))\n"
        "    return net\n")
    said = _analyze(run, tmp_path, f"{run / 'model.py'}:build")
    assert "got: Missing key(s) in state_dict: \"scale\"." in said, said
    assert "Error(s) in loading" not in said, said
    assert ("fix: the checkpoint's keys and shapes fit the model, but the model's own loading code (a "
            "load_state_dict hook, a _load_from_state_dict) refused them: mend that code, or check --model and "
            "--model-kwargs") in said, said

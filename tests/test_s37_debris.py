"""A Ctrl-C that reaches C code the model's own code runs through is an interrupt, not the model's failure.

fdl's SIGINT handler runs wherever the main thread is, also in Python code called back from a C extension of the
model's (a kernel's Python callback, a Cython loop). C code that does not look for the exception returns as if
nothing happened and CPython raises SystemError("... returned a result with an exception set") with the
KeyboardInterrupt as its cause. The handlers around the model's code took that for the model's error: "the model's
forward pass failed", "importing model.py failed", "building the model failed", exit 1, where the user had pressed
Ctrl-C and 130 was due; `fdl inspect` listed the modules with "shapes unknown". tests/test_s36_debris.py has the same
for h5py's Cython in the store reader; here the debris is made in the model's code as CPython makes it, by a real
SIGINT whose handler (fdl's own, in place while the command runs) raises inside a call that then fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli import signals
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process

_DEBRIS = '''
import signal

import torch
from torch import nn


def debris():
    """What a C extension leaves when a SIGINT's handler ran inside its call back into Python."""
    try:
        signal.raise_signal(signal.SIGINT)  # the handler in place (fdl's) runs here and raises
    except KeyboardInterrupt as exc:
        raise SystemError("<built-in method run of ext.Kernel object> returned a result with an exception set") from exc
    raise AssertionError("the SIGINT raised nothing")
'''

_MODELS = _DEBRIS + '''

class Net(nn.Sequential):
    """tests.tiny_models.mlp's layers; `trips(self, x)` says when its forward pass meets the debris."""

    def __init__(self, trips):
        super().__init__(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.trips = trips

    def forward(self, x):
        if self.trips(self, x):
            debris()
        return super().forward(x)


def first():  # the first sample's pass, which checks that the probe fits the model
    return Net(lambda net, x: True)


def batch():  # a batch of the probe: the first sample ran
    return Net(lambda net, x: x.shape[0] > 1)


class Scaled(Net):
    def forward(self, x):  # outputs no nn.Linear gives: the default layer is found by a pass with gradients
        return super().forward(x) * 2.0


def grad():  # that pass, which finds the nn.Linear the model's outputs are made from
    return Scaled(lambda net, x: torch.is_grad_enabled())


def late():  # the checkpoint of step 2 (its first bias 7.0): steps 0 and 1 were stored
    return Net(lambda net, x: float(net[0].bias[0]) == 7.0)


def factory():
    debris()
'''


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    from tests.tiny_models import mlp

    folder = tmp_path_factory.mktemp("debris")
    (folder / "ckpts").mkdir()
    for step in range(4):
        weights = {name: tensor + 0.01 * step for name, tensor in mlp(seed=step).state_dict().items()}
        if step == 2:
            weights["0.bias"][0] = 7.0
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "ckpts" / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    (folder / "models.py").write_text(_MODELS)
    (folder / "tripped.py").write_text(_DEBRIS + "\ndebris()  # at import\n")
    return folder


@pytest.fixture(autouse=True)
def _signals_reset() -> Iterator[None]:
    yield
    signals._pending = False
    signals.terminated = False


def _interrupted(done: Any) -> None:
    """Stopped as a Ctrl-C stops fdl: status 130, "interrupted" last, nothing of the model's failing."""
    assert done.returncode == 130, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "interrupted" or last.startswith("interrupted: "), done.stderr  # analyze: what was stored
    for words in ("failed", "SystemError", "Traceback", "error:"):
        assert words not in done.stderr, done.stderr


def _analyze(run_dir: Path, model: str, out: str) -> Any:
    return fdl_in_process("analyze", "ckpts", "--model", model, "--probe", "probe.npz", "--out", out, "--json",
                          "--batch-size", "16", "--anchor-size", "16", "--top-k", "4", cwd=run_dir)


@pytest.mark.parametrize(("model", "where"), [
    ("models.py:first", "the first sample's pass (the probe's check)"),
    # swallowed there ("the rule before this one stands"), it stopped the run all the same at the next pass
    # (`signals.check`, the handler's mark): now at once, with no other rule tried
    ("models.py:grad", "the pass with gradients (the default layer's rule)"),
    ("models.py:batch", "a batch's forward pass"),
    ("models.py:factory", "the model's build"),
    ("tripped.py:build", "the import of the model's file"),
    ("tripped:build", "the import of the model's module by its name"),
])
def test_a_ctrl_c_inside_the_models_code_stops_analyze_as_an_interrupt(run_dir: Path, model: str, where: str) -> None:
    out = f"{model.replace(':', '_')}.h5"
    done = _analyze(run_dir, model, out)
    _interrupted(done)
    assert done.stdout == ""
    if (run_dir / out).exists():  # nothing analysed, nothing refused
        with StoreReader(run_dir / out) as reader:
            assert reader.checkpoint_steps() == [] and reader.refused == []


def test_a_ctrl_c_inside_the_models_code_keeps_the_checkpoints_stored_before(run_dir: Path) -> None:
    done = _analyze(run_dir, "models.py:late", "late.h5")
    _interrupted(done)
    assert [json.loads(line)["step"] for line in done.stdout.splitlines()] == [0, 1]
    with StoreReader(run_dir / "late.h5") as reader:
        assert reader.checkpoint_steps() == [0, 1] and reader.refused == []  # step 2 not refused as the model's fault


def test_the_other_system_errors_of_the_models_code_are_still_its_own(run_dir: Path) -> None:
    (run_dir / "plain.py").write_text(_MODELS.replace("signal.raise_signal(signal.SIGINT)", "raise KeyboardInterrupt")
                                      .replace("except KeyboardInterrupt as exc:", "except KeyboardInterrupt:")
                                      .replace(" from exc", " from ValueError('a bad kernel')"))
    done = _analyze(run_dir, "plain.py:batch", "plain.h5")
    assert done.returncode == 1, done.stderr
    assert "the model's forward pass failed on probe rows 0..15" in done.stderr
    assert "SystemError: <built-in method run of ext.Kernel object>" in done.stderr


def test_fdl_inspect_interrupted_inside_the_models_pass_lists_no_unknown_shapes(run_dir: Path) -> None:
    done = fdl_in_process("inspect", "ckpts/step_0.safetensors", "--model", "models.py:first", "--probe", "probe.npz",
                          cwd=run_dir)
    _interrupted(done)
    assert "unknown" not in done.stderr and done.stdout == ""


def test_a_ctrl_c_that_no_handler_looked_for_ends_the_command_as_an_interrupt(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last net (`cli._run`): debris out of code with no handler of its own is "interrupted", not a traceback."""
    done = _analyze(run_dir, "models.py:late", "net.h5")  # steps 0 and 1
    namespace: dict[str, Any] = {}
    exec(compile(_DEBRIS, "debris", "exec"), namespace)  # noqa: S102 - the test's own code

    def said(*args: Any, **kwargs: Any) -> None:
        namespace["debris"]()

    from fdl_cli import report

    monkeypatch.setattr(report, "refused_line", said)
    done = fdl_in_process("report", "net.h5", cwd=run_dir)
    _interrupted(done)
    assert done.stdout == ""


# ------------------------------------------------------- where a failure of the model's code only falls back


def _debris_raiser() -> Any:
    from tests.test_s36_debris import _debris

    def raising(*args: Any, **kwargs: Any) -> Any:
        raise _debris()

    return raising


def test_a_pickled_modules_state_dict_met_by_a_ctrl_c_is_an_interrupt_not_no_fingerprint() -> None:
    from torch import nn

    from fdl_cli.checkpoints import _unpickled_tensors

    module = nn.Linear(2, 2)
    assert _unpickled_tensors(module) is not None
    module.state_dict = _debris_raiser()  # type: ignore[method-assign]
    with pytest.raises(signals.Interrupted):
        _unpickled_tensors(module)


def test_extra_state_whose_pickling_met_a_ctrl_c_is_an_interrupt_not_unpicklable() -> None:
    from fdl_cli.checkpoints import _extra_state_bytes

    class State:
        __reduce_ex__ = _debris_raiser()

    with pytest.raises(signals.Interrupted):
        _extra_state_bytes(State())


def test_a_metaclass_whose_module_name_met_a_ctrl_c_is_an_interrupt_not_a_name_unknown() -> None:
    from fdl_cli.checkpoints import _defined_in

    class Registry(type):
        __module__ = property(_debris_raiser())  # type: ignore[assignment]

    class Layer(metaclass=Registry):
        pass

    with pytest.raises(signals.Interrupted):
        _defined_in(Layer)

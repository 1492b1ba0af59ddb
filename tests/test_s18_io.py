"""Models and probes of the shapes ML researchers really have (eighteenth session): a transformer on token
ids, forwards returning a dict / tuple / dataclass, a model of several inputs, regression and multi-label
heads, probes of every format with odd label dtypes and sizes. What misled or was missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.cli_run import model_file

MLP = """
from dataclasses import dataclass

import torch
from torch import nn


def build(n_out=3):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, n_out))
"""


def _run(tmp_path: Path, source: str = MLP, n_out: int = 3, factory: str = "build") -> tuple[Path, list[str]]:
    """One checkpoint (step_0.pt) of `factory` in `source`, and the `--model` options that build it."""
    runs = tmp_path / "runs"
    runs.mkdir()
    module = model_file(tmp_path, source)
    torch.manual_seed(0)
    kwargs = {"n_out": n_out}
    torch.save(getattr(module, factory)(**kwargs).state_dict(), runs / "step_0.pt")
    return runs, ["--model", f"{tmp_path / 'model.py'}:{factory}", "--model-kwargs", json.dumps(kwargs)]


def _x(n: int = 12) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def _multi_hot(n: int = 12, k: int = 3) -> np.ndarray:
    """0/1 targets of k labels with rows of none, one and several 1s (multi-label)."""
    y = (np.random.default_rng(1).random((n, k)) > 0.5).astype(np.int64)
    y[0], y[1] = 0, 1  # a row of no label, a row of every label
    return y


# ------------------------------------------------------------------------------------------- multi-label


@pytest.mark.parametrize(("dtype", "word"), [(np.int64, "integer"), (np.uint8, "integer"), (bool, "boolean")])
def test_integer_multi_hot_targets_are_refused_as_multi_label_with_what_fdl_can_measure(
    tmp_path: Path, dtype: type, word: str
) -> None:
    """0/1 labels with several 1s a row were refused as "not one-hot", with no word of multi-label and a fix
    ("give (n,) class labels") that a multi-label probe cannot follow."""
    path = tmp_path / "ml.npz"
    np.savez(path, x=_x(), y=_multi_hot().astype(dtype))
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    text = str(raised.value)
    assert f"{word} 'y' of shape (12, 3) is not one-hot" in text
    assert "several labels per sample (multi-label)?" in text
    assert "fdl has no multi-label task" in text
    assert "y.astype(np.float32)" in text
    assert "loss and r2 then compare the raw outputs (logits) with 0/1" in text


def test_float_multi_hot_targets_are_analysed_with_a_warning_naming_what_loss_and_r2_measure(tmp_path: Path) -> None:
    """Float 0/1 multi-label targets were analysed as regression without a word: a sigmoid model fitting them
    well showed r2 = -1093 (its logits against 0/1) in the report."""
    runs, model = _run(tmp_path, n_out=3)
    probe = tmp_path / "ml.npz"
    np.savez(probe, x=_x(), y=_multi_hot().astype(np.float32))
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    assert ("warning: probe 'probe': y holds float 0/1 targets with several 1s, or none, in a row (multi-label "
            "targets?), analysed as regression targets of the raw outputs") in result.stderr
    assert "loss and r2 compare the outputs as they are with 0/1" in " ".join(result.stderr.split())
    assert "one-hot" not in result.stderr


def test_a_float_0_1_column_for_one_output_warns_and_names_the_binary_classifier_route(tmp_path: Path) -> None:
    runs, model = _run(tmp_path, n_out=1)
    probe = tmp_path / "b.npz"
    np.savez(probe, x=_x(), y=(np.arange(12) % 2).astype(np.float32))
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stderr.split())
    assert "warning: probe 'probe': y holds float 0/1 targets, analysed as regression targets of the raw output" \
        in text
    assert "save the targets as integer labels (y.reshape(-1).astype(np.int64))" in text


@pytest.mark.parametrize("y", [
    np.eye(3, dtype=np.float32)[np.arange(12) % 3],  # a float one-hot matrix: its own warning
    np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32),  # real regression targets
])
def test_other_float_targets_get_no_multi_label_warning(tmp_path: Path, y: np.ndarray) -> None:
    runs, model = _run(tmp_path, n_out=3)
    probe = tmp_path / "t.npz"
    np.savez(probe, x=_x(), y=y)
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    assert "0/1 targets" not in result.stderr


# ------------------------------------------------------------------------------- models of several inputs

SEVERAL = MLP + '''

class TwoInputs(nn.Module):
    def __init__(self, n_out=3):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, n_out)

    def forward(self, x, mask):
        return self.head(torch.relu(self.body(x * mask)))


class DictInput(TwoInputs):
    def forward(self, batch):
        return self.head(torch.relu(self.body(batch["x"] * batch["mask"])))


class OptionalMask(TwoInputs):
    def forward(self, x, mask=None):
        return self.head(torch.relu(self.body(x if mask is None else x * mask)))


class Inputs(nn.Module):
    """docs/usage.md, Probe: the wrapper a --model factory returns for a model of several inputs."""

    def __init__(self, net):
        super().__init__()
        self.module = net

    def forward(self, x):
        return self.module(x[:, 0], x[:, 1])


def two_inputs(n_out=3):
    return TwoInputs(n_out)


def dict_input(n_out=3):
    return DictInput(n_out)


def optional_mask(n_out=3):
    return OptionalMask(n_out)


def wrapped(n_out=3):
    return Inputs(TwoInputs(n_out))
'''


def _mask(n: int = 12) -> np.ndarray:
    return (np.random.default_rng(3).random((n, 4)) > 0.3).astype(np.float32)


@pytest.mark.parametrize(("factory", "said"), [
    ("two_inputs", "the model's forward takes more inputs than x, but fdl calls it with the probe's x alone"),
    ("dict_input", "the model's forward reads its input by name (a dict of inputs?)"),
])
def test_a_model_of_several_inputs_is_explained_with_the_wrapper_to_write(
    tmp_path: Path, factory: str, said: str
) -> None:
    """forward(x, mask) was "probe does not fit the model: missing 1 required positional argument: 'mask'; fix: give
    the probe inputs the shape and dtype the model's forward expects", which no probe can follow; a forward taking a
    dict said "new(): invalid data type 'str'". Nothing said that fdl calls forward(x) with x alone."""
    runs, model = _run(tmp_path, SEVERAL, factory=factory)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=_x(), mask=_mask(), y=np.arange(12) % 3)
    for command in (("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5"),
                    ("inspect", runs / "step_0.pt", *model, "--probe", probe)):
        result = fdl(*command)
        assert result.returncode == 1, command
        text = " ".join(result.stderr.split())
        assert said in text, command
        assert "self.module(x[:, 0], x[:, 1])" in text and "holds the network as `module`" in text, command
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run.h5").exists()


def test_the_readme_wrapper_analyses_a_model_of_two_inputs_with_its_own_numbers(tmp_path: Path) -> None:
    """The wrapper README gives (inputs stacked as x, the network held as `module`) loads the network's own
    checkpoint and measures it: the accuracy is the two-input model's, by hand."""
    runs, model = _run(tmp_path, SEVERAL, factory="two_inputs")
    module = model_file(tmp_path, SEVERAL)
    x, mask, y = _x(), _mask(), np.arange(12) % 3
    probe = tmp_path / "stacked.npz"
    np.savez(probe, x=np.stack([x, mask], 1), y=y)
    model[1] = model[1].replace(":two_inputs", ":wrapped")
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    net = module.TwoInputs(3)
    net.load_state_dict(torch.load(runs / "step_0.pt"))
    with torch.no_grad():
        logits = net(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    assert record["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == y)), abs=0)
    assert record["n_features"] == 8 and record["n_outputs"] == 3


def test_arrays_of_the_probe_that_fdl_does_not_read_are_named(tmp_path: Path) -> None:
    """forward(x, mask=None) ran without the mask saved beside x in the probe, and nothing said so."""
    runs, model = _run(tmp_path, SEVERAL, factory="optional_mask")
    probe = tmp_path / "probe.npz"
    np.savez(probe, inputs=_x(), mask=_mask(), labels=np.arange(12) % 3)
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    assert (f"note: probe 'probe' ({probe}): not read: mask; fdl gives the model 'inputs' alone, forward(x), and "
            "takes 'labels' as the targets (a model of several inputs: docs/usage.md, Probe)"
            ) in " ".join(result.stderr.split())
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=_x(), y=np.arange(12) % 3)
    quiet = fdl("analyze", runs, *model, "--probe", plain, "-o", tmp_path / "plain.h5")
    assert quiet.returncode == 0 and "not read" not in quiet.stderr


# --------------------------------------------------------------------------- where the logits are found

OUTPUTS = MLP + '''

@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


@dataclass
class Prediction:
    prediction: torch.Tensor
    hidden: torch.Tensor


class Net(nn.Module):
    def __init__(self, n_out=3, kind="tensor"):
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, n_out)

    def forward(self, x):
        hidden = torch.relu(self.body(x))
        logits = self.head(hidden)
        return {
            "tensor": lambda: logits,
            "dict": lambda: {"logits": logits, "aux": hidden.mean(1)},
            "tuple": lambda: (logits, hidden),
            "dataclass": lambda: Output(logits=logits, hidden=hidden),
            "dict_out": lambda: {"out": logits, "aux": hidden},
            "prediction": lambda: Prediction(prediction=logits, hidden=hidden),
        }[self.kind]()


class Wrapper(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def build_kind(n_out=3, kind="tensor"):
    return Net(n_out, kind)


def wrapped(n_out=3):
    return Wrapper(Net(n_out))
'''


def test_dict_tuple_and_dataclass_outputs_give_the_numbers_of_the_tensor(tmp_path: Path) -> None:
    runs, _ = _run(tmp_path, OUTPUTS, factory="build_kind")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=_x(), y=np.arange(12) % 3)
    records = {}
    for kind in ("tensor", "dict", "tuple", "dataclass"):
        result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:build_kind", "--model-kwargs",
                     json.dumps({"kind": kind}), "--probe", probe, "-o", tmp_path / f"{kind}.h5", "--json")
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout.splitlines()[0])
        records[kind] = {k: record[k] for k in ("d_lr", "accuracy", "cross_entropy", "k95_utility", "n_outputs")}
    assert records["dict"] == records["tensor"] == records["tuple"] == records["dataclass"]


@pytest.mark.parametrize(("kind", "what", "got", "pick"), [
    ("dict_out", "returned a dict without a 'logits' entry", "dict keys: 'out', 'aux'", "self.module(x)['out']"),
    ("prediction", "returned an object of type Prediction without 'logits'", "its tensors: prediction, hidden",
     "self.module(x).prediction"),
])
def test_outputs_without_logits_name_what_was_returned_and_the_wrapper(
    tmp_path: Path, kind: str, what: str, got: str, pick: str
) -> None:
    """A dataclass without `logits` said "did not return a tensor; got: Prediction" (its fields unnamed), and
    `fdl inspect --probe` blamed the probe ("give the probe inputs the shape and dtype the model's forward
    expects") of a forward pass that had run, its module shapes all None without --probe."""
    runs, _ = _run(tmp_path, OUTPUTS, factory="build_kind")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=_x(), y=np.arange(12) % 3)
    model = ["--model", f"{tmp_path / 'model.py'}:build_kind", "--model-kwargs", json.dumps({"kind": kind})]
    analyzed = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    inspected = fdl("inspect", runs / "step_0.pt", *model, "--probe", probe, "--json")
    for result in (analyzed, inspected):
        assert result.returncode == 1
        text = " ".join(result.stderr.split())
        assert f"error: the model's forward {what}, so its outputs cannot be told" in text
        assert f"got: {got}" in text
        assert f"holds it as `module` (so the checkpoints' keys load as they are) and whose forward(x) returns {pick}" \
            in text
        assert "probe" not in text.split("error:", 1)[1]
    listing = json.loads(inspected.stdout)  # the pass ran: its shapes are listed, and the default layer
    shapes = {row["name"]: row["output_shape"] for row in listing["modules"]}
    assert shapes["body"] == [1, 8] and shapes["head"] == [1, 3]
    assert listing["default_layer"] == "head:input" and listing["default_features"] == 8


def test_a_wrapper_that_names_the_network_otherwise_is_told_to_call_it_module(tmp_path: Path) -> None:
    runs, _ = _run(tmp_path, OUTPUTS, factory="build_kind")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=_x(), y=np.arange(12) % 3)
    result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:wrapped", "--probe", probe,
                 "-o", tmp_path / "run.h5")
    assert result.returncode == 1
    assert "the model's keys are the checkpoint's under 'net.'" in result.stderr
    assert "fix: the --model factory wraps the network as 'net': name that attribute `module` (self.module = net)" \
        in result.stderr


# ------------------------------------------------------------------------------- a transformer on token ids

TRANSFORMER = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """Token ids (b, 3) -> logits (b, 5): embedding, one encoder layer, the last position's head."""

    def __init__(self, n_out=5):
        super().__init__()
        self.embed = nn.Embedding(6, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, n_out)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens))[:, -1])


def build(n_out=5):
    return Tiny(n_out)
'''


def test_a_transformer_on_int32_token_ids_in_uneven_batches_matches_a_float64_computation(tmp_path: Path) -> None:
    """Token ids saved as int32 (as tokenizers give them), a probe of 7 in batches of 3: the eigenvalues of the
    uncentered second moment, D_LR's output rank and the accuracy equal numpy's on features hooked by hand."""
    runs, model = _run(tmp_path, TRANSFORMER, n_out=5)
    module = model_file(tmp_path, TRANSFORMER)
    tokens = np.random.default_rng(4).integers(0, 6, size=(7, 3)).astype(np.int32)
    labels = np.array([0, 1, 2, 3, 4, 0, 1], dtype=np.uint8)
    probe = tmp_path / "tokens.npz"
    np.savez(probe, x=tokens, y=labels)
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5", "--batch-size", "3", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    exported = fdl("export", tmp_path / "run.h5", "--what", "eigenvalues", "--format", "json")
    eigenvalues = np.array(json.loads(exported.stdout)[0]["eigenvalues"])

    net = module.build(5)
    net.load_state_dict(torch.load(runs / "step_0.pt"))
    net.eval()
    taken: list[torch.Tensor] = []
    net.head.register_forward_hook(lambda _m, inputs, _o: taken.append(inputs[0]))
    with torch.no_grad():
        logits = net(torch.from_numpy(tokens.astype(np.int64))).double().numpy()
    features = taken[0].double().numpy()
    expected = np.linalg.eigvalsh(features.T @ features / len(features))[::-1]
    expected = expected[expected > expected[0] * 1e-10]
    assert record["rank"] == len(expected) == len(eigenvalues)
    np.testing.assert_allclose(eigenvalues, expected, rtol=1e-6, atol=1e-9 * expected[0])
    assert record["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)), abs=0)
    assert record["n_probe"] == 7 and record["n_features"] == 8 and record["n_outputs"] == 5


def test_a_probe_of_hugging_face_columns_is_read_as_it_is(tmp_path: Path) -> None:
    """A tokenized dataset's columns, input_ids / attention_mask / label, said "the probe has no inputs"; now
    input_ids are the inputs, label the targets, and the mask is named as not read."""
    runs, model = _run(tmp_path, TRANSFORMER, n_out=5)
    tokens = np.random.default_rng(4).integers(0, 6, size=(7, 3))
    probe = tmp_path / "hf.npz"
    np.savez(probe, input_ids=tokens, attention_mask=np.ones_like(tokens), label=np.arange(7) % 5)
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    assert record["accuracy"] is not None and record["n_probe"] == 7
    assert "not read: attention_mask; fdl gives the model 'input_ids' alone, forward(x), and takes 'label' as the " \
        "targets" in " ".join(result.stderr.split())


def test_a_probe_saved_as_pt_among_the_checkpoints_is_named_as_a_probe(tmp_path: Path) -> None:
    """probe_v2.pt beside step_0.pt is found as the checkpoint of step 2; it was "6 missing key(s) ...; 2
    unexpected key(s): x, y; fix: wrong --model or --model-kwargs?"."""
    runs, model = _run(tmp_path)
    torch.save({"x": torch.from_numpy(_x()), "y": torch.arange(12) % 3}, runs / "probe_v2.pt")
    result = fdl("analyze", runs, *model, "--probe", runs / "probe_v2.pt", "-o", tmp_path / "run.h5")
    # discovery knows it by its contents (test_s18_ux): skipped, step 0 analysed, nothing failed; without a
    # note since session 19, as the file given as --probe (test_s19_insp), but with one otherwise
    assert result.returncode == 0, result.stderr
    assert "probe_v2.pt" not in result.stderr
    from fdl_cli.checkpoints import discover_checkpoints

    assert "skipped probe_v2.pt: a probe set (x, y), not model weights" in discover_checkpoints([runs]).notes
    assert "1 checkpoint analysed →" in result.stderr
    # given as the checkpoint itself, it is named as a probe (it was "no checkpoints found in probe_v2.pt ...
    # fix: point at a folder")
    for command in ("inspect", "analyze"):
        result = fdl(command, runs / "probe_v2.pt", *model, *(["-o", tmp_path / "p.h5"] if command == "analyze" else []))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"error: {runs / 'probe_v2.pt'} is a probe (tensors named only as a probe's x and y), not model " \
            "weights" in result.stderr
        assert "fix: give it as --probe, and a checkpoint or a run's folder as the argument" in result.stderr
    assert not (tmp_path / "p.h5").exists()


def test_a_probe_read_as_weights_says_what_it_holds(tmp_path: Path) -> None:
    """Discovery no longer hands a probe's file to the weights' loading; should one reach it all the same
    (called directly here), the missing/unexpected keys' error says that it holds a probe's arrays, not
    "wrong --model?"."""
    from fdl_cli.checkpoints import _load_strict
    from fdl_cli.errors import CheckpointError

    model = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError) as raised:
        _load_strict(model, {"x": torch.zeros(4, 2), "y": torch.zeros(4)}, tmp_path / "probe.pt")
    text = str(raised.value)
    assert "unexpected keys: x, y; the file holds a probe's arrays, not weights" in text
    assert "fix: keep the probe out of the checkpoints' folder (or leave it out with --glob)" in text


@pytest.mark.parametrize("dataset", [False, True])
def test_a_pt_probe_of_three_tensors_says_what_it_holds(tmp_path: Path, dataset: bool) -> None:
    """A TensorDataset(x, mask, y) was "holds a tuple; got: tuple"."""
    x, mask, y = torch.zeros(4, 3), torch.ones(4, 3), torch.arange(4)
    path = tmp_path / "three.pt"
    torch.save(torch.utils.data.TensorDataset(x, mask, y) if dataset else (x, mask, y), path)
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    text = str(raised.value)
    kind = "TensorDataset" if dataset else "tuple"
    assert f"the probe {path} holds a {kind} of 3 items" in text
    assert "a model of several inputs takes them stacked as one x" in text

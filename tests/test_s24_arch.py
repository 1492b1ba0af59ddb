"""Session 24, models that are not toy MLPs: every stored number of `fdl analyze` against a float64 reference
computed here from the same checkpoint in eval mode (torch.no_grad, a hook of this file's own).

Checked and found right (kept as tests): a ResNet-style CNN with BatchNorm and Dropout trained in train mode
(the checkpoints' running statistics, eval mode, no buffer carried from one checkpoint to the next, the files
untouched), a TransformerEncoder with a CLS token (the default layer is the pooled vector, `--layer` takes a
block's (b, T, d) output flattened), a head of bias=False and a weight-tied nn.Linear head, and channels_last
weights. Found wrong, and fixed:

- a forward returning `(features, logits)`: fdl took the first element, the features, as the logits, silently
  (accuracy the argmax of the hidden units); now an error;
- a head that is no nn.Linear (`F.linear(h, w)`, `h @ embed.weight.T`): the default layer was the input of
  the last nn.Linear to run, a layer before the penultimate one, silently; now a warning says so and how to pick;
- two heads on towers of their own, returned as a tuple: the features were the last head's (tower b), the
  outputs the first's (tower a); the default is now the input of the nn.Linear whose output the outputs are;
- a module pickled whole in float16, bfloat16 or float64 (`torch.save(model.half())`): it ran in its own dtype
  on float32 inputs and was refused as "probe does not fit the model"; it is now widened to float32 as the
  weights of a state_dict are.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process, model_file
from tests.reference import reference_measures

MODELS = '''
import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.down(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = Block(4, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.layer1(self.stem(x))).flatten(1)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = torch.cat([self.cls.expand(ids.shape[0], -1, -1), self.embed(ids)], 1)
        return self.head(self.encoder(h)[:, 0])


class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))


class FeaturesFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = Trunk()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.trunk(x)
        return h, self.head(h)


class NamedOutputs(FeaturesFirst):
    def forward(self, x):
        h = self.trunk(x)
        return {"hidden": h, "scores": self.head(h)}


class FunctionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = Trunk()
        self.w = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        return F.linear(self.trunk(x), self.w)


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = Trunk()
        self.tower_a = nn.Sequential(nn.Linear(8, 6), nn.ReLU())
        self.head_a = nn.Linear(6, 3)
        self.tower_b = nn.Sequential(nn.Linear(8, 5), nn.ReLU())
        self.head_b = nn.Linear(5, 2)

    def forward(self, x):
        h = self.trunk(x)
        return self.head_a(self.tower_a(h)), self.head_b(self.tower_b(h))


class TiedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.embed(ids).mean(1))))


def build(name):
    torch.manual_seed(0)
    return globals()[name]()
'''


def _features(model: torch.nn.Module, x: np.ndarray, module: str, use_input: bool) -> tuple[np.ndarray, np.ndarray]:
    """The reference: (features, outputs) of the model in eval mode (no_grad, a hook of its own), in float64,
    from the float32 forward pass that fdl runs too. The float64 forward pass agrees with it to the float32
    rounding of the network: the function is the eval-mode one (train-mode BatchNorm or Dropout differ by O(1))."""
    in64 = _forward(copy.deepcopy(model).double(), x, module, use_input)
    in32 = _forward(model.float(), x, module, use_input)
    for ours, exact in zip(in32, in64, strict=True):
        np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    return in32


def _forward(model: torch.nn.Module, x: np.ndarray, module: str, use_input: bool) -> tuple[np.ndarray, np.ndarray]:
    model = model.eval()
    dtype = next(model.parameters()).dtype
    got = {}

    def hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        value = inputs[0] if use_input else output
        value = value[0] if isinstance(value, tuple) else value
        got["f"] = value.reshape(value.shape[0], -1)

    handle = dict(model.named_modules())[module].register_forward_hook(hook)
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        out = model(inputs.to(dtype) if inputs.is_floating_point() else inputs)
    handle.remove()
    out = out[0] if isinstance(out, tuple) else out
    return got["f"].double().numpy(), out.reshape(out.shape[0], -1).double().numpy()


def _references(module: ModuleType, name: str, run: Path, x: np.ndarray, layer: str,
                use_input: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """`_features` of each of the run's two checkpoints, each loaded into a model of its own."""
    refs = {}
    for step in range(2):
        model = module.build(name)
        model.load_state_dict(torch.load(run / f"step_{step}.pt"))
        refs[step] = _features(model, x, layer, use_input)
    return refs


def _assert_store_matches(store: Path, layer: str, refs: dict[int, tuple[np.ndarray, np.ndarray]],
                          labels: np.ndarray, rtol: float) -> None:
    """Every stored eigenvalue above 1e-9 of the largest, the per-checkpoint scalars and CKA to the first
    checkpoint, against the reference's (fdl's statistics are float64, as the reference's)."""
    first = refs[min(refs)][0]
    with h5py.File(store, "r") as handle:
        assert sorted(int(name.removeprefix("step_")) for name in handle["checkpoints"]) == sorted(refs)
        for step, (features, outputs) in refs.items():
            group = handle[f"checkpoints/step_{step}/probe/{layer}"]
            ref = reference_measures(features, outputs, labels=labels)
            values = group["eigenvalues"][:]
            big = ref.eigenvalues > 1e-9 * ref.eigenvalues[0]
            np.testing.assert_allclose(values[: big.sum()], ref.eigenvalues[big], rtol=rtol)
            for name in ("accuracy", "loss", "cross_entropy", "d_lr", "eff_dim", "pi_star_C", "pi_hat_C"):
                assert group.attrs[name] == pytest.approx(ref.scalars[name], rel=rtol, abs=1e-12), (step, name)
            a, b = first - first.mean(0), features - features.mean(0)
            cka = np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
            assert group.attrs["cka_init"] == pytest.approx(cka, rel=rtol), step


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModuleType]:
    folder = tmp_path_factory.mktemp("arch")
    return folder, model_file(folder, MODELS)


def _checkpoints(folder: Path, module: ModuleType, name: str, steps: int = 2) -> Path:
    """`name`'s state_dicts, its weights moved a little at each step."""
    run = folder / f"run_{name}"
    run.mkdir(exist_ok=True)
    for step in range(steps):
        model = module.build(name)
        torch.manual_seed(step + 1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * step * torch.randn_like(parameter))
        torch.save(model.state_dict(), run / f"step_{step}.pt")
    return run


def _vector_probe(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    np.savez(folder / "vectors.npz", x=x, y=y)
    return folder / "vectors.npz", x, y


def _analyze(folder: Path, run: Path, name: str, probe: Path, *extra: str) -> tuple[int, str, Path]:
    store = folder / f"{name}.h5"
    done = fdl_in_process("analyze", run, "--model", f"{folder}/model.py:build", "--model-kwargs",
                          json.dumps({"name": name}), "--probe", probe, "-o", store, "--overwrite", "--device", "cpu",
                          *extra)
    return done.returncode, done.stderr, store


def _inspect(folder: Path, run: Path, name: str, probe: Path) -> dict[str, object]:
    from fdl_cli.inspection import inspect_checkpoint

    return inspect_checkpoint(checkpoint=str(run / "step_0.pt"), model_spec=f"{folder}/model.py:build",
                              model_kwargs=json.dumps({"name": name}), probe_spec=str(probe))


def _stored_layer(store: Path) -> str:
    with h5py.File(store, "r") as handle:
        return str(next(iter(handle["checkpoints/step_0/probe"])))


# ------------------------------------------------------------------ BatchNorm, Dropout, a sequence model


def test_a_resnet_trained_in_train_mode_is_analysed_in_eval_mode_with_each_checkpoints_running_stats(
    models: tuple[Path, ModuleType],
) -> None:
    folder, module = models
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, 32)
    np.savez(folder / "images.npz", x=x, y=y)
    run = folder / "run_resnet"
    run.mkdir()
    model = module.build("ResNet").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(3):  # train mode: the running statistics move with every step
        torch.save({"model": model.state_dict(), "step": step}, run / f"step_{step}.pt")
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x) * 2 + 1), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    files = {path.name: path.read_bytes() for path in run.iterdir()}
    refs = {}
    for step in range(3):
        fresh = module.build("ResNet")  # a model of its own per checkpoint: no buffer carried over
        fresh.load_state_dict(torch.load(run / f"step_{step}.pt")["model"])
        refs[step] = _features(fresh, x, "fc", use_input=True)
    assert not np.allclose(refs[0][0], refs[2][0])
    store = folder / "resnet.h5"
    done = fdl_in_process("analyze", run, "--model", f"{folder}/model.py:build", "--model-kwargs",
                          '{"name": "ResNet"}', "--probe", folder / "images.npz", "-o", store, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert _stored_layer(store) == "fc:input"  # after the Dropout, which eval mode leaves out
    _assert_store_matches(store, "fc:input", refs, y, rtol=1e-6)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == files


def test_a_transformer_encoders_default_features_are_the_pooled_cls_vector(models: tuple[Path, ModuleType]) -> None:
    folder, module = models
    rng = np.random.default_rng(2)
    ids, y = rng.integers(0, 7, size=(30, 5)).astype(np.int64), rng.integers(0, 3, 30)
    np.savez(folder / "ids.npz", x=ids, y=y)
    run = _checkpoints(folder, module, "Encoder")
    for layer, module_name, use_input in ((None, "head", True), ("encoder.layers.1", "encoder.layers.1", False)):
        code, err, store = _analyze(folder, run, "Encoder", folder / "ids.npz", *(["--layer", layer] if layer else []))
        assert code == 0, err
        label = layer or "head:input"
        assert _stored_layer(store) == label
        refs = _references(module, "Encoder", run, ids, module_name, use_input)
        # the pooled CLS vector (8 features), or a block's (b, T, d) output flattened (6 positions × 8)
        assert refs[0][0].shape[1] == (8 if layer is None else 48)
        _assert_store_matches(store, label, refs, y, rtol=1e-6)


def test_a_weight_tied_head_without_bias_is_an_nn_linear_like_any(models: tuple[Path, ModuleType]) -> None:
    folder, module = models
    rng = np.random.default_rng(3)
    ids, y = rng.integers(0, 5, size=(30, 4)).astype(np.int64), rng.integers(0, 5, 30)
    np.savez(folder / "tokens.npz", x=ids, y=y)
    run = _checkpoints(folder, module, "TiedHead")
    code, err, store = _analyze(folder, run, "TiedHead", folder / "tokens.npz")
    assert code == 0 and "warning" not in err, err
    refs = _references(module, "TiedHead", run, ids, "head", use_input=True)
    _assert_store_matches(store, "head:input", refs, y, rtol=1e-6)


# ------------------------------------------------------------------ which outputs, which head


def test_a_forward_returning_features_then_logits_is_refused(models: tuple[Path, ModuleType]) -> None:
    """`return h, self.head(h)`: a tuple's first element is taken as the outputs, here the features (8 of
    them) where the logits are element 1. It ran, silently: accuracy was the argmax of the hidden units."""
    folder, module = models
    probe, _x, _y = _vector_probe(folder)
    code, err, _store = _analyze(folder, _checkpoints(folder, module, "FeaturesFirst"), "FeaturesFirst", probe)
    assert code == 1 and "Traceback" not in err, err
    assert "error: the model's forward returns a tuple whose first element" in err
    assert "is the input of its nn.Linear 'head', whose output is element 1" in err
    assert "return the logits first" in err and "self.module(x)[1]" in err
    code, err, _store = _analyze(folder, folder / "run_FeaturesFirst", "FeaturesFirst", probe, "--layer", "trunk")
    assert code == 1 and "whose output is element 1" in err, err  # whatever the layer: the outputs are wrong


def test_a_dict_without_logits_is_refused_with_the_entry_the_head_gave_to_read(
    models: tuple[Path, ModuleType],
) -> None:
    """Its fix read the dict's first tensor, here the hidden units ("self.module(x)['hidden'], the logits")."""
    folder, module = models
    probe, _x, _y = _vector_probe(folder)
    code, err, _store = _analyze(folder, _checkpoints(folder, module, "NamedOutputs"), "NamedOutputs", probe)
    assert code == 1 and "Traceback" not in err, err
    assert "error: the model's forward returned a dict without a 'logits' entry" in err
    assert "dict keys: 'hidden', 'scores'" in err and "self.module(x)['scores'], the logits" in err


def test_a_head_that_is_no_nn_linear_is_said_with_the_layer_taken_and_how_to_pick(
    models: tuple[Path, ModuleType],
) -> None:
    """`F.linear(trunk(x), w)`: the last nn.Linear to run is trunk.fc2, whose input is the first hidden layer,
    not the penultimate features. It is still the default (a guess), now with a warning; --layer takes the
    right one, which matches the reference."""
    folder, module = models
    probe, x, y = _vector_probe(folder)
    run = _checkpoints(folder, module, "FunctionalHead")
    code, err, store = _analyze(folder, run, "FunctionalHead", probe)
    assert code == 0, err
    assert _stored_layer(store) == "trunk.fc2:input"
    said = " ".join(err.split())
    assert "warning: the default feature layer, trunk.fc2:input, is the input of the last nn.Linear to run" in said
    assert "8 values a sample" in said and "the model's 3 outputs" in said
    assert "--layer NAME" in said and "fdl inspect" in said
    listed = _inspect(folder, run, "FunctionalHead", probe)
    assert listed["default_layer"] == "trunk.fc2:input"
    assert "gives 8 values a sample and is no source of the model's 3 outputs" in listed["default_basis"]
    code, err, store = _analyze(folder, run, "FunctionalHead", probe, "--layer", "trunk")
    assert code == 0 and "warning" not in err, err
    refs = _references(module, "FunctionalHead", run, x, "trunk", use_input=False)
    _assert_store_matches(store, "trunk", refs, y, rtol=1e-6)


def test_two_heads_on_towers_take_the_features_of_the_head_whose_outputs_are_analysed(
    models: tuple[Path, ModuleType],
) -> None:
    """`return head_a(tower_a(h)), head_b(tower_b(h))`: the outputs are the first element, head_a's; the
    features were head_b's input (tower b, the last nn.Linear to run), another head's."""
    folder, module = models
    probe, x, y = _vector_probe(folder)
    run = _checkpoints(folder, module, "Towers")
    code, err, store = _analyze(folder, run, "Towers", probe)
    assert code == 0, err
    assert _stored_layer(store) == "head_a:input"
    said = " ".join(err.split())
    assert "note: the model's outputs (the first element of the tuple its forward returns) are the output of " \
           "nn.Linear 'head_a', not of the last one to run, 'head_b': the features are head_a:input" in said
    listed = _inspect(folder, run, "Towers", probe)  # inspect says what analyze takes
    assert (listed["default_layer"], listed["default_features"]) == ("head_a:input", 6)
    assert "the nn.Linear whose output the model's outputs are" in listed["default_basis"]
    refs = _references(module, "Towers", run, x, "head_a", use_input=True)
    _assert_store_matches(store, "head_a:input", refs, y, rtol=1e-6)


# ------------------------------------------------------------------ weights in other dtypes and layouts


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_module_pickled_whole_in_another_dtype_runs_as_its_state_dict_does(tmp_path: Path, dtype: torch.dtype) -> None:
    """`torch.save(model.half())`: the module ran in float16 on the probe's float32 inputs and was refused as
    a probe that does not fit. It is widened to float32, as a state_dict is: the same numbers to the bit,
    param_norm included (of the file's values), also when the state_dict's weights are channels_last."""
    from tests.tiny_models import cnn

    rng = np.random.default_rng(4)
    np.savez(tmp_path / "images.npz", x=rng.normal(size=(24, 1, 5, 5)).astype(np.float32), y=rng.integers(0, 3, 24))
    whole, weights = tmp_path / "whole", tmp_path / "weights"
    whole.mkdir()
    weights.mkdir()
    for step in range(2):
        model = cnn(seed=step).to(dtype)
        torch.save(model, whole / f"step_{step}.pt")
        torch.save(model.to(memory_format=torch.channels_last).state_dict(), weights / f"step_{step}.pt")
    stores = {}
    for name, args in (("whole", ["--trust-pickle"]), ("weights", ["--model", "tests.tiny_models:cnn"])):
        stores[name] = tmp_path / f"{name}.h5"
        done = fdl_in_process("analyze", tmp_path / name, "--probe", tmp_path / "images.npz", "-o", stores[name],
                              "--device", "cpu", "--json", *args)
        assert done.returncode == 0, done.stderr
        stores[name] = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(stores["whole"]) == 2
    for ours, theirs in zip(stores["whole"], stores["weights"], strict=True):
        assert {k: v for k, v in ours.items() if k not in ("path", "sha256")} == \
               {k: v for k, v in theirs.items() if k not in ("path", "sha256")}
    state = torch.load(weights / "step_1.pt")
    norm = sum(float((value.double() ** 2).sum()) for key, value in state.items()
               if value.is_floating_point() and "running" not in key)
    assert stores["whole"][1]["param_norm"] == pytest.approx(norm, rel=1e-12)

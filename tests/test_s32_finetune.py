"""Fine-tuning runs as their users save them: a pretrained model whose head was replaced, a backbone frozen or
not, LoRA adapters beside (or instead of) the base weights, a backbone saved apart from its head. fdl either
measures them (a frozen backbone reads coefficient) or says what the file is and how to make it analysable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

MODEL = "tests.tiny_models:mlp"


def _probe(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))
    return tmp_path / "probe.npz"


def _refused(tmp_path: Path, *sources: Path, model: str = MODEL) -> str:
    """What `fdl analyze SOURCES` says (its words joined by single spaces) when it refuses the run: exit 1, no
    traceback, and never the "wrong --model" that sent a fine-tuning user to change the model the run fits."""
    done = fdl_in_process("analyze", *sources, "--model", model, "--probe", _probe(tmp_path),
                          "--out", tmp_path / "refused.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = " ".join(done.stderr.split())
    assert "wrong --model" not in said
    return said


def _run(tmp_path: Path, name: str, *states: dict[str, torch.Tensor]) -> Path:
    """A folder `name` holding `states` as step_0.pt, step_1.pt, ..."""
    run = tmp_path / name
    run.mkdir(parents=True)
    for step, state in enumerate(states):
        torch.save(state, run / f"step_{step}.pt")
    return run


def _fine_tuned(pretrained: dict[str, torch.Tensor], *, step: int, frozen: bool) -> dict[str, torch.Tensor]:
    """mlp()'s weights at a fine-tuning step: the pretrained body (moved unless frozen) under a new 3-class head."""
    torch.manual_seed(step)
    head = mlp(n_out=3, seed=7).state_dict()
    body = {key: value if frozen else value + 0.3 * torch.randn_like(value)
            for key, value in pretrained.items() if key.startswith("0.")}
    return {**body, "2.weight": head["2.weight"] + 0.1 * step, "2.bias": head["2.bias"]}


def test_a_pretrained_head_of_other_classes_is_named_as_a_replaced_head(tmp_path: Path) -> None:
    """The run's step 0 is the pretrained model (10 classes), the later steps the fine-tuned one (3 classes):
    the error said "wrong --model or --model-kwargs?", sending the user to change the model every other file
    fits. It now names the head and the ways to measure the fine-tuning."""
    pretrained = mlp(n_out=10, seed=1).state_dict()
    said = _refused(tmp_path, _run(tmp_path, "run", pretrained, *(_fine_tuned(pretrained, step=step, frozen=True)
                                                                  for step in (1, 5))))
    assert "only the outputs of module '2' differ (10 in the file, 3 in the model)" in said
    assert "head replaced for fine-tuning" in said and "--steps" in said and "before its first update" in said


def test_a_frozen_backbone_saved_before_its_first_update_reads_coefficient(tmp_path: Path) -> None:
    """The recipe the error gives: step 0 saved as the fine-tuning model before its first update (the pretrained
    body under the new head). A frozen body then reads coefficient, a trained one does not."""
    pretrained = mlp(n_out=10, seed=1).state_dict()
    verdicts = {}
    for frozen in (True, False):
        run = _run(tmp_path, f"frozen_{frozen}", *(_fine_tuned(pretrained, step=step, frozen=frozen or not step)
                                                    for step in (0, 1, 5)))
        assert fdl_in_process("analyze", run, "--model", MODEL, "--probe", _probe(tmp_path),
                              "--out", tmp_path / f"{frozen}.h5").returncode == 0
        verdicts[frozen] = fdl_in_process("classify", tmp_path / f"{frozen}.h5").stderr
    assert "regime: coefficient" in verdicts[True]
    assert "regime: coefficient" not in verdicts[False]


def test_lora_adapters_beside_the_base_weights_are_named_with_their_fixes(tmp_path: Path) -> None:
    """peft's unmerged state_dict (`base_layer` beside `lora_A`/`lora_B`) and a file of adapters alone, loaded
    into the plain model: both were "wrong --model or --model-kwargs?"."""
    base = mlp(n_out=3).state_dict()
    adapters = {"0.lora_A": torch.zeros(2, 4), "0.lora_B": torch.zeros(8, 2)}
    unmerged = {"0.base_layer.weight": base["0.weight"], "0.base_layer.bias": base["0.bias"], **adapters,
                "2.weight": base["2.weight"], "2.bias": base["2.bias"]}
    alone = {**adapters, "2.weight": base["2.weight"], "2.bias": base["2.bias"]}
    said = {name: _refused(tmp_path, _run(tmp_path, name, state)) for name, state in (("unmerged", unmerged),
                                                                                       ("alone", alone))}
    assert all("LoRA adapters (0.lora_A, 0.lora_B)" in text for text in said.values())
    assert "beside the base weights" in said["unmerged"] and "merge_and_unload()" in said["unmerged"]
    assert "without the base weights" in said["alone"] and "one file per step" in said["alone"]


def test_a_backbone_saved_without_its_head_or_prefix_is_named_so(tmp_path: Path) -> None:
    """A pretrained backbone saved alone (`backbone.state_dict()`: its keys without the model's `backbone.`, no
    head) as step 0 of a run of the whole model."""
    from torch import nn

    model = tmp_path / "net.py"
    model.write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.Tanh())\n"
        "        self.head = nn.Linear(8, 3)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.backbone(x))\n"
        "def build():\n"
        "    return Net()\n")
    said = _refused(tmp_path, _run(tmp_path, "run", nn.Sequential(nn.Linear(4, 8), nn.Tanh()).state_dict()),
                    model=f"{model}:build")
    assert "the weights of the model's backbone alone (its keys without 'backbone.'; none of head)" in said


def test_merged_weights_into_a_model_built_with_adapters_are_named_so(tmp_path: Path) -> None:
    """The factory builds the model with its LoRA adapters, the files hold the merged weights (no adapters)."""
    model = tmp_path / "lora.py"
    model.write_text(
        "import torch\n"
        "from torch import nn\n"
        "class LoRA(nn.Module):\n"
        "    def __init__(self, base):\n"
        "        super().__init__()\n"
        "        self.base_layer = base\n"
        "        self.lora_A = nn.Parameter(torch.zeros(2, base.in_features))\n"
        "        self.lora_B = nn.Parameter(torch.zeros(base.out_features, 2))\n"
        "    def forward(self, x):\n"
        "        return self.base_layer(x) + x @ self.lora_A.T @ self.lora_B.T\n"
        "def build():\n"
        "    return nn.Sequential(LoRA(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 3))\n")
    said = _refused(tmp_path, _run(tmp_path, "run", mlp(n_out=3).state_dict()), model=f"{model}:build")
    assert "the model built holds LoRA adapters (0.lora_A, 0.lora_B) that the file lacks" in said


def test_a_pretrained_file_without_a_step_given_beside_the_run_is_told_to_carry_one(tmp_path: Path) -> None:
    """`fdl analyze base.pt run/`: the model before fine-tuning given as a file of no step. The fix offered only
    the --step-regex of its folder's name (`exp(\\d+)/`: step 3 for every file of exp3/, which the run's own files
    then fail to match); naming the file with its step is what such a file needs."""
    pretrained = mlp(n_out=10, seed=1).state_dict()
    run = _run(tmp_path, "exp3/run", _fine_tuned(pretrained, step=1, frozen=False))
    torch.save(_fine_tuned(pretrained, step=0, frozen=True), tmp_path / "exp3" / "base.pt")
    said = _refused(tmp_path, tmp_path / "exp3" / "base.pt", run)
    assert "cannot tell the training step of" in said
    assert "or put its step in its name (step_0.pt for the model before training)" in said

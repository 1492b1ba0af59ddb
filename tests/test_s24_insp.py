"""Session 24: `fdl inspect` of a checkpoint of weights without a model. Listing the file's tensors is the answer
asked for, so it now ends with a note (what needs a model, how to give one) and exit 0; it ended with an error and
exit 1, which read as a failure. `--json` carries the same note (`"needs_model"`). Real failures stay exit 1: an
unreadable file, a model given that fails, and --probe or --model-kwargs given with no model to use them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.test_analyze import fdl
from tests.test_s20_toml import MODEL, _run, _said
from tests.tiny_models import mlp

NOTE = ("note: no model was given, so only the file's tensors are listed: the modules, their output shapes and the "
        "default feature layer (and its number of features) need the model; pass --model path/model.py:factory (or "
        "pkg.module:factory), or add model = \"path/model.py:factory\" to ")


def test_inspect_without_a_model_lists_the_tensors_and_ends_with_a_note_exit_0(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    done = fdl("inspect", run / "step_10.pt")
    assert done.code == 0 and done.stdout == "", done.stderr
    said = _said(done)
    assert "error" not in said and "Traceback" not in said, said
    assert "total: 67 values in 4 tensors" in said
    # the note comes last, below the listing, and names the fdl.toml that inspect would read
    assert said.endswith(NOTE + str(run / "fdl.toml")), said
    assert said.index("step: 10 (from its name)") < said.index("note: no model was given")


def test_inspect_json_without_a_model_says_why_the_modules_are_null(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    save_file(mlp().state_dict(), str(run / "step_20.safetensors"))
    done = fdl("inspect", run / "step_20.safetensors", "--json")
    assert done.code == 0, done.stderr
    listed = json.loads(done.stdout)  # one clean document
    assert listed["modules"] is None and listed["default_layer"] is None and listed["default_features"] is None
    assert listed["needs_model"] == NOTE.removeprefix("note: ") + str(run / "fdl.toml")
    assert [row["name"] for row in listed["tensors"]] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert "error" not in done.stderr
    # with a model: the key is there, null
    modelled = fdl("inspect", run / "step_20.safetensors", "--model", MODEL, "--json")
    assert modelled.code == 0, modelled.stderr
    document = json.loads(modelled.stdout)
    assert document["needs_model"] is None and document["default_layer"] == "2:input"
    assert document["default_features"] == 8


def test_inspect_of_lightning_training_loop_and_folder_without_a_model_exit_0(tmp_path: Path) -> None:
    state = mlp().state_dict()
    lightning = tmp_path / "light"
    lightning.mkdir()
    torch.save({"epoch": 1, "global_step": 50, "pytorch-lightning_version": "2.1.0",
                "state_dict": {f"model.{key}": value for key, value in state.items()},
                "optimizer_states": [], "lr_schedulers": [], "callbacks": {}, "loops": {}},
               lightning / "epoch=1-step=50.ckpt")
    loop = tmp_path / "loop"
    loop.mkdir()
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "step": 7}, loop / "ckpt.pt")
    folder = tmp_path / "folder"
    folder.mkdir()
    for step in (0, 5):
        torch.save(state, folder / f"step_{step}.pt")
    for checkpoint, step in ((lightning / "epoch=1-step=50.ckpt", "step: 50 (from its metadata's global_step)"),
                             (loop / "ckpt.pt", "step: 7 (from its metadata's step)"),
                             (folder, "step: 0 (from its name)")):
        done = fdl("inspect", checkpoint)
        said = _said(done)
        assert done.code == 0 and step in said and "total: 67 values in 4 tensors" in said, said
        assert said.endswith(NOTE + str(checkpoint.parent if checkpoint.is_file() else checkpoint) + "/fdl.toml"), said


def test_inspect_still_fails_when_a_model_given_fails_or_the_file_is_unreadable(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    (run / "model.py").write_text("def broken():\n    raise RuntimeError('boom')\n")
    failed = fdl("inspect", run / "step_10.pt", "--model", str(run / "model.py") + ":broken")
    assert failed.code == 1 and "building the model for" in failed.stderr and "boom" in failed.stderr
    wrong = fdl("inspect", run / "step_10.pt", "--model", MODEL, "--model-kwargs", '{"hidden": 5}')
    assert wrong.code == 1 and "do not fit the model" in wrong.stderr
    (run / "step_30.pt").write_bytes(b"not a checkpoint at all")
    garbage = fdl("inspect", run / "step_30.pt")
    assert garbage.code == 1 and "not a checkpoint" in garbage.stderr and "tensors of" not in garbage.stderr
    # an fdl.toml whose model does not fit the weights: the model was given (by the file), and fails
    (run / "fdl.toml").write_text(f'model = "{MODEL}"\nmodel_kwargs = {{ hidden = 16 }}\n')
    assert fdl("inspect", run / "step_10.pt").code == 1


def test_inspect_refuses_a_probe_or_model_kwargs_it_has_no_model_to_use(tmp_path: Path) -> None:
    """Exit 0 without a model must not pass over options that only a model uses: `--probe missing.npz` (even a
    file that does not exist) and `--model-kwargs` were silently ignored below the error, which now is a note."""
    run = _run(tmp_path / "run")
    for option, value in (("--probe", str(run / "missing.npz")), ("--probe", str(run / "probe.npz")),
                          ("--model-kwargs", '{"hidden": 8}')):
        for extra in ((), ("--json",)):
            done = fdl("inspect", run / "step_10.pt", option, value, *extra)
            said = _said(done)
            assert done.code == 1 and "Traceback" not in said, said
            assert (f"error: {option} was given, but there is no model to use it: {run / 'step_10.pt'} holds weights "
                    "only, whose tensors are listed") in said, said
            assert "fix: pass --model path/model.py:factory (or pkg.module:factory)" in said, said
            if extra:
                assert json.loads(done.stdout)["modules"] is None  # the listing stays a clean document
            else:
                assert "total: 67 values in 4 tensors" in said


def test_inspect_help_says_what_it_lists_without_a_model() -> None:
    text = " ".join(fdl("inspect", "--help").stdout.split())
    assert ("Without a model, the tensors of a file of weights are listed (exit 0), with a note of what needs the "
            "model.") in text, text


def test_a_file_given_alone_that_holds_no_weights_is_not_told_to_pass_the_files(tmp_path: Path) -> None:
    """`fdl inspect optimizer.pt` (a Trainer's checkpoint folder holds it beside the weights): the fix said "point at
    a folder of .pt/... files (or pass the files)", to a user who had passed the file. It now says what file to
    give; analyze, which shares the error, alike."""
    model = torch.nn.Linear(2, 2)
    torch.save(torch.optim.Adam(model.parameters()).state_dict(), tmp_path / "optimizer.pt")
    torch.save({"lr": 0.1, "last_epoch": 3}, tmp_path / "scheduler.pt")
    fix = ("fix: give a file of the model's weights (a state_dict, or a training-loop dict holding one, as "
           "model_state_dict), or the run's folder")
    for command, got in ((("inspect", tmp_path / "optimizer.pt"), "got: skipped optimizer.pt: optimizer state"),
                         (("inspect", tmp_path / "scheduler.pt"), "got: skipped scheduler.pt: no tensors"),
                         (("analyze", tmp_path / "optimizer.pt", tmp_path / "scheduler.pt", "--model", MODEL,
                           "-o", tmp_path / "s.h5"), "got: skipped optimizer.pt: optimizer state")):
        done = fdl(*command)
        said = _said(done)
        assert done.code == 1 and "error: no checkpoints found in" in said and got in said and fix in said, said
        assert "or pass the files" not in said
    assert not (tmp_path / "s.h5").exists()


def test_inspect_of_a_torchscript_checkpoint_runs_a_random_input_for_its_first_layer(tmp_path: Path) -> None:
    """A TorchScript checkpoint without --probe ran no forward pass ("sample: none: the model has no nn.Linear,
    Conv2d or nn.Embedding", "width unknown"): its compiled layers are no torch.nn instances. They keep the class's
    name and in_features (in_channels, num_embeddings), which now shape the random input as an eager model's."""
    from tests.tiny_models import cnn, token_mlp

    for name, model, sample, features in (
        ("mlp", mlp(), "a random float input of shape (1, 4), for the first nn.Linear (program.0)", 8),
        ("cnn", cnn(channels=3).eval(), "a random float input of shape (1, 3, 32, 32), for the first Conv2d (program.0)",
         4),
        ("tokens", token_mlp(), "random token ids in [0, 11) of shape (1, 8), int64, for the first nn.Embedding "
                                "(program.embed)", 8),
    ):
        path = tmp_path / f"{name}_1.pt"
        torch.jit.save(torch.jit.script(model), str(path))
        done = fdl("inspect", path, "--json", "--trust-pickle")  # a TorchScript program is code (test_s25_sec.py)
        assert done.code == 0, done.stderr
        listed = json.loads(done.stdout)
        assert listed["sample"].startswith(sample), listed["sample"]
        assert listed["default_layer"] == "last_linear_op:input" and listed["default_features"] == features
        shown = _said(fdl("inspect", path, "--trust-pickle"))
        assert f"default feature layer: last_linear_op:input ({features} features; the input of the last" in shown

"""Checkpoint discovery, ordering, loading, model building and manifests on tiny models."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import (
    CheckpointRef,
    build_model,
    discover_checkpoints,
    load_checkpoint,
    read_manifest,
    resolve_model_factory,
    sha256_file,
    weights_digest,
)
from fdl_cli.errors import CheckpointError, ModelError, UnsafeCheckpointError
from tests import warm
from tests.tiny_models import cnn, mlp

torch.set_num_threads(1)
X = torch.linspace(-1, 1, 8).reshape(2, 4)


def _sd(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in mlp(seed=seed).state_dict().items()}


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def _only(folder: Path, **kwargs: object) -> CheckpointRef:
    found = discover_checkpoints([folder], **kwargs)  # type: ignore[arg-type]
    assert len(found.checkpoints) == 1, found
    return found.checkpoints[0]


def _assert_loads_mlp(ref: CheckpointRef, seed: int) -> None:
    model = build_model(load_checkpoint(ref), factory=mlp)
    torch.testing.assert_close(_outputs(model), _outputs(mlp(seed=seed)))
    assert not model.training


# --------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_raw_state_dict_each_suffix(tmp_path: Path, suffix: str) -> None:
    torch.save(_sd(3), tmp_path / f"step_7{suffix}")
    ref = _only(tmp_path)
    assert (ref.step, ref.step_source, ref.kind) == (7, "name", "state_dict")
    _assert_loads_mlp(ref, 3)


def test_training_loop_dict_with_ddp_prefix_and_metadata_step(tmp_path: Path) -> None:
    ddp = {f"module.{k}": v for k, v in _sd(1).items()}
    optim = torch.optim.SGD(mlp().parameters(), lr=0.1, momentum=0.9).state_dict()
    torch.save({"model_state_dict": ddp, "optimizer": optim, "global_step": 250, "loss": 0.3}, tmp_path / "ckpt_1.pt")
    ref = _only(tmp_path)
    assert (ref.step, ref.step_source) == (250, "metadata:global_step")
    loaded = load_checkpoint(ref)
    assert loaded.metadata["global_step"] == 250
    assert loaded.state_dict is not None and set(loaded.state_dict) == set(_sd(1))
    _assert_loads_mlp(ref, 1)


def test_numpy_scalars_in_training_dict_load_without_trust(tmp_path: Path) -> None:
    import numpy as np

    torch.save({"net": _sd(3), "best_acc": np.float64(0.9), "global_step": np.int64(70)}, tmp_path / "c.pt")
    ref = _only(tmp_path)
    assert (ref.kind, ref.step, ref.step_source) == ("state_dict", 70, "metadata:global_step")
    _assert_loads_mlp(ref, 3)


def test_nested_and_compiled_prefix(tmp_path: Path) -> None:
    compiled = {f"_orig_mod.{k}": v for k, v in _sd(2).items()}
    torch.save({"model": {"state_dict": compiled}, "epoch": 4}, tmp_path / "run.ckpt")
    ref = _only(tmp_path)
    assert (ref.step, ref.step_source) == (4, "metadata:epoch")
    _assert_loads_mlp(ref, 2)


def test_lightning_style_prefix_is_dropped_by_build_model(tmp_path: Path) -> None:
    torch.save({"state_dict": {f"model.{k}": v for k, v in _sd(5).items()}}, tmp_path / "e_1.ckpt")
    _assert_loads_mlp(_only(tmp_path), 5)


def test_integer_buffers_kept(tmp_path: Path) -> None:
    torch.save(cnn().state_dict(), tmp_path / "c_0.pt")
    loaded = load_checkpoint(_only(tmp_path))
    assert loaded.state_dict is not None
    assert loaded.state_dict["1.num_batches_tracked"].dtype == torch.int64
    build_model(loaded, factory=cnn)


def test_safetensors_single_with_metadata_step(tmp_path: Path) -> None:
    save_file(_sd(4), str(tmp_path / "weights_999.safetensors"), metadata={"step": "12"})
    ref = _only(tmp_path)
    assert (ref.step, ref.step_source, ref.kind) == (12, "metadata:step", "safetensors")
    _assert_loads_mlp(ref, 4)


def _write_sharded(folder: Path, sd: dict[str, torch.Tensor]) -> None:
    folder.mkdir()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    weight_map = {}
    for shard, names in shards.items():
        save_file({k: sd[k] for k in names}, str(folder / shard))
        weight_map.update(dict.fromkeys(names, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_hf_subfolders_sharded_and_single_with_trainer_state(tmp_path: Path) -> None:
    _write_sharded(tmp_path / "checkpoint-500", _sd(5))
    (tmp_path / "checkpoint-500" / "trainer_state.json").write_text(json.dumps({"global_step": 40}))
    torch.save(torch.optim.SGD(mlp().parameters(), lr=1.0).state_dict(), tmp_path / "checkpoint-500" / "optimizer.pt")
    (tmp_path / "checkpoint-60").mkdir()
    save_file(_sd(6), str(tmp_path / "checkpoint-60" / "model.safetensors"))
    (tmp_path / "checkpoint-7").mkdir()
    torch.save(_sd(7), tmp_path / "checkpoint-7" / "pytorch_model.bin")
    found = discover_checkpoints([tmp_path])
    assert [(r.path.name, r.step, r.kind) for r in found.checkpoints] == [
        ("checkpoint-7", 7, "hf_dir"),
        ("checkpoint-500", 40, "hf_dir"),
        ("checkpoint-60", 60, "hf_dir"),
    ]
    assert found.checkpoints[1].step_source == "trainer_state.json:global_step"
    for ref, seed in zip(found.checkpoints, (7, 5, 6), strict=True):
        _assert_loads_mlp(ref, seed)


def test_folder_given_directly_is_one_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-30"
    _write_sharded(folder, _sd(2))
    torch.save({"lr": 0.1, "last_epoch": 3}, folder / "scheduler.pt")
    found = discover_checkpoints([folder])
    assert [(r.path, r.step) for r in found.checkpoints] == [(folder, 30)]
    assert any("scheduler.pt" in n for n in found.notes)


def test_torchscript_and_export_need_no_factory(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(mlp(seed=8)), str(tmp_path / "ts_1.pt"))
    program = torch.export.export(mlp(seed=9), (X,))
    torch.export.save(program, str(tmp_path / "ex_2.pt2"))
    found = discover_checkpoints([tmp_path])
    assert [(r.step, r.kind) for r in found.checkpoints] == [(1, "torchscript"), (2, "export")]
    for ref, seed in zip(found.checkpoints, (8, 9), strict=True):
        # torch.export.load and a TorchScript program can run code: each loads only on trust (test_security.py,
        # test_s25_sec.py)
        loaded = load_checkpoint(ref, trust_pickle=True)
        assert loaded.state_dict is None and loaded.module is not None
        model = build_model(loaded, factory=None)
        torch.testing.assert_close(_outputs(model), _outputs(mlp(seed=seed)))


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    torch.save(mlp(seed=4), tmp_path / "full_3.pt")
    ref = _only(tmp_path)
    assert ref.kind == "pickle"
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(ref)
    message = str(err.value)
    assert "full_3.pt" in message and "--trust-pickle" in message
    assert "torch.nn.modules.linear.Linear" in message
    model = build_model(load_checkpoint(ref, trust_pickle=True), factory=None)
    torch.testing.assert_close(_outputs(model), _outputs(mlp(seed=4)))


# -------------------------------------------------------------------------------- ordering


def test_numeric_order_not_lexicographic(tmp_path: Path) -> None:
    for step in (10, 9, 100, 1):
        torch.save(_sd(step), tmp_path / f"epoch_{step}.pt")
    found = discover_checkpoints([tmp_path])
    assert [r.path.name for r in found.checkpoints] == ["epoch_1.pt", "epoch_9.pt", "epoch_10.pt", "epoch_100.pt"]


def test_metadata_overrides_name(tmp_path: Path) -> None:
    torch.save({"state_dict": _sd(1), "step": 2000}, tmp_path / "a_1.pt")
    torch.save({"state_dict": _sd(2), "step": 1000}, tmp_path / "b_2.pt")
    found = discover_checkpoints([tmp_path])
    assert [(r.path.name, r.step) for r in found.checkpoints] == [("b_2.pt", 1000), ("a_1.pt", 2000)]


def test_last_integer_of_name_and_step_regex(tmp_path: Path) -> None:
    torch.save(_sd(1), tmp_path / "ckpt-3-of-10.pt")
    assert _only(tmp_path).step == 10
    ref = _only(tmp_path, step_regex=r"ckpt-(\d+)-of")
    assert (ref.step, ref.step_source) == (3, "step_regex")


def test_step_regex_without_match_skips_in_a_folder_and_names_an_explicit_file(tmp_path: Path) -> None:
    torch.save(_sd(1), tmp_path / "model_1.pt")
    torch.save(_sd(2), tmp_path / "step2.pt")
    found = discover_checkpoints([tmp_path], step_regex=r"step(\d+)")
    assert [(r.path.name, r.step) for r in found.checkpoints] == [("step2.pt", 2)]
    assert found.notes == [
        "skipped model_1.pt: --step-regex 'step(\\d+)' does not match its name (rename it, or select files with --glob)"
    ]
    with pytest.raises(CheckpointError, match="does not match model_1.pt"):
        discover_checkpoints([tmp_path / "model_1.pt"], step_regex=r"step(\d+)")
    with pytest.raises(CheckpointError, match="no capture group"):
        discover_checkpoints([tmp_path], step_regex=r"step\d+")


def test_no_step_anywhere_skips_in_a_folder_and_suggests_step_regex_for_an_explicit_file(tmp_path: Path) -> None:
    for step in (0, 10):
        torch.save(_sd(step), tmp_path / f"ckpt_{step}.pt")
    torch.save(_sd(1), tmp_path / "final.pt")
    found = discover_checkpoints([tmp_path])
    assert [r.path.name for r in found.checkpoints] == ["ckpt_0.pt", "ckpt_10.pt"]
    assert found.notes == [
        "skipped final.pt: no training step in its metadata or name (rename it, or select files with --glob)"
    ]
    with pytest.raises(CheckpointError, match="cannot tell the training step of .*final.pt") as err:
        discover_checkpoints([tmp_path / "ckpt_0.pt", tmp_path / "final.pt"])
    assert "--step-regex" in str(err.value)
    (tmp_path / "ckpt_0.pt").unlink()
    (tmp_path / "ckpt_10.pt").unlink()
    with pytest.raises(CheckpointError, match="no checkpoints found") as err:
        discover_checkpoints([tmp_path])
    assert "skipped final.pt: no training step" in str(err.value)


def test_same_step_different_weights_is_an_error_naming_both(tmp_path: Path) -> None:
    torch.save(_sd(1), tmp_path / "a_5.pt")
    torch.save(_sd(2), tmp_path / "b_5.pt")
    with pytest.raises(CheckpointError) as err:
        discover_checkpoints([tmp_path])
    assert "a_5.pt" in str(err.value) and "b_5.pt" in str(err.value) and "--step-regex" in str(err.value)


def _five(tmp_path: Path) -> None:
    for step in (0, 100, 200, 300, 400):
        torch.save(_sd(step), tmp_path / f"s_{step}.pt")


def test_steps_and_every(tmp_path: Path) -> None:
    _five(tmp_path)
    assert [r.step for r in discover_checkpoints([tmp_path], steps=[300, 0]).checkpoints] == [0, 300]
    assert [r.step for r in discover_checkpoints([tmp_path], every=2).checkpoints] == [0, 200, 400]
    assert [r.step for r in discover_checkpoints([tmp_path], every=3).checkpoints] == [0, 300, 400]
    with pytest.raises(CheckpointError, match="50, 60"):
        discover_checkpoints([tmp_path], steps=[0, 50, 60])


def test_glob_filters_names(tmp_path: Path) -> None:
    _five(tmp_path)
    torch.save(_sd(9), tmp_path / "other_1.pt")
    assert [r.step for r in discover_checkpoints([tmp_path], glob="s_*").checkpoints] == [0, 100, 200, 300, 400]


def test_stdin_and_explicit_files(tmp_path: Path) -> None:
    _five(tmp_path)
    stdin = io.StringIO(f"{tmp_path / 's_300.pt'}\n\n{tmp_path / 's_100.pt'}\n")
    found = discover_checkpoints(["-", tmp_path / "s_0.pt"], stdin=stdin)
    assert [r.step for r in found.checkpoints] == [0, 100, 300]


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope"):
        discover_checkpoints([tmp_path / "nope"])


# ------------------------------------------------------------------------ skipping, duplicates


def test_non_model_files_skipped_with_notes(tmp_path: Path) -> None:
    torch.save(_sd(1), tmp_path / "model_1.pt")
    torch.save(torch.optim.Adam(mlp().parameters()).state_dict(), tmp_path / "weights_2.pt")  # content, not name
    torch.save({"lr": [0.1], "epoch": 3}, tmp_path / "lr_state.pt")  # content, not name (scheduler.pt: by name)
    (tmp_path / "notes_3.pt").write_text("this is a text file\n")
    (tmp_path / "README.md").write_text("hello")
    found = discover_checkpoints([tmp_path])
    assert [r.path.name for r in found.checkpoints] == ["model_1.pt"]
    joined = "\n".join(found.notes)
    assert "weights_2.pt: optimizer state" in joined
    assert "lr_state.pt: no tensors" in joined
    assert "README.md" in joined
    # a text file named like a checkpoint is a bad checkpoint (tests/test_io_fixes.py), not a note
    assert "notes_3.pt" not in joined
    text_file = tmp_path / "notes_3.pt"
    assert [(p, r.splitlines()[0]) for p, r in found.bad] == [(text_file, f"{text_file} is a text file, not a checkpoint")]


def test_empty_folder_lists_what_was_there(tmp_path: Path) -> None:
    torch.save(torch.optim.SGD(mlp().parameters(), lr=1.0).state_dict(), tmp_path / "optimizer.pt")
    with pytest.raises(CheckpointError, match="no checkpoints found") as err:
        discover_checkpoints([tmp_path])
    assert "optimizer.pt" in str(err.value)


def test_identical_weights_flagged(tmp_path: Path) -> None:
    torch.save(_sd(1), tmp_path / "s_1.pt")
    torch.save(_sd(1), tmp_path / "s_2.pt")
    save_file(_sd(1), str(tmp_path / "s_3.safetensors"))
    torch.save(_sd(2), tmp_path / "s_4.pt")
    found = discover_checkpoints([tmp_path])
    assert [r.step for r in found.checkpoints] == [1, 2, 3, 4]
    assert [(a.name, b.name) for a, b in found.duplicates] == [("s_1.pt", "s_2.pt"), ("s_1.pt", "s_3.safetensors")]


def test_identical_copy_at_same_step_is_dropped_not_an_error(tmp_path: Path) -> None:
    torch.save({"state_dict": _sd(1), "step": 9}, tmp_path / "step_9.pt")
    torch.save({"state_dict": _sd(1), "step": 9}, tmp_path / "last.pt")
    found = discover_checkpoints([tmp_path])
    # the file named by its step is kept, not last.pt, which the trainer rewrites at its next save
    assert [r.path.name for r in found.checkpoints] == ["step_9.pt"]
    # the note says it; no second "hold identical weights" warning for the same pair
    assert found.duplicates == []
    assert "skipped last.pt: same weights and step (9) as step_9.pt" in found.notes


def test_a_lightning_last_copy_or_link_is_never_the_one_kept(tmp_path: Path) -> None:
    """Lightning's last.ckpt beside filename="{step}" names (step=9.ckpt sorts after last.ckpt), as a copy
    or as save_last="link"'s symbolic link: the store recorded last.ckpt for step 9, and a resume after
    the next save found the stored file changed ("refused")."""
    run = tmp_path / "checkpoints"
    run.mkdir()
    for step, seed in ((0, 0), (9, 1)):
        torch.save({"state_dict": _sd(seed), "global_step": step}, run / f"step={step}.ckpt")
    torch.save({"state_dict": _sd(1), "global_step": 9}, run / "last.ckpt")
    assert [r.path.name for r in discover_checkpoints([run]).checkpoints] == ["step=0.ckpt", "step=9.ckpt"]
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("step=0.ckpt", "step=9.ckpt"):
        (linked / name).write_bytes((run / name).read_bytes())
    (linked / "last.ckpt").symlink_to("step=9.ckpt")
    found = discover_checkpoints([linked])
    assert [r.path.name for r in found.checkpoints] == ["step=0.ckpt", "step=9.ckpt"] and found.duplicates == []


def test_weights_digest_and_sha256(tmp_path: Path) -> None:
    assert weights_digest(_sd(1)) == weights_digest(_sd(1))
    assert weights_digest(_sd(1)) != weights_digest(_sd(2))
    half = {k: v.half() for k, v in _sd(1).items()}
    assert weights_digest(half) != weights_digest(_sd(1))
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    _write_sharded(tmp_path / "d", _sd(1))
    first = sha256_file(tmp_path / "d")
    (tmp_path / "d" / "trainer_state.json").write_text("{}")
    assert sha256_file(tmp_path / "d") == first
    save_file(_sd(2), str(tmp_path / "d" / "model-00002-of-00002.safetensors"))
    assert sha256_file(tmp_path / "d") != first


# ----------------------------------------------------------------------------- corrupt files


def _corrupt_cases(tmp_path: Path) -> list[Path]:
    save_file(_sd(1), str(tmp_path / "trunc_1.safetensors"))
    data = (tmp_path / "trunc_1.safetensors").read_bytes()
    (tmp_path / "trunc_1.safetensors").write_bytes(data[:-20])
    (tmp_path / "rand_2.pt").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "empty_3.pt").write_bytes(b"")
    torch.save(_sd(1), tmp_path / "zip_4.pt")
    with zipfile.ZipFile(tmp_path / "zip_4.pt") as src, zipfile.ZipFile(tmp_path / "bad_4.pt", "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            dst.writestr(item, payload[: len(payload) // 2] if "/data/" in item.filename else payload)
    (tmp_path / "zip_4.pt").unlink()
    bad = _sd(1)
    bad["2.weight"][0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan_5.pt")
    return [tmp_path / n for n in ("trunc_1.safetensors", "rand_2.pt", "empty_3.pt", "bad_4.pt", "nan_5.pt")]


def test_corrupt_files_give_checkpoint_errors(tmp_path: Path) -> None:
    for path in _corrupt_cases(tmp_path):
        ref = CheckpointRef(path=path, step=1, step_source="name", kind="safetensors" if "trunc" in path.name
                            else "state_dict")
        with pytest.raises(CheckpointError, match=path.name) as err:
            load_checkpoint(ref)
        assert not isinstance(err.value, UnsafeCheckpointError), path
        assert "fix:" in str(err.value)
    with pytest.raises(CheckpointError, match="2.weight"):
        load_checkpoint(CheckpointRef(path=tmp_path / "nan_5.pt", step=5, step_source="name", kind="state_dict"))


def test_corrupt_files_in_discovery_are_errors_or_notes(tmp_path: Path) -> None:
    _corrupt_cases(tmp_path)
    (tmp_path / "trunc_1.safetensors").unlink()
    (tmp_path / "rand_2.pt").unlink()
    found = discover_checkpoints([tmp_path], glob="*_[345].pt")
    assert any("empty_3.pt" in n for n in found.notes)
    with pytest.raises(CheckpointError, match="bad_4.pt"):
        load_checkpoint(next(r for r in found.checkpoints if r.step == 4))


# ------------------------------------------------------------------------------ model building


def test_key_mismatch_names_keys_and_path(tmp_path: Path) -> None:
    sd = _sd(1)
    sd["extra.bias"] = torch.zeros(2)
    del sd["0.bias"]
    torch.save(sd, tmp_path / "k_1.pt")
    with pytest.raises(CheckpointError) as err:
        build_model(load_checkpoint(_only(tmp_path)), factory=mlp)
    message = str(err.value)
    assert "k_1.pt" in message and "0.bias" in message and "extra.bias" in message and "--model" in message


def test_shape_mismatch_names_shapes(tmp_path: Path) -> None:
    torch.save(mlp(hidden=16).state_dict(), tmp_path / "w_1.pt")
    with pytest.raises(CheckpointError) as err:
        build_model(load_checkpoint(_only(tmp_path)), factory=mlp, kwargs={"hidden": 8})
    assert "0.weight: checkpoint (16, 4) vs model (8, 4)" in str(err.value)
    model = build_model(load_checkpoint(_only(tmp_path)), factory=mlp, kwargs={"hidden": 16})
    assert model[0].weight.shape == (16, 4)


def test_weights_without_factory_is_a_model_error(tmp_path: Path) -> None:
    torch.save(_sd(1), tmp_path / "w_1.pt")
    with pytest.raises(ModelError, match="--model"):
        build_model(load_checkpoint(_only(tmp_path)), factory=None)


def test_resolve_model_factory(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "import torch\n\ndef build(width=3):\n    return torch.nn.Linear(2, width)\n"
    )
    factory = resolve_model_factory("net.py:build", base_dir=tmp_path)
    assert factory(width=5).out_features == 5
    assert resolve_model_factory("torch.nn:Identity")() is not None
    with pytest.raises(ModelError, match="nothere"):
        resolve_model_factory("net.py:nothere", base_dir=tmp_path)
    with pytest.raises(ModelError, match="missing.py"):
        resolve_model_factory("missing.py:build", base_dir=tmp_path)
    with pytest.raises(ModelError, match="no_such_pkg_xyz"):
        resolve_model_factory("no_such_pkg_xyz.mod:build")
    with pytest.raises(ModelError, match="module:factory"):
        resolve_model_factory("justaname")


# ---------------------------------------------------------------------------------- manifest


def test_manifest(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    (tmp_path / "fdl.toml").write_text(
        'model = "model.py:build"\nlayer = "0"\ntop_k = 8\n'
        "[model_kwargs]\nhidden = 8\n[probe]\ntrain = \"a.npz\"\ntest = \"sub/b.npz\"\n"
    )
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    assert manifest.model == f"{(tmp_path / 'model.py').resolve()}:build"
    assert manifest.model_kwargs == {"hidden": 8}
    assert manifest.probe == [f"train={(tmp_path / 'a.npz').resolve()}", f"test={(tmp_path / 'sub/b.npz').resolve()}"]
    assert manifest.layer == ["0"]
    assert manifest.options == {"top_k": 8}
    (tmp_path / "fdl.toml").write_text('model = "pkg.mod:f"\nprobe = ["p.npz"]\n')
    again = read_manifest(tmp_path)
    assert again is not None and again.model == "pkg.mod:f" and again.probe == [str((tmp_path / "p.npz").resolve())]


def test_bad_manifest(tmp_path: Path) -> None:
    (tmp_path / "fdl.toml").write_text("model = \n")
    with pytest.raises(CheckpointError, match="fdl.toml"):
        read_manifest(tmp_path)
    (tmp_path / "fdl.toml").write_text("layer = 3\n")
    with pytest.raises(CheckpointError, match="layer"):
        read_manifest(tmp_path)


def test_finite_check_by_sum_is_exact() -> None:
    """The one-pass finite check: a NaN or an Inf anywhere is found; finite values whose sum
    overflows are not mistaken for Inf (the entries are then checked one by one)."""
    from fdl_cli.checkpoints import _all_finite

    values = torch.linspace(-1.0, 1.0, 1001)
    assert _all_finite(values) and _all_finite(torch.empty(0))
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = values.clone()
        broken[517] = bad
        assert not _all_finite(broken), bad
    both = values.clone()
    both[3], both[9] = float("inf"), float("-inf")
    assert not _all_finite(both)
    huge = torch.full((8,), 60000.0, dtype=torch.float16)  # the float16 sum overflows; every entry is finite
    assert not bool(torch.isfinite(huge.sum())) and _all_finite(huge)
    assert _all_finite(torch.full((4,), 3e38)) and not _all_finite(torch.tensor([3e38, float("nan")]))
    assert not _all_finite(torch.tensor([1 + 1j, complex(0, float("nan"))]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_finite_check_of_16_bit_and_strided_tensors(dtype: torch.dtype) -> None:
    """The bit-pattern check of the 16-bit floats and numpy's check of strided views find every NaN
    and Inf, and nothing else: the largest finite value and the smallest subnormals pass."""
    from fdl_cli.checkpoints import _all_finite

    info = torch.finfo(dtype)
    edges = torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4, 0.0, -0.0], dtype=dtype)
    assert _all_finite(edges)
    grid = torch.linspace(-2.0, 2.0, 40 * 30, dtype=dtype).reshape(40, 30)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = grid.clone()
        broken[31, 7] = bad
        assert not _all_finite(broken), bad
        assert not _all_finite(broken.T), bad  # a transposed (non-contiguous) view
        assert _all_finite(broken[:, ::8]) and not _all_finite(broken[:, 7::8]), bad  # strided columns


FLOAT8 = [getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                                             "float8_e8m0fnu") if hasattr(torch, name)]


@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
def test_finite_check_of_float8_agrees_with_torch(dtype: torch.dtype) -> None:
    """Every one of the 256 float8 bit patterns is judged as torch.isfinite judges it, alone and in a
    tensor larger than one block of the check."""
    from fdl_cli import checkpoints

    patterns = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    expected = torch.isfinite(patterns.to(torch.float32))
    for value, finite in zip(patterns, expected, strict=True):
        assert checkpoints._all_finite(value.reshape(1)) == bool(finite), int(value.view(torch.uint8))
    bad = int(torch.nonzero(~expected)[0])
    size = checkpoints._FINITE_BLOCK * 2 + 17
    tensor = torch.ones(size).to(dtype)
    assert checkpoints._all_finite(tensor)
    tensor.view(torch.uint8)[size - 3] = bad  # in the last, partial block
    assert not checkpoints._all_finite(tensor)


def test_finite_check_of_conjugate_negative_sparse_and_large_16_bit_tensors() -> None:
    """Views with a conjugate or negative bit have their data's finiteness (no complex-to-real cast, no
    overflow of a float32 copy); sparse tensors are checked by their values; a NaN deep inside a
    bfloat16 tensor of several blocks is found."""
    from fdl_cli.checkpoints import _FINITE_BLOCK, _all_finite

    complex_nan = torch.tensor([1 + 1j, complex(0.0, float("nan"))])
    assert not _all_finite(complex_nan.conj()) and _all_finite(torch.tensor([1 + 1j, 2 - 1j]).conj())
    huge = torch._neg_view(torch.tensor([1e300, 2.0], dtype=torch.float64))
    assert huge.is_neg() and _all_finite(huge)
    assert not _all_finite(torch._neg_view(torch.tensor([1.0, float("inf")], dtype=torch.float64)))
    assert _all_finite(torch.eye(3).to_sparse())
    assert not _all_finite(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]).to_sparse())
    large = torch.ones(3 * _FINITE_BLOCK + 5, dtype=torch.bfloat16)
    assert _all_finite(large)
    large[2 * _FINITE_BLOCK + 1] = float("-inf")
    assert not _all_finite(large)


LOAD_IN_A_THREAD = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import torch
from fdl_cli.checkpoints import discover_checkpoints, load_checkpoint
torch.set_num_threads(2)
torch.randn(300, 300) @ torch.randn(300, 300)  # the main thread's team exists, as in `fdl analyze`
ref = discover_checkpoints([sys.argv[1]]).checkpoints[0]
count = lambda: len(list(Path("/proc/self/task").iterdir()))
with ThreadPoolExecutor(max_workers=1) as pool:
    pool.submit(lambda: None).result()  # the loader thread exists
    before = count()
    loaded = pool.submit(load_checkpoint, ref).result()
    print(before, count(), sorted(loaded.state_dict))
"""


ANALYZE_WATCHING_THE_LOADER = """
import json, sys, threading
from pathlib import Path
import torch
import fdl_cli.pipeline as pipeline
from fdl_cli.cli import main
torch.set_num_threads(2)

def others():  # OS threads that are not Python threads: OpenMP / BLAS workers
    python = {t.native_id for t in threading.enumerate()}
    return {int(task.name) for task in Path("/proc/self/task").iterdir()} - python

load, started = pipeline._load, []
def watched(*args, **kwargs):
    before = others()
    try:
        return load(*args, **kwargs)
    finally:
        started.append((threading.current_thread() is threading.main_thread(), len(others() - before)))
pipeline._load = watched
try:
    main(["analyze", *sys.argv[1:]])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(json.dumps(started))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_analyze_loads_in_its_thread_without_starting_threads(tmp_path: Path, suffix: str) -> None:
    """Through `fdl analyze` (2 torch threads, weights above OpenMP's grain size): loading each
    checkpoint in the loader thread starts no OpenMP or BLAS thread, for safetensors and .pt files."""
    import sys

    run = tmp_path / "run"
    run.mkdir()
    kwargs = {"n_in": 128, "hidden": 512}
    for step in (0, 10, 20):
        state = mlp(seed=step, **kwargs).state_dict()  # type: ignore[arg-type]
        if suffix == ".safetensors":
            save_file(state, str(run / f"step_{step}{suffix}"))
        else:
            torch.save(state, run / f"step_{step}{suffix}")
    generator = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(64, 128, generator=generator), "y": torch.randint(0, 3, (64,), generator=generator)},
               tmp_path / "probe.pt")
    argv = [str(run), "--model", "tests.tiny_models:mlp", "--model-kwargs", json.dumps(kwargs),
            "--probe", str(tmp_path / "probe.pt"), "--out", str(tmp_path / "out.h5"), "--batch-size", "32"]
    # a process of its own (2 torch threads; this one runs torch on one), warm (tests/warm.py): forked from an
    # interpreter that imported torch and started no thread, it runs the code as a fresh one would
    done = warm.run([sys.executable, "-c", ANALYZE_WATCHING_THE_LOADER, *argv], timeout=300,
                    cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    loads = json.loads(done.stdout.strip().splitlines()[-1])
    in_thread = [count for on_main, count in loads if not on_main]
    assert len(in_thread) >= 2, loads  # the checkpoints after the reference come through the loader
    assert in_thread == [0] * len(in_thread), loads


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_loading_in_a_thread_starts_no_openmp_team(tmp_path: Path) -> None:
    """`fdl analyze` loads the next checkpoint in a background thread. A torch operation there (the
    finite check used to sum each tensor in parallel) gives that thread an OpenMP team of its own, and
    libgomp, counting more threads than cores, then makes the main thread's workers sleep between
    operations: ~30 % slower forward passes on 2 cores. Loading must start no thread. (In a fresh
    process: this one runs torch on one thread.)"""
    import subprocess
    import sys

    path = tmp_path / "step_7.safetensors"
    tensors = {"weight": torch.randn(400, 400), "half": torch.randn(300, 300).to(torch.bfloat16)}
    if FLOAT8:
        tensors["eight"] = torch.randn(400, 400).to(FLOAT8[0])
    save_file(tensors, str(path))
    done = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_THREAD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, names = done.stdout.split(maxsplit=2)
    assert names.strip() == str(sorted(tensors))
    assert int(after) == int(before), f"loading started {int(after) - int(before)} thread(s)"


def test_epoch_only_metadata_with_other_numbers_in_names_gets_a_note(tmp_path: Path) -> None:
    """Files holding only an epoch are stored at their epochs; when their names hold other numbers
    (`ckpt_500.pt` is epoch 1) a note says so and gives the --step-regex that takes the names' numbers,
    which then gives those steps."""
    for epoch, step in ((1, 500), (2, 1000), (3, 1500)):
        torch.save({"model": _sd(epoch), "epoch": epoch}, tmp_path / f"ckpt_{step}.pt")
    found = discover_checkpoints([tmp_path])
    assert [(r.step, r.step_source) for r in found.checkpoints] == [(1, "metadata:epoch"), (2, "metadata:epoch"),
                                                                     (3, "metadata:epoch")]
    [note] = [n for n in found.notes if "epoch" in n]
    assert "ckpt_500.pt is epoch 1, its name says 500" in note
    regex = note.split("--step-regex '")[1].rstrip("'")
    assert [r.step for r in discover_checkpoints([tmp_path], step_regex=regex).checkpoints] == [500, 1000, 1500]
    assert not [n for n in discover_checkpoints([tmp_path], step_regex=regex).notes if "epoch" in n]


def test_epoch_only_metadata_matching_the_names_needs_no_note(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        torch.save({"model": _sd(epoch), "epoch": epoch}, tmp_path / f"epoch_{epoch}.pt")
    found = discover_checkpoints([tmp_path])
    assert [r.step for r in found.checkpoints] == [1, 2, 3]
    assert not [n for n in found.notes if "epoch" in n]

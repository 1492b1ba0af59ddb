"""`fdl analyze` end to end through the CLI: layouts, formats, manifest, stdin, probes, layers, resume, errors.

Numbers are checked against the brute-force reference of tests/reference.py on features recomputed
here with a plain forward pass.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.cli import main
from fdl_cli.store import StoreReader
from tests import warm
from tests.reference import reference_measures
from tests.tiny_models import mlp

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("rank", "d_lr", "output_rank", "dlr_alignment", "feature_pr", "eff_dim", "eff_dim_quality",
            "eff_dim_utility", "k90_quality", "k95_quality", "k99_quality", "k90_utility", "k95_utility",
            "k99_utility", "pi_star_C", "pi_hat_C", "nc1", "accuracy", "loss", "cross_entropy")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def fdl(*args: str, stdin: str | None = None) -> Result:
    """Run the CLI in-process, like the console script (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        sys.stdin = old_stdin
    return Result(code, out.getvalue(), err.getvalue())


MODEL_FILE = '''
import torch
from torch import nn


def build(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny training run: 4 checkpoints (raw state_dicts) of a 4-8-3 MLP, a probe, a model file."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    (root / "model.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    np.savez(root / "probe.npz", x=x, y=y)
    x_test = rng.normal(size=(30, 4)).astype(np.float32)
    np.savez(root / "test.npz", x=x_test, y=(x_test[:, 0] > 0).astype(np.int64))
    ckpts = root / "ckpts"
    ckpts.mkdir()
    model = mlp(4, 8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for step in range(0, 31):
        if step % 10 == 0:
            torch.save(model.state_dict(), ckpts / f"epoch_{step}.pt")
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return root


@pytest.fixture(scope="module")
def analysed_copy(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`analysed_copy(to, *extra)`: `to` becomes a copy of the store `analyze(run, ..., *extra)` makes (exit 0), analysed
    once for the module, the first time a test asks for it, under `to`'s file name: for the tests that start from
    the same store, each changing (or only reading) a copy of its own."""
    made: dict[tuple[str, ...], Path] = {}

    def copy(to: Path, *extra: str) -> Path:
        if extra not in made:
            path = tmp_path_factory.mktemp("analysed") / to.name
            done = analyze(run, path, *extra)
            assert done.code == 0, done.stderr
            made[extra] = path
        shutil.copyfile(made[extra], to)
        return to

    return copy


def brute_force(model_state: dict, probe: Path) -> dict:
    model = mlp(4, 8, 3)
    model.load_state_dict(model_state)
    data = np.load(probe)
    with torch.inference_mode():
        x = torch.from_numpy(data["x"])
        features = model[1](model[0](x)).double().numpy()
        outputs = model(x).double().numpy()
    return reference_measures(features, outputs, labels=data["y"]).scalars


def assert_matches(record: dict, expected: dict) -> None:
    for name in COMPARED:
        if expected[name] is None:
            assert record[name] is None, name
        else:
            assert record[name] == pytest.approx(expected[name], rel=1e-8, abs=1e-12), name


def analyze(run: Path, out: Path, *extra: str, sources: tuple[str, ...] | None = None) -> Result:
    return fdl("analyze", *(sources or (str(run / "ckpts"),)), "--model", f"{run}/model.py:build",
               "--probe", str(run / "probe.npz"), "--out", str(out), "--json", *extra)


def test_folder_of_state_dicts_matches_brute_force(run: Path, tmp_path: Path) -> None:
    result = analyze(run, tmp_path / "s.h5")
    assert result.code == 0, result.stderr
    records = result.records
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    for record in records:
        state = torch.load(run / "ckpts" / f"epoch_{record['step']}.pt", weights_only=True)
        assert_matches(record, brute_force(state, run / "probe.npz"))
    assert records[0]["cka_init"] == pytest.approx(1.0) and records[0]["cka_prev"] is None
    assert records[0]["param_dist_init"] == 0.0
    assert records[-1]["param_dist_init"] > 0.0
    # The store holds exactly what was printed.
    with StoreReader(tmp_path / "s.h5") as reader:
        stored = reader.records()
    assert stored == records


def test_numeric_order_and_step_selection(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "order"
    folder.mkdir()
    state = torch.load(run / "ckpts" / "epoch_0.pt", weights_only=True)
    for step in (9, 10, 100, 2):
        tweaked = {k: v + 0.01 * step for k, v in state.items()}
        torch.save(tweaked, folder / f"epoch_{step}.pt")
    result = analyze(run, tmp_path / "o.h5", sources=(str(folder),))
    assert result.code == 0, result.stderr
    assert [r["step"] for r in result.records] == [2, 9, 10, 100]
    picked = analyze(run, tmp_path / "p.h5", "--steps", "9,100", sources=(str(folder),))
    assert [r["step"] for r in picked.records] == [9, 100]


def _save_variants(run: Path, root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """The same weights in every supported layout: name -> (sources, extra options)."""
    states = {s: torch.load(run / "ckpts" / f"epoch_{s}.pt", weights_only=True) for s in (0, 30)}
    variants: dict[str, tuple[list[str], list[str]]] = {}
    model_opt = ["--model", f"{run}/model.py:build"]
    # training-loop dicts with a DDP prefix, .ckpt and .bin and .pth
    loop = root / "loop"
    loop.mkdir()
    for step, state in states.items():
        suffix = ".ckpt" if step == 0 else ".bin"
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "step": step,
                    "optimizer": {"lr": 0.1}}, loop / f"run{suffix}" if False else loop / f"ck_{step}{suffix}")
    variants["training-loop dict"] = ([str(loop)], model_opt)
    # safetensors single files
    single = root / "single"
    single.mkdir()
    for step, state in states.items():
        save_file({k: v.contiguous() for k, v in state.items()}, single / f"s_{step}.safetensors")
    variants["safetensors"] = ([str(single)], model_opt)
    # Hugging Face sub-folders with sharded safetensors + index
    hf = root / "hf"
    hf.mkdir()
    for step, state in states.items():
        sub = hf / f"checkpoint-{step}"
        sub.mkdir()
        names = sorted(state)
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        weight_map = {}
        for shard, keys in shards.items():
            save_file({k: state[k].contiguous() for k in keys}, sub / shard)
            weight_map.update({k: shard for k in keys})
        (sub / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    variants["hf sharded"] = ([str(hf)], model_opt)
    # TorchScript and torch.export: no --model
    scripted = root / "script"
    scripted.mkdir()
    exported = root / "export"
    exported.mkdir()
    for step, state in states.items():
        model = mlp(4, 8, 3)
        model.load_state_dict(state)
        model.eval()
        torch.jit.save(torch.jit.script(model), scripted / f"m_{step}.pt")
        program = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, exported / f"m_{step}.pt2")
    variants["torchscript"] = ([str(scripted)], ["--trust-pickle"])  # a TorchScript program is code too
    variants["torch.export"] = ([str(exported)], ["--trust-pickle"])  # torch.export.load can run code: on trust only
    # explicit files, and paths on stdin
    variants["explicit files"] = ([str(run / "ckpts" / "epoch_0.pt"), str(run / "ckpts" / "epoch_30.pt")], model_opt)
    return variants


def test_every_layout_gives_the_same_numbers(run: Path, tmp_path: Path) -> None:
    expected = {s: brute_force(torch.load(run / "ckpts" / f"epoch_{s}.pt", weights_only=True), run / "probe.npz")
                for s in (0, 30)}
    for name, (sources, extra) in _save_variants(run, tmp_path).items():
        result = fdl("analyze", *sources, *extra, "--probe", run / "probe.npz", "--out", tmp_path / f"{name}.h5",
                     "--json")
        assert result.code == 0, f"{name}: {result.stderr}"
        records = result.records
        assert len(records) == 2, name
        for record, step in zip(records, (0, 30), strict=True):
            assert_matches(record, expected[step])


def test_paths_on_stdin(run: Path, tmp_path: Path) -> None:
    paths = "\n".join(str(run / "ckpts" / f"epoch_{s}.pt") for s in (20, 0)) + "\n\n"
    result = fdl("analyze", "-", "--model", f"{run}/model.py:build", "--probe", run / "probe.npz",
                 "--out", tmp_path / "stdin.h5", "--json", stdin=paths)
    assert result.code == 0, result.stderr
    assert [r["step"] for r in result.records] == [0, 20]


def test_manifest_makes_analyze_work_alone(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with_manifest"
    folder.mkdir()
    for step in (0, 10):
        (folder / f"epoch_{step}.pt").write_bytes((run / "ckpts" / f"epoch_{step}.pt").read_bytes())
    (folder / "net.py").write_text(MODEL_FILE)
    np.savez(folder / "p.npz", **np.load(run / "probe.npz"))
    (folder / "fdl.toml").write_text('model = "net.py:build"\nprobe = "p.npz"\nlayer = "2:input"\n')
    result = fdl("analyze", folder, "--out", tmp_path / "m.h5", "--json")
    assert result.code == 0, result.stderr
    assert [r["step"] for r in result.records] == [0, 10]
    assert_matches(result.records[1], brute_force(torch.load(folder / "epoch_10.pt", weights_only=True),
                                                  run / "probe.npz"))


def test_several_probes_and_layers_in_one_pass(run: Path, tmp_path: Path) -> None:
    result = analyze(run, tmp_path / "multi.h5", "--probe", f"test={run / 'test.npz'}", "--layer", "0",
                     "--layer", "2:input")
    # --probe given twice: the first (unnamed) one is "probe"
    assert result.code == 0, result.stderr
    records = result.records
    assert {(r["probe"], r["layer"]) for r in records} == {
        ("probe", "0"), ("probe", "2:input"), ("test", "0"), ("test", "2:input")}
    assert len(records) == 4 * 4
    last = {(r["probe"], r["layer"]): r for r in records if r["step"] == 30}
    state = torch.load(run / "ckpts" / "epoch_30.pt", weights_only=True)
    assert_matches(last[("probe", "2:input")], brute_force(state, run / "probe.npz"))
    assert_matches(last[("test", "2:input")], brute_force(state, run / "test.npz"))
    # layer "0" is the pre-activation output of the first Linear: 8 features
    assert last[("probe", "0")]["n_features"] == 8
    with StoreReader(tmp_path / "multi.h5") as reader:
        assert sorted(reader.series()) == sorted(last)


def test_resume_recomputes_only_the_incomplete_checkpoint(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "r.h5"
    first = analyze(run, store)
    assert first.code == 0
    with h5py.File(store, "r+") as handle:
        del handle["checkpoints/step_20"].attrs["complete"]
    again = analyze(run, store)
    assert again.code == 0, again.stderr
    assert [r["step"] for r in again.records] == [20]
    assert "1 checkpoint analysed, 3 already in the store" in again.stderr
    assert again.records[0] == first.records[2]
    with StoreReader(store) as reader:
        assert reader.records() == first.records
    nothing = analyze(run, store)
    assert nothing.code == 0 and nothing.records == []


def test_changed_options_are_refused_and_overwrite_restarts(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "c.h5"
    assert analyze(run, store).code == 0
    before = store.read_bytes()
    changed = analyze(run, store, "--center")
    assert changed.code == 1
    assert "--overwrite" in changed.stderr and "Traceback" not in changed.stderr
    assert store.read_bytes() == before
    fresh = analyze(run, store, "--center", "--overwrite")
    assert fresh.code == 0 and len(fresh.records) == 4


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no model", "no model was given"),
        ("key mismatch", "do not fit the model"),
        ("probe shape", "does not fit the model"),
        ("unknown layer", "unknown layer"),
        ("empty layer name", "names the whole model"),
        ("empty folder", "no checkpoints found"),
        ("bad json kwargs", "not valid JSON"),
    ],
)
def test_bad_input_is_a_clear_error(run: Path, tmp_path: Path, case: str, message: str) -> None:
    model = ["--model", f"{run}/model.py:build"]
    probe = ["--probe", str(run / "probe.npz")]
    source = [str(run / "ckpts")]
    if case == "no model":
        model = []
    elif case == "key mismatch":
        model += ["--model-kwargs", '{"hidden": 5}']
    elif case == "probe shape":
        np.savez(tmp_path / "wide.npz", x=np.zeros((5, 7), np.float32), y=np.zeros(5, np.int64))
        probe = ["--probe", str(tmp_path / "wide.npz")]
    elif case == "unknown layer":
        model += ["--layer", "fc9"]
    elif case == "empty layer name":  # the root module: was a traceback after the whole run, and an empty store
        model += ["--layer", ""]
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        source = [str(tmp_path / "empty")]
    elif case == "bad json kwargs":
        model += ["--model-kwargs", "{hidden: 5"]
    result = fdl("analyze", *source, *model, *probe, "--out", tmp_path / "e.h5")
    assert result.code == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "e.h5").exists()


def test_key_mismatch_names_the_keys(run: Path, tmp_path: Path) -> None:
    result = analyze(run, tmp_path / "k.h5", "--model-kwargs", '{"hidden": 5}')
    assert result.code == 1
    assert "0.weight" in result.stderr and "fix:" in result.stderr


def test_sample_checkpoints_match_brute_force(tmp_path: Path) -> None:
    """The bundled run (README's first command) gives the numbers of a brute-force recomputation."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO / "sample_checkpoints"))
    try:
        import model as sample_model  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
        sys.modules.pop("model", None)  # the next test's own model.py would be this one
    result = fdl("analyze", REPO / "sample_checkpoints", "--steps", "0,100,1000", "--out", tmp_path / "sample.h5",
                 "--json")
    assert result.code == 0, result.stderr
    data = np.load(REPO / "sample_checkpoints" / "probe.npz")
    for record in result.records:
        net = sample_model.build()
        net.load_state_dict(load_file(REPO / "sample_checkpoints" / f"step_{record['step']}.safetensors"))
        with torch.inference_mode():
            x = torch.from_numpy(data["x"])
            features = net[:4](x).double().numpy()
            outputs = net(x).double().numpy()
        assert_matches(record, reference_measures(features, outputs, labels=data["y"]).scalars)
    final = result.records[-1]
    assert final["accuracy"] > 0.9
    assert final["d_lr"] < result.records[0]["d_lr"]


def test_resume_on_another_host_is_allowed(run: Path, tmp_path: Path) -> None:
    """The environment (host, torch version) is recorded in the provenance but not compared."""
    store = tmp_path / "h.h5"
    assert analyze(run, store, "--steps", "0,10").code == 0
    with h5py.File(store, "r+") as handle:
        provenance = json.loads(handle.attrs["provenance"])
        assert provenance["environment"]["torch_version"] == torch.__version__
        provenance["environment"] = {"host": "elsewhere", "torch_version": "0.0"}
        handle.attrs["provenance"] = json.dumps(provenance)
    again = analyze(run, store)
    assert again.code == 0, again.stderr
    assert [r["step"] for r in again.records] == [20, 30]


def test_watch_analyses_checkpoints_as_they_appear(run: Path, tmp_path: Path) -> None:
    """--watch keeps polling; new checkpoints are analysed; SIGINT ends it cleanly with a resume hint."""
    import signal

    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "epoch_0.pt").write_bytes((run / "ckpts" / "epoch_0.pt").read_bytes())
    store = tmp_path / "w.h5"
    process = warm.spawn(  # a warm child (tests/warm.py): a process of its own, without its own `import torch`
        [sys.executable, "-m", "fdl_cli", "analyze", str(folder), "--model", f"{run}/model.py:build",
         "--probe", str(run / "probe.npz"), "--out", str(store), "--json", "--watch", "--poll", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        # Ctrl-C as from a terminal even when this test runs with SIGINT ignored (a background job of a
        # non-interactive shell): a warm child takes it as Python's default does, whatever was inherited
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["step"] == 0
        for step in (10, 20):
            (folder / f"epoch_{step}.pt").write_bytes((run / "ckpts" / f"epoch_{step}.pt").read_bytes())
        seen = [json.loads(process.stdout.readline())["step"] for _ in range(2)]
        assert seen == [10, 20]
    finally:
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a watcher behind
            process.communicate()
            raise
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    with StoreReader(store) as reader:
        assert reader.steps() == [0, 10, 20]


def test_mixed_precision_keeps_float64_statistics(run: Path, tmp_path: Path) -> None:
    """--dtype bfloat16 runs the model in bfloat16; the measures stay close to float32's, and defined."""
    full = analyze(run, tmp_path / "f32.h5", "--steps", "0,30")
    half = analyze(run, tmp_path / "bf16.h5", "--steps", "0,30", "--dtype", "bfloat16")
    assert full.code == 0 and half.code == 0, half.stderr
    for a, b in zip(full.records, half.records, strict=True):
        assert b["d_lr"] == pytest.approx(a["d_lr"], abs=0.02)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.05)
        assert b["rank"] >= 1 and 0.0 <= b["d_lr"] <= 1.0
    assert [r["step"] for r in half.records] == [0, 30]  # zip() over no records would pass
    # the model ran in bfloat16 (its rounding moves the features), not only the option recorded
    assert any(b["d_lr"] != a["d_lr"] for a, b in zip(full.records, half.records, strict=True))
    with StoreReader(tmp_path / "bf16.h5") as reader:
        assert reader.provenance["options"]["dtype"] == "bfloat16"


def _stored_records(store: Path) -> list[dict]:
    with StoreReader(store) as reader:
        return reader.records()


def test_reference_not_first_still_compares_with_its_predecessor(run: Path, tmp_path: Path) -> None:
    plain = analyze(run, tmp_path / "plain.h5")
    late = analyze(run, tmp_path / "late.h5", "--reference", "20")
    assert plain.code == 0 and late.code == 0, late.stderr
    assert [r["step"] for r in late.records] == [0, 10, 20, 30]
    by_step = {r["step"]: r for r in late.records}
    expected = {r["step"]: r for r in plain.records}
    assert by_step[20]["cka_init"] == pytest.approx(1.0)
    for step in (10, 20, 30):
        for name in ("cka_prev", "overlap_prev", "prev_step"):
            assert by_step[step][name] == pytest.approx(expected[step][name], rel=1e-12), (step, name)
    assert by_step[0]["prev_step"] is None and by_step[20]["prev_step"] == 10


def test_filling_gaps_in_several_runs_equals_one_run(run: Path, tmp_path: Path) -> None:
    """cka_prev of a stored checkpoint is updated when its new predecessor is analysed later."""
    whole = analyze(run, tmp_path / "whole.h5")
    store = tmp_path / "gaps.h5"
    assert analyze(run, store, "--steps", "0,20").code == 0
    assert _stored_records(store)[1]["prev_step"] == 0
    second = analyze(run, store)
    assert second.code == 0, second.stderr
    assert "1 updated (a new previous checkpoint)" in second.stderr
    assert sorted(r["step"] for r in second.records) == [10, 20, 30]
    got = _stored_records(store)
    assert len(got) == len(whole.records)
    for mine, expected in zip(got, whole.records, strict=True):
        # the updated cka_prev takes its self-norm from the anchors, not the pass: last-digit rounding
        for name, value in expected.items():
            if isinstance(value, float):
                assert mine[name] == pytest.approx(value, rel=1e-12), (mine["step"], name)
            else:
                assert mine[name] == value, (mine["step"], name)


def test_filling_gaps_with_steps_equals_one_run(run: Path, tmp_path: Path) -> None:
    """The same with --steps in every run: the selection of the later runs leaves out stored steps,
    whose place in step order still counts (step 10 between stored 0 and 20 updates 20; step 30 after
    stored 20 compares with it, not with 10). They were left with the previous runs' neighbours."""
    whole = {r["step"]: r for r in analyze(run, tmp_path / "whole.h5").records}
    store = tmp_path / "gaps.h5"
    assert analyze(run, store, "--steps", "0,20").code == 0
    second = analyze(run, store, "--steps", "10,30")
    assert second.code == 0, second.stderr
    assert "2 checkpoints analysed, 1 updated (a new previous checkpoint)" in second.stderr
    assert "already in the store" not in second.stderr  # steps 0 and 20 were not selected
    got = {r["step"]: r for r in _stored_records(store)}
    assert sorted(got) == [0, 10, 20, 30]
    assert [got[step]["prev_step"] for step in (0, 10, 20, 30)] == [None, 0, 10, 20]
    assert sorted(whole) == sorted(got)  # the one run's records: a loop over none would pass
    for step, expected in whole.items():
        for name, value in expected.items():
            if isinstance(value, float):
                assert got[step][name] == pytest.approx(value, rel=1e-12), (step, name)
            else:
                assert got[step][name] == value, (step, name)


def test_a_changed_reference_checkpoint_is_refused(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "changing"
    folder.mkdir()
    for step in (0, 10):
        (folder / f"epoch_{step}.pt").write_bytes((run / "ckpts" / f"epoch_{step}.pt").read_bytes())
    store = tmp_path / "ch.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    before = store.read_bytes()
    (folder / "epoch_0.pt").write_bytes((run / "ckpts" / "epoch_30.pt").read_bytes())
    again = analyze(run, store, sources=(str(folder),))
    assert again.code == 1
    assert "changed since it was analysed" in again.stderr and "--overwrite" in again.stderr
    assert store.read_bytes() == before


def test_resuming_with_another_first_step_names_the_reference_to_pass(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "ref.h5"
    assert analyze(run, store, "--steps", "10,20").code == 0
    refused = analyze(run, store)
    assert refused.code == 1
    assert "--reference 10" in refused.stderr
    fine = analyze(run, store, "--reference", "10")
    assert fine.code == 0, fine.stderr
    assert sorted(r["step"] for r in _stored_records(store)) == [0, 10, 20, 30]


SHARED_ACTIVATION = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    act = nn.ReLU()
    return nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 3))
'''


def test_a_module_that_runs_twice_is_refused_as_a_layer(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "net.py").write_text(SHARED_ACTIVATION)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3))
    state = {k: v for k, v in net.state_dict().items()}
    torch.save(state, folder / "step_0.pt")
    result = fdl("analyze", folder, "--model", folder / "net.py:build", "--probe", run / "probe.npz",
                 "--layer", "1", "--out", tmp_path / "s.h5")
    assert result.code == 1
    assert "runs 2 times in one forward pass" in result.stderr and "Traceback" not in result.stderr
    # The default layer (input of the last Linear) runs once and is fine.
    fine = fdl("analyze", folder, "--model", folder / "net.py:build", "--probe", run / "probe.npz",
               "--out", tmp_path / "ok.h5")
    assert fine.code == 0, fine.stderr


def test_a_tiny_probe_is_warned_about(run: Path, tmp_path: Path) -> None:
    data = np.load(run / "probe.npz")
    np.savez(tmp_path / "tiny.npz", x=data["x"][:5], y=data["y"][:5])
    result = fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", tmp_path / "tiny.npz",
                 "--steps", "0,10", "--out", tmp_path / "t.h5")
    assert result.code == 0, result.stderr
    assert "has only 5 samples for 3 outputs" in result.stderr


def test_the_manifest_serves_files_given_one_by_one_and_names_what_it_ignores(run: Path, tmp_path: Path) -> None:
    """fdl.toml was read only when one folder was given: files of that folder given one by one (or
    through --steps-like shell globs) failed with "no probe set was given". Keys it does not use
    (a typo such as `layers`) were dropped without a word; `center` is now one it uses (test_manifest)."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("epoch_0.pt", "epoch_10.pt"):
        (folder / name).write_bytes((run / "ckpts" / name).read_bytes())
    (folder / "model.py").write_text((run / "model.py").read_text())
    (folder / "probe.npz").write_bytes((run / "probe.npz").read_bytes())
    (folder / "fdl.toml").write_text('model = "model.py:build"\nprobe = "probe.npz"\nlayers = "2"\ncenter = true\n')
    done = fdl("analyze", folder / "epoch_0.pt", folder / "epoch_10.pt", "--out", tmp_path / "files.h5")
    assert done.code == 0, done.stderr
    assert "ignored layers (did you mean layer?)" in done.stderr and "command line" in done.stderr
    with StoreReader(tmp_path / "files.h5") as reader:
        assert reader.steps() == [0, 10]
        assert reader.provenance["options"]["center"] is True
    # The folder and a file of another folder: the folder's manifest, as before.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "epoch_20.pt").write_bytes((run / "ckpts" / "epoch_20.pt").read_bytes())
    mixed = fdl("analyze", folder, tmp_path / "other" / "epoch_20.pt", "--out", tmp_path / "mixed.h5")
    assert mixed.code == 0, mixed.stderr
    with StoreReader(tmp_path / "mixed.h5") as reader:
        assert reader.steps() == [0, 10, 20]


def test_classify_names_how_it_chose_among_several_series(run: Path, tmp_path: Path) -> None:
    """With two probes and two layers, classify takes the first probe given and the first layer
    analysed, and says so; it said "the default layer" of a layer the user had picked. It took the
    first probe by name (test before train: a CI gate on `--expect` read the held-out probe); a store
    written before the order was recorded still does, and says so."""
    (tmp_path / "b.npz").write_bytes((run / "probe.npz").read_bytes())
    store = tmp_path / "two.h5"
    done = fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", f"train={run / 'probe.npz'}",
               "--probe", f"test={tmp_path / 'b.npz'}", "--layer", "2:input", "--layer", "1", "--out", store)
    assert done.code == 0, done.stderr
    verdict = fdl("classify", store)
    assert verdict.code == 0, verdict.stderr
    first = verdict.stderr.splitlines()[0]
    assert "probe train, layer 2:input" in first
    assert "the first probe given to analyze, the first layer analysed; 3 other series" in first
    assert "default layer" not in first
    table = fdl("report", store)
    assert table.code == 0 and table.stderr.index("probe train, layer 2:input") < table.stderr.index("probe test")
    # A store without probe_order (written before it was recorded): the first probe by name.
    import h5py

    with h5py.File(store, "r+") as handle:
        provenance = json.loads(handle.attrs["provenance"])
        del provenance["probe_order"]
        handle.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    older = fdl("classify", store)
    first = older.stderr.splitlines()[0]
    assert "probe test, layer 2:input" in first and "the first probe by name" in first
    # ... and a resume gives it the order of this run, not a difference
    resumed = fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", f"test={tmp_path / 'b.npz'}",
                  "--probe", f"train={run / 'probe.npz'}", "--layer", "2:input", "--layer", "1", "--out", store)
    assert resumed.code == 0, resumed.stderr
    assert "probe test, layer 2:input" in fdl("classify", store).stderr.splitlines()[0]


def test_a_reader_that_stops_early_ends_analyze_quietly(tmp_path: Path) -> None:
    """`fdl analyze --json | head -1`: the pipe closes while fdl still has records to print. fdl stops as a Unix tool
    killed by SIGPIPE does (status 141, nothing on stderr but its notes); it exited 1 without a word,
    the status of an error it explains. What was committed stays in the store."""
    store, gate = tmp_path / "peek.h5", tmp_path / "gate"
    # step 3's forward pass waits for the gate, so fdl still has records to write once the pipe closes
    (tmp_path / "gated.py").write_text(
        "import os, time\nfrom torch import nn\n\n"
        "class Gated(nn.Sequential):\n"
        "    def forward(self, x):\n"
        "        deadline = time.monotonic() + 60\n"
        "        while float(self[0].bias[0]) == 1234.5 and not os.path.exists(os.environ['GATE']):\n"
        "            assert time.monotonic() < deadline, 'the gate never opened'\n"
        "            time.sleep(0.01)\n"
        "        return super().forward(x)\n\n"
        "def build():\n"
        "    return Gated(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n"
    )
    (tmp_path / "ckpts").mkdir()
    for step in range(6):
        state = mlp(seed=step).state_dict()
        if step == 3:
            state["0.bias"][0] = 1234.5
        save_file(state, str(tmp_path / "ckpts" / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    process = warm.spawn(  # a real process (its own SIGPIPE status) without its own `import torch` (tests/warm.py)
        [sys.executable, "-m", "fdl_cli", "analyze", str(tmp_path / "ckpts"), "--model", f"{tmp_path}/gated.py:build",
         "--probe", str(tmp_path / "probe.npz"), "--out", str(store), "--json", "--commit-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "GATE": str(gate)},
    )
    assert process.stdout is not None and process.stderr is not None
    deadline = time.monotonic() + 60
    while not _durable_steps(store) and time.monotonic() < deadline:
        time.sleep(0.01)
    committed = _durable_steps(store)
    assert committed, "nothing was committed in 60 s"
    process.stdout.close()  # the reader goes away: the records of steps 3 - 5 at least meet a closed pipe
    gate.touch()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "error" not in stderr
    assert set(committed) <= set(_durable_steps(store))


def _durable_steps(store: Path) -> list[int]:
    from fdl_cli.errors import FdlError

    try:
        with StoreReader(store) as reader:
            return reader.steps()
    except FdlError:  # not written yet
        return []


def _copy_run(run: Path, folder: Path) -> Path:
    folder.mkdir()
    for step in (0, 10, 20):
        (folder / f"epoch_{step}.pt").write_bytes((run / "ckpts" / f"epoch_{step}.pt").read_bytes())
    return folder


def _diverged(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({name: torch.full_like(value, 1e38) for name, value in state.items()}, path)


def test_overwrite_whose_reference_fails_keeps_the_old_store(run: Path, tmp_path: Path) -> None:
    """The writer committed an empty fresh store on the way out of a failed run: --overwrite with a
    reference that fails replaced a full store by one with no checkpoint (575 kB -> 6 kB, found by a
    review), and a new --out got an empty store that every reading command then puzzled over."""
    folder = _copy_run(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    before = store.read_bytes()
    _diverged(folder / "epoch_0.pt")
    again = analyze(run, store, "--overwrite", sources=(str(folder),))
    assert again.code == 1 and "Traceback" not in again.stderr
    assert store.read_bytes() == before
    # said once, naming the file (it was printed twice, the second time without the path)
    assert again.stderr.count("non-finite") == 1, again.stderr
    assert f"{folder / 'epoch_0.pt'}: the features or outputs contain non-finite" in again.stderr
    assert "reference checkpoint" in again.stderr
    fresh = tmp_path / "new.h5"
    failed = analyze(run, fresh, sources=(str(folder),))
    assert failed.code == 1 and not fresh.exists()


def test_a_checkpoint_group_that_lost_its_series_is_redone(run: Path, tmp_path: Path) -> None:
    """A complete group whose series were deleted counted as analysed forever ("0 analysed, 3 already
    in the store" at every run) while the readers skipped it."""
    import h5py

    store = tmp_path / "s.h5"
    whole = analyze(run, store)
    assert whole.code == 0
    with h5py.File(store, "r+") as handle:
        del handle["checkpoints/step_10/probe"]
    with StoreReader(store) as reader:
        assert reader.steps() == [0, 20, 30]
        assert any("step 10" in warning and "lacks probe/" in warning for warning in reader.warnings)
    again = analyze(run, store)
    assert again.code == 0, again.stderr
    assert [r["step"] for r in again.records] == [10]
    assert _stored_records(store) == whole.records


def test_resuming_with_edited_model_code_is_refused(run: Path, tmp_path: Path) -> None:
    """provenance held the --model spec, not the file's content: after model.py was edited (ReLU ->
    Tanh, say), a resume analysed the new checkpoints with the new code and refreshed neighbours'
    cka_prev with it, silently mixing two models in one store."""
    folder = _copy_run(run, tmp_path / "ckpts")
    model = tmp_path / "model.py"
    original = (run / "model.py").read_text()
    model.write_text(original)
    store = tmp_path / "s.h5"

    def resume() -> Result:
        return fdl("analyze", folder, "--model", f"{model}:build", "--probe", run / "probe.npz", "--out", store)

    assert resume().code == 0
    before = store.read_bytes()
    (folder / "epoch_30.pt").write_bytes((run / "ckpts" / "epoch_30.pt").read_bytes())
    model.write_text(original.replace("nn.ReLU()", "nn.Tanh()"))
    refused = resume()
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert f"the model code {model} changed since" in refused.stderr and "--overwrite" in refused.stderr
    assert store.read_bytes() == before
    model.write_text(original)
    assert resume().code == 0
    assert [r["step"] for r in _stored_records(store)] == [0, 10, 20, 30]


@pytest.mark.parametrize("times", ["new", "restored"])
def test_a_changed_previous_checkpoint_is_refused_not_compared_with(run: Path, tmp_path: Path, times: str) -> None:
    """Step 10's file was replaced after it was analysed; step 20, added later, was compared with the
    new file (cka_prev 0.8712 where a consistent run gives 0.7813, in the review's case) while the
    store kept step 10's old numbers, silently. With its modification time as it was ("restored":
    same size, same time), only the hash taken when step 20 needs it as its previous can tell."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (0, 10):
        (folder / f"epoch_{step}.pt").write_bytes((run / "ckpts" / f"epoch_{step}.pt").read_bytes())
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    before = store.read_bytes()
    stat = (folder / "epoch_10.pt").stat()
    (folder / "epoch_10.pt").write_bytes((run / "ckpts" / "epoch_30.pt").read_bytes())
    assert (folder / "epoch_10.pt").stat().st_size == stat.st_size
    if times == "restored":
        os.utime(folder / "epoch_10.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (folder / "epoch_20.pt").write_bytes((run / "ckpts" / "epoch_20.pt").read_bytes())
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "Traceback" not in refused.stderr
    if times == "new":
        assert f"1 checkpoint file changed since it was analysed into {store}: step 10 (" in refused.stderr
    else:
        assert "the checkpoint at step 10" in refused.stderr and "changed since it was analysed" in refused.stderr
    assert refused.records == [] and store.read_bytes() == before


@pytest.mark.parametrize("target", ["probe", "checkpoint", "model", "text"])
def test_out_that_is_an_input_or_no_hdf5_file_is_never_replaced(run: Path, tmp_path: Path, target: str) -> None:
    """`--out probe.npz --overwrite` turned the probe into a store (exit 0); the same with a checkpoint
    or the model file. Now refused, and the file is left as it was."""
    folder = _copy_run(run, tmp_path / "ckpts")
    probe = tmp_path / "probe.npz"
    probe.write_bytes((run / "probe.npz").read_bytes())
    model = tmp_path / "model.py"
    model.write_text((run / "model.py").read_text())
    out = {"probe": probe, "checkpoint": folder / "epoch_10.pt", "model": model, "text": tmp_path / "notes.txt"}[target]
    if target == "text":
        out.write_text("my notes\n")
    before = out.read_bytes()
    done = fdl("analyze", folder, "--model", f"{model}:build", "--probe", probe, "--out", out, "--overwrite")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert ("is one of this run's inputs" if target != "text" else "is not an HDF5 file") in done.stderr
    assert out.read_bytes() == before


def test_a_resume_records_the_provenance_keys_an_older_store_lacks(run: Path, tmp_path: Path) -> None:
    """store.md said the next resume records reference_sha256 in a store written before fdl recorded
    it; the provenance attribute was only ever written when the file was created."""
    import hashlib
    import json as json_module

    import h5py

    store = tmp_path / "s.h5"
    assert analyze(run, store, "--steps", "0,10").code == 0
    with h5py.File(store, "r+") as handle:
        provenance = json_module.loads(handle.attrs["provenance"])
        old = {k: v for k, v in provenance.items() if k not in ("reference_sha256", "model_sha256")}
        handle.attrs["provenance"] = json_module.dumps(old, sort_keys=True)
    assert analyze(run, store).code == 0
    with StoreReader(store) as reader:
        got = reader.provenance
    assert got["reference_sha256"] == hashlib.sha256((run / "ckpts" / "epoch_0.pt").read_bytes()).hexdigest()
    assert got["model_sha256"] == hashlib.sha256((run / "model.py").read_bytes()).hexdigest()
    assert {k: v for k, v in got.items() if k not in ("reference_sha256", "model_sha256")} == old

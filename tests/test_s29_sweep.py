"""`fdl classify STORE...`: a sweep's runs in one table (text, JSON, CSV), `--expect` naming the runs that differ,
and a store that cannot be read named without hiding the others. Stores: the sample run, its first checkpoint with
a copy whose head alone moved (coefficient) and the run itself at three checkpoints (MF)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from fdl_cli.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import load_file, save_file

    from fdl_cli.pipeline import AnalyzeOptions, run_analyze

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("sweep")
    # the lazy run: the sample's first checkpoint and a copy whose head alone moved (features identical)
    frozen = folder / "frozen"
    frozen.mkdir()
    for name in ("model.py", "probe.npz", "fdl.toml"):
        shutil.copy(SAMPLES / name, frozen / name)
    weights = load_file(SAMPLES / "step_0.safetensors")
    save_file(weights, frozen / "step_0.safetensors")
    save_file({**weights, "4.weight": weights["4.weight"] * 3}, frozen / "step_10.safetensors")
    stores = []
    for name, source, steps in (("lazy", frozen, None), ("rich", SAMPLES, (0, 50, 1000))):
        out = folder / f"{name}.h5"
        assert not run_analyze(AnalyzeOptions(sources=(str(source),), steps=steps, out=out, device="cpu")).failed
        stores.append(out)
    return stores[0], stores[1]


def classify(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = 0
    try:
        main(["classify", *map(str, args)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_several_stores_one_row_each_in_the_order_given(sweep: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    code, out, err = classify(capsys, rich, lazy)
    assert code == 0 and out == ""
    lines = err.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("store"))
    assert lines[header].split()[:2] == ["store", "regime"] and "CKA₀" in lines[header]
    rows = lines[header + 2:header + 4]
    assert rows[0].split()[:2] == [str(rich), "MF"]
    assert rows[1].split()[:2] == [str(lazy), "coefficient"]
    assert " 1.0000 " in rows[1]  # the lazy run's CKA₀: nothing after the reference
    # the thresholds in force and the note, once for the table
    assert err.count("thresholds: cka_static = 0.99") == 1
    assert err.count("MF is not generalisation") == 1


def test_several_stores_json_is_a_list_of_the_single_store_objects(sweep: tuple[Path, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    code, out, _ = classify(capsys, lazy, rich, "--json")
    assert code == 0
    both = json.loads(out)
    assert [(item["store"], item["regime"]) for item in both] == [(str(lazy), "coefficient"), (str(rich), "MF")]
    code, alone, _ = classify(capsys, rich, "--json")
    single = json.loads(alone)
    assert "store" not in single  # one store: today's object, unchanged
    # and its probe file's sha256 last (the sweep's own key, as "store")
    assert {key: value for key, value in both[1].items() if key not in ("store", "probe_sha256")} == single


def test_several_stores_csv_for_a_plotting_script(sweep: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    code, out, err = classify(capsys, lazy, rich, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["store"], row["regime"]) for row in rows] == [(str(lazy), "coefficient"), (str(rich), "MF")]
    assert float(rows[0]["final_cka_init"]) == 1.0 and float(rows[1]["final_cka_init"]) < 0.99
    assert rows[1]["final_k95_utility"] == "6" and rows[0]["mf_since_step"] == ""
    assert "thresholds: cka_static = 0.99" in err  # the thresholds of the rows, for people, on stderr


def test_expect_names_the_stores_that_differ(sweep: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    code, _, err = classify(capsys, lazy, rich, "--expect", "MF")
    assert code == 3
    assert f"expected MF: 1 of 2 stores differ: {lazy} (coefficient)" in err
    assert classify(capsys, rich, rich, "--expect", "mf")[0] == 0


def test_a_store_that_cannot_be_read_is_named_and_the_others_still_shown(
        sweep: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    missing = tmp_path / "alpha_16.h5"
    code, out, err = classify(capsys, lazy, missing, rich, "--json", "--expect", "MF")
    assert code == 1  # an error outranks --expect's 3
    assert "Traceback" not in err
    assert f"error: {missing}: no fdl store at {missing}" in err
    assert f"expected MF: 1 of 2 stores differ: {lazy} (coefficient)" in err  # the readable ones still judged
    assert [item["store"] for item in json.loads(out)] == [str(lazy), str(rich)]


def test_probe_applies_to_each_store(sweep: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    code, out, err = classify(capsys, lazy, rich, "--probe", "probe", "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, err = classify(capsys, lazy, rich, "--probe", "test")
    assert code == 1 and "Traceback" not in err
    for store in (lazy, rich):
        assert f"error: {store}: " in err and "test" in err


def test_how_each_column_moves_down_the_rows(sweep: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lazy, rich = sweep
    _, _, err = classify(capsys, rich, rich, lazy)
    assert "down the rows: CKA₀ never falls; overlap₀ never falls;" in err
    _, _, err = classify(capsys, lazy, rich, lazy)
    assert f"CKA₀ not monotone: falls at {rich}; rises at {lazy};" in err
    _, _, err = classify(capsys, lazy, rich)
    assert "down the rows" not in err  # two runs: the table says it


def test_layer_completion_offers_every_given_stores_names(tmp_path: Path) -> None:
    from tests.test_completion import complete
    from tests.test_report import make_store

    store = make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))
    other = make_store(tmp_path / "other.h5", layers=("head",))
    offered = complete(["classify", str(store), str(other), "--layer"], "")
    assert offered == [("plain", "fc1"), ("plain", "fc2"), ("plain", "head")]


CENTERED = '''
import copy
from torch import nn


class Centered(nn.Module):
    """f = alpha * (net(x) - net0(x)), net0 a frozen copy of net at initialisation (lazy-training sweeps)."""

    def __init__(self, alpha=1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.net0 = copy.deepcopy(self.net).requires_grad_(False)
        self.alpha = alpha

    def forward(self, x):
        return self.alpha * (self.net(x) - self.net0(x))


def build(alpha=1.0):
    return Centered(alpha)
'''


def test_outputs_made_of_two_heads_warn_that_the_default_may_be_the_frozen_copy(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from tests.cli_run import fdl_in_process, model_file

    model = model_file(tmp_path, CENTERED).build()
    (tmp_path / "run").mkdir()
    for step in (0, 10):
        torch.save(model.state_dict(), tmp_path / "run" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(16, 4)).astype(np.float32), y=rng.integers(0, 3, 16))
    spec = f"{tmp_path / 'model.py'}:build"
    shown = fdl_in_process("inspect", tmp_path / "run" / "step_0.pt", "--model", spec)
    assert shown.returncode == 0
    said = " ".join((shown.stdout + shown.stderr).split())
    assert "net0.2:input" in said and "frozen" in said and "pick --layer net.2:input" in said
    done = fdl_in_process("analyze", tmp_path / "run", "--model", spec, "--probe", tmp_path / "probe.npz",
                          "--out", tmp_path / "run.h5", "--device", "cpu")
    assert done.returncode == 0
    assert "warning: the default feature layer, net0.2:input" in done.stderr and "with --layer net.2:input" in done.stderr

"""fdl.toml: the analysis options a checkpoint folder may carry (`manifests.MANIFEST_OPTIONS`).

A manifest holds what describes the run and how it is measured (model, probe, layer, weights, the
measures' options, how its checkpoints are named), so `fdl analyze DIR` alone gives the numbers its
author got; the command line wins, even at an option's default value. It never holds trust.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.cli_run import tiny_model_beside
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL
from tests.tiny_models import mlp


def _folder(root: Path, names: dict[int, str] | None = None) -> Path:
    """Three checkpoints of the tiny MLP (steps 0, 10, 20 unless `names` maps seed -> file name) and a probe."""
    folder = root / "run"
    folder.mkdir()
    names = names or {seed: f"step_{seed}.pt" for seed in (0, 10, 20)}
    for seed, name in names.items():
        torch.save(mlp(seed=seed).state_dict(), folder / name)
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    return folder


def _manifest(folder: Path, extra: str) -> None:
    (folder / "fdl.toml").write_text(f'model = "{tiny_model_beside(folder)}"\nprobe = "probe.npz"\n{extra}\n')


def _run(folder: Path, out: Path, *extra: str) -> Result:
    result = fdl("analyze", str(folder), "--out", str(out), "--json", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _options(store: Path) -> dict:
    with StoreReader(store) as reader:
        return dict(reader.provenance["options"])


def test_the_manifest_sets_the_measures_options_and_the_command_line_wins(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _manifest(folder, "center = true\ntop_k = 3\nanchor-size = 20\ndlr_energy = 0.9\nbatch_size = 7\nreference = 10")
    np.savez(folder / "other.npz", x=np.zeros(3))
    done = _run(folder, tmp_path / "m.h5")
    assert done.code == 0, done.stderr
    assert "ignored" not in done.stderr
    # The manifest's own probe beside the checkpoints is no file to note; another one still is, and
    # the files without a checkpoint suffix are named in one note.
    said = " ".join(done.stderr.split())
    assert "probe.npz" not in said and "skipped 1 file without a checkpoint suffix (.pt, .pth" in said
    assert said.count("without a checkpoint suffix") == 1 and "): other.npz" in said
    options = _options(tmp_path / "m.h5")
    assert (options["center"], options["top_k"], options["anchor_size"], options["dlr_energy"]) == (True, 3, 20, 0.9)
    with StoreReader(tmp_path / "m.h5") as reader:
        assert reader.provenance["reference_step"] == 10
    by_step = {record["step"]: record for record in done.records}
    assert by_step[10]["cka_init"] == pytest.approx(1.0)  # the reference is step 10, not the first
    # The same numbers as the options given on the command line, without a manifest.
    (folder / "fdl.toml").rename(tmp_path / "kept.toml")
    plain = _run(folder, tmp_path / "plain.h5", "--model", MODEL, "--probe", str(folder / "probe.npz"), "--center",
                 "--top-k", "3", "--anchor-size", "20", "--dlr-energy", "0.9", "--reference", "10", "--batch-size", "7")
    assert plain.code == 0, plain.stderr
    skip = {"path", "sha256"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in plain.records] == [
        {k: v for k, v in r.items() if k not in skip} for r in done.records
    ]
    (tmp_path / "kept.toml").rename(folder / "fdl.toml")
    # Given on the command line, even at its default value, an option beats the manifest's.
    mine = _run(folder, tmp_path / "mine.h5", "--top-k", "64", "--no-center", "--reference", "0")
    assert mine.code == 0, mine.stderr
    options = _options(tmp_path / "mine.h5")
    assert (options["center"], options["top_k"], options["anchor_size"]) == (False, 64, 20)
    assert {r["step"]: r for r in mine.records}[0]["cka_init"] == pytest.approx(1.0)


def test_the_manifest_says_how_the_checkpoints_are_named(tmp_path: Path) -> None:
    """step_regex and glob in fdl.toml are used to find the checkpoints (it is read before the search)."""
    folder = _folder(tmp_path, {0: "ckpt-1-of-3.pt", 10: "ckpt-2-of-3.pt", 20: "ckpt-3-of-3.pt"})
    torch.save(mlp(seed=99).state_dict(), folder / "scratch_7.pt")
    _manifest(folder, "step_regex = 'ckpt-(\\d+)-of'\nglob = \"ckpt-*\"")
    done = _run(folder, tmp_path / "m.h5")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == [1, 2, 3]
    # Without them the three files have one step (the last number of the name): an error.
    _manifest(folder, "")
    clash = _run(folder, tmp_path / "clash.h5")
    assert clash.code == 1 and "two checkpoints have the same step 3" in clash.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("top_k = 0", "'top_k' must be an integer >= 1"),
        ("top_k = true", "'top_k' must be an integer >= 1"),
        ("anchor_size = 2.5", "'anchor_size' must be an integer >= 1"),
        ('dtype = "float64"', "'dtype' must be one of \"float32\", \"bfloat16\", \"float16\""),
        ('center = "yes"', "'center' must be true or false"),
        ("dlr_energy = 0", "'dlr_energy' must be a number in (0, 1]"),
        ("dlr_energy = 1.5", "'dlr_energy' must be a number in (0, 1]"),
        ('step_regex = ""', "'step_regex' must be a non-empty string"),
        ("step_regex = 'step_(\\d+'", "'step_regex' is not a valid regular expression"),
        ("step_regex = 'step_\\d+'", "'step_regex' has no capture group around the step"),
        ("top_k = 3\ntop-k = 4", "sets top_k twice"),
    ],
)
def test_a_bad_value_in_the_manifest_is_an_error_naming_the_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    folder = _folder(tmp_path)
    _manifest(folder, line)
    bad = _run(folder, tmp_path / "bad.h5")
    assert bad.code == 1
    assert f"{folder / 'fdl.toml'}" in bad.stderr and message in bad.stderr
    assert "--step-regex" not in bad.stderr  # the user gave none
    assert not (tmp_path / "bad.h5").exists()


def test_a_glob_of_the_manifest_that_matches_nothing_is_named(tmp_path: Path) -> None:
    """"no checkpoints found ... loosen --glob" with no --glob given and no word of fdl.toml: the user
    could not tell where the filter came from."""
    folder = _folder(tmp_path)
    _manifest(folder, 'glob = "ckpt_*.pt"')
    none = _run(folder, tmp_path / "none.h5")
    assert none.code == 1 and "no checkpoints found" in none.stderr
    assert f"{folder / 'fdl.toml'} sets glob = 'ckpt_*.pt'" in " ".join(none.stderr.split())


def test_the_manifest_names_what_it_ignores_and_never_grants_trust(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    torch.save(mlp(seed=30), folder / "step_30.pt")  # a whole pickled module: needs --trust-pickle
    _manifest(folder, "trust_pickle = true\nlayers = \"2\"\ndevice = \"cpu\"")
    done = _run(folder, tmp_path / "m.h5")
    warning = " ".join(done.stderr.split())
    assert "ignored device, layers (did you mean layer?), trust_pickle (a folder cannot vouch for its own files" in warning
    assert done.code == 1  # the pickled module was refused ...
    assert "step_30.pt" in done.stderr and "--trust-pickle" in done.stderr
    with StoreReader(tmp_path / "m.h5") as reader:
        assert reader.steps() == [0, 10, 20]  # ... and the others analysed


def test_a_probe_table_of_non_paths_is_an_error(tmp_path: Path) -> None:
    """probe = { train = 3 } said "probe file .../3 not found"."""
    folder = _folder(tmp_path)
    (folder / "fdl.toml").write_text(f'model = "{tiny_model_beside(folder)}"\nprobe = {{ train = 3 }}\n')
    bad = _run(folder, tmp_path / "bad.h5")
    assert bad.code == 1 and "'probe' table must be a path (a string)" in bad.stderr and "not found" not in bad.stderr


def test_model_kwargs_given_empty_on_the_command_line_wins(tmp_path: Path) -> None:
    """`--model-kwargs '{}'` is given: the factory's defaults, not fdl.toml's kwargs (an empty dict was
    taken for "not given", so the manifest's hidden = 16 built a model the hidden-8 checkpoints do not fit)."""
    folder = _folder(tmp_path)
    _manifest(folder, "model_kwargs = { hidden = 16 }")
    from_manifest = _run(folder, tmp_path / "m.h5")
    assert from_manifest.code == 1 and "16" in from_manifest.stderr
    given = _run(folder, tmp_path / "g.h5", "--model-kwargs", "{}")
    assert given.code == 0, given.stderr
    with StoreReader(tmp_path / "g.h5") as reader:
        assert reader.steps() == [0, 10, 20]
    shown = fdl("inspect", str(folder / "step_0.pt"), "--model-kwargs", "{}")
    assert shown.code == 0, shown.stderr
    assert fdl("inspect", str(folder / "step_0.pt")).code == 1

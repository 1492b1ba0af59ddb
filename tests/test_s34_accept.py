"""`fdl analyze --accept-model-change`: a resume refused for edited model code (the --model file, a module of its
folder) goes on when asked to, and the store says so from then on: its `model_changes` attribute (from which step on
which code ran), its provenance and `model_imports` holding the new code (what later resumes, and an fdl before the
flag, compare with), and a note in `fdl report` / `fdl classify` (a `model_changes` key in classify's JSON). Without
the flag nothing changed; with it, nothing but the code's change is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli import __version__
from tests.test_analyze import fdl
from tests.test_s24_docs import _layout_levels
from tests.test_s33_imports import LAYERS, _analyze, _helper_run, _sha
from tests.test_s33_storedoc import STORE_MD, _bullet
from tests.test_walk_fixes import _run_folder

FLAG = "--accept-model-change"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _attrs(store: Path) -> tuple[dict, list | None, dict | None]:
    """(provenance, model_changes, model_imports) of the store."""
    with h5py.File(store, "r") as handle:
        attrs = handle.attrs
        loaded = [json.loads(attrs[name]) if name in attrs else None for name in ("model_changes", "model_imports")]
        return json.loads(attrs["provenance"]), loaded[0], loaded[1]


def _steps(store: Path) -> list[int]:
    with h5py.File(store, "r") as handle:
        return sorted(int(name.removeprefix("step_")) for name in handle["checkpoints"])


@pytest.fixture
def edited(tmp_path: Path) -> tuple[Path, str, str]:
    """A store of steps 0 and 10, then its model file edited (a comment): (root, old sha256, new sha256)."""
    root = _run_folder(tmp_path)
    assert _analyze(root, "--steps", "0,10")[0] == 0
    old = _sha(root / "model.py")
    (root / "model.py").write_text((root / "model.py").read_text() + "# a comment only\n")
    return root, old, _sha(root / "model.py")


def test_the_flag_resumes_across_an_edited_model_file_and_the_store_says_so(edited: tuple[Path, str, str]) -> None:
    root, old, new = edited
    store = root / "run.h5"
    before = store.read_bytes()
    code, said = _analyze(root)
    assert code == 1 and "Traceback" not in said  # without the flag: refused, as before, the store untouched
    assert f"the model code {root / 'model.py'} changed since" in said
    assert f"or resume with {FLAG} if the change leaves the numbers as they were" in said
    assert "the checkpoints stored so far keep the old code's numbers" in said
    assert store.read_bytes() == before and _attrs(store)[1] is None

    code, said = _analyze(root, FLAG)
    assert code == 0, said
    assert f"{FLAG}: the model code changed since {store} was analysed ({root / 'model.py'})" in said
    assert _steps(store) == [0, 10, 20]
    provenance, changes, _ = _attrs(store)
    assert provenance["model_sha256"] == new and provenance["model_file_sha256"] == new
    assert changes is not None and len(changes) == 1
    change = changes[0]
    assert change["from_step"] == 20 and change["fdl_version"] == __version__ and change["run"] == 1
    assert change["changed"] == [{"code": str(root / "model.py"), "module": None, "old": old, "new": new}]
    assert change["time"].endswith("+00:00")
    with h5py.File(store, "r") as handle:  # docs/store.md's layout lists the attribute, its bullet each key
        assert set(handle.attrs) <= _layout_levels()["/"][0]
    described = _bullet(STORE_MD, "- `model_changes` (a root attribute")
    assert sorted(key for key in {*change, *change["changed"][0]} if f"`{key}`" not in described) == []

    # the store's code is the new one: a resume with it needs no flag; the old code is now the changed one
    assert _analyze(root)[0] == 0
    (root / "model.py").write_text((root / "model.py").read_text().replace("# a comment only\n", ""))
    code, said = _analyze(root)
    assert code == 1 and "changed since" in said

    line = (
        f"this store mixes model code: from step 20 on its checkpoints ran changed code (model.py (sha256 "
        f"{old[:12]}… → {new[:12]}…); `fdl analyze {FLAG}`, {change['time']}, fdl {__version__}); the checkpoints "
        "before keep the old code's numbers"
    )
    shown = fdl("report", store)
    assert shown.code == 0 and line in " ".join((shown.stdout + shown.stderr).split())
    as_csv = fdl("report", store, "--format", "csv")
    assert as_csv.code == 0 and f"note: {line}" in " ".join(as_csv.stderr.split())
    verdict = fdl("classify", store)
    assert verdict.code == 0 and f"note: {line}" in " ".join((verdict.stdout + verdict.stderr).split())
    as_json = fdl("classify", store, "--json")
    assert as_json.code == 0 and json.loads(as_json.stdout)["model_changes"] == changes


def test_without_a_change_the_flag_records_nothing_and_classify_json_is_as_before(tmp_path: Path) -> None:
    root = _run_folder(tmp_path)
    assert _analyze(root, "--steps", "0,10")[0] == 0
    code, said = _analyze(root, FLAG)
    assert code == 0 and FLAG not in said
    assert _steps(root / "run.h5") == [0, 10, 20] and _attrs(root / "run.h5")[1] is None
    assert "model_changes" not in json.loads(fdl("classify", root / "run.h5", "--json").stdout)


def test_an_edited_module_of_the_model_folder_is_accepted_and_recorded(tmp_path: Path) -> None:
    root = _helper_run(tmp_path / "a")
    assert _analyze(root, "--steps", "0,10")[0] == 0
    old = _sha(root / "mylayers.py")
    (root / "mylayers.py").write_text(LAYERS.format("ReLU") + "# logging only\n")
    code, said = _analyze(root, FLAG)
    assert code == 0, said
    provenance, changes, imports = _attrs(root / "run.h5")
    new = _sha(root / "mylayers.py")
    assert imports == {"mylayers": new}
    assert changes is not None and [item["changed"] for item in changes] == [
        [{"code": str(root / "mylayers.py"), "module": "mylayers", "old": old, "new": new}]
    ]
    assert provenance["model_file_sha256"] == _sha(root / "model.py")  # unchanged: not listed
    assert _analyze(root)[0] == 0  # later resumes compare with the new code


def test_the_flag_accepts_nothing_but_the_code(edited: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = edited
    store = root / "run.h5"
    before = store.read_bytes()
    rng = np.random.default_rng(1)
    np.savez(root / "other.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    refusals = {
        ("--reference", "10"): "reference_step: 0 (store) vs 10 (this run)",
        ("--layer", "1"): "holds the results of a different run",
        ("--center",): "options.center: False (store) vs True (this run)",
        ("--probe", f"more={root / 'other.npz'}"): f"{FLAG} resumes {store} across a change of its model code, and "
        "this run adds probe 'more': one at a time",
        ("--overwrite",): f"{FLAG} and --overwrite together",
        ("--redo", "10"): f"{FLAG} and --redo together",
    }
    for extra, refusal in refusals.items():
        code, said = _analyze(root, FLAG, *extra)
        assert code == 1 and refusal in said and "Traceback" not in said, (extra, said)
        assert store.read_bytes() == before, extra
    (root / "probe.npz").write_bytes((root / "other.npz").read_bytes())  # another probe file under the store's name
    code, said = _analyze(root, FLAG)
    assert code == 1 and "holds the results of a different run" in said and store.read_bytes() == before
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():  # refused before any rendezvous
        monkeypatch.setenv(name, value)
    code, said = _analyze(root, FLAG)
    assert code == 1 and f"error: {FLAG} runs as one process, not under torchrun" in said
    assert store.read_bytes() == before

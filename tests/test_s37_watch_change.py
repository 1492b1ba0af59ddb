"""`fdl analyze --accept-model-change --watch`: the change of the model's code is recorded once, with the first
checkpoint the watch stores, whatever the polls find after; a watch that finds the code unchanged records nothing
and says nothing of it; and a model file edited while a watch runs is warned of once (the watch goes on running
the code it started with, which its checkpoints are recorded as), where it was said nothing until the next run
was refused.

One store, made in the module's fixture by a plain run and four watches in this process (tiny MLPs, a 24-input
probe), each of whose polls is a step of the test in place of its sleep (`_polls`), the last one's Ctrl-C."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch

from tests.test_analyze import fdl
from tests.test_prev_walkback import _arrive, _polls
from tests.test_s33_imports import _analyze, _sha
from tests.test_walk_fixes import _run_folder

FLAG = "--accept-model-change"
WATCH = ("--watch", "--poll", "0.1")


def _attrs(store: Path) -> tuple[list[int], list[dict[str, Any]] | None, dict[str, Any]]:
    """(stored steps, model_changes, provenance) of the store."""
    with h5py.File(store, "r") as handle:
        steps = sorted(int(name.removeprefix("step_")) for name in handle["checkpoints"])
        changes = handle.attrs.get("model_changes")
        return steps, None if changes is None else json.loads(changes), json.loads(handle.attrs["provenance"])


def _write_settled(path: Path, text: str) -> None:
    """Write `path` as an editor did a while ago: --watch looks at a file once it has settled."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _watch(root: Path, steps: list[Callable[[], object]], *extra: str) -> tuple[int, str]:
    """`fdl analyze ... --watch` of `root` in this process, each of `steps` in place of a poll's sleep."""
    with pytest.MonkeyPatch.context() as patch, _polls(patch, *steps):
        return _analyze(root, *WATCH, *extra)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Steps 0 and 10 stored with model code A; model.py then edited (a comment: code B), and watched with the flag
    while steps 20, 30 and 40 arrive and model.py is edited again (code C, which raises if anything imports it);
    then, model.py B again, watched with the flag while step 50 arrives (nothing changed); then watched without
    the flag while model.py is edited (a comment), removed and restored. What each said, and the store after each."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")  # each message on one line
        root = _run_folder(tmp_path_factory.mktemp("watch"))
        model, held = root / "model.py", root / "held"
        held.mkdir()
        (root / "run" / "ckpt_step20.pt").rename(held / "ckpt_step20.pt")
        for step in (30, 40, 50):
            torch.manual_seed(step)
            net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
            torch.save({"model_state_dict": net.state_dict(), "step": step}, held / f"ckpt_step{step}.pt")
        got: dict[str, Any] = {"root": root, "model": model, "A": _sha(model)}
        assert _analyze(root)[0] == 0
        code_b = model.read_text() + "# a comment only\n"
        _write_settled(model, code_b)
        got["B"] = _sha(model)
        code_c = code_b + "raise RuntimeError('the code edited while the watch ran was imported')\n"
        got["first"] = _watch(
            root,
            [
                lambda: _arrive(held, root / "run", "ckpt_step20.pt"),
                lambda: _arrive(held, root / "run", "ckpt_step30.pt"),
                lambda: _write_settled(model, code_c),
                lambda: _arrive(held, root / "run", "ckpt_step40.pt"),
                lambda: None,
            ],
            FLAG,
        )
        got["C"] = _sha(model)
        got["after_first"] = _attrs(root / "run.h5")
        got["report"] = fdl("report", root / "run.h5")
        got["classify"] = fdl("classify", root / "run.h5")
        got["classify_json"] = fdl("classify", root / "run.h5", "--json")
        before = (root / "run.h5").read_bytes()
        _write_settled(model, code_b.replace("nn.ReLU()", "nn.Tanh()"))  # a change that moves the numbers
        got["D"] = _sha(model)
        got["rerun"] = _analyze(root)
        got["rerun_kept"] = (root / "run.h5").read_bytes() == before

        _write_settled(model, code_b)  # the store's own code again
        got["unchanged"] = _watch(root, [lambda: _arrive(held, root / "run", "ckpt_step50.pt")], FLAG)
        got["after_unchanged"] = _attrs(root / "run.h5")
        got["plain"] = _watch(
            root,
            [
                lambda: _write_settled(model, code_b + "# another comment\n"),
                lambda: None,
                model.unlink,  # then removed (a checkout of another branch, midway)
                lambda: None,
                lambda: _write_settled(model, code_b),
            ],
        )
        got["after_plain"] = _attrs(root / "run.h5")
        return got


def test_the_change_is_recorded_once_from_the_first_step_the_watch_stores(watched: dict[str, Any]) -> None:
    root, a, b = watched["root"], watched["A"], watched["B"]
    code, said = watched["first"]
    assert code == 130 and "Traceback" not in said, said  # stopped by Ctrl-C after its last poll
    assert said.count(f"{FLAG}: the model code changed since {root / 'run.h5'} was analysed") == 1
    assert "3 checkpoints analysed, 2 already in the store" in said
    steps, changes, provenance = watched["after_first"]
    assert steps == [0, 10, 20, 30, 40]
    assert changes is not None and len(changes) == 1  # not one a poll, nor one a new checkpoint
    (change,) = changes
    assert change["from_step"] == 20 and change["kept_old"] == [] and change["run"] == 1
    assert change["changed"] == [{"code": str(root / "model.py"), "module": None, "old": a, "new": b}]
    assert provenance["model_sha256"] == b and provenance["model_file_sha256"] == b  # the code the watch ran


def test_report_and_classify_say_the_change(watched: dict[str, Any]) -> None:
    line = (
        "this store mixes model code: from step 20 on its checkpoints ran changed code (model.py (sha256 "
        f"{watched['A'][:12]}… → {watched['B'][:12]}…); `fdl analyze {FLAG}`, "
    )
    for shown in (watched["report"], watched["classify"]):
        assert shown.code == 0 and line in " ".join((shown.stdout + shown.stderr).split())
    as_json = watched["classify_json"]
    assert as_json.code == 0 and json.loads(as_json.stdout)["model_changes"] == watched["after_first"][1]


def test_a_model_file_edited_while_the_watch_runs_is_warned_of_once_and_never_run(watched: dict[str, Any]) -> None:
    """The edit (C) is not imported: step 40, which arrived after it, was analysed with the code the watch started
    with (C raises once imported), and the store records that code, not C; said once, at the poll after the edit.
    Run again, the command is refused for the file's change, naming the code the store records."""
    model, b, c = watched["model"], watched["B"], watched["C"]
    code, said = watched["first"]
    warning = (
        f"warning: the model code {model} changed while this watch runs (sha256 {c[:16]}… now, {b[:16]}… when it "
        "started): the watch goes on running the code it started with, which its checkpoints are recorded as; "
        f"run again, the same command ({FLAG}) records the change as a further one: only if it leaves the numbers "
        "as they were, else restore the file, or re-analyse everything with --overwrite (or another --out)"
    )
    assert said.count(warning) == 1, said
    assert "failed" not in said and "error" not in said
    code, said = watched["rerun"]
    assert code == 1 and "Traceback" not in said and watched["rerun_kept"]
    assert f"error: the model code {model} changed since" in said
    assert f"sha256 {watched['D'][:16]}… now, {b[:16]}… recorded in" in said


def test_a_watch_of_unchanged_code_with_the_flag_records_and_says_nothing_of_it(watched: dict[str, Any]) -> None:
    code, said = watched["unchanged"]
    assert code == 130 and "Traceback" not in said
    assert FLAG not in said and "model code" not in said
    assert "1 checkpoint analysed, 5 already in the store" in said
    steps, changes, provenance = watched["after_unchanged"]
    assert steps == [0, 10, 20, 30, 40, 50]
    assert changes == watched["after_first"][1] and provenance["model_sha256"] == watched["B"]


def test_a_plain_watch_warns_of_an_edit_and_a_removal_once_each_and_notes_the_undoing(watched: dict[str, Any]) -> None:
    model, b = watched["model"], watched["B"]
    code, said = watched["plain"]
    assert code == 130 and "Traceback" not in said
    assert said.count(f"warning: the model code {model} changed while this watch runs (sha256 ") == 1, said
    assert (
        "the watch goes on running the code it started with, which its checkpoints are recorded as; run again, the "
        f"same command is refused for the change: restore the file, or add {FLAG} if it leaves the numbers as they "
        "were, or re-analyse everything with --overwrite (or another --out)"
    ) in said
    removed = (
        f"warning: the model code {model} was removed (or cannot be read) while this watch runs: the watch goes on "
        "running the code it started with, which its checkpoints are recorded as; put it back before running the "
        "same command again"
    )
    assert said.count(removed) == 1 and said.index(removed) > said.index("changed while this watch runs"), said
    assert said.count(f"note: the model code {model} is again the one this watch runs (sha256 {b[:16]}…)") == 1
    assert watched["after_plain"] == watched["after_unchanged"]

"""Session 22's review bits (tiny stores and MLPs on the CPU). Each test failed before its fix.

- `fdl report S --plots D --html D/r.html` with no folder D was refused ("create the folder D first"), though the
  figures create D before the page is written.
- `--model d.py:build` of a folder d.py said "file d.py not found".
- `classify --threshold dlr_tie=abc` judged the value first and offered `cka_static=0.98`, not compare.
- `fdl analyze DIR` with DIR's probe.npz and no --probe said only "no probe set was given" (`DIR/*` named it).
- compare's line of a classification run's `loss` null in one run only said `loss`, not what the loss is.
- fdl.toml's `probe = ["my probe=x.npz"]` was looked for as a file of that text; `{ "my probe" = "x.npz" }` was
  refused as a `--probe` the user never typed. Both are refused as the command line refuses the name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fdl_cli import report
from fdl_cli.checkpoints import read_manifest
from fdl_cli.errors import FdlError
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store
from tests.test_s21_user import _weights

TINY = "from tests.tiny_models import mlp as build\n"


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_the_html_page_may_go_into_the_plots_folder_report_creates(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.h5")
    folder = tmp_path / "new" / "figs"
    done = fdl_in_process("report", store, "--plots", folder, "--html", folder / "r.html")
    assert done.returncode == 0, done.stderr
    assert (folder / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (folder / "triptych.png").is_file()
    # a page in a folder --plots does not make is refused before any work, as before
    other = tmp_path / "other"
    done = fdl_in_process("report", store, "--format", "json", "--plots", other, "--html", other / "sub" / "r.html")
    assert done.returncode == 1 and done.stdout == "" and not other.exists()
    assert f"error: could not write {other / 'sub' / 'r.html'}" in done.stderr
    # and a --plots folder that cannot be made refuses both
    (tmp_path / "file").write_text("x")
    bad = tmp_path / "file" / "figs"
    done = fdl_in_process("report", store, "--format", "json", "--plots", bad, "--html", bad / "r.html")
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr, done.stderr


def test_a_model_spec_naming_a_folder_says_it_is_one(tmp_path: Path) -> None:
    run = _weights(tmp_path / "run", TINY)
    (tmp_path / "d.py").mkdir()
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'd.py'}:build", "--probe", run / "probe.npz",
                          "-o", tmp_path / "s.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'd.py'} is a folder, not a Python file" in done.stderr, done.stderr
    assert f"fix: name the .py file in it that defines build ({tmp_path / 'd.py'}/FILE.py:build)" in done.stderr
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("value", ["abc", "inf"])
def test_classify_names_compares_threshold_whatever_its_value(tmp_path: Path, value: str) -> None:
    store = make_store(tmp_path / "a.h5")
    done = fdl_in_process("classify", store, "--threshold", f"dlr_tie={value}")
    assert done.returncode == 1 and done.stdout == ""
    assert "error: unknown threshold 'dlr_tie': dlr_tie is a threshold of fdl compare" in done.stderr, done.stderr
    assert "fix: pass it to fdl compare (--threshold dlr_tie=VALUE)" in done.stderr
    # a misspelt name, too, before its value; a known name's bad value as before
    done = fdl_in_process("classify", store, "--threshold", f"cka_statc={value}")
    assert "error: unknown threshold 'cka_statc' (did you mean cka_static?)" in done.stderr
    assert "fix: pass --threshold cka_static=VALUE" in done.stderr
    done = fdl_in_process("classify", store, "--threshold", f"mf_extra={value}")
    assert f"error: bad threshold 'mf_extra={value}': its value must be a finite number" in done.stderr
    assert "fix: e.g. --threshold mf_extra=2" in done.stderr
    # and compare, which judged the name first already
    done = fdl_in_process("compare", store, store, "--threshold", f"mf_extra={value}")
    assert "error: unknown compare threshold 'mf_extra': mf_extra is a threshold of fdl classify" in done.stderr


def test_a_probe_in_the_folder_analysed_is_named_in_the_missing_probe_error(tmp_path: Path) -> None:
    run = _weights(tmp_path / "run", TINY)
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "-o", tmp_path / "a.h5")
    assert done.returncode == 1
    assert "without a checkpoint suffix (" in done.stderr and "probe.npz" in done.stderr, done.stderr
    assert ("error: no probe set was given\n  got: probe.npz, found among the checkpoints, is a probe set (skipped "
            f"above)\n  fix: pass it as --probe {run / 'probe.npz'}, or add") in done.stderr
    # an .npz of other arrays is no probe to name
    (run / "probe.npz").unlink()
    np.savez(run / "stats.npz", loss=np.zeros(3))
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "-o", tmp_path / "a.h5")
    assert "note: skipped 1 file without a checkpoint suffix (" in done.stderr and "stats.npz" in done.stderr
    assert "got:" not in done.stderr


def test_a_classification_loss_null_in_one_run_is_named_as_its_difference_is(tmp_path: Path) -> None:
    scalars = {step: {**values, "accuracy": 0.5, "cross_entropy": 1.0} for step, values in SCALARS.items()}
    a = make_store(tmp_path / "a.h5", scalars=scalars)
    b = make_store(tmp_path / "b.h5", seed=3, scalars={**scalars, 100: {**scalars[100], "loss": None},
                                                       200: {**scalars[200], "loss": 1.0}})
    lines = report.difference_lines(report.compare_runs(report.load_run(a), report.load_run(b), overlap=False))
    assert f"{report.CLASSIFICATION_LOSS}: null in one run only at 1 step (run B at 1, where run A has a value)" in lines
    assert not any(line.startswith("loss: ") for line in lines), lines
    # null only: no difference line, the null line named all the same
    c = make_store(tmp_path / "c.h5", seed=3, scalars={**scalars, 100: {**scalars[100], "loss": None}})
    lines = report.difference_lines(report.compare_runs(report.load_run(a), report.load_run(c), overlap=False))
    assert f"{report.CLASSIFICATION_LOSS}: null in one run only at 1 step (run B at 1, where run A has a value)" in lines


@pytest.mark.parametrize(("probe", "fix"), [
    ('["my probe=x.npz"]', 'probe = "my_probe=x.npz"'),
    ('"2nd=x.npz"', 'probe = "_2nd=x.npz"'),
    ('{ "my probe" = "x.npz" }', 'probe = { my_probe = "x.npz" }'),
])
def test_fdl_toml_probe_names_follow_the_command_lines_rule(tmp_path: Path, probe: str, fix: str) -> None:
    (tmp_path / "x.npz").write_bytes(b"")
    manifest = tmp_path / "fdl.toml"
    manifest.write_text(f"probe = {probe}\n", encoding="utf-8")
    with pytest.raises(FdlError) as raised:
        read_manifest(tmp_path)
    name = "2nd" if "2nd" in probe else "my probe"
    assert raised.value.what == (f"{manifest}: the probe name {name!r} may hold ASCII letters, digits and '_' only "
                                    "(not beginning with a digit)")
    assert raised.value.fix == f"e.g. {fix} in {manifest}"


def test_fdl_toml_probe_names_the_rule_takes_and_paths_are_kept(tmp_path: Path) -> None:
    (tmp_path / "runs" / "lr=0.1").mkdir(parents=True)
    (tmp_path / "my probe=x.npz").write_bytes(b"")  # a file of that whole text: a path, as on the command line
    (tmp_path / "fdl.toml").write_text('probe = ["train=a.npz", "runs/lr=0.1/p.npz", "my probe=x.npz"]\n', encoding="utf-8")
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    assert manifest.probe == [f"train={tmp_path.resolve() / 'a.npz'}", str(tmp_path.resolve() / "runs" / "lr=0.1" / "p.npz"),
                              str(tmp_path.resolve() / "my probe=x.npz")]


def test_a_bad_fdl_toml_probe_name_stops_analyze_in_words(tmp_path: Path) -> None:
    run = _weights(tmp_path / "run", TINY)
    (run / "fdl.toml").write_text('model = "model.py:build"\nprobe = "my probe=probe.npz"\n', encoding="utf-8")
    done = fdl_in_process("analyze", run, "-o", tmp_path / "a.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: {run / 'fdl.toml'}: the probe name 'my probe' may hold ASCII letters" in done.stderr, done.stderr
    assert "is not there" not in done.stderr and not (tmp_path / "a.h5").exists()

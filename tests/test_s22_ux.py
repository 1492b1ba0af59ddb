"""Session 22, a user's review: curves that vanished under others in the trajectories figures, the message for a
--layer whose module its parent never calls, and the platforms fdl runs on.

- `fdl compare A B --plots DIR` (and `fdl report --plots`): a frozen run's CKA and overlap to the reference are 1 at
  every step, and B's overlap can lie exactly under the overlap A·B; one curve was drawn over the other, alike in
  style and width, so one vanished; the legend (`loc="best"`) sat on the data.
- `--layer encoder.self_attn.out_proj` (nn.MultiheadAttention uses out_proj's weights without calling it) said only
  that the layer "did not run in the model's forward pass".
- fdl_cli/store.py imports fcntl, which Windows lacks: every command of a store ended in an ImportError's traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import REPO, fdl_in_process, model_file
from tests.test_report import SCALARS, make_store
from tests.test_s22_user import TRANSFORMER

#: A frozen run: CKA and overlap to the reference 1 at every step (its D_LR and k95 of Π̂ those of SCALARS' run).
FROZEN = {step: {**values, "cka_init": 1.0, "overlap_init": 1.0} for step, values in SCALARS.items()}


def _drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: object) -> dict[str, Any]:
    """The figures `fdl ARGS` writes, by stem (as drawn, before they are saved). The tests read the figures, not
    the files (`cheap_figures`): each test draws the figures it reads itself (`_assert_every_curve_in_sight`)."""
    from fdl_cli import figures

    drawn: dict[str, Any] = {}
    save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure",
                        lambda figure, directory, stem: drawn.setdefault(stem, figure) and save(figure, directory, stem))
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return drawn


def _points(line: Any) -> list[tuple[float, float]]:
    return list(zip(np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float), strict=True))


def _share_a_point(a: Any, b: Any) -> bool:
    return bool(set(_points(a)) & set(_points(b)))


def _segments(line: Any) -> set[tuple[tuple[float, float], tuple[float, float]]]:
    return set(zip(_points(line), _points(line)[1:], strict=False))


def _share_a_segment(a: Any, b: Any) -> bool:
    return bool(_segments(a) & _segments(b))


def _assert_every_curve_in_sight(figure: Any) -> None:
    """Each pair of labelled curves differs in line style or marker (and in the legend); of two that share a point,
    the one drawn later (over the other) has smaller markers, and of two that share a segment, it is narrower, so
    that the one beneath shows at its edges; the legend lies beside the axes, not over them."""
    (ax,) = figure.axes
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_") and line.get_label() != "C"]
    assert len(curves) >= 2 and len({line.get_zorder() for line in curves}) == 1
    on_points = on_segments = 0
    for index, below in enumerate(curves):
        for above in curves[index + 1:]:
            names = (below.get_label(), above.get_label())
            looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in (below, above)]
            assert looks[0] != looks[1], names
            assert above.get_marker() != below.get_marker() or above.get_linestyle() != below.get_linestyle(), names
            if _share_a_point(below, above):
                on_points += 1
                assert above.get_markersize() < below.get_markersize(), names
            if _share_a_segment(below, above):
                on_segments += 1
                assert above.get_linewidth() < below.get_linewidth(), names
    assert on_points and on_segments
    figure.canvas.draw()
    legends = [*figure.legends, *(legend for legend in [ax.get_legend()] if legend is not None)]
    assert len(legends) == 1
    legend_box, axes_box = legends[0].get_window_extent(), ax.get_window_extent()
    assert not legend_box.overlaps(axes_box), (legend_box, axes_box)
    assert figure.bbox.contains(legend_box.x1 - 1, legend_box.y0 + 1)  # within the figure, not cut off


@pytest.mark.usefixtures("cheap_figures")  # the figures, not their files
def test_compare_figures_keep_coinciding_curves_in_sight_and_the_legend_off_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen A (CKA = overlap = 1 throughout) against B of the same eigenfunctions (overlap A·B = 1 = A's curves
    at every step, B's overlap at step 0), D_LR and k95 alike: every curve was drawn with the marker '.' at width
    1.5, the later over the earlier, A's CKA and overlap in one style, and the legend inside the axes."""
    a = make_store(tmp_path / "a.h5", scalars=FROZEN)
    b = make_store(tmp_path / "b.h5")
    drawn = _drawn(tmp_path, monkeypatch, "compare", a, b, "--plots", tmp_path / "plots")
    assert set(drawn) == {"compare_trajectories", "compare_k95_utility"}
    for figure in drawn.values():
        _assert_every_curve_in_sight(figure)
    labels = [line.get_label() for line in drawn["compare_trajectories"].axes[0].get_lines()]
    assert "overlap A·B" in labels and "A: CKA to reference (cka_init)" in labels


@pytest.mark.usefixtures("cheap_figures")  # the figures, not their files
def test_report_trajectories_keep_a_frozen_runs_cka_and_overlap_in_sight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fdl report --plots` of a frozen run: the overlap (1 at every step) was drawn over the CKA (1 too)."""
    store = make_store(tmp_path / "frozen.h5", scalars=FROZEN)
    figure = _drawn(tmp_path, monkeypatch, "report", store, "--plots", tmp_path / "plots")["trajectories"]
    _assert_every_curve_in_sight(figure)
    (ax,) = figure.axes
    cka, overlap = (next(line for line in ax.get_lines() if f"({name})" in line.get_label())
                    for name in ("cka_init", "overlap_init"))
    np.testing.assert_array_equal(cka.get_ydata(), [1.0, 1.0, 1.0])  # drawn as they are, never shifted apart
    np.testing.assert_array_equal(overlap.get_ydata(), [1.0, 1.0, 1.0])


# -- 2. a layer whose parent uses its weights without calling it -------------------------------------------------


def test_a_layer_its_parent_never_calls_says_why_and_to_take_the_parents_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nn.MultiheadAttention uses out_proj's weights directly: `--layer encoder.self_attn.out_proj` said only "did
    not run in the model's forward pass" and "choose a module that the forward pass uses"; it now says why a module
    can be used yet not run, and that --layer encoder.self_attn (whose tuple's first element, the attention's
    output, fdl takes) does; which works."""
    import torch

    monkeypatch.setenv("COLUMNS", "1000")
    source = TRANSFORMER.replace("self.head = nn.Linear(8, 3)",
                                 "self.head = nn.Linear(8, 3)\n        self.spare = nn.Linear(2, 2)")
    module = model_file(tmp_path, source)
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 1):
        torch.save({"model": module.build().state_dict(), "step": step}, run / f"ckpt_{step}.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).integers(0, 11, (12, 5)), y=np.arange(12) % 3)
    common = ("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe)
    done = fdl_in_process(*common, "--layer", "encoder.self_attn.out_proj", "--out", tmp_path / "a.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert ("the module around it uses its weights directly without calling it (nn.MultiheadAttention does so with "
            "its out_proj); `fdl inspect` lists such modules as `not called`") in done.stderr
    assert ("fix: take the output of the module around it, which ran: --layer encoder.self_attn (of a module that "
            "returns a tuple, fdl takes the first element, here nn.MultiheadAttention's output") in done.stderr
    assert not (tmp_path / "a.h5").exists()
    done = fdl_in_process(*common, "--layer", "encoder.self_attn", "--out", tmp_path / "b.h5")
    assert done.returncode == 0, done.stderr
    # a module nothing uses, with no module around it: the general advice alone
    done = fdl_in_process(*common, "--layer", "spare", "--out", tmp_path / "c.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "layer spare did not run in the model's forward pass: no hook on the module saw a call" in done.stderr
    assert "fix: choose a module that the forward pass calls (see `fdl inspect`)" in done.stderr


# -- 3. a platform without fcntl (Windows) ------------------------------------------------------------------------

#: `fdl ARGV` as on a platform without the POSIX module fcntl: it cannot be imported (sys.modules holds None).
WITHOUT_FCNTL = "import sys; sys.modules['fcntl'] = None; from fdl_cli.cli import main; main(sys.argv[1:])"


def _without_fcntl(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)


def test_without_fcntl_the_store_commands_say_the_platforms_and_help_and_version_still_work(tmp_path: Path) -> None:
    """Windows has no fcntl: every command of a store ended in `ModuleNotFoundError: No module named 'fcntl'` and a
    traceback; it now says that fdl needs Linux or macOS, why, and to run it under WSL, with exit 1."""
    store = make_store(tmp_path / "run.h5")
    for args in (("report", store), ("summarize", store), ("classify", store), ("compare", store, store),
                 ("export", store, "--what", "eigenvalues"),
                 ("analyze", REPO / "sample_checkpoints", "--out", tmp_path / "new.h5")):
        done = _without_fcntl(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stderr.startswith("error: fdl's stores need a POSIX system (Linux or macOS): a store's writer "
                                      "locks it with fcntl.flock"), (args, done.stderr)
        assert "fix: run fdl under WSL (Windows Subsystem for Linux)" in done.stderr and done.stdout == ""
    assert not (tmp_path / "new.h5").exists()
    version = _without_fcntl("--version")
    assert version.returncode == 0 and version.stdout.startswith("fdl, version "), version.stderr
    for args in (("--help",), ("report", "--help")):
        done = _without_fcntl(*args)
        assert done.returncode == 0 and "Usage: fdl" in done.stdout and "Traceback" not in done.stderr, done.stderr


def test_readme_and_package_metadata_name_the_supported_platforms() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    classifiers = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["classifiers"]
    assert {"Operating System :: POSIX :: Linux", "Operating System :: MacOS"} <= set(classifiers)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "Platforms: Linux and macOS" in readme and "Windows" in readme

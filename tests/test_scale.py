"""What the twelfth session's scale benchmark (benchmarks/bench_scale.py) found, as behaviour: readers that
read only the arrays they use, exports written one checkpoint at a time, summaries of long runs that stay
one readable line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli import report as rep
from fdl_cli.errors import StoreError
from fdl_cli.store import StoreReader
from tests.test_analyze import run  # noqa: F401 - a fixture: a tiny training run (4-8-3 MLP, C = 3)
from tests.test_report import make_store

STEPS = tuple(range(0, 1200, 100))  # 12 checkpoints: more than the figures draw


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("scale") / "run.h5", steps=STEPS)


def test_reader_reads_one_array_and_its_first_rows(store: Path) -> None:
    with StoreReader(store) as reader:
        whole = reader.arrays(300)
        for name in ("eigenvalues", "eigenvectors", "eigenfunctions", "utility", "quality"):
            got = reader.array(300, name)
            assert got is not None and got.dtype == getattr(whole, name).dtype, name
            np.testing.assert_array_equal(got, getattr(whole, name), err_msg=name)
        top = reader.array(300, "eigenvalues", rows=2)
        np.testing.assert_array_equal(top, whole.eigenvalues[:2])
        assert reader.array(300, "feature_mean") is None  # not centered: not stored
        with pytest.raises(ValueError, match="unknown array"):
            reader.array(300, "eigen")
        with pytest.raises(StoreError, match="step 301 is not in"):
            reader.array(301, "eigenvalues")


class _Spy:
    """Records, per StoreReader call, the step and the array read; `arrays()` reads them all."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int, str | None, int | None]] = []
        array, arrays = StoreReader.array, StoreReader.arrays
        spy = self

        def one(self: StoreReader, step: int, name: str, **kwargs: Any) -> Any:
            spy.calls.append(("array", step, name, kwargs.get("rows")))
            return array(self, step, name, **kwargs)

        def every(self: StoreReader, step: int, **kwargs: Any) -> Any:
            spy.calls.append(("arrays", step, None, None))
            return arrays(self, step, **kwargs)

        monkeypatch.setattr(StoreReader, "array", one)
        monkeypatch.setattr(StoreReader, "arrays", every)


def test_figures_read_only_what_they_draw(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fdl report --plots/--html` read every array of every checkpoint (eigenvectors included, ~3 MB a
    checkpoint at p = m = 4 096: 1.4 GB of RSS for a 1 000-checkpoint store at p = 512). Now: the whole
    spectra of the 5 checkpoints of the triptych, the top eigenvalues of the others for the heat map,
    the eigenfunctions of the 3 steps drawn against x; never an eigenvector."""
    from fdl_cli.figures import HEATMAP_TOP, N_EIGENFUNCTION_STEPS, N_SELECTED, select_steps, series_figures

    spy = _Spy(monkeypatch)
    loaded = rep.load_run(store)
    stems = [stem for stem, _title, _figure in series_figures(loaded, loaded.series[0])]
    assert stems == ["triptych", "trajectories", "spectrum", "eigenfunctions"]
    whole = sorted(step for kind, step, _, _ in spy.calls if kind == "arrays")
    assert whole == select_steps(list(STEPS), N_SELECTED) and len(whole) < len(STEPS)
    top = [(step, rows) for kind, step, name, rows in spy.calls if kind == "array" and name == "eigenvalues"]
    assert top == [(step, HEATMAP_TOP) for step in STEPS]
    functions = [step for kind, step, name, _ in spy.calls if name == "eigenfunctions"]
    assert functions == select_steps(list(STEPS), N_EIGENFUNCTION_STEPS)
    assert {name for kind, _, name, _ in spy.calls if kind == "array"} == {"eigenvalues", "eigenfunctions"}


class _Writes(io.StringIO):
    """A stdout that notes how many arrays the reader had read at each write."""

    def __init__(self, spy: _Spy) -> None:
        super().__init__()
        self.spy = spy
        self.reads_at_write: list[int] = []

    def write(self, text: str) -> int:
        self.reads_at_write.append(len(self.spy.calls))
        return super().write(text)


def _expected_text(store: Path, what: str, fmt: str) -> str:
    """The export as the whole-in-memory code wrote it: csv.writer rows / json.dumps(rows, indent=2)."""
    with StoreReader(store) as reader:
        per_step = {step: getattr(reader.arrays(step), what) for step in reader.steps()}
    if fmt == "json":
        rows = [{"step": step, what: values.astype(np.float64).tolist()} for step, values in per_step.items()]
        return json.dumps(rows, indent=2, allow_nan=False) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if what == "eigenfunctions":
        writer.writerow(["step", "point", "k", "value"])
        for step, values in per_step.items():
            for point, row in enumerate(values.astype(np.float64)):
                writer.writerows([step, point, k, repr(float(v))] for k, v in enumerate(row, start=1))
    else:
        writer.writerow(["step", "k", what])
        for step, values in per_step.items():
            writer.writerows([step, k, repr(float(v))] for k, v in enumerate(values.astype(np.float64), start=1))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("what", ["eigenvalues", "quality", "eigenfunctions"])
def test_export_is_written_one_checkpoint_at_a_time(store: Path, monkeypatch: pytest.MonkeyPatch, what: str,
                                                    fmt: str) -> None:
    """`fdl export` built the whole text in memory after reading every array of every checkpoint: the
    eigenfunctions of 1 000 checkpoints (m = 4 096, K = 64) are ~8 GB of CSV, and even `--what
    eigenvalues` of a p = 512 store took 1.3 GB. Now each checkpoint's rows are written before the
    next one is read, and the text is the same, byte for byte."""
    expected = _expected_text(store, what, fmt)
    spy = _Spy(monkeypatch)
    stream = _Writes(spy)
    with rep.opened_run(store) as opened:
        assert rep.write_export(opened, what, fmt, stdout=stream, out=None) is None
    assert stream.getvalue() == expected
    reads = [step for kind, step, name, rows in spy.calls if kind == "array" and name == what and rows is None]
    assert reads == list(STEPS) and not [call for call in spy.calls if call[0] == "arrays"]
    # the first rows went out once one array had been read (quality: after the check that some
    # checkpoint stores it, which reads no data)
    checked = len(spy.calls) - len(STEPS)
    assert stream.reads_at_write[0] <= checked + 1, stream.reads_at_write[:3]


def test_npz_export_is_the_archive_numpy_writes(store: Path, tmp_path: Path) -> None:
    """The .npz is written member by member (the arrays one checkpoint at a time), as np.savez lays it out."""
    out = tmp_path / "e.npz"
    with rep.opened_run(store) as opened:
        rep.write_export(opened, "eigenfunctions", "npy", stdout=io.StringIO(), out=out)
    with StoreReader(store) as reader:
        arrays = {f"step_{step}": reader.arrays(step).eigenfunctions.astype(np.float64) for step in reader.steps()}
    reference = tmp_path / "r.npz"
    np.savez(reference, steps=np.asarray(STEPS, dtype=np.int64), **arrays)  # type: ignore[arg-type]
    assert out.read_bytes() == reference.read_bytes()


def _flickering(count: int) -> list[dict[str, Any]]:
    """A run whose k95 of Π̂ hovers at C + 1 = 11: MF and EF by turns, checkpoint after checkpoint."""
    records = [{"step": 0, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 3, "n_outputs": 10, "regime": "coefficient"}]
    for index in range(1, count):
        k95 = 11 if index % 2 else 12
        records.append({"step": 100 * index, "cka_init": 0.5, "overlap_init": 0.5, "k95_utility": k95, "n_outputs": 10,
                        "regime": "MF" if k95 == 11 else "EF"})
    return records


def test_long_regime_trajectories_stay_one_readable_line() -> None:
    """1 000 checkpoints flipping between MF and EF made `fdl report`'s regime line ~12 000 characters
    and `fdl classify`'s trajectory line ~6 600: now the first and last spans around a count of the
    others; short trajectories are printed whole, as before."""
    from fdl_cli import regimes

    records = _flickering(1000)
    [line] = [line for line in rep.summary_lines(rep.summarize(records)) if line.startswith("regime")]
    assert line.startswith("regime (1000 spans): coefficient (0) → MF (100) → EF (200) → ")
    assert "… 988 more spans (the regime column has every checkpoint) …" in line
    assert line.endswith("→ MF (99700) → EF (99800) → MF (99900)") and len(line) < 400
    verdict = regimes.classify_run(records)
    [line] = [line for line in regimes.describe(verdict, records) if line.startswith("trajectory")]
    assert line.startswith("trajectory (step: regime; 1000 spans): 0: coefficient | 100: MF | 200: EF")
    assert "… 988 more spans (--json lists every checkpoint) …" in line and line.endswith("99800: EF | 99900: MF")
    assert len(verdict.as_json()["trajectory"]) == 1000  # the JSON keeps every checkpoint
    for count in (regimes.SHOWN_SPANS, regimes.SHOWN_SPANS + 2):  # whole: eliding 1 or 2 spans saves nothing
        short = _flickering(count)
        [line] = [line for line in rep.summary_lines(rep.summarize(short)) if line.startswith("regime")]
        assert line == ("regime: " if count <= regimes.SHOWN_SPANS else f"regime ({count} spans): ") + " → ".join(
            f"{r['regime']} ({r['step']})" for r in short
        )
    [line] = [line for line in rep.summary_lines(rep.summarize(_flickering(regimes.SHOWN_SPANS + 3)))
              if line.startswith("regime")]
    assert "… 3 more spans (" in line



def test_compare_reads_only_the_eigenfunctions_it_overlaps(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-run overlap read every array of each matched step of both runs, all held at once
    (`--overlap-steps all` on two 1 000-checkpoint stores: every array of both); now the eigenfunctions
    alone, one step of each run at a time."""
    spy = _Spy(monkeypatch)
    with rep.opened_run(store) as run_a, rep.opened_run(store) as run_b:
        comparison = rep.compare_runs(run_a, run_b, overlap_steps=None)
    assert [step.overlap for step in comparison.steps] == pytest.approx([1.0] * len(STEPS))
    assert {(kind, name) for kind, _, name, _ in spy.calls} == {("array", "eigenfunctions")}
    assert [step for _, step, _, _ in spy.calls] == [step for step in STEPS for _ in "ab"]

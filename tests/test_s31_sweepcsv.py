"""A sweep's CSV says which runs diverged: `fdl classify A B --format csv` has a `refused_steps` column (the steps
`fdl analyze` refused, as `--json`'s `refused_steps` lists them), so a pipeline reading only the CSV learns it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py

from tests.cli_run import fdl_in_process
from tests.test_s31_refused import run, store  # noqa: F401  (module fixtures: a run that diverged at 30, 40)


def _healthy(store: Path, tmp_path: Path) -> Path:  # noqa: F811
    """The same store as an fdl that recorded no refusal wrote it: no refused steps."""
    old = tmp_path / "old.h5"
    old.write_bytes(store.read_bytes())
    with h5py.File(old, "a") as handle:
        del handle.attrs["refused"]
    return old


def test_the_sweep_csv_holds_each_stores_refused_steps(store: Path, tmp_path: Path) -> None:  # noqa: F811
    old = _healthy(store, tmp_path)
    listed = fdl_in_process("classify", store, old, "--json")
    assert listed.returncode == 0, listed.stderr
    steps = [[item["step"] for item in row.get("refused_steps", [])] for row in json.loads(listed.stdout)]
    assert steps == [[30, 40], []]

    done = fdl_in_process("classify", store, old, "--format", "csv")
    assert done.returncode == 0, done.stderr
    header, *rows = csv.reader(io.StringIO(done.stdout, newline=""))
    assert header[-1] == "refused_steps", header  # the last column: the columns before it as they were
    cells = [dict(zip(header, row, strict=True))["refused_steps"] for row in rows]
    assert cells == ["[30, 40]", ""]  # a list as JSON text, as every CSV list; none: an empty cell (JSON: absent)
    assert [json.loads(cell) if cell else [] for cell in cells] == steps


def test_the_sweep_markdown_holds_them_too(store: Path, tmp_path: Path) -> None:  # noqa: F811
    done = fdl_in_process("classify", store, _healthy(store, tmp_path), "--format", "markdown")
    assert done.returncode == 0, done.stderr
    header, _, diverged, healthy = done.stdout.splitlines()
    assert header.rstrip(" |").endswith("refused_steps"), header
    assert diverged.rstrip(" |").endswith("[30, 40]") and healthy.rstrip().endswith("|  |"), (diverged, healthy)

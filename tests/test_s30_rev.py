"""A review of three changes of this session: machine output on stdout (its encoding, fd 1 while model code runs),
the BatchNorm-statistics warning, and the readers' warning of an --overwrite writer about to replace a store.

What was found, each failing before its fix:

- A piped stdout made UTF-8 (`tolerate_unencodable_output`) lost its escaping error handler: Python's
  `reconfigure(encoding=...)` resets `errors` to strict, so under PYTHONIOENCODING=ascii or latin-1 a store whose
  name is not UTF-8 (`$'\\xffrun.h5'`) ended `fdl classify ... --format csv | cat` in a UnicodeEncodeError traceback.
- The lock file of an `--overwrite` writer named the store it replaces by device and inode, and a commit writes a
  new file: on ext4 a later commit's copy took the freed inode again, and readers warned that the store "is about
  to be replaced" after the run had replaced it (this test failed 2 runs in 4 before the fix: which commit gets
  the inode is the file system's choice).
- Under torchrun the warning that features moved by BatchNorm statistics alone was never said: each rank found
  its steps, and only the constant-features warnings were gathered to rank 0 (`torchrun --nproc-per-node 2 -m
  fdl_cli analyze` of test_s30_role_cnn's frozen run in train mode: no warning; one process: one).
- The raw-pixels warning called float count features of 3 dimensions (words per sentence, 0 to 4) "raw pixel
  values?", from a maximum of 2: now from 32, which the brightest pixel of a batch of 8-bit images is far above.
- What the model's code wrote to sys.__stdout__ (a stream on fd 1 that a library may keep) stayed in its buffer
  while fd 1 pointed at stderr, and was flushed into stdout after the `--json` records (stdout piped, without
  PYTHONUNBUFFERED): `| jq` failed.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import warm
from tests.test_analyze import fdl
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored
from tests.test_s30_watch import _analyze


def test_piped_stdout_made_utf8_still_escapes_a_name_that_is_no_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout piped under an ASCII locale: made UTF-8, and a file name's undecodable byte (surrogateescape's
    \\udcff) is still written as the escape `\\xff`, not a UnicodeEncodeError that ended the command."""
    from fdl_cli.cli import tolerate_unencodable_output

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii", errors="strict"))
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # pytest's own stream left as it is
    tolerate_unencodable_output()
    sys.stdout.write("/runs/\udcffrun.h5,st\u00f6re\n")
    sys.stdout.flush()
    assert raw.getvalue() == "/runs/\\xffrun.h5,st\u00f6re\n".encode()


# ------------------------------------------------------------------ the readers' "is about to be replaced" warning


def test_overwrite_watch_readers_are_not_warned_after_its_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `--overwrite --watch` committing one checkpoint per poll: a report after each commit shows the watch's
    store without "about to be replaced". The lock file named the replaced file by device and inode, and a commit
    writes a new file: on ext4 a later commit's copy takes the inode the first commit freed (every second one
    here), and from then on a reader warned, for the rest of the run, that the store was about to be replaced."""
    other = _make_run(tmp_path / "other", [0, 10, 20, 30])
    out = tmp_path / "s.h5"
    assert _analyze(other, other / "probe.npz", out, "--top-k", "5").returncode == 0
    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    said: list[str] = []

    def arrive_then_report(name: str) -> Callable[[], None]:
        def both() -> None:
            _arrive(source, folder, name)
            said.append("")  # the report comes at the next poll, once the checkpoint is committed
        return both

    def report() -> None:
        done = fdl("report", out)
        said[-1] = done.stdout + done.stderr

    steps = [0, 10, 20, 30]
    polls = [step for step_ in steps for step in (arrive_then_report(f"step_{step_}.safetensors"), report)]
    with _polls(monkeypatch, *polls):
        done = _analyze(folder, source / "probe.npz", out, "--overwrite", "--watch", "--poll", "0.1")
    assert done.returncode == 130, done.stderr
    assert sorted(_stored(out)) == steps
    assert len(said) == len(steps) and all("top_k 64" in text for text in said), said
    assert [text for text in said if "about to be replaced" in text] == []


# ------------------------------------------------------------------ BatchNorm statistics under torchrun


def _rank_context() -> Any:
    import torch

    from fdl_cli.pipeline import AnalyzeOptions, _Context
    from fdl_cli.progress import NullReporter

    return _Context(options=AnalyzeOptions(sources=("run",)), probes=[], factory=None, model_kwargs={}, layer_names=(),
                    device=torch.device("cpu"), reporter=NullReporter())


def test_torchrun_ranks_statistics_only_steps_are_said_by_rank_0() -> None:
    """`torchrun --nproc-per-node 2 -m fdl_cli analyze` of a frozen backbone trained in train mode: each rank found
    its checkpoints' features moved by BatchNorm statistics alone, and no rank said it (one process warns): the
    ranks' steps were gathered for the constant-features warnings only. Each rank's part as `_analyze_one` leaves
    it, gathered to rank 0 as the job does (`sharding._constant_steps`, `_warn_constant_steps`)."""
    from fdl_cli.sharding import _constant_steps, _warn_constant_steps

    ranks = [_rank_context(), _rank_context()]
    ranks[0].statistics_moved["probe/head:input"] = ([4], ["bn", "stem.1"])
    ranks[1].statistics_moved["probe/head:input"] = ([8, 12], ["bn", "stem.1"])
    parts = [_constant_steps(ranks[0], {0, 4}), _constant_steps(ranks[1], {8, 12})]
    _warn_constant_steps(ranks[0], parts)
    said = [text for text in ranks[0].reporter.warnings if "BatchNorm running statistics" in text]
    assert len(said) == 1, ranks[0].reporter.warnings
    assert said[0].startswith("probe/head:input: the features moved from the reference at steps 4, 8, 12 though")
    assert "(bn, stem.1)" in said[0]


# ------------------------------------------------------------------ the raw-pixels warning


BOW_MODEL = """
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(120, 8), nn.ReLU(), nn.Linear(8, 3))
"""


def test_count_features_of_three_dimensions_are_not_called_raw_pixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bag-of-words counts per sentence, (N, sentences, vocabulary) floats of 0 to 4: whole numbers above 1 in 3
    dimensions, which the warning took for uint8 pixels cast to float ("raw pixel values?", normalise them). The
    brightest of a batch of 8-bit images is far above such counts; the uint8 images of test_s30_role_cnn still warn."""
    import torch
    from safetensors.torch import save_file

    from tests.test_reliability_inputs import fdl as fdl_captured

    (tmp_path / "bow.py").write_text(BOW_MODEL, encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(BOW_MODEL, namespace)  # noqa: S102 - the test's own model text
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.manual_seed(step)
        state = namespace["build"]().state_dict()
        save_file({key: value.contiguous() for key, value in state.items()}, str(run / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "bow.npz", x=rng.poisson(0.8, (60, 6, 20)).clip(0, 4).astype(np.float32),
             y=rng.integers(0, 3, 60))
    status, _, err = fdl_captured(capsys, "analyze", str(run), "--model", f"{tmp_path / 'bow.py'}:build", "--probe",
                                  str(tmp_path / "bow.npz"), "--out", str(tmp_path / "bow.h5"), "--anchor-size", "32",
                                  "--top-k", "3")
    assert status == 0, err
    assert "raw pixel" not in err, err


# ------------------------------------------------------------------ stdout while the model's code runs

DUNDER_MODEL = """
import sys

from torch import nn


class Net(nn.Sequential):
    def forward(self, x):
        print("noise: sys.__stdout__ in forward", file=sys.__stdout__)  # buffered, not flushed
        return super().forward(x)


def build(hidden=64, n_classes=10):
    return Net(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
"""


def test_what_model_code_leaves_in_sys_dunder_stdout_goes_to_stderr(tmp_path: Path) -> None:
    """`fdl analyze --json | jq` of a model whose code writes to sys.__stdout__ (the interpreter's own stream on file
    descriptor 1, which a library may keep): piped, Python buffers it, and it was flushed after fd 1 was given back
    to stdout, after the records, breaking `jq`. A process test: the buffering of a pipe (PYTHONUNBUFFERED unset)."""
    import json
    import os
    import shutil

    from tests.cli_run import REPO

    run = tmp_path / "run"
    run.mkdir()
    for name in ("step_0.safetensors", "step_10.safetensors", "probe.npz"):
        shutil.copy(REPO / "sample_checkpoints" / name, run / name)
    (run / "model.py").write_text(DUNDER_MODEL, encoding="utf-8")
    (run / "fdl.toml").write_text('model = "model.py:build"\nprobe = "probe.npz"\n', encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    done = warm.run([sys.executable, "-m", "fdl_cli", "analyze", str(run), "--out", str(tmp_path / "s.h5"),
                     "--json"], cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["step"] for line in done.stdout.splitlines()] == [0, 10], done.stdout
    assert "noise: sys.__stdout__ in forward" in done.stderr

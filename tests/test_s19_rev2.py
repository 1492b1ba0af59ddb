"""Session 19 review (rev2): under torchrun, the refusals met after the ranks' first agreement are said once
too; fdl.toml of several folders; inspect's token ids and the summary's grouped failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import tiny_model_beside
from tests.test_analyze import fdl
from tests.test_distributed import _args, _make_run
from tests.test_s19_rank import _torchrun, _torchrun_model


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


# -- (a) torchrun: a refusal every rank meets after the checks before any work ------------------------


def test_a_missing_reference_step_is_said_once_under_torchrun(tmp_path: Path) -> None:
    """--reference of a step no checkpoint has: every rank refused it after the agreement on the input
    checks, each naming itself ("error on rank 0: ...", "error on rank 1: ...")."""
    run = _make_run(tmp_path / "run")
    done = _torchrun(*_args(run, tmp_path / "s.h5", "--reference", "999"))
    assert done.returncode == 1, done.stderr[-4000:]
    assert _errors(done.stderr) == ["error: --reference 999: no checkpoint has that step"], done.stderr[-4000:]
    assert not (tmp_path / "s.h5").exists()


MODEL = """
import torch
from torch import nn


def build(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def test_a_store_of_other_model_code_is_refused_once_under_torchrun(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "run")
    model = tmp_path / "model.py"
    model.write_text(MODEL)
    args = _args(run, tmp_path / "s.h5")
    args[args.index("--model") + 1] = f"{model}:build"
    first = fdl(*args, "--steps", "0,10")
    assert first.code == 0, first.stderr
    model.write_text(MODEL + "\n# edited\n")
    done = _torchrun(*args)
    assert done.returncode == 1, done.stderr[-4000:]
    errors = _errors(done.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: the model code {model} changed since"), \
        done.stderr[-4000:]


# -- (b) fdl.toml of several folders -------------------------------------------------------------------


def _toml_run(folder: Path, extra: str = "") -> Path:
    from tests.test_s19_toml import _runs, _toml

    run1, _ = _runs(folder)
    _toml(run1, extra)
    return run1


def test_one_folder_given_by_two_spellings_reads_its_fdl_toml_once(tmp_path: Path, monkeypatch) -> None:
    """`fdl analyze run1/step_0.pt /abs/run1/step_10.pt`: one folder, one fdl.toml, compared with itself and
    its ignored keys warned of twice."""
    monkeypatch.setenv("COLUMNS", "1000")
    run1 = _toml_run(tmp_path, "bogus = 1")
    monkeypatch.chdir(tmp_path)
    done = fdl("analyze", "run1/step_0.pt", str(run1 / "step_10.pt"), "--out", str(tmp_path / "s.h5"))
    assert done.code == 0, done.stderr
    assert done.stderr.count("ignored bogus") == 1, done.stderr
    assert "is read for the checkpoints of every folder" not in done.stderr


# -- (c) inspect's token ids ------------------------------------------------------------------------------

POSITIONS_FIRST = '''
import torch
from torch import nn


class Toy(nn.Module):
    """A digit task's transformer stub: its table of 32 positions registered before its 12 tokens."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Embedding(32, 16)
        self.tok = nn.Embedding(12, 16)
        self.head = nn.Linear(16, 12)

    def forward(self, ids):
        return self.head((self.tok(ids) + self.pos(torch.arange(ids.shape[1]))).mean(1))


def build():
    torch.manual_seed(0)
    return Toy()
'''


def test_inspect_runs_token_ids_every_embedding_holds_when_the_first_tables_fail(tmp_path: Path) -> None:
    """Ids in [0, 32) of the first table (positions) ran past the 12 rows of the token table: the pass
    failed and the listing blamed "a sequence length of its own?"."""
    import torch

    from fdl_cli.inspection import inspect_checkpoint
    from tests.cli_run import model_file

    torch.save(model_file(tmp_path, POSITIONS_FIRST).build().state_dict(), tmp_path / "step_0.pt")
    result = inspect_checkpoint(checkpoint=str(tmp_path / "step_0.pt"), model_spec=f"{tmp_path}/model.py:build")
    shapes = {row["name"]: row["output_shape"] for row in result["modules"]}
    assert shapes == {"": [1, 12], "pos": [8, 16], "tok": [1, 8, 16], "head": [1, 12]}, shapes
    assert result["sample"] == ("random token ids in [0, 12) of shape (1, 8), int64, the rows of the smallest "
                                "nn.Embedding (tok), as ids of the first nn.Embedding (pos) failed on the model; "
                                "--probe FILE runs real ones (and their sequence length)")
    assert (result["default_layer"], result["default_features"]) == ("head:input", 16)


# -- (a) a check one rank fails alone still says which rank, now that the others keep quiet --------------

RANK_0_SHORT = """
import os

import torch
from torch import nn

if os.environ.get("RANK") == "0":  # rank 0's machine has next to no memory left
    import fdl_cli.resources

    fdl_cli.resources.available_host_bytes = lambda *args, **kwargs: 1000


def build(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def test_a_memory_refusal_of_rank_0_alone_names_it(tmp_path: Path) -> None:
    """Rank 1 printed "... (on rank 0)" and rank 0 the message alone; with rank 1 quiet, nothing said whose
    machine was short."""
    done = _torchrun_model(tmp_path, RANK_0_SHORT)
    assert done.returncode == 1, done.stderr[-4000:]
    errors = _errors(done.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: ") and errors[0].endswith("(on rank 0)"), \
        done.stderr[-4000:]


def test_a_failure_on_rank_0s_probe_slice_alone_names_it(monkeypatch) -> None:
    """--shard-probe: rank 0 raised its own error as it was, and rank 1, which said "(on rank 0's probe
    slice)", now keeps quiet."""
    import torch.distributed as dist

    from fdl_cli.distributed import World, agree_on_failure
    from fdl_cli.errors import NumericalError

    def gather(reports, mine, reported=(("NumericalError", "NaN features", None, None), None)):
        reports[:] = list(reported)

    monkeypatch.setattr(dist, "all_gather_object", gather)
    for rank, error in ((0, NumericalError("NaN features")), (1, None)):
        try:
            agree_on_failure(error, World(rank=rank, size=2, local_rank=rank))
        except NumericalError as exc:
            assert exc.what == "NaN features (on rank 0's probe slice)" and exc.alike == "job", (rank, exc.what)
        else:
            raise AssertionError(f"rank {rank} did not raise")
    # every rank failed: no rank named
    monkeypatch.setattr(dist, "all_gather_object", lambda reports, mine: gather(reports, mine, (
        ("NumericalError", "NaN features", None, None),) * 2))
    own = NumericalError("NaN features")
    with pytest.raises(NumericalError) as raised:  # a try/except here passed when nothing was raised
        agree_on_failure(own, World(rank=0, size=2, local_rank=0))
    assert raised.value is own and raised.value.what == "NaN features"


# -- (b) the model_kwargs of fdl.toml go with its model, in inspect too ------------------------------------

OTHER_MODEL = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""


def test_inspect_does_not_pass_fdl_tomls_model_kwargs_to_another_factory(tmp_path: Path, monkeypatch) -> None:
    """analyze leaves them out with a note since session 19; inspect passed them on: `build() got an unexpected
    keyword argument 'hidden'`, with a fix naming a --model-kwargs nobody gave."""
    import json

    monkeypatch.setenv("COLUMNS", "1000")
    run = _make_run(tmp_path / "run")
    (run / "fdl.toml").write_text(f'model = "{tiny_model_beside(run)}"\nmodel_kwargs = {{ hidden = 8 }}\n'
                                  'probe = "probe.npz"\n')
    (tmp_path / "other.py").write_text(OTHER_MODEL)
    note = (f"note: {run / 'fdl.toml'}'s model_kwargs {{'hidden': 8}} are not used: they go with its model "
            f"{run / 'model.py'}:mlp, and --model gives {tmp_path / 'other.py'}:build; pass --model-kwargs JSON for "
            "its factory")
    for extra in ((), ("--json",)):
        done = fdl("inspect", str(run / "step_0.safetensors"), "--model", f"{tmp_path / 'other.py'}:build", *extra)
        assert done.code == 0, done.stderr
        assert done.stderr.count(note) == 1, done.stderr
    assert json.loads(done.stdout)["default_layer"] == "2:input"
    # its own model still gets them
    own = fdl("inspect", str(run / "step_0.safetensors"), "--json")
    said = f"note: running the model code {run / 'model.py'}:mlp, named by {run / 'fdl.toml'}"  # tests/test_s23_sec.py
    assert own.code == 0 and "note:" not in own.stderr.replace(said, ""), own.stderr

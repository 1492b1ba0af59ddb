"""Small leftovers of the session's reviews, each held to what the user reads.

- `fdl compare`'s judgement of whether a run's features moved read the checkpoints before a mid-run
  `--reference`, which `fdl classify` does not: "moved" there could contradict classify's coefficient.
- `fdl classify STORE...` said "every row: probe train" of stores whose probes named train are other files.
- its trend line said nothing of a column that one store lacks, where the others' values rise.
- a resume refused (a newer schema) printed the dominant-class note, a promise of what the store will record.
- outputs zero at the reference alone (f = α·(net − net₀)) were warned of as "a zero or constant head?" only.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store


def _with_provenance(path: Path, **values: object) -> Path:
    """`path` with `values` set in its provenance (as `fdl analyze --reference 100` records reference_step)."""
    with h5py.File(path, "r+") as handle:
        provenance = json.loads(handle.attrs["provenance"])
        provenance.update(values)
        handle.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    return path


def _store(path: Path, seed: int, columns: dict[str, list[float | None]], steps=(0, 100, 200)) -> Path:
    scalars = {step: {**SCALARS.get(step, SCALARS[200]), **{name: values[i] for name, values in columns.items()}}
               for i, step in enumerate(steps)}
    return make_store(path, seed=seed, steps=steps, scalars=scalars)


def test_compare_judges_movement_from_the_reference_on_as_classify_does(tmp_path: Path) -> None:
    """Run A analysed with --reference 100: step 0, before the reference, differs from it (CKA 0.5), steps 100 and
    200 do not. classify calls A coefficient; compare called A's features moved, at step 0."""
    a = _with_provenance(_store(tmp_path / "a.h5", 3, {"d_lr": [0.9, 0.6, 0.5], "cka_init": [0.5, 1.0, 1.0],
                                                       "overlap_init": [0.4, 1.0, 1.0]}), reference_step=100)
    b = _store(tmp_path / "b.h5", 0, {})  # moves: CKA to its reference down to 0.625
    classified = fdl_in_process("classify", a, "--json")
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["regime"] == "coefficient"
    done = fdl_in_process("compare", a, b, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["moved"] == {"a": False, "b": True}, result["moved"]
    verdict = result["verdict"]
    assert "Run A's features did not move (at every matched step from its reference (step 100) on" in verdict, verdict
    assert "Of the two runs, only B's features moved" in verdict, verdict


def test_classify_of_several_stores_says_when_probes_of_one_name_hold_other_data(tmp_path: Path) -> None:
    """Three stores whose probes are all named "train", the third's another file (another sha256): the text said
    "every row: probe train, layer fc1", as if every row measured the same data."""
    stores = [make_store(tmp_path / f"s{i}.h5", seed=i, probe_sha=sha)
              for i, sha in enumerate(("a" * 64, "a" * 64, "b" * 64))]
    done = fdl_in_process("classify", *stores)
    assert done.returncode == 0, done.stderr
    text = done.stderr
    assert "every row: probe train, layer fc1" in text, text
    assert (f"the probes named train differ between stores: sha256 aaaaaaaaaaaa… in {stores[0]}, {stores[1]}; "
            f"bbbbbbbbbbbb… in {stores[2]}: those rows measure other data") in text, text
    # the same probe file in every store: no such line
    same = fdl_in_process("classify", *stores[:2])
    assert "every row: probe train, layer fc1" in same.stderr and "differ between stores" not in same.stderr


def test_the_trend_down_the_rows_is_read_over_the_stores_that_have_a_value(tmp_path: Path) -> None:
    """R² at the final checkpoint in three of four stores: the line said "r2 — (not every store has it)" and no
    trend, where the three values rise."""
    r2s = (0.2, None, 0.5, 0.7)
    stores = [make_store(tmp_path / f"s{i}.h5", seed=i, scalars={**SCALARS, 200: {**SCALARS[200], "r2": r2}})
              for i, r2 in enumerate(r2s)]
    done = fdl_in_process("classify", *stores)
    assert done.returncode == 0, done.stderr
    assert f"r2 rises (over 3 of 4 stores; {stores[1]} has none)" in done.stderr, done.stderr
    turned = [make_store(tmp_path / f"t{i}.h5", seed=i, scalars={**SCALARS, 200: {**SCALARS[200], "r2": r2}})
              for i, r2 in enumerate((0.2, None, 0.5, None, 0.4))]
    done = fdl_in_process("classify", *turned)
    assert (f"r2 not monotone: falls at {turned[4]}; rises at {turned[2]} (over 3 of 5 stores; {turned[1]}, "
            f"{turned[3]} have none)") in done.stderr, done.stderr


def test_a_refused_resume_makes_no_promise_of_what_classify_will_read(tmp_path: Path) -> None:
    """A store of a newer schema: the resume is refused and writes nothing, yet analyze first printed the
    dominant-class note, which says classify reads accuracy against the labels' shares (which it cannot)."""
    from tests.test_s27_compat import _analyze, _run

    ckpts = _run(tmp_path, (0, 10))
    out = tmp_path / "run.h5"
    done = _analyze(tmp_path, ckpts, out)
    assert "a constant guess of it scores" in done.stderr, done.stderr  # the note, where the store records it
    with h5py.File(out, "r+") as handle:
        handle.attrs["schema_version"] = 99
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    assert done.returncode == 1, done.stderr
    assert "schema" in done.stderr, done.stderr
    assert "a constant guess of it scores" not in done.stderr, done.stderr


LAZY_MODEL = '''import copy

import torch
from torch import nn


class Centered(nn.Module):
    """f = alpha * (net(x) - net0(x)): zero at initialisation by construction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.net0 = copy.deepcopy(self.net).requires_grad_(False)

    def forward(self, x):
        return 4.0 * (self.net(x) - self.net0(x))


def build():
    return Centered()
'''


def test_outputs_zero_at_the_reference_alone_name_the_centred_parametrisation(tmp_path: Path) -> None:
    """f = α·(net − net₀) outputs exactly 0 at its initialisation, and not later: the warning asked only "a zero
    or constant head?", which alarms a reader whose model is zero there by construction."""
    import numpy as np
    import torch

    from tests.cli_run import model_file

    net = model_file(tmp_path, LAZY_MODEL).build()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(net.state_dict(), ckpts / "step_0.pt")
    with torch.no_grad():
        for parameter in net.net.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    torch.save(net.state_dict(), ckpts / "step_10.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(40, 6)).astype(np.float32),
             y=rng.normal(size=(40, 3)).astype(np.float32))
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "--layer", "net.1", "-o", tmp_path / "run.h5", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stderr.split())
    assert ("the model's outputs are constant over the probe (a zero or constant head?) at step 0: they carry no "
            "energy about their mean, so D_LR is 1.0 there") in text, text
    assert ("only at the reference (step 0), and not at the later checkpoints: a model built to output zero at "
            "initialisation (f = α·(net − net₀), the lazy-training parametrisation) gives this by construction"
            ) in text, text

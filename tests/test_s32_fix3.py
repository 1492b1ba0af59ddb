"""Two messages that said less, or other, than what happened:

1. A resume without --layer of a store analysed at a layer other than this fdl's default said "the store goes on at
   value:input", and then refused the store for another reason (another --top-k, another probe): the note is said
   once the store is taken.
2. A valued option before its command with no value (`fdl --format report run.h5`) was shown "as in 'fdl report ...
   --format'", which, copied, lacks the value: the example names what the value is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process, model_file
from tests.test_s24_arch import _analyze, _checkpoints, _vector_probe
from tests.test_s32_layer import MODELS

# ------------------------------------------------------------------ a store at another layer, refused


@pytest.mark.parametrize("change", [("--top-k", "5"), ("--probe", "other")])
def test_a_store_at_another_layer_refused_is_not_said_to_go_on(tmp_path: Path, change: tuple[str, str]) -> None:
    """`ScaledPolicy` analysed at value:input, resumed without --layer and with another --top-k (or another probe
    only): the store is refused ("a different run", or the probe's), and no note says it goes on at value:input."""
    module = model_file(tmp_path, MODELS)
    probe, _x, _y = _vector_probe(tmp_path)
    run = _checkpoints(tmp_path, module, "ScaledPolicy")
    code, err, store = _analyze(tmp_path, run, "ScaledPolicy", probe, "--layer", "value:input")
    assert code == 0, err
    option, value = change
    if option == "--probe":  # the same samples under another name: a probe the store does not hold
        value = f"other={probe}"
    probes = () if option == "--probe" else ("--probe", str(probe))
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path}/model.py:build", "--model-kwargs",
                          json.dumps({"name": "ScaledPolicy"}), *probes, option, value, "-o", store,
                          "--device", "cpu")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, said
    assert "holds the results of a different run" in said, said
    assert "goes on at value:input" not in said, said


# ------------------------------------------------------------------ a valued option with no value, before its command


@pytest.mark.parametrize(("args", "example"), [
    (("--format", "report", "run.h5"), "'fdl report ... --format {table|json|csv|markdown}'"),
    (("--device", "analyze", "ckpts"), "'fdl analyze ... --device DEVICE'"),
    (("-o", "analyze", "ckpts"), "'fdl analyze ... -o FILE'"),
    (("--format",), "'fdl classify ... --format {table|json|csv|markdown}'"),
    (("--no-center", "analyze", "ckpts"), "'fdl analyze ... --no-center'"),  # a flag's other name: no value
])
def test_a_valued_option_with_no_value_is_shown_with_what_its_value_is(args: tuple[str, ...], example: str) -> None:
    """The example says what goes after the option: its choices, its --help name (FILE), else its name in capitals;
    a flag (--json) stays bare (tests/test_s31_help.py)."""
    done = fdl_in_process(*args)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said
    assert f"as in {example}" in said, said

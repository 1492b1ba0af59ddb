"""Review of the session's help, low-rank-reference and progress changes: an option of several commands given
with no command at all, and the overlaps' k a store's `options` imply when they record no `overlap_k`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_run import fdl_in_process
from tests.test_s31_degen import _run


def test_an_option_of_commands_alone_names_them_not_version() -> None:
    """`fdl --json` (the command forgotten, or typed after): click suggested `--version`; the commands that take
    --json are named instead, each once (aliases left out)."""
    done = fdl_in_process("--json")
    assert done.returncode == 2
    assert "--version" not in done.stderr
    assert ("'--json' is an option of 'fdl analyze', 'fdl classify', 'fdl compare', 'fdl export', 'fdl inspect' and "
            "'fdl report', not of fdl: give it after one of them") in " ".join(done.stderr.split())
    assert "'--out' is an option of 'fdl analyze' and 'fdl export', not of fdl" in fdl_in_process("--out", "x").stderr
    # an option no command has keeps click's message
    assert "No such option '--nosuch'" in fdl_in_process("--nosuch").stderr


def test_overlap_k_equal_to_top_k_below_c_is_not_called_a_low_rank_reference(tmp_path: Path) -> None:
    """--top-k 1 --overlap-k 1 with C = 3: the store records no `overlap_k` (it equals min(top_k, C)), and the
    overlaps were taken at k = 1 by choice. A reference of rank 1 is then not below k: analyze says nothing, and
    classify said the overlaps' k was 3 and that the reference's rank held them at 1."""
    root = _run(tmp_path, 8, constant_reference=True)
    done = fdl_in_process("analyze", root / "ckpts", "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          json.dumps({"n_in": 4, "hidden": 8, "n_out": 3}), "--probe", root / "probe.npz",
                          "--top-k", "1", "--overlap-k", "1", "-o", root / "k1.h5")
    assert done.returncode == 0, done.stderr
    assert "below the overlaps' k" not in done.stderr
    verdict = fdl_in_process("classify", root / "k1.h5", "--json")
    assert verdict.returncode == 0, verdict.stderr
    assert "low_rank_reference" not in json.loads(verdict.stdout)["evidence"]
    text = fdl_in_process("classify", root / "k1.h5")
    assert "below the overlaps' k" not in text.stdout + text.stderr

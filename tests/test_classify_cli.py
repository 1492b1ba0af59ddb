"""`fdl classify` end to end on a small analysed store: exit codes 0/1/3, clean JSON on stdout, --threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fdl_cli.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from fdl_cli.pipeline import AnalyzeOptions, run_analyze

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("classify") / "run.fdl.h5"
    summary = run_analyze(AnalyzeOptions(sources=(str(SAMPLES),), steps=(0, 5, 50, 500, 800, 1000), out=out, device="cpu"))
    assert not summary.failed
    return out


def classify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(["classify", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_on_stdout_only(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = classify(capsys, str(store), "--json")
    assert code == 0
    payload = json.loads(out)
    assert set(payload) == {"regime", "evidence", "thresholds", "trajectory"}
    assert payload["regime"] == "MF"
    assert [p["step"] for p in payload["trajectory"]] == [0, 5, 50, 500, 800, 1000]
    assert payload["trajectory"][0]["regime"] == "coefficient"
    assert payload["evidence"]["probe"] == "probe" and payload["evidence"]["layer"] == "4:input"
    assert "not generalisation" in payload["evidence"]["note"]
    assert payload["thresholds"]["cka_static"] == 0.99


def test_human_output_goes_to_stderr(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = classify(capsys, str(store))
    assert code == 0 and out == ""
    for words in ("regime: MF", "rule:", "trajectory", "MF from step", "thresholds:", "cka_static = 0.99",
                  "MF is not generalisation"):
        assert words in err


def test_expect_match_is_0_and_mismatch_is_3(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert classify(capsys, str(store), "--expect", "MF")[0] == 0
    code, out, err = classify(capsys, str(store), "--json", "--expect", "EF")
    assert code == 3
    assert json.loads(out)["regime"] == "MF"  # the verdict is still printed, cleanly
    assert "expected EF, got MF" in err
    # Regime names in any case (a CI script's `--expect mf` was a usage error)
    assert classify(capsys, str(store), "--expect", "mf")[0] == 0
    code, _, err = classify(capsys, str(store), "--expect", "ef")
    assert code == 3 and "expected EF, got MF" in err


def test_threshold_override_recomputes_every_checkpoint(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = classify(capsys, str(store), "--json", "--threshold", "mf_extra=-0", "--threshold", "cka_static=0.3",
                            "--threshold", "overlap_static=0.3", "--threshold", "overlap_moved=0.3")
    payload = json.loads(out)
    assert code == 0 and payload["regime"] == "coefficient"
    assert {p["regime"] for p in payload["trajectory"]} == {"coefficient"}
    assert payload["thresholds"]["cka_static"] == 0.3
    code, out, _ = classify(capsys, str(store), "--json", "--threshold", "mf_extra=-1")
    assert code == 1 and out == ""
    code, out, _ = classify(capsys, str(store), "--json", "--threshold", "mf_extra=0", "--threshold", "final_window=1")
    assert json.loads(out)["evidence"]["final_k95_utility"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "nope=1"], "unknown threshold 'nope'"),
        (["--threshold", "cka_static"], "bad threshold"),
        (["--probe", "missing"], "missing"),
        (["--layer", "missing"], "missing"),
    ],
)
def test_errors_exit_1_without_traceback(
    store: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = classify(capsys, str(store), "--json", *args)
    assert code == 1 and out == ""
    assert message in err and "Traceback" not in err


def test_missing_store_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = classify(capsys, str(tmp_path / "absent.h5"))
    assert code == 1 and out == "" and "Traceback" not in err


def test_bad_expect_is_a_usage_error(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert classify(capsys, str(store), "--expect", "good")[0] == 2

"""Small follow-ups: the memory refusal's names of the outputs' sums on an ASCII stream, and an option's choice
given alone in a store's place."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdl_cli import resources
from tests.test_io_fixes import _run_on_ascii_streams
from tests.test_report import make_store
from tests.test_s27_scale import _run as _scale_run

# ------------------------------------------------------- the memory refusal on a stream without fdl's glyphs


def test_the_memory_refusal_names_the_outputs_sums_in_words_on_an_ascii_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list of arrays named the measures' copies "(Σŷŷᵀ, Σŷyᵀ, Σyyᵀ)", which a Latin-1 stderr (a terminal of
    LANG=en_US.ISO-8859-1) wrote through the stand-ins as "(Sumy^y^^T, Sumy^y^T, Sumyy^T)"."""
    ckpts, probe = _scale_run(tmp_path, 600, True)  # C = 600 outputs, class labels: 3 C² copies, 8.6 MB
    monkeypatch.setattr(resources, "available_host_bytes", lambda *_args, **_kw: 10_000_000)
    out = tmp_path / "run.h5"
    code, stdout, err = _run_on_ascii_streams(
        "analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--model-kwargs", '{"outputs": 600}',
        "--probe", str(probe), "-o", str(out), "--device", "cpu", encoding="latin-1")
    said = " ".join(err.split())
    assert code == 1 and stdout == "" and not out.exists(), said
    assert ("the measures' copies of the outputs' C×C sums of products (the predictions with themselves and with "
            "the targets, the targets with themselves): 8.6 MB") in said, said
    assert "Sum" not in said and "^" not in said and "\\u" not in said, said


# ------------------------------------------------------------ an option's choice given alone, no store


@pytest.mark.parametrize("args", [("report", "json"), ("summarize", "csv"), ("export", "json", "--what", "quality")])
def test_an_option_s_choice_given_alone_is_named_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        args: tuple[str, ...]) -> None:
    """`fdl report json` (no file named json here) got "no fdl store at json" and `fdl analyze`'s fix; the word is
    --format's choice in a store's place: a usage error (exit 2) that names the option, as where a store is given."""
    from fdl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"'{args[1]}' is one of --format's choices: give it as --format {args[1]}" in err, err
    assert "fdl analyze" not in err, err


def test_a_choice_word_that_names_a_missing_store_among_others_is_named_so_by_compare_and_classify(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fdl_cli.cli import main

    make_store(tmp_path / "a.h5")
    monkeypatch.chdir(tmp_path)
    for args in (["compare", "a.h5", "csv"], ["classify", "a.h5", "csv"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        assert "'csv' is one of --format's choices: give it as --format csv" in err, err


def test_a_missing_store_of_another_name_keeps_the_analyze_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fdl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["report", "jsn.h5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "error: no fdl store at jsn.h5\n  fix: run `fdl analyze CKPT_DIR --out jsn.h5` first" in err, err


# ------------------------------------------------------------------ run_all.sh's time, said alike in both places


def test_run_all_s_time_is_the_same_in_its_header_and_in_the_findings() -> None:
    """The script's header said ~6-8 min, docs/findings.md ~6 min, for the same run of the four examples."""
    import re

    root = Path(__file__).resolve().parents[1]
    header = " ".join((root / "examples" / "run_all.sh").read_text().splitlines()[1:3])
    line = next(line for line in (root / "docs" / "findings.md").read_text().splitlines()
                if line.startswith("examples/run_all.sh runs/examples"))
    said = [re.search(r"~(\S+) min on (?:#\s*)?(one (?:free )?core)", text) for text in (header, line)]
    assert all(said), (header, line)
    assert said[0].groups() == said[1].groups(), (header, line)  # type: ignore[union-attr]

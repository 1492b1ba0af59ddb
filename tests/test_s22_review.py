"""Review of the twenty-first session's changes (twenty-second session): what its merged branches broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture


@pytest.mark.parametrize(("spec", "said"), [(":build", "is not of the form module:factory"),
                                           (".:build", "cannot import .")])
def test_a_model_spec_without_a_module_is_refused_in_words_not_a_traceback(
    run: Path, tmp_path: Path, spec: str, said: str  # noqa: F811 - the fixture's value
) -> None:
    """The --model file skipped among the checkpoints (`_named_files`) read `:build` as the module file '.py' of
    an empty name: ValueError from pathlib, a traceback, before the spec was refused as malformed."""
    result = analyze(run, tmp_path / "s.h5", "--model", spec)
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"--model {spec!r}{':' if said.startswith('cannot') else ''} {said}" in result.stderr
    assert not (tmp_path / "s.h5").exists()


def test_classify_naming_compares_threshold_keeps_the_regimes_core_free_of_rich() -> None:
    """`Thresholds.with_overrides(['dlr_tie=...'])` names compare's threshold as such: it read the name from
    fdl_cli.report, which imports rich, into the pure core (tests/test_contracts.py checks its imports alone)."""
    from tests.test_contracts import HEAVY, _loaded_after

    loaded = _loaded_after(
        "from fdl_cli.errors import FdlError\n"
        "from fdl_cli.regimes import Thresholds\n"
        "try:\n"
        "    Thresholds.with_overrides(['dlr_tie=0.1'])\n"
        "except FdlError as exc:\n"
        "    assert 'dlr_tie is a threshold of fdl compare' in exc.message, exc.message\n"
        "else:\n"
        "    raise AssertionError('dlr_tie taken by classify')"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_abandon_addition_without_a_store_is_refused_as_drop_and_redo_are(
    run: Path, tmp_path: Path  # noqa: F811
) -> None:
    """`--abandon-addition` with an --out where there is no store (a path mistyped) noted that the store "holds no
    unfinished addition" and analysed every checkpoint into a new one; --drop and --redo refuse such a path."""
    store = tmp_path / "typo.h5"
    result = analyze(run, store, "--abandon-addition")
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    text = " ".join(result.stderr.split())
    assert (f"error: --abandon-addition: there is no store at {store} to give an addition up in fix: run without "
            "--abandon-addition, or pass the store's path as --out") in text
    assert not store.exists() and result.records == []

"""Review of session 19's `fdl analyze --drop` (session 20, tiny MLPs on the CPU). Each test failed before its fix.

- A stored checkpoint of a store written before file signatures, whose file now sits at another step (a file
  training rewrites, a file renamed over another): hashed again at every resume, as no signature was
  recorded for it. Hashed once: the file's signature recorded at the step it holds (verified there) tells
  the next resume that it is that step's file, not the other's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from fdl_cli import checkpoints
from tests.test_reliability_inputs import MODEL, SMALL, _weights, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_s19_store import _drop_signatures, _records, _run, _steps, fdl

torch.set_num_threads(1)


# ------------------------------------------- a store without signatures: a stored file now at another step


def _hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files fdl hashes from now on (`checkpoints.sha256_file`), in order."""
    names: list[str] = []
    real = checkpoints.sha256_file

    def counting(path: Path) -> str:
        names.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(checkpoints, "sha256_file", counting)
    return names


@pytest.mark.parametrize("how", ["rewritten", "renamed"])
def test_a_stored_file_now_at_another_step_is_hashed_once_in_a_store_without_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """rewritten: latest.safetensors held step 10 when it was stored and holds step 20 now (training saves over
    it). renamed: a.safetensors (step 10) and b.safetensors (step 20), b moved over a. Either way the file of
    stored step 10 is another step's checkpoint now: hashed at the first resume (it might have been step 10's
    file, read at another step) and found another; it was hashed again at every resume after it."""
    folder, probe = _run(tmp_path, steps=(0,))
    first = folder / ("latest.safetensors" if how == "rewritten" else "a.safetensors")
    save_file(_weights(1), str(first), metadata={"step": "10"})
    if how == "renamed":
        save_file(_weights(2), str(folder / "b.safetensors"), metadata={"step": "20"})
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, err
    _drop_signatures(out)
    if how == "rewritten":
        save_file(_weights(2), str(first), metadata={"step": "20"})
    else:
        (folder / "b.safetensors").replace(first)
    hashed = _hashed(monkeypatch)
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, " ".join(err.split())
    assert _steps(out) == [0, 10, 20]
    # once by the check (where it was checked for two steps, too); rewritten: again as step 20 is analysed
    assert hashed.count(first.name) == (2 if how == "rewritten" else 1), hashed
    stored = _records(out)
    for _ in range(2):
        hashed.clear()
        status, _, err = fdl(capsys, "analyze", *common)
        flat = " ".join(err.split())
        assert status == 0 and "hashing" not in flat, flat
        assert first.name not in hashed, hashed
        assert _records(out) == stored

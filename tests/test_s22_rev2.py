"""Session 22, adversarial review of the day's merges (h_s22_rev2).

- fdl.toml: a probe name refused as --probe's, whose path holds '{' or '}' (`"my probe=runs/{a}.npz"`), was a
  ValueError/KeyError traceback: the fix's example was filled in with str.format, the path part of its template.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fdl_cli.checkpoints import read_manifest
from fdl_cli.errors import FdlError


@pytest.mark.parametrize(("probe", "fix"), [
    ('"my probe=a{1}.npz"', 'probe = "my_probe=a{1}.npz"'),
    ('["my probe=runs/{x}/a.npz"]', 'probe = "my_probe=runs/{x}/a.npz"'),
    ('{ "my probe" = "a{x}.npz" }', 'probe = { my_probe = "a{x}.npz" }'),
    ('{ "2nd" = "{}.npz" }', 'probe = { _2nd = "{}.npz" }'),
])
def test_fdl_toml_probe_name_refused_with_braces_in_its_path(tmp_path: Path, probe: str, fix: str) -> None:
    manifest = tmp_path / "fdl.toml"
    manifest.write_text(f"probe = {probe}\n", encoding="utf-8")
    with pytest.raises(FdlError) as raised:
        read_manifest(tmp_path)
    assert "the probe name" in raised.value.what
    assert raised.value.fix == f"e.g. {fix} in {manifest}"

"""Review of session 24's changes to checkpoints.py, manifests.py and errors.py: what an fdl.toml's `model` may name
when its model file only imports the factory from an installed package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fdl_cli.checkpoints import resolve_model_factory
from fdl_cli.errors import ModelError
from tests.test_s23_sec import _own_import_state

__all__ = ["_own_import_state"]  # a fixture


def test_a_factory_model_py_imports_from_an_installed_package_is_refused_with_the_fix_that_works(
    tmp_path: Path, _own_import_state: None
) -> None:
    """model.py of `from s24r1_nets import build`, the user's own package installed (pip install ., not -e) in
    site-packages, and `model = "model.py:build"`: refused as a library's function (as `from torch import *` makes
    model.py:load torch.load). The fix said "write a factory in a model.py beside fdl.toml and name it there
    (model = "model.py:build")", what the user had done; it says now that model.py only imports it, and to define the
    factory in model.py, calling the package's."""
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages"
    (site / "s24r1_nets").mkdir(parents=True)
    (site / "s24r1_nets" / "__init__.py").write_text(
        "import torch.nn as nn\n\n\ndef build(width=3):\n    return nn.Linear(2, width)\n")
    sys.path.insert(0, str(site))
    run = tmp_path / "run"
    run.mkdir()
    (run / "fdl.toml").write_text('model = "model.py:build"\n')
    (run / "model.py").write_text("from s24r1_nets import build  # noqa: F401\n")
    with pytest.raises(ModelError) as refused:
        resolve_model_factory(f"{run / 'model.py'}:build", named_by=run / "fdl.toml")
    said = " ".join(str(refused.value).split())
    assert "build is a function of s24r1_nets" in said and "which model.py only imports" in said, said
    assert "name it there" not in said, said
    assert ("define build in model.py itself, a function calling the imported one: def build(*args, **kwargs): return "
            "s24r1_nets.build(*args, **kwargs)") in said, said
    # and that fix is taken
    (run / "model.py").write_text("import s24r1_nets\n\n\ndef build(*args, **kwargs):\n"
                                  "    return s24r1_nets.build(*args, **kwargs)\n")
    sys.modules.pop("s24r1_nets", None)
    assert resolve_model_factory(f"{run / 'model.py'}:build", named_by=run / "fdl.toml")(5).out_features == 5

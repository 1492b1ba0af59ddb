"""Review of session 25's source-only model loading, note-before-code and store changes."""

from __future__ import annotations

import errno
import py_compile
from pathlib import Path

import pytest

from fdl_cli.checkpoints import CompiledCodeError, resolve_model_factory
from tests.cli_run import fdl_in_process
from tests.test_s23_sec2 import _linear_run, _said
from tests.test_s25_note import _clean_imports  # noqa: F401 - the fixture


@pytest.mark.usefixtures("_clean_imports")
def test_a_submodule_the_users_model_imported_is_checked_again_for_the_folders_fdl_toml(tmp_path: Path) -> None:
    """In one process: the fdl.toml's model imports the folder's package (its lazy `import pkg.ext` not reached),
    then --model of the user's own imports pkg.ext, a .pyc of no source (taken, as Python takes it). The package
    itself was the fdl.toml's, so only its top-level name was tracked: pkg.ext stayed in sys.modules and the
    fdl.toml's model, run again, ran that compiled code instead of being refused as a fresh process refuses it."""
    run = tmp_path / "run"
    (run / "s25n_pkg").mkdir(parents=True)
    (run / "s25n_pkg" / "__init__.py").write_text("")
    (run / "model.py").write_text("import s25n_pkg\nfrom torch import nn\n\n\ndef build():\n"
                                  "    import s25n_pkg.ext\n\n    return nn.Linear(s25n_pkg.ext.IN, 3)\n")
    manifest = run / "fdl.toml"
    manifest.write_text('model = "model.py:build"\n')
    source = tmp_path / "ext_source.py"
    source.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\nIN = 4\n")
    py_compile.compile(str(source), cfile=str(run / "s25n_pkg" / "ext.pyc"), doraise=True)

    def by_manifest() -> object:
        return resolve_model_factory("model.py:build", base_dir=run, module_dir=run, named_by=manifest)

    by_manifest()  # imports s25n_pkg, not its submodule
    assert resolve_model_factory(f"{run / 'model.py'}:build")().in_features == 4  # --model: taken
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    with pytest.raises(CompiledCodeError, match=r"ext\.pyc, which Python would import as s25n_pkg\.ext"):
        by_manifest()()  # type: ignore[operator]
    assert not (tmp_path / "ran").exists()


def test_a_file_system_that_takes_no_flock_is_an_fdl_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lustre mounted without `-o flock` answers flock() with ENOSYS: the writer's lock raised that OSError as a
    traceback (the readers' test of the lock, `_live_writer`, has a path for such a file system already)."""
    from fdl_cli import store

    real = store.fcntl.flock

    def no_flock(fd: int, operation: int) -> None:
        if operation & store.fcntl.LOCK_EX:
            raise OSError(errno.ENOSYS, "Function not implemented")
        real(fd, operation)

    monkeypatch.setattr(store.fcntl, "flock", no_flock)
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    (run / "model.py").write_text("from torch import nn\n\n\ndef build():\n    return nn.Linear(4, 3)\n")
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
    assert done.returncode == 1
    said = _said(done.stderr)
    assert "Traceback" not in said
    assert f"error: cannot lock {tmp_path / 'a.h5.lock'}: its file system takes no file lock (flock)" in said, said
    assert "got: OSError: [Errno 38] Function not implemented" in said, said
    assert "fix: choose an --out on a file system that takes file locks" in said, said
    assert not (tmp_path / "a.h5").exists()

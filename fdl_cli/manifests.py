"""fdl.toml: the manifest of a checkpoint folder read for `fdl analyze` and `fdl inspect`.

Which fdl.toml files are read (`_read_manifests`: those of the folders given, which must agree), their
analysis options checked and filled in where the command line gave none (`MANIFEST_OPTIONS`,
`_with_manifest`), their model_kwargs kept to their own model (`_manifest_kwargs`), and the notes on
folders and manifests that are not read. The files are parsed by `checkpoints.read_manifest`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from fdl_cli.errors import CheckpointError
from fdl_cli.options import AnalyzeOptions
from fdl_cli.progress import Reporter

#: The analysis options an fdl.toml may hold besides model, model_kwargs, probe, layer and weights:
#: those that describe the run and how it is measured, so that `fdl analyze DIR` gives the same numbers
#: whoever runs it. key -> (AnalyzeOptions field, what the value must be, allowed values or a range).
#: Not in a manifest: where the results go and how this invocation runs (out, overwrite, device,
#: steps, every, strict, watch, json, ...), and never trust_pickle (a folder cannot vouch for its own
#: files). A command-line option wins over the manifest's value.
MANIFEST_OPTIONS: dict[str, tuple[str, type, Any]] = {
    "reference": ("reference_step", int, None),
    "center": ("center", bool, None),
    "top_k": ("top_k", int, (1, None)),
    "overlap_k": ("overlap_k", int, (1, None)),
    "anchor_size": ("anchor_size", int, (1, None)),
    "dlr_energy": ("dlr_energy", float, (0.0, 1.0)),
    "dtype": ("dtype", str, ("float32", "bfloat16", "float16")),
    "cka_dtype": ("cka_dtype", str, ("float64", "float32")),
    "batch_size": ("batch_size", int, (1, None)),
    "glob": ("glob_pattern", str, None),
    "step_regex": ("step_regex", str, None),
}


_MANIFEST_EXAMPLES = {
    "reference": "reference = 0", "center": "center = true", "top_k": "top_k = 32", "overlap_k": "overlap_k = 100",
    "anchor_size": "anchor_size = 2048", "dlr_energy": "dlr_energy = 0.95", "dtype": 'dtype = "float32"',
    "cka_dtype": 'cka_dtype = "float64"', "batch_size": "batch_size = 256", "glob": 'glob = "step_*.pt"',
    "step_regex": "step_regex = 'step_(\\d+)'",
}


def _manifest_value(manifest_path: Path, key: str, value: Any) -> Any:
    """The manifest's `key` checked as its command-line option would be; CheckpointError otherwise."""
    _, kind, allowed = MANIFEST_OPTIONS[key]
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and isinstance(allowed, tuple) and kind is str:
        ok = value in allowed
    elif ok and isinstance(allowed, tuple):
        low, high = allowed
        ok = value >= low and (high is None or value <= high) and not (kind is float and value <= low)
    if kind is str and ok and not value:
        ok = False
    if key == "step_regex" and ok:
        # Checked here, not by discovery, whose message would name a --step-regex nobody gave.
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise CheckpointError(
                f"{manifest_path}: 'step_regex' is not a valid regular expression", got=f"{value!r} ({exc})",
                fix=f"e.g. {_MANIFEST_EXAMPLES[key]}",
            ) from None
        if groups == 0:
            raise CheckpointError(
                f"{manifest_path}: 'step_regex' has no capture group around the step", got=repr(value)[:100],
                fix=f"e.g. {_MANIFEST_EXAMPLES[key]} (its first group is the step)",
            )
    if not ok:
        must = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}[kind]
        if isinstance(allowed, tuple) and kind is str:
            must = "one of " + ", ".join(f'"{choice}"' for choice in allowed)
        elif allowed == (0.0, 1.0):
            must += " in (0, 1]"
        elif isinstance(allowed, tuple):
            must += f" >= {allowed[0]}"
        raise CheckpointError(
            f"{manifest_path}: '{key}' must be {must}", got=repr(value)[:100], fix=f"e.g. {_MANIFEST_EXAMPLES[key]}"
        )
    return value


def _manifest_items(manifest: Any) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """The manifest's analysis options (`MANIFEST_OPTIONS`, and its weights), checked: key -> (the
    AnalyzeOptions field, the value); and the keys it holds that fdl.toml does not take."""
    items: dict[str, tuple[str, Any]] = {}
    ignored: list[str] = []
    for key, value in manifest.options.items():
        if key in MANIFEST_OPTIONS:
            items[key] = (MANIFEST_OPTIONS[key][0], _manifest_value(manifest.path, key, value))
        else:
            ignored.append(key)
    if manifest.weights is not None:
        items["weights"] = ("weights", manifest.weights)
    return items, ignored


def _given(options: AnalyzeOptions, field_name: str) -> bool:
    """Whether the command line (or a library caller) gave this field, which then wins over fdl.toml."""
    return field_name in options.given or getattr(options, field_name) != getattr(AnalyzeOptions(sources=()), field_name)


def _warn_ignored(manifest: Any, ignored: list[str], reporter: Reporter) -> None:
    import difflib

    if not ignored:
        return
    hints = []
    for key in sorted(ignored):
        if key == "trust_pickle":
            hints.append("trust_pickle (a folder cannot vouch for its own files: pass --trust-pickle)")
            continue
        known = ["model", "model_kwargs", "probe", "layer", "weights", *MANIFEST_OPTIONS]
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    reporter.warn(
        f"{manifest.path}: ignored {', '.join(hints)}. fdl.toml holds model, model_kwargs, probe, layer, "
        f"weights and {', '.join(MANIFEST_OPTIONS)}; give other options on the command line"
    )


def _with_manifest(options: AnalyzeOptions, manifest: Any, reporter: Reporter) -> AnalyzeOptions:
    """`options` with the analysis options of the manifest (`MANIFEST_OPTIONS`, and its weights) filled
    in where the command line gave none; the manifest's other keys are named in a warning."""
    changes: dict[str, Any] = {}
    applied: list[str] = []
    items, ignored = _manifest_items(manifest)
    for key, (field_name, value) in items.items():
        if _given(options, field_name):
            continue  # the command line's value wins
        changes[field_name] = value
        applied.append(f"{key} = {value!r}")
    _warn_ignored(manifest, ignored, reporter)
    if applied:
        # Said once, up front: discovery's messages name --glob / --step-regex, which then came from here.
        reporter.note(f"{manifest.path} sets {', '.join(applied)} (an option on the command line overrides it)")
    return replace(options, **changes) if changes else options


#: The field of AnalyzeOptions that overrides each key of fdl.toml other than MANIFEST_OPTIONS'.
_MANIFEST_FIELDS = {"model": "model_spec", "model_kwargs": "model_kwargs", "probe": "probe_specs", "layer": "layers",
                    "weights": "weights"}


def _same_file(first: str, second: str) -> bool:
    """Two paths of fdl.toml files (resolved against each one's folder) name the same file, or files of the
    same bytes (a run restarted into a second folder with a copy of the first's probe.npz and model.py)."""
    import filecmp

    if first == second:
        return True
    try:
        return Path(first).is_file() and Path(second).is_file() and filecmp.cmp(first, second, shallow=False)
    except OSError:
        return False


def _why_files_differ(pairs: list[tuple[str, str]]) -> str:
    """Why paths that two fdl.toml files give are not the same file: one is missing, or their bytes differ."""
    missing = [path for pair in pairs if not _same_file(*pair) for path in pair if not _is(Path(path), "file")]
    if missing:
        return f" ({', '.join(dict.fromkeys(missing))}: no such file)"
    return " (files of other bytes)"


def _beside_said(model: tuple[str, str] | None) -> str:
    """What `_manifest_differences`' model_of found beside an fdl.toml, in words."""
    return model[0] if model is not None and model[1] else "no such module"


def _manifest_differences(first: Any, second: Any) -> dict[str, str]:
    """The keys two fdl.toml files set differently, with the two values; paths count as the same when they
    name files of the same bytes. Keys neither file uses (ignored with a warning) are left out."""
    from fdl_cli import checkpoints as ckpts
    from fdl_cli.probes import parse_probe_spec

    differences: dict[str, str] = {}

    def both(values: tuple[Any, Any]) -> str:  # one word for a key a file leaves out, whichever the key
        return " and ".join("not set" if value in (None, "", (), [], {}) else repr(value) for value in values)

    def model_of(manifest: Any) -> tuple[str, str] | None:
        """(file, factory) of a model file, or of a module beside the fdl.toml (its module's file, a
        package's folder: two packages are two); (spec, "") of another module, and of a folder of no package
        beside it (a run's `model/`), which a module of the current folder wins over (`resolve_model_factory`)."""
        if manifest.model is None:
            return None
        target, sep, attr = manifest.model.rpartition(":")
        if sep and Path(target).is_absolute():
            return (target, attr)
        beside = ckpts.module_beside(target, manifest.path.parent)
        if beside is not None and not beside.is_dir():
            return (str(beside.parent if beside.name == "__init__.py" else beside), f"{target}:{attr}")
        return (manifest.model, "")

    model_a, model_b = model_of(first), model_of(second)
    if model_a != model_b:
        # two model files under one factory name: the same model when the files hold the same bytes
        files = model_a is not None and model_b is not None and model_a[1] == model_b[1] != ""
        pair = (model_a[0], model_b[0]) if model_a is not None and model_b is not None else ("", "")
        if not (files and _same_file(*pair)):
            why = _why_files_differ([pair]) if files else ""
            if packages := [path for path in pair if files and _is(Path(path), "dir")]:  # not "no such file"
                why = f" ({', '.join(packages)}: a package beside the fdl.toml, whose files fdl does not compare)"
            if first.model == second.model and not files:  # a module beside one of them alone
                why = f" (beside {first.path}: {_beside_said(model_a)}; beside {second.path}: {_beside_said(model_b)})"
            differences["model"] = both((first.model, second.model)) + why
    if first.model_kwargs != second.model_kwargs:
        differences["model_kwargs"] = both((first.model_kwargs, second.model_kwargs))
    probes = [[parse_probe_spec(spec) for spec in manifest.probe] for manifest in (first, second)]
    if len(probes[0]) != len(probes[1]) or any(
        one[0] != other[0] or not _same_file(str(one[1]), str(other[1])) for one, other in zip(*probes, strict=True)
    ):
        same_names = [name for name, _ in probes[0]] == [name for name, _ in probes[1]]
        differences["probe"] = (" and ".join(", ".join(manifest.probe) or "not set" for manifest in (first, second))
                                + (_why_files_differ([(str(one[1]), str(other[1])) for one, other in
                                                      zip(*probes, strict=True)]) if same_names else ""))
    if first.layer != second.layer:
        differences["layer"] = both((first.layer, second.layer))
    items = [_manifest_items(manifest)[0] for manifest in (first, second)]
    for key in [*items[0], *(key for key in items[1] if key not in items[0])]:
        values = [item[key][1] if key in item else None for item in items]
        if values[0] != values[1] or type(values[0]) is not type(values[1]):
            differences[key] = both((values[0], values[1]))
    return differences


def _read_manifests(options: AnalyzeOptions, reporter: Reporter, *, note_unread: bool = True) -> tuple[Any, list[Any]]:
    """The fdl.toml to read for the checkpoints given, and every one found (their own files are no
    checkpoints to note).

    The candidates are the fdl.toml of each folder given and of each given file's folder (a run restarted
    into a second folder, `fdl analyze run1 run2`; a shell glob `run/*` that takes in the HF sub-folders
    `run/checkpoint-N/`). One found is read for them all, with a note naming the folders that hold none;
    several are read when they say the same (paths naming files of the same bytes) apart from what the
    command line gives, and are otherwise an error naming the files and the keys: one run is measured one
    way. A source that is neither a folder nor a file (missing, behind a closed folder) is left to
    discovery to report, in its words."""
    from fdl_cli import checkpoints as ckpts

    folders = _manifest_folders(options)
    found = [manifest for manifest in (ckpts.read_manifest(folder) for folder in folders) if manifest is not None]
    if not found:
        if note_unread:
            _note_unread_manifest(folders, reporter)
        return None, []
    first = found[0]  # its ignored keys are named as it is applied (`_with_manifest`)
    for other in found[1:]:
        _warn_ignored(other, _manifest_items(other)[1], reporter)
        differences = {
            key: values for key, values in _manifest_differences(first, other).items()
            if not _given(options, MANIFEST_OPTIONS[key][0] if key in MANIFEST_OPTIONS else _MANIFEST_FIELDS[key])
        }
        if differences:
            flags = ", ".join("--center or --no-center" if key == "center" else f"--{key.replace('_', '-')}"
                              for key in differences)
            raise CheckpointError(
                f"{first.path} and {other.path} set {', '.join(differences)} differently, and fdl analyze "
                "measures the checkpoints of every folder given as one run, one way",
                got="; ".join(f"{key}: {values}" for key, values in differences.items()),
                fix=f"give {flags} on the command line, which overrides both files; or make the two files agree "
                    "(or keep one); or analyse each folder into its own store (--out) and `fdl compare` them",
            )
    without = [folder for folder in folders
               if not any(_within(folder, manifest.path.parent) for manifest in found)]
    if without:
        reporter.note(f"{first.path} is read for the checkpoints of every folder given ("
                      f"{', '.join(map(str, without[:3]))}{' and others' if len(without) > 3 else ''} "
                      f"hold{'s' if len(without) == 1 else ''} no fdl.toml)")
    return first, found


def _manifest_folders(options: AnalyzeOptions) -> list[Path]:
    """The folders whose fdl.toml `_read_manifests` reads: each folder given and each given file's folder,
    once however it is spelled (run1/step_0.pt beside /abs/run1/step_10.pt: its fdl.toml was compared with
    itself and its ignored keys warned of twice)."""
    from fdl_cli import checkpoints as ckpts

    given = [Path(s) for s in ckpts.expand_sources(options.sources) if s != "-"]  # a pattern as its matches now
    spelled = list(dict.fromkeys(path if _is(path, "dir") else path.parent for path in given
                                 if _is(path, "dir") or _is(path, "file")))
    places: set[Path] = set()
    folders = []
    for folder in spelled:
        if (place := ckpts._resolved(folder)) not in places:
            places.add(place)
            folders.append(folder)
    return folders


def _within(folder: Path, home: Path) -> bool:
    """`folder` is `home` or one of its sub-folders (a run's `checkpoint-N/`)."""
    try:
        folder, home = folder.resolve(), home.resolve()
    except (OSError, RuntimeError):
        return folder == home
    return folder == home or home in folder.parents


def _manifest_kwargs(model_spec: str | None, manifest: Any, base_dir: Path | None, reporter: Reporter) -> dict[str, Any]:
    """fdl.toml's model_kwargs, which go with its model: not passed to another factory that --model names
    (`other() got an unexpected keyword argument 'hidden'`, with a fix naming a --model-kwargs nobody gave,
    or a network of another width built without a word), and the user is told so."""
    from fdl_cli import checkpoints as ckpts

    if model_spec is None or manifest.model is None or not manifest.model_kwargs:
        return dict(manifest.model_kwargs)
    if model_spec != manifest.model:
        target, _, attr = manifest.model.rpartition(":")
        file = ckpts.model_spec_file(model_spec, base_dir=base_dir)
        try:
            same = (attr == model_spec.rpartition(":")[2] and file is not None and Path(target).is_absolute()
                    and file.resolve() == Path(target).resolve())
        except (OSError, RuntimeError):
            same = False
        if not same:
            reporter.note(f"{manifest.path}'s model_kwargs {manifest.model_kwargs} are not used: they go with its model "
                          f"{manifest.model}, and --model gives {model_spec}; pass --model-kwargs JSON for its factory")
            return {}
    return dict(manifest.model_kwargs)


def _note_empty_folders(options: AnalyzeOptions, discovery: Any, manifest: Any, reporter: Reporter) -> None:
    """A folder given beside others that gave no checkpoint: said, not left out without a word. One
    run's fdl.toml read for a second folder (`fdl analyze run1 run2`) brings its glob, which may match
    none of the second folder's files (`resume_*.pt`). An empty folder given is a warning, under --steps and
    --every too, which select among the checkpoints found, and cannot have left it out (a wrong path, or a
    run that has saved nothing yet: the run is analysed without it, as the user asked for the others; alone,
    it is "no checkpoints found")."""
    from fdl_cli import checkpoints as ckpts

    expanded = ckpts.expand_sources(options.sources)  # a pattern as the paths it matches
    sources = [Path(s) for s in expanded if s != "-"]
    if len(expanded) < 2:
        return
    selected = options.steps is not None or options.every is not None  # may leave a folder out on purpose
    found = [ref.path for ref in discovery.checkpoints] + [path for path, _ in discovery.bad]
    found += [ref.path for pair in discovery.copies for ref in pair]
    if not found:
        return  # "no checkpoints found" says it
    for folder in (path for path in sources if _is(path, "dir")):
        empty = _is_empty(folder)
        if (selected and not empty) or any(_within(path, folder) for path in found):
            continue
        glob = ""
        if options.glob_pattern is not None:
            came = (f", set by {manifest.path}" if manifest is not None and "glob_pattern" not in options.given
                    and options.glob_pattern == manifest.options.get("glob") else "")
            glob = f" that the glob {options.glob_pattern!r} matches{came}"
        if empty:
            reporter.warn(f"no checkpoint found in {folder}{glob}: the folder is empty")
        else:
            reporter.note(f"no checkpoint found in {folder}{glob}: none of its files is analysed")


def _is_empty(folder: Path) -> bool:
    """Whether `folder` holds nothing at all (False when it cannot be listed: the scan said why)."""
    try:
        return next(folder.iterdir(), None) is None
    except OSError:
        return False


def _note_stdin_manifests(discovery: Any, reporter: Reporter) -> None:
    """Paths read from stdin (`-`) are found after the options are settled: an fdl.toml in their folders
    is not read, and the user is told so rather than left to wonder where its options went."""
    from fdl_cli import checkpoints as ckpts

    folders = {ref.path.parent for ref in discovery.checkpoints}
    folders |= {ref.path for ref in discovery.checkpoints if ref.kind == "hf_dir"}  # as a folder given
    unread = sorted(folder / ckpts.MANIFEST_NAME for folder in folders if _is(folder / ckpts.MANIFEST_NAME, "file"))
    if unread:
        reporter.note(f"{', '.join(map(str, unread[:3]))}{' and others' if len(unread) > 3 else ''} not read: the "
                      "checkpoints' paths came from stdin (-), after the options were settled; give its settings "
                      "on the command line, or the folder instead of -")


def _note_unread_manifest(folders: list[Path], reporter: Reporter) -> None:
    """No folder given holds an fdl.toml, but the one above them all does (one folder per step,
    `fdl analyze ckpts/step_*`): it is not read, and the user is told so rather than left to wonder."""
    from fdl_cli import checkpoints as ckpts

    parents = {folder.parent for folder in folders}
    if len(parents) != 1:
        return
    parent = parents.pop()
    if parent in folders or not _is(parent / ckpts.MANIFEST_NAME, "file"):
        return
    reporter.note(f"{parent / ckpts.MANIFEST_NAME} is not read: fdl reads the fdl.toml of a folder given, or of "
                  "the folder of the files given, not of the folder above them; give its settings on the command "
                  "line, or a copy of it in the folder given")


def _is(path: Path, kind: str) -> bool:
    """path.is_dir() / is_file(), False where it cannot be looked at (a closed folder above it)."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False

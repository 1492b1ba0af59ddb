"""`fdl inspect`: a checkpoint's named modules with their output shapes, from one forward pass of one
sample (the probe's first input, or a random one made for the model's first layer), and the layer that
`fdl analyze` would take by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fdl_cli.errors import CheckpointError, FdlError, ModelError, first_line, shown_path
from fdl_cli.manifests import _manifest_kwargs, _note_unread_manifest
from fdl_cli.options import AnalyzeOptions
from fdl_cli.pipeline import _check_manifest_probes, _other_model_file
from fdl_cli.progress import NullReporter


def inspect_checkpoint(
    *,
    checkpoint: str,
    model_spec: str | None = None,
    model_kwargs: str | None = None,
    probe_spec: str | None = None,
    trust_pickle: bool = False,
    weights: str | None = None,
) -> dict[str, Any]:
    """The model's named modules with output shapes (one forward pass of one sample) and the default layer.

    The sample is the probe's first input; without a probe, a random one made for the model's first
    layer (`_random_samples`, `_layer_kind`: TorchScript's compiled layers too): token ids for an nn.Embedding,
    else floats of the width of the first nn.Linear / Conv2d (inputs of other shapes need --probe), and the
    other kind when that pass fails
    (floats, only as an embedding fails on them). `sample` says which input ran, in words; a pass that
    could not run says why --probe is needed (`_needs_probe`). The default layer is the input of the
    nn.Linear whose output the outputs are, else of the last one that ran in that pass, as `analyze` picks it
    (`extract.chosen_default`); when no pass ran, the last nn.Linear in registration order, a guess.
    `default_basis` says which, in words.
    """
    import torch

    from fdl_cli import checkpoints as ckpts
    from fdl_cli import signals
    from fdl_cli.extract import (
        FORWARD,
        LAST_LINEAR_OP,
        LinearCalls,
        ProgramModel,
        check_outputs_order,
        model_outputs,
        padded_sequences,
        parent_to_take,
        prepare_model,
    )
    from fdl_cli.probes import load_probe, more_inputs, parse_probe_spec

    path = Path(checkpoint)
    # a metrics file beside TorchScript or pickled modules is told by the module of the folder's first checkpoint
    # trust_pickle: a pickled dict's step keys are read as `fdl analyze --trust-pickle` reads them
    discovery = ckpts.discover_checkpoints([checkpoint], for_inspect=True, trust_pickle=trust_pickle,
                                           model_keys=lambda others: ckpts.model_keys(
                                               others, None, None, trust_pickle=trust_pickle, weights=weights))
    if not discovery.checkpoints:
        raise CheckpointError(f"{checkpoint} is not a checkpoint", got="; ".join(discovery.notes) or None)
    ref = discovery.checkpoints[0]
    folder = path if path.is_dir() else path.parent
    manifest = ckpts.read_manifest(folder)
    if manifest is None:  # one folder per step given (`fdl inspect run/checkpoint-500`): the fdl.toml above it is not
        above = NullReporter()  # read, said as analyze says it (the listing's advice names the folder given)
        _note_unread_manifest([folder], above)
        for note in above.notes:
            ckpts.say_on_stderr(note)
    spec = model_spec or (manifest.model if manifest else None)
    kwargs = AnalyzeOptions.from_cli(sources=(checkpoint,), model_kwargs=model_kwargs).model_kwargs
    kwargs_notes = NullReporter()
    if model_kwargs is None and manifest is not None:  # --model-kwargs '{}' wins over fdl.toml's
        kwargs = _manifest_kwargs(model_spec, manifest, folder, kwargs_notes)  # not to another factory --model names
    module_dir = folder if manifest is not None and not model_spec else None  # fdl.toml's module, beside it
    if spec and manifest is not None and not model_spec:  # on stderr now: the code may fail, or print, as it runs
        ckpts.say_on_stderr(ckpts.manifest_model_note(spec, manifest.path, base_dir=folder, module_dir=module_dir))
    factory = ckpts.resolve_model_factory(
        spec, base_dir=folder, module_dir=module_dir,
        named_by=manifest.path if manifest is not None and not model_spec else None,
    ) if spec else None
    if model_spec is not None and (other := _other_model_file(model_spec, folder)) is not None:
        kwargs_notes.note(other)
    weights = weights if weights is not None else (manifest.weights if manifest else None)
    loaded = ckpts.load_checkpoint(ref, trust_pickle=trust_pickle, weights=weights)
    if loaded.not_loaded:  # as analyze notes it (a training script's config class, read as a placeholder)
        kwargs_notes.note(ckpts.not_loaded_said(ref.path.name, loaded.not_loaded))
    if loaded.module is None and factory is None:
        unused = "--probe" if probe_spec is not None else "--model-kwargs" if model_kwargs is not None else None
        return _tensors_listing(ref, loaded, notes=kwargs_notes.notes, manifest_path=folder / "fdl.toml",
                                unused=unused)
    # A TorchScript / torch.export program is wrapped as `analyze` wraps it (its own eval() and hooks
    # are refused; its features are the input of its last linear operation, `last_linear_op`).
    model = prepare_model(ckpts.build_model(loaded, factory=factory, kwargs=kwargs), device=torch.device("cpu"),
                          dtype="float32")
    program = isinstance(model, ProgramModel)
    probe_of = None  # the fdl.toml whose probe runs (none given)
    if probe_spec is None and manifest and manifest.probe:
        probe_spec, probe_of = manifest.probe[0], manifest.path
        _check_manifest_probes(manifest, [probe_spec])
    sample = None
    if probe_spec is not None:
        name, probe_path = parse_probe_spec(probe_spec)
        x = load_probe(probe_path, name=name).x[:1]
        sample = torch.from_numpy(np.ascontiguousarray(x))
        if sample.is_floating_point():
            sample = sample.float()
        sample_said = f"the first input of the probe {probe_path}, shape {tuple(sample.shape)}, {sample.dtype}"
        retries: list[tuple[Any, str]] = []
    else:
        (sample, sample_said), retries = _random_samples(model)
    shapes: dict[str, Any] = {}
    linears_run = LinearCalls()  # the nn.Linear calls in the order they finished, as analyze sees them
    handles = []
    sequences = padded_sequences(model)  # a layer inside a masked nn.TransformerEncoder: its padded output
    padded = sequences.__enter__()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear)

        def hook(_m: Any, inputs: Any, output: Any, name: str = name, linear: bool = is_linear) -> None:
            value = output[0] if isinstance(output, (tuple, list)) else output
            try:
                value = padded(name, name, value)
            except ModelError:  # a nested tensor outside an encoder: no shape analyze could take
                shapes[name] = "nested tensor"
            else:
                shapes[name] = list(value.shape) if hasattr(value, "shape") else type(value).__name__
            if linear:
                linears_run.add(name, inputs, output)

        if isinstance(module, torch.jit.ScriptModule):
            continue  # inside a TorchScript program: no hooks (its output shapes stay unknown)
        handles.append(module.register_forward_hook(hook))
    outputs_error: ModelError | None = None
    returned: list[Any] = []  # what the forward pass that ran returned
    several_inputs = False  # the pass failed for want of the forward's other inputs (`forward(ids, mask)`)

    def forward(sample: Any) -> None:
        nonlocal outputs_error
        # not inference_mode: `chosen_default` reads the version counters of the outputs; `model_code`: a model that
        # does not return after SIGTERM or Ctrl-C (hung in C) ends fdl inspect all the same, as it ends analyze
        with torch.no_grad(), signals.model_code(FORWARD):
            raw = model(sample)
        returned[:] = [raw]
        try:
            check_outputs_order(linears_run, raw)
            model_outputs(raw, int(sample.shape[0]) if isinstance(sample, torch.Tensor) and sample.dim() else 1)
        except ModelError as exc:
            # The forward pass ran (its shapes stand), but analyze cannot tell the outputs in what it
            # returned: said as the model's error, not as a probe that does not fit the model.
            outputs_error = exc

    try:
        if sample is not None:
            try:
                forward(sample)
            except Exception as exc:
                signals.through(exc)  # a Ctrl-C met in C code the model's pass ran through: no other input tried
                # The first module registered need not be the first to run (a head declared before the
                # embedding, a class embedding beside an image's convolutions): the other kind of input; nor
                # the table the ids go to (positions before tokens): ids that every table holds.
                if not retries or (sample.is_floating_point() and not _wants_token_ids(exc)):
                    raise
                for retry in retries:
                    shapes.clear()
                    linears_run.clear()
                    try:
                        forward(retry[0])
                    except Exception as again:  # noqa: BLE001 - the next input, else the first one's error
                        signals.through(again)
                        continue
                    sample, sample_said = retry
                    break
                else:
                    raise exc from None  # the first layer's input, the one to say why it failed
    except ckpts.CompiledCodeError:  # the folder's, not the probe's: said as such, before any listing
        raise
    except Exception as exc:  # noqa: BLE001 - reported as "shapes unknown", not a crash
        signals.through(exc)  # not unknown shapes: a Ctrl-C met in C code the model's pass ran through
        shape = tuple(sample.shape) if sample is not None else ()
        said = first_line(exc)
        at = ckpts.raised_at(exc)  # the model code's line, which no traceback shows
        why = _needs_probe(sample, exc) if probe_spec is None else ""
        several_inputs = more_inputs(str(exc))
        shadowing = ckpts.shadowing_fix(exc)
        # the model's own fault, whatever its input (a lazy import of a module not its own, or of none: a library not
        # installed, a SyntaxError): said below the listing, exit 1
        if shadowing is not None or isinstance(exc, ckpts.CODE_FAULTS):
            outputs_error = ModelError(f"the model's forward pass failed on a sample of shape {shape}",
                                       got=f"{type(exc).__name__}: {said}{at}",
                                       fix=shadowing or ckpts.import_fix(exc, "the model's code"))
        shapes = {"": f"forward failed on a sample of shape {shape}: {type(exc).__name__}"
                  + (f": {said}" if said else "") + at + why}
        linears_run.clear()
    finally:
        for handle in handles:
            handle.remove()
        sequences.__exit__(None, None, None)
    default_module, default_basis = _default_choice(
        model, program=program, linears_run=linears_run, returned=returned, outputs_error=outputs_error,
        sample=sample, from_probe=probe_spec is not None, several_inputs=several_inputs, probe_of=probe_of)
    default_label = f"{default_module}:input" if default_module is not None else None
    linear = dict(model.named_modules()).get(default_module) if default_module is not None else None
    default_features = int(getattr(linear, "in_features", 0)) or None
    ran = shapes.get(default_module) if default_module is not None else None
    if default_features and isinstance(ran, list) and len(ran) > 2:
        # a Linear applied at each position (an LM head on (1, L, d)): analyze flattens its input per sample
        default_features *= int(np.prod(ran[1:-1]))
    if program and isinstance(shapes.get(LAST_LINEAR_OP), list):
        default_features = int(np.prod(shapes[LAST_LINEAR_OP][1:]))
    # analyze's refusal of such a layer (`forward_one_shapes`): rows that are not the sample's (of a module: the
    # model's own outputs are no --layer)
    batch = int(sample.shape[0]) if sample is not None and sample.dim() > 0 else None
    modules = [
        {
            "name": name,
            "type": type(module).__name__,
            "output_shape": shapes.get(name),
            "note": NO_BATCH if name and batch is not None and _no_batch_first(shapes.get(name), batch) else None,
            # The module's with its children's (a tied tensor once), as torchinfo counts: the model's row
            # is the model's size. (Its own alone gave "(model) MLP 0", "backbone 0".)
            "parameters": sum(p.numel() for p in module.parameters()),
        }
        for name, module in model.named_modules()
    ]
    named = dict(model.named_modules())
    # modules that only hold others, without a forward of their own: a pass calls what they hold, never them
    held = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.ParameterList, torch.nn.ParameterDict)
    containers = [name for name, module in named.items() if isinstance(module, held)]
    # a TorchScript module inside an eager model (`torch.jit.script(...)` of a block) is not hooked (above): it
    # ran or not, no pass can tell
    unhooked = [name for name, module in named.items() if isinstance(module, torch.jit.ScriptModule)]
    return {
        "checkpoint": shown_path(ref.path),
        # null for a checkpoint without a step (final.pt): discovery gives it step 0 only to order it
        "step": None if ref.step_source == "none" else ref.step,
        "modules": modules,
        # as without a model (`_tensors_listing`): the file's other copies of the weights, and the library that
        # swapped an EMA's into state_dict (the weights put in the model then being the averaged ones)
        "other_weights": list(loaded.other_weights),
        "weights_averaged_by": loaded.ema_swapped_in or None,
        "not_loaded": list(loaded.not_loaded),  # as without a model
        "default_module": default_module,
        "default_layer": default_label,
        "default_features": default_features,
        "default_basis": default_basis,
        "sample": sample_said,
        "needs_model": None,  # as without a model (`_tensors_listing`): why the modules are null, here none
        # not JSON: the CLI raises it once the listing is shown (analyze would refuse the model's outputs)
        "outputs_error": outputs_error,
        # not JSON: said on stderr, as analyze says them (fdl.toml's model_kwargs left out)
        "notes": kwargs_notes.notes,
        # not JSON: for the `not called` line, the modules around those to take instead, as analyze's error says
        "not_called_fix": parent_to_take([name for name in named if name not in shapes and name not in containers
                                          and name not in unhooked], named, shapes),
        # not JSON: the containers (nn.ModuleList, GPT-2's transformer.h), which the table does not call `not called`
        "containers": containers,
        # not JSON: the TorchScript modules of an eager model, whose output shapes no hook told (`unknown`)
        "unhooked": unhooked,
        # not JSON: (probe spec, the fdl.toml naming it) when fdl.toml's probe ran, for the CLI's refusal of
        # one that does not fit, as of --probe's
        "probe_of_manifest": (probe_spec, probe_of) if probe_of is not None else None,
    }


#: the default layer's words for a model whose forward takes more inputs than x, which no probe's x runs
WRAP_INPUTS = ("its forward takes more inputs than x, which no probe gives: return it from the --model factory "
               "inside a wrapper whose forward(x) makes them from x (as the error says; docs/usage.md, \"A model of "
               "several inputs\")")

#: `fdl inspect`'s note on a module whose output does not begin with the sample's batch (`_no_batch_first`)
NO_BATCH = "no batch dimension: not a feature layer"


def _no_batch_first(shape: Any, batch: int) -> bool:
    """Whether an output of `shape` (a list; anything else: not told) has no batch dimension first for a pass of
    `batch` samples: a table (T, d) shared by every sample, an output that lost its batch dimension
    (`extract.NO_BATCH_CAUSES`), or a scalar. `analyze --layer` refuses such a module alike
    (`extract.forward_one_shapes`: "gives T rows of features for 1 sample")."""
    return isinstance(shape, list) and (not shape or int(shape[0]) != batch)


def _tensors_listing(ref: Any, loaded: Any, *, notes: list[str], manifest_path: Path,
                     unused: str | None) -> dict[str, Any]:
    """What a checkpoint of weights only holds, for `fdl inspect` without a model: each tensor's name, shape,
    dtype and number of values (in the order its writer gave them, as loaded: prefixes such as `module.`
    stripped, --weights applied; by name for safetensors, `_by_name`), their total, and the step `analyze` would
    read it at. `needs_model` (JSON too) is the note the CLI says below the listing: what needs the model and how
    to give it (`manifest_path`, the fdl.toml inspect reads). The listing is the answer, exit 0: it ended with an
    error, exit 1, which read as a failure. `unused`: an option only a model uses (--probe, --model-kwargs), given
    without one: `unused_error` (not JSON), raised below the listing, as the command cannot do what it asked."""
    state = loaded.state_dict or {}
    names = sorted(state, key=_name_order) if _by_name(ref) else list(state)
    tensors = [{"name": name, "shape": list(state[name].shape), "dtype": str(state[name].dtype).removeprefix("torch."),
                "values": int(state[name].numel())} for name in names]
    return {
        "checkpoint": shown_path(ref.path),
        "step": None if ref.step_source == "none" else ref.step,
        "step_source": ref.step_source,
        "tensors": tensors,
        "values": sum(row["values"] for row in tensors),
        # other copies of the weights in the file (an EMA), which --weights picks
        "other_weights": list(loaded.other_weights),
        # the library that saved an EMA's (averaged) weights as the model's, the trained model's being the first
        # other copy (`checkpoints._ema_swapped`): "lightning", "mmengine", or None for the model's own
        "weights_averaged_by": loaded.ema_swapped_in or None,
        # the classes of the objects --trust-pickle read as placeholders (`checkpoints.ObjectNotLoaded`), not loaded
        "not_loaded": list(loaded.not_loaded),
        # what a model would tell: none without one
        "modules": None, "default_module": None, "default_layer": None, "default_features": None,
        "needs_model": "no model was given, so only the file's tensors are listed: the modules, their output shapes "
                       "and the default feature layer (and its number of features) need the model; "
                       f"{_GIVE_MODEL}{manifest_path}",
        "unused_error": None if unused is None else CheckpointError(
            f"{unused} was given, but there is no model to use it: {ref.path} holds weights only, whose tensors are "
            "listed", fix=f"{_GIVE_MODEL}{manifest_path}; or leave {unused} out to list the tensors alone",
        ),
        "notes": notes,
    }


#: how `fdl inspect` says to give a model (the fdl.toml's path follows)
_GIVE_MODEL = 'pass --model path/model.py:factory (or pkg.module:factory), or add model = "path/model.py:factory" to '


def _name_order(name: str) -> tuple[str | int, ...]:
    """A tensor's name as `fdl inspect` orders safetensors' (`_by_name`): the numbers in it as numbers, so that a
    model's blocks come in its order (layers.2 before layers.10, which text order put between layers.1 and 2).
    Text and numbers alternate, text first (re.split with a group), so like is compared with like."""
    return tuple(int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", name)))


def _by_name(ref: Any) -> bool:
    """Whether `fdl inspect` lists the checkpoint's tensors by name: safetensors files (one, or the shards of a
    folder) keep no order of their writer's (`save_file` stores them by dtype size, then name, and its loader
    returns them in that order), so a module's int64 or float16 tensors were listed apart from its others and
    its name shown twice. A torch.save file keeps its writer's order (the model's, for a state_dict): as is."""
    from fdl_cli.checkpoints import _folder_weight_files

    if ref.kind == "safetensors":
        return True
    path = Path(ref.path)
    files = [file for file in _folder_weight_files(path) if not file.name.endswith(".json")] if path.is_dir() else []
    return bool(files) and all(file.suffix == ".safetensors" for file in files)


#: the sequence length of `fdl inspect`'s random token ids (fewer where an embedding table is smaller: a
#: table of positions must hold every position)
INSPECT_TOKENS = 8


def _default_choice(
    model: Any, *, program: bool, linears_run: Any, returned: list[Any], outputs_error: ModelError | None,
    sample: Any, from_probe: bool, several_inputs: bool, probe_of: Path | None,
) -> tuple[str | None, str]:
    """The module whose input `fdl analyze` takes by default, and why, in words (`inspect_checkpoint`'s
    `default_module`, `default_basis`): a program's last linear operation; else analyze's choice among the
    nn.Linear calls of the pass that ran (`linears_run`, `returned`); else, no pass having run, a guess by
    registration order."""
    from fdl_cli.extract import (
        LAST_LINEAR_OP,
        DefaultChoice,
        chosen_default,
        default_layer_by_registration,
        frozen_linears,
        linear_shapes,
        not_the_head,
        outputs_made_from,
    )

    default_module: str | None = None
    if program:
        default_module = LAST_LINEAR_OP
        default_basis = ("the input of the last linear operation the program's forward pass runs "
                         "(`last_linear_op`, as analyze picks it in a TorchScript or torch.export checkpoint)")
    elif linears_run:
        # analyze's choice (`extract.chosen_default`): the nn.Linear whose output the outputs are, else the last to run
        last = linears_run[-1].name
        choice = (chosen_default(linears_run, returned[0], frozen=frozen_linears(model), shapes=linear_shapes(model),
                                 made_from=lambda: outputs_made_from(model, sample))
                  if returned and outputs_error is None else DefaultChoice(last))
        default_module = choice.module
        source = "the probe's first sample" if from_probe else (
            "random token ids" if sample is not None and not sample.is_floating_point() else "a random input"
        ) + " (--probe FILE for a real one)"
        default_basis = (f"the last nn.Linear to run in a forward pass of {source}" if choice.module == last else
                         f"the nn.Linear whose output the model's outputs are (or are computed from), in a forward "
                         f"pass of {source}; the last to run is {last}")
        if choice.sizes is not None:
            default_basis += f", but {not_the_head(choice.sizes)}: pick --layer NAME"
        if choice.rivals:
            default_basis += (f", but its parameters are frozen and the outputs are no nn.Linear's alone: "
                              f"{', '.join(choice.rivals)}, trained, gave values of their size too; where the "
                              "frozen one is a copy at initialisation (f = a·(net − net0)), pick --layer "
                              f"{choice.rivals[-1]}:input")
    else:
        try:
            default_module = default_layer_by_registration(model).module
            default_basis = ("a guess: the last nn.Linear in registration order, as no forward pass ran; "
                             # the pass failed for the code's own error, whatever the input (`CODE_FAULTS`)
                             + ("mend the model's code (its error below) to find the one that runs last"
                                if outputs_error is not None else
                                f"{WRAP_INPUTS} to find the one that runs last" if several_inputs else
                                "give a probe that fits the model (fix the one fdl.toml names, or pass --probe "
                                "FILE) to find the one that runs last" if probe_of is not None else
                                "pass --probe FILE to find the one that runs last"))
        except FdlError:
            default_basis = "none: the model has no nn.Linear; pick --layer NAME"
    return default_module, default_basis


def _random_samples(model: Any) -> tuple[tuple[Any, str], list[tuple[Any, str]]]:
    """`fdl inspect`'s input without a probe, and what it is in words, made for the model's first layer
    in registration order: token ids for an nn.Embedding (`_token_ids`), floats (1, in_features) for an
    nn.Linear, (1, C, 32, 32) for a Conv2d (None when there is none: --probe needed); then the inputs to
    try in turn when that one fails: token ids that every nn.Embedding holds, where the first one has
    more rows than another (a table of positions registered before the tokens), and the first layer of
    the other kind. A random float input given to an embedding failed, and `inspect` said only "pass
    --probe"."""
    import torch

    first = next((module for module in model.modules() if _layer_kind(module) is not None), None)
    floats: tuple[Any, str] | None = None
    for name, module in model.named_modules():
        if _layer_kind(module) == "Linear":
            floats = (torch.randn(1, module.in_features),
                      f"a random float input of shape (1, {module.in_features}), for the first nn.Linear ({name})")
            break
        if _layer_kind(module) == "Conv2d":
            floats = (torch.randn(1, module.in_channels, 32, 32),
                      f"a random float input of shape (1, {module.in_channels}, 32, 32), for the first Conv2d ({name})")
            break
    ids = _token_ids(model)
    held = _token_ids(model, held_by_all=True)
    if ids is not None and _layer_kind(first) == "Embedding":
        retries = [] if held is None else [(held[0], f"{held[1]}, as ids of the first nn.Embedding "
                                                     f"({ids[2]}) failed on the model{_REAL_TOKENS}")]
        if floats is not None:
            retries.append((floats[0], f"{floats[1]}, as token ids failed on the model; --probe FILE runs a real one"))
        return (ids[0], ids[1] + _REAL_TOKENS), retries
    if floats is not None:
        retries = [] if ids is None else [(ids[0], f"{ids[1]}, as a random float input failed on it{_REAL_TOKENS}")]
        if held is not None:
            retries.append((held[0], f"{held[1]}, as a random float input and ids of the first nn.Embedding "
                                     f"({held[2]}) failed on it{_REAL_TOKENS}"))
        return (floats[0], floats[1] + "; --probe FILE runs a real one"), retries
    return (None, "none: the model has no nn.Linear, Conv2d or nn.Embedding to shape a random input by; pass "
                  "--probe FILE (its first input is run)"), []


def _layer_kind(module: Any) -> str | None:
    """"Linear", "Conv2d" or "Embedding" for a module of that torch.nn class, eager or compiled by TorchScript (a
    RecursiveScriptModule keeps the class's name, `original_name`, and its in_features, in_channels or
    num_embeddings): a TorchScript checkpoint's first layer shapes a random input as an eager model's does, where
    it ran none ("width unknown: no forward pass ran"). None for any other module."""
    import torch

    for kind in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding):
        if isinstance(module, kind):
            return kind.__name__
    if isinstance(module, torch.jit.ScriptModule):
        attribute = {"Linear": "in_features", "Conv2d": "in_channels", "Embedding": "num_embeddings"}
        kind_name = getattr(module, "original_name", None)
        if kind_name in attribute and isinstance(getattr(module, attribute[kind_name], None), int):
            return str(kind_name)
    return None


def _token_ids(model: Any, *, held_by_all: bool = False) -> tuple[Any, str, str] | None:
    """Random token ids (1, L) int64 in [0, V) for the model's first nn.Embedding of V rows (L =
    `INSPECT_TOKENS`, or the fewest rows of its embeddings: a table of positions holds every position),
    what they are in words, and the first nn.Embedding's name; None when the model has no nn.Embedding.
    `held_by_all`: in [0, V) of its smallest nn.Embedding instead (ids every table holds, for a model
    whose first table is its positions'); None where that is the first one."""
    import torch

    tables = [(name, module) for name, module in model.named_modules() if _layer_kind(module) == "Embedding"]
    if not tables:
        return None
    name, first = tables[0]
    length = max(1, min(INSPECT_TOKENS, *(module.num_embeddings for _, module in tables)))
    generator = torch.Generator().manual_seed(0)
    if held_by_all:
        smallest, table = min(tables, key=lambda item: item[1].num_embeddings)
        if table.num_embeddings >= first.num_embeddings:
            return None
        ids = torch.randint(0, table.num_embeddings, (1, length), generator=generator)
        return ids, (f"random token ids in [0, {table.num_embeddings}) of shape (1, {length}), int64, the rows of "
                     f"the smallest nn.Embedding ({smallest})"), name
    ids = torch.randint(0, first.num_embeddings, (1, length), generator=generator)
    return ids, (f"random token ids in [0, {first.num_embeddings}) of shape (1, {length}), int64, for the first "
                 f"nn.Embedding ({name})"), name


_REAL_TOKENS = "; --probe FILE runs real ones (and their sequence length)"


def _wants_token_ids(exc: BaseException) -> bool:
    """Whether a forward pass failed as an embedding (or an indexing) fails on a float input."""
    from fdl_cli.probes import WANTS_TOKEN_IDS

    return WANTS_TOKEN_IDS.search(str(exc)) is not None


def _needs_probe(sample: Any, exc: BaseException) -> str:
    """Why `fdl inspect`'s random input `sample` failed with `exc`, when it can tell, and that --probe is
    needed ("" otherwise: the model's error alone)."""
    if sample is None:
        return ""
    from fdl_cli.probes import MORE_INPUTS, more_inputs

    if more_inputs(str(exc)):
        return f"; {MORE_INPUTS}"
    if not sample.is_floating_point():
        return ("; the shape of the model's input cannot be told from its modules (a sequence length of its "
                "own?): pass --probe FILE (its first input is run)")
    if _wants_token_ids(exc):
        return ("; the model takes token ids, and has no nn.Embedding that says their range: pass --probe FILE "
                "(its first input is run)")
    return ""

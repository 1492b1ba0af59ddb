"""What `fdl analyze` was asked to do: `AnalyzeOptions`, the command line's options (and a library
caller's) before fdl.toml fills the gaps (manifests.py); the pipeline reads them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdl_cli.errors import FdlError


@dataclass(frozen=True)
class AnalyzeOptions:
    """Everything `fdl analyze` was asked to do (CLI options, before the manifest fills gaps)."""

    sources: tuple[str, ...]
    model_spec: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    probe_specs: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    out: Path | None = None
    device: str = "auto"
    batch_size: int = 512
    dtype: str = "float32"
    center: bool = False
    top_k: int = 64
    #: k of the eigenspace overlaps (SPEC §5); None: C, the number of outputs
    overlap_k: int | None = None
    anchor_size: int = 4096
    reference_step: int | None = None
    dlr_energy: float = 0.99
    steps: tuple[int, ...] | None = None
    #: --redo: stored checkpoints to analyse again from their files (and their stored successors' cka_prev /
    #: overlap_prev recomputed), the rest of the store kept
    redo: tuple[int, ...] | None = None
    #: --drop: stored checkpoints to remove, each a second copy of a file the store holds at another step (a
    #: store damaged by an fdl before session 18), the checkpoints compared with them compared again
    drop: tuple[int, ...] | None = None
    #: --abandon-addition: give up the unfinished addition of the probes and layers of the store this run leaves out
    #: (its pending_series), taking them out of the store, then resume
    abandon_addition: bool = False
    #: --accept-model-change: resume across a change of the model's code (the store's checkpoints ran the old code, the
    #: ones this run adds the new), recorded in the store's `model_changes`
    accept_model_change: bool = False
    every: int | None = None
    glob_pattern: str | None = None
    step_regex: str | None = None
    #: --step-offset: (PAT, N) pairs, N added to the steps of the checkpoints PAT takes in (a folder, a glob)
    step_offsets: tuple[tuple[str, int], ...] = ()
    resume: bool = True
    trust_pickle: bool = False
    #: --weights: an entry (state_dict_ema) or key prefix (ema.) of the checkpoints' weights to analyse
    weights: str | None = None
    strict: bool = False
    #: Library use only, not a CLI option: float32 statistics products move measures by up to ~1e-4
    #: (docs/benchmarks.md), beyond the rtol 1e-6 that float32 must keep to be offered (issue #6).
    product_dtype: str = "float64"
    cka_dtype: str = "float64"
    shard_probe: bool = False
    watch: bool = False
    poll_seconds: float = 10.0
    as_json: bool = False
    #: Seconds between store commits at least (each commit copies the store: crash-safe, not free).
    min_commit_interval: float = 1.0
    #: The fields given on the command line (even at their default value): fdl.toml fills only the
    #: others. A field whose value differs from its default counts as given too (library callers).
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # A library caller's out="run.h5" (a str, as docs/benchmarks.md's snippet first passed it) failed
        # deep in the run with "'str' object has no attribute 'exists'"; a path is a path either way.
        if isinstance(self.out, str):
            object.__setattr__(self, "out", Path(self.out))
        # sources="run/" (one folder, as a str) was taken letter by letter: "no such checkpoint file or
        # folder: r"; so were probe_specs="probe.npz" and layers="fc2". One path or name is a tuple of one.
        for name in ("sources", "probe_specs", "layers"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                object.__setattr__(self, name, (os.fspath(value),))

    @classmethod
    def from_cli(cls, **kwargs: Any) -> AnalyzeOptions:
        """Build from the click parameters of `fdl analyze` (parses JSON kwargs and step lists)."""
        raw_kwargs = kwargs.pop("model_kwargs", None)
        model_kwargs: dict[str, Any] = {}
        if raw_kwargs:
            shown = raw_kwargs if len(raw_kwargs) <= 200 else f"{raw_kwargs[:60]}...{raw_kwargs[-20:]}"  # got: short
            try:
                model_kwargs = json.loads(raw_kwargs)
            except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: was a traceback
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply for Python's JSON parser"
                raise FdlError(
                    "--model-kwargs is not valid JSON", got=f"{shown!r} ({why})", fix='e.g. \'{"hidden": 64}\''
                ) from None
            if not isinstance(model_kwargs, dict):
                raise FdlError("--model-kwargs must be a JSON object", got=shown, fix='e.g. \'{"hidden": 64}\'')
        steps = _step_list(kwargs.pop("steps", None), "--steps")
        redo = _step_list(kwargs.pop("redo", None), "--redo")
        drop = _step_list(kwargs.pop("drop", None), "--drop")
        out = kwargs.pop("out", None)
        kwargs["given"] = frozenset(kwargs.pop("given", ()))
        return cls(
            sources=tuple(kwargs.pop("sources")),
            model_kwargs=model_kwargs,
            steps=steps,
            redo=redo,
            drop=drop,
            out=Path(out) if out else None,
            probe_specs=tuple(kwargs.pop("probe_specs", ())),
            layers=tuple(kwargs.pop("layers", ())),
            **kwargs,
        )

    def numeric_options(self) -> dict[str, Any]:
        """The options that change the numbers (a store refuses to mix them)."""
        return {
            "center": self.center,
            "top_k": self.top_k,
            "anchor_size": self.anchor_size,
            "dlr_energy": self.dlr_energy,
            "dtype": self.dtype,
            "product_dtype": self.product_dtype,
            # Recorded only when not float64: stores written before the option existed are float64
            # and stay resumable.
            **({"cka_dtype": self.cka_dtype} if self.cka_dtype != "float64" else {}),
            # Recorded only when given, likewise.
            **({"weights": self.weights} if self.weights is not None else {}),
        }


def overlap_k_recorded(options: Mapping[str, Any], outputs: int | None) -> int | None:
    """The k of the overlaps a store's recorded `options` were taken over: their `overlap_k`, else min(top_k, C),
    C the store's `outputs` (its probes' largest n_outputs), the k `pipeline._overlap_k_option` leaves unrecorded;
    None where not known (no top_k, or no C)."""
    if "overlap_k" in options:
        return options["overlap_k"] if type(options["overlap_k"]) is int else None
    top_k = options.get("top_k")
    return min(top_k, outputs) if type(top_k) is int and outputs else None


def _step_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """A comma-separated list of steps (--steps, --redo, --drop); None when the option was not given."""
    if text is None:
        return None
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        example = "0,100,500" if option == "--steps" else "100,500"  # --redo and --drop refuse the reference
        raise FdlError(
            f"{option} must be integers separated by commas", got=text, fix=f"e.g. {option} {example}"
        ) from None
    if not steps:  # '' or ',' (an unset shell variable, say): --steps would select nothing, so analyse everything
        # --drop removes stored checkpoints (its fix said "to analyse again", --redo's words)
        fix = {
            "--steps": "give the steps to analyse (e.g. --steps 0,100,500), or leave --steps out for all of them",
            "--drop": "give the stored steps to remove (e.g. --drop 100,500)",
        }.get(option, f"give the stored steps to analyse again (e.g. {option} 100,500)")
        raise FdlError(f"{option} is an empty list of steps", got=repr(text), fix=fix)
    return steps

"""Hooks and batched forward passes -> streaming float64 statistics, on the GPU when there is one.

One forward pass over a probe per checkpoint feeds every hooked layer's `MomentAccumulator` (the sums
stay on the device) and keeps the features of the first m probe points (the anchor subset, SPEC §5).
"""

from __future__ import annotations

import math
import os
import re
import warnings
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from inspect import signature
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from fdl_cli import signals
from fdl_cli.checkpoints import unwrapped_name
from fdl_cli.errors import FdlError, ModelError, ProbeError, counted, first_line
from fdl_cli.moments import MomentAccumulator
from fdl_cli.probes import RowReader
from fdl_cli.regimes import near_names
from fdl_cli.resources import out_of_memory
from fdl_cli.spectral import Moments

#: In a checkpoint that carries its own program (TorchScript, torch.export), the feature map is the
#: input of the last linear operation of the forward pass, found by watching the aten operations.
LAST_LINEAR_OP = "last_linear_op"
#: Why a layer's output may not begin with the batch, as `forward_one_shapes` refuses it and `fdl inspect` marks it.
#: Both causes are named: from shapes alone, (T, d) of a table of positions and of the mean over the batch of
#: (1, T, d) are the same, for one sample or several.
NO_BATCH_CAUSES = ("a table shared by every sample, such as positions, or an output that lost its batch dimension to "
                   ".squeeze(), .flatten(), .view(-1) or a mean over the batch")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
INPUT_SUFFIX = ":input"


@dataclass(frozen=True)
class LayerSpec:
    """A feature map: the output (or, with use_input, the input) of the named module."""

    module: str
    use_input: bool

    @property
    def label(self) -> str:
        return self.module + INPUT_SUFFIX if self.use_input else self.module


@dataclass(frozen=True)
class LayerResult:
    """What one probe pass gives for one layer: statistics and the anchor features (m, p).

    anchor_features keep the dtype the model computed them in (float32 by default; float16 and
    bfloat16 are upcast to float32, exactly): a float64 copy would only cost time and memory.

    anchor_moment: (Σ(φ−a)(φ−a)ᵀ (p, p), Σ(φ−a) (p,)) float64 over the anchor subset alone, about
    the pass's shift a (`spectral.Moments`), a by-product of the pass (None in the Gram route): CKA
    needs the anchors' own centered second moment and need not recompute it.
    """

    moments: Moments
    anchor_features: np.ndarray
    anchor_moment: tuple[np.ndarray, np.ndarray] | None = None


#: The model's code `signals.model_code` names while the forward pass runs (a SIGTERM it does not return from).
FORWARD = "the model's forward pass"


def default_layer(
    model: nn.Module,
    *,
    sample: np.ndarray | None = None,
    device: torch.device | None = None,
    dtype: str = "float32",
    note: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    inspect: str | None = None,
) -> LayerSpec:
    """The input of the model's head (SPEC §1: the penultimate features): the nn.Linear whose output the
    model's outputs are, else the last nn.Linear that runs in the forward pass (`chosen_default`).

    sample: (1, ...) or (b, ...) probe inputs; its first row is run once through the model with a
    hook on every nn.Linear, so a model that registers `head` before `body` still gets the head's
    input. Without a sample it falls back to the last nn.Linear in registration order, which is only
    a guess (see `default_layer_by_registration`). note / warn receive what the choice needs said: a
    head other than the last nn.Linear to run, a last nn.Linear whose output is not the outputs'.
    inspect: the `fdl inspect` command its errors' fixes give.
    """
    if isinstance(model, ProgramModel):
        return LayerSpec(module=LAST_LINEAR_OP, use_input=True)
    fallback = default_layer_by_registration(model, inspect=inspect or "fdl inspect CHECKPOINT")
    if sample is None:
        return fallback
    inputs = sample if isinstance(sample, torch.Tensor) else _inputs(
        sample[:1], device=device or _model_device(model), dtype=dtype)
    # no_grad, not inference_mode: its tensors keep their version counters, which tell an output written in place
    with torch.no_grad(), linear_calls(model) as calls, signals.model_code(FORWARD):
        raw = model(inputs)
    if not calls:
        raise ModelError(
            "no nn.Linear runs in the model's forward pass, so there is no default feature layer",
            got=f"nn.Linear modules registered but not run: {fallback.module} (the last of them)",
            fix=f"pick one with --layer NAME (see `{inspect or 'fdl inspect CHECKPOINT --probe FILE'}`)",
        )
    check_outputs_order(calls, raw)
    batch_first(raw, _output_tensor(raw, calls), int(inputs.shape[0]))
    choice = chosen_default(calls, raw, frozen=frozen_linears(model), shapes=linear_shapes(model),
                            made_from=lambda: outputs_made_from(model, inputs), inspect=inspect)
    if choice.note is not None and note is not None:
        note(choice.note)
    if choice.warning is not None and warn is not None:
        warn(choice.warning)
    return LayerSpec(module=choice.module, use_input=True)


def default_layer_by_registration(model: nn.Module, *, inspect: str = "fdl inspect CHECKPOINT") -> LayerSpec:
    """The input of the last nn.Linear in registration order: the default when no sample can be run."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        names = [name for name, _ in model.named_modules() if name][:12]
        raise ModelError(
            "the model has no nn.Linear, so there is no default feature layer",
            got=f"modules: {', '.join(names) or '(none)'}",
            fix=f"pick one with --layer NAME (see `{inspect}`)",
        )
    return LayerSpec(module=last, use_input=True)


@dataclass(frozen=True, eq=False)
class TensorMark:
    """A tensor that an nn.Linear took or gave in a forward pass, known without holding it.

    Holding every call's input and output until the pass ended kept memory the forward frees as it goes (GBs
    for a long-context LLM: seven Linears a block, each (1, L, d)). Whether a tensor alive when asked (one the
    pass returned, a later call's input) is this one's memory is told by the storage's weak reference, still
    alive, at the address it had (`is_memory_of`): a storage freed meanwhile is expired, so a later tensor given
    its memory (a stale address) is no match, as no later tensor could take the memory of a tensor held."""

    device: torch.device
    #: its storage's address; 0 (no match): an empty storage
    data_ptr: int
    #: None: a tensor without storage (sparse, nested, a subclass), told by identity alone
    storage: StorageWeakRef | None
    #: the tensor while something holds it (a view of it holds it), for its identity and version counter
    tensor: weakref.ref[torch.Tensor] | None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorMark:
        try:
            reference: weakref.ref[torch.Tensor] | None = weakref.ref(tensor)
        except TypeError:
            reference = None
        try:
            storage = tensor.untyped_storage()
            return cls(tensor.device, storage.data_ptr(), StorageWeakRef(storage), reference)
        except (RuntimeError, NotImplementedError):  # a tensor without storage
            return cls(tensor.device, 0, None, reference)

    def is_memory_of(self, tensor: Any) -> bool:
        """Whether `tensor`, alive, is a view of this mark's memory (the tensor itself, a reshape, a slice)."""
        if not isinstance(tensor, torch.Tensor) or tensor.device != self.device:
            return False
        try:
            address = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            address = None
        if address is None or self.storage is None:
            return self.tensor is not None and self.tensor() is tensor
        return address != 0 and address == self.data_ptr and not self.storage.expired()

    def is_alive(self) -> bool:
        """Whether the memory (a storage-less tensor: the tensor) is still alive, so that a later tensor may be it."""
        if self.storage is None:
            return self.tensor is not None and self.tensor() is not None
        return self.data_ptr != 0 and not self.storage.expired()


@dataclass(frozen=True)
class LinearCall:
    """One call of an nn.Linear in a forward pass: its name, what it took and gave (None: no tensor).

    Nothing is held: the choice of the default layer needs of them only what `TensorMark` keeps."""

    name: str
    input: TensorMark | None
    output: TensorMark | None
    #: the output's version counter when the call returned (None: not known, an inference-mode tensor's)
    version: int | None = None
    #: the output's values a sample (of its first row); None: not known (no tensor, or a nested one: no slice reads it)
    values_a_sample: int | None = None
    #: the index in the pass of the first call whose input was this one's memory (this call's if none)
    input_first: int = 0

    def written_over(self, outputs: torch.Tensor) -> bool:
        """Whether the output, whose memory `outputs` are, was written in place after the call returned
        (`y = wide(x); y += head(h)`). The output's own version counter while the output is alive (a view of it,
        such as `outputs`, keeps it so); else `outputs`', which it shares (outputs detached from it, `y.detach()`)."""
        if self.version is None or self.output is None:
            return False
        tensor = self.output.tensor() if self.output.tensor is not None else None
        return (tensor if tensor is not None else outputs)._version != self.version


class LinearCalls(list[LinearCall]):
    """A forward pass's nn.Linear calls in the order they finished (`linear_calls`, inspect's own hooks), `add`ed
    as they return; each input's memory indexed, so that a call finds the first that took the same input in a
    look-up: a scan of the earlier calls cost n²/2 comparisons (2.5 s for the 12 000 calls of a Linear cell
    unrolled over 6 000 steps)."""

    def __init__(self) -> None:
        super().__init__()
        #: an input's storage address (or a storage-less tensor's id) -> the first call that took each storage there
        #: still alive (one, but where two storages alias one buffer: each is kept, as either may be freed first)
        self._takers: dict[tuple[bool, int], list[LinearCall]] = {}

    def add(self, name: str, inputs: Any, output: Any) -> None:
        """Append the LinearCall of a forward hook's arguments."""
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if first is None:
            self.append(linear_call(name, None, output, input_first=len(self)))
            return
        mark = TensorMark.of(first)
        takers = self._takers.setdefault((mark.storage is None, id(first) if mark.storage is None else mark.data_ptr), [])
        # a freed memory is never that of a later tensor (`TensorMark`): its call is dropped as met
        takers[:] = [call for call in takers if call.input is not None and call.input.is_alive()]
        earlier = next((call for call in takers if call.input is not None and call.input.is_memory_of(first)), None)
        call = linear_call(name, mark, output, input_first=len(self) if earlier is None else earlier.input_first)
        # one call a storage: the later ones that took it share its input_first
        if earlier is None or _other_storage(earlier.input, mark):
            takers.append(call)
        self.append(call)

    def clear(self) -> None:
        super().clear()
        self._takers.clear()


def _other_storage(a: TensorMark | None, b: TensorMark) -> bool:
    """Whether marks a and b of one memory, both alive, are two storages aliasing one buffer (`torch.from_numpy` of
    one array twice), either of which may be freed first."""
    return a is not None and a.storage is not None and b.storage is not None and a.storage.cdata != b.storage.cdata


def linear_call(name: str, mark: TensorMark | None, output: Any, *, input_first: int) -> LinearCall:
    """The LinearCall of a call that took `mark` and returned `output` (`LinearCalls.add`)."""
    if not isinstance(output, torch.Tensor):
        return LinearCall(name, mark, None, input_first=input_first)
    try:
        values: int | None = int(output[:1].numel()) if output.dim() else 1
    except (RuntimeError, NotImplementedError):  # a nested tensor: no slice along its first dimension
        values = None
    return LinearCall(name, mark, TensorMark.of(output), None if output.is_inference() else output._version,
                      values, input_first)


@contextmanager
def linear_calls(model: nn.Module) -> Iterator[LinearCalls]:
    """The calls of the model's nn.Linear modules in the block's forward passes, in the order they finish.

    No tensor is held (`TensorMark`): the pass needs no more memory than the model's forward. A Linear called
    twice appears twice. The model's own errors propagate unchanged."""
    calls = LinearCalls()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def hook(_module: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                calls.add(name, inputs, output)

            handles.append(module.register_forward_hook(hook))
    try:
        with quiet_nested_tensors():
            yield calls
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Untraced:
    """`outputs_made_from`'s answer where its walk met a node it cannot see through, an nn.Linear perhaps behind it:
    `through` says which, for the note of the default that falls back (`chosen_default`)."""

    through: str


def outputs_made_from(model: nn.Module, inputs: torch.Tensor) -> frozenset[str] | Untraced | None:
    """The nn.Linear modules whose output the model's outputs (`_output_tensor`) are computed from, by operations
    that apply no weight of their own (`WEIGHT_PRODUCT`), in a second forward pass of `inputs` that records the
    autograd graph and walks it back from the outputs. For `chosen_default`
    where no nn.Linear's output tensor is the outputs (`policy(h) / T`, `log_softmax(head(h))`): the last nn.Linear
    to run may then be another head on features of its own (an actor-critic's value on a trunk of its own).

    No activation is kept: every tensor autograd would save for a backward pass (never run) is dropped as it is
    saved, so the pass needs the memory of the no_grad one. Float inputs are made to require gradients (a model
    whose parameters are all frozen still builds a graph), given as a copy of the leaf that does (a model may write
    into its input in place). None where it cannot tell: no graph (integer inputs and frozen parameters), or the
    pass fails with gradients on (a model writing in place into another tensor that requires them, a parameter),
    where the rule before it stands. `Untraced` where the walk goes through a custom autograd Function's node
    (a reentrant activation checkpoint, a fused op of the model's own) inside whose forward an nn.Linear ran, with
    no node in the graph (`_inside`): the nn.Linear the walk reaches beyond it is no head (its input was the probe
    itself for `checkpoint(self.policy, h) / T`); and where it meets the node of an operation of no derivative
    (`NO_DERIVATIVE`: `torch._addmm_activation` on the CPU), which may apply a weight as a head does, its node
    naming none. A Function applying no weight (a straight-through estimator) is walked through."""
    reached: dict[str, list[Any]] = {}
    # the nn.Linear whose output has no node (run with gradients off): the number autograd gives the next node then
    hidden: list[int | None] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def hook(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
                if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                    reached.setdefault(name, []).append(output.grad_fn)
                else:
                    hidden.append(_next_node_number())

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_dropped, _never_unpacked), \
                quiet_nested_tensors(), signals.model_code(FORWARD):
            # a copy made from the leaf, which the model may write into as it does in its pass (`x.mul_(0.5)`,
            # `x -= mean`): into the leaf itself, torch refuses
            given = inputs.detach().requires_grad_().clone() if inputs.is_floating_point() else inputs
            outputs = _output_tensor(model(given))
    except Exception as exc:  # noqa: BLE001 - the no_grad pass ran: the rule before this one stands
        signals.through(exc)  # a Ctrl-C met in C code the model's pass ran through: the run stops, no rule falls back
        return None
    finally:
        for handle in handles:
            handle.remove()
    linear_of = {node: name for name, nodes in reached.items() for node in nodes}
    found: set[str] = set()
    seen: set[Any] = set()
    stack = [outputs.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in linear_of:  # the Linear's output: what it was computed from is no head's
            found.add(linear_of[node])
        elif isinstance(node, torch.autograd.function.BackwardCFunction) and _inside(node, hidden):
            # which nn.Linear inside the Function the outputs are computed from is not known
            return Untraced(f"the custom autograd Function {node.name()}" + (
                " (a reentrant activation checkpoint, whose nn.Linear ran with gradients off)"
                if node.name() == "CheckpointFunctionBackward" else ", in whose forward an nn.Linear ran"))
        elif node.name() in NO_DERIVATIVE:  # whether the operation applied a weight is not known
            return Untraced(f"an operation of no derivative ({node.name()}, as torch._addmm_activation on the CPU)")
        elif not WEIGHT_PRODUCT.fullmatch(node.name()) and not _given_a_weight(node):
            stack.extend(parent for parent, _index in node.next_functions)
    return frozenset(found) if seen else None


#: The names of the autograd nodes torch gives an operation of no derivative (`torch._addmm_activation` on the CPU): the
#: node does not say what the operation did, a weight product perhaps, so `outputs_made_from` cannot tell past it.
NO_DERIVATIVE = frozenset({"torch::autograd::NotImplemented", "torch::autograd::Error"})

#: The autograd nodes of the operations that apply a weight of their own, as a head does (a matrix product, a
#: convolution, a recurrent layer, attention): `outputs_made_from` walks no further back through them. **(choice)**
#: An nn.Linear reached only through one (`F.linear(h, embed.weight)` after a block's `down` projection, a 1x1
#: convolution after an nn.Linear stem) is no head of the outputs: its input is not what they are read from.
#: Elementwise operations stay walked through, a learned scale (`policy(h) * logit_scale.exp()`) or a LayerNorm
#: among them. Matched by the nodes' names, which torch gives as the operation's `...Backward0`; a backend's own
#: kernel's node is matched by the operation alone (`CudnnConvolution`, `MkldnnRnnLayer`, `MkldnnLinear`), not by the
#: backend: a BatchNorm on the logits computed by cuDNN (`CudnnBatchNormBackward0`) is walked through on a GPU as on
#: the CPU, and the same model gets the same default layer on either device. nn.Bilinear's `_trilinear`
#: (`TrilinearBackward0`) and the sparse products (`SparseAddmmBackward0`, `SparseSampledAddmmBackward0`) apply a
#: weight too, as a fused addmm and activation would (`_addmm_activation`, whose node in this torch is
#: `NO_DERIVATIVE`'s).
WEIGHT_PRODUCT = re.compile(
    r"_?(Mm|Addmm|AddmmActivation|Bmm|Baddbmm|Addbmm|Mv|Addmv|Dot|Vdot|Matmul|Einsum|Tensordot|Outer|Ger|Kron|"
    r"Trilinear|Sparse\w*(Mm|Addmm)\w*|\w*Linear|\w*Conv\w*|\w*Attention\w*|\w*(Rnn|Lstm|Gru)\w*)Backward\d*")


def _next_node_number() -> int | None:
    """The sequence number autograd gives the next node made in this thread (None: this torch does not say)."""
    number = getattr(torch._C._autograd, "_get_sequence_nr", None)
    return None if number is None else int(number())


def _inside(node: Any, hidden: Sequence[int | None]) -> bool:
    """Whether an nn.Linear of `hidden` (`_next_node_number` as it ran) may have run in the forward of the custom
    Function whose node is `node`: its node is made before its forward runs, which, gradients off, makes none, so
    one run inside found the next number the node's own plus one. So does one run with gradients off right after
    the Function returned (a trunk under torch.no_grad), before any other node was made: taken as inside, and
    every one where torch gives no number."""
    after = int(node._sequence_nr()) + 1
    return any(number is None or number == after for number in hidden)


def _given_a_weight(node: Any) -> bool:
    """Whether `node` is a custom autograd Function's given a learned matrix (a parameter of two or more dimensions,
    as it is or through one view of it, `weight.t()`): it applies a weight of its own as `WEIGHT_PRODUCT`'s do (torch's
    own example Function, `LinearFunction.apply(x, self.weight, self.bias)`), whatever its name. A learned scale or
    bias (one dimension) is no weight: a Function applying one is walked through."""
    if not isinstance(node, torch.autograd.function.BackwardCFunction):
        return False
    leaves = []
    for parent, _index in node.next_functions:
        leaves.append(parent)
        if parent is not None and len(parent.next_functions) == 1:
            leaves.append(parent.next_functions[0][0])
    return any(isinstance(variable := getattr(leaf, "variable", None), nn.Parameter) and variable.dim() >= 2
               for leaf in leaves)


def _dropped(_saved: torch.Tensor) -> None:
    """A tensor autograd saves for a backward pass `outputs_made_from` never runs: not kept."""


def _never_unpacked(_packed: None) -> torch.Tensor:
    raise RuntimeError("outputs_made_from's graph is walked, never run backward")


def _gave(call: LinearCall, outputs: torch.Tensor) -> bool:
    """Whether `outputs` are what `call` gave: a view of its memory, or the very tensor it returned, whose data the
    forward replaced (`out = head(h); out.data = out.data * 2`: new memory, the old one freed)."""
    returned = call.output.tensor() if call.output is not None and call.output.tensor is not None else None
    return _shares_storage(call.output, outputs) or returned is outputs


def _shares_storage(mark: TensorMark | None, tensor: Any) -> bool:
    """Whether `tensor`, alive, is a view of the memory of a tensor a call took or gave (`TensorMark`)."""
    return mark is not None and mark.is_memory_of(tensor)


@dataclass(frozen=True)
class DefaultChoice:
    """The default feature layer's module (its input is taken), and what to say of the choice (or None)."""

    module: str
    note: str | None = None
    warning: str | None = None
    #: (the last nn.Linear's values a sample, the outputs') where they differ and no nn.Linear gives the outputs
    sizes: tuple[int, int] | None = None
    #: the other nn.Linear of the outputs' size that ran, where no nn.Linear gives the outputs (`f = a·(net − net₀)`)
    rivals: tuple[str, ...] = ()


def _outputs_said(raw: Any) -> str:
    """Where in what the forward pass returned the outputs are (`_output_tensor`'s rule), for a message."""
    if isinstance(raw, torch.Tensor):
        return "the model's outputs"
    if isinstance(raw, dict):
        return "the model's outputs (the 'logits' entry of the dict its forward returns)"
    if hasattr(raw, "logits"):
        return f"the model's outputs (the logits of the {type(raw).__name__} its forward returns)"
    return f"the model's outputs (the first element of the {type(raw).__name__} its forward returns)"


def frozen_linears(model: nn.Module) -> frozenset[str]:
    """The nn.Linear modules whose parameters the model's factory froze (requires_grad False, every one)."""
    return frozenset(name for name, module in model.named_modules() if isinstance(module, nn.Linear)
                     and not any(parameter.requires_grad for parameter in module.parameters()))


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Each nn.Linear's weight shape, by name (one not materialised yet, a LazyLinear's that never ran, left out)."""
    return {name: tuple(module.weight.shape) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not isinstance(module.weight, nn.parameter.UninitializedParameter)}


def chosen_default(calls: Sequence[LinearCall], raw: Any, *, frozen: Collection[str] = (),
                   shapes: Mapping[str, tuple[int, ...]] | None = None,
                   made_from: Callable[[], frozenset[str] | Untraced | None] | None = None,
                   inspect: str | None = None) -> DefaultChoice:
    """The default feature layer of a forward pass whose nn.Linear calls were `calls` (not empty) and which
    returned `raw`: the input of the nn.Linear whose output the outputs are (views of the same memory: a
    reshape, a squeeze, a slice); where it is not the last one to run (two heads, each on a tower of its own,
    returned as a tuple), a note says so. Where no nn.Linear gives the outputs, the last one to run, as before;
    a warning where its output is not the outputs' size (a head that is no nn.Linear: `F.linear`, a weight-tied
    `h @ embed.weight.T`; outputs pooled from a head at every position), as its input may then be no
    penultimate features. Outputs of the Linear's size made from it (`head(h) / T`) are taken as its.

    An earlier Linear's output written in place after it returned (`y = wide(x); y += head(h); return y`) is
    not the outputs' source: they share its memory, but hold what later layers added (its input, here the
    probe itself, was taken for the penultimate features).

    `frozen`: the nn.Linear whose parameters are frozen. Where the last to run is one and no nn.Linear gives the
    outputs, but a trainable one of their size ran too (`f = a·(net(x) − net0(x))`, net0 a frozen copy of net at
    initialisation: its features never move, and every run read coefficient), a warning names the trainable one.
    Warned, not taken: the default stays the same for a store that is resumed. `shapes` (`linear_shapes`; None:
    not known): a trainable one counts only where its weight has the frozen one's shape, as a copy's has: a
    trained hidden layer as wide as the outputs under a fixed (frozen) readout, `readout(relu(hidden(x))) / 3`,
    is no copy's twin, and its input is no head's.

    `made_from` (`outputs_made_from`; None: not known), asked only where no nn.Linear gives the outputs and more
    than one ran: the nn.Linear whose outputs the model's are computed from. Where the last to run is not one of
    them (`return policy(pi(x)) / T, value(vf(x))`), its input is another head's features, whatever its size: the
    last of them to run is taken, with a note. Where the walk could not tell (`Untraced`: a reentrant activation
    checkpoint's Function hiding the head), the last to run is taken as before, with a note saying so and how to
    pick another (`inspect`: the `fdl inspect` command that lists the layers)."""
    last = calls[-1]
    outputs = _output_tensor(raw, calls)
    at, producer = next(((at, call) for at, call in reversed(list(enumerate(calls))) if _gave(call, outputs)),
                        (len(calls), None))
    if producer is not None and producer.name != last.name and producer.written_over(outputs):
        size = int(outputs[:1].numel()) if outputs.dim() else 1
        # `y = wide(x); y += head(h)` needs an nn.Linear of the outputs' size run after it; written over by none
        # (`out = head(h); out += bias`, out.mul_(2)), the outputs are still its, whatever Linear ran after
        added = [call for call in calls[at + 1:] if call.values_a_sample in (None, size)]
        if not added:
            return DefaultChoice(producer.name, note=(
                f"{_outputs_said(raw)} are the output of nn.Linear {producer.name!r}, written over in place after it "
                f"ran (out += bias, out.mul_(2)) by no later nn.Linear of their size, not of the last one to run, "
                f"{last.name!r}: the features are {producer.name}{INPUT_SUFFIX} (--layer NAME picks another)"))
        which = "the last nn.Linear to run" if added[-1] is last else "the last nn.Linear of their size to run after it"
        return DefaultChoice(added[-1].name, note=(
            f"{_outputs_said(raw)} are the output of nn.Linear {producer.name!r} written over in place after "
            f"it ran (y = {producer.name}(x); y += ...): the features are the input of {which}, "
            f"{added[-1].name}{INPUT_SUFFIX} (--layer {producer.name}{INPUT_SUFFIX} for the other)"))
    same_input = producer is not None and producer.input is not None and producer.input_first == last.input_first
    untraced = None  # the note of a fallback where the walk could not tell
    if producer is None and made_from is not None and any(call.name != last.name for call in calls):
        sources = made_from() or ()
        if isinstance(sources, Untraced):
            untraced = (
                f"{_outputs_said(raw)} could not be traced back through {sources.through} to the nn.Linear they are "
                f"computed from: the features are the input of the last nn.Linear to run, {last.name}{INPUT_SUFFIX} "
                f"(--layer NAME{INPUT_SUFFIX} picks another; `{inspect or 'fdl inspect CHECKPOINT'}` lists the layers)")
            sources = frozenset()
        head = next((call for call in reversed(calls) if call.name in sources), None)
        if head is not None and last.name not in sources:
            return DefaultChoice(head.name, note=(
                f"{_outputs_said(raw)} are computed from the output of nn.Linear {head.name!r}, not of the last one "
                f"to run, {last.name!r}: the features are {head.name}{INPUT_SUFFIX} (--layer NAME picks another)"))
    if producer is None or producer.name == last.name or same_input:
        if producer is None and last.values_a_sample is not None and last.values_a_sample != outputs[:1].numel():
            sizes = (last.values_a_sample, int(outputs[:1].numel()))
            return DefaultChoice(last.name, note=untraced, sizes=sizes, warning=(
                f"the default feature layer, {last.name}{INPUT_SUFFIX}, is the input of the last nn.Linear to run, "
                f"but {not_the_head(sizes)}; check the layers with `fdl inspect CHECKPOINT --probe FILE` and pick "
                "one with --layer NAME (NAME:input for a module's input)"))
        size = int(outputs[:1].numel()) if outputs.dim() else 1
        rivals = tuple(dict.fromkeys(call.name for call in calls
                                     if call.name not in frozen and call.values_a_sample == size
                                     and (shapes is None or shapes.get(call.name) == shapes.get(last.name))))
        if producer is None and rivals and last.name in frozen and last.values_a_sample == size:
            return DefaultChoice(last.name, note=untraced, rivals=rivals, warning=rivals_warning(last.name, rivals))
        return DefaultChoice(last.name, note=untraced)
    return DefaultChoice(producer.name, note=(
        f"{_outputs_said(raw)} are the output of nn.Linear {producer.name!r}, not of the last one to run, "
        f"{last.name!r}: the features are {producer.name}{INPUT_SUFFIX} (--layer NAME picks another)"))


def rivals_warning(last: str, rivals: Sequence[str]) -> str:
    """Why the last nn.Linear to run may be the wrong head when the outputs combine several of their size."""
    return (f"the default feature layer, {last}{INPUT_SUFFIX}, is the input of the last nn.Linear to run, whose "
            f"parameters are frozen, but no nn.Linear alone gives the model's outputs and {', '.join(rivals)}, "
            "trained, also gave values of their size: where the outputs combine them (a model centred at "
            "initialisation, f = a·(net(x) − net0(x)), net0 a frozen copy), the frozen one's features never move; "
            f"pick the trained head's input with --layer {rivals[-1]}{INPUT_SUFFIX}")


def not_the_head(sizes: tuple[int, int]) -> str:
    """Why the last nn.Linear to run, of `sizes` = (its values a sample, the outputs'), may not be the head."""
    return (f"that Linear gives {sizes[0]} values a sample and is no source of the model's {sizes[1]} "
            f"output{'s' if sizes[1] != 1 else ''}: the head is no nn.Linear (a functional or weight-tied one, "
            "F.linear(h, W), h @ embed.weight.T) or the outputs are made from it (pooled, gathered), so its input "
            "may not be the penultimate features")


def check_outputs_order(calls: Sequence[LinearCall], raw: Any) -> None:
    """Refuse a forward pass that returns (features, logits): the first element of a tuple, taken as the
    outputs, is the input of an nn.Linear whose output is another element. It was analysed as the logits,
    silently (accuracy the argmax of the hidden units)."""
    if not isinstance(raw, (tuple, list)) or len(raw) < 2:
        return
    for call in reversed(calls):
        if not _shares_storage(call.input, raw[0]):
            continue
        index = next((i for i, value in enumerate(raw) if i and _shares_storage(call.output, value)), None)
        if index is not None:
            raise ModelError(
                f"the model's forward returns a {type(raw).__name__} whose first element, which fdl takes as the "
                f"outputs (the logits), is the input of its nn.Linear {call.name!r}, whose output is element "
                f"{index}: the features, not the logits",
                fix=f"return the logits first (return logits, features), {_wrapper_fix(f'[{index}]')}",
            )


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def resolve_layers(
    model: nn.Module,
    names: Sequence[str],
    *,
    sample: np.ndarray | None = None,
    device: torch.device | None = None,
    dtype: str = "float32",
    note: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    inspect: str | None = None,
) -> list[LayerSpec]:
    """LayerSpecs for `--layer` names (NAME or NAME:input); the default layer when none are given.

    sample, device, dtype: one probe input to find the default layer by execution order (see
    `default_layer`, to which note and warn go); without it the default is the last nn.Linear in
    registration order.
    A layer named twice (`--layer conv --layer conv`) is hooked once: the list keeps first mentions, in order.
    inspect: the `fdl inspect` command that lists the model's modules, for the errors' fixes to give as it is
    (a placeholder `fdl inspect CHECKPOINT` without it).
    """
    if not names:
        return [default_layer(model, sample=sample, device=device, dtype=dtype, note=note, warn=warn,
                              inspect=inspect)]
    listed = inspect or "fdl inspect CHECKPOINT"
    modules = dict(model.named_modules())
    specs = []
    for name in names:
        use_input = name.endswith(INPUT_SUFFIX)
        module = name[: -len(INPUT_SUFFIX)] if use_input else name
        if not module:
            raise ModelError(
                f"--layer {name!r} names the whole model (its outputs or its inputs), not a feature layer",
                fix=f"pass the name of a module inside the model (listed by `{listed}`), or omit "
                "--layer for the input of the last nn.Linear",
            )
        if isinstance(model, ProgramModel) and module != LAST_LINEAR_OP:
            raise ModelError(
                f"--layer {name!r}: the layers of a TorchScript / torch.export checkpoint cannot be hooked by name",
                fix=f"omit --layer (fdl then takes {LAST_LINEAR_OP}:input, the input of the last linear operation), "
                "or pass --model FACTORY so that the weights are loaded into an eager model",
            )
        if module not in modules:
            import difflib

            named = [m for m in modules if m]
            close = difflib.get_close_matches(module, named, n=5)
            owner, colon, suffix = module.rpartition(":")
            wrapped = unwrapped_name(module)
            if colon and owner in modules:
                # 'head:output' said "no module name is close to it" of a module the model has
                raise ModelError(
                    f"--layer {name!r}: {owner!r} is a module of the model, but ':{suffix}' is no suffix fdl "
                    "knows",
                    fix=f"--layer {owner} for its output, --layer {owner}{INPUT_SUFFIX} for its input",
                )
            if wrapped != module and wrapped in modules:
                # a name copied from a torch.compile'd or DDP-wrapped model's named_modules()
                raise ModelError(
                    f"unknown layer {name!r}",
                    got=f"{module[: len(module) - len(wrapped)]!r} is the prefix of a torch.compile or DDP wrapper; "
                    "fdl hooks the network inside it, whose module names have no such prefix",
                    fix=f"--layer {wrapped}{INPUT_SUFFIX if use_input else ''}",
                )
            if close:
                got = f"closest module names: {', '.join(close)}"
            elif named:  # nothing is close: show what there is rather than "(none)"
                got = f"no module name is close to it; the model's modules include: {', '.join(named[:10])}" + (
                    f", ... ({len(named)} in all)" if len(named) > 10 else ""
                )
            else:
                got = "the model has no named sub-modules"
            raise ModelError(
                f"unknown layer {name!r}",
                got=got,
                fix=f"list the modules with `{listed}` and pass one to --layer",
            )
        if isinstance(modules[module], torch.jit.ScriptModule):
            # its forward hook raised "register_forward_hook is not supported on ScriptModules", said as a probe
            # that does not fit the model
            raise ModelError(
                f"--layer {name!r} is a TorchScript module inside the model ({type(modules[module]).__name__}), "
                "which no hook can watch: fdl cannot take its features",
                fix="take the eager module that receives its output (--layer NAME:input, see `fdl inspect`), or "
                "build the model without torch.jit.script on that part",
            )
        spec = LayerSpec(module=module, use_input=use_input)
        if spec not in specs:
            specs.append(spec)
    return specs


#: prefixes that a wrapper puts before the module names of the network inside: torch.compile's, DDP's
def model_outputs(raw: Any, rows: int | None = None) -> torch.Tensor:
    """The model's raw outputs (logits) flattened to (b, C) (`_output_tensor`, flattened); of a batch of `rows`
    samples, refused unless their first dimension is that batch (`batch_first`)."""
    tensor = _output_tensor(raw)
    if rows is not None:
        tensor = batch_first(raw, tensor, rows)
    return tensor.reshape(tensor.shape[0], -1)


def batch_first(raw: Any, tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor`, the outputs in what a forward pass of `rows` samples returned (`raw`), refused unless its first
    dimension is that batch. A forward ending in `.squeeze()` drops it for a batch of one sample ((C,), or () of
    a model of one output), `.flatten()` or `.view(-1)` merges it with the outputs: read as rows, such outputs
    gave "class label 9 but the model has 1 output" or an IndexError. (b,), one output a sample, is sound."""
    shape = tuple(int(size) for size in tensor.shape)
    if shape[:1] == (rows,):
        return tensor
    squeezed = ("drop the .squeeze() (on a batch of one sample it drops the batch dimension too), .flatten() or "
                ".view(-1), or for a model of one output make it .squeeze(-1), whose (b,) is one output a sample; "
                + _wrapper_fix(".reshape(len(x), -1)"))
    # one sample ran first (`forward_one_shapes`): outputs that lose their batch on more are pooled over it
    mixed = "keep each sample's outputs apart in the forward pass (no mean or sum over the batch dimension)"
    raise ModelError(
        f"{_outputs_said(raw)} have no batch dimension first: shape {shape} for a batch of {counted(rows, 'sample')}",
        fix="return them as (b, C), a row a sample: " + (squeezed if rows == 1 else mixed),
    )


def _output_tensor(raw: Any, calls: Sequence[LinearCall] = ()) -> torch.Tensor:
    """The model's raw outputs (logits) as it returned them, (b, ...).

    calls: the pass's nn.Linear calls, for the fix of a dict without ``logits``: the entry that the last
    nn.Linear to run gave is the one to read (else its first tensor's).

    Accepted: a tensor; an object or dict (e.g. a Hugging Face ModelOutput) carrying ``logits``; a
    tuple or list, whose FIRST element is taken (the convention of models returning
    ``(logits, extras...)``). A dict without ``logits`` is refused: which of its values are the
    outputs cannot be told safely.
    """
    if isinstance(raw, torch.Tensor):
        tensor = raw
    elif isinstance(raw, dict):
        if "logits" not in raw:
            keys = ", ".join(repr(key) for key in list(raw)[:12]) or "(none)"
            tensors = [key for key, value in raw.items() if isinstance(value, torch.Tensor)]
            head = calls[-1].output if calls else None
            first = next((key for key in tensors if _shares_storage(head, raw[key])), tensors[0] if tensors else "out")
            # several heads (an actor-critic's {"policy", "value"}): their shapes say which holds the logits
            shapes = ", ".join(f"{key!r} {tuple(int(size) for size in raw[key].shape)}" for key in tensors[:6])
            raise ModelError(
                "the model's forward returned a dict without a 'logits' entry, so its outputs cannot be told",
                got=f"dict keys: {keys}" + (f"; their shapes: {shapes}" if len(tensors) > 1 else ""),
                fix="make forward return the logits / predictions tensor, or a dict / ModelOutput with 'logits'; "
                + _wrapper_fix(f"[{first!r}]")
                + ("; of several heads, the one whose outputs the targets are for" if len(tensors) > 1 else ""),
            )
        tensor = raw["logits"]
    elif hasattr(raw, "logits"):
        tensor = raw.logits
    elif isinstance(raw, (tuple, list)) and raw:
        tensor = raw[0]
    else:
        tensor = raw
    if not isinstance(tensor, torch.Tensor):
        fields = _tensor_fields(raw) if tensor is raw else []
        if fields:  # a dataclass or other object of outputs without `logits` (a ModelOutput-like one)
            raise ModelError(
                f"the model's forward returned an object of type {type(raw).__name__} without 'logits', so its "
                "outputs cannot be told",
                got=f"its tensors: {', '.join(fields[:12])}",
                fix="make forward return the logits / predictions tensor, or an object with 'logits'; "
                + _wrapper_fix(f".{fields[0]}"),
            )
        raise ModelError(
            "the model's forward did not return a tensor",
            got=type(raw).__name__ if tensor is raw else f"{type(raw).__name__} whose outputs are a {type(tensor).__name__}",
            fix="make forward return the logits / predictions tensor; " + _wrapper_fix(""),
        )
    return tensor


def tuple_outputs(returned: Any) -> str:
    """Where the outputs are in what the model returned, for the messages that count them, when it is a tuple (or
    list) of several elements, whose first fdl reads (`_output_tensor`): "the first of the 2 elements of the
    tuple the model returns (element 1: shape (1, 3))". An actor-critic returning (value, policy) has one output
    there; said only as "the model has 1 output", its policy's labels read as a mismatch of probe and model.
    "" for anything else."""
    if not isinstance(returned, (tuple, list)) or len(returned) < 2 or not isinstance(returned[0], torch.Tensor):
        return ""
    others = [f"element {index}: " + (f"shape {tuple(int(size) for size in value.shape)}"
                                      if isinstance(value, torch.Tensor) else type(value).__name__)
              for index, value in enumerate(returned[1:5], start=1)]
    more = ", ..." if len(returned) > 5 else ""
    return (f"the first of the {len(returned)} elements of the {type(returned).__name__} the model returns "
            f"({', '.join(others)}{more})")


def tuple_outputs_fix(fix: str) -> str:
    """The fix of targets that do not fit a tuple's first element (`tuple_outputs`), before the error's own `fix`."""
    return ("if the targets are another element's, return the logits first, as (logits, ...), "
            + _wrapper_fix("[1]") + f"; else {fix}")


def _tensor_fields(raw: Any) -> list[str]:
    """The names of an object's tensor attributes (a dataclass's fields, else its instance attributes)."""
    import dataclasses

    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        names = [field.name for field in dataclasses.fields(raw)]
    else:
        names = list(getattr(raw, "__dict__", {}))
    return [name for name in names if isinstance(getattr(raw, name, None), torch.Tensor)]


def _wrapper_fix(pick: str) -> str:
    """How to analyse a model whose forward returns its logits inside something else (`pick` reads them)."""
    return (
        "or return the network from the --model factory inside a wrapper that holds it as `module` (so the "
        f"checkpoints' keys load as they are) and whose forward(x) returns self.module(x){pick or '...'}, the logits"
    )


#: The devices a misspelt --device may have meant, by the names it may be misspelt from.
DEVICE_NAMES = {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}


def named_device(name: str) -> torch.device:
    """The device `name` (not `auto`) names, or the error of a name that is no device fdl runs on: said from
    the name alone, whatever GPUs the machine has (`resolve_device` then checks those)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        # the one meant, as a wrong choice of another option is said (`SuggestingChoice`): "gpu" is cuda, not cpu
        near = list(dict.fromkeys(DEVICE_NAMES[known] for known in near_names(name, DEVICE_NAMES)))
        meant = f"did you mean {' or '.join(f'--device {device}' for device in near)}? " if near else ""
        raise ModelError(f"unknown device {name!r}", fix=f"{meant}use auto, cpu, cuda or cuda:i") from None
    if device.type not in ("cpu", "cuda"):
        # torch knows the name, but fdl's float64 statistics only run on the CPU or a CUDA GPU: another
        # device failed later with torch's traceback (mps, xpu: not built here; meta: no values to read)
        why = " (MPS has no float64, the dtype of fdl's statistics)" if device.type == "mps" else ""
        raise ModelError(
            f"--device {name}: fdl runs on the CPU or a CUDA GPU only{why}",
            fix="use --device auto, cpu, cuda or cuda:i",
        )
    return device


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; `cuda[:i]` checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = named_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        # Said with the device asked for (it read "--device cuda" for cuda:1 too) and, where fdl can tell,
        # why: a CPU build of torch (the wheel pip picks on some machines), or CUDA_VISIBLE_DEVICES
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        cpu_build = torch.version.cuda is None and getattr(torch.version, "hip", None) is None
        raise ModelError(
            f"--device {name}: no CUDA GPU is available",
            got=(f"torch {torch.__version__}, a build without CUDA" if cpu_build
                 else f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else None),
            fix="use --device cpu, or auto (a GPU when there is one)"
            + ("; for the GPU, install a CUDA build of torch" if cpu_build else ""),
        )
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise ModelError(
            f"--device {name}: this machine has no GPU {device.index}",
            got=f"{counted(count, 'CUDA GPU')} visible: cuda:0" + (f" .. cuda:{count - 1}" if count > 1 else "")
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) else ""),
            fix="pick a GPU that is listed (nvidia-smi lists them), or --device cuda for the current one",
        )
    return device


def current_cuda_device(device: torch.device) -> AbstractContextManager[Any]:
    """`device` (`cuda:i`) as the current CUDA device within the block, the caller's restored after it.

    fdl moves the model and the probe to `cuda:i`, but a model file may place things on the *current*
    device: `.cuda()` in its factory, `torch.zeros(..., device="cuda")` or `torch.cuda.current_device()`
    in its forward. Those landed on GPU 0, and the forward pass failed with "tensors on different
    devices" under `--device cuda:1`. A context (torch.cuda.device), not torch.cuda.set_device: fdl runs
    as a library too (`pipeline.run_analyze` in a notebook), whose caller keeps its own current device.
    It holds for the calling thread only; fdl's other threads run no torch operation. A no-op on the CPU
    and for `cuda` without an index, which is the current device already."""
    if device.type != "cuda" or device.index is None:
        return nullcontext()
    return torch.cuda.device(device)


class ProgramModel(nn.Module):
    """Wraps a TorchScript / torch.export module so its penultimate features can be hooked.

    The forward pass runs under a dispatch mode that remembers the input of the last linear operation
    (aten linear, addmm or mm) and passes it through the identity module `last_linear_op`, whose
    input is then hooked like any eager module's.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program
        self.last_linear_op = nn.Identity()

    def train(self, mode: bool = True) -> ProgramModel:
        # Exported programs refuse train()/eval(): they were traced in the mode they run in.
        self.training = mode
        if isinstance(self.program, torch.jit.ScriptModule):
            self.program.train(mode)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        positions = {aten.linear.default: 0, aten.addmm.default: 1, aten.mm.default: 0}
        seen: list[torch.Tensor] = []

        class Watch(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                if func in positions:
                    seen[:] = [args[positions[func]]]
                return func(*args, **(kwargs or {}))

        with Watch():
            output = self.program(*args, **kwargs)
        if not seen:
            raise ModelError(
                "the checkpoint's program runs no linear operation whose input could be the features",
                fix="pass --model FACTORY to load the weights into an eager model, and pick --layer NAME",
            )
        self.last_linear_op(seen[0])
        return output


def first_input(module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """What `NAME:input` takes of a call of `module`: its first positional argument, else its forward's first
    parameter given by name (`block(hidden_states=h)`, as Hugging Face models call their layers); None when
    the call holds neither."""
    if args:
        return args[0]
    try:
        first = next(iter(signature(module.forward).parameters.values()))
    except (StopIteration, TypeError, ValueError):  # no parameter, or a forward without a signature
        return None
    return kwargs.get(first.name) if first.kind in (first.POSITIONAL_OR_KEYWORD, first.KEYWORD_ONLY) else None


#: torch's warning, once a process, that its nested tensors are a prototype (`quiet_nested_tensors`)
_NESTED_PROTOTYPE = "The PyTorch API of nested tensors is in prototype stage"


@contextmanager
def quiet_nested_tensors() -> Iterator[None]:
    """The block without torch's warning that its nested tensors are a prototype, which an nn.TransformerEncoder
    given a padding mask gives in eval mode (its fast path): torch's word on itself, not on the model, printed
    amid fdl's progress. Around every forward pass fdl runs (`padded_sequences`, `linear_calls`).

    The filter stays for the rest of the process (torch gives that warning once a process anyway): a
    `warnings.catch_warnings()` around each forward pass, which restores the filters after it, made Python forget
    which warnings it had shown, and a warning of the model's forward, shown once, came again at every batch. Added
    once: warnings.filters is the process's, and changing it is no thread's own."""
    if not any(action == "ignore" and message is not None and message.pattern == _NESTED_PROTOTYPE
               for action, message, *_ in warnings.filters):
        warnings.filterwarnings("ignore", message=_NESTED_PROTOTYPE)
    yield


@contextmanager
def padded_sequences(model: nn.Module) -> Iterator[Callable[[str, str, Any], Any]]:
    """A function (layer label, module name, value) -> the value, a nested tensor padded back to a tensor.

    An nn.TransformerEncoder given a padding mask in eval mode packs its batch into a nested tensor (torch's
    fast path: sequences of several lengths) and pads its own output back to the input's length; the outputs
    of the layers inside it are nested. Such an output is padded, with zeros, to the length of the sequences
    the encoder around it received, as the encoder pads its own: the layer's features are (b, T·d), every
    position's, as without a mask. A nested tensor outside such an encoder is an error naming the layer."""
    lengths: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoder):
            def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
                source = args[0] if args else kwargs.get("src")
                if isinstance(source, torch.Tensor) and not source.is_nested and source.dim() == 3:
                    lengths[name] = int(source.shape[1])  # batch first: the only layout torch nests

            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))

    def padded(label: str, module: str, value: Any) -> Any:
        if not (isinstance(value, torch.Tensor) and value.is_nested):
            return value
        around = [name for name in lengths if not name or module.startswith(name + ".")]
        if not around:
            raise ModelError(
                f"layer {label!r} gives a nested tensor (sequences of several lengths), which has no one number "
                "of features a sample",
                fix="hook a module whose output is a padded tensor (see `fdl inspect CHECKPOINT --probe FILE`)",
            )
        dense = value.to_padded_tensor(0.0)
        missing = lengths[max(around, key=len)] - int(dense.shape[1])
        return nn.functional.pad(dense, (0, 0) * (dense.dim() - 2) + (0, missing)) if missing > 0 else dense

    try:
        with quiet_nested_tensors():
            yield padded
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def hooked(model: nn.Module, layers: Sequence[LayerSpec]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture each layer's features (flattened to (b, p)) of the next forward pass."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []

    def make_hook(spec: LayerSpec, padded: Callable[[str, str, Any], Any]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            value = first_input(module, args, kwargs) if spec.use_input else output
            if spec.use_input and value is None:
                raise ModelError(
                    f"layer {spec.label!r} has no tensor input to take features from",
                    got=f"the module was called with keyword arguments alone ({', '.join(kwargs)}), none of them its "
                    "forward's first parameter" if kwargs else "the module was called with no argument",
                    fix="take the output of the module that makes the input instead (see `fdl inspect CHECKPOINT`)",
                )
            if isinstance(value, (tuple, list)) and value:
                value = value[0]
            if not isinstance(value, torch.Tensor):
                what = "input" if spec.use_input else "output"
                raise ModelError(
                    f"layer {spec.label!r} has no tensor {what} to take features from",
                    got=f"its {what} is a {type(value).__name__}",
                    fix="pick a module that outputs a tensor (see `fdl inspect CHECKPOINT`), "
                    "or NAME:input for the tensor it receives",
                )
            value = padded(spec.label, spec.module, value)
            captured[spec.label] = value.reshape(value.shape[0], -1)

        return hook

    with padded_sequences(model) as padded:
        for spec in layers:
            handles.append(modules[spec.module].register_forward_hook(make_hook(spec, padded), with_kwargs=True))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()


def ieee_float32() -> None:
    """float32 convolutions and matrix products on a CUDA GPU in full float32, not TF32.

    torch runs cuDNN's float32 convolutions in TF32 by default (a 10-bit mantissa): a CNN's float32
    features on an Ampere-or-later GPU then differed from the CPU's by ~1e-3 relative, far beyond the
    float32 rounding of the same network, and a training script's model file may turn TF32 on for matrix
    products too (`torch.backends.cuda.matmul.allow_tf32 = True` at its top, run when fdl imports it).
    fdl measures the network's function, so both are turned off for its forward passes (`--dtype
    bfloat16` / `float16` are there for speed). The legacy flags are set first (older torch has no
    other); on a torch with the newer `fp32_precision` flags, the legacy cuDNN setter only clears the
    convolutions' and RNNs' own flags, which then inherit cuDNN's and the global `fp32_precision`: a
    model file's `torch.backends.fp32_precision = "tf32"` (or `torch.backends.cudnn.fp32_precision`)
    kept TF32 on for them. Each operation's own flag is set to "ieee" there, which overrides both."""
    try:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    except RuntimeError:  # pragma: no cover - a torch whose legacy setters refuse a mix with the newer flags
        pass
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9
        per_operation: tuple[Any, ...] = (getattr(torch.backends.cudnn, "conv", None),
                                          getattr(torch.backends.cudnn, "rnn", None), torch.backends.cuda.matmul)
        for backend in per_operation:
            if backend is not None:
                backend.fp32_precision = "ieee"


def prepare_model(model: nn.Module, *, device: torch.device, dtype: str) -> nn.Module:
    """eval() always (BatchNorm uses its stored running statistics), on the device, in the dtype; on a
    CUDA GPU float32 computed in full float32 (`ieee_float32`).

    An eager module of floating tensors in another dtype (one pickled whole after `model.half()`) is
    converted too: under the default float32 it ran in its own dtype on float32 inputs and was refused
    as a probe that does not fit the model; it runs as a state_dict of those values does (float16 and
    bfloat16 widen exactly)."""
    if device.type == "cuda":
        ieee_float32()
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        model = ProgramModel(_program_on(model, device))
    model = model.to(device)
    if dtype != "float32":
        model = model.to(DTYPES[dtype])
    elif not isinstance(model, ProgramModel) and not in_float32(model):
        with torch.no_grad():  # the narrow tensors widen (exactly); a float64 layer kept on purpose stays
            for tensor in (*model.parameters(), *model.buffers()):
                if tensor.dtype in _NARROW:
                    tensor.data = tensor.data.float()
        if not in_float32(model):  # float64 only (`model.double()` pickled whole)
            model = model.to(torch.float32)
    return model.eval()


#: Floating dtypes narrower than float32, which a module's tensors widen from under the default float32
_NARROW = (torch.float16, torch.bfloat16)


def in_float32(model: nn.Module) -> bool:
    """Whether the module runs as it is under the default float32: some floating parameter or buffer is float32
    (or none is floating) and none is narrower (`_NARROW`). `prepare_model` widens the narrow ones of any other
    (`model.half()` pickled whole, or with its BatchNorm turned back to float32, as apex's O2 keeps it), and
    converts one of float64 tensors only; one that mixes float32 with float64 (a layer or buffer kept on purpose,
    its forward casting to it) keeps its dtypes, as it was trained."""
    tensors = [tensor for tensor in (*model.parameters(), *model.buffers()) if tensor.is_floating_point()]
    return not tensors or (any(tensor.dtype == torch.float32 for tensor in tensors)
                           and not any(tensor.dtype in _NARROW for tensor in tensors))


def _program_on(module: nn.Module, device: torch.device) -> nn.Module:
    """A torch.export checkpoint's module for `device`, from its ExportedProgram moved there.

    torch.export writes into the program the device of every tensor its forward creates (an eager
    `torch.arange(n, device=x.device)` became device=cpu when exported on the CPU) and holds constant
    tensors that are neither parameters nor buffers: `.to(device)` moved neither, and on a GPU the
    forward pass failed with torch's "Expected all tensors to be on the same device". torch's
    `move_to_device_pass` rewrites both. A program whose tensors are all on the CPU is left as it is for
    the CPU (its devices can only be the CPU's); a TorchScript module's devices are not written in."""
    from fdl_cli.checkpoints import EXPORTED_PROGRAM

    program = getattr(module, EXPORTED_PROGRAM, None)
    if program is None:
        return module
    tensors = [*program.state_dict.values(), *(v for v in program.constants.values() if isinstance(v, torch.Tensor))]
    if device.type == "cpu" and all(tensor.device.type == "cpu" for tensor in tensors):
        return module
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # torch before 2.5: .to(device) is all there is
        return module
    return move_to_device_pass(program, device).module()


def _inputs(batch: np.ndarray, *, device: torch.device, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    if tensor.is_floating_point():
        tensor = tensor.to(DTYPES[dtype])
    return tensor.to(device, non_blocking=True)


@contextmanager
def buffers_read_before(
    model: nn.Module, layers: Sequence[LayerSpec], found: dict[str, set[str]] | None
) -> Iterator[None]:
    """Over the next forward pass, add to `found` (label -> buffer names) the model's buffers that an operation read
    before each layer's features were taken: for NAME:input before its module began, with those its forward
    pre-hooks read but its own buffers (the input those hooks return is the features; pruning's reads its mask
    for the module's weight), else before the module returned.
    Only these can have made the features: not a buffer of a head after the layer, nor one of the model itself
    read after it (a temperature on the logits), whatever module holds it; and a buffer read by another module's
    code (`F.batch_norm(x, self.bn.running_mean, ...)`, its own module never called) is one. The reads are seen
    as torch's functions are called (a `TorchFunctionMode`: a `TorchDispatchMode` imports torch._dynamo, seconds),
    by the memory they read (a slice of a causal mask reads the mask). Nothing for a layer that is no module
    (`LAST_LINEAR_OP`), in a model with a TorchScript submodule (whose calls inside are not seen), or with `found`
    None."""
    if found is None:
        yield
        return
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    holders: dict[int, list[str]] = {}
    for name, buffer in model.named_buffers():
        address = _storage_address(buffer)
        if address:  # an empty buffer holds no memory (address 0, as every empty tensor's) and nothing to read
            holders.setdefault(address, []).append(name)
    read: set[str] = set()
    taken: dict[str, set[str]] = {}

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            for value in tree_flatten((args, kwargs))[0]:
                if isinstance(value, torch.Tensor):
                    read.update(holders.get(_storage_address(value), ()))
            return func(*args, **(kwargs or {}))

    def take(label: str) -> None:
        taken.setdefault(label, set(read))

    def take_hooked(label: str, own: str) -> None:  # what the module's own pre-hooks read, but its own buffers
        taken[label] |= {name for name in read if not name.startswith(own)}

    modules = dict(model.named_modules())
    handles = []  # a hook that returned a value would replace the module's input or output
    for spec in (spec for spec in layers if spec.module in modules and spec.module != LAST_LINEAR_OP):
        module, label = modules[spec.module], spec.label
        if not spec.use_input:
            handles.append(module.register_forward_hook(lambda *_args, label=label: take(label)))
            continue
        # NAME:input is the input the module's pre-hooks return: what they read counts, but the module's own
        # buffers, which a pre-hook reads for the module's weights (pruning's mask), not for its input
        handles.append(module.register_forward_pre_hook(lambda *_args, label=label: take(label), prepend=True))
        handles.append(module.register_forward_pre_hook(
            lambda *_args, label=label, own=spec.module + ".": take_hooked(label, own)))
    try:
        with Reads():
            yield
    finally:
        for handle in handles:
            handle.remove()
    scripted = any(isinstance(module, torch.jit.ScriptModule) for module in modules.values())
    for label, names in taken.items() if not scripted else ():
        found.setdefault(label, set()).update(names)


def _storage_address(tensor: torch.Tensor) -> int:
    """Where the memory `tensor` views begins (0 for none: an empty or nested tensor, a subclass without storage)."""
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return 0


def forward_one_shapes(
    model: nn.Module, layers: Sequence[LayerSpec], sample: np.ndarray, *, device: torch.device, dtype: str,
    ran_before: dict[str, set[str]] | None = None, source: list[str] | None = None,
) -> tuple[dict[str, int], int, tuple[int, ...]]:
    """One forward pass of one sample: the width of each layer's features, the number of outputs, and the
    shape of one sample's outputs before they are flattened ((C,) for a classifier's logits, (T, C) for a
    head applied at every position of a sequence).

    A module that runs more than once per forward pass (a shared activation, a block applied twice)
    is refused: its hook would see only the last call, silently.
    ran_before: filled, label -> the names of the buffers read before the layer's features were taken
    (`buffers_read_before`), added to what it holds.
    source: given, `tuple_outputs` of what the model returned is appended to it.
    """
    calls: dict[str, int] = {}
    modules = dict(model.named_modules())
    counters = [
        modules[spec.module].register_forward_hook(
            lambda *_args, label=spec.label: calls.__setitem__(label, calls.get(label, 0) + 1)
        )
        for spec in layers
        if spec.module in modules and spec.module != LAST_LINEAR_OP
    ]
    # the modules around the layers, for a layer that does not run: whether the module using its weights did
    parents = {spec.module.rpartition(".")[0] for spec in layers} - {""}
    parents_ran: set[str] = set()
    counters += [modules[name].register_forward_hook(lambda *_args, name=name: parents_ran.add(name))
                 for name in sorted(parents) if name in modules]
    try:
        with torch.inference_mode(), hooked(model, layers) as captured, linear_calls(model) as linears, \
                buffers_read_before(model, layers, ran_before):
            with signals.model_code(FORWARD):
                returned = model(_inputs(sample[:1], device=device, dtype=dtype))
            check_outputs_order(linears, returned)
            if source is not None:
                source.append(tuple_outputs(returned))
            rows = len(sample[:1])  # the sample's, not the outputs' (a forward ending in .squeeze() drops their batch)
            raw = batch_first(returned, _output_tensor(returned, linears), rows)
            shape = tuple(int(size) for size in raw.shape[1:])
            outputs = raw.reshape(rows, -1)
    finally:
        for handle in counters:
            handle.remove()
    repeated = {label: count for label, count in calls.items() if count > 1}
    if repeated:
        label, count = next(iter(repeated.items()))
        raise ModelError(
            f"layer {label!r} runs {count} times in one forward pass, so its features are ambiguous",
            fix="hook a module that runs once (e.g. the block around it; see `fdl inspect`), or give the "
            "shared module a separate instance per use in the model",
        )
    missing = [spec for spec in layers if spec.label not in captured]
    if missing:
        raise _not_called(missing, modules, parents_ran)
    for label, value in captured.items():
        if int(value.shape[0]) != rows:
            raise ModelError(
                f"layer {label!r} gives {int(value.shape[0])} rows of features for {rows} sample: "
                f"its output has no batch dimension first ({NO_BATCH_CAUSES})",
                fix="hook a module whose output's first dimension is the batch (`fdl inspect CHECKPOINT --probe "
                "FILE` lists the output shapes of one sample, [1, ...])",
            )
    return {label: int(value.shape[1]) for label, value in captured.items()}, int(outputs.shape[1]), shape


def _not_called(missing: Sequence[LayerSpec], modules: Mapping[str, nn.Module], parents_ran: set[str]) -> ModelError:
    """The error for layers the forward pass did not call: unused modules, or modules whose weights their parent
    uses directly (nn.MultiheadAttention uses its out_proj's weights, and so never calls it: no hook sees it). Where
    the parent ran, its output is the layer to take: for nn.MultiheadAttention's out_proj, the first element of the
    tuple (output, attention weights) it returns, which is out_proj's output; a tuple's first element is what fdl
    takes from any module."""
    names = ", ".join(spec.label for spec in missing)
    one = len(missing) == 1
    what = (f"{'layer' if one else 'layers'} {names} did not run in the model's forward pass: no hook on "
            f"{'the module' if one else 'these modules'} saw a call, so {'it' if one else 'each'} is unused, or the "
            "module around it uses its weights directly without calling it (nn.MultiheadAttention does so with its "
            "out_proj); `fdl inspect` lists such modules as `not called`")
    fix = parent_to_take([spec.module for spec in missing], modules, parents_ran)
    if fix is None:
        return ModelError(what, fix="choose a module that the forward pass calls (see `fdl inspect`)")
    return ModelError(what, fix=fix + ", or another module the forward pass calls (see `fdl inspect`)")


def parent_to_take(not_called: Sequence[str], modules: Mapping[str, nn.Module], ran: Collection[str]) -> str | None:
    """What to hook instead of the modules `not_called` that the forward pass did not call: the modules around
    them (their parents) that ran (`ran`: names of modules the pass called), as `--layer NAME`s, with what fdl
    takes of a module that returns a tuple; None when no parent ran. One rule for `analyze --layer`'s error
    and `fdl inspect`'s `not called` line."""
    parents = list(dict.fromkeys(name.rpartition(".")[0] for name in not_called))
    taken = [parent for parent in parents if parent and parent in ran and parent in modules]
    if not taken:
        return None
    attention = [parent for parent in taken if isinstance(modules[parent], nn.MultiheadAttention)]
    fix = (f"take the output of the module around it, which ran: {' '.join(f'--layer {name}' for name in taken)} "
           "(of a module that returns a tuple, fdl takes the first element")
    return fix + (", here nn.MultiheadAttention's output, out_proj's output itself, not its attention weights)"
                  if attention else ")")


def extract(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    x: Any,  # (n, ...) inputs: an array or a probes.RowReader (rows read per batch)
    y: np.ndarray | RowReader | None,  # a RowReader: float64 regression targets read per batch
    *,
    task: str,
    binary_logit: bool = False,
    device: torch.device,
    dtype: str = "float32",
    batch_size: int = 512,
    anchor_size: int = 4096,
    keep_features: Callable[[int], bool] | None = None,
    product_dtype: str = "float64",
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, LayerResult]:
    """One pass of the probe (x, y) through the model; statistics and anchor features per layer.

    x: (n, ...) probe inputs; y: (n,) labels or (n, C) targets or None. keep_features(p) says whether
    a layer of width p keeps its features (the Gram route, for p > n). Targets in an array are put on
    the device once; targets read in place (a RowReader) are read and sent a batch at a time.
    binary_logit: the model's one output z is a binary classifier's logit, analysed as the two-class
    logits (0, z) (pipeline._binary_logit).
    """
    n = int(x.shape[0])
    if n == 0:
        raise ProbeError("the probe is empty", fix="use a probe with at least one sample")
    accumulators: dict[str, MomentAccumulator] = {}
    anchors: dict[str, list[torch.Tensor]] = {spec.label: [] for spec in layers}
    anchor_moments: dict[str, Any] = {}
    anchor_count = min(anchor_size, n)
    whole = y is not None and not isinstance(y, RowReader)
    # Both copies non-blocking, as the inputs' (`_inputs`): a blocking copy to a GPU waits for all the work
    # queued there first, so the targets read a batch at a time stalled the pass at every batch. From
    # pageable memory the copy has taken its source once it returns, so the arrays may go at once.
    targets_all = torch.from_numpy(np.ascontiguousarray(y)).to(device, non_blocking=True) if whole else None
    n_batches = math.ceil(n / batch_size)
    with torch.inference_mode(), hooked(model, layers) as captured:
        for index, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            outputs = model_outputs(_forward(model, x, start, stop, device=device, dtype=dtype), stop - start)
            if binary_logit:
                outputs = torch.cat([torch.zeros_like(outputs), outputs], 1)
            targets = (
                torch.from_numpy(y[start:stop]).to(device, non_blocking=True) if isinstance(y, RowReader)
                else targets_all[start:stop] if targets_all is not None else None
            )
            for spec in layers:
                features = captured.pop(spec.label)
                accumulator = accumulators.get(spec.label)
                if accumulator is None:
                    keep = bool(keep_features(int(features.shape[1]))) if keep_features else False
                    accumulator = MomentAccumulator(task=task, keep_features=keep, product_dtype=product_dtype)
                    accumulators[spec.label] = accumulator
                if start < anchor_count < stop:
                    # Split the batch at the anchor boundary so that the sums so far are the anchors' own.
                    cut = anchor_count - start
                    accumulator.update(features[:cut], outputs[:cut], targets[:cut] if targets is not None else None)
                    anchor_moments[spec.label] = accumulator.second_moment_so_far()
                    accumulator.update(features[cut:], outputs[cut:], targets[cut:] if targets is not None else None)
                else:
                    accumulator.update(features, outputs, targets)
                    if stop == anchor_count:
                        anchor_moments[spec.label] = accumulator.second_moment_so_far()
                if start < anchor_count:
                    anchors[spec.label].append(_anchor_part(features[: anchor_count - start]))
            if on_batch is not None:
                on_batch(index + 1, n_batches)
    return {
        spec.label: LayerResult(
            moments=accumulators[spec.label].moments(),
            anchor_features=torch.cat(anchors[spec.label]).cpu().numpy(),
            anchor_moment=_host_pair(anchor_moments.get(spec.label)),
        )
        for spec in layers
    }


def _forward(model: nn.Module, x: Any, start: int, stop: int, *, device: torch.device, dtype: str) -> Any:
    """The model's outputs on probe rows start..stop-1; its own failure there becomes a ModelError
    (one sample already ran in the pipeline's check, so what fails here is mostly the batch itself)."""
    batch = _inputs(x[start:stop], device=device, dtype=dtype)
    try:
        with signals.model_code(FORWARD):
            return model(batch)
    except FdlError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own error, explained
        signals.through(exc)  # not the model's error: a Ctrl-C met in C code its pass ran through
        if out_of_memory(exc):
            raise  # not the model's error: the pipeline says so, with what to do (`_memory_explained`)
        mixed = mixed_devices_error(exc, device)
        if mixed is not None:
            raise mixed from None
        first = first_line(exc)
        from fdl_cli.checkpoints import raised_at, shadowing_fix
        from fdl_cli.probes import embedding_tables, token_id_hint

        # the probe's first sample ran (the pipeline's check): a later row's token id out of an embedding's table
        token_ids = token_id_hint(np.asarray(x[start:stop]), first, embedding_tables(model), rows=start)
        raise ModelError(
            f"the model's forward pass failed on probe rows {start}..{stop - 1} (a batch of {stop - start})",
            got=f"{type(exc).__name__}: {first}{raised_at(exc)}",
            fix=token_ids if token_ids is not None else shadowing_fix(exc) or
            "the model's own error (got:) says what failed; a program exported or scripted for a fixed batch size "
            "needs --batch-size equal to it and a probe of whole batches (or re-export it with a dynamic batch "
            "dimension, torch.export.Dim); out of memory: lower --batch-size",
        ) from None


#: torch's words for an operation given tensors on two devices: on CUDA "Expected all tensors to be on the
#: same device, but found at least two devices, cuda:0 and cpu!" (or "..., but got mat1 is on cpu, ..."),
#: elsewhere "Tensor on device cpu is not on the expected device meta!"
_MIXED_DEVICES = ("to be on the same device", "found at least two devices", "is not on the expected device")


def mixed_devices_error(exc: BaseException, device: torch.device) -> ModelError | None:
    """The error for a forward pass that failed because the model made or held a tensor on another device
    than the one fdl moved it and the probe to (`torch.zeros(b, h)` in forward: the CPU), or None. It was
    reported as the probe not fitting the model, or as a batch that failed."""
    if not isinstance(exc, RuntimeError) or not any(words in str(exc) for words in _MIXED_DEVICES):
        return None
    return ModelError(
        f"the model's forward pass makes or meets a tensor on another device than {device}, where fdl put the "
        "model and the probe",
        got=f"{type(exc).__name__}: {first_line(exc)}",
        fix="make the model's new tensors on its input's device (torch.zeros(..., device=x.device)) and keep its "
        "constant tensors as buffers (self.register_buffer), which .to(device) moves"
        + ("; or run it on the CPU with --device cpu" if device.type != "cpu" else ""),
    )


def _anchor_part(features: torch.Tensor) -> torch.Tensor:
    """Anchor rows (b, ...) flattened to (b, p), in float32 or float64 (exact: only half types are upcast)."""
    flat = features.detach().reshape(features.shape[0], -1)
    return flat if flat.dtype in (torch.float32, torch.float64) else flat.to(torch.float32)


def _host_pair(pair: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if pair is None:
        return None
    return tuple(np.asarray(part.cpu().numpy() if hasattr(part, "cpu") else part, dtype=np.float64) for part in pair)  # type: ignore[return-value]


def anchor_features(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    x: Any,  # (n, ...) inputs: an array or a probes.RowReader (rows read per batch)
    *,
    device: torch.device,
    dtype: str = "float32",
    batch_size: int = 512,
    anchor_size: int = 4096,
    moments: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Only the anchor features (m, p) of each layer (for a checkpoint already in the store), in the
    dtype `extract` gives them, from forward passes of the batches `extract` runs (the last one whole).

    With a `moments` dict, it also receives each layer's anchor (Σφφᵀ, Σφ) float64 (LayerResult's
    anchor_moment), summed batch by batch as `extract` sums them, so that a resumed run's numbers
    equal a fresh run's to the bit.
    """
    n = int(x.shape[0])
    count = min(anchor_size, n)
    chunks: dict[str, list[torch.Tensor]] = {spec.label: [] for spec in layers}
    accumulators: dict[str, MomentAccumulator] = {}
    with torch.inference_mode(), hooked(model, layers) as captured:
        for start in range(0, count, batch_size):
            # The batches `extract` runs, the last one whole though the anchors end inside it: a forward pass of
            # fewer rows can round their features otherwise (another GEMM kernel), and the anchors and their
            # sums would then differ from a fresh run's (one batch of extra rows at most, per checkpoint).
            stop = min(start + batch_size, n)
            outputs = model_outputs(_forward(model, x, start, stop, device=device, dtype=dtype), stop - start)
            keep = min(count, stop) - start
            for spec in layers:
                features = captured.pop(spec.label)
                chunks[spec.label].append(_anchor_part(features[:keep]))
                if moments is not None:
                    accumulators.setdefault(spec.label, MomentAccumulator()).update(features[:keep], outputs[:keep])
    for label, accumulator in accumulators.items():
        moments[label] = _host_pair(accumulator.second_moment_so_far())  # type: ignore[index]
    return {label: torch.cat(parts).cpu().numpy() for label, parts in chunks.items()}


#: Elements of a parameter summed at a time by `_squared_norm` (8 MiB of float64 each).
_NORM_CHUNK = 1 << 20


def _host_values(piece: torch.Tensor) -> np.ndarray:
    """A chunk's values as a numpy array on the host: a view of a CPU tensor numpy can read (no copy),
    else widened to float64 on the host (bfloat16). An accelerator's chunk is copied to the host in its
    own dtype first: MPS has no float64 to convert it to there."""
    if piece.device.type != "cpu":
        piece = piece.cpu()
    if piece.dtype in (torch.float64, torch.float32, torch.float16):
        return piece.numpy()
    return piece.to(torch.float64).numpy()


def _squared_norm(flat: torch.Tensor, minus: torch.Tensor | None = None) -> float:
    """Σ (flat − minus)² in float64, the same digits whatever the thread count or the device.

    BLAS's dot (torch.dot, numpy.dot) splits its sum by thread, and torch's own sum by thread too, so
    a checkpoint's ‖θ‖² differed in the last digits between `--threads 1` and 2, a torchrun rank and
    one process, or a resumed run. Here each chunk of _NORM_CHUNK elements is widened to float64 (its
    squares and differences are computed in float64, exactly for float32 values' squares), summed by
    numpy's pairwise summation (one thread, a fixed order), and the chunk sums are added exactly
    rounded (math.fsum), in 8 MiB of memory at a time."""
    total = int(flat.numel())
    buffer = np.empty(min(total, _NORM_CHUNK), dtype=np.float64)
    parts = []
    for start in range(0, total, _NORM_CHUNK):
        values = _host_values(flat[start : start + _NORM_CHUNK])
        out = buffer[: values.shape[0]]
        if minus is not None:
            np.subtract(values, _host_values(minus[start : start + _NORM_CHUNK]), out=out, dtype=np.float64)
            values = out
        parts.append(float(np.add.reduce(np.square(values, out=out, dtype=np.float64))))
    return math.fsum(parts)


def parameter_vector_norms(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None,
    *, reference_squares: dict[str, float] | None = None,
) -> tuple[float, float | None]:
    """‖θ‖² and ‖θ − θ_ref‖ / ‖θ_ref‖ over the floating tensors (BatchNorm running statistics excluded),
    summed by `_squared_norm` (thread- and device-invariant digits). A quantized tensor (qint8: the file's
    own, which loading dequantized into the model) counts as its dequantized values. `reference_squares`:
    the reference's squared norm of each tensor by name, filled here when missing and read when there (the
    same `reference` at every call: the pipeline's `_reference_squares`), so that ‖θ_ref‖² is summed once a
    run, not once a checkpoint (a third of this function's work)."""
    squared, distance, ref_squared = [], [], []
    for name, saved in state.items():
        tensor = saved.dequantize() if saved.is_quantized else saved
        if not tensor.is_floating_point() or _is_running_stat(name):
            continue
        values = tensor.detach().reshape(-1)
        squared.append(_squared_norm(values))
        if reference is not None and name in reference and reference[name].shape == tensor.shape:
            held = reference[name]
            ref = (held.dequantize() if held.is_quantized else held).detach().reshape(-1)
            known = reference_squares.get(name) if reference_squares is not None else None
            if known is None:
                known = _squared_norm(ref)
                if reference_squares is not None:
                    reference_squares[name] = known
            ref_squared.append(known)
            distance.append(_squared_norm(values, ref))
    total = math.fsum(squared)
    if reference is None:
        return total, None
    if math.fsum(ref_squared) == 0.0:
        return total, None if math.fsum(distance) > 0 else 0.0
    return total, math.sqrt(math.fsum(distance) / math.fsum(ref_squared))


def _is_running_stat(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")

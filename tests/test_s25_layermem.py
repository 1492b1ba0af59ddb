"""The default layer's forward pass holds no tensor of the model's: the hooks on every nn.Linear kept each call's
input and output until the pass ended (GBs for a long-context LLM) to compare storages; they now keep weak
references (`extract.TensorMark`), and choose the same layer."""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from fdl_cli.extract import TensorMark, default_layer, linear_calls

WIDTH, LENGTH, DEPTH = 64, 32, 12


def _choice(model: nn.Module, sample: torch.Tensor) -> tuple[str, list[str]]:
    notes: list[str] = []
    spec = default_layer(model, sample=sample, note=notes.append, warn=notes.append)
    return spec.label, notes


class Stack(nn.Module):
    """DEPTH Linear(WIDTH, WIDTH) at each of LENGTH positions, then a head: each Linear's output is dropped by the
    forward as soon as the next layer has its relu; it records, per layer, whether anything still holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH))
        self.head = nn.Linear(WIDTH, 3)
        self.held: list[bool] = []  # per layer: its output tensor still alive once the forward dropped it
        self.storages: list[StorageWeakRef] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.held.clear()
        self.storages.clear()
        for layer in self.layers:
            y = layer(x)
            tensor = weakref.ref(y)
            self.storages.append(StorageWeakRef(y.untyped_storage()))
            x = torch.relu(y)
            del y
            self.held.append(tensor() is not None)
        alive = sum(not storage.expired() for storage in self.storages)
        self.storages_alive_at_end = alive
        return self.head(x)[:, -1]


def test_the_pass_holds_no_linear_output_the_forward_dropped() -> None:
    """Before: every output was alive after the forward dropped it (held by the hook) and all DEPTH storages
    still alive as the forward returned (DEPTH × LENGTH × WIDTH floats, times two with the inputs)."""
    torch.manual_seed(0)
    model = Stack().eval()
    label, notes = _choice(model, torch.randn(1, LENGTH, WIDTH))
    assert (label, notes) == ("head:input", [])
    assert model.held == [False] * DEPTH
    assert model.storages_alive_at_end == 0
    # the same in the inference-mode pass of `forward_one_shapes`
    with torch.inference_mode(), linear_calls(model) as calls:
        model(torch.randn(1, LENGTH, WIDTH))
    assert [call.name for call in calls] == [f"layers.{i}" for i in range(DEPTH)] + ["head"]
    assert (model.held, model.storages_alive_at_end) == ([False] * DEPTH, 0)


def test_a_freed_output_whose_memory_the_outputs_take_is_no_match() -> None:
    """A stale address: `first`'s output is freed, and the outputs, made from `second`'s, are given its memory
    (the allocator reuses it). Its storage's weak reference has expired, so `first` is not taken as the head;
    the last Linear to run is, as when the held tensor kept its memory from being reused."""
    # (1, 160000, 64) float32, 41 MB: above glibc's largest mmap threshold (32 MiB), each such block is mapped
    # on its own and unmapped when freed, and the next mapping of its size takes the same addresses
    length, width = 160_000, 64

    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(1, width), nn.Linear(1, width)
            self.addresses: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.first(x)
            z = self.second(-x)  # not x: a head on the same input as the outputs' source is taken as it
            self.addresses = [y.data_ptr()]
            del y
            out = z * 2
            self.addresses.append(out.data_ptr())
            return out

    torch.manual_seed(0)
    for _ in range(3):
        model = Reuse().eval()
        assert _choice(model, torch.randn(1, length, 1)) == ("second:input", [])
        first, outputs = model.addresses
        assert first == outputs, "the allocator did not reuse the freed block: the test needs it to"


def test_an_expired_storage_at_the_same_address_is_no_match() -> None:
    """The same without the allocator: two storages over one buffer, the first freed before the second is made."""
    buffer = bytearray(64)
    tensor = torch.frombuffer(buffer, dtype=torch.float32)
    mark = TensorMark.of(tensor)
    assert mark.is_memory_of(tensor) and mark.is_memory_of(tensor[2:].view(2, 7))
    assert not mark.is_memory_of(tensor.double()) and not mark.is_memory_of(tensor.clone())
    del tensor
    again = torch.frombuffer(buffer, dtype=torch.float32)
    assert again.untyped_storage().data_ptr() == mark.data_ptr
    assert not mark.is_memory_of(again)


class TwoHeads(nn.Module):
    """h feeds `head` (the outputs) and `aux` (run last); h is dropped before the forward returns."""

    def __init__(self, *, fresh: bool) -> None:
        super().__init__()
        self.body, self.head, self.aux = nn.Linear(4, 4096), nn.Linear(4096, 3), nn.Linear(4096, 3)
        self.fresh = fresh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        logits = self.head(h)
        if self.fresh:  # aux runs on another tensor of h's size, made once h is freed
            del h
            h = torch.tanh(x.repeat(1, 1024))
        self.aux(h)
        return logits


def test_two_heads_on_one_input_freed_by_the_end_are_told_as_they_ran() -> None:
    """`head` gives the outputs and `aux`, run last, takes the same input: the same features, so the last one,
    without a note (as before). Its memory is freed by the end of the pass: it is told as the calls ran. An input
    of aux made after h was freed (its memory, maybe) is another: head's input, with the note."""
    torch.manual_seed(0)
    assert _choice(TwoHeads(fresh=False).eval(), torch.randn(1, 4)) == ("aux:input", [])
    label, notes = _choice(TwoHeads(fresh=True).eval(), torch.randn(1, 4))
    assert label == "head:input"
    assert notes == ["the model's outputs are the output of nn.Linear 'head', not of the last one to run, 'aux': "
                     "the features are head:input (--layer NAME picks another)"]


class Detached(nn.Module):
    """y = wide(x); y += head(body(x)); return y.detach(): the Linear output itself is dropped on return, its
    version counter shared with the detached outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.wide, self.body, self.head = nn.Linear(4, 3), nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.wide(x)
        y += self.head(torch.relu(self.body(x)))
        return y.detach()


def test_an_output_written_over_then_detached_is_still_told_written_over() -> None:
    torch.manual_seed(0)
    label, notes = _choice(Detached().eval(), torch.randn(1, 4))
    assert label == "head:input"
    assert len(notes) == 1 and "output of nn.Linear 'wide' written over in place" in notes[0]


class Copied(nn.Module):
    """Two towers with heads; the outputs are a float64 copy of head_a's: no Linear's memory."""

    def __init__(self) -> None:
        super().__init__()
        self.tower_a, self.head_a = nn.Linear(4, 8), nn.Linear(8, 3)
        self.tower_b, self.head_b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.head_a(self.tower_a(x))
        b = self.head_b(self.tower_b(x))
        return a.to(torch.float64), b


def test_a_copy_in_another_dtype_is_no_linear_output() -> None:
    """No Linear's memory, but computed from head_a's output (the autograd graph of a second pass says so): head_a,
    where the last Linear to run, head_b, was taken before (tests/test_s32_layer.py)."""
    torch.manual_seed(0)
    label, notes = _choice(Copied().eval(), torch.randn(1, 4))
    assert label == "head_a:input"
    assert len(notes) == 1 and "computed from the output of nn.Linear 'head_a', not of the last one to run" in notes[0]


def test_views_of_an_earlier_head_and_a_linear_called_twice() -> None:
    """The outputs a view of head_a's output (reshape, slice) returned first: head_a, as before; a Linear called
    twice in the pass appears twice."""

    class Views(Copied):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            a = self.head_a(self.tower_a(self.tower_a(x)[:, :4]))
            b = self.head_b(self.tower_b(x))
            return a.reshape(1, 3, 1)[:, 1:], b

    torch.manual_seed(0)
    model = Views().eval()
    label, notes = _choice(model, torch.randn(1, 4))
    assert label == "head_a:input" and "output of nn.Linear 'head_a', not of the last one to run" in notes[0]
    with torch.no_grad(), linear_calls(model) as calls:
        model(torch.from_numpy(np.ones((1, 4), dtype=np.float32)))
    assert [call.name for call in calls] == ["tower_a", "tower_a", "head_a", "tower_b", "head_b"]

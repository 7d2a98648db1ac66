"""The bytes a twin's state is stored as: a pickle of plain values only, which loads without
running any code, and ten times faster than torch.save's zip container for a state this small.

A checkpoint is MAGIC followed by a pickle (protocol 5) of dicts, lists, tuples, strings, bytes,
numbers, booleans and None. Tensors, numpy arrays and numpy scalars go in as one-key dicts
{TAG: [kind, dtype, shape, raw bytes, ...]}, and an OrderedDict (a module's state_dict) as
{TAG: ["odict", items, metadata]}; `loads` rebuilds them. Its unpickler refuses every global, so
a blob can build nothing but those plain values. A state holding anything else is written as
torch.save wrote every checkpoint before (a zip, "PK"), and `loads` reads those as it always
did, with torch.load.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

MAGIC = b"TANDEM\x00\x01"
TAG = "\x00"  # the key of a one-key dict that stands for a tensor, an array or an OrderedDict
# torch dtypes stored by their numpy equivalents (the ones a twin's state holds, and more)
TORCH_TO_NUMPY = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
NUMPY_TO_TORCH = {np.dtype(v).str: k for k, v in TORCH_TO_NUMPY.items()}
TORCH_DTYPES = {str(k): k for k in TORCH_TO_NUMPY}
TORCH_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
PLAIN = frozenset((str, bytes, int, float, bool, type(None)))  # what pickle builds by itself
SHALLOW = PLAIN | {list, tuple}


class Unsupported(TypeError):
    """A value this format does not store (the state is then written by torch.save)."""


def dumps(state: Any) -> bytes:
    """The checkpoint bytes of a state: MAGIC and a pickle of plain values, or torch.save's zip
    where the state holds a value the plain format does not store."""
    buf = io.BytesIO()
    try:
        buf.write(MAGIC)
        _PlainPickler(buf, protocol=5).dump(_encode(state))
    except Unsupported:
        buf = io.BytesIO()
        torch.save(state, buf)
    return buf.getvalue()


def loads(blob: bytes) -> Any:
    """The state of checkpoint bytes written by `dumps`, or by torch.save (every checkpoint
    stored before this format)."""
    if bytes(blob[: len(MAGIC)]) == MAGIC:
        return _decode(_PlainUnpickler(io.BytesIO(blob[len(MAGIC) :])).load())
    return torch.load(io.BytesIO(blob), weights_only=False)


class _PlainPickler(pickle.Pickler):
    """Pickles plain values only. Pickle calls `reducer_override` for every value but None,
    booleans and exact ints, floats, bytes, strings, dicts, sets, lists and tuples: all that
    would name a class or a function in the pickle is refused here."""

    def reducer_override(self, obj: Any) -> Any:
        raise Unsupported(type(obj).__name__)


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain values only: any global (a class, a function) is refused, so loading can
    call nothing."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a checkpoint names no code ({module}.{name})")


def _encode(x: Any) -> Any:
    """x with its tensors, arrays, numpy scalars and OrderedDicts as tagged dicts; lists and
    tuples of plain values (the bulk of a state) as they are: the pickler checks them."""
    kind = type(x)
    if kind in PLAIN:  # most values of a state: nothing to do
        return x
    if kind is dict or kind is OrderedDict:
        if TAG in x:
            raise Unsupported("a dict with the tag key")
        items = {k: _encode(v) for k, v in x.items()}
        if kind is dict:
            return items
        metadata = getattr(x, "_metadata", None)
        return {TAG: ["odict", items, None if metadata is None else _encode(metadata)]}
    if kind is list or kind is tuple:
        if set(map(type, x)) <= SHALLOW:
            return x
        return kind(_encode(v) for v in x)
    if kind is torch.Tensor:
        return _encode_tensor(x)
    if kind is np.ndarray and x.dtype.kind in "biufc":
        return {TAG: ["ndarray", x.dtype.str, list(x.shape), np.ascontiguousarray(x).tobytes()]}
    if isinstance(x, np.generic) and x.dtype.kind in "biufc":
        return {TAG: ["scalar", x.dtype.str, x.tobytes()]}
    return x  # a plain value, or one the pickler refuses


def _encode_tensor(t: torch.Tensor) -> dict:
    name = TORCH_NAMES.get(t.dtype)
    if name is None or t.layout is not torch.strided or not t.is_cpu:
        raise Unsupported(f"tensor {t.dtype} {t.layout} {t.device}")
    grad = t.requires_grad
    data = (t.detach() if grad else t).contiguous().numpy().tobytes()
    return {TAG: ["tensor", name, list(t.shape), data, grad]}


def _decode(x: Any) -> Any:
    kind = type(x)
    if kind is list or kind is tuple:
        if set(map(type, x)) <= SHALLOW:  # no tagged dict in there (see _encode)
            return x
        return kind(_decode(v) for v in x)
    if kind is not dict:
        return x
    tagged = x.get(TAG) if len(x) == 1 else None
    if tagged is None:
        return {k: _decode(v) for k, v in x.items()}
    what = tagged[0]
    if what == "tensor":
        _, dtype, shape, data, requires_grad = tagged
        dtype = TORCH_DTYPES[dtype]
        array = np.frombuffer(data, dtype=TORCH_TO_NUMPY[dtype]).reshape(shape).copy()
        return torch.from_numpy(array).requires_grad_(requires_grad)
    if what == "ndarray":
        _, dtype, shape, data = tagged
        return np.frombuffer(data, dtype=_numeric(dtype)).reshape(shape).copy()
    if what == "scalar":
        _, dtype, data = tagged
        return np.frombuffer(data, dtype=_numeric(dtype))[0]
    if what == "odict":
        _, items, metadata = tagged
        out = OrderedDict((k, _decode(v)) for k, v in items.items())
        if metadata is not None:
            out._metadata = _decode(metadata)  # type: ignore[attr-defined]
        return out
    raise ValueError(f"a checkpoint holds an unknown kind of value {what!r}")


def _numeric(dtype: str) -> np.dtype:
    out = np.dtype(dtype)
    if out.kind not in "biufc":
        raise ValueError(f"a checkpoint holds an array of {dtype!r}")
    return out

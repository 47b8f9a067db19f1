"""The memory range of a tensor or array, without importing torch or cupy.

    buffer_range(torch_tensor)            -> (data_ptr(), bytes the tensor spans)
    buffer_range(torch_tensor, whole_storage=True)
                                          -> its untyped storage: (data_ptr(), nbytes())
    buffer_range(cupy_array)              -> (arr.data.ptr, bytes it spans)
    buffer_range(obj_with___cuda_array_interface__)
    buffer_range((ptr, nbytes))           -> as given

"Bytes it spans" is the range from the first to one past the last element the strides reach:
numel * element_size for a contiguous tensor; more (the gaps) for a strided view. A tensor
with no elements spans 0 bytes, which registration refuses.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence, Tuple

__all__ = ["buffer_range", "torch_range", "cupy_range", "cuda_array_interface_range"]


def _span(shape: Sequence[Any], strides_elements: Sequence[Any], itemsize: int) -> int:
    """Bytes from the first element to one past the last, for non-negative strides."""
    if any(int(n) == 0 for n in shape):
        return 0
    last = sum((int(n) - 1) * int(s) for n, s in zip(shape, strides_elements))
    return (last + 1) * itemsize


def _module_of(obj: Any) -> str:
    return type(obj).__module__ or ""


def torch_range(tensor: Any, whole_storage: bool = False) -> Tuple[int, int]:
    """(ptr, nbytes) of a torch.Tensor: the bytes its elements span, or with whole_storage
    the untyped storage behind it (what the caching allocator handed out for it)."""
    if whole_storage:
        storage = tensor.untyped_storage()
        return int(storage.data_ptr()), int(storage.nbytes())
    itemsize = int(tensor.element_size())
    if tensor.is_contiguous():
        return int(tensor.data_ptr()), int(tensor.numel()) * itemsize
    strides = tensor.stride()
    if any(s < 0 for s in strides):
        raise ValueError("tensors with negative strides are not supported; register the storage instead")
    return int(tensor.data_ptr()), _span(tuple(tensor.shape), strides, itemsize)


def cuda_array_interface_range(obj: Any) -> Tuple[int, int]:
    """(ptr, nbytes) from `__cuda_array_interface__` (CuPy, Numba, PyTorch, JAX...)."""
    cai = obj.__cuda_array_interface__
    ptr = int(cai["data"][0])
    shape = tuple(cai["shape"])
    typestr = cai["typestr"]
    itemsize = int(typestr[2:])
    strides = cai.get("strides")
    if strides is None:
        count = 1
        for n in shape:
            count *= int(n)
        return ptr, count * itemsize
    if any(int(s) < 0 for s in strides):
        raise ValueError("arrays with negative strides are not supported")
    # Strides are in bytes here: the last element starts at span - 1 and is itemsize long.
    span = _span(shape, strides, 1)
    return ptr, (span - 1 + itemsize) if span else 0


def cupy_range(array: Any) -> Tuple[int, int]:
    """(ptr, nbytes) of a cupy.ndarray."""
    if array.flags.c_contiguous or array.flags.f_contiguous:
        return int(array.data.ptr), int(array.nbytes)
    return cuda_array_interface_range(array)


def buffer_range(obj: Any, whole_storage: bool = False) -> Tuple[int, int]:
    """(ptr, nbytes) of a torch tensor, a CuPy array, an object with __cuda_array_interface__,
    or a (ptr, nbytes) pair."""
    if isinstance(obj, tuple) and len(obj) == 2:
        # operator.index, not int(): a float size is a mistake, not something to round.
        return operator.index(obj[0]), operator.index(obj[1])
    module = _module_of(obj)
    if module.startswith("torch") and hasattr(obj, "data_ptr"):
        return torch_range(obj, whole_storage=whole_storage)
    if module.startswith("cupy") and hasattr(obj, "data") and hasattr(obj, "nbytes"):
        return cupy_range(obj)
    if hasattr(obj, "__cuda_array_interface__"):
        return cuda_array_interface_range(obj)
    if hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):
        return torch_range(obj, whole_storage=whole_storage)
    raise TypeError(
        "cannot tell the memory range of %r: pass a torch tensor, a CuPy array, an object with "
        "__cuda_array_interface__, or (ptr, nbytes)" % type(obj).__name__
    )

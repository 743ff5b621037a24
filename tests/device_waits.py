"""What would make a CUDA host wait, found on the CPU: ops applied to tensors a CUDA run keeps on the GPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

WAITING_OPS = {
    "_local_scalar_dense",  # float(t), t.item(), bool(t)
    "is_nonzero",
    "equal",
    "nonzero",  # outputs sized by values, as are the ones below
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "repeat_interleave",
}


class DeviceWaits(TorchDispatchMode):
    """Ops that make a CUDA host wait when applied to a tensor computed from ``roots`` (the model, the batch)
    or drawn from ``device_generator``: a Python number read out of one, or an output sized by its values
    (``nonzero``, boolean-mask indexing). Tensors built from host copies start clean, as do those a factory
    makes (a flag created on the device is not seen: ``set_sync_debug_mode`` on a GPU counts every wait).

    What was computed from the roots is followed by storage, not by tensor object: inside ``vmap`` this mode
    sees the unwrapped tensors, and what leaves the transform is a view of them. The storages are held until
    the mode ends, so a freed one's address never passes a host tensor off as a device one."""

    def __init__(self, roots: list[Tensor], device_generator: torch.Generator) -> None:
        super().__init__()
        self.device_generator = device_generator
        self.on_device: dict[int, torch.UntypedStorage] = {}
        for root in roots:
            self._mark(root)
        self.waits: list[str] = []

    def _mark(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr():
            self.on_device[storage.data_ptr()] = storage

    def _computed_on_device(self, value: Any) -> bool:
        if value is self.device_generator:
            return True
        return isinstance(value, Tensor) and value.untyped_storage().data_ptr() in self.on_device

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        from_device = any(self._computed_on_device(value) for value in tree_flatten((args, kwargs))[0])
        name = func.overloadpacket.__name__
        masked = name in ("index", "index_put_", "index_put") and any(
            isinstance(index, Tensor) and index.dtype == torch.bool for index in tree_flatten(args[1])[0]
        )
        if from_device and (name in WAITING_OPS or masked):
            self.waits.append(name)
        out = func(*args, **kwargs)
        if from_device:
            for value in tree_flatten(out)[0]:
                if isinstance(value, Tensor):
                    self._mark(value)
        return out

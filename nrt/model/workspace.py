"""Named tensors kept between calls, so that a sampler step reuses memory instead of allocating it afresh."""

from __future__ import annotations

import torch


class Workspace:
    """`get(name, shape)` returns the same storage for as long as the name's shape, dtype and device stay the same.

    A workspace belongs to one caller at a time: two threads sampling through one workspace would share buffers.
    """

    def __init__(self):
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        shape, device = torch.Size(shape), torch.device(device)
        tensor = self._tensors.get(name)
        if (tensor is None or tensor.shape != shape or tensor.dtype != dtype or tensor.device.type != device.type
                or (len(shape) == 4 and not tensor.is_contiguous(memory_format=memory_format))):
            tensor = self._tensors[name] = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        return tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

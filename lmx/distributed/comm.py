"""The collective of the row-parallel layers: a sum over the tensor-parallel ranks (the default process group)."""

from __future__ import annotations

import torch


def all_reduce(x: torch.Tensor, size: int) -> torch.Tensor:
    """The sum of ``x`` over the ``size`` ranks (``x`` itself when ``size`` is 1).

    On the CPU (Gloo) a bf16/fp16 partial sum is reduced in fp32 and rounded once, as one rank's GEMM would.
    """
    if size == 1:
        return x
    import torch.distributed as dist

    if x.device.type == "cpu" and x.dtype != torch.float32:
        wide = x.float()
        dist.all_reduce(wide)
        return wide.to(x.dtype)
    x = x.contiguous()
    dist.all_reduce(x)
    return x

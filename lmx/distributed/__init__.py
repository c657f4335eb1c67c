"""Tensor parallelism on ``torch.distributed`` (issue 14): one model over several processes, the same tokens.

- ``shard.TPShard``: which heads and MLP rows a rank holds (Megatron-style; no torch.distributed needed).
- ``comm.all_reduce``: the one collective of a row-parallel layer.
- ``runtime``: rank 0's side (launching the workers with torch.multiprocessing, or joining a ``torchrun`` job;
  broadcasting each step's batch; watching the workers) and the workers' loop.

``EngineConfig(tp=N)`` turns it on; rank 0 runs the scheduler and sampling, the other ranks only the model.
"""

from __future__ import annotations

from .comm import all_reduce
from .shard import TPShard

__all__ = ["TPShard", "all_reduce"]

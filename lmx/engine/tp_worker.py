"""A tensor-parallel worker's engine (ranks > 0): its shard of the model and its heads' KV cache, run on the
batches rank 0 broadcasts (``lmx.distributed.runtime.serve`` drives it). No scheduler, no sampler, no LM head."""

from __future__ import annotations

import os
import sys

import torch

from lmx.distributed import runtime
from lmx.loaders import open_checkpoint

from .llm_engine import free_memory, load_model
from .model_runner import ModelRunner


class WorkerEngine:
    def __init__(self, rank: int, size: int, device: torch.device) -> None:
        self.rank, self.size, self.device = rank, size, device
        self.model = self.runner = self.config = None

    def init(self, spec: dict) -> int:
        """Load this rank's shard of ``spec['model']``; the bytes free for its KV cache."""
        self.config = spec["config"]
        if spec.get("num_threads"):
            torch.set_num_threads(spec["num_threads"])
        self.dtype = getattr(torch, spec["dtype"])
        checkpoint = open_checkpoint(spec["model"])
        self.model = load_model(checkpoint, self.config, self.device, self.dtype, tp_rank=self.rank,
                                tp_size=self.size, lm_head=False)  # fmt: skip
        on_host = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if runtime.launched_by_torchrun() else spec["host_ranks"]
        return free_memory(self.device, on_host)

    def alloc(self, num_blocks: int) -> int:
        """Allocate this rank's KV cache; its bytes."""
        if self.model is None:
            raise RuntimeError("ALLOC before INIT")
        self.runner = ModelRunner(self.model, num_blocks=num_blocks, block_size=self.config.block_size,
                                  block_tables=None, device=self.device, dtype=self.dtype,
                                  kv_cache_dtype=self.config.kv_cache_dtype)  # fmt: skip
        return self.runner.kv_cache_bytes

    def step(self, input_ids: torch.Tensor, ctx) -> None:
        if self.runner is None:
            raise RuntimeError(f"tp rank {self.rank}: a step without an engine")
        with torch.inference_mode():
            self.runner.model(input_ids, ctx, self.runner.kv_caches)

    def close(self) -> None:
        self.model = self.runner = None


def spawned_main(rank: int, size: int, port: int, backend: str, timeout: float, parent: int, kind: str) -> None:
    """A worker started by rank 0 with torch.multiprocessing."""
    device = runtime.join_spawned(rank, size, port, backend, timeout, parent, kind)
    runtime.serve(rank, size, device, WorkerEngine(rank, size, device))
    runtime.leave()


def torchrun_main(tp: int, device_name: str) -> None:
    """Rank > 0 of a torchrun job: serve rank 0's engines, then end the process (``SystemExit(0)``)."""
    rank, device = runtime.join_torchrun(tp, device_name)
    runtime.serve(rank, tp, device, WorkerEngine(rank, tp, device))
    runtime.leave()
    sys.exit(0)

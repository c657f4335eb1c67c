"""The only place that builds device tensors: the KV cache, each step's metadata, and the model call.

``run(chunks)`` packs the scheduled chunks into one varlen batch, runs the model once, and returns fp32 logits for
the chunks that end a generation request's known tokens plus the perplexity terms of the perplexity chunks.
"""

from __future__ import annotations

import dataclasses

import torch

from lmx.models import ForwardContext, LlamaForCausalLM
from lmx.models.layers import LayerCache, decode_step

from .sequence import ScheduledChunk, Sequence

# Rows of logits materialised at once when scoring perplexity: [PPL_LOGITS_ROWS, vocab] fp32.
PPL_LOGITS_ROWS = 512

# EngineConfig.kv_cache_dtype -> the cache tensors' dtype ("auto": the compute dtype).
QUANTIZED_KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
# The per-head scale of fp8 caches (x is stored as e4m3(x / scale)): 1.0, vLLM's default without calibration.
# README "Quantized KV cache" has the measurements behind the choice.
FP8_KV_SCALE = 1.0


def kv_cache_torch_dtype(kv_cache_dtype: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the cache tensors for ``EngineConfig.kv_cache_dtype`` and the compute ``dtype``."""
    return QUANTIZED_KV_CACHE_DTYPES.get(kv_cache_dtype, dtype)


@dataclasses.dataclass
class StepOutput:
    sample_logits: torch.Tensor | None  # [N, vocab] fp32, one row per sequence in sample_seqs
    sample_seqs: list[Sequence]
    nll: dict[int, tuple[float, int]]  # seq_id -> (sum of token NLLs, tokens scored) for perplexity chunks
    # seq_id -> per-token (logprob, top-k) of the chunk, for perplexity sequences that asked for prompt_logprobs
    token_logprobs: dict[int, list[tuple[float, dict[int, float]]]] = dataclasses.field(default_factory=dict)


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        *,
        num_blocks: int,
        block_size: int,
        block_tables,  # callable seq_id -> list[int], the block manager's
        device: torch.device,
        dtype: torch.dtype,
        kv_cache_dtype: str = "auto",
    ) -> None:
        cfg = model.cfg
        self.model = model
        self.cfg = cfg
        self.rope = cfg.rope
        self.block_size = block_size
        self.block_tables = block_tables
        self.device = device
        # Tensor parallelism (rank 0): the lmx.distributed runtime that broadcasts each step to the workers.
        self.tp = None
        self.tp_token = 0
        # One allocation for all layers: [layers, 2 (k, v), num_blocks, block_size, Hkv, D]. torch.empty: pages
        # are committed by the OS only when a block is first written. Hkv: this rank's KV heads (model.local_cfg).
        local = model.local_cfg
        self.kv_cache_dtype = kv_cache_torch_dtype(kv_cache_dtype, dtype)
        self.kv_cache = torch.empty(
            cfg.num_layers, 2, num_blocks, block_size, local.num_kv_heads, cfg.head_dim, dtype=self.kv_cache_dtype,
            device=device,
        )  # fmt: skip
        # Quantized caches: int8 (scale, zero) per slot and kv head, written with the rows (torch.empty: a slot's
        # scales are read only after its row is written); fp8 per-head scales, fixed.
        self.kv_scales = None
        if self.kv_cache_dtype == torch.int8:
            self.kv_scales = torch.empty(
                cfg.num_layers, 2, num_blocks, block_size, local.num_kv_heads, 2, dtype=torch.float32, device=device
            )
        elif self.kv_cache_dtype == torch.float8_e4m3fn:
            self.kv_scales = torch.full((cfg.num_layers, 2, local.num_kv_heads), FP8_KV_SCALE, device=device)
        self.kv_caches = [
            LayerCache(
                self.kv_cache[i, 0], self.kv_cache[i, 1],
                *((None, None) if self.kv_scales is None else (self.kv_scales[i, 0], self.kv_scales[i, 1])),
            )
            for i in range(cfg.num_layers)
        ]  # fmt: skip

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the KV cache tensors and their scales."""
        scales = 0 if self.kv_scales is None else self.kv_scales.numel() * self.kv_scales.element_size()
        return self.kv_cache.numel() * self.kv_cache.element_size() + scales

    @staticmethod
    def cache_bytes_per_block(cfg, block_size: int, dtype: torch.dtype, kv_cache_dtype: str = "auto") -> int:
        """Bytes one KV block takes over all layers: K and V rows, plus int8's (scale, zero) per slot and head."""
        cache_dtype = kv_cache_torch_dtype(kv_cache_dtype, dtype)
        elem = torch.empty((), dtype=cache_dtype).element_size()
        row = cfg.head_dim * elem + (2 * 4 if cache_dtype == torch.int8 else 0)
        return cfg.num_layers * 2 * block_size * cfg.num_kv_heads * row

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk]) -> StepOutput:
        input_ids, ctx = self.prepare(chunks)
        with decode_step(all(c.start >= c.seq.num_prompt_tokens for c in chunks)):
            if self.tp is None:
                hidden = self.model(input_ids, ctx, self.kv_caches)  # [T, hidden]
            else:
                with self.tp.guarded(self.tp_token):  # the workers run the same step on their heads
                    self.tp.send_step(input_ids, ctx)
                    hidden = self.model(input_ids, ctx, self.kv_caches)
        ends = ctx.cu_seqlens_q[1:].tolist()
        sample_rows = [ends[i] - 1 for i, c in enumerate(chunks) if c.needs_sample]
        sample_seqs = [c.seq for c in chunks if c.needs_sample]
        logits = None
        if sample_rows:
            logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=hidden.device)])
        out = StepOutput(logits, sample_seqs, {})
        for i, chunk in enumerate(chunks):
            if chunk.seq.perplexity:
                start = ends[i] - chunk.num_tokens
                self._score_chunk(hidden[start : ends[i]], chunk, out)
        return out

    def _score_chunk(self, hidden: torch.Tensor, chunk: ScheduledChunk, out: StepOutput) -> None:
        """Log-likelihood of each token of the chunk predicting the next one, in fp32, ``PPL_LOGITS_ROWS`` rows of
        logits at a time; per-token logprobs (and the top k) too when the sequence asked for prompt_logprobs."""
        seq, start = chunk.seq, chunk.start
        targets = seq.token_ids[start + 1 : start + chunk.num_tokens + 1]  # the last token has no target
        top_k = seq.prompt_logprobs
        per_token: list[tuple[float, dict[int, float]]] = []
        total = 0.0
        for lo in range(0, len(targets), PPL_LOGITS_ROWS):
            hi = min(lo + PPL_LOGITS_ROWS, len(targets))
            logprobs = torch.log_softmax(self.model.compute_logits(hidden[lo:hi]).float(), dim=-1)
            target = torch.tensor(targets[lo:hi], dtype=torch.long, device=logprobs.device)
            chosen = logprobs.gather(1, target[:, None])[:, 0]
            total -= float(chosen.double().sum())
            if top_k is None:
                continue
            tops = [{}] * (hi - lo)
            if top_k > 0:
                values, ids = logprobs.topk(top_k, dim=-1)
                tops = [dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
            per_token.extend(zip(chosen.tolist(), tops))
        out.nll[seq.seq_id] = (total, len(targets))
        if top_k is not None:
            out.token_logprobs[seq.seq_id] = per_token

    def prepare(self, chunks: list[ScheduledChunk]) -> tuple[torch.Tensor, ForwardContext]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        rope_cu, rope_lens = [0], []
        seq_lens, cu_q = [], [0]
        tables = []
        bs = self.block_size
        for chunk in chunks:
            seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
            end = start + n
            table = self.block_tables(seq.seq_id)
            tables.append(table)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            if n == 1:
                slots.append(table[start // bs] * bs + start % bs)
            else:
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            for seg_len, seg_rope_len in self.rope.rope_seq_len_runs(seq.num_prompt_tokens, start, end):
                rope_cu.append(rope_cu[-1] + seg_len)
                rope_lens.append(seg_rope_len)
            seq_lens.append(end)
            cu_q.append(cu_q[-1] + n)
        max_blocks = max(len(t) for t in tables)
        padded = [t + [0] * (max_blocks - len(t)) for t in tables]
        dev = self.device
        ctx = ForwardContext(
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            rope_cu_seqlens=torch.tensor(rope_cu, dtype=torch.int32, device=dev),
            rope_seq_lens=torch.tensor(rope_lens, dtype=torch.int64, device=dev),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32, device=dev),
        )
        return torch.tensor(input_ids, dtype=torch.int64, device=dev), ctx

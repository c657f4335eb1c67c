"""The engine loop: validate requests, then ``schedule -> run -> sample -> postprocess`` until they finish."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from collections.abc import Sequence as Seq

import torch

from lmx.loaders import Checkpoint, load_tokenizer, open_checkpoint
from lmx.models import build_model
from lmx.models.layers import cpu_has_native_bf16

from .block_manager import BlockManager
from .config import EngineConfig, GenerationConfig
from .detokenizer import Detokenizer
from .errors import CONTEXT_LENGTH_EXCEEDED, RequestError, RequestTypeError
from .model_runner import ModelRunner
from .sampler import Sampler
from .scheduler import EngineBusyError, Scheduler
from .sequence import Sequence

_log = logging.getLogger("lmx.engine")


class LLMEngine:
    def __init__(self, model: str | os.PathLike, engine_config: EngineConfig | None = None) -> None:
        config = EngineConfig() if engine_config is None else engine_config
        if not isinstance(config, EngineConfig):
            raise TypeError(f"engine_config: expected an EngineConfig, got {type(config).__name__}")
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.checkpoint: Checkpoint = open_checkpoint(model)
        self.device = _resolve_device(config.device)
        self.dtype = _resolve_dtype(config.dtype, self.checkpoint.dtype, self.device)
        self.model = self._load_model()
        self.model_config = self.model.cfg
        rope = self.model_config.rope
        self.session_len = config.session_len or rope.context_len
        num_blocks = config.num_blocks or self._default_num_blocks()
        self.block_manager = BlockManager(
            num_blocks, config.block_size, rope=rope, enable_prefix_caching=config.enable_prefix_caching
        )
        self.runner = ModelRunner(
            self.model, num_blocks=num_blocks, block_size=config.block_size,
            block_tables=self.block_manager.block_table, device=self.device, dtype=self.dtype,
            kv_cache_dtype=config.kv_cache_dtype,
        )  # fmt: skip
        _log.info(
            "KV cache: %d blocks of %d tokens = %d tokens, %s, %.1f MiB (%d bytes per block, scales included)",
            num_blocks, config.block_size, num_blocks * config.block_size, self.kv_cache_stats()["kv_cache_dtype"],
            self.runner.kv_cache_bytes / 2**20, self.runner.kv_cache_bytes // num_blocks,
        )  # fmt: skip
        self.scheduler = Scheduler(
            self.block_manager, max_batch_size=config.max_batch_size,
            max_prefill_token_num=config.max_prefill_token_num, max_queued_requests=config.max_queued_requests,
        )  # fmt: skip
        self.sampler = Sampler()
        self.eos_token_ids = list(self.checkpoint.eos_token_ids)
        self._tokenizer = None
        self._tokenizer_loaded = False
        # The output text of each generation request (when the model has a tokenizer); lives as long as its seq.
        self._detokenizers: weakref.WeakKeyDictionary[Sequence, Detokenizer] = weakref.WeakKeyDictionary()

    # -- set-up --------------------------------------------------------------------------------------------------

    def _load_model(self):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # parameters are created directly in the target dtype
        try:
            with torch.device(self.device):
                model = build_model(
                    self.checkpoint.config,
                    rope_scaling_factor=self.config.rope_scaling_factor,
                    rope_scaling=self.config.rope_scaling,
                )
        finally:
            torch.set_default_dtype(previous)
        model.load_weights(self.checkpoint.weights())
        return model.eval().requires_grad_(False)

    def kv_cache_stats(self) -> dict:
        """The KV cache's format and size: dtype (``auto`` resolved), blocks, tokens it holds, bytes."""
        cache_dtype = str(self.runner.kv_cache_dtype).removeprefix("torch.")
        return {
            "kv_cache_dtype": cache_dtype, "num_blocks": self.block_manager.num_blocks,
            "block_size": self.config.block_size, "capacity_tokens": self.block_manager.capacity_tokens,
            "kv_cache_bytes": self.runner.kv_cache_bytes,
        }  # fmt: skip

    def _default_num_blocks(self) -> int:
        """``cache_max_entry_count`` of free memory, capped at what ``max_batch_size`` full sessions need."""
        per_block = ModelRunner.cache_bytes_per_block(
            self.model_config, self.config.block_size, self.dtype, self.config.kv_cache_dtype
        )
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            free = _available_host_memory()
        by_memory = int(free * self.config.cache_max_entry_count) // per_block
        needed = self.config.max_batch_size * -(-self.session_len // self.config.block_size)
        num_blocks = min(by_memory, needed)
        if num_blocks < 1:
            raise ValueError(
                f"cache_max_entry_count: {self.config.cache_max_entry_count} of {free} free bytes holds no KV block "
                f"of {per_block} bytes; raise it or set num_blocks"
            )
        return num_blocks

    @property
    def tokenizer(self):
        if not self._tokenizer_loaded:
            self._tokenizer = load_tokenizer(self.checkpoint)
            self._tokenizer_loaded = True
        return self._tokenizer

    # -- requests ------------------------------------------------------------------------------------------------

    @property
    def max_sequence_len(self) -> int:
        """The longest sequence a request may reach: ``session_len``, or less when the whole cache holds less."""
        return min(self.session_len, self.block_manager.capacity_tokens)

    def validate_prompt(self, prompt_ids, *, name: str = "prompt", perplexity: bool = False) -> list[int]:
        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.flatten().tolist()
        if not isinstance(prompt_ids, (list, tuple)):
            raise RequestTypeError(name, f"{name}: expected a list of token ids, got {type(prompt_ids).__name__}")
        ids = list(prompt_ids)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise RequestTypeError(name, f"{name}: expected a list of int token ids, got {ids[:8]!r}...")
        minimum = 2 if perplexity else 1
        if len(ids) < minimum:
            raise RequestError(name, f"{name}: expected at least {minimum} token(s), got {len(ids)}")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(name, f"{name}: expected token ids in [0, {vocab}), got {bad[:5]}")
        # Generation needs room for at least one new token; perplexity only scores what it is given.
        limit = self.max_sequence_len if perplexity else self.max_sequence_len - 1
        if len(ids) > limit:
            bound = "session_len" if self.session_len <= self.block_manager.capacity_tokens else "the KV cache"
            raise RequestError(
                name,
                f"{name}: {len(ids)} tokens do not fit: {bound} allows at most {limit} "
                f"(session_len={self.session_len}, KV cache={self.block_manager.capacity_tokens} tokens)",
                code=CONTEXT_LENGTH_EXCEEDED,
            )
        return ids

    def add_request(self, prompt_ids: Seq[int], gen_config: GenerationConfig | None = None) -> Sequence:
        """Queue a generation request; raises ``ValueError``/``TypeError`` (and queues nothing) on bad input."""
        gen = GenerationConfig() if gen_config is None else gen_config
        if not isinstance(gen, GenerationConfig):
            raise RequestTypeError("gen_config", f"gen_config: expected a GenerationConfig, got {type(gen).__name__}")
        ids = self.validate_prompt(prompt_ids)
        stop = set(gen.stop_token_ids or [])
        if not gen.ignore_eos:
            stop.update(self.eos_token_ids)
        tokenizer = self.tokenizer
        if gen.stop_words and tokenizer is None:
            raise RequestError(
                "stop_words", "stop_words: this model has no tokenizer to match them; use stop_token_ids"
            )
        max_len = min(len(ids) + gen.max_new_tokens, self.max_sequence_len)
        seq = Sequence(ids, max_len=max_len, stop_token_ids=frozenset(stop), params=gen)
        self.scheduler.add(seq)
        if tokenizer is not None:
            self._detokenizers[seq] = Detokenizer(tokenizer, gen.stop_words or ())
        return seq

    def detokenizer(self, seq: Sequence) -> Detokenizer | None:
        """The incremental detokenizer of generation request ``seq`` (``None`` without a tokenizer): its
        ``text`` is the answer so far, cut at the first stop word; ``stable_len(finished)`` says how much of it
        may be streamed."""
        return self._detokenizers.get(seq)

    def add_perplexity_request(self, input_ids: Seq[int], prompt_logprobs: int | None = None) -> Sequence:
        """Score ``input_ids``; ``prompt_logprobs=k`` also keeps each token's logprob and the top ``k``
        (``seq.prompt_token_logprobs``; k = 0: the token's own logprob only)."""
        ids = self.validate_prompt(input_ids, name="input_ids", perplexity=True)
        if prompt_logprobs is not None and (not isinstance(prompt_logprobs, int) or prompt_logprobs < 0):
            raise RequestError(
                "prompt_logprobs", f"prompt_logprobs: expected None or an int >= 0, got {prompt_logprobs!r}"
            )
        seq = Sequence(ids, max_len=len(ids), perplexity=True, prompt_logprobs=prompt_logprobs)
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        self.scheduler.finish(seq, "abort")
        self.sampler.forget(seq.seq_id)
        self._finish_text(seq)

    def _finish_text(self, seq: Sequence) -> None:
        detok = self._detokenizers.get(seq)
        if detok is not None:
            detok.finish(seq.output_ids)

    # -- the loop ------------------------------------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """One engine step; returns the sequences that got a token or finished."""
        chunks = self.scheduler.schedule()
        if not chunks:
            return []
        try:
            out = self.runner.run(chunks)
            tokens = self.sampler.sample(out.sample_logits, out.sample_seqs) if out.sample_seqs else []
        except Exception:
            for chunk in chunks:  # the requests of a failed step end; the engine stays usable for the others
                self.abort(chunk.seq)
                chunk.seq.finish_reason = "error"
            raise
        for chunk in chunks:
            if chunk.seq.seq_id in out.nll:
                nll, count = out.nll[chunk.seq.seq_id]
                chunk.seq.nll_sum += nll
                chunk.seq.nll_count += count
                chunk.seq.prompt_token_logprobs.extend(out.token_logprobs.get(chunk.seq.seq_id, ()))
        sampled = {seq.seq_id: token for seq, token in zip(out.sample_seqs, tokens) if token is not None}
        failed = [seq for seq, token in zip(out.sample_seqs, tokens) if token is None]  # seq.error says why
        for seq in failed:
            self.scheduler.finish(seq, "error")
        finished = self.scheduler.postprocess([c for c in chunks if not c.seq.is_finished], sampled) + failed
        for seq in out.sample_seqs:  # the new tokens' text; a stop word in it ends the sequence
            detok = self._detokenizers.get(seq)
            if detok is not None and not seq.is_finished:
                detok.update(seq.output_ids)
                if detok.stopped:
                    finished.append(self.scheduler.finish(seq, "stop"))
        for seq in finished:
            self.sampler.forget(seq.seq_id)
            self._finish_text(seq)
        return out.sample_seqs + [s for s in finished if s.perplexity]

    def run_until_done(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        """Step until every one of ``seqs`` has finished, yielding the updated ones after each step."""
        while not all(s.is_finished for s in seqs):
            updated = self.step()
            if not updated and not self.scheduler.has_unfinished():
                raise RuntimeError("engine: requests left unfinished with nothing scheduled")  # internal invariant
            yield updated

    def generate(self, prompts: list[list[int]], gen_configs: list[GenerationConfig | None]) -> list[Sequence]:
        seqs = self.add_requests(prompts, gen_configs)
        for _ in self.run_until_done(seqs):
            pass
        return seqs

    def add_requests(self, prompts: list[list[int]], gen_configs: list[GenerationConfig | None]) -> list[Sequence]:
        """Validate every request first, so a bad one in a batch queues none of them (nor a batch that does not
        fit in the waiting queue)."""
        for i, (ids, gen) in enumerate(zip(prompts, gen_configs)):
            self.validate_prompt(ids, name=f"prompts[{i}]" if len(prompts) > 1 else "prompt")
            if gen is not None and not isinstance(gen, GenerationConfig):
                raise RequestTypeError(
                    "gen_config", f"gen_config: expected a GenerationConfig, got {type(gen).__name__}"
                )
        self.check_queue_room(len(prompts))
        return [self.add_request(ids, gen) for ids, gen in zip(prompts, gen_configs)]

    def check_queue_room(self, count: int) -> None:
        """``EngineBusyError`` when ``count`` more requests would overflow the waiting queue."""
        limit = self.scheduler.max_queued_requests
        if limit is not None and len(self.scheduler.waiting) + count > limit:
            raise EngineBusyError(
                f"engine: {count} requests do not fit in the waiting queue ({len(self.scheduler.waiting)} of "
                f"max_queued_requests={limit} taken); try again later"
            )

    def get_ppl(self, inputs: list[list[int]]) -> list[float]:
        """Mean cross-entropy (natural log) of each input; scored in chunks, batched like generation."""
        for i, ids in enumerate(inputs):
            self.validate_prompt(ids, name=f"input_ids[{i}]" if len(inputs) > 1 else "input_ids", perplexity=True)
        self.check_queue_room(len(inputs))
        seqs = [self.add_perplexity_request(ids) for ids in inputs]
        for _ in self.run_until_done(seqs):
            pass
        return [s.nll_sum / s.nll_count for s in seqs]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: expected a usable device, got 'cuda' but torch sees no CUDA GPU")
    return torch.device(device)


def _resolve_dtype(name: str, checkpoint_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    if name != "auto":
        dtype = getattr(torch, name)
    elif device.type == "cpu" and not cpu_has_native_bf16():
        # Without bf16 hardware a bf16 GEMM runs ~50x slower than fp32 (1.1 vs 57 GFLOP/s measured on this
        # project's AVX2 machines): on such a CPU `auto` means float32, whatever the checkpoint holds.
        dtype = torch.float32
    else:
        dtype = (
            checkpoint_dtype if checkpoint_dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.bfloat16
        )
    if device.type == "cpu" and dtype == torch.float16:
        if name == "float16":
            raise ValueError("dtype: the CPU kernels run float32 or bfloat16, got 'float16'")
        dtype = torch.bfloat16
    return dtype


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

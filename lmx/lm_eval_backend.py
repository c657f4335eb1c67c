"""lm-evaluation-harness backend: ``--model lmx`` runs loglikelihood, loglikelihood_rolling and generate_until
through the lmx engine (continuous batching, chunked prefill, dynamic NTK RoPE).

lm-eval 0.4.x finds models by import (``register_model``), so run it through this module, which registers
``lmx`` and then hands its arguments to lm-eval's own command line unchanged::

    python -m lmx.lm_eval_backend run --model lmx \\
        --model_args pretrained=smollm2-135m,rope_scaling_factor=2.0,session_len=16384 --tasks TASK

(``lm_eval ...`` without the ``run`` subcommand works the same.) From Python: ``import lmx.lm_eval_backend`` and
then ``lm_eval.simple_evaluate(model="lmx", model_args=...)``.

model_args: ``pretrained`` (a Hugging Face directory, a .gguf file or ``smollm2-135m``) and any ``EngineConfig``
field (``session_len``, ``rope_scaling_factor``, ``max_batch_size``, ``dtype``, ``device``, ``num_blocks``, ...);
``max_gen_toks`` (default 256) caps generation when a task does not say.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences
from tqdm import tqdm

from lmx.cli import parse_engine_value
from lmx.engine import EngineConfig, sampling_config


def _engine_config(kwargs: dict[str, Any]) -> EngineConfig:
    """``EngineConfig`` from lm-eval's model_args: text values are read as ``lmx serve``'s options read them
    (``rope_scaling=dynamic:2``, ``session_len=16k``, ``dtype=float32``); parsed values pass as they are."""
    values = {}
    for name, value in kwargs.items():
        try:
            values[name] = parse_engine_value(name, value)
        except TypeError:
            raise TypeError(f"model_args: unknown argument {name!r}; expected pretrained, max_gen_toks, batch_size "
                            f"or an EngineConfig field ({', '.join(f.name for f in dataclasses.fields(EngineConfig))})"
                            ) from None  # fmt: skip
    return EngineConfig(**values)


@register_model("lmx")
class LmxLM(TemplateLM):
    def __init__(self, pretrained: str = "smollm2-135m", max_gen_toks: int = 256, batch_size: Any = None,
                 **engine_args: Any) -> None:  # fmt: skip
        super().__init__()
        from lmx import pipeline

        for ignored in ("device_map", "trust_remote_code", "parallelize"):  # lm-eval passes some HF options
            engine_args.pop(ignored, None)
        if engine_args.get("device") in ("cuda:0", "cuda:1"):
            engine_args["device"] = "cuda"
        self.pipe = pipeline(pretrained, engine_config=_engine_config(engine_args))
        self.tokenizer = self.pipe.tokenizer
        if self.tokenizer is None:
            raise ValueError(f"pretrained: {pretrained!r} has no tokenizer; lm-eval needs one")
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LmxLM:
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> LmxLM:
        """model_args win; lm-eval's --device fills ``device`` only when model_args has none."""
        args = dict(arg_dict)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        extra.pop("batch_size", None), extra.pop("max_batch_size", None)
        if extra.get("device") in (None, "cuda", "cuda:0", "cpu"):
            device = extra.pop("device", None)
            if device is not None and "device" not in args:
                args["device"] = "cuda" if device.startswith("cuda") else "cpu"
        return cls(**args)

    # -- tokens ------------------------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # As lm-eval's HFLM and API models: BOS when the tokenizer has one, else EOS.
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.pipe.max_sequence_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # -- scoring -----------------------------------------------------------------------------------------------------

    def _score(self, inputs: list[list[int]], disable_tqdm: bool) -> list[list[tuple[float, dict[int, float]]]]:
        """Per-token (logprob, top-1) of tokens 1..n-1 of each input, all queued at once (continuous batching)."""
        self.pipe.check_queue_room(len(inputs))
        seqs = [self.pipe.add_scoring_request(ids, top_logprobs=1) for ids in inputs]
        bar = tqdm(total=len(seqs), disable=disable_tqdm, desc="lmx: scoring")
        done = 0
        for _ in self.pipe.run_until_done(seqs):
            finished = sum(s.is_finished for s in seqs)
            bar.update(finished - done)
            done = finished
        bar.close()
        return [self.pipe.prompt_logprobs(seq) for seq in seqs]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        inputs, spans = [], []
        for _, context_enc, continuation_enc in requests:
            ids = (context_enc + continuation_enc)[-self.max_length :]  # left-truncate, as lm-eval's HFLM
            inputs.append(ids)
            spans.append(min(len(continuation_enc), len(ids) - 1))
        results = []
        for ids, scores, n in zip(inputs, self._score(inputs, disable_tqdm), spans):
            tail = scores[len(scores) - n :]
            logprob = sum(value for value, _ in tail)
            greedy = all(token == max(top, key=top.get) for token, (_, top) in zip(ids[len(ids) - n :], tail))
            results.append((logprob, greedy))
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, target in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            )):  # fmt: skip
                windows.append((None, context, target))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation --------------------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts, configs = [], []
        for context, gen_kwargs in (req.args for req in requests):
            gen_kwargs = dict(gen_kwargs)
            until = handle_stop_sequences(gen_kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id]))
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)
            keep = max(1, self.max_length - max_new)  # left-truncate the context, as lm-eval's HFLM
            ids = ids[-keep:] if len(ids) > keep else ids
            configs.append(sampling_config(
                max_new_tokens=max_new, do_sample=bool(gen_kwargs.pop("do_sample", False)),
                temperature=float(gen_kwargs.pop("temperature", 0.0)), top_p=float(gen_kwargs.pop("top_p", 1.0)),
                top_k=int(gen_kwargs.pop("top_k", 0) or 0),
                repetition_penalty=float(gen_kwargs.pop("repetition_penalty", 1.0)),
                stop_words=[s for s in until if s] or None, random_seed=gen_kwargs.pop("seed", None),
            ))  # fmt: skip
            prompts.append(ids)
        responses = self.pipe(prompts, gen_config=configs) if prompts else []
        texts = [r.text for r in responses]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with ``--model lmx`` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()

"""The public API surface: cheap ``import lmx``, lazy exports, the engine on the kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_lmx_is_cheap_and_lazy():
    code = (
        "import sys, lmx; assert 'torch' not in sys.modules and 'lmx.ops' not in sys.modules, sorted(sys.modules)\n"
        "from lmx import EngineConfig, GenerationConfig\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(lmx.pipeline)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_models_call_the_kernels_not_the_reference():
    import lmx.ops
    from lmx.models import layers

    assert layers.ops is lmx.ops


def test_auto_dtype_on_a_cpu_without_bf16_units_is_float32():
    """A bf16 GEMM without bf16 hardware is ~50x slower than fp32, so `auto` must not pick it there."""
    import torch

    from lmx.engine.llm_engine import _resolve_dtype
    from lmx.models.layers import cpu_has_native_bf16

    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert _resolve_dtype("auto", torch.bfloat16, cpu) == expected
    assert _resolve_dtype("auto", None, cpu) == expected  # a quantised GGUF
    assert _resolve_dtype("bfloat16", torch.float32, cpu) == torch.bfloat16  # an explicit choice stays
    assert _resolve_dtype("auto", torch.float32, cpu) == torch.float32


# -- the Pipeline's public surface (what the server, the evals and lm-eval use) ---------------------------------


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_helpers import fp32_engine_config, make_tiny_model

    from lmx import pipeline

    directory = tmp_path_factory.mktemp("api-model")
    make_tiny_model(directory, "llama", "default", seed=3)
    return pipeline(directory, engine_config=fp32_engine_config(session_len=96, num_blocks=8, max_queued_requests=2))


def test_validate_raises_request_errors_carrying_the_parameter(tiny_pipe):
    from lmx.engine import RequestError, RequestTypeError

    assert tiny_pipe.validate([1, 2, 3]) == [1, 2, 3]
    with pytest.raises(RequestError) as e:
        tiny_pipe.validate([1] * 96, name="prompt[3]")
    assert (e.value.param, e.value.code) == ("prompt[3]", "context_length_exceeded") and "do not fit" in str(e.value)
    assert len(tiny_pipe.validate([1] * 96, name="input_ids", perplexity=True)) == 96  # no room for an answer needed
    with pytest.raises(RequestError) as e:
        tiny_pipe.validate([1, 100000], name="messages")
    assert (e.value.param, e.value.code) == ("messages", None) and isinstance(e.value, ValueError)
    with pytest.raises(RequestTypeError) as e:
        tiny_pipe.validate("text")
    assert e.value.param == "prompt" and isinstance(e.value, TypeError)
    with pytest.raises(RequestError) as e:
        tiny_pipe.validate([5], perplexity=True, name="input_ids")
    assert e.value.param == "input_ids"


@pytest.mark.parametrize(
    "field, value, error",
    [("top_p", 2.0, "RequestError"), ("temperature", float("nan"), "RequestError"), ("top_k", "5", "RequestTypeError"),
     ("random_seed", 2**64, "RequestError"), ("stop_words", [""], "RequestTypeError"), ("max_new_tokens", 0, "RequestError")],
)  # fmt: skip
def test_generation_config_errors_carry_their_field(field, value, error):
    import lmx.engine

    with pytest.raises(getattr(lmx.engine, error)) as e:
        lmx.engine.GenerationConfig(**{field: value})
    assert e.value.param == field and str(e.value).startswith(f"{field}:")


def test_sizes_metrics_and_the_queue(tiny_pipe):
    from lmx import GenerationConfig
    from lmx.engine import EngineBusyError

    assert tiny_pipe.max_sequence_len == 96 and tiny_pipe.max_position_embeddings == 64
    metrics = tiny_pipe.metrics()
    assert metrics["waiting"] == metrics["running"] == 0 and metrics["num_blocks"] == 8
    assert metrics["free_blocks"] == 8 and metrics["block_size"] == 16 and metrics["max_queued_requests"] == 2
    gen = GenerationConfig(max_new_tokens=3, ignore_eos=True)
    seqs = [tiny_pipe.add_request([1, 2, 3], gen), tiny_pipe.add_request([4, 5], gen)]
    assert tiny_pipe.num_unfinished == 2 and tiny_pipe.metrics()["waiting"] == 2
    with pytest.raises(EngineBusyError):
        tiny_pipe.check_queue_room(1)
    streams = [tiny_pipe.output_stream(s, i) for i, s in enumerate(seqs)]
    deltas = {0: [], 1: []}
    while tiny_pipe.has_unfinished():
        for seq in tiny_pipe.step():
            delta = streams[seqs.index(seq)].next()
            if delta is not None:
                deltas[delta.index].append(delta)
    assert tiny_pipe.num_unfinished == 0 and tiny_pipe.metrics()["free_blocks"] == 8
    assert {"preemptions", "hit_rate"} <= set(metrics)  # the scheduler's and block manager's stats()
    for i, seq in enumerate(seqs):
        assert sum((d.token_ids for d in deltas[i]), []) == seq.output_ids and len(seq.output_ids) == 3
        assert deltas[i][-1].finish_reason == "length" and deltas[i][-1].generate_token_len == 3
    whole = tiny_pipe([[1, 2, 3], [4, 5]], gen_config=gen)
    assert [r.token_ids for r in whole] == [s.output_ids for s in seqs]


def test_scoring_requests_and_abort(tiny_pipe):
    from lmx.engine import RequestError

    seq = tiny_pipe.add_scoring_request([1, 2, 3, 4], top_logprobs=2)
    with pytest.raises(RequestError):
        tiny_pipe.prompt_logprobs(seq)  # not finished yet
    for _ in tiny_pipe.run_until_done([seq]):
        pass
    scores = tiny_pipe.prompt_logprobs(seq)
    assert len(scores) == 3 and all(len(top) <= 3 for _, top in scores)
    mean = -sum(value for value, _ in scores) / 3
    assert abs(mean - tiny_pipe.get_ppl([1, 2, 3, 4])[0]) < 1e-4
    running = tiny_pipe.add_request([1, 2])
    tiny_pipe.abort(running)
    tiny_pipe.abort(running)  # a finished request is left as it is
    assert running.finish_reason == "abort" and tiny_pipe.num_unfinished == 0


def test_one_rule_for_greedy_or_sample():
    """``sampling_config`` is what every front end (server, lm-eval, generate, repeat) uses: greedy exactly when
    do_sample is False or the temperature is 0; otherwise sampling at the temperature (1.0 when not given)."""
    from lmx.engine import sampling_config

    assert not sampling_config(temperature=0, top_p=0.5, top_k=5).sampling  # OpenAI/CLI: 0 = greedy
    assert not sampling_config(do_sample=False, temperature=0.8).sampling  # lm-eval: do_sample decides first
    assert not sampling_config(do_sample=True, temperature=0.0).sampling
    on = sampling_config(temperature=0.7, top_p=0.9, max_new_tokens=3, random_seed=4)
    assert on.sampling and (on.temperature, on.top_p, on.max_new_tokens, on.random_seed) == (0.7, 0.9, 3, 4)
    assert sampling_config().sampling and sampling_config().temperature == 1.0  # OpenAI's default: sample at 1
    assert sampling_config(do_sample=True).sampling

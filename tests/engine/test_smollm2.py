"""The embedded SmolLM2-135M-Instruct (Q4_1 GGUF): greedy parity with transformers and text features (the passkey
headline on it is tests/evals/test_demo_slow.py, through `lmx demo`)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import needs_smollm2, smollm2_gguf

from lmx import EngineConfig, GenerationConfig, pipeline

pytestmark = needs_smollm2
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 5, 8, 13,"]


@pytest.fixture(scope="module")
def smol():
    return pipeline(
        "smollm2-135m",
        engine_config=EngineConfig(dtype="float32", device="cpu", session_len=2048, max_batch_size=8, block_size=32),
    )


@pytest.fixture(scope="module")
def smol_hf():
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def test_smollm2_greedy_matches_transformers(smol, smol_hf):
    tok = smol.tokenizer
    gen = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    got = smol(PROMPTS, gen_config=gen)  # batched
    for prompt, response in zip(PROMPTS, got):
        ids = tok.encode(prompt)
        with torch.inference_mode():
            out = smol_hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=2)
        expected = out[0, len(ids) :].tolist()
        expected = expected + [None] * (24 - len(expected))  # transformers may stop at EOS; lmx ignores it
        assert [t for t, e in zip(response.token_ids, expected) if e is not None] == [
            e for e in expected if e is not None
        ]


def test_smollm2_ppl_matches_transformers(smol, smol_hf):
    ids = smol.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 12)
    with torch.inference_mode():
        logits = smol_hf(torch.tensor([ids])).logits[0].float()
    expected = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    assert smol.get_ppl(ids)[0] == pytest.approx(expected, rel=1e-5)


def test_chat_template_stop_words_and_streaming(smol):
    gen = GenerationConfig(max_new_tokens=40)
    chat = smol([{"role": "user", "content": "What is 2+2? Answer with a number."}], gen_config=gen)
    assert "4" in chat.text and chat.finish_reason == "stop"  # EOS (<|im_end|>) ends the answer
    assert chat.input_token_len > 10  # the template added its system prompt and role markers
    plain = smol("The capital of France is", gen_config=GenerationConfig(max_new_tokens=30, ignore_eos=True))
    word = plain.text.split()[1]  # the second word of the continuation
    stopped = smol("The capital of France is", gen_config=GenerationConfig(max_new_tokens=30, stop_words=[word]))
    assert stopped.finish_reason == "stop" and word not in stopped.text and plain.text.startswith(stopped.text)
    pieces = list(
        smol.stream_infer("The capital of France is", gen_config=GenerationConfig(max_new_tokens=30, ignore_eos=True))
    )
    assert "".join(p.text for p in pieces) == plain.text
    assert sum(len(p.token_ids) for p in pieces) == 30 and pieces[-1].finish_reason == "length"

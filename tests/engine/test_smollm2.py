"""The embedded SmolLM2-135M-Instruct (Q4_1 GGUF): greedy parity with transformers, text features, passkey."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine_helpers import needs_smollm2, smollm2_gguf
from lmx import EngineConfig, GenerationConfig, pipeline

pytestmark = needs_smollm2
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 5, 8, 13,"]


@pytest.fixture(scope="module")
def smol():
    return pipeline("smollm2-135m", engine_config=EngineConfig(dtype="float32", device="cpu", session_len=2048,
                                                               max_batch_size=8, block_size=32))


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
        assert [t for t, e in zip(response.token_ids, expected) if e is not None] == [e for e in expected if e is not None]


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
    pieces = list(smol.stream_infer("The capital of France is", gen_config=GenerationConfig(max_new_tokens=30,
                                                                                             ignore_eos=True)))
    assert "".join(p.text for p in pieces) == plain.text
    assert sum(len(p.token_ids) for p in pieces) == 30 and pieces[-1].finish_reason == "length"


def passkey_prompt(tokenizer, target_tokens: int, rng: random.Random) -> tuple[str, int]:
    """Seed 000's prompt, verbatim, with ``n_times`` garbage repeats sized for about ``target_tokens`` tokens."""
    task_description = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                        "them. I will quiz you about the important information there.")
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    n_times = (target_tokens - 1000) // len(tokenizer.encode(garbage))
    n_prefix = rng.randint(0, n_times - 1)
    pass_key = rng.randint(1, 50000 - 1)
    information_line = f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
    final_question = "What is the pass key? The pass key is"
    lines = [task_description, " ".join([garbage] * n_prefix), information_line,
             " ".join([garbage] * (n_times - n_prefix)), final_question]
    return " ".join(lines), pass_key


@pytest.mark.slow
def test_passkey_needs_dynamic_ntk_at_15k():
    """SmolLM2 was trained on 8k: at ~15k tokens default RoPE loses the key, dynamic NTK (factor 2) finds it."""
    rng = random.Random(0)
    common = dict(session_len=16384, max_prefill_token_num=4096, max_batch_size=1, dtype="bfloat16", device="cpu")
    default = pipeline("smollm2-135m", engine_config=EngineConfig(**common))
    prompts = [passkey_prompt(default.tokenizer, 15000, rng)]  # one round: ~15k-token prefills are slow on 2 cores
    gen = GenerationConfig(max_new_tokens=8)
    default_hits = [str(key) in default(p, gen_config=gen).text for p, key in prompts]
    del default
    ntk = pipeline("smollm2-135m", engine_config=EngineConfig(rope_scaling_factor=2.0, **common))
    ntk_hits = [str(key) in ntk(p, gen_config=gen).text for p, key in prompts]
    assert not any(default_hits), default_hits
    assert all(ntk_hits), ntk_hits

"""Fixtures of the evaluation tests: a tiny random Llama with a tokenizer trained on the fly (no downloads), and a
fake pipeline for the unit tests that need no model at all."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

TINY_MAX_POSITIONS = 256  # small, so test lengths cross the "trained" context
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests (real model, long prompts)")
    os.environ.setdefault("LMX_NO_PROGRESS", "1")


def _corpus() -> list[str]:
    from lmx.evals import niah, passkey, repeat

    lines = [passkey.TASK_DESCRIPTION, passkey.GARBAGE, passkey.FINAL_QUESTION, niah.DEFAULT_TEMPLATE,
             niah.DEFAULT_NEEDLE, niah.DEFAULT_QUESTION, repeat.PROMPT, repeat.SYSTEM,
             "The pass key is 12345. Remember it. 12345 is the pass key.",
             "Answer the question based on the given passages. Question: Answer: Paragraph 1 2 3",
             "0 1 2 3 4 5 6 7 8 9 " * 3]  # fmt: skip
    return lines * 20


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=480, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A directory with a tiny random Llama (2 layers, 256 positions) and a byte-level BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=TINY_MAX_POSITIONS, rope_theta=10000.0,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    return str(directory)


@dataclasses.dataclass
class FakeResponse:
    text: str
    input_token_len: int = 0
    generate_token_len: int = 0


class FakePipeline:
    """Stands in for ``lmx.pipeline``: a whitespace tokenizer and a scripted ``answer(prompt_text) -> str``."""

    def __init__(self, answer=lambda prompt: "", session_len: int = 100_000, trained: int = 1000):
        self.tokenizer = FakeTokenizer()
        self.answer = answer
        self.session_len = session_len
        self.prompts: list[str] = []
        self.max_position_embeddings = trained

    def encode(self, prompt, do_preprocess=False):
        if isinstance(prompt, list):
            prompt = " ".join(m["content"] for m in prompt)
        return self.tokenizer.encode(prompt)

    def __call__(self, prompt, gen_config=None, do_preprocess=False):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):  # a batch, as Pipeline takes it
            gens = gen_config if isinstance(gen_config, list) else [gen_config] * len(prompt)
            return [self(p, g, do_preprocess) for p, g in zip(prompt, gens)]
        text = self.tokenizer.decode(prompt) if isinstance(prompt, list) else prompt
        self.prompts.append(text)
        return FakeResponse(self.answer(text), len(self.encode(text)))

    def get_ppl(self, ids):
        batch = ids if ids and isinstance(ids[0], list) else [ids]
        return [1.0 + len(one) / 1000 for one in batch]


class FakeTokenizer:
    """Whitespace tokenizer: one token per word, ids are indexes into a growing vocabulary."""

    chat_template = None

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text, add_special_tokens=True):
        ids = []
        for word in text.split():
            if word not in self.vocab:
                self.vocab[word] = len(self.words)
                self.words.append(word)
            ids.append(self.vocab[word])
        return ids

    def __call__(self, text, truncation=False):
        return type("Enc", (), {"input_ids": self.encode(text)})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[i] for i in ids)


@pytest.fixture
def fake_factory():
    """``make(answer)`` returns a factory building a FakePipeline per setting, and the list of pipelines built."""

    def make(answer=lambda prompt: "", **kwargs):
        built = []

        def factory(setting):
            pipe = FakePipeline(answer, **kwargs)
            built.append((setting, pipe))
            return pipe

        return factory, built

    return make

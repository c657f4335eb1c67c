"""Streaming adds up: ``Pipeline.stream_infer``'s deltas concatenate to the text ``Pipeline.__call__`` returns, with
and without stop words, across multi-byte characters, on a tiny random Llama with a byte-level BPE tokenizer
trained on multi-byte text (a random model emits arbitrary byte pieces, so characters split across tokens and
invalid UTF-8 both happen). The server's SSE stream is checked against the same rule in tests/server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_helpers import VOCAB, fp32_engine_config, make_tiny_model, needs_smollm2, smollm2_gguf  # noqa: E402

CORPUS = [
    "naïve café — déjà vu; 東京は日本の首都です。🙂🚀 emoji 👩‍👩‍👧 end",
    "Ünïcödé ÅÄÖ ß ﬁ ∑∫ 𝔘𝔫𝔦 mixed with ascii text and numbers 12345",
    "The capital of France is Paris. The capital is a city.",
    "Привет, мир! Ελληνικά γράμματα. עברית. العربية. हिन्दी।",
]


def make_bytelevel_tokenizer(directory: Path):
    """A GPT-2 style byte-level BPE tokenizer of exactly ``VOCAB`` ids, trained on multi-byte text, saved there."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    core.train_from_iterator([t for t in CORPUS for _ in range(20)], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    assert len(tokenizer) <= VOCAB
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_bytelevel_model(directory: Path) -> Path:
    make_tiny_model(directory, arch="llama", rope="default", seed=5, max_position_embeddings=512)
    make_bytelevel_tokenizer(directory)
    return directory


def pieces_and_whole(pipe, prompt, gen):
    """(the streamed deltas' texts, their token ids, the non-streamed response) of one prompt."""
    pieces, tokens, last = [], [], None
    for delta in pipe.stream_infer(prompt, gen_config=gen):
        pieces.append(delta.text)
        tokens += delta.token_ids
        last = delta
    whole = pipe(prompt, gen_config=gen)
    assert last is not None and last.finish_reason == whole.finish_reason
    return pieces, tokens, whole


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from lmx import pipeline

    return pipeline(make_bytelevel_model(tmp_path_factory.mktemp("bytelevel")), engine_config=fp32_engine_config())


def _clean_piece(text: str, start: int, size: int = 3) -> str | None:
    """``size`` characters of ``text`` from about ``start`` on without U+FFFD (a stop word a model can produce)."""
    for i in [*range(max(start, 0), len(text) - size + 1), *range(min(start, len(text)))]:
        if "\ufffd" not in text[i : i + size]:
            return text[i : i + size]
    return None


PROMPTS = ["東京は", "naïve café", "The capital of France is"]


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_stream_adds_up_without_stop_words(pipe, seed):
    from lmx import GenerationConfig

    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True, do_sample=seed is not None, random_seed=seed)
    multibyte = 0
    for prompt in PROMPTS:
        pieces, tokens, whole = pieces_and_whole(pipe, prompt, gen)
        assert "".join(pieces) == whole.text
        assert tokens == whole.token_ids and len(tokens) == 40
        decoded = pipe.tokenizer.decode(whole.token_ids, skip_special_tokens=True)
        assert whole.text == decoded or "\ufffd" in decoded  # invalid UTF-8: the detokenizer's own rule
        # U+FFFD inside a piece is invalid UTF-8 the model made; at a piece's end it would be half a character.
        assert not any(p.endswith("\ufffd") for p in pieces[:-1]), "half a character was streamed"
        multibyte += any(ord(c) > 127 for c in whole.text)
    assert multibyte, "no multi-byte character was generated: the test checks nothing"


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_stream_adds_up_with_stop_words(pipe, seed):
    """A stop word taken from the middle of the free answer cuts the streamed and the whole answer alike."""
    from lmx import GenerationConfig

    free = GenerationConfig(max_new_tokens=40, ignore_eos=True, do_sample=seed is not None, random_seed=seed)
    cut = 0
    for prompt in PROMPTS:
        text = pipe(prompt, gen_config=free).text
        stop = _clean_piece(text, len(text) // 2)
        if stop is None:
            continue
        for stops in ([stop], [stop, "never there"]):
            gen = GenerationConfig(max_new_tokens=40, ignore_eos=True, do_sample=seed is not None,
                                   random_seed=seed, stop_words=stops)  # fmt: skip
            pieces, _, whole = pieces_and_whole(pipe, prompt, gen)
            assert "".join(pieces) == whole.text
            assert whole.finish_reason == "stop"
            assert whole.text == text[: text.find(stop)]
            assert not any(stop in "".join(pieces[: n + 1]) for n in range(len(pieces)))
            cut += 1
    assert cut >= 3


def test_stop_word_stream_is_not_truncated(pipe):
    """The old bug: streaming with a stop word sent a piece, then an empty delta, while the answer was longer."""
    from lmx import GenerationConfig

    text = pipe("The capital of France is", gen_config=GenerationConfig(max_new_tokens=30, ignore_eos=True)).text
    stop = _clean_piece(text, len(text) - 6)
    assert stop is not None, text
    gen = GenerationConfig(max_new_tokens=30, ignore_eos=True, stop_words=[stop])
    pieces, _, whole = pieces_and_whole(pipe, "The capital of France is", gen)
    assert whole.text and "".join(pieces) == whole.text


def test_stop_words_end_generation_early(pipe):
    """A stop word ends the sequence in the step it appears in: no tokens generated past it."""
    from lmx import GenerationConfig

    free = pipe("The capital of France is", gen_config=GenerationConfig(max_new_tokens=40, ignore_eos=True))
    stop = _clean_piece(free.text, 10)
    assert stop is not None and free.text.find(stop) > 0, free.text
    stopped = pipe("The capital of France is", gen_config=GenerationConfig(max_new_tokens=40, ignore_eos=True,
                                                                          stop_words=[stop]))  # fmt: skip
    assert stopped.finish_reason == "stop"
    assert stopped.generate_token_len < free.generate_token_len
    assert stopped.token_ids == free.token_ids[: stopped.generate_token_len]
    shorter = pipe.tokenizer.decode(stopped.token_ids[:-1], skip_special_tokens=True)
    assert stop not in shorter, "generation went on past the token that completed the stop word"


def test_detokenizer_decodes_windows_in_the_engine(pipe, monkeypatch):
    """The engine's stop-word check decodes only new tokens and a small window, never the whole answer."""
    from lmx import GenerationConfig

    sizes = []
    original = type(pipe.tokenizer).decode

    def counting(self, ids, *args, **kwargs):
        sizes.append(len(ids))
        return original(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(pipe.tokenizer), "decode", counting)
    out = pipe("東京は", gen_config=GenerationConfig(max_new_tokens=120, ignore_eos=True, stop_words=["never there"]))
    assert out.generate_token_len == 120 and max(sizes) < 30, f"decoded up to {max(sizes)} tokens at once"


@needs_smollm2
def test_smollm2_stop_word_stream_equals_the_answer():
    """The reported drift: on SmolLM2, stream_infer with a stop word streamed ' Par' and then an empty delta while
    the answer was longer. Stop words taken from the free answer, one token and several tokens long."""
    from lmx import EngineConfig, GenerationConfig, pipeline

    smol = pipeline(str(smollm2_gguf()), engine_config=EngineConfig(session_len=256, max_batch_size=2))
    prompt = "The capital of France is"
    free = smol(prompt, gen_config=GenerationConfig(max_new_tokens=24, ignore_eos=True)).text
    words = free.split()
    for stop in [words[1], " " + " ".join(words[3:5]), words[-1][-2:]]:
        gen = GenerationConfig(max_new_tokens=24, ignore_eos=True, stop_words=[stop])
        pieces, _, whole = pieces_and_whole(smol, prompt, gen)
        assert "".join(pieces) == whole.text == free[: free.find(stop)], (stop, pieces)
        assert whole.finish_reason == "stop"

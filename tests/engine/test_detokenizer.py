"""The incremental detokenizer: streamed pieces add up to the whole decode, with and without stop words, across
multi-byte characters, for a byte-level BPE (GPT-2 style) and a SentencePiece-style (Metaspace, byte fallback)
tokenizer, both trained on the fly."""

import random

import pytest

from lmx.engine.detokenizer import Detokenizer

TEXTS = [
    "The capital of France is Paris. The capital is a city.",
    "naïve café — déjà vu; 東京は日本の首都です。🙂🚀 emoji 👩‍👩‍👧 end",
    "  leading spaces,\ttabs\nand newlines\n\n  kept  ",
    "Ünïcödé ÅÄÖ ß ﬁ ∑∫ 𝔘𝔫𝔦 mixed with ascii text and numbers 12345",
]


def _corpus():
    return [t for t in TEXTS for _ in range(10)] + ["hello world, the quick brown fox jumps over the lazy dog"] * 20


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tokenizer(request):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if request.param == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-like: '▁' for spaces, unknown characters as <0xNN> byte tokens
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<|endoftext|>"], initial_alphabet=[] if alphabet[0].startswith("<") else alphabet,
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if request.param == "metaspace":
        tok.add_tokens([a for a in alphabet if tok.token_to_id(a) is None])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")


def _stream(tokenizer, ids, stop_words=()):
    """What a streaming client receives, token by token, and the detokenizer's final text."""
    detok = Detokenizer(tokenizer, stop_words)
    sent = 0
    pieces = []
    n = 0
    for n in range(1, len(ids) + 1):
        detok.update(ids[:n])
        stable = detok.stable_len(finished=False)
        assert stable >= sent, "released text was taken back"
        pieces.append(detok.text[sent:stable])
        sent = stable
        if detok.stopped:
            break
    detok.finish(ids[:n])
    pieces.append(detok.text[sent : detok.stable_len(finished=True)])
    return pieces, detok


@pytest.mark.parametrize("text", TEXTS)
def test_stream_adds_up_to_the_whole_decode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces, detok = _stream(tokenizer, ids)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == whole == detok.text
    assert all("\ufffd" not in p for p in pieces), "half a character was streamed"


def test_random_token_ids_add_up(tokenizer):
    """Random ids make invalid UTF-8. Where the tokenizer's own decode of a prefix is a prefix of its decode of the
    whole (byte fallback breaks this: it turns a valid byte followed by a stray continuation byte into two U+FFFD),
    the stream equals the whole decode; it always equals the detokenizer's answer."""
    rng = random.Random(0)
    compared = 0
    for _ in range(60):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        pieces, detok = _stream(tokenizer, ids)
        assert "".join(pieces) == detok.text
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        prefixes = (tokenizer.decode(ids[:n], skip_special_tokens=True).rstrip("\ufffd") for n in range(len(ids)))
        if all(whole.startswith(p) for p in prefixes):
            assert detok.text == whole
            compared += 1
    assert compared >= 20


@pytest.mark.parametrize(
    "text, stops",
    [
        ("The capital of France is Paris. The capital is a city.", ["Paris"]),
        ("The capital of France is Paris. The capital is a city.", ["is a", "France"]),
        ("naïve café — déjà vu; 東京は日本の首都です。🙂🚀", ["首都", "🚀"]),
        ("The capital of France is Paris.", ["not there", "Par is"]),  # no stop word: the whole text
        ("The capital of France is Paris.", [" The", "."]),  # a stop word at the very end
    ],
)
def test_stop_words_cut_the_stream_and_the_answer_alike(tokenizer, text, stops):
    ids = tokenizer.encode(text, add_special_tokens=False)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [i for i in (whole.find(w) for w in stops) if i >= 0]
    expected = whole[: min(hits)] if hits else whole
    pieces, detok = _stream(tokenizer, ids, stops)
    assert "".join(pieces) == expected == detok.text
    assert detok.stopped == bool(hits)
    for piece_end in range(len(pieces)):  # nothing released ever contains a stop word
        assert not any(w in "".join(pieces[: piece_end + 1]) for w in stops)


def test_decodes_a_window_not_the_whole_output(tokenizer):
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tokenizer.encode(" ".join(TEXTS + _corpus()), add_special_tokens=False)
    detok = Detokenizer(Counting())
    for n in range(1, len(ids) + 1):
        detok.update(ids[:n])
    assert len(ids) > 200 and max(calls) < 20, f"decoded up to {max(calls)} tokens at once"

"""Prompt builders, truncation and scoring helpers, on a fake pipeline (no model)."""

from __future__ import annotations

import pytest

from lmx.evals import longbench, niah, passkey, repeat
from lmx.evals.common import RopeSetting, parse_rope_setting, rope_settings
from lmx.evals.longbench_tasks import get_task

from .conftest import FakeTokenizer


def test_passkey_prompt_is_seed_000_verbatim():
    prompt = passkey.passkey_prompt(1, 2, 4242)
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    assert prompt == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz "
        f"you about the important information there. {garbage} The pass key is 4242. Remember it. 4242 is the "
        f"pass key. {garbage} {garbage} What is the pass key? The pass key is"
    )


def test_passkey_items_are_reproducible_and_sized():
    tok = FakeTokenizer()
    a = passkey.make_items(tok, [500, 2000], rounds=3, seed=7)
    b = passkey.make_items(tok, [500, 2000], rounds=3, seed=7)
    assert a == b and len(a) == 6
    assert a != passkey.make_items(tok, [500, 2000], rounds=3, seed=8)
    for item in a:
        assert 1 <= item.pass_key < 50000
        assert abs(len(tok.encode(item.prompt)) - item.length) <= 20  # the prompt has about the asked length


def test_passkey_extract_and_score(fake_factory):
    assert passkey.extract_pass_key(" 12345. Remember it.") == 12345
    assert passkey.extract_pass_key("no number") is None

    # the fake model answers correctly only under dynamic RoPE
    def answer_for(setting):
        def answer(prompt):
            key = prompt.split("The pass key is ")[1].split(".")[0]
            return f" {key}." if setting.rope_type == "dynamic" else " I do not know."

        return answer

    def factory(setting):
        from .conftest import FakePipeline

        return FakePipeline(answer_for(setting))

    result = passkey.run_passkey(
        factory, [RopeSetting("default"), RopeSetting("dynamic", 2.0)], [300, 600], rounds=2, seed=0
    )
    acc = {(s["setting"], s["length"]): s["accuracy"] for s in result["summary"]}
    assert acc == {("default", 300): 0.0, ("default", 600): 0.0, ("dynamic:2", 300): 100.0, ("dynamic:2", 600): 100.0}
    # the same prompts under every setting
    keys = [(r["length"], r["round"], r["pass_key"]) for r in result["items"]]
    assert keys[:4] == keys[4:]
    headers, rows = passkey.table_rows(result["summary"])
    assert headers == ["length", "prompt tokens", "default", "dynamic:2"]
    assert rows[0][2:] == ["0/2 (0%)", "2/2 (100%)"]


@pytest.mark.parametrize("spec,expected", [
    ("default", RopeSetting("default")), ("model", RopeSetting()), ("dynamic:2", RopeSetting("dynamic", 2.0)),
    ("linear:4", RopeSetting("linear", 4.0)), ("DYNAMIC", RopeSetting("dynamic", 2.0)),
    # a bare factor means what --rope-scaling-factor F means for lmx serve: the model's RoPE unless F > 1
    ("2.0", RopeSetting("dynamic", 2.0)), ("1", RopeSetting()), ("0", RopeSetting()),
])  # fmt: skip
def test_parse_rope_setting(spec, expected):
    assert parse_rope_setting(spec) == expected


@pytest.mark.parametrize("spec", ["ntk:2", "dynamic:x", "linear:0.5", "default:2", "model:2"])
def test_parse_rope_setting_rejects(spec):
    with pytest.raises(ValueError, match="--rope"):
        parse_rope_setting(spec)


def test_rope_settings_merge_without_repeats():
    names = [s.name for s in rope_settings(["default", "dynamic:2"], [2.0, 4.0])]
    assert names == ["default", "dynamic:2", "dynamic:4"]
    assert [s.name for s in rope_settings(None, None)] == ["model"]  # no flag: the checkpoint's RoPE, as serve
    assert RopeSetting().engine_kwargs() == {} and RopeSetting("default").rope_scaling == {"rope_type": "default"}


@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_niah_needle_at_depth(depth):
    tok = FakeTokenizer()
    hay = niah.Haystack(tok, "Alpha one. Beta two. Gamma three. Delta four.")
    needle = "The secret code is 42."
    context = hay.context(200, depth, needle)
    assert context.count(needle) == 1
    position = context.index(needle) / len(context)
    assert abs(position - depth / 100) < 0.06
    before = context[: context.index(needle)].rstrip()
    assert before == "" or before.endswith(".")  # at a sentence end
    assert abs(len(tok.encode(context)) - 200 - len(needle.split())) <= 1


def test_niah_scores():
    assert niah.keyword_score("The code is 7392815.", ["7392815"]) == 100.0
    assert niah.keyword_score("The code is 739281.", ["7392815"]) == 0.0
    assert niah.keyword_score("PARIS and rome", ["paris", "Rome"]) == 100.0
    assert niah.graded_score("it is 7392815", "7392815") == 100.0
    assert 70 < niah.graded_score("it is 7392816", "7392815") < 100
    assert niah.graded_score("", "7392815") == 0.0


def test_niah_grid_on_fake_pipeline(fake_factory):
    factory, _ = fake_factory(lambda prompt: " 7392815" if prompt.index("7392815") < len(prompt) / 2 else " none")
    result = niah.run_niah(factory, [RopeSetting("default")], [300, 600], [0, 50, 100])
    grid = result["grids"]["default"]
    assert len(grid) == 3 and all(len(row) == 2 for row in grid)
    assert grid[0] == [100.0, 100.0] and grid[2] == [0.0, 0.0]
    assert result["mean_per_length"]["default"] == pytest.approx(
        [100 / 3 * (1 + (grid[1][0] > 0)), 100 / 3 * (1 + (grid[1][1] > 0))]
    )


def test_repeat_task_is_seed_003():
    document = "one two three\nfour  five six"
    prompt, target = repeat.make_task(document, 2)
    assert prompt == "Return last 2 words from this text: \n\none two three\nfour  five six"
    assert target == "five six"


def test_repeat_on_fake_pipeline(fake_factory, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"w{i}" for i in range(300)))
    factory, _ = fake_factory(lambda prompt: " ".join(prompt.split()[-3:]))  # returns the last 3 words
    result = repeat.run_repeat(factory, [RopeSetting()], repeat.load_documents([str(doc)]), n=3)
    item = result["items"][0]
    assert item["target"] == "w297 w298 w299" and item["score"] == 1.0 and item["word_count_difference"] == 0
    # a document longer than the session loses words at its start, never its end
    factory, built = fake_factory(lambda prompt: prompt.split()[-1], session_len=120)
    result = repeat.run_repeat(factory, [RopeSetting()], repeat.load_documents([str(doc)]), n=3, max_new_tokens=8)
    assert result["items"][0]["words_dropped"] > 0 and result["items"][0]["prompt_tokens"] <= 112


def test_truncate_middle_keeps_first_and_last_halves():
    tok = FakeTokenizer()
    prompt = " ".join(f"w{i}" for i in range(10))
    assert longbench.truncate_middle(tok, prompt, 10) == (prompt, 10)
    assert longbench.truncate_middle(tok, prompt, 6) == ("w0 w1 w2w7 w8 w9", 10)
    assert longbench.truncate_middle(tok, prompt, 5) == ("w0 w1w8 w9", 10)  # half = int(5 / 2) = 2


def test_truncate_middle_counts_special_tokens_as_pred_py():
    """pred.py counts the tokenizer's BOS in the length, and drops it when decoding the halves."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, **{f"w{i}": i + 1 for i in range(10)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<s>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")
    prompt = " ".join(f"w{i}" for i in range(10))
    assert tok(prompt).input_ids[0] == 0
    truncated, before = longbench.truncate_middle(tok, prompt, 6)
    assert before == 11
    assert truncated == "w0 w1w7 w8 w9"  # [<s> w0 w1] + [w7 w8 w9], the BOS skipped in decoding


def test_longbench_scorer_first_line_and_best_answer():
    trec = get_task("trec")
    assert longbench.score_item(trec, "\nEntity\nLocation", ["Entity"], ["Entity", "Location"]) == 1.0
    hotpot = get_task("hotpotqa_e")  # LongBench-E names too
    assert longbench.score_item(hotpot, "Paris, France", ["London", "Paris"]) == pytest.approx(2 / 3)
    items = [
        {"pred": "Paris", "answers": ["Paris"], "length": 3000},
        {"pred": "x", "answers": ["Paris"], "length": 9000},
    ]
    scores = longbench.task_scores(hotpot, items)
    assert scores["score"] == 50.0 and scores["by_length"] == {"0-4k": 100.0, "4-8k": None, "8k+": 0.0}


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="task: expected one of .*got 'nosuchtask'"):
        get_task("nosuchtask")


def test_check_lengths_against_session_len():
    from lmx.evals.common import check_lengths

    check_lengths([100, 200], 200)
    with pytest.raises(ValueError, match=r"--lengths: \[300\] exceed --session-len 200"):
        check_lengths([100, 300], 200)

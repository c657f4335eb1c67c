"""The evaluation commands with ``--tp 2`` give what they give with ``--tp 1`` (one pipeline per RoPE setting,
each closed before the next: the workers serve them in turn)."""

from __future__ import annotations

import json

import pytest

from lmx.cli import main


@pytest.fixture(scope="module")
def eval_model(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.evals.conftest import TINY_MAX_POSITIONS, build_tokenizer

    directory = tmp_path_factory.mktemp("tp-eval-llama")
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=TINY_MAX_POSITIONS, rope_theta=10000.0,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None,
        initializer_range=0.15,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    return str(directory)


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert status == 0, err


def test_ppl_command_tp2(eval_model, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The grass is green. The sky is blue. The pass key is 12345. " * 60)
    curves = []
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}"
        run(capsys, "ppl", "--model", eval_model, "--text", text, "--lengths", 64, 300, "--threads", 1,
            "--dtype", "float32", "--tp", tp, "--output", out)  # fmt: skip
        curves.append(json.loads((out / "ppl.json").read_text())["curves"])
    assert list(curves[1]) == list(curves[0]) == ["default", "linear:2", "dynamic:2"]
    for name, curve in curves[0].items():
        assert curves[1][name] == pytest.approx(curve, rel=1e-5), name


def test_passkey_command_tp2(eval_model, tmp_path, capsys):
    items = []
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}"
        run(capsys, "passkey", "--model", eval_model, "--lengths", 200, 300, "--rounds", 2, "--max-new-tokens", 6,
            "--threads", 1, "--dtype", "float32", "--tp", tp, "--output", out)  # fmt: skip
        result = json.loads((out / "passkey.json").read_text())["items"]
        items.append([{k: v for k, v in it.items() if k != "seconds"} for it in result])
    assert items[1] == items[0] and len(items[0]) == 4  # 2 lengths x 2 rounds

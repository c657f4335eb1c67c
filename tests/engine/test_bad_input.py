"""Bad input: each a clear ValueError/TypeError naming the argument; the engine keeps serving."""

from __future__ import annotations

import json
import shutil

import pytest
from engine_helpers import fp32_engine_config, make_tiny_model, needs_smollm2, random_prompt, smollm2_gguf

from lmx import EngineConfig, GenerationConfig, pipeline

GEN = GenerationConfig(max_new_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bad-input")
    make_tiny_model(directory, "llama", "default", seed=5)
    return directory


@pytest.fixture(scope="module")
def pipe(model_dir):
    return pipeline(model_dir, engine_config=fp32_engine_config(session_len=64))


def test_requests_rejected_and_engine_keeps_serving(pipe):
    good = random_prompt(10, seed=1)
    expected = pipe(good, gen_config=GEN).token_ids
    with pytest.raises(ValueError, match=r"prompt: 64 tokens do not fit: session_len allows at most 63"):
        pipe(random_prompt(64, seed=2), gen_config=GEN)
    with pytest.raises(ValueError, match=r"prompt: expected at least 1 token"):
        pipe([[]], gen_config=GEN)
    with pytest.raises(ValueError, match=r"expected token ids in \[0, 512\), got \[600\]"):
        pipe([1, 2, 600], gen_config=GEN)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):  # one bad prompt in a batch: none is queued
        pipe([good, random_prompt(100, seed=3)], gen_config=GEN)
    with pytest.raises(TypeError, match="gen_config: expected a GenerationConfig, got dict"):
        pipe(good, gen_config={"max_new_tokens": 3})
    with pytest.raises(ValueError, match="input_ids: 65 tokens do not fit"):
        pipe.get_ppl(random_prompt(65, seed=4))
    with pytest.raises(ValueError, match="input_ids: expected at least 2 token"):
        pipe.get_ppl([5])
    with pytest.raises(ValueError, match="prompt: this model has no tokenizer"):
        pipe("text needs a tokenizer", gen_config=GEN)
    assert not pipe.engine.scheduler.has_unfinished()
    assert pipe(good, gen_config=GEN).token_ids == expected
    assert len(pipe.get_ppl(random_prompt(64, seed=4))) == 1  # exactly session_len is fine for perplexity


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), r"max_new_tokens: expected an int >= 1, got 0"),
        (dict(max_new_tokens=-3), r"max_new_tokens: expected an int >= 1, got -3"),
        (dict(max_new_tokens=2.5), r"max_new_tokens: expected an int, got float"),
        (dict(top_p=0.0), r"top_p: expected a value in \(0, 1\]"),
        (dict(temperature=-1), r"temperature: expected a value in \[0, 100\]"),
        (dict(top_k=-1), r"top_k: expected an int >= 0"),
        (dict(repetition_penalty=0), r"repetition_penalty: expected a value in \[0.01, 100\]"),
        (dict(stop_words=[""]), r"stop_words: expected a list of non-empty strings"),
        (dict(stop_token_ids=["a"]), r"stop_token_ids: expected a list of ints"),
        (dict(logprobs=-1), r"logprobs: expected an int >= 0"),
    ],
)
def test_generation_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_size=48), r"block_size: expected a power of two from 1 to 256, got 48"),
        (dict(session_len=0), r"session_len: expected an int >= 1, got 0"),
        (dict(cache_max_entry_count=1.5), r"cache_max_entry_count: expected a fraction in \(0, 1\]"),
        (dict(dtype="int8"), r"dtype: expected one of"),
        (dict(device="tpu"), r"device: expected one of"),
        (dict(max_prefill_token_num=0), r"max_prefill_token_num: expected an int >= 1"),
        (dict(rope_scaling_factor=-2.0), r"rope_scaling_factor: expected >= 0"),
        (dict(rope_scaling_factor=float("inf")), r"rope_scaling_factor: expected a finite number, got inf"),
        (dict(rope_scaling_factor=float("nan")), r"rope_scaling_factor: expected a finite number, got nan"),
        (dict(max_queued_requests=0), r"max_queued_requests: expected an int >= 1, got 0"),
        (dict(rope_scaling="dynamic"), r"rope_scaling: expected a dict or None, got str"),
    ],
)
def test_engine_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EngineConfig(**kwargs)


def test_missing_path():
    with pytest.raises(ValueError, match=r"model: expected a Hugging Face directory, a \.gguf file .* does not exist"):
        pipeline("/no/such/model", engine_config=fp32_engine_config())


def test_unsupported_architecture(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unsupported architecture 'GPT2LMHeadModel'; lmx supports"):
        pipeline(tmp_path / "m", engine_config=fp32_engine_config())


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"])
def test_config_missing_field(model_dir, tmp_path, field):
    shutil.copytree(model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config[field]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config: .*{field}"):
        pipeline(tmp_path / "m", engine_config=fp32_engine_config())


BAD_CONFIG_VALUES = [
    ("num_attention_heads", 0, r"config: num_attention_heads: expected a positive integer, got 0"),
    ("num_attention_heads", -4, r"config: num_attention_heads: expected a positive integer, got -4"),
    ("vocab_size", -1, r"config: vocab_size: expected a positive integer, got -1"),
    ("hidden_size", "256", r"config: hidden_size: expected a positive integer, got '256'"),
    ("num_hidden_layers", 1.5, r"config: num_hidden_layers: expected a positive integer, got 1.5"),
    ("num_key_value_heads", -2, r"config: num_key_value_heads: expected a positive integer, got -2"),
    ("head_dim", 48, r"config: head_dim: the attention kernels support \[16, 32, 64, .*\], got 48"),
    ("head_dim", -64, r"config: head_dim: expected a positive integer, got -64"),
    ("sliding_window", -1, r"config: sliding_window: expected a positive integer or null, got -1"),
    ("rms_norm_eps", -1e-6, r"config: rms_norm_eps: expected a small positive number, got -1e-06"),
]


@pytest.mark.parametrize("field, value, match", BAD_CONFIG_VALUES, ids=[f"{f}={v}" for f, v, _ in BAD_CONFIG_VALUES])
def test_bad_config_values_are_refused_at_load_time(model_dir, tmp_path, field, value, match):
    shutil.copytree(model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config[field] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        pipeline(tmp_path / "m", engine_config=fp32_engine_config())


def test_supported_head_dims_are_the_kernels(monkeypatch):
    """``SUPPORTED_HEAD_DIMS`` (checked at load time) is exactly what paged attention accepts."""
    import torch

    from lmx import ops
    from lmx.models.layers import SUPPORTED_HEAD_DIMS

    def runs(head_dim: int) -> bool:
        q, cache = torch.randn(1, 1, head_dim), torch.randn(1, 16, 1, head_dim)
        try:
            ops.paged_attention(q, cache, cache.clone(), torch.zeros(1, 1, dtype=torch.int32),
                                torch.tensor([1], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32), 0.1)  # fmt: skip
        except (RuntimeError, ValueError):
            return False
        return True

    assert [d for d in range(8, 264, 8) if runs(d)] == list(SUPPORTED_HEAD_DIMS)


def test_config_not_json(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: .* is not valid JSON"):
        pipeline(tmp_path / "m", engine_config=fp32_engine_config())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "shape", "missing_tensor"])
def test_broken_safetensors(model_dir, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
        match = r"weights: (cannot read|tensor .* of) .*model\.safetensors"
    elif damage == "garbage":
        weights.write_bytes(b"\x00\x01garbage" * 100)
        match = r"weights: cannot read .*model\.safetensors as safetensors"
    elif damage == "shape":
        tensors = load_file(str(weights))
        tensors["model.norm.weight"] = tensors["model.norm.weight"][:10].clone()
        save_file(tensors, str(weights))
        match = r"weights: 'model.norm.weight' has shape \(10,\), the config implies \(256,\)"
    else:
        tensors = load_file(str(weights))
        del tensors["model.layers.1.mlp.up_proj.weight"]
        save_file(tensors, str(weights))
        match = r"weights: the checkpoint lacks 1 tensors the model needs: layers\.1\.gate_up\[up\]"
    with pytest.raises(ValueError, match=match):
        pipeline(tmp_path / "m", engine_config=fp32_engine_config())


@needs_smollm2
@pytest.mark.parametrize("size", [64, 200_000, 50_000_000])
def test_truncated_gguf(tmp_path, size):
    source = smollm2_gguf()
    with open(source, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(size))
    with pytest.raises(ValueError, match=r"(model: cannot read .*cut\.gguf as GGUF|weights: cannot dequantise)"):
        pipeline(tmp_path / "cut.gguf", engine_config=fp32_engine_config())


def test_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"model: cannot read .*x\.gguf as GGUF"):
        pipeline(tmp_path / "x.gguf", engine_config=fp32_engine_config())
    (tmp_path / "weights.bin").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"model: expected a directory or a \.gguf file"):
        pipeline(tmp_path / "weights.bin", engine_config=fp32_engine_config())

"""InternLM2 (not in transformers): a checkpoint written here in InternLM2's layout, checked against the same
weights run as a transformers Llama (InternLM2's forward is Llama's; only the names and the packed wqkv differ)."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import fp32_engine_config, fresh_hf_model, hf_greedy, hf_mean_nll, make_tiny_model, random_prompt
from safetensors.torch import save_file

from lmx import GenerationConfig, pipeline


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """InternLM2's wqkv rows: for each KV head, its query heads, then its key head, then its value head."""
    hidden = q.shape[1]
    q = q.reshape(num_kv_heads, -1, head_dim, hidden)
    k = k.reshape(num_kv_heads, 1, head_dim, hidden)
    v = v.reshape(num_kv_heads, 1, head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def write_internlm2(directory, llama) -> None:
    c = llama.config
    sd = llama.state_dict()
    tensors = {
        "model.tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for i in range(c.num_hidden_layers):
        p, out = f"model.layers.{i}.", f"model.layers.{i}."
        tensors[out + "attention.wqkv.weight"] = pack_wqkv(
            sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.v_proj.weight"],
            c.num_key_value_heads, c.head_dim,
        )  # fmt: skip
        tensors[out + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        tensors[out + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        tensors[out + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        tensors[out + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        tensors[out + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        tensors[out + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "hidden_act": "silu",
        "bias": False,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},  # InternLM2.5-7B-Chat-1M's spelling
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory):
    llama_dir = tmp_path_factory.mktemp("llama-for-internlm2")
    llama = make_tiny_model(llama_dir, "llama", "dynamic", seed=3)
    internlm_dir = tmp_path_factory.mktemp("internlm2")
    write_internlm2(internlm_dir, llama)
    return llama_dir, internlm_dir


def test_internlm2_greedy_crossing_max_positions(internlm2):
    llama_dir, internlm_dir = internlm2
    prompt = random_prompt(40, seed=7)
    expected = hf_greedy(fresh_hf_model(llama_dir), prompt, 32)
    pipe = pipeline(internlm_dir, engine_config=fp32_engine_config(max_prefill_token_num=16))
    assert pipe.engine.model_config.rope.scaling_type == "dynamic"
    assert pipe(prompt, gen_config=GenerationConfig(max_new_tokens=32, ignore_eos=True)).token_ids == expected


def test_internlm2_ppl(internlm2):
    llama_dir, internlm_dir = internlm2
    ids = random_prompt(130, seed=8)
    expected = hf_mean_nll(fresh_hf_model(llama_dir), ids)
    pipe = pipeline(internlm_dir, engine_config=fp32_engine_config(max_prefill_token_num=16))
    assert pipe.get_ppl(ids)[0] == pytest.approx(expected, rel=1e-5)


def test_internlm2_with_bias_is_refused(internlm2, tmp_path):
    _, internlm_dir = internlm2
    config = json.loads((internlm_dir / "config.json").read_text())
    config["bias"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((internlm_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="bias"):
        pipeline(tmp_path, engine_config=fp32_engine_config())

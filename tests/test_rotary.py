"""lmx.ops.rotary_embedding against lmx.reference (fp32, bf16, fp16) and against transformers' own rotary classes."""

import math

import pytest
import torch

from lmx import _C, ops, reference
from lmx.rope import RopeConfig

from .helpers import ROPE_MAX_POS, ROPE_SCALINGS, check_rotary, make_rope

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [64, 80, 96, 128, 256]
GQA_RATIOS = [1, 4, 8]


def _check(rope, q, k, positions, **kwargs):
    check_rotary(ops.rotary_embedding, rope, q, k, positions, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("scaling", list(ROPE_SCALINGS))
@pytest.mark.parametrize("is_neox", [True, False])
def test_matches_reference(dtype, head_dim, scaling, is_neox):
    T, num_kv_heads = 40, 2
    rope = make_rope(head_dim, scaling, is_neox=is_neox)
    q = torch.randn(T, num_kv_heads * 4, head_dim, dtype=dtype)
    k = torch.randn(T, num_kv_heads, head_dim, dtype=dtype)
    positions = torch.randint(0, 4 * ROPE_MAX_POS, (T,))
    _check(rope, q, k, positions)


@pytest.mark.parametrize("rotary_dim", [16, 32])
@pytest.mark.parametrize("is_neox", [True, False])
def test_partial_rotary_leaves_the_rest(rotary_dim, is_neox):
    rope = make_rope(64, "default", rotary_dim=rotary_dim, is_neox=is_neox)
    q = torch.randn(9, 4, 64)
    q0 = q.clone()
    _check(rope, q, None, torch.arange(9) * 7)
    assert torch.equal(q[..., rotary_dim:], q0[..., rotary_dim:])


@pytest.mark.parametrize("precise", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_positions_past_two_million(precise, dtype):
    rope = make_rope(128, "default", base=500000.0)
    positions = torch.tensor([0, 1, 2**20, 2**20 + 1, 2**21 - 1, 2**21, 3_000_017, 2**24 + 3])
    q = torch.randn(len(positions), 8, 128, dtype=dtype)
    k = torch.randn(len(positions), 2, 128, dtype=dtype)
    _check(rope, q, k, positions, precise=precise)


def test_precise_mode_is_exact_where_fp32_is_not():
    # fp32 pos * inv_freq at 2^21 is off by up to ulp(2^21)/2 = 0.125 rad; precise mode must track float64.
    rope = make_rope(64, "default")
    pos = torch.tensor([2**21 + 1])
    x = torch.zeros(1, 1, 64)
    x[..., :32] = 1.0  # (1, 0) pairs: after rotation they hold (cos, sin) of each angle
    precise, fast = x.clone(), x.clone()
    ops.rotary_embedding(precise, None, pos, rope, precise=True)
    ops.rotary_embedding(fast, None, pos, rope, precise=False)
    angles = pos.double() * reference.inv_freq(rope).double()
    exact = torch.cos(angles)
    assert (precise[0, 0, :32].double() - exact).abs().max() < 1e-6
    assert (fast[0, 0, :32].double() - exact).abs().max() > 1e-3  # what fp32 angles cost at 2M


@pytest.mark.parametrize("gqa", GQA_RATIOS)
def test_dynamic_base_is_per_sequence(gqa):
    """Three packed sequences; each rotates with its own dynamic-NTK base, independent of its neighbours."""
    rope = make_rope(64, "dynamic")
    lens = [5, 700, 300]  # below, well past and a bit past max_position_embeddings (256)
    cu = torch.tensor([0, 5, 705, 1005], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens])
    q = torch.randn(sum(lens), 2 * gqa, 64)
    k = torch.randn(sum(lens), 2, 64)
    rope_seq_lens = torch.tensor([5, 1024, 300])  # sequence 1 is a chunk of a 1024-token prompt
    _check(rope, q.clone(), k.clone(), positions, cu_seqlens=cu, rope_seq_lens=rope_seq_lens)
    # The same tokens alone give the same rotation: nothing depends on the batch.
    whole = q.clone()
    ops.rotary_embedding(whole, None, positions, rope, cu_seqlens=cu, rope_seq_lens=rope_seq_lens)
    alone = q[5:705].clone()
    ops.rotary_embedding(alone, None, positions[5:705], rope, rope_seq_lens=torch.tensor([1024]))
    assert torch.equal(whole[5:705], alone)
    # Without rope_seq_lens each sequence takes max(position) + 1, as transformers does.
    implicit, explicit = q.clone(), q.clone()
    ops.rotary_embedding(implicit, None, positions, rope, cu_seqlens=cu)
    ops.rotary_embedding(explicit, None, positions, rope, cu_seqlens=cu, rope_seq_lens=torch.tensor(lens))
    assert torch.equal(implicit, explicit)


def test_dynamic_base_formula():
    rope = make_rope(64, "dynamic")
    assert rope.dynamic_base(ROPE_MAX_POS) == rope.base
    L = 4 * ROPE_MAX_POS
    expected = 10000.0 * ((2.0 * L / ROPE_MAX_POS) - 1.0) ** (64 / 62)
    assert math.isclose(rope.dynamic_base(L), expected, rel_tol=1e-15)


def test_key_strides_of_a_fused_qkv_slice():
    """q and k may be views into one [T, (Hq + 2 Hkv) * D] projection output (no copies in the engine)."""
    T, Hq, Hkv, D = 11, 6, 2, 64
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D)
    q = qkv[:, : Hq * D].view(T, Hq, D)
    k = qkv[:, Hq * D : (Hq + Hkv) * D].view(T, Hkv, D)
    rope = make_rope(D, "default")
    q_ref, k_ref = q.clone(), k.clone()
    reference.rotary_embedding(q_ref, k_ref, torch.arange(T), rope)
    ops.rotary_embedding(q, k, torch.arange(T), rope)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# against transformers
# ---------------------------------------------------------------------------------------------------------------

HF_PARAMS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ROPE_MAX_POS},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": ROPE_MAX_POS,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
}


def _hf_rotary(scaling, head_dim=64, theta=10000.0, legacy=False):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    kwargs = dict(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=ROPE_MAX_POS,
        head_dim=head_dim,
    )
    params = dict(HF_PARAMS[scaling], rope_theta=theta)
    config = transformers.LlamaConfig(**kwargs, rope_parameters=params)
    # lmx reads both spellings; `legacy` feeds it the old rope_theta + rope_scaling dict.
    lmx_config = dict(kwargs, rope_theta=theta, rope_scaling=HF_PARAMS[scaling]) if legacy else config
    return LlamaRotaryEmbedding(config), RopeConfig.from_hf_config(lmx_config)


@pytest.mark.parametrize("scaling", list(HF_PARAMS))
@pytest.mark.parametrize("length_factor", [1.0, 1.5, 4.0])
@pytest.mark.parametrize("legacy", [False, True])
def test_matches_transformers(scaling, length_factor, legacy):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf, rope = _hf_rotary(scaling, legacy=legacy)
    L = int(ROPE_MAX_POS * length_factor)
    q = torch.randn(L, 4, 64)
    k = torch.randn(L, 2, 64)
    position_ids = torch.arange(L)[None]
    cos, sin = hf(q, position_ids)  # a generate() prefill of L tokens: dynamic takes base'(L)
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    q_hf, k_hf = q_hf[0].transpose(0, 1), k_hf[0].transpose(0, 1)

    # Inverse frequencies agree to 2 ulp (lmx rounds a float64 pow once; transformers uses a 1-ulp fp32 pow).
    torch.testing.assert_close(reference.inv_freq(rope, L), hf.inv_freq, rtol=2.5e-7, atol=0)
    ops.rotary_embedding(q, k, position_ids[0], rope)
    # An inv_freq 1 ulp apart moves the angle by at most pos * 2^-23 rad.
    atol = 1e-5 + 2.0**-22 * L * 4.0
    torch.testing.assert_close(q, q_hf, atol=atol, rtol=1e-5)
    torch.testing.assert_close(k, k_hf, atol=atol, rtol=1e-5)


def test_dynamic_decode_matches_transformers_step_by_step():
    """transformers' generate: prompt of L with base'(L), then token p with base'(p + 1): DESIGN §3 hf mode."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf, rope = _hf_rotary("dynamic")
    L = ROPE_MAX_POS + 10
    x = torch.randn(1, 1, 64)
    hf(x, torch.arange(L)[None])  # prefill grows the cached base to base'(L)
    for p in [L, L + 1, 2 * ROPE_MAX_POS, 3 * ROPE_MAX_POS + 7]:
        cos, sin = hf(x, torch.tensor([[p]]))
        q_hf, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos, sin)
        q = x.clone()
        ops.rotary_embedding(q, None, torch.tensor([p]), rope, rope_seq_lens=torch.tensor([p + 1]))
        torch.testing.assert_close(q, q_hf[0].transpose(0, 1), atol=1e-5 + 2.0**-22 * p * 4, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the RoPE contract between Python and C++
# ---------------------------------------------------------------------------------------------------------------


def test_rope_param_fields_match_cpp():
    """RopeConfig names every value the C++ reads, and packs them in the C++ order (lmx._C.rope_param_fields)."""
    fields = ops.rope_param_fields()
    assert fields == _C.rope_param_fields()
    for scaling in ROPE_SCALINGS:
        rope = make_rope(64, scaling, base=500000.0)
        values = rope.param_values()
        assert sorted(values) == sorted(fields) and len(fields) == len(set(fields))
        assert rope.packed == [values[name] for name in fields]
    packed = dict(zip(fields, make_rope(64, "yarn", beta_fast=16.0).packed))
    assert packed["base"] == 10000.0 and packed["beta_fast"] == 16.0 and packed["scaling_type"] == 3.0
    assert packed["original_max_position_embeddings"] == 256.0


@pytest.mark.parametrize("scaling", ["default", "dynamic"])
def test_rope_seq_len_runs(scaling):
    """Each run of tokens shares one base, and every token gets the base of its hf-mode length (DESIGN §3)."""
    rope = make_rope(64, scaling)
    rng = torch.Generator().manual_seed(1)
    for _ in range(200):
        prompt_len = int(torch.randint(1, 3 * ROPE_MAX_POS, (1,), generator=rng))
        start = int(torch.randint(0, prompt_len + 2 * ROPE_MAX_POS, (1,), generator=rng))
        end = start + int(torch.randint(1, 2 * ROPE_MAX_POS, (1,), generator=rng))
        runs = rope.rope_seq_len_runs(prompt_len, start, end)
        assert sum(n for n, _ in runs) == end - start and all(n > 0 for n, _ in runs)
        bases = [rope.dynamic_base(seq_len) for n, seq_len in runs for _ in range(n)]
        assert bases == [rope.dynamic_base(rope.rope_seq_len(prompt_len, p)) for p in range(start, end)]
        assert all(rope.dynamic_base(a) != rope.dynamic_base(b) for (_, a), (_, b) in zip(runs, runs[1:]))
    assert rope.rope_seq_len_runs(10, 0, 4) == [(4, 10)]  # a prefill chunk uses the whole prompt's length
    assert rope.rope_seq_len_runs(10, 12, 13) == [(1, 13)]  # decode at position 12
    if scaling == "default":
        assert rope.rope_seq_len_runs(10, 5, 400) == [(395, 10)]  # one base throughout
        assert not rope.base_depends_on_length and rope.context_len == ROPE_MAX_POS
    else:
        assert rope.rope_seq_len_runs(300, 250, 303) == [(50, 300), (1, 301), (1, 302), (1, 303)]
        assert rope.base_depends_on_length and rope.context_len == 2 * ROPE_MAX_POS

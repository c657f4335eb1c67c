"""Fuzzing the ops: random shapes, strides, dtypes, ids and parameters, a few hundred cases in ONE subprocess.

The subprocess must survive every case (exit 0: no segfault, no SIGFPE, no abort). In it, each case either raises a
named ``ValueError`` / ``TypeError`` ("lmx.<op>: ...") or returns what ``lmx.reference`` returns. Every case knows
what it broke: a case with a fault must raise the error of that fault's type, a case without one must succeed (so a
check that rejects valid input fails too). Deterministic: one seed. Run alone with
``python -m tests.test_fuzz_ops [num_cases]``; stderr names each case before it runs, so a crash names its case.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

SEED = 20240917
NUM_CASES = 800
OPS = ("rotary_embedding", "rotary_embedding_and_cache", "reshape_and_cache", "paged_attention")


def test_fuzz_ops_never_kill_the_process():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_fuzz_ops", str(NUM_CASES)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    last_case = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else ["(none)"]
    assert proc.returncode == 0, f"exit {proc.returncode}; last case: {last_case}\n{proc.stdout[-6000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], summary["failures"]
    assert summary["cases"] == NUM_CASES
    for op in OPS:  # both paths of every op are exercised
        assert summary["ok"][op] >= 20 and summary["rejected"][op] >= 20, summary


# ---------------------------------------------------------------------------------------------------------------
# the subprocess
# ---------------------------------------------------------------------------------------------------------------

HEAD_DIMS = [16, 32, 64, 80, 128]
BAD_HEAD_DIMS = [8, 24, 72, 100, 512]
BLOCK_SIZES = [1, 2, 16, 32]
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1


class Case:
    """One call: `run()` calls the op on the case's tensors; `expected()` computes the reference's answer on
    copies; `outputs()` returns what to compare afterwards."""

    def __init__(self, op: str):
        self.op = op
        self.fault: str | None = None
        self.error: type | None = None  # the error the fault must raise

    def fail(self, name: str, error: type = ValueError) -> None:
        self.fault, self.error = name, error


def _rand_float_tensor(torch, rng, shape, dtype, layout=None):
    """A tensor of `shape` [T, H, D] in one of the layouts an engine hands the ops (all elements distinct)."""
    T, H, D = shape
    layout = layout or rng.choice(["contiguous", "fused", "head_major", "interleaved"])
    if layout == "fused":  # a slice of a wider per-token buffer (a qkv projection)
        extra = rng.randint(1, 3)
        base = torch.randn(T, H + extra, D).to(dtype)
        start = rng.randint(0, extra)
        return base[:, start : start + H]
    if layout == "head_major":
        return torch.randn(H, T, D).to(dtype).transpose(0, 1)
    if layout == "interleaved":
        return torch.randn(T, H, 2, D).to(dtype)[:, :, rng.randint(0, 1)]
    return torch.randn(T, H, D).to(dtype)


def _random_rope(rng, rotary_dim):
    from lmx.rope import RopeConfig

    scaling = rng.choice(["default", "linear", "dynamic", "yarn", "llama3"])
    max_pos = rng.choice([16, 64, 256])
    kwargs = dict(
        rotary_dim=rotary_dim,
        base=rng.choice([10000.0, 500000.0]),
        scaling_type=scaling,
        max_position_embeddings=max_pos,
        is_neox=rng.random() < 0.5,
    )
    if scaling in ("linear", "dynamic"):
        kwargs["factor"] = rng.uniform(1.0, 4.0)
    elif scaling == "yarn":
        kwargs.update(factor=rng.uniform(1.0, 8.0), original_max_position_embeddings=rng.choice([16, 64]))
    elif scaling == "llama3":
        kwargs.update(factor=8.0, original_max_position_embeddings=64, low_freq_factor=1.0, high_freq_factor=4.0)
    return RopeConfig(**kwargs)


def _partition(torch, rng, T):
    """cu_seqlens [B + 1] int32 cutting T tokens into B >= 1 sequences (some possibly empty); B = 0 when T = 0
    half the time."""
    if T == 0 and rng.random() < 0.5:
        return torch.zeros(1, dtype=torch.int32)
    B = rng.randint(1, 4)
    cuts = sorted(rng.randint(0, T) for _ in range(B - 1))
    return torch.tensor([0, *cuts, T], dtype=torch.int32)


# -- rotary ------------------------------------------------------------------------------------------------------


def _rotary_case(torch, rng, fused: bool) -> Case:
    from lmx import reference

    case = Case("rotary_embedding_and_cache" if fused else "rotary_embedding")
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    D = rng.choice(HEAD_DIMS)
    Hkv = rng.randint(1, 3)
    Hq = Hkv * rng.choice([1, 2, 4])
    T = rng.choice([0, 1, 2, 5, 17, 40])
    rotary_dim = D if rng.random() < 0.7 else rng.choice([d for d in range(4, D + 1, 2)])
    rope = _random_rope(rng, rotary_dim)
    if fused or rng.random() < 0.3:  # q and k of one fused projection (disjoint views of one buffer)
        qkv = torch.randn(T, Hq + 2 * Hkv, D).to(dtype)
        q, k, v = qkv[:, :Hq], qkv[:, Hq : Hq + Hkv], qkv[:, Hq + Hkv :]
    else:
        q = _rand_float_tensor(torch, rng, (T, Hq, D), dtype)
        k = _rand_float_tensor(torch, rng, (T, Hkv, D), dtype) if rng.random() < 0.8 else None
        v = None
    positions = torch.randint(0, 4096, (T,))
    cu = _partition(torch, rng, T) if rng.random() < 0.6 else None
    num_seqs = 1 if cu is None else cu.numel() - 1
    rope_lens = torch.randint(1, 8192, (num_seqs,)) if rng.random() < 0.5 else None
    precise = rng.random() < 0.3
    packed = list(rope.packed)
    a = dict(q=q, k=k, v=v, positions=positions, rotary_dim=rotary_dim, packed=packed, cu=cu, rope_lens=rope_lens)
    caches = None
    if fused:
        bs = rng.choice(BLOCK_SIZES)
        num_blocks = max(1, (T + bs - 1) // bs + rng.randint(0, 2))
        kc = torch.full((num_blocks, bs, Hkv, D), float("nan")).to(dtype)
        caches = dict(kc=kc, vc=kc.clone(), slots=_slots(torch, rng, T, num_blocks * bs))

    faults = [
        ("query_float64", TypeError, lambda: a.update(q=q.double())),
        ("query_int32", TypeError, lambda: a.update(q=q.to(torch.int32))),
        ("query_2d", ValueError, lambda: a.update(q=q.reshape(T, Hq * D))),
        ("zero_q_heads", ValueError, lambda: a.update(q=q[:, :0])),
        ("bad_head_dim", ValueError, lambda: a.update(q=torch.randn(T, Hq, rng.choice(BAD_HEAD_DIMS)).to(dtype))),
        ("last_dim_strided", ValueError, lambda: a.update(q=torch.randn(T, Hq, 2 * D).to(dtype)[..., ::2])),
        ("rotary_dim", ValueError, lambda: a.update(rotary_dim=rng.choice([0, -2, 3, D + 2, 2**40]))),
        ("positions_int32", TypeError, lambda: a.update(positions=positions.int())),
        ("positions_length", ValueError, lambda: a.update(positions=torch.zeros(T + 1, dtype=torch.long))),
        ("rope_params_count", ValueError, lambda: a.update(packed=packed[: rng.randint(0, len(packed) - 1)])),
        (
            "rope_params_not_finite",
            ValueError,
            lambda: packed.__setitem__(rng.randrange(len(packed)), rng.choice([float("nan"), float("inf"), -1e400])),
        ),
        ("rope_scaling_code", ValueError, lambda: packed.__setitem__(0, rng.choice([-1.0, 0.5, 5.0, 1e300]))),
        ("rope_base", ValueError, lambda: packed.__setitem__(1, rng.choice([1.0, 0.0, -10.0]))),
        ("cu_seqlens_int64", TypeError, lambda: a.update(cu=torch.tensor([0, T]))),
        ("cu_seqlens_end", ValueError, lambda: a.update(cu=torch.tensor([0, T + 1], dtype=torch.int32))),
        ("cu_seqlens_start", ValueError, lambda: a.update(cu=torch.tensor([1, T + 1], dtype=torch.int32))),
        ("cu_seqlens_2d", ValueError, lambda: a.update(cu=torch.tensor([[0, T]], dtype=torch.int32))),
        ("rope_seq_lens_length", ValueError, lambda: a.update(rope_lens=torch.ones(num_seqs + 1, dtype=torch.long))),
        ("rope_seq_lens_int32", TypeError, lambda: a.update(rope_lens=torch.ones(num_seqs, dtype=torch.int32))),
    ]
    if num_seqs >= 1:
        faults.append(
            (
                "rope_seq_lens_zero",
                ValueError,
                lambda: a.update(rope_lens=torch.zeros(num_seqs, dtype=torch.long) - rng.randint(0, 5)),
            )
        )
    if rope.scaling_type == "dynamic":
        faults.append(("dynamic_rotary_dim_2", ValueError, lambda: a.update(rotary_dim=2)))
    if k is not None:
        faults += [
            (
                "key_dtype",
                TypeError,
                lambda: a.update(k=k.to(torch.float16 if dtype != torch.float16 else torch.bfloat16)),
            ),
            ("key_tokens", ValueError, lambda: a.update(k=torch.randn(T + 1, Hkv, D).to(dtype))),
            ("zero_kv_heads", ValueError, lambda: a.update(k=k[:, :0])),
            ("kv_heads_not_dividing", ValueError, lambda: a.update(k=torch.randn(T, Hq + 1, D).to(dtype))),
            ("key_on_meta", ValueError, lambda: a.update(k=torch.empty(k.shape, dtype=dtype, device="meta"))),
        ]
    if T >= 1:

        def positions_in_query_memory():  # non-negative floats read as int64: valid (huge) positions
            a["q"] = q.abs().contiguous()
            a["positions"] = a["q"].view(-1).view(torch.int8)[: 8 * T].view(torch.int64)

        faults += [
            ("negative_position", ValueError, lambda: positions.__setitem__(rng.randrange(T), -rng.randint(1, 2**62))),
            ("key_is_query", ValueError, lambda: a.update(k=q)),
            ("positions_in_query_memory", ValueError, positions_in_query_memory),
        ]
        if k is not None:
            faults.append(("key_overlaps_query", ValueError, lambda: a.update(k=a["q"][:, :Hkv])))
    if T >= 2:
        faults += [
            ("positions_strided", ValueError, lambda: a.update(positions=torch.arange(2 * T)[::2])),
            ("query_expanded", ValueError, lambda: a.update(q=q[:1].expand(T, Hq, D))),
        ]
        faults.append(
            (
                "cu_seqlens_decreasing",
                ValueError,
                lambda: a.update(cu=torch.tensor([0, T, T - 1, T], dtype=torch.int32)),
            )
        )
    if fused:
        faults += _cache_faults(torch, rng, caches, k, v, dtype, T, Hkv, D)
        if T >= 1:

            def query_in_cache():
                kc = caches["kc"]
                buf = torch.zeros(max(kc.numel(), T * Hq * D)).to(dtype)
                caches["kc"] = buf[: kc.numel()].view(kc.shape)
                a["q"] = buf[: T * Hq * D].view(T, Hq, D)

            faults += [
                ("value_is_key", ValueError, lambda: a.update(v=k)),
                ("query_in_k_cache", ValueError, query_in_cache),
            ]
    if rng.random() < 0.5:
        name, error, apply = rng.choice(faults)
        apply()
        case.fail(name, error)
    elif rng.random() < 0.15 and T >= 1:  # extreme but valid positions (precise: angles reduced in float64)
        positions[rng.randrange(T)] = rng.choice([2**40, INT64_MAX])
        precise = True

    def call():
        if fused:
            torch.ops.lmx.rotary_embedding_and_cache(
                a["q"],
                a["k"],
                a["v"],
                caches["kc"],
                caches["vc"],
                caches["slots"],
                a["positions"],
                a["rotary_dim"],
                rope.is_neox,
                a["packed"],
                a["cu"],
                a["rope_lens"],
                precise,
            )
        else:
            torch.ops.lmx.rotary_embedding(
                a["q"],
                a["k"],
                a["positions"],
                a["rotary_dim"],
                rope.is_neox,
                a["packed"],
                a["cu"],
                a["rope_lens"],
                precise,
            )

    def expected():
        q_ref = a["q"].clone()
        k_ref = None if a["k"] is None else a["k"].clone()
        kw = dict(cu_seqlens=a["cu"], rope_seq_lens=a["rope_lens"], precise=precise)
        if fused:
            kc_ref, vc_ref = caches["kc"].clone(), caches["vc"].clone()
            reference.rotary_embedding_and_cache(
                q_ref, k_ref, a["v"], kc_ref, vc_ref, caches["slots"], a["positions"], rope, **kw
            )
            return [q_ref, k_ref, kc_ref, vc_ref]
        reference.rotary_embedding(q_ref, k_ref, a["positions"], rope, **kw)
        return [q_ref, k_ref]

    case.call, case.expected = call, expected
    case.outputs = lambda: [a["q"], a["k"]] + ([caches["kc"], caches["vc"]] if fused else [])
    case.dtype = dtype
    return case


# -- cache ---------------------------------------------------------------------------------------------------------


def _slots(torch, rng, T, capacity):
    """T distinct slots < capacity, about a fifth of them -1 (padding)."""
    slots = torch.randperm(max(capacity, T))[:T]
    slots[slots >= capacity] = -1
    for t in range(T):
        if rng.random() < 0.2:
            slots[t] = -rng.randint(1, 2**62)
    return slots


def _cache_faults(torch, rng, c, key, value, dtype, T, Hkv, D):
    """Faults of the cache arguments (shared by reshape_and_cache and the fused op); they mutate dict `c`."""
    kc = c["kc"]
    nb, bs = kc.shape[0], kc.shape[1]
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    faults = [
        ("slot_mapping_int32", TypeError, lambda: c.update(slots=c["slots"].int())),
        ("slot_mapping_length", ValueError, lambda: c.update(slots=torch.full((T + 1,), -1))),
        (
            "cache_not_contiguous",
            ValueError,
            lambda: (
                c.update(kc=kc.transpose(0, 1).contiguous().transpose(0, 1))
                if nb > 1 and bs > 1
                else c.update(kc=torch.zeros(nb, bs, Hkv, 2 * D).to(dtype)[..., ::2])
            ),
        ),
        ("block_size", ValueError, lambda: c.update(kc=torch.zeros(nb, rng.choice([0, 3, 12, 512]), Hkv, D).to(dtype))),
        ("cache_heads", ValueError, lambda: c.update(kc=torch.zeros(nb, bs, Hkv + 1, D).to(dtype))),
        ("cache_head_dim", ValueError, lambda: c.update(kc=torch.zeros(nb, bs, Hkv, 2 * D).to(dtype))),
        ("cache_3d", ValueError, lambda: c.update(kc=kc[0])),
        ("v_cache_dtype", TypeError, lambda: c.update(vc=c["vc"].to(other))),
        ("v_cache_shape", ValueError, lambda: c.update(vc=torch.zeros(nb + 1, bs, Hkv, D).to(dtype))),
        ("v_cache_is_k_cache", ValueError, lambda: c.update(vc=kc)),
        ("v_cache_on_meta", ValueError, lambda: c.update(vc=torch.empty(kc.shape, dtype=dtype, device="meta"))),
    ]
    if nb >= 2:

        def overlapping():
            buf = torch.zeros(nb + 1, bs, Hkv, D).to(dtype)
            c.update(kc=buf[:nb], vc=buf[1:])

        faults.append(("caches_overlap", ValueError, overlapping))
    if T >= 1:

        def slot_too_big():
            c["slots"][rng.randrange(T)] = rng.choice([nb * bs, nb * bs + 1, 2**40, INT64_MAX])

        def duplicate_slot():
            c["slots"][:] = rng.randrange(nb * bs)

        faults += [
            ("slot_out_of_range", ValueError, slot_too_big),
            ("duplicate_slot", ValueError, duplicate_slot if T >= 2 else slot_too_big),
        ]
        if T * Hkv * D <= kc.numel():  # distinct valid slots 0..T-1, stored in the first bytes of k_cache
            faults.append(
                (
                    "slot_mapping_in_k_cache",
                    ValueError,
                    lambda: c.update(
                        slots=kc.view(-1).view(torch.int8)[: 8 * T].view(torch.int64).copy_(torch.arange(T))
                    ),
                )
            )
    return faults


def _reshape_and_cache_case(torch, rng) -> Case:
    from lmx import reference

    case = Case("reshape_and_cache")
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    cache_dtype = (
        rng.choice([dtype, torch.float32])
        if dtype != torch.float32
        else rng.choice([torch.float32, torch.bfloat16, torch.float16])
    )
    D, Hkv, T = rng.choice(HEAD_DIMS), rng.randint(1, 4), rng.choice([0, 1, 3, 9, 33])
    key = _rand_float_tensor(torch, rng, (T, Hkv, D), dtype)
    value = key if rng.random() < 0.1 else _rand_float_tensor(torch, rng, (T, Hkv, D), dtype)  # both read: allowed
    bs = rng.choice(BLOCK_SIZES)
    nb = max(1, (T + bs - 1) // bs + rng.randint(0, 2))
    kc = torch.full((nb, bs, Hkv, D), float("nan")).to(cache_dtype)
    c = dict(key=key, value=value, kc=kc, vc=kc.clone(), slots=_slots(torch, rng, T, nb * bs))
    faults = _cache_faults(torch, rng, c, key, value, cache_dtype, T, Hkv, D) + [
        ("key_float64", TypeError, lambda: c.update(key=key.double())),
        ("key_2d", ValueError, lambda: c.update(key=key.reshape(T, Hkv * D))),
        ("zero_kv_heads", ValueError, lambda: c.update(key=key[:, :0])),
        ("bad_head_dim", ValueError, lambda: c.update(key=torch.randn(T, Hkv, rng.choice(BAD_HEAD_DIMS)).to(dtype))),
        ("value_shape", ValueError, lambda: c.update(value=torch.randn(T, Hkv, D + 16).to(dtype))),
        ("value_dtype", TypeError, lambda: c.update(value=value.double())),
    ]
    if dtype != torch.float32:  # bf16 keys into an fp16 cache (or the reverse): no conversion path
        other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
        faults.append(("cache_dtype_pair", TypeError, lambda: c.update(kc=c["kc"].to(other), vc=c["vc"].to(other))))
    if T >= 1 and cache_dtype == dtype:
        faults.append(("key_in_k_cache", ValueError, lambda: c.update(key=c["kc"].view(-1, Hkv, D)[:T])))
    if rng.random() < 0.5:
        name, error, apply = rng.choice(faults)
        apply()
        case.fail(name, error)

    def call():
        torch.ops.lmx.reshape_and_cache(c["key"], c["value"], c["kc"], c["vc"], c["slots"])

    def expected():
        kc_ref, vc_ref = c["kc"].clone(), c["vc"].clone()
        reference.reshape_and_cache(c["key"], c["value"], kc_ref, vc_ref, c["slots"])
        return [kc_ref, vc_ref]

    case.call, case.expected, case.outputs = call, expected, lambda: [c["kc"], c["vc"]]
    case.dtype = cache_dtype
    return case


# -- attention -----------------------------------------------------------------------------------------------------


def _attention_case(torch, rng) -> Case:
    from lmx import reference
    from tests.helpers import make_paged_batch

    case = Case("paged_attention")
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    D, Hkv = rng.choice(HEAD_DIMS), rng.randint(1, 3)
    Hq = Hkv * rng.choice([1, 2, 3, 8, 16])
    bs = rng.choice(BLOCK_SIZES)
    B = rng.choice([0, 1, 2, 3, 5]) if rng.random() < 0.9 else 0
    seq_lens = [rng.randint(0, 70) for _ in range(B)]
    query_lens = [rng.choice([0, 1, 1, min(n, rng.randint(1, 12))]) if n else 0 for n in seq_lens]
    if B and rng.random() < 0.15:  # one long decode: the key range is split and merged
        seq_lens[0], query_lens[0] = rng.randint(600, 1500), 1
    if B:
        q, kc, vc, bt, sl, cu = make_paged_batch(
            seq_lens,
            query_lens,
            Hq,
            Hkv,
            D,
            bs,
            dtype,
            extra_blocks=rng.randint(0, 2),
            max_blocks=max(1, *(-(-n // bs) for n in seq_lens)) + rng.randint(0, 2),
        )
    else:
        q, kc = torch.randn(0, Hq, D).to(dtype), torch.full((2, bs, Hkv, D), float("nan")).to(dtype)
        vc, bt = kc.clone(), torch.zeros(0, rng.randint(0, 2), dtype=torch.int32)
        sl, cu = torch.zeros(0, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    T = q.shape[0]
    if rng.random() < 0.3:  # a strided query
        wide = _rand_float_tensor(torch, rng, (T, Hq, D), dtype)
        wide.copy_(q)
        q = wide
    out = _rand_float_tensor(torch, rng, (T, Hq, D), dtype)
    window = -1 if rng.random() < 0.6 else rng.randint(1, 50)
    slopes = torch.rand(Hq) * 0.5 if rng.random() < 0.3 else None
    a = dict(
        out=out, q=q, kc=kc, vc=vc, bt=bt, sl=sl, cu=cu, scale=rng.uniform(0.05, 0.3), slopes=slopes, window=window
    )
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    nb = kc.shape[0]
    faults = [
        ("zero_q_heads", ValueError, lambda: a.update(q=q[:, :0], out=out[:, :0])),
        ("zero_kv_heads", ValueError, lambda: a.update(kc=kc[:, :, :0], vc=vc[:, :, :0])),
        (
            "kv_heads_not_dividing",
            ValueError,
            lambda: a.update(kc=torch.zeros(nb, bs, Hq + 1, D).to(dtype), vc=torch.zeros(nb, bs, Hq + 1, D).to(dtype)),
        ),
        ("cache_head_dim", ValueError, lambda: a.update(kc=torch.zeros(nb, bs, Hkv, 2 * D).to(dtype))),
        ("bad_head_dim", ValueError, lambda: a.update(q=torch.randn(T, Hq, rng.choice(BAD_HEAD_DIMS)).to(dtype))),
        ("query_float64", TypeError, lambda: a.update(q=q.double(), out=out.double())),
        ("out_dtype", TypeError, lambda: a.update(out=out.to(other))),
        ("out_shape", ValueError, lambda: a.update(out=torch.zeros(T + 1, Hq, D).to(dtype))),
        ("cache_dtype", TypeError, lambda: a.update(kc=kc.to(other), vc=vc.to(other))),
        (
            "cache_not_contiguous",
            ValueError,
            lambda: a.update(vc=torch.zeros(nb + 1, bs, Hkv, 2 * D).to(dtype)[:nb, :, :, ::2]),
        ),
        (
            "block_size",
            ValueError,
            lambda: a.update(kc=torch.zeros(nb, 12, Hkv, D).to(dtype), vc=torch.zeros(nb, 12, Hkv, D).to(dtype)),
        ),
        ("block_tables_int64", TypeError, lambda: a.update(bt=bt.long())),
        (
            "block_tables_not_contiguous",
            ValueError,
            lambda: (
                a.update(bt=torch.zeros(bt.shape[1], B, dtype=torch.int32).t())
                if B >= 2 and bt.shape[1] >= 2
                else a.update(bt=bt.view(-1))
                if bt.numel()
                else a.update(bt=bt[None])
            ),
        ),
        ("seq_lens_int64", TypeError, lambda: a.update(sl=sl.long())),
        ("seq_lens_length", ValueError, lambda: a.update(sl=torch.zeros(B + 1, dtype=torch.int32))),
        ("cu_seqlens_length", ValueError, lambda: a.update(cu=torch.zeros(B + 2, dtype=torch.int32))),
        ("cu_seqlens_end", ValueError, lambda: a.update(cu=torch.cat([cu[:-1], cu[-1:] + 1]))),
        ("scale", ValueError, lambda: a.update(scale=rng.choice([float("nan"), float("inf"), 0.0, -0.1, 1e39, 1e-46]))),
        ("sliding_window", ValueError, lambda: a.update(window=rng.choice([0, -2, -(2**63)]))),
        ("alibi_shape", ValueError, lambda: a.update(slopes=torch.rand(Hq + 1))),
        ("alibi_dtype", TypeError, lambda: a.update(slopes=torch.rand(Hq, dtype=torch.float64))),
        (
            "alibi_not_finite",
            ValueError,
            lambda: a.update(slopes=torch.full((Hq,), rng.choice([float("nan"), float("inf")]))),
        ),
        ("k_cache_on_meta", ValueError, lambda: a.update(kc=torch.empty(kc.shape, dtype=dtype, device="meta"))),
    ]
    with_queries = [b for b in range(B) if query_lens[b] > 0]
    if B:

        def negative_len():
            sl[rng.randrange(B)] = -rng.randint(1, INT32_MAX)

        def too_long():
            sl[rng.randrange(B)] = rng.choice([bt.shape[1] * bs + 1, INT32_MAX])

        faults += [("seq_len_negative", ValueError, negative_len), ("seq_len_over_capacity", ValueError, too_long)]
    if with_queries:
        b = rng.choice(with_queries)
        used = -(-seq_lens[b] // bs)

        def bad_block():
            bt[b, rng.randrange(used)] = rng.choice([-1, nb, nb + 5, -(2**31), INT32_MAX])

        def fewer_than_queries():
            sl[b] = query_lens[b] - 1

        faults += [
            ("block_id_out_of_range", ValueError, bad_block),
            ("seq_len_below_queries", ValueError, fewer_than_queries),
        ]
    if kc.numel():
        faults.append(("v_cache_is_k_cache", ValueError, lambda: a.update(vc=kc)))
    if T >= 1:

        def out_in_k_cache():
            buf = torch.zeros(max(T * Hq, nb * bs * Hkv), D).to(dtype)
            a.update(kc=buf[: nb * bs * Hkv].view(nb, bs, Hkv, D), out=buf[: T * Hq].view(T, Hq, D))

        faults += [
            ("out_is_query", ValueError, lambda: a.update(out=a["q"])),
            ("out_in_k_cache", ValueError, out_in_k_cache),
        ]
        if T * Hq > 1:
            faults.append(("out_expanded", ValueError, lambda: a.update(out=out[:1, :1].expand(T, Hq, D))))
    if rng.random() < 0.5:
        name, error, apply = rng.choice(faults)
        apply()
        case.fail(name, error)
    elif B and rng.random() < 0.3:  # garbage in the block-table entries a sequence does not use: must be ignored
        for b in range(B):
            used = -(-seq_lens[b] // bs) if query_lens[b] else 0
            bt[b, used:] = torch.randint(-(2**31), 2**31 - 1, (bt.shape[1] - used,), dtype=torch.int32)

    def call():
        torch.ops.lmx.paged_attention(
            a["out"], a["q"], a["kc"], a["vc"], a["bt"], a["sl"], a["cu"], a["scale"], a["slopes"], a["window"]
        )

    def expected():
        return [
            reference.paged_attention(
                a["q"],
                a["kc"],
                a["vc"],
                a["bt"],
                a["sl"],
                a["cu"],
                a["scale"],
                alibi_slopes=a["slopes"],
                sliding_window=a["window"],
            ).to(dtype)
        ]

    case.call, case.expected, case.outputs = call, expected, lambda: [a["out"]]
    case.dtype = dtype
    return case


# -- driver --------------------------------------------------------------------------------------------------------


def _close(torch, got, want, dtype) -> bool:
    if got is None or want is None:
        return got is None and want is None
    tol = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 4e-3), torch.bfloat16: (6e-2, 2e-2)}[dtype]
    g, w = got.double().nan_to_num(7.0), want.double().nan_to_num(7.0)
    return bool(torch.allclose(g, w, atol=tol[0], rtol=tol[1]))


def main(num_cases: int) -> int:
    import torch

    import lmx.ops  # noqa: F401  (registers torch.ops.lmx.*)

    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    makers = [
        lambda: _rotary_case(torch, rng, fused=False),
        lambda: _rotary_case(torch, rng, fused=True),
        lambda: _reshape_and_cache_case(torch, rng),
        lambda: _attention_case(torch, rng),
    ]
    ok = dict.fromkeys(OPS, 0)
    rejected = dict.fromkeys(OPS, 0)
    failures = []
    for i in range(num_cases):
        case = makers[i % len(makers)]()
        print(f"case {i}: {case.op} fault={case.fault}", file=sys.stderr, flush=True)
        want = case.expected() if case.fault is None else None
        try:
            case.call()
        except (ValueError, TypeError) as e:
            msg = str(e).split("\n")[0]
            if not msg.startswith(f"lmx.{case.op}: "):
                failures.append(f"case {i} ({case.op}, fault={case.fault}): unnamed {type(e).__name__}: {msg}")
            elif case.fault is None:
                failures.append(f"case {i} ({case.op}): valid input rejected: {msg}")
            elif not isinstance(e, case.error):
                failures.append(
                    f"case {i} ({case.op}, fault={case.fault}): {type(e).__name__}, expected "
                    f"{case.error.__name__}: {msg}"
                )
            else:
                rejected[case.op] += 1
            continue
        except Exception as e:  # noqa: BLE001  (anything else is a failure of the contract)
            failures.append(f"case {i} ({case.op}, fault={case.fault}): {type(e).__name__}: {str(e)[:300]}")
            continue
        if case.fault is not None:
            failures.append(f"case {i} ({case.op}): fault {case.fault} was accepted")
            continue
        got = case.outputs()
        if not all(_close(torch, g, w, case.dtype) for g, w in zip(got, want)):
            failures.append(f"case {i} ({case.op}): result differs from lmx.reference")
        else:
            ok[case.op] += 1
    print(json.dumps({"cases": num_cases, "ok": ok, "rejected": rejected, "failures": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else NUM_CASES))

"""lmx's engine against transformers (and llama.cpp, when ``llama-cpp-python`` is installed) on the CPU: the same
model (SmolLM2-135M, the embedded GGUF), the same prompt, one run. Prefill throughput at a long context, decode
throughput at that context, peak memory.

    python bench/bench_engine.py --context 8192 --decode-tokens 32     # writes bench/results/engine-8192.json

``--dtype auto`` (the default) gives each side the dtype it would use on this machine: lmx its
``EngineConfig(dtype="auto")``, transformers the same rule (bf16 where the CPU has bf16 units, AVX512-BF16 or
AMX, fp32 elsewhere); ``float32``/``bfloat16`` force one for both. llama.cpp runs the GGUF's own quantised weights
with flash attention on and every core. Each side runs in its own subprocess so that peak memory (ru_maxrss) is its
own; ratios are lmx / other.

``--kv-cache-dtype auto int8 fp8`` runs one lmx side per KV-cache format (``lmx``, ``lmx int8``, ``lmx fp8``) in
the same alternating rounds and reports each against the ``auto`` cache; ``--no-transformers`` leaves the
transformers side out (its 16k prefill alone takes minutes):

    python bench/bench_engine.py --context 16384 --decode-tokens 64 --dtype float32 --kv-cache-dtype auto int8 \
        --no-transformers --repeats 3 --json bench/results/engine-16384-kv-quant.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def prompt_ids(context: int, vocab: int = 49152) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(100, vocab - 100, (context,), generator=g).tolist()


def machine_dtype(name: str) -> str:
    """The dtype a CPU-side runner uses here: ``auto`` -> bfloat16 with bf16 units, float32 without."""
    if name != "auto":
        return name
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx.models.layers import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def worker_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx.loaders import resolve_alias

    path = resolve_alias("smollm2-135m")
    dtype = getattr(torch, machine_dtype(args.dtype))
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    ids = torch.tensor([prompt_ids(args.context)])
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t0
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(token)]
        t0 = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
        decode_s = time.perf_counter() - t0
    return _result(args, prefill_s, decode_s, tokens, str(dtype).replace("torch.", ""))


def worker_llama_cpp(args) -> dict:
    import numpy as np
    from llama_cpp import Llama

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx.loaders import resolve_alias

    path = resolve_alias("smollm2-135m")
    llm = Llama(
        model_path=str(path),
        n_ctx=args.context + args.decode_tokens + 8,
        n_threads=os.cpu_count(),
        n_threads_batch=os.cpu_count(),
        flash_attn=True,
        verbose=False,
    )
    ids = prompt_ids(args.context)

    def greedy() -> int:  # the last evaluated token's logits (llama-cpp-python keeps scores only with logits_all)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    tokens = [greedy()]
    t0 = time.perf_counter()
    for _ in range(args.decode_tokens):
        llm.eval([tokens[-1]])
        tokens.append(greedy())
    decode_s = time.perf_counter() - t0
    return _result(args, prefill_s, decode_s, tokens, "gguf")


def worker_lmx(args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx import EngineConfig, GenerationConfig, pipeline

    block_size = 64
    session_len = args.context + args.decode_tokens + 1
    num_blocks = -(-session_len // block_size)  # exactly one session, as transformers' cache holds one
    chunk = {} if args.prefill_chunk is None else {"max_prefill_token_num": args.prefill_chunk}
    pipe = pipeline(
        "smollm2-135m",
        engine_config=EngineConfig(
            dtype=args.dtype, device="cpu", session_len=session_len, max_batch_size=1, block_size=block_size,
            num_blocks=num_blocks, kv_cache_dtype=args.kv_cache_dtype[0], **chunk,
        ),
    )  # fmt: skip
    engine = pipe.engine
    seq = engine.add_request(
        prompt_ids(args.context), GenerationConfig(max_new_tokens=args.decode_tokens + 1, ignore_eos=True)
    )
    t0 = time.perf_counter()
    while seq.num_output_tokens == 0:  # the prompt, in chunks of --prefill-chunk, and the first token
        engine.step()
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    while not seq.is_finished:
        engine.step()
    decode_s = time.perf_counter() - t0
    dtype = str(engine.dtype).replace("torch.", "")
    return {
        **_result(args, prefill_s, decode_s, seq.output_ids, dtype),
        "prefill_chunk": engine.config.max_prefill_token_num,
        "kv_cache_dtype": str(engine.runner.kv_cache.dtype).replace("torch.", ""),
    }


def _result(args, prefill_s: float, decode_s: float, tokens: list[int], dtype: str) -> dict:
    return {
        "dtype": dtype,
        "prefill_s": prefill_s,
        "prefill_tok_s": args.context / prefill_s,
        "decode_tok_s": args.decode_tokens / decode_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens": tokens,
    }


def run_worker(side: str, args, kv_cache_dtype: str = "auto") -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--context",
        str(args.context),
        "--decode-tokens",
        str(args.decode_tokens),
        "--dtype",
        args.dtype,
    ]
    if args.prefill_chunk is not None:
        cmd += ["--prefill-chunk", str(args.prefill_chunk)]
    cmd += ["--kv-cache-dtype", kv_cache_dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def have_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="auto: each side's own choice on this CPU",
    )
    parser.add_argument(
        "--prefill-chunk", type=int, default=None, help="lmx's max_prefill_token_num (default: the engine's)"
    )
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when it is installed")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all sides, alternating (medians)")
    parser.add_argument("--json", default=None, help="default: bench/results/engine-<context>.json")
    parser.add_argument(
        "--kv-cache-dtype", nargs="+", default=["auto"], choices=["auto", "int8", "fp8"],
        help="lmx's KV cache format(s); several: one lmx side each, compared with the first",
    )  # fmt: skip
    parser.add_argument("--no-transformers", action="store_true", help="leave the transformers side out")
    parser.add_argument("--worker", choices=["hf", "lmx", "llama_cpp"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = {"hf": worker_hf, "lmx": worker_lmx, "llama_cpp": worker_llama_cpp}[args.worker]
        print(json.dumps(worker(args)))
        return

    workers = {} if args.no_transformers else {"transformers": "hf"}
    kv_sides = {("lmx" if kv == "auto" else f"lmx {kv}"): kv for kv in args.kv_cache_dtype}
    workers.update({name: "lmx" for name in kv_sides})
    if have_llama_cpp() and not args.no_llama_cpp:
        workers["llama.cpp"] = "llama_cpp"
    # --repeats rounds, the sides alternating within each (a machine whose speed drifts affects all alike); each
    # figure is the median over the rounds, its min-max spread kept in the JSON.
    runs: dict[str, list[dict]] = {k: [] for k in workers}
    for _ in range(args.repeats):
        for name, worker in list(workers.items()):
            try:
                runs[name].append(run_worker(worker, args, kv_sides.get(name, "auto")))
            except subprocess.CalledProcessError as e:
                if name != "llama.cpp":
                    raise
                print(f"llama.cpp failed: {(e.stderr or '').strip().splitlines()[-1:]}", file=sys.stderr)
                del workers[name], runs[name]
    sides = {}
    for name, rs in runs.items():
        side = dict(rs[len(rs) // 2])  # tokens, dtype, chunk of one run; the figures are medians
        for key in ("prefill_tok_s", "decode_tok_s", "peak_rss_mib"):
            values = sorted(r[key] for r in rs)
            side[key] = statistics.median(values)
            side[key + "_range"] = [values[0], values[-1]]
        side["runs"] = len(rs)
        sides[name] = side
    first = next(iter(kv_sides))
    lmx, others = sides[first], [k for k in sides if k not in kv_sides]
    llama_state = (
        "included" if "llama.cpp" in sides else "skipped (--no-llama-cpp)" if args.no_llama_cpp else "not installed"
    )
    print(
        f"SmolLM2-135M, context {args.context}, {args.decode_tokens} decode steps, lmx prefill chunk "
        f"{lmx['prefill_chunk']}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"llama.cpp {llama_state}, median of {args.repeats} "
        f"alternating round(s)"
    )
    head = f"{'metric':<16}" + "".join(f"{k:>14}" for k in sides) + "".join(f"{'lmx / ' + k:>22}" for k in others)
    print(head)
    print("-" * len(head))
    print(f"{'dtype':<16}" + "".join(f"{v['dtype']:>14}" for v in sides.values()))
    ratios: dict[str, dict[str, float]] = {k: {} for k in others}
    for label, key in (
        ("prefill tok/s", "prefill_tok_s"),
        ("decode tok/s", "decode_tok_s"),
        ("peak RSS MiB", "peak_rss_mib"),
    ):
        for k in others:
            ratios[k][key] = lmx[key] / sides[k][key]
        print(
            f"{label:<16}"
            + "".join(f"{v[key]:>14.1f}" for v in sides.values())
            + "".join(f"{ratios[k][key]:>21.2f}x" for k in others)
        )
    kv_ratios = {}
    for name in list(kv_sides)[1:]:  # each KV-cache format against the first
        kv_ratios[name] = {key: sides[name][key] / lmx[key] for key in ("prefill_tok_s", "decode_tok_s")}
        same = sum(a == b for a, b in zip(sides[name]["tokens"], lmx["tokens"]))
        print(f"{name} / {first}: prefill {kv_ratios[name]['prefill_tok_s']:.2f}x, decode "
              f"{kv_ratios[name]['decode_tok_s']:.2f}x tok/s; greedy tokens equal: {same}/{len(lmx['tokens'])}")  # fmt: skip
    if args.repeats > 1:
        for label, key in (("prefill tok/s", "prefill_tok_s"), ("decode tok/s", "decode_tok_s")):
            print(
                f"{label + ' range':<16}"
                + "".join(f"{'{:.0f}-{:.0f}'.format(*v[key + '_range']):>14}" for v in sides.values())
            )
    if "transformers" in sides:
        hf = sides["transformers"]
        same = sum(a == b for a, b in zip(hf["tokens"], lmx["tokens"]))
        print(f"greedy tokens equal to transformers': {same}/{min(len(hf['tokens']), len(lmx['tokens']))}")
    result = {
        "context": args.context,
        "decode_tokens": args.decode_tokens,
        "dtype": args.dtype,
        "command": "python bench/bench_engine.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "sides": sides,
        "ratio_lmx_over": ratios,
        "kv_cache_dtypes": args.kv_cache_dtype,
        "ratio_over_first_kv_cache": kv_ratios,
    }
    path = Path(args.json or Path(__file__).resolve().parent / "results" / f"engine-{args.context}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

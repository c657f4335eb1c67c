"""One rank of a 2-rank tensor-parallel job started from the environment (torchrun, or RANK/WORLD_SIZE/MASTER_*
set by hand), as each node of a multi-node job runs it. Rank 0 prints the greedy tokens and perplexity as JSON;
rank 1 turns into a worker inside ``pipeline`` and leaves when rank 0 ends.

    python tp_job.py MODEL_DIR [die]     # die: rank 0 exits abruptly after loading (the worker must notice)
"""

from __future__ import annotations

import json
import os
import sys

from lmx import EngineConfig, GenerationConfig, pipeline


def prompts():
    import torch

    g = torch.Generator().manual_seed(21)
    return torch.randint(1, 511, (40,), generator=g).tolist(), torch.randint(1, 511, (90,), generator=g).tolist()


def main() -> None:
    directory, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "run")
    config = EngineConfig(dtype="float32", device="cpu", block_size=16, num_blocks=64, max_batch_size=16,
                          session_len=512, num_threads=1, tp=int(os.environ.get("LMX_TEST_TP", "2")))  # fmt: skip
    pipe = pipeline(directory, engine_config=config)  # rank 1 never returns from here
    if mode == "die":
        print("rank 0 ready", flush=True)
        os._exit(7)
    prompt, text = prompts()
    tokens = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=32, ignore_eos=True)).token_ids
    ppl = pipe.get_ppl(text)[0]
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "tokens": tokens, "ppl": ppl}), flush=True)


if __name__ == "__main__":
    main()

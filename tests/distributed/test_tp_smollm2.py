"""The embedded SmolLM2-135M (GGUF, tied embeddings, 9 query / 3 KV heads) split over 3 ranks under torchrun
(one node, 3 processes): the same greedy answer and perplexity as one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from engine_helpers import needs_smollm2
from test_tp_launch import TORCHRUN, free_port, job_env

SCRIPT = """
import json, os
from lmx import EngineConfig, GenerationConfig, pipeline
cfg = EngineConfig(dtype="float32", device="cpu", session_len=2048, num_blocks=32, block_size=64, num_threads=1,
                   tp=int(os.environ["LMX_TEST_TP"]))
pipe = pipeline("smollm2-135m", engine_config=cfg)
ids = pipe.encode("What is the capital of France?", do_preprocess=True)
answer = pipe(ids, gen_config=GenerationConfig(max_new_tokens=16))
text = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 12
print(json.dumps({"tokens": answer.token_ids, "ppl": pipe.get_ppl(pipe.tokenizer.encode(text))[0]}), flush=True)
"""


@pytest.mark.slow
@needs_smollm2
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_smollm2_tp3_under_torchrun(tmp_path):
    script = tmp_path / "smollm2_tp.py"
    script.write_text(SCRIPT)

    def run(cmd, tp):
        out = subprocess.run(cmd, env=job_env(LMX_TEST_TP=str(tp)), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    single = run([sys.executable, str(script)], 1)
    split = run([str(TORCHRUN), "--nproc-per-node", "3", "--master-addr", "127.0.0.1", "--master-port",
                 str(free_port()), str(script)], 3)  # fmt: skip
    assert split["tokens"] == single["tokens"]
    assert split["ppl"] == pytest.approx(single["ppl"], rel=1e-5)

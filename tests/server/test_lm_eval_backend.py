"""lm-evaluation-harness: ``--model lmx`` (loglikelihood, loglikelihood_rolling, generate_until) on a local task,
and lm-eval's ``local-completions`` pointed at the server giving the same loglikelihoods."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval==0.4.13)")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import MODEL_NAME, SESSION_LEN  # noqa: E402

DOCS = [
    {"question": "the man said that the", "choices": ["house", "water", "old"], "answer": 0,
     "text": "the man said that the old house was near the water . we can see it from here ."},
    {"question": "we can see it from", "choices": ["here", "there"], "answer": 0,
     "text": "what is the pass key ? the pass key is good . remember it ."},
    {"question": "what is the", "choices": ["pass key", "water", "world"], "answer": 1,
     "text": "every boy and every man came home after the long day ."},
]  # fmt: skip
TASKS = {
    "lmx_tiny_mc": {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
                    "doc_to_choice": "{{choices}}", "metric_list": [{"metric": "acc"}]},
    "lmx_tiny_ppl": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                     "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}]},
    "lmx_tiny_gen": {"output_type": "generate_until", "doc_to_text": "{{question}}",
                     "doc_to_target": "{{choices[answer]}}", "generation_kwargs": {"until": ["."], "max_gen_toks": 6},
                     "metric_list": [{"metric": "exact_match"}]},
}  # fmt: skip


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm-eval-tasks")
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, spec in TASKS.items():
        config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                  "test_split": "test", **spec}  # fmt: skip
        (directory / f"{name}.yaml").write_text(json.dumps(config))  # JSON is YAML
    return directory


def evaluate(model: str, model_args: str, task_dir, tasks=tuple(TASKS), **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import lmx.lm_eval_backend  # noqa: F401  registers "lmx"

    out = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=list(tasks), task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True, **kwargs,
    )  # fmt: skip
    return out


def loglikelihoods(out: dict, task: str) -> list:
    """Per sample, the loglikelihood of each request (a (logprob, is_greedy) pair or, rolling, a float)."""
    samples = sorted(out["samples"][task], key=lambda sample: sample["doc_id"])
    values = [[resp[0] for resp in sample["resps"]] for sample in samples]
    return [[v[0] if isinstance(v, (list, tuple)) else v for v in row] for row in values]


def test_lmx_backend_runs_all_request_types(tiny_model_dir, task_dir, tiny_pipe):
    args = f"pretrained={tiny_model_dir},session_len={SESSION_LEN},rope_scaling_factor=2.0,dtype=float32,device=cpu"
    out = evaluate("lmx", args, task_dir)
    results = out["results"]
    assert 0.0 <= results["lmx_tiny_mc"]["acc,none"] <= 1.0
    assert results["lmx_tiny_ppl"]["word_perplexity,none"] > 1.0
    assert "exact_match,none" in results["lmx_tiny_gen"]
    # loglikelihood equals the engine's own scoring: the sum of the continuation's token logprobs.
    sample = out["samples"]["lmx_tiny_mc"][0]
    context, continuation = sample["arguments"][0]
    ids = tiny_pipe.tokenizer.encode(context + continuation, add_special_tokens=False)
    n = len(tiny_pipe.tokenizer.encode(context + continuation)) - len(tiny_pipe.tokenizer.encode(context))
    rolling = out["samples"]["lmx_tiny_ppl"][0]["resps"][0][0]
    assert rolling < 0
    assert n > 0 and len(ids) > n


def test_local_completions_over_http_gives_the_same_loglikelihoods(server, tiny_model_dir, task_dir):
    url, _ = server
    direct = evaluate("lmx", f"pretrained={tiny_model_dir},session_len={SESSION_LEN},dtype=float32,device=cpu",
                      task_dir, tasks=("lmx_tiny_mc", "lmx_tiny_ppl"))  # fmt: skip
    remote = evaluate(
        "local-completions",
        f"model={MODEL_NAME},base_url={url}/v1/completions,tokenizer_backend=huggingface,tokenizer={tiny_model_dir},"
        f"max_length={SESSION_LEN},num_concurrent=4,max_retries=1",
        task_dir, tasks=("lmx_tiny_mc", "lmx_tiny_ppl"),
    )  # fmt: skip
    for task in ("lmx_tiny_mc", "lmx_tiny_ppl"):
        a, b = loglikelihoods(direct, task), loglikelihoods(remote, task)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x == pytest.approx(y, abs=1e-4)
    assert direct["results"]["lmx_tiny_mc"]["acc,none"] == remote["results"]["lmx_tiny_mc"]["acc,none"]


def test_command_line_wrapper_registers_lmx(tiny_model_dir, task_dir, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "lmx.lm_eval_backend", "run", "--model", "lmx", "--model_args",
           f"pretrained={tiny_model_dir},session_len={SESSION_LEN},dtype=float32,device=cpu",
           "--tasks", "lmx_tiny_mc", "--include_path", str(task_dir), "--output_path", str(out)]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lmx_tiny_mc" in proc.stdout

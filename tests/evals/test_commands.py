"""Every ``lmx`` command end to end on a tiny random Llama (fast), and bad input: one line, non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmx.cli import main

from .conftest import TINY_MAX_POSITIONS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()


def test_passkey_command(tiny_model, tmp_path, capsys):
    status, out, err = run(
        capsys, "passkey", "--model", tiny_model, "--lengths", 200, 400, "--rounds", 2,
        "--rope-scaling-factor", 1, 2, "--max-new-tokens", 4, "--output", tmp_path, "--seed", 3,
    )  # fmt: skip
    assert status == 0, err
    assert "model" in out and "dynamic:2" in out and f"trained context {TINY_MAX_POSITIONS}" in out
    result = json.loads((tmp_path / "passkey.json").read_text())
    assert [(s["setting"], s["length"]) for s in result["summary"]] == [
        ("model", 200), ("model", 400), ("dynamic:2", 200), ("dynamic:2", 400)
    ]  # fmt: skip
    assert len(result["items"]) == 8 and result["config"]["seed"] == 3
    assert_png(tmp_path / "passkey.png")
    # deterministic with --seed: the same run gives the same items
    status, _, _ = run(
        capsys, "passkey", "--model", tiny_model, "--lengths", 200, 400, "--rounds", 2,
        "--rope-scaling-factor", 1, 2, "--max-new-tokens", 4, "--output", tmp_path / "again", "--seed", 3,
    )  # fmt: skip
    again = json.loads((tmp_path / "again" / "passkey.json").read_text())
    strip = lambda items: [{k: v for k, v in it.items() if k != "seconds"} for it in items]  # noqa: E731
    assert strip(again["items"]) == strip(result["items"])


def test_niah_command_heatmap_grid(tiny_model, tmp_path, capsys):
    status, out, err = run(
        capsys, "niah", "--model", tiny_model, "--lengths", 150, 300, "--depths", 0, 50, 100,
        "--max-new-tokens", 4, "--output", tmp_path,
    )  # fmt: skip
    assert status == 0, err
    result = json.loads((tmp_path / "niah.json").read_text())
    grid = result["grids"]["model"]
    assert len(grid) == 3 and all(len(row) == 2 for row in grid)  # depth rows x length columns
    assert all(v in (0.0, 100.0) for row in grid for v in row)
    assert len(result["items"]) == 6 and "mean" in out
    assert_png(tmp_path / "niah.png")


def test_ppl_command(tiny_model, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The grass is green. The sky is blue. The pass key is 12345. " * 60)
    status, out, err = run(
        capsys, "ppl", "--model", tiny_model, "--text", text, "--lengths", 64, 128, 512, "--output", tmp_path,
    )  # fmt: skip
    assert status == 0, err
    result = json.loads((tmp_path / "ppl.json").read_text())
    assert list(result["curves"]) == ["default", "linear:2", "dynamic:2"]
    for curve in result["curves"].values():
        assert all(v > 1.0 for v in curve.values())
    # below the trained length dynamic NTK is default RoPE
    assert result["curves"]["dynamic:2"]["64"] == pytest.approx(result["curves"]["default"]["64"], rel=1e-3)
    assert_png(tmp_path / "ppl.png")


def test_repeat_command(tiny_model, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The grass is green. The sky is blue. " * 20)
    (docs / "b.md").write_text("Here we go. There and back again. " * 30)
    status, out, err = run(
        capsys, "repeat", "--model", tiny_model, "--docs", docs, "--n", 5, "--max-new-tokens", 8,
        "--session-len", 200, "--output", tmp_path,
    )  # fmt: skip
    assert status == 0, err
    result = json.loads((tmp_path / "repeat.json").read_text())
    assert [it["target"] for it in result["items"]] == ["green. The sky is blue.", "go. There and back again."]
    assert all(0.0 <= it["score"] <= 1.0 for it in result["items"])
    assert result["items"][1]["words_dropped"] > 0  # b.md does not fit in 200 tokens
    assert "mean ratio" in out


LONGBENCH_LINES = [
    {"input": "Where do cats sit?", "context": "The cat sat on the mat. " * 30, "answers": ["on the mat"],
     "all_classes": None, "length": 180},
    "{not json",
    {"input": "What is blue?", "context": "The sky is blue. " * 200, "answers": ["the sky"], "all_classes": None,
     "length": 800},
]  # fmt: skip


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_longbench_command_skips_malformed_line(tiny_model, tmp_path, capsys):
    data = tmp_path / "hotpotqa.jsonl"
    write_jsonl(data, LONGBENCH_LINES)
    status, out, err = run(
        capsys, "longbench", "--model", tiny_model, "--data", data, "--max-length", 180, "--session-len", 256,
        "--output", tmp_path,
    )  # fmt: skip
    assert status == 1  # the good lines scored, but a line was bad
    assert f"{data}:2: malformed JSON" in err and "Traceback" not in err
    result = json.loads((tmp_path / "longbench.json").read_text())
    scored = result["results"]["model"]["hotpotqa"]
    assert [it["_line"] for it in scored["items"]] == [1, 3]
    assert scored["items"][1]["tokens_before_truncation"] > 180  # the long one was truncated in the middle
    assert "hotpotqa" in out and "qa_f1" in out


def test_longbench_score_only(tmp_path, capsys):
    data = tmp_path / "preds.jsonl"
    write_jsonl(data, [{"pred": "Paragraph 2", "answers": ["Paragraph 2"]}, {"pred": "4", "answers": ["Paragraph 2"]}])
    status, out, _ = run(capsys, "longbench", "--score-only", "--task", "passage_retrieval_en", "--data", data)
    assert status == 0
    assert "50.00" in out


def test_generate_and_chat_commands(tiny_model, capsys, monkeypatch):
    import io

    status, out, err = run(capsys, "generate", "The grass is", "--model", tiny_model, "--max-new-tokens", 5)
    assert status == 0, err
    assert "5 new tokens" in err
    sampled = [run(capsys, "generate", "The sky", "--model", tiny_model, "--max-new-tokens", 6, "--temperature",
                   "1.0", "--seed", 11)[1] for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]  # deterministic with --seed
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nagain\n"))
    status, out, err = run(capsys, "chat", "--model", tiny_model, "--max-new-tokens", 3, "--verbose")
    assert status == 0, err
    assert err.count("new tokens") == 2


# -- bad input: a clear one-line message and a non-zero exit, before any model is loaded -----------------------------


@pytest.mark.parametrize("argv,message", [
    (["niah", "--haystack", "{tmp}/missing.txt"], "--haystack: expected a text file, got '{tmp}/missing.txt', which does not exist"),
    (["niah", "--haystack", "{tmp}/empty.txt"], "--haystack: expected some text in '{tmp}/empty.txt', got an empty file"),
    (["ppl", "--text", "{tmp}/empty.txt"], "--text: expected some text"),
    (["repeat", "--docs", "{tmp}/missing.txt"], "--docs: expected a text file"),
    (["passkey", "--lengths", "8k", "--session-len", "4k"], "--lengths: [8192] exceed --session-len 4096"),
    (["niah", "--depths", "50", "120"], "--depths: expected percents from 0 to 100, got [120.0]"),
    (["longbench", "--data", "{tmp}/nosuchtask.jsonl"], "task: expected one of"),
    (["longbench", "--data", "{tmp}/x.jsonl", "--task", "nosuchtask"], "got 'nosuchtask'"),
    (["passkey", "--rope", "ntk:2"], "--rope: expected one of model, default, dynamic, linear, yarn"),
    (["passkey", "--model", "{tmp}/no-model", "--lengths", "300"], "model: expected a Hugging Face directory"),
])  # fmt: skip
def test_bad_input_is_one_line_and_nonzero(argv, message, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "nosuchtask.jsonl").write_text('{"answers": ["x"]}\n')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    status, out, err = run(capsys, *argv)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmx {argv[0]}: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["passkey", "--lengths", "lots"])
    assert exc.value.code == 2
    assert "expected a token count like 4096 or 4k" in capsys.readouterr().err


def test_console_entry_point_help():
    """``python -m lmx`` works and lists every command (``lmx`` is the same function)."""
    out = subprocess.run([sys.executable, "-m", "lmx", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("passkey", "niah", "ppl", "repeat", "longbench", "generate", "chat", "demo"):
        assert command in out


@pytest.mark.parametrize("command, extra", [
    ("passkey", ["--lengths", 200, 300, "--rounds", 2, "--max-new-tokens", 6]),
    ("niah", ["--lengths", 150, 300, "--depths", 0, 100, "--max-new-tokens", 6]),
])  # fmt: skip
def test_batched_evals_equal_one_prompt_at_a_time(tiny_model, tmp_path, capsys, command, extra):
    """Each setting's prompts go to the engine as one batch; greedy answers equal those of one at a time."""
    results = []
    for batch in (1, 4):
        out = tmp_path / f"batch{batch}"
        status, _, err = run(capsys, command, "--model", tiny_model, *extra, "--max-batch-size", batch,
                             "--output", out)  # fmt: skip
        assert status == 0, err
        items = json.loads((out / f"{command}.json").read_text())["items"]
        results.append([{k: v for k, v in it.items() if k != "seconds"} for it in items])
    assert results[0] == results[1] and len(results[0]) == 4


def test_engine_options_are_the_same_for_every_front_end():
    """serve, the evaluations and generate build their engine options from EngineConfig's fields, once."""
    import dataclasses

    from lmx import EngineConfig
    from lmx.cli import build_parser, engine_config_from_args, engine_flag, parse_engine_value

    parser = build_parser()
    argv = ["--session-len", "4k", "--max-batch-size", "3", "--block-size", "32", "--num-blocks", "9",
            "--cache-max-entry-count", "0.5", "--max-prefill-token-num", "77", "--dtype", "float32",
            "--device", "cpu", "--threads", "2", "--no-prefix-caching"]  # fmt: skip
    expected = EngineConfig(session_len=4096, max_batch_size=3, block_size=32, num_blocks=9,
                            cache_max_entry_count=0.5, max_prefill_token_num=77, dtype="float32", device="cpu",
                            num_threads=2, enable_prefix_caching=False)  # fmt: skip
    serve = engine_config_from_args(parser.parse_args(["serve", *argv, "--rope-scaling-factor", "2",
                                                       "--max-queued-requests", "5"]))  # fmt: skip
    assert serve == dataclasses.replace(expected, rope_scaling_factor=2.0, max_queued_requests=5)
    assert engine_config_from_args(parser.parse_args(["serve", "--rope", "linear:4"])).rope_scaling == {
        "rope_type": "linear", "factor": 4.0}  # fmt: skip
    commands = [["passkey"], ["niah"], ["ppl"], ["repeat", "--docs", "x"], ["longbench", "--data", "x"], ["generate"]]
    for command in commands:
        args = parser.parse_args([*command, *argv])
        assert engine_config_from_args(args) == expected, command
        assert not hasattr(args, "batch_size")  # one name for the batch: --max-batch-size
    with pytest.raises(SystemExit):  # argparse's usage error: a fraction must be in (0, 1]
        parser.parse_args(["serve", "--cache-max-entry-count", "2"])
    assert engine_flag("num_threads") == "--threads" and engine_flag("rope_scaling") == "--rope"
    # lm-eval's model_args read the same way
    assert parse_engine_value("session_len", "16k") == 16384 and parse_engine_value("num_blocks", "none") is None
    assert parse_engine_value("rope_scaling", "dynamic:2") == {"rope_type": "dynamic", "factor": 2.0}
    assert parse_engine_value("enable_prefix_caching", "false") is False
    with pytest.raises(ValueError, match="block_size"):
        parse_engine_value("block_size", "zero")

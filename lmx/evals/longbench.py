"""LongBench-style evaluation from local JSONL files in LongBench's format (seed 001).

One file per task, named after it (``hotpotqa.jsonl``; LongBench-E's ``hotpotqa_e.jsonl`` too) or named with
``--task``. Each line: ``{"input", "context", "answers": [...], "all_classes", "length", ...}``. The prompt is the
task's LongBench template; a prompt longer than ``--max-length`` tokens keeps its first and last
``int(max_length / 2)`` tokens, before the chat template, exactly as LongBench's ``pred.py``; generation is greedy
with the task's ``max_new_tokens``; the score is LongBench's: the best metric value over the answers, first line
only for trec/triviaqa/samsum/lsht, ``round(100 * mean, 2)`` per task. A malformed line is reported with its
number and skipped; the other lines still score. ``--score-only`` scores files that already have a ``pred`` field
(the files LongBench's ``pred.py`` writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from . import options, report
from .common import PipelineFactory, RopeSetting, each_setting, generate_batch
from .longbench_tasks import TASKS, Task, get_task
from .metrics import METRICS

LENGTH_BUCKETS = (("0-4k", 0, 4000), ("4-8k", 4000, 8000), ("8k+", 8000, float("inf")))  # LongBench-E


@dataclasses.dataclass
class TaskFile:
    task: Task
    path: str
    items: list[dict[str, Any]]  # each with "_line": its line number
    problems: list[str]  # "file:line: what is wrong"


def load_task_file(path: str, task_name: str | None = None, *, need_pred: bool = False) -> TaskFile:
    """Read one JSONL file; bad lines become ``problems`` (with their line numbers), good lines ``items``."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--data: expected a JSONL file, got {path!r}, which does not exist")
    task = get_task(task_name or file.name.split(".")[0])
    items, problems = [], []
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno})")
                continue
            problem = _check_item(item, task, need_pred)
            if problem:
                problems.append(f"{path}:{number}: {problem}")
                continue
            item["_line"] = number
            items.append(item)
    if not items and not problems:
        raise ValueError(f"--data: expected JSON lines in {path!r}, got an empty file")
    return TaskFile(task, path, items, problems)


def _check_item(item: Any, task: Task, need_pred: bool) -> str | None:
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        return f"expected 'answers' as a non-empty list of strings, got {answers!r:.60}"
    if need_pred:
        return None if isinstance(item.get("pred"), str) else "expected a string 'pred' (--score-only)"
    try:
        task.template.format(**item)
    except (KeyError, IndexError) as e:
        return f"expected the field {e} that the {task.name} template uses"
    if task.metric == "classification" and not item.get("all_classes"):
        return "expected 'all_classes' (the classification metric needs them)"
    return None


def truncate_middle(tokenizer: Any, prompt: str, max_length: int) -> tuple[str, int]:
    """LongBench ``pred.py``: past ``max_length`` tokens keep the first and last ``int(max_length/2)`` tokens.

    Tokens are counted as ``pred.py`` does (``tokenizer(prompt).input_ids``, special tokens included); the two
    halves are decoded with ``skip_special_tokens=True`` and concatenated. Returns ``(prompt, tokens before)``.
    """
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= max_length:
        return prompt, len(ids)
    half = int(max_length / 2)
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-half:], skip_special_tokens=True)
    return head + tail, len(ids)


def score_item(task: Task, prediction: str, answers: list[str], all_classes: Any = None) -> float:
    """LongBench ``eval.py``'s score of one prediction: the best over the answers."""
    if task.first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = METRICS[task.metric]
    return max(metric(prediction, answer, all_classes=all_classes) for answer in answers)


def task_scores(task: Task, items: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [score_item(task, it["pred"], it["answers"], it.get("all_classes")) for it in items]
    for it, s in zip(items, scores):
        it["score"] = s
    out: dict[str, Any] = {"score": round(100 * sum(scores) / len(scores), 2) if scores else None}
    if all(isinstance(it.get("length"), (int, float)) for it in items) and items:
        buckets = {}
        for name, low, high in LENGTH_BUCKETS:
            inside = [s for it, s in zip(items, scores) if low <= it["length"] < high]
            buckets[name] = round(100 * sum(inside) / len(inside), 2) if inside else None
        out["by_length"] = buckets
    return out


def predict(
    pipe: Any, task_file: TaskFile, *, max_length: int, chat_template: bool, seed: int, bar: Any, setting: str
) -> None:
    """Fill ``item["pred"]`` for every item of the file."""
    from lmx.engine import GenerationConfig

    task = task_file.task
    gen = GenerationConfig(
        max_new_tokens=task.max_new_tokens, do_sample=False, random_seed=seed,
        stop_words=["\n"] if task.stop_at_newline else None,
    )  # fmt: skip
    use_chat = chat_template and task.chat and bool(getattr(pipe.tokenizer, "chat_template", None))
    batch = []
    bar.set_postfix_str(f"{setting} {task.name}")
    for item in task_file.items:
        prompt, tokens = truncate_middle(pipe.tokenizer, task.template.format(**item), max_length)
        ids = pipe.encode([{"role": "user", "content": prompt}]) if use_chat else pipe.encode(prompt)
        if getattr(pipe, "session_len", None) is not None and len(ids) >= pipe.session_len:
            raise ValueError(
                f"--max-length: {task_file.path}:{item['_line']} has {len(ids)} prompt tokens after truncation, the "
                f"session holds {pipe.session_len}; lower --max-length or raise --session-len"
            )
        item["prompt_tokens"], item["tokens_before_truncation"] = len(ids), tokens
        batch.append(list(ids))
    texts, seconds = generate_batch(pipe, batch, gen, bar)
    for item, text in zip(task_file.items, texts):
        item["pred"], item["seconds"] = text, round(seconds, 3)


def run_longbench(
    factory: PipelineFactory | None,
    settings: list[RopeSetting],
    task_files: list[TaskFile],
    *,
    max_length: int | None = None,
    chat_template: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict (unless ``factory`` is None: score the files' own ``pred``) and score; one result per setting."""
    results: dict[str, Any] = {}
    names = [s.name for s in settings] if factory is not None else ["predictions"]
    if factory is None:
        results["predictions"] = {
            tf.task.name: {**task_scores(tf.task, tf.items), "items": tf.items} for tf in task_files
        }
        return {"settings": names, "results": results, "problems": [p for tf in task_files for p in tf.problems]}
    bar = report.progress(len(settings) * sum(len(tf.items) for tf in task_files), "longbench")
    try:
        for setting, pipe in each_setting(factory, settings):
            limit = max_length or max(256, pipe.session_len - 640)
            per_task = {}
            for tf in task_files:
                items = [dict(it) for it in tf.items]
                predict(pipe, dataclasses.replace(tf, items=items), max_length=limit, chat_template=chat_template,
                        seed=seed, bar=bar, setting=setting.name)  # fmt: skip
                per_task[tf.task.name] = {**task_scores(tf.task, items), "max_length": limit, "items": items}
            results[setting.name] = per_task
    finally:
        bar.close()
    return {"settings": names, "results": results, "problems": [p for tf in task_files for p in tf.problems]}


def print_and_save(result: dict[str, Any], task_files: list[TaskFile], output: Any, header: dict[str, Any]) -> list:
    for problem in result["problems"]:
        print(f"skipped {problem}", file=sys.stderr)
    settings = result["settings"]
    rows = []
    for tf in task_files:
        name = tf.task.name
        row: list[Any] = [name, tf.task.metric, len(tf.items)]
        row += [result["results"][s][name]["score"] for s in settings]
        rows.append(row)
    report.print_table(["task", "metric", "items"] + settings, rows, title="LongBench-style scores (0-100)")
    return [report.write_json(output, "longbench.json", {**header, **result})] if output is not None else []


# -- command line ----------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "longbench", help="LongBench-style tasks from local JSONL files: templates, middle truncation, metrics",
        description=(__doc__ or "").split("\n\n", 1)[-1].replace("``", "'"),
        epilog=f"tasks: {', '.join(TASKS)}. example: lmx longbench --data data/hotpotqa.jsonl --output out/",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument("--data", nargs="+", required=True, metavar="FILE", help="JSONL files in LongBench's format")
    parser.add_argument("--task", default=None, help="the task of every --data file (default: from each file's name)")
    parser.add_argument(
        "--max-length", type=options.parse_length, default=None,
        help="prompt tokens kept by middle truncation (LongBench's model2maxlen; default: session length - 640)",
    )  # fmt: skip
    parser.add_argument(
        "--chat-template", action=argparse.BooleanOptionalAction, default=True,
        help="use the model's chat template for the tasks where LongBench's pred.py uses a chat prompt",
    )  # fmt: skip
    parser.add_argument("--score-only", action="store_true", help="score the files' 'pred' fields; run no model")
    options.add_model_options(parser)
    options.add_rope_options(parser)
    options.add_common_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.task is not None:
        get_task(args.task)
    task_files = [load_task_file(p, args.task, need_pred=args.score_only) for p in args.data]
    if not any(tf.items for tf in task_files):
        for tf in task_files:
            for problem in tf.problems:
                print(f"skipped {problem}", file=sys.stderr)
        raise ValueError("--data: no line of the given files could be scored")
    scored = [tf for tf in task_files if tf.items]
    output = report.prepare_output(args.output)
    settings = options.settings_from_args(args)
    factory = None if args.score_only else options.factory_from_args(args, session_len=args.session_len)
    result = run_longbench(factory, settings, scored, max_length=args.max_length, chat_template=args.chat_template,
                           seed=args.seed)  # fmt: skip
    result["problems"] = [p for tf in task_files for p in tf.problems]
    header = options.run_header(args, "longbench", data=args.data, max_length=args.max_length)
    report.say_written(print_and_save(result, scored, output, header))
    if result["problems"]:  # the good lines scored, but the run was not clean: say so in the exit status
        print(f"lmx longbench: error: {len(result['problems'])} line(s) skipped (listed above)", file=sys.stderr)
        return 1
    return 0

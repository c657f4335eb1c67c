"""Launching and failure: two nodes' worth of torchrun over TCP on 127.0.0.1, a killed worker, a vanished rank 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_helpers import fp32_engine_config
from test_tp_parity import GREEDY

from lmx import GenerationConfig, pipeline
from lmx.distributed.runtime import WorkerLostError

JOB = Path(__file__).resolve().parent / "tp_job.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
DETECT_WITHIN = 20.0  # seconds from a worker's death to the engine's error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", LMX_TP_TIMEOUT="60", **extra)
    return env


def reference(directory) -> dict:
    out = subprocess.run([sys.executable, str(JOB), str(directory)], env=job_env(LMX_TEST_TP="1"),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_two_nodes_over_tcp_with_torchrun(tp_models):
    """The README's multi-node command, both 'nodes' on this machine: torchrun --nnodes 2 --node-rank i."""
    directory = tp_models("llama-default")
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes",
                "2",
                "--node-rank",
                str(i),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                str(JOB),
                str(directory),
            ],
            env=job_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    result = json.loads(outs[0][0].strip().splitlines()[-1])
    assert outs[1][0].strip() == ""  # rank 1 only ran the model
    expected = reference(directory)
    assert result["tokens"] == expected["tokens"]
    assert result["ppl"] == pytest.approx(expected["ppl"], rel=1e-5)


def test_worker_leaves_when_rank0_vanishes(tp_models):
    """Two env:// processes (RANK/WORLD_SIZE/MASTER_ADDR=127.0.0.1); rank 0 exits abruptly: rank 1 must not hang."""
    directory = tp_models("llama-default")
    port = str(free_port())
    base = dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, LOCAL_WORLD_SIZE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(JOB), str(directory), "die"],
            env=job_env(RANK=str(i), **base),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    out0, _ = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 7 and "rank 0 ready" in out0
    start = time.monotonic()
    _, err1 = procs[1].communicate(timeout=90)
    assert procs[1].returncode != 0
    assert time.monotonic() - start < DETECT_WITHIN, err1[-2000:]


def test_killed_worker_is_detected(tp_models):
    directory = tp_models("llama-default")
    prompt = [3, 4, 5, 6]
    with pipeline(directory, engine_config=fp32_engine_config(num_threads=1)) as single:
        expected = single(prompt, gen_config=GREEDY).token_ids
    pipe = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))
    assert pipe(prompt, gen_config=GREEDY).token_ids == expected
    [worker] = pipe.engine._tp.procs
    os.kill(worker.pid, signal.SIGKILL)
    start = time.monotonic()
    message = rf"tp: worker rank 1 \(pid {worker.pid}\) died \(killed by SIGKILL\)"
    with pytest.raises(WorkerLostError, match=message):
        pipe(prompt, gen_config=GREEDY)
    assert time.monotonic() - start < DETECT_WITHIN
    with pytest.raises(WorkerLostError, match=message):  # and at once from then on
        pipe(prompt, gen_config=GREEDY)
    # A new tensor-parallel engine starts fresh workers.
    with pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2)) as again:
        assert again(prompt, gen_config=GREEDY).token_ids == expected


def test_worker_killed_during_generation(tp_models):
    directory = tp_models("llama-default")
    pipe = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))
    [worker] = pipe.engine._tp.procs
    long = GenerationConfig(max_new_tokens=400, ignore_eos=True)
    start = None
    with pytest.raises(WorkerLostError, match=r"tp: worker rank 1 .*died"):
        for i, _ in enumerate(pipe.stream_infer([[7, 8, 9]] * 4, gen_config=long)):
            if i == 8:  # a few decode steps in
                os.kill(worker.pid, signal.SIGKILL)
                start = time.monotonic()
    assert start is not None and time.monotonic() - start < DETECT_WITHIN


def test_stuck_worker_times_out(tp_models, monkeypatch):
    """A worker that stops answering (SIGSTOP) is caught by the collective timeout, not waited for forever."""
    monkeypatch.setenv("LMX_TP_TIMEOUT", "4")  # a new timeout: a new pair of ranks
    directory = tp_models("llama-default")
    pipe = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))
    [worker] = pipe.engine._tp.procs
    assert len(pipe([1, 2, 3], gen_config=GREEDY).token_ids) == GREEDY.max_new_tokens
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(WorkerLostError, match=r"tp: a collective timed out after 4 s \(LMX_TP_TIMEOUT\)"):
            pipe([1, 2, 3], gen_config=GREEDY)
        assert time.monotonic() - start < 4 + DETECT_WITHIN
    finally:
        os.kill(worker.pid, signal.SIGKILL)


def listening_addresses(pids) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state that processes ``pids`` hold (Linux /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(fields[1].split(":")[0])
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_ranks_listen_on_loopback_only(tp_models):
    directory = tp_models("llama-default")
    with pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2)) as pipe:
        pipe([1, 2, 3], gen_config=GREEDY)
        pids = [os.getpid()] + [w.pid for w in pipe.engine._tp.procs]
        addresses = listening_addresses(pids)
    assert addresses and addresses <= {"0100007F"}, addresses  # 127.0.0.1, little-endian hex


def test_interrupted_step_breaks_the_engine(tp_models, monkeypatch):
    """Ctrl-C on rank 0 inside a step leaves the workers inside it: the engine says so instead of going on."""
    directory = tp_models("llama-default")
    pipe = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipe.engine.runner, "model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipe([1, 2, 3], gen_config=GREEDY)
    monkeypatch.undo()
    with pytest.raises(WorkerLostError, match="tp: a step was interrupted on rank 0; the ranks are out of step"):
        pipe([1, 2, 3], gen_config=GREEDY)

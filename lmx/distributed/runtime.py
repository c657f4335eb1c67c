"""The tensor-parallel processes: rank 0 (the engine: scheduler, sampling) and the workers (the model only).

Launch. A plain process (``pipeline(..., tp=N)``, ``lmx serve --tp N``, the evaluations) starts ``N - 1`` workers
with ``torch.multiprocessing`` (spawn) on this machine, rendezvous through a ``torch.distributed.TCPStore`` on
127.0.0.1 at a free port. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, one
node or several) the job's ranks are the tensor-parallel ranks: rank 0 runs the engine, every other rank turns
into a worker inside its first ``LLMEngine`` and leaves the process when rank 0 ends (``WORLD_SIZE`` must equal
``tp``). Backend: Gloo on the CPU, NCCL on CUDA.

Protocol. Rank 0 broadcasts a header (``int64[8]``: a command and its fields), then the command's payload:

- ``INIT``: a pickled ``{model, config, dtype}``; every rank loads its shard and the ranks ``all_gather_object``
  their status (an error or their free memory).
- ``ALLOC``: the number of KV blocks; each rank allocates its heads' cache and reports its bytes.
- ``STEP``: the step's batch (token ids and the ``ForwardContext`` tensors packed into one int64 tensor); every
  rank runs the model, whose row-parallel layers all-reduce. Only rank 0 computes logits.
- ``NOOP`` (a heartbeat while the engine is idle, so an idle worker's wait never times out), ``CLOSE`` (drop the
  engine), ``EXIT``.

Failure. Collectives have a timeout (``LMX_TP_TIMEOUT`` seconds, default 600). Rank 0 watches its spawned workers'
process sentinels; a worker that dies marks the runtime broken at once, and every later step raises
``WorkerLostError`` naming the rank, pid and exit status (a collective that fails or times out does the same).
A worker leaves when rank 0's process goes away (its parent pid changes, or a collective fails).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import logging
import math
import multiprocessing.connection
import os
import pickle
import signal
import socket
import threading
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("lmx.tp")

NOOP, INIT, ALLOC, STEP, CLOSE, EXIT = range(6)
HEADER_LEN = 8
DEFAULT_TIMEOUT = 600.0
_READY_KEY = "lmx_tp_ready_{}"


class WorkerLostError(ConnectionError):
    """A tensor-parallel rank died or stopped answering: this engine cannot run another step."""


def collective_timeout() -> float:
    """Seconds a collective may wait (``LMX_TP_TIMEOUT``, default 600)."""
    text = os.environ.get("LMX_TP_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"LMX_TP_TIMEOUT: expected a number of seconds > 0, got {text!r}")
    return value


def launched_by_torchrun() -> bool:
    """Whether this process is a rank of a ``torchrun`` (or other ``env://``) job."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def torchrun_rank() -> int | None:
    return int(os.environ["RANK"]) if launched_by_torchrun() else None


def _check_world(tp: int) -> int:
    world = int(os.environ["WORLD_SIZE"])
    if world != tp:
        raise ValueError(f"tp: expected the torchrun job's WORLD_SIZE ({world}) ranks, got tp={tp}")
    return world


def check_local_size(size: int, device: torch.device) -> None:
    """``ValueError`` naming ``tp`` when ``size`` ranks do not fit on this machine (one per core or GPU)."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if size > count:
            raise ValueError(f"tp: expected at most {count} ranks (one per visible GPU), got {size}")
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if size > cpus:
        raise ValueError(
            f"tp: expected at most {cpus} ranks on this machine's {cpus} CPUs (one per core), got {size}; "
            "use torchrun --nnodes for more machines"
        )


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- the step's batch on the wire ------------------------------------------------------------------------------------


def pack_step(input_ids: torch.Tensor, ctx) -> tuple[list[int], torch.Tensor]:
    """(header fields, one int64 tensor) of a step: the token ids and the ``ForwardContext`` tensors."""
    B, M = ctx.block_tables.shape
    parts = [input_ids, ctx.positions, ctx.slot_mapping, ctx.rope_cu_seqlens, ctx.rope_seq_lens,
             ctx.block_tables.reshape(-1), ctx.seq_lens, ctx.cu_seqlens_q]  # fmt: skip
    buf = torch.cat([p.to(torch.int64) for p in parts])
    return [input_ids.numel(), ctx.rope_seq_lens.numel(), B, M, buf.numel()], buf


def unpack_step(buf: torch.Tensor, T: int, S: int, B: int, M: int):
    from lmx.models import ForwardContext

    sizes = [T, T, T, S + 1, S, B * M, B, B + 1]
    ids, pos, slots, rope_cu, rope_lens, tables, seq_lens, cu_q = buf.split(sizes)
    i32 = torch.int32
    ctx = ForwardContext(
        positions=pos, slot_mapping=slots, rope_cu_seqlens=rope_cu.to(i32), rope_seq_lens=rope_lens,
        block_tables=tables.to(i32).view(B, M), seq_lens=seq_lens.to(i32), cu_seqlens_q=cu_q.to(i32),
    )  # fmt: skip
    return ids, ctx


# -- rank 0 -------------------------------------------------------------------------------------------------------


class Runtime:
    """Rank 0's side of the tensor-parallel ranks; one per process (``get_runtime``), reused by engines."""

    def __init__(self, size: int, device: torch.device, worker_main: Any = None) -> None:
        """``worker_main(rank, size, port, backend, timeout, parent_pid, device_kind)``: what a spawned worker
        runs (``join_spawned``, then ``serve``)."""
        self.size = size
        self.worker_main = worker_main
        self.device = device
        self.backend = _backend(device)
        self.comm_device = device if self.backend == "nccl" else torch.device("cpu")
        self.timeout = collective_timeout()
        self.torchrun = launched_by_torchrun()
        # Ranks sharing this machine's memory (a CPU cache is carved out of the same RAM on each of them).
        self.host_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.torchrun else size
        self.lock = threading.RLock()
        self.broken: str | None = None
        self.procs: list[Any] = []
        self.token = 0  # the engine the workers hold now
        self._last_send = time.monotonic()
        self._stop = threading.Event()
        self._owns_group = False

    # start / stop

    def start(self) -> None:
        td = datetime.timedelta(seconds=self.timeout)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.torchrun:
            _check_world(self.size)
            if int(os.environ["RANK"]) != 0:
                raise RuntimeError("tp: Runtime runs on rank 0 only")  # internal invariant
            if not dist.is_initialized():
                dist.init_process_group(self.backend, init_method="env://", rank=0, world_size=self.size, timeout=td)
                self._owns_group = True
        else:
            self._spawn(td)
            self._owns_group = True
        log.info("lmx tp: %d ranks over %s (%s)", self.size, self.backend,
                 "torchrun" if self.torchrun else "torch.multiprocessing")  # fmt: skip
        threading.Thread(target=self._heartbeat, name="lmx-tp-heartbeat", daemon=True).start()
        if self.procs:
            threading.Thread(target=self._monitor, name="lmx-tp-monitor", daemon=True).start()

    def _spawn(self, td: datetime.timedelta) -> None:
        if dist.is_initialized():
            raise ValueError(
                "tp: torch.distributed is already initialised in this process but not by torchrun's environment; "
                "expected RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT with WORLD_SIZE = tp, or no process group"
            )
        check_local_size(self.size, self.device)
        # Everything binds 127.0.0.1: the store listens on a socket bound here, and Gloo's pairs use the loopback
        # device (the workers inherit GLOO_SOCKET_IFNAME) unless the user chose an interface.
        if self.backend == "gloo" and os.path.exists("/sys/class/net/lo"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        # The store takes the socket over (it closes the fd when it goes): detach it from the Python object.
        store = dist.TCPStore("127.0.0.1", port, self.size, is_master=True, timeout=td, wait_for_workers=False,
                              master_listen_fd=listener.detach())  # fmt: skip
        ctx = torch.multiprocessing.get_context("spawn")
        for rank in range(1, self.size):
            proc = ctx.Process(
                target=self.worker_main, name=f"lmx-tp-rank{rank}", daemon=True,
                args=(rank, self.size, store.port, self.backend, self.timeout, os.getpid(), self.device.type),
            )  # fmt: skip
            proc.start()
            self.procs.append(proc)
        deadline = time.monotonic() + self.timeout
        keys = [_READY_KEY.format(r) for r in range(1, self.size)]
        while not store.check(keys):
            dead = [(r, p) for r, p in enumerate(self.procs, 1) if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                self._kill_procs()
                why = (f"worker rank {dead[0][0]} (pid {dead[0][1].pid}) {_exit_text(dead[0][1].exitcode)} while "
                       "starting (see its error above)") if dead else f"the workers did not start in {self.timeout:g} s"  # fmt: skip
                raise WorkerLostError(f"tp: {why}")
            time.sleep(0.02)
        dist.init_process_group(self.backend, store=store, rank=0, world_size=self.size, timeout=td)
        self._store = store

    def shutdown(self) -> None:
        """Tell the workers to leave, and wait for them (kill them if they do not)."""
        self._stop.set()
        if self.broken is None and self.lock.acquire(timeout=10):
            try:
                self._send(EXIT)
            except Exception:  # noqa: BLE001 - leaving anyway
                pass
            finally:
                self.lock.release()
        if self._owns_group and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        for proc in self.procs:
            proc.join(5 if self.broken is None else 0.5)
        self._kill_procs()
        if self.broken is None:
            self.broken = "tp: the tensor-parallel ranks were shut down"

    def _kill_procs(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)

    # failure

    def fail(self, message: str) -> None:
        if self.broken is None:
            self.broken = message
            log.error("%s", message)

    def _dead_worker(self, wait: float = 0.0) -> str | None:
        deadline = time.monotonic() + wait
        while True:
            for rank, proc in enumerate(self.procs, 1):
                if not proc.is_alive():
                    return f"tp: worker rank {rank} (pid {proc.pid}) died ({_exit_text(proc.exitcode)})"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def check(self, token: int | None = None) -> None:
        if self.broken is not None:
            raise WorkerLostError(f"{self.broken}; this tensor-parallel engine cannot run; start a new one")
        if token == -1:
            raise RuntimeError("tp: this tensor-parallel engine was closed; build a new pipeline")
        if token is not None and token != self.token:
            raise RuntimeError(
                "tp: this engine's workers now run a newer tensor-parallel engine of this process (one at a time); "
                "close() an engine before building the next"
            )

    @contextlib.contextmanager
    def guarded(self, token: int | None = None):
        """Hold the lock; a failure inside breaks the runtime and comes out as ``WorkerLostError``."""
        with self.lock:
            self.check(token)
            try:
                yield
            except Exception as e:
                if isinstance(e, WorkerLostError):
                    self.fail(str(e))
                else:  # the workers may wait in a collective rank 0 never reaches: the ranks are out of step
                    dead = self._dead_worker(wait=1.0)
                    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    if dead is None and "timed out" in str(e).lower():
                        dead = (f"tp: a collective timed out after {self.timeout:g} s (LMX_TP_TIMEOUT): a rank is "
                                f"stuck or unreachable ({type(e).__name__}: {text[:300]})")  # fmt: skip
                    self.fail(
                        dead or f"tp: a step failed on rank 0 or in a collective ({type(e).__name__}: {text[:300]})"
                    )
                raise WorkerLostError(f"{self.broken}; this tensor-parallel engine cannot run another step") from e
            except BaseException:  # KeyboardInterrupt mid-step: the workers are left inside the step
                self.fail("tp: a step was interrupted on rank 0; the ranks are out of step")
                raise

    def _monitor(self) -> None:
        sentinels = {proc.sentinel: (rank, proc) for rank, proc in enumerate(self.procs, 1)}
        multiprocessing.connection.wait(list(sentinels))
        if self._stop.is_set():
            return
        self.fail(self._dead_worker(wait=1.0) or "tp: a worker died")

    def _heartbeat(self) -> None:
        interval = min(self.timeout / 4, 30.0)
        while not self._stop.wait(interval / 2):
            if self.broken is not None:
                return
            if time.monotonic() - self._last_send < interval or not self.lock.acquire(blocking=False):
                continue
            try:
                with self.guarded():
                    self._send(NOOP)
            except WorkerLostError:
                return
            finally:
                self.lock.release()

    # the protocol

    def _send(self, cmd: int, *fields: int, payload: torch.Tensor | None = None) -> None:
        header = torch.zeros(HEADER_LEN, dtype=torch.int64)
        header[0] = cmd
        header[1 : 1 + len(fields)] = torch.tensor(fields, dtype=torch.int64)
        dist.broadcast(header.to(self.comm_device), 0)
        if payload is not None:
            dist.broadcast(payload.to(self.comm_device), 0)
        self._last_send = time.monotonic()

    def gather(self, reply: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, reply)
        return out

    def init_engine(self, spec: dict[str, Any]) -> int:
        """Send ``INIT`` (the caller holds ``lock`` until the matching ``gather``); the new engine's token."""
        self.check()
        self.token += 1
        data = pickle.dumps({**spec, "host_ranks": self.host_ranks})
        self._send(INIT, len(data), payload=torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return self.token

    def alloc(self, num_blocks: int) -> None:
        self._send(ALLOC, num_blocks)

    def send_step(self, input_ids: torch.Tensor, ctx) -> None:
        fields, buf = pack_step(input_ids, ctx)
        self._send(STEP, *fields, payload=buf)

    def close_engine(self, token: int) -> None:
        if token != self.token or self.broken is not None:
            return
        with contextlib.suppress(WorkerLostError), self.guarded(token):
            self._send(CLOSE)


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def get_runtime(size: int, device: torch.device, worker_main: Any) -> Runtime:
    """This process's rank-0 runtime for ``size`` ranks on ``device``: the running one, or a new one (a broken
    one, or one of another size, is shut down first; under torchrun a broken job cannot be restarted)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        rt = _RUNTIME
        if (
            rt is not None
            and rt.broken is None
            and (rt.size, rt.device, rt.timeout) == (size, device, collective_timeout())
        ):
            return rt
        if launched_by_torchrun():
            _check_world(size)
        else:
            check_local_size(size, device)
        if rt is not None:
            if rt.torchrun:
                rt.check()
                raise ValueError(f"tp: this torchrun job runs tp={rt.size} on {rt.device}, got tp={size} on {device}")
            rt.shutdown()
            _RUNTIME = None
        rt = Runtime(size, device, worker_main)
        rt.start()
        _RUNTIME = rt
        return rt


@atexit.register
def _shutdown_at_exit() -> None:
    if _RUNTIME is not None:
        _RUNTIME.shutdown()


# -- the workers -----------------------------------------------------------------------------------------------------


def join_spawned(rank: int, size: int, port: int, backend: str, timeout: float, parent: int,
                 kind: str) -> torch.device:  # fmt: skip
    """In a worker spawned by ``Runtime``: join rank 0's process group; this rank's device. The process leaves
    (exit status 3) when rank 0's process goes away."""
    td = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=td)
    store.set(_READY_KEY.format(rank), "1")
    device = torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=td)

    def watch_parent() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch_parent, name="lmx-tp-parent", daemon=True).start()
    return device


def join_torchrun(tp: int, device_name: str) -> tuple[int, torch.device]:
    """In rank > 0 of a torchrun job: join its process group (``env://``); (rank, device)."""
    _check_world(tp)
    rank = int(os.environ["RANK"])
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    td = datetime.timedelta(seconds=collective_timeout())
    if not dist.is_initialized():
        dist.init_process_group(_backend(device), init_method="env://", rank=rank, world_size=tp, timeout=td)
    return rank, device


def leave() -> None:
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def serve(rank: int, size: int, device: torch.device, handler: Any) -> None:
    """A worker's loop: follow rank 0's commands until ``EXIT``. ``handler`` does the work: ``init(spec)``,
    ``alloc(num_blocks)`` (each returns the reply rank 0 gathers; an exception is reported as an error reply),
    ``step(input_ids, ctx)`` and ``close()``. A failure in a step leaves the loop with the exception: the ranks
    are out of step, and rank 0 sees this rank die."""
    comm = device if device.type == "cuda" else torch.device("cpu")
    header = torch.empty(HEADER_LEN, dtype=torch.int64, device=comm)

    def reply(fn, *args) -> None:
        try:
            answer = ("ok", fn(*args))
        except Exception as e:  # noqa: BLE001 - reported to rank 0, which raises it
            traceback.print_exc()
            answer = ("error", f"{type(e).__name__}: {e}")
        dist.all_gather_object([None] * size, answer)

    while True:
        dist.broadcast(header, 0)
        cmd, *fields = header.tolist()
        if cmd == NOOP:
            continue
        if cmd == INIT:
            buf = torch.empty(fields[0], dtype=torch.uint8, device=comm)
            dist.broadcast(buf, 0)
            handler.close()
            gc.collect()
            reply(handler.init, pickle.loads(buf.cpu().numpy().tobytes()))
        elif cmd == ALLOC:
            reply(handler.alloc, fields[0])
        elif cmd == STEP:
            T, S, B, M, total = fields[:5]
            buf = torch.empty(total, dtype=torch.int64, device=comm)
            dist.broadcast(buf, 0)
            input_ids, ctx = unpack_step(buf.to(device), T, S, B, M)
            handler.step(input_ids, ctx)
        elif cmd == CLOSE:
            handler.close()
            gc.collect()
        elif cmd == EXIT:
            return
        else:
            raise RuntimeError(f"tp rank {rank}: unknown command {cmd}")

"""Data-parallel runs on each framework's own engine: who starts which process with which
environment, and who watches them.

The engines reduce the gradients (``resnet_<name>/distributed.py``); this module only does
what their launchers do, once for all three (``docs/architecture.md``, "Data-parallel runs"):

* :func:`plan` gives every process this machine starts the environment its engine's own
  launcher would give it: ``torchrun``'s (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``, ...), a ``TF_CONFIG`` per worker, or MXNet's ``DMLC_*`` for
  a scheduler, servers and workers, as ``mxnet.tools.launch``'s local mode sets them (that
  launcher ships with the 1.9.1 wheel but fails under Python >= 3.9: its ``dmlc_tracker`` calls
  ``Thread.isAlive``). Every process runs the same command; the environment says what it is.
* :func:`launch` checks the ports this machine will listen on, waits for the peers it needs,
  starts the processes (each its own process group, killed with its parent), relays their
  reports, and on every way out (success, a worker's death, Ctrl-C, an error here) stops every
  process it started and removes the temporary files a killed writer left.
* :class:`Shard` is a worker's share of the shared seeded order; :class:`Reporter` and
  :class:`Console` carry progress from the workers to one bar.

Importing this module loads no framework.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

# the variables each engine's own launcher sets in a process it starts: where they are set, the
# process is one of a run's processes (torchrun, a TF_CONFIG, mxnet.tools.launch)
ROLE_ENV = {"torch": ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"), "tf": ("TF_CONFIG",),
            "mxnet": ("DMLC_ROLE",)}
REPORT_FD = "RESNET_PARITY_REPORT_FD"  # the pipe a worker reports on, set by launch()
RUN_ID = "RESNET_PARITY_RUN"           # every process of a run carries it (set it to find them)
ENGINE_TIMEOUT = 1800.0                # seconds an engine waits in a rendezvous or collective
GRACE = 10.0                           # seconds between asking processes to stop and killing them
_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """A run that cannot start, or cannot reach a peer, or that a worker refused: one line."""


class WorkerDied(RuntimeError):
    """A process of the run ended with a non-zero status; the others were stopped."""

    def __init__(self, name: str, status: int, log: Path) -> None:
        how = (f"was killed by {signal.Signals(-status).name}" if status < 0
               else f"exited with status {status}")
        super().__init__(f"{name} {how}; every other process of the run was stopped (its log: "
                         f"{log})")
        self.name, self.status, self.log = name, status, log


def launched_by_engine(framework: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started by a run's launcher (ours or the engine's own)."""
    return all(v in environ for v in ROLE_ENV[framework])


# -- the data ---------------------------------------------------------------------------------
class Shard:
    """A worker's share of an :class:`~common.core.data.ImageData`: of every batch of the shared
    seeded order (``order(batch_size, epoch, seed)``, the global batch), the ``rank``-th of
    ``world`` equal slices. A batch whose size is not a multiple of ``world`` (an epoch's last)
    loses its last ``size % world`` images, so every worker takes the same number of steps with
    the same number of images, and each engine's mean over the workers is the batch's mean.

    It is used where the framework's Trainer uses its data: ``order``, ``batch``, ``shape``,
    ``len`` (the index space, the whole split's: indices stay the split's own).
    """

    def __init__(self, data: Any, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.data, self.rank, self.world = data, rank, world

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.data.batch(indices)

    def order(self, batch_size: int, epoch: int, seed: int, shuffle: bool = True
              ) -> list[np.ndarray]:
        out = []
        for b in self.data.order(batch_size, epoch, seed, shuffle):
            k = len(b) // self.world
            if k:
                out.append(b[self.rank * k:(self.rank + 1) * k])
        return out

    def images(self, batch_size: int) -> tuple[int, int]:
        """(this worker's, all workers') images per epoch."""
        mine = sum(len(b) for b in self.order(batch_size, 0, 0, shuffle=False))
        return mine, mine * self.world


# -- who runs where ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """A data-parallel run as this machine sees it."""

    framework: str
    workers: int = 1                 # worker processes on this machine
    nnodes: int = 1                  # machines
    node_rank: int = 0               # this machine's index; node 0 hosts the rendezvous
    master_addr: str = "127.0.0.1"   # node 0 (PyTorch's store, MXNet's scheduler)
    master_port: Optional[int] = None  # None: a free port (one machine only)
    worker_hosts: tuple[str, ...] = ()  # TensorFlow: every worker's host:port, node by node
    threads: int = 1                 # intra-op threads per worker
    connect_timeout: float = 60.0    # seconds to wait for a peer on another machine

    def __post_init__(self) -> None:
        if self.framework not in ROLE_ENV:
            raise LaunchError(f"no data-parallel engine for {self.framework!r}")
        if self.workers < 1 or self.nnodes < 1 or self.threads < 1:
            raise LaunchError("--workers, --nnodes and --threads must be positive")
        if not 0 <= self.node_rank < self.nnodes:
            raise LaunchError(f"--node-rank {self.node_rank} is not in [0, {self.nnodes}) "
                              f"(--nnodes {self.nnodes})")
        if self.framework == "tf":
            if self.nnodes > 1 and len(self.worker_hosts) != self.world_size:
                raise LaunchError(f"--worker-hosts must list all {self.world_size} workers "
                                  f"(--nnodes x --workers) as HOST:PORT, node by node; got "
                                  f"{len(self.worker_hosts)}")
            for h in self.worker_hosts:
                _host_port(h)
        elif self.worker_hosts:
            raise LaunchError("--worker-hosts is TensorFlow's (TF_CONFIG); PyTorch and MXNet "
                              "meet at --master-addr:--master-port")
        elif self.nnodes > 1 and self.master_port is None:
            raise LaunchError("--master-port is needed with --nnodes > 1 (every machine must "
                              "name the same one)")

    @property
    def world_size(self) -> int:
        return self.workers * self.nnodes

    @property
    def first_rank(self) -> int:
        """The global rank of this machine's first worker (torchrun's numbering)."""
        return self.node_rank * self.workers


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_taken(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails (another process listens there)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class Process:
    """One process this machine starts: its name (for logs and reports), role and environment."""

    name: str
    role: str                       # "worker", "server", "scheduler"
    env: dict[str, str]
    rank: Optional[int] = None      # where the launcher fixes it (MXNet's workers report theirs)


@dataclass
class Plan:
    """The processes of this machine, the ports they will listen on (with the flag that names
    each) and the peers on other machines to wait for, before and after starting them."""

    processes: list[Process]
    listens: list[tuple[str, int, str]] = field(default_factory=list)
    before: list[tuple[str, int, str]] = field(default_factory=list)
    after: list[tuple[str, int, str]] = field(default_factory=list)


def plan(c: Cluster) -> Plan:
    """Every process this machine starts, with its engine launcher's environment."""
    local = c.nnodes == 1
    port = c.master_port if c.master_port is not None else free_port(c.master_addr)
    master = (c.master_addr, port, "--master-port")
    common = {"OMP_NUM_THREADS": str(c.threads)}
    if c.framework == "torch":  # torchrun's variables (static rendezvous, --master-addr/port)
        procs = [Process(f"worker{r}", "worker", {
            **common, "RANK": str(r), "LOCAL_RANK": str(i), "GROUP_RANK": str(c.node_rank),
            "ROLE_RANK": str(r), "WORLD_SIZE": str(c.world_size), "ROLE_WORLD_SIZE":
            str(c.world_size), "LOCAL_WORLD_SIZE": str(c.workers), "MASTER_ADDR": c.master_addr,
            "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "resnet-parity"}, rank=r)
            for i, r in enumerate(range(c.first_rank, c.first_rank + c.workers))]
        return Plan(procs, listens=[master] if c.node_rank == 0 else [],
                    before=[] if c.node_rank == 0 else [master])
    if c.framework == "tf":  # a TF_CONFIG per worker
        hosts = list(c.worker_hosts) or [f"127.0.0.1:{free_port()}" for _ in range(c.workers)]
        mine = range(c.first_rank, c.first_rank + c.workers)
        procs = [Process(f"worker{r}", "worker", {**common, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": r}})}, rank=r)
            for r in mine]
        listens = [(*_host_port(hosts[r]), "--worker-hosts") for r in mine]
        listens = [("0.0.0.0" if not local else h, p, f) for h, p, f in listens]
        others = [(*_host_port(hosts[r]), f"worker {r}") for r in range(len(hosts)) if r not in mine]
        before = [] if c.node_rank == 0 else others[:1]  # node 0's first worker
        return Plan(procs, listens=listens, before=before, after=others)
    # MXNet: mxnet.tools.launch's local mode (dmlc_tracker/local.py, tracker.py): one scheduler
    # on node 0, as many servers as workers (launch.py's default), every role the same command
    dmlc = {**common, "DMLC_PS_ROOT_URI": c.master_addr, "DMLC_PS_ROOT_PORT": str(port),
            "DMLC_NUM_WORKER": str(c.world_size), "DMLC_NUM_SERVER": str(c.world_size),
            "DMLC_JOB_CLUSTER": "local"}
    if local:
        dmlc["DMLC_NODE_HOST"] = c.master_addr
    procs = [Process("scheduler", "scheduler", {**dmlc, "DMLC_ROLE": "scheduler",
                                                  "OMP_NUM_THREADS": "1"})] if c.node_rank == 0 else []
    procs += [Process(f"server{c.first_rank + i}", "server",
                      {**dmlc, "DMLC_ROLE": "server", "DMLC_TASK_ID": str(c.first_rank + i),
                       "OMP_NUM_THREADS": "1"}) for i in range(c.workers)]
    procs += [Process(f"worker{c.first_rank + i}", "worker",
                      {**dmlc, "DMLC_ROLE": "worker", "DMLC_TASK_ID": str(c.first_rank + i)})
              for i in range(c.workers)]
    return Plan(procs, listens=[master] if c.node_rank == 0 else [],
                before=[] if c.node_rank == 0 else [master])


def _reachable(host: str, port: int, timeout: float) -> Optional[str]:
    """None once ``host:port`` accepts a connection within ``timeout`` seconds, else the last
    reason it did not."""
    deadline, reason = time.monotonic() + timeout, "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(timeout, 0.1))):
                return None
        except OSError as e:
            reason = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            return reason
        time.sleep(0.2)


def _unreachable(what: str, host: str, port: int, timeout: float, reason: str) -> LaunchError:
    return LaunchError(f"cannot reach {what} at {host}:{port} within {timeout:g} s ({reason}): "
                       f"is that machine's run started, and the port open to this one?")


# -- the supervisor ---------------------------------------------------------------------------
def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class _Child:
    spec: Process
    popen: subprocess.Popen
    log: Path
    reader: int
    buffer: bytes = b""
    error: Optional[str] = None


def launch(cluster: Cluster, command: Sequence[str], log_dir: Path,
           on_event: Callable[[dict], None], run_dir: Optional[Path] = None,
           env: Optional[Mapping[str, str]] = None) -> None:
    """Run ``command`` in every process of ``plan(cluster)`` on this machine and watch them.

    Returns when every worker ended with status 0 (servers and the scheduler then end on their
    own). Raises :class:`LaunchError` (a port taken, a peer unreachable, a worker's one-line
    refusal) or :class:`WorkerDied`; KeyboardInterrupt propagates. On every way out every
    process started here is stopped (SIGINT to workers, so that their writes finish or roll
    back, SIGTERM to the rest, SIGKILL after :data:`GRACE` seconds), and the temporary files of
    a killed writer are removed from ``run_dir``.
    """
    p = plan(cluster)
    for host, port, flag in p.listens:
        if port_taken(host, port):
            raise LaunchError(f"port {port} on {host} is taken ({flag}): another run, or another "
                              f"program, listens there; choose another with {flag}")
    for host, port, what in p.before:
        reason = _reachable(host, port, cluster.connect_timeout)
        if reason:
            raise _unreachable("the master" if what.startswith("--") else what, host, port,
                               cluster.connect_timeout, reason)
    log_dir.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ if env is None else env)
    base.setdefault(RUN_ID, uuid.uuid4().hex)
    root = str(Path(__file__).resolve().parents[2])
    base["PYTHONPATH"] = os.pathsep.join([root] + [x for x in [base.get("PYTHONPATH")] if x])
    children: list[_Child] = []
    selector = selectors.DefaultSelector()
    try:
        for spec in p.processes:
            reader, writer = os.pipe()
            log = log_dir / f"{spec.name}.log"
            with open(log, "wb") as out:
                popen = subprocess.Popen(
                    list(command), env={**base, **spec.env, REPORT_FD: str(writer)},
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=(writer,), start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            os.close(writer)
            child = _Child(spec, popen, log, reader)
            children.append(child)
            os.set_blocking(reader, False)
            selector.register(reader, selectors.EVENT_READ, child)
        _watch(cluster, p, children, selector, on_event)
    finally:
        _stop(children)
        selector.close()
        for c in children:
            os.close(c.reader)
        if run_dir is not None:
            remove_temporaries(run_dir)


def _watch(cluster: Cluster, p: Plan, children: list[_Child], selector: selectors.BaseSelector,
           on_event: Callable[[dict], None]) -> None:
    pending = list(p.after)
    deadline = time.monotonic() + cluster.connect_timeout
    workers = [c for c in children if c.spec.role == "worker"]
    while True:
        for key, _ in selector.select(timeout=0.2):
            if not _read(key.data, on_event):
                selector.unregister(key.fd)  # the child closed its end (it is ending)
        for c in children:
            status = c.popen.poll()
            if status is None or status == 0:
                continue
            _read(c, on_event)
            if c.error:
                raise LaunchError(c.error)
            name = f"{c.spec.role} rank {c.spec.rank}" if c.spec.rank is not None else c.spec.name
            raise WorkerDied(name, status, c.log)
        if all(c.popen.poll() == 0 for c in workers):
            for c in workers:
                _read(c, on_event)
            return
        if pending:
            host, port, what = pending[0]
            if _reachable(host, port, 0.0) is None:
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise _unreachable(what, host, port, cluster.connect_timeout, "no answer")


def _read(c: _Child, on_event: Callable[[dict], None]) -> bool:
    """Pass on every complete report line the child has written; False once its end is closed."""
    open_ = True
    while True:
        try:
            chunk = os.read(c.reader, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            open_ = False
            break
        c.buffer += chunk
    *lines, c.buffer = c.buffer.split(b"\n")
    for line in lines:
        event = json.loads(line)
        if event.get("type") == "ready" and c.spec.rank is None:
            c.spec.rank = event["rank"]
        if event.get("type") == "error":
            c.error = event["message"]
        on_event(event)
    return open_


def _signal_group(c: _Child, sig: int) -> None:
    try:
        os.killpg(c.popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(children: list[_Child]) -> None:
    """Ask every process still running to stop, wait :data:`GRACE` seconds, kill the rest;
    then make sure no process of their groups is left."""
    running = [c for c in children if c.popen.poll() is None]
    for c in running:
        _signal_group(c, signal.SIGINT if c.spec.role == "worker" else signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for c in running:
        try:
            c.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for c in children:
        _signal_group(c, signal.SIGKILL)
        c.popen.wait()


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Remove what a killed writer leaves beside its target: ``atomic_write``'s ``.NAME.*.tmp``
    and ``Staging``'s ``.convert-*`` files and folders. Returns what was removed."""
    import shutil

    removed = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            if path.name.startswith(".") and (path.name.endswith(".tmp")
                                              or path.name.startswith(".convert-")):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


# -- progress ---------------------------------------------------------------------------------
class Console:
    """What a data-parallel run shows: rank 0's lines and one bar for the epoch, with every
    worker's throughput (images per second since the epoch began)."""

    def __init__(self, progress: bool = True, print_fn: Callable[[str], None] = print) -> None:
        self.progress, self.print_fn = progress, print_fn
        self.bar: Any = None
        self.seen: dict[int, int] = {}
        self.start = 0.0
        self.loss: Optional[float] = None

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "line":
            if self.bar is not None:
                self.bar.clear()
            self.print_fn(event["text"])
        elif kind == "epoch":
            from tqdm.auto import tqdm

            self.close()
            self.seen, self.start, self.loss = {}, time.perf_counter(), None
            self.bar = tqdm(total=event["images"], unit="img", leave=False, file=sys.stderr,
                            disable=None if self.progress else True,
                            desc=f"{event['framework']} epoch {event['epoch']}/{event['epochs']}")
        elif kind == "batch" and self.bar is not None:
            rank = event["rank"]
            self.seen[rank] = self.seen.get(rank, 0) + event["n"]
            if rank == 0:
                self.loss = event["loss"]
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(event["n"])
        elif kind == "epoch_end":
            self.close()

    def postfix(self) -> str:
        """``loss 2.301 | r0 51 img/s  r1 50 img/s``: rank 0's last loss, every worker's rate."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = "  ".join(f"r{r} {n / elapsed:.0f} img/s" for r, n in sorted(self.seen.items()))
        return (f"loss {self.loss:.3f} | " if self.loss is not None else "") + rates

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Reporter:
    """A worker's reports: JSON lines on the pipe :func:`launch` gave it, or, under an engine's
    own launcher (no pipe), rank 0's reports shown here by a :class:`Console`."""

    def __init__(self, progress: bool = True, environ: Mapping[str, str] = os.environ) -> None:
        fd = environ.get(REPORT_FD)
        self.pipe = os.fdopen(int(fd), "w", buffering=1) if fd else None
        self.console = None if self.pipe else Console(progress)
        self.rank: Optional[int] = None

    def __call__(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "rank": self.rank, **fields}
        if self.pipe is not None:
            self.pipe.write(json.dumps(event) + "\n")
        elif kind == "error":
            print(f"resnet-parity: error: {fields['message']}", file=sys.stderr)
        elif self.rank == 0 and self.console is not None:
            self.console(event)


__all__ = ["ENGINE_TIMEOUT", "GRACE", "REPORT_FD", "ROLE_ENV", "RUN_ID", "Cluster", "Console",
           "LaunchError", "Plan", "Process", "Reporter", "Shard", "WorkerDied", "free_port",
           "launch", "launched_by_engine", "plan", "port_taken", "remove_temporaries"]

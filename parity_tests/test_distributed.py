"""Data-parallel training on each framework's own engine (``resnet-parity train --workers N``),
with 2 worker processes on loopback and tiny inputs (d2l's ResNet-18, 16x16 grey images, a
global batch of 8, 3 SGD steps, float64 where semantics are proven):

* with synchronised BatchNorm, 2 workers with 4 images each end where 1 process with 8 does
  (TensorFlow; PyTorch's SyncBatchNorm has no CPU kernels and MXNet none across workers, both
  pinned below), bound 1e-9;
* without, every engine ends where the per-replica prediction does (one process: each half
  batch's gradients, each normalised with its own statistics, averaged), bound 1e-9 (MXNet:
  its kvstore may add float64 in float32, see below, so float32-exact), and that is measurably
  not where 1 process with the whole batch ends;
* the three engines' runs agree with each other as their single-process runs do;
* adding the workers' gradients instead of averaging them is caught: it is the prediction at
  twice the lr, far from the right one;
* the command: rank 0 alone writes the files; a killed worker is reported with its rank and
  status and leaves no partial checkpoint; Ctrl-C stops every worker; a SIGKILLed launcher
  takes its workers with it; a taken port and an unreachable master are one-line errors; no
  process of a run outlives it, on any of these.

Run as ``python -m parity_tests.test_distributed FRAMEWORK SYNC REDUCTION OUT`` this file is
also the worker program of the parity runs (started by ``common.tools.distributed.launch``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from common.core.compare import compare, global_floor, worst
from common.core.data import ImageData, Split
from common.core.spec import architecture
from common.core.state import xavier_state
from common.core.step_parity import tolerance
from common.tools.distributed import (
    RUN_ID,
    Cluster,
    Shard,
    free_port,
    launch,
    remove_temporaries,
)

from .conftest import backend_or_skip

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "tf", "mxnet")
WORKERS = 2
BATCH, STEPS, SIZE, SEED = 8, 3, 32, 0
# a power of two: exact in float32, where Keras and Gluon hold the learning rate
LR = 2.0 ** -4
BOUND = 1e-9           # float64: a data-parallel run against its one-process prediction
# MXNet's dist_sync servers may add float64 gradients in float32 (see below), so its runs are
# held to the float64 one-step bound of frameworks that hold their lr in float32 (measured
# 7.4e-8 after one step) and, after several steps, to the float32 bounds
KVSTORE_BOUND = tolerance("steps", "float64", steps=1)
RUN_TIMEOUT = 240      # seconds one launch may take before the test fails (and stops it)
slow = pytest.mark.slow  # the tests that start an engine's processes


# -- the problem every run solves ---------------------------------------------------------------
def problem() -> tuple[Any, dict[str, np.ndarray], ImageData]:
    """d2l's ResNet-18 for 32x32 grey images of 4 classes, its Xavier state, 24 random images."""
    spec = architecture("resnet18", in_channels=1, num_classes=4, labels=("a", "b", "c", "d"))
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, (BATCH * STEPS, SIZE, SIZE), dtype=np.uint8)
    data = ImageData(Split(images, rng.integers(0, 4, BATCH * STEPS)), SIZE)
    return spec, xavier_state(spec, SEED), data


def params(state: dict[str, np.ndarray]) -> list[str]:
    return [k for k in state if not k.endswith(("running_mean", "running_var"))]


def distance(a: dict[str, np.ndarray], ref: dict[str, np.ndarray], names: Optional[list[str]] = None
             ) -> tuple[float, str]:
    """The worst tensor's floored relative difference (trainable parameters by default)."""
    names = names or params(ref)
    w = worst(compare(a, ref, names=names, floor=global_floor({k: ref[k] for k in names})))
    return w.max_rel, w.layer


def bound(framework: str, step: int) -> float:
    """What a data-parallel run is held to against its prediction after ``step`` steps."""
    if framework != "mxnet":
        return BOUND
    return KVSTORE_BOUND if step == 1 else tolerance("steps", "float32", steps=step)


def rel_l2(a: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """|a - ref| / |ref| over all trainable parameters together (L2)."""
    names = params(ref)
    flat = [np.concatenate([d[k].ravel() for k in names]) for d in (a, ref)]
    return float(np.linalg.norm(flat[0] - flat[1]) / np.linalg.norm(flat[1]))


def _kvstore_worker(out: str) -> int:
    """A dist_sync worker that pushes float64 1/3 and 1/7 and writes what it pulls back."""
    from resnet_mxnet._compat import mx

    kv = mx.kv.create("dist_sync")
    kv.init(0, mx.nd.zeros(2, dtype="float64"))
    kv.push(0, mx.nd.array([1 / 3, 1 / 7], dtype="float64"))
    pulled = mx.nd.zeros(2, dtype="float64")
    kv.pull(0, out=pulled)
    np.save(Path(out) / f"rank{kv.rank}.npy", pulled.asnumpy())
    return 0


def _worker(framework: str, sync: str, reduction: str, out: str) -> int:
    """One worker of a parity run: 3 steps of the framework's loop over its shard, float64;
    its final state written to OUT/rank<r>.npz."""
    from common.tools.registry import framework_module, get_backend

    framework_module(framework, "bench").set_threads(1)
    engine = framework_module(framework, "distributed").Engine(
        sync_bn=sync == "on", reduction=reduction, timeout=RUN_TIMEOUT)
    be = get_backend(framework)
    spec, state, data = problem()
    with engine.scope():
        model = be.build(spec, dtype="float64")
        be.load_state(model, state)
    model = engine.prepare(model, spec)
    trainer = engine.trainer(model, Shard(data, engine.rank, engine.world_size), BATCH, LR, SEED)
    states: list[dict[str, np.ndarray]] = []
    trainer.run_epoch(0, lambda loss, n: states.append(be.export_state(model)))
    np.savez(Path(out) / f"rank{engine.rank}.npz",
             **{f"{step}/{k}": v for step, state in enumerate(states) for k, v in state.items()})
    del trainer  # (its DDP wrapper) before the engine: see training_runs.run_worker
    engine.close()
    return 0


# -- running things -----------------------------------------------------------------------------
def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError(f"a data-parallel run took over {RUN_TIMEOUT} s")


def _launch(framework: str, args: list[str], out: Path) -> None:
    """This file as the worker program of 2 workers on the framework's engine."""
    out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(RUN_TIMEOUT)
    try:
        launch(Cluster(framework, workers=WORKERS, threads=1),
               [sys.executable, "-m", "parity_tests.test_distributed", *args], out / "logs",
               lambda event: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_parallel(framework: str, sync: str, reduction: str, out: Path
                 ) -> list[dict[str, np.ndarray]]:
    """Launch a 2-worker parity run; rank 0's state after each step (every rank's parameters
    checked equal: the engine keeps the replicas in step)."""
    backend_or_skip(framework)
    _launch(framework, [framework, sync, reduction, str(out)], out)
    ranks = [_steps(np.load(out / f"rank{r}.npz")) for r in range(WORKERS)]
    assert [len(r) for r in ranks] == [STEPS] * WORKERS
    for other in ranks[1:]:  # the engine keeps the replicas' parameters in step
        assert distance(other[-1], ranks[0][-1])[0] <= 1e-12
    return ranks[0]


def _steps(saved: Any) -> list[dict[str, np.ndarray]]:
    """The states after each step, from a worker's ``step/name`` arrays."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key in saved.files:
        step, name = key.split("/", 1)
        out.setdefault(int(step), {})[name] = saved[key]
    return [out[s] for s in sorted(out)]


def run_single(framework: str) -> list[dict[str, np.ndarray]]:
    """One process, the whole batch of 8: the framework's own loop (its Trainer), float64; the
    state after each step."""
    be = backend_or_skip(framework)
    spec, state, data = problem()
    model = be.build(spec, dtype="float64")
    be.load_state(model, state)
    states: list[dict[str, np.ndarray]] = []
    be.trainer(model, data, BATCH, LR, SEED).run_epoch(
        0, lambda loss, n: states.append(be.export_state(model)))
    return states


def per_replica_prediction(framework: str, lr: float) -> list[dict[str, np.ndarray]]:
    """Where 2 replicas without synchronised BatchNorm end, computed in one process: at every
    step each half batch's gradients (each half normalised with its own statistics), averaged,
    and a plain SGD step with ``lr``. Trainable parameters only."""
    be = backend_or_skip(framework)
    spec, state, data = problem()
    model = be.build(spec, dtype="float64")
    be.load_state(model, state)
    current, states = be.export_state(model), []
    shards = [Shard(data, r, WORKERS).order(BATCH, 0, SEED) for r in range(WORKERS)]
    for step in zip(*shards):
        grads = [be.gradients(model, *data.batch(idx))[1] for idx in step]
        current = {k: v - lr * np.mean([g[k] for g in grads], axis=0) if k in grads[0] else v
                   for k, v in current.items()}
        be.load_state(model, current)
        states.append(current)
    return states


_cache: dict[tuple, list[dict[str, np.ndarray]]] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run once per module: ``runs(framework, sync, reduction)``, ``runs("single", fw)``."""
    def get(*key: str) -> list[dict[str, np.ndarray]]:
        if key not in _cache:
            if key[0] == "single":
                _cache[key] = run_single(key[1])
            else:
                _cache[key] = run_parallel(*key, tmp_path_factory.mktemp("-".join(key)))
        return _cache[key]
    return get


# -- the data ---------------------------------------------------------------------------------
def test_each_worker_gets_an_equal_slice_of_the_shared_order():
    data = ImageData(Split(np.zeros((23, 4, 4), np.uint8), np.zeros(23)), 4)
    shards = [Shard(data, r, 3) for r in range(3)]
    batches = data.order(9, epoch=1, seed=5)
    sliced = [s.order(9, epoch=1, seed=5) for s in shards]
    assert [len(s) for s in sliced] == [3, 3, 3]
    for step, whole in enumerate(batches):
        parts = [s[step] for s in sliced]
        assert len({len(p) for p in parts}) == 1  # equal shares...
        joined = np.concatenate(parts)
        assert list(joined) == list(whole[:len(joined)])  # ...of the shared batch, in order
        assert len(whole) - len(joined) == len(whole) % 3  # the rest of a last batch dropped
    assert shards[0].images(9) == (7, 21)  # 9 + 9 + 5 images: 3 + 3 + 1 each, 2 dropped


# -- parity ---------------------------------------------------------------------------------------
@slow
def test_synchronised_batchnorm_two_workers_equal_one_process_with_the_whole_batch(runs):
    """TensorFlow, float64: every parameter and running statistic after each of 3 steps."""
    dp, single = runs("tf", "on", "mean"), runs("single", "tf")
    stats = [k for k in single[0] if k not in params(single[0])]
    for step, (a, b) in enumerate(zip(dp, single), 1):
        p, s = distance(a, b), distance(a, b, stats)
        print(f"\ntf, sync on, step {step}: 2 x 4 vs 1 x 8: parameters {p[0]:.1e} ({p[1]}), "
              f"running statistics {s[0]:.1e} ({s[1]})")
        assert p[0] <= BOUND and s[0] <= BOUND


@slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_without_sync_each_replica_normalises_its_own_shard(runs, framework):
    """Each step is where the per-replica prediction puts it (1e-9; MXNet: see
    :data:`KVSTORE_BOUND`), and measurably not where one process with the whole batch is."""
    dp, predicted, whole = (runs(framework, "off", "mean"), per_replica_prediction(framework, LR),
                            runs("single", framework))
    for step in range(STEPS):
        p, w = distance(dp[step], predicted[step]), distance(dp[step], whole[step])
        print(f"\n{framework}, sync off, step {step + 1}: vs per-replica prediction {p[0]:.1e} "
              f"({p[1]}); vs 1 process x 8 {w[0]:.1e} ({w[1]}; all parameters, L2: "
              f"{rel_l2(dp[step], whole[step]):.1e})")
        assert p[0] <= bound(framework, step + 1)
        assert w[0] > 1e3 * bound(framework, 1)


@slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_summing_the_gradients_is_caught(runs, framework):
    """--grad-reduction sum takes twice the step: the prediction at lr x 2 (1e-9), far from the
    prediction at lr, so a launcher or loop that sums where the engine averages fails the
    parity check above."""
    wrong = runs(framework, "off", "sum")[0]
    at_lr = distance(wrong, per_replica_prediction(framework, LR)[0])[0]
    at_2lr = distance(wrong, per_replica_prediction(framework, LR * WORKERS)[0])[0]
    print(f"\n{framework}, gradients summed, step 1: vs prediction at lr {at_lr:.1e}, "
          f"at 2 lr {at_2lr:.1e}")
    assert at_2lr <= bound(framework, 1)
    assert at_lr > 1e3 * bound(framework, 1)


@slow
def test_the_engines_agree_with_each_other_as_single_processes_do(runs, installed):
    """Every pair after each step, within the float64 bounds the single-process runs meet
    (``step_parity.tolerance``); a pair with MXNet within the float32 bounds after the first
    step, as its kvstore may add in float32."""
    if len(installed) < 2:
        pytest.skip("needs two installed frameworks")
    names = [n for n in FRAMEWORKS if n in installed]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for step in range(STEPS):
                parallel = distance(runs(b, "off", "mean")[step], runs(a, "off", "mean")[step])[0]
                single = distance(runs("single", b)[step], runs("single", a)[step])[0]
                f64 = tolerance("steps", "float64", steps=step + 1)
                held = max(bound(a, step + 1), bound(b, step + 1), f64)
                print(f"\n{b} vs {a}, step {step + 1}: data-parallel {parallel:.1e} (bound "
                      f"{held:.0e}), one process {single:.1e} (bound {f64:.0e})")
                assert single <= f64 and parallel <= held


@slow
def test_mxnet_kvstore_adds_float64_in_float32(tmp_path):
    """Two dist_sync workers push float64 1/3 and 1/7 and pull back their sum, 2/3 and 2/7: run
    alone, every time rounded to float32 (0.66666669); once, inside the whole file, exact. So
    MXNet's data-parallel runs are held to float32 rounding, and this pins the sum (not the
    mean, not one worker's own push) within it, whichever the servers used."""
    backend_or_skip("mxnet")
    _launch("mxnet", ["kvstore", str(tmp_path)], tmp_path)
    exact = np.array([2 / 3, 2 / 7])
    for r in range(WORKERS):
        pulled = np.load(tmp_path / f"rank{r}.npy")
        print(f"rank {r} pulled {pulled.tolist()}; float32-rounded: "
              f"{np.array_equal(pulled, exact.astype(np.float32).astype(np.float64))}")
        assert pulled.dtype == np.float64
        assert np.abs(pulled - exact).max() <= 2 * np.finfo(np.float32).eps * exact.max()


# -- what each engine can synchronise -------------------------------------------------------------
def test_torch_sync_batchnorm_has_no_cpu_kernels():
    """Why PyTorch refuses --sync-bn on here: SyncBatchNorm's statistics kernel is GPU-only."""
    backend_or_skip("torch")
    import torch

    with pytest.raises(NotImplementedError, match="batch_norm_stats"):
        torch.batch_norm_stats(torch.ones(2, 3, 2, 2, dtype=torch.float64), 1e-5)


def test_mxnet_sync_batchnorm_synchronises_the_devices_of_one_process():
    """gluon.contrib.nn.SyncBatchNorm(num_devices=2) over two contexts of one process normalises
    with the statistics of both halves: it is for several devices in one process. The inputs
    exist before the first call: the first device's op holds MXNet's CPU worker while it waits
    for the second, so a copy onto the second context queued after it never runs."""
    backend_or_skip("mxnet")
    code = ("import numpy as np\n"
            "from resnet_mxnet._compat import autograd, mx\n"
            "from mxnet.gluon.contrib.nn import SyncBatchNorm\n"
            "x = np.random.default_rng(0).normal(size=(4, 3, 2, 2))\n"
            "contexts = [mx.cpu(0), mx.cpu(1)]\n"
            "bn = SyncBatchNorm(in_channels=3, num_devices=2); bn.initialize(ctx=contexts)\n"
            "inputs = [mx.nd.array(x[2 * i:2 * i + 2], ctx=c) for i, c in enumerate(contexts)]\n"
            "mx.nd.waitall()\n"
            "with autograd.record():\n"
            "    halves = [bn(a) for a in inputs]\n"
            "out = np.concatenate([h.asnumpy() for h in halves])\n"
            "whole = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(\n"
            "    x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)\n"
            "print(float(np.abs(out - whole).max()))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5  # float32


def test_mxnet_sync_batchnorm_waits_for_devices_of_its_own_process():
    """...and a worker with one device that asks for two waits forever: no kvstore worker can
    be the other device, so nothing synchronises BatchNorm across MXNet's workers."""
    backend_or_skip("mxnet")
    code = ("from resnet_mxnet._compat import autograd, mx\n"
            "from mxnet.gluon.contrib.nn import SyncBatchNorm\n"
            "bn = SyncBatchNorm(in_channels=3, num_devices=2); bn.initialize()\n"
            "print('ready', flush=True)\n"
            "with autograd.record():\n    bn(mx.nd.ones((2, 3, 2, 2))).asnumpy()\n"
            "print('returned', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=8)
    finally:
        proc.kill()
        proc.wait()
    assert "returned" not in proc.stdout.read()


# -- the command ----------------------------------------------------------------------------------
def run_processes(run_id: str) -> list[int]:
    """The pids of every process carrying the run's id in its environment."""
    marker = f"{RUN_ID}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _env(run_id: str) -> dict[str, str]:
    return {**os.environ, RUN_ID: run_id, "PYTHONPATH": str(ROOT)}


def _train(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "common.tools.cli", "train", "--resize", "16", "--batch-size",
            "64", "--out", str(out), "-q", *extra]


def _run_train(out: Path, *extra: str, run_id: str = "x", timeout: float = RUN_TIMEOUT
               ) -> subprocess.CompletedProcess:
    """``resnet-parity train`` with ``extra`` in a child process, its output captured."""
    return subprocess.run(_train(out, *extra), cwd=ROOT, env=_env(run_id), capture_output=True,
                          text=True, timeout=timeout)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


def _no_temporaries(run_dir: Path) -> None:
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], list(run_dir.iterdir())


@slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_run_writes_rank_0s_files_and_leaves_no_process(tmp_path, framework):
    backend_or_skip(framework)
    run_id = uuid.uuid4().hex
    done = _run_train(tmp_path, "--framework", framework, "--workers", "2", "--epochs", "1",
                      run_id=run_id)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{framework} epoch 1: loss" in done.stdout and "per worker: r0" in done.stdout
    metrics = json.loads((tmp_path / framework / "metrics.json").read_text())
    assert metrics["data_parallel"]["workers"] == 2 and len(metrics["epochs"]) == 1
    assert len(metrics["data_parallel"]["images_per_sec_per_worker"][0]) == 2
    from common.core.state import load_state_file
    state, spec = load_state_file(tmp_path / framework / "resnet18.safetensors")
    assert spec.in_channels == 1 and np.isfinite(state["head.fc.weight"]).all()
    _no_temporaries(tmp_path / framework)
    assert run_processes(run_id) == []


@slow
def test_a_killed_worker_is_reported_with_its_rank_and_status(tmp_path):
    backend_or_skip("torch")
    run_id = uuid.uuid4().hex
    proc = subprocess.Popen(_train(tmp_path, "--framework", "torch", "--workers", "2",
                                   "--epochs", "20"), cwd=ROOT, env=_env(run_id),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "torch" / "metrics.json", proc, RUN_TIMEOUT)
        rank1 = [p for p in run_processes(run_id)
                 if b"RANK=1" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "worker rank 1 was killed by SIGKILL" in err
    assert len(err.strip().splitlines()) == 1, err
    epochs = json.loads((tmp_path / "torch" / "metrics.json").read_text())["epochs"]
    assert 1 <= len(epochs) < 20  # the last complete epoch's files, whole
    _no_temporaries(tmp_path / "torch")
    assert run_processes(run_id) == []


@slow
def test_ctrl_c_stops_every_worker(tmp_path):
    backend_or_skip("mxnet")  # scheduler, servers and workers: the most processes to stop
    run_id = uuid.uuid4().hex
    proc = subprocess.Popen(_train(tmp_path, "--framework", "mxnet", "--workers", "2",
                                   "--epochs", "20"), cwd=ROOT, env=_env(run_id),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "mxnet" / "metrics.json", proc, RUN_TIMEOUT)
        assert len(run_processes(run_id)) == 1 + 5  # the launcher; scheduler, 2 servers, 2 workers
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: every worker was stopped" in err
    json.loads((tmp_path / "mxnet" / "metrics.json").read_text())
    _no_temporaries(tmp_path / "mxnet")
    assert run_processes(run_id) == []


@slow
def test_a_killed_launcher_takes_its_workers_with_it(tmp_path):
    """SIGKILL leaves the launcher no time to stop anything: its children die with it
    (PR_SET_PDEATHSIG)."""
    backend_or_skip("torch")
    run_id = uuid.uuid4().hex
    proc = subprocess.Popen(_train(tmp_path, "--framework", "torch", "--workers", "2",
                                   "--epochs", "20"), cwd=ROOT, env=_env(run_id),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "torch" / "metrics.json", proc, RUN_TIMEOUT)
        assert len(run_processes(run_id)) == 3
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while run_processes(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_processes(run_id) == []


@slow
@pytest.mark.parametrize("framework", ["torch", "mxnet"])
def test_sync_bn_on_is_refused_where_the_engine_cannot(tmp_path, framework):
    backend_or_skip(framework)
    run_id = uuid.uuid4().hex
    done = _run_train(tmp_path, "--framework", framework, "--workers", "2", "--sync-bn", "on",
                      run_id=run_id)
    assert done.returncode == 2
    why = {"torch": "SyncBatchNorm runs on GPUs only", "mxnet": "across kvstore workers"}
    assert done.stderr.startswith("resnet-parity: error: --sync-bn on:") and why[framework] in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert run_processes(run_id) == []


def test_a_taken_port_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = _run_train(tmp_path, "--framework", "torch", "--workers", "2", "--master-port",
                          str(port), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"resnet-parity: error: port {port} on 127.0.0.1 is taken (--master-port): another run, "
        f"or another program, listens there; choose another with --master-port")


def test_an_unreachable_master_is_one_clear_line(tmp_path):
    port = free_port()
    done = _run_train(tmp_path, "--framework", "mxnet", "--workers", "1", "--nnodes", "2",
                      "--node-rank", "1", "--master-port", str(port), "--connect-timeout", "1",
                      timeout=60)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith(f"resnet-parity: error: cannot reach the master at 127.0.0.1:{port} "
                           f"within 1 s (") and "\n" not in line


def test_data_parallel_options_need_workers(tmp_path):
    done = _run_train(tmp_path, "--sync-bn", "on", timeout=60)
    assert done.returncode == 2 and "--sync-bn is an option of data-parallel runs" in done.stderr


def test_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".resnet18.safetensors.abc.tmp").write_bytes(b"half")
    (tmp_path / ".convert-x-resnet18.pt").write_bytes(b"half")
    (tmp_path / "resnet18.safetensors").write_bytes(b"whole")
    assert len(remove_temporaries(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18.safetensors"]


if __name__ == "__main__":
    sys.exit(_kvstore_worker(*sys.argv[2:]) if sys.argv[1] == "kvstore" else _worker(*sys.argv[1:]))

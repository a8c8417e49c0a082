"""``resnet-parity bench``: the same ResNet or ConvNeXt, the same weights and input, timed side
by side.

Each (framework, mode) runs in a fresh worker process, so its thread pools, compile caches and
peak memory are its own (importing MXNet, for one, drops PyTorch's OpenMP pool to 1 thread in
a shared process). A worker sets the thread count, checks that the mode computes the same
function as eager PyTorch -- every layer for eager modes, the logits for compiled ones -- and
only then times it: forward throughput, training-step throughput (forward, backward, SGD
update), batch-1 latency and peak resident memory. The float32 matrix-multiply peak is
measured in the same run, in its own worker with the same thread count, before and after the
frameworks (the best counts: other load only lowers it): the fastest of the float32 GEMMs the
frameworks ship (MKL through ``torch.mm``, oneDNN through ``mkldnn_linear``, OpenBLAS through
numpy), since MKL runs an AVX2 path on AMD CPUs, half the AVX-512 rate oneDNN reaches there.
MACs per image come from the spec. A grouped 3x3 conv (ResNeXt's) is timed against a dense
3x3 conv of the same MACs in each framework, whatever the network (a fixed case, not the spec's),
and the load average is recorded with the figures.

Workers run with glibc's malloc kept from returning large blocks to the system (``ALLOCATORS``,
``--allocator``): by default glibc serves every block over 32 MB with a fresh ``mmap`` and
unmaps it on free, so each forward of a batch-32 ResNet-50 at 224 faults its 50-100 MB
activations in page by page again. PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc
for this; glibc's own tunables do the same without another library.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.compare import EVAL_RTOL_CPU, compare, worst
from ..core.spec import (
    ARCHITECTURES,
    BottleneckSpec,
    ConvNeXtSpec,
    Network,
    ResNetSpec,
    architecture,
    resnet18_spec,
)
from ..core.state import load_state_file, random_state, save_state, write_text
from .command import EXIT_MISMATCH, EXIT_OK, CliError, framework_list, load_backends, positive, progress_log
from .registry import BACKEND_NAMES, framework_module, get_backend, install_hint

KINDS = ("eager", "compiled")  # what --modes selects; each framework's bench.MODES maps its modes
PARITY_RTOL = EVAL_RTOL_CPU
FAMILIES = {"ResNetSpec": "ResNet", "ConvNeXtSpec": "ConvNeXt"}  # a spec's ``unit`` -> header word
# glibc malloc's settings per --allocator: "tuned" never maps a block of its own (so a freed
# activation stays in the heap for the next forward) and never trims the heap; "system" leaves
# the environment as it is. A variable the user has set is never overridden.
ALLOCATORS: dict[str, dict[str, str]] = {
    "tuned": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)},
    "system": {},
}
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS", "MXNET_CPU_WORKER_NTHREADS")


def conv_macs(spec: Network, size: int) -> int:
    """Multiply-accumulates of one image through the network (convs and dense layers);
    a grouped conv counts its ``in / groups`` inputs per output. Normalisation and activations
    are not counted."""
    if isinstance(spec, ConvNeXtSpec):
        return _convnext_macs(spec, size)
    return _resnet_macs(spec, size)


def _convnext_macs(spec: ConvNeXtSpec, size: int) -> int:
    """A ConvNeXt's: the patchify conv, each 2x2/2 downsampling conv, and per block the depthwise
    conv and the two Linear layers at every pixel; then the classifier."""
    h, p = size // spec.patch_size, spec.patch_size
    macs = h * h * p * p * spec.in_channels * spec.widths[0]                 # stem.conv
    cin = spec.widths[0]
    for i, (c, depth) in enumerate(zip(spec.widths, spec.depths)):
        if i:
            h //= 2
            macs += h * h * 2 * 2 * cin * c                                  # downsample.conv
        block = spec.kernel_size ** 2 * c + 2 * spec.mlp_ratio * c * c     # dwconv, pwconv1, 2
        macs += depth * h * h * block
        cin = c
    return macs + spec.widths[-1] * spec.num_classes


def _resnet_macs(spec: ResNetSpec, size: int) -> int:
    """A ResNet's (the stem, every block's convs and shortcut, the dense layer)."""

    def out(n: int, k: int, s: int) -> int:
        return (n + 2 * (k // 2) - k) // s + 1
    h = out(size, spec.stem_kernel, spec.stem_stride)
    macs = h * h * spec.stem_kernel ** 2 * spec.in_channels * spec.stem_channels
    if spec.stem_pool:
        h = out(h, 3, 2)
    for stage in spec.stages():
        for r in stage.residuals():
            h2 = out(h, 3, r.strides)
            if isinstance(r, BottleneckSpec):
                mid = r.bottleneck_channels
                h1 = h2 if r.stride_at == "1x1" else h          # where the first 1x1 runs
                macs += h1 * h1 * r.input_channels * mid                     # conv1
                macs += h2 * h2 * 9 * mid * mid // r.groups                  # conv2
                macs += h2 * h2 * mid * r.num_channels                       # conv3
            else:
                macs += h2 * h2 * 9 * r.input_channels * r.num_channels      # conv1
                macs += h2 * h2 * 9 * r.num_channels * r.num_channels        # conv2
            if r.use_1x1conv:
                macs += h2 * h2 * r.input_channels * r.num_channels          # shortcut
            h = h2
    return macs + spec.stage_channels[-1] * spec.num_classes


def _stats(times: list[float]) -> dict[str, float]:
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "p25_s": float(np.percentile(t, 25)),
            "p75_s": float(np.percentile(t, 75)), "n": len(times), "all_s": [float(v) for v in t]}


def _timed(fn: Callable[[], Any], warmup: int, reps: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _stats(times)


def _pools() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"api": i["internal_api"], "threads": i["num_threads"],
             "library": os.path.basename(i["filepath"])} for i in threadpool_info()]


def matmul_peaks(threads: int, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """float32 GFLOP/s of an ``n x n`` GEMM in each library the frameworks ship, the best of
    ``reps`` runs each: MKL (``torch.mm``), oneDNN (``mkldnn_linear``) and OpenBLAS (numpy)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemms: dict[str, Callable[[], Any]] = {"MKL torch.mm": lambda: torch.mm(a, b)}
    mkldnn_linear = getattr(torch._C._nn, "mkldnn_linear", None)
    if mkldnn_linear is not None and torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
        gemms["oneDNN mkldnn_linear"] = lambda: mkldnn_linear(a_dnn, b_dnn, None)
    a_np, b_np = a.numpy(), b.numpy()
    gemms["OpenBLAS numpy"] = lambda: a_np @ b_np
    return {name: 2 * n ** 3 / min(_timed(fn, 2, reps)["all_s"]) / 1e9 for name, fn in gemms.items()}


def matmul_peak(threads: int) -> float:
    """The machine's practical float32 peak at this thread count: the fastest GEMM available."""
    return max(matmul_peaks(threads).values())


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    process that started it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# a grouped 3x3 conv (ResNeXt-50 32x4d's in its second stage: 256 wide, 32 groups, 28x28) and a
# dense 3x3 conv of the same width on one image, which has the same MACs as the grouped on 32
GROUPED_CONV = {"channels": 256, "groups": 32, "size": 28, "batch": 32}


def conv_case(groups: int) -> tuple[int, int]:
    """``(groups, batch)`` of the grouped conv or of its dense twin with the same MACs."""
    g = GROUPED_CONV
    return (g["groups"], g["batch"]) if groups > 1 else (1, g["batch"] // g["groups"])


def conv_worker(cfg: dict) -> dict:
    """Run in a fresh process: one framework's grouped 3x3 conv and its dense twin of the same
    MACs, each checked against PyTorch's ``conv2d`` before it is timed."""
    import torch
    from torch.nn import functional as F
    name, g = cfg["framework"], GROUPED_CONV
    bench = framework_module(name, "bench")
    bench.set_threads(cfg["threads"])
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"framework": name, "threads": bench.threads()}
    for label, groups in (("grouped", g["groups"]), ("dense", 1)):
        groups, batch = conv_case(groups)
        c, size = g["channels"], g["size"]
        x = rng.standard_normal((batch, c, size, size), dtype=np.float32)
        w = rng.standard_normal((c, c // groups, 3, 3), dtype=np.float32) / np.sqrt(9 * c / groups)
        run_conv, fetch = bench.conv_runner(x, w, groups)
        want = F.conv2d(torch.from_numpy(x[:1]), torch.from_numpy(w), padding=1, groups=groups).numpy()
        got = fetch(run_conv())[:1]
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        entry: dict[str, Any] = {"groups": groups, "batch": batch, "max_rel": rel,
                                 "ok": rel <= PARITY_RTOL}
        if entry["ok"]:
            entry.update(_timed(run_conv, cfg["warmup"], cfg["reps"]))
            entry["gflops"] = 2 * batch * size * size * 9 * c * c // groups / entry["median_s"] / 1e9
        result[label] = entry
    return result


def peak_worker(cfg: dict) -> dict:
    """Run in a fresh process: the float32 GEMM rates at the run's thread count."""
    return {"gemm_gflops": matmul_peaks(cfg["threads"]), "load": os.getloadavg()}


def worker(cfg: dict) -> dict:
    """Run in a fresh process: one framework, one mode."""
    name, mode = cfg["framework"], cfg["mode"]
    be = get_backend(name)
    bench = framework_module(name, "bench")
    bench.set_threads(cfg["threads"])
    state, spec = load_state_file(cfg["state"])
    model = be.build(spec)
    be.load_state(model, state)
    ref = dict(np.load(cfg["reference"]))
    x = np.load(cfg["input"])
    gate = x[:2]
    forward, train_step = bench.runners(model, mode)
    result: dict[str, Any] = {"framework": name, "mode": mode, "threads": bench.threads(),
                              "pools": _pools()}
    # the parity gate: the same function as eager PyTorch, or no timing
    if bench.MODES[mode] == "eager":
        rows = compare(be.activations(model, gate), ref, PARITY_RTOL)
        what = f"{len(rows)} layers"
    else:
        rows = compare({"head.fc": forward(gate)}, {"head.fc": ref["head.fc"]}, PARITY_RTOL)
        what = "logits"
    w = worst(rows)
    result["parity"] = {"checked": what, "worst_layer": w.layer, "max_rel": w.max_rel,
                        "ok": all(r.ok for r in rows)}
    if not result["parity"]["ok"]:
        return result
    y = np.random.default_rng(1).integers(0, spec.num_classes, x.shape[0])
    warm, reps = cfg["warmup"], cfg["reps"]
    start = time.perf_counter()
    forward(x)  # first call: compile or trace
    result["first_call_s"] = time.perf_counter() - start
    result["forward"] = _timed(lambda: forward(x), warm, reps)
    result["latency_b1"] = _timed(lambda: forward(x[:1]), warm, reps)
    state_before = be.export_state(model)
    result["train_step"] = _timed(lambda: train_step(x, y), warm, reps)
    be.load_state(model, state_before)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _run_worker(cfg: dict, env: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "common.tools.bench", "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"framework": cfg.get("framework"), "mode": cfg.get("mode"), "error": tail}
    return json.loads(lines[-1])


_WORKERS: dict[str, Callable[[dict], dict]] = {"model": worker, "conv": conv_worker, "peak": peak_worker}


def run(frameworks: Sequence[str], modes: Sequence[str], batch: int, size: int, threads: int,
        warmup: int = 3, reps: int = 10, spec: Optional[Network] = None, state: Optional[dict] = None,
        timeout: float = 900.0, conv: bool = True, allocator: str = "tuned",
        log: Callable[[str], None] = lambda m: None) -> dict:
    """Benchmark every available (framework, mode), and with ``conv`` each framework's grouped
    conv against its dense twin; return the report (see ``format_report``).

    ``modes`` selects kinds (eager, compiled); each framework's ``bench.MODES`` says which of
    its own modes is which; ``allocator`` names the ``ALLOCATORS`` entry the workers run with."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {allocator!r}")
    spec = spec or resnet18_spec()
    state = state if state is not None else random_state(spec, 0)
    env = dict(os.environ, **{k: str(threads) for k in _THREAD_ENV},
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env["TF_NUM_INTEROP_THREADS"] = env["MXNET_CPU_WORKER_NTHREADS"] = "1"
    malloc = {k: env.setdefault(k, v) for k, v in ALLOCATORS[allocator].items()}
    malloc.update({k: v for k, v in env.items() if k.startswith("MALLOC_") and k not in malloc})
    load = [os.getloadavg()[0]]
    log("float32 matmul peak ...")
    peaks = [_run_worker({"kind": "peak", "threads": threads}, env, timeout)]
    with tempfile.TemporaryDirectory(prefix="resnet-bench-") as tmp:
        paths = {"input": os.path.join(tmp, "input.npy"),
                 "reference": os.path.join(tmp, "reference.npz")}
        paths["state"] = str(save_state(os.path.join(tmp, "state.safetensors"), state, spec))
        x = np.random.default_rng(0).uniform(0, 1, (batch, spec.in_channels, size, size))
        np.save(paths["input"], x.astype(np.float32))
        torch_be = get_backend("torch")  # the reference: eager PyTorch, every layer
        model = torch_be.build(spec)
        torch_be.load_state(model, state)
        np.savez(paths["reference"], **torch_be.activations(model, x[:2].astype(np.float32)))
        results = []
        for name in frameworks:
            for mode, kind in framework_module(name, "bench").MODES.items():
                if kind not in modes:
                    continue
                log(f"bench {name} {mode} ...")
                cfg = {"framework": name, "mode": mode, "threads": threads, "warmup": warmup,
                       "reps": reps, **paths}
                results.append(_run_worker(cfg, env, timeout))
    convs = []
    for name in frameworks if conv else ():
        log(f"grouped vs dense conv {name} ...")
        cfg = {"kind": "conv", "framework": name, "threads": threads, "warmup": warmup,
               "reps": max(reps, 10)}
        convs.append(_run_worker(cfg, env, timeout))
    log("float32 matmul peak ...")
    peaks.append(_run_worker({"kind": "peak", "threads": threads}, env, timeout))
    load.append(os.getloadavg()[0])
    if any("error" in p for p in peaks):
        raise RuntimeError(f"the matmul peak failed: {peaks}")
    gemm = {k: max(p["gemm_gflops"][k] for p in peaks) for k in peaks[0]["gemm_gflops"]}
    peak = max(gemm.values())
    macs = conv_macs(spec, size)
    for r in results:
        if "forward" in r:
            fwd_flops = 2 * macs * batch
            r["forward"]["img_per_s"] = batch / r["forward"]["median_s"]
            r["forward"]["gflops"] = fwd_flops / r["forward"]["median_s"] / 1e9
            r["forward"]["fraction_of_peak"] = r["forward"]["gflops"] / peak
            r["train_step"]["img_per_s"] = batch / r["train_step"]["median_s"]
            r["train_step"]["gflops"] = 3 * fwd_flops / r["train_step"]["median_s"] / 1e9
            r["latency_b1"]["ms"] = 1e3 * r["latency_b1"]["median_s"]
    for c in convs:
        for label in ("grouped", "dense"):
            if "gflops" in c.get(label, {}):
                c[label]["fraction_of_peak"] = c[label]["gflops"] / peak
    return {"spec": spec.to_dict(), "batch": batch, "size": size, "threads": threads,
            "macs_per_image": macs, "matmul_peak_gflops": peak, "gemm_gflops": gemm,
            "peak_how": f"the fastest float32 {2048}x{2048} GEMM, best of 5, before and after",
            "allocator": {"name": allocator, "env": malloc},
            "load_average": load, "grouped_conv": dict(GROUPED_CONV), "conv": convs,
            "machine": {"cpus": os.cpu_count(), "platform": sys.platform}, "results": results}


def family(spec: dict) -> str:
    """What a report's header calls the network's family: ``ResNet`` or ``ConvNeXt``."""
    return FAMILIES.get(spec.get("unit", ""), "ResNet")


def format_report(report: dict) -> str:
    base = next((r for r in report["results"] if r.get("framework") == "torch"
                 and r.get("mode") == "eager" and "forward" in r), None)
    lines = [f"{family(report['spec'])} {report['spec']['name']}, batch {report['batch']}, "
             f"{report['size']}x{report['size']}, {report['threads']} thread(s); "
             f"{report['macs_per_image'] / 1e6:.1f} MMACs/image; float32 matmul peak "
             f"{report['matmul_peak_gflops']:.1f} GFLOP/s ({report['peak_how']})",
             "GEMMs: " + ", ".join(f"{k} {v:.0f}" for k, v in report["gemm_gflops"].items())
             + " GFLOP/s; load average " + " -> ".join(f"{v:.2f}" for v in report["load_average"])
             + f"; malloc: {_allocator_text(report.get('allocator'))}",
             f"{'frame':<7}{'mode':<12}{'parity':>10}{'fwd img/s':>11}{'spread':>8}{'x torch':>8}"
             f"{'% peak':>8}{'train img/s':>13}{'x torch':>8}{'b1 ms':>8}{'peak MB':>9}  threads"]
    for r in report["results"]:
        head = f"{r['framework']:<7}{r['mode']:<12}"
        if "error" in r:
            lines.append(head + f"  error: {r['error']}")
            continue
        p = r["parity"]
        if not p["ok"]:
            lines.append(head + f"{'WRONG':>10}  {p['worst_layer']} off by {p['max_rel']:.1e}: "
                                "not timed")
            continue
        f, t = r["forward"], r["train_step"]
        # x torch: against torch eager, "-" where this run did not time it
        rf = f"{f['img_per_s'] / base['forward']['img_per_s']:.2f}" if base else "-"
        rt = f"{t['img_per_s'] / base['train_step']['img_per_s']:.2f}" if base else "-"
        th = ",".join(f"{k}={v}" for k, v in r["threads"].items())
        spread = (f["p75_s"] - f["p25_s"]) / f["median_s"]  # interquartile range, relative
        lines.append(head + f"{p['max_rel']:>10.1e}{f['img_per_s']:>11.1f}{spread:>7.0%} {rf:>7}"
                     f"{100 * f['fraction_of_peak']:>7.1f}%{t['img_per_s']:>13.1f}{rt:>8}"
                     f"{r['latency_b1']['ms']:>8.1f}{r['peak_rss_mb']:>9.0f}  {th}")
    return "\n".join(lines + _format_conv(report))


def _allocator_text(allocator: Optional[dict]) -> str:
    """How the workers' malloc was set, for the report's header."""
    if not allocator:
        return "not recorded"
    env = " ".join(f"{k}={v}" for k, v in sorted(allocator["env"].items()))
    return f"{allocator['name']} ({env or 'glibc defaults'})"


def _format_conv(report: dict) -> list[str]:
    """The grouped-vs-dense conv rows, if the run timed them."""
    if not report.get("conv"):
        return []
    g = report["grouped_conv"]
    dense_batch = conv_case(1)[1]
    lines = [f"grouped 3x3 conv ({g['channels']} channels, {g['groups']} groups, {g['size']}x{g['size']}, "
             f"batch {g['batch']}) vs dense 3x3 ({g['channels']} channels, batch {dense_batch}): "
             f"the same {g['batch'] * g['size'] ** 2 * 9 * g['channels'] ** 2 // g['groups'] / 1e6:.0f}"
             " MMACs",
             f"{'frame':<7}{'grouped GFLOP/s':>16}{'% peak':>8}{'dense GFLOP/s':>15}{'% peak':>8}"
             f"{'grouped/dense':>15}"]
    for c in report["conv"]:
        head = f"{c['framework']:<7}"
        if "error" in c:
            lines.append(head + f"  error: {c['error']}")
            continue
        bad = [k for k in ("grouped", "dense") if not c[k]["ok"]]
        if bad:
            lines.append(head + "  WRONG: " + ", ".join(f"{k} off by {c[k]['max_rel']:.1e}" for k in bad))
            continue
        gr, de = c["grouped"], c["dense"]
        lines.append(head + f"{gr['gflops']:>16.1f}{100 * gr['fraction_of_peak']:>7.1f}%"
                     f"{de['gflops']:>15.1f}{100 * de['fraction_of_peak']:>7.1f}%"
                     f"{gr['gflops'] / de['gflops']:>15.2f}")
    return lines


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in report["results"] if "forward" in r]
    labels = [f"{r['framework']}\n{r['mode']}" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in ((axes[0], "forward", "forward (eval) img/s"),
                           (axes[1], "train_step", "training step img/s")):
        ax.bar(labels, [r[key]["img_per_s"] for r in ok], color="tab:blue")
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{report['spec']['name']}, batch {report['batch']}, "
                 f"{report['size']}x{report['size']}, "
                 f"{report['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the bench command ---------------------------------------------------------------------
def run_bench(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(KINDS):
        raise CliError(f"--modes takes eager and/or compiled, got {args.modes!r}")
    backends, skipped = load_backends(args.frameworks, "cpu")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if "torch" not in backends:
        raise CliError("bench times every mode against eager PyTorch: " + install_hint("torch"))
    log = progress_log(args.quiet)
    report = run(list(backends), modes, args.batch, args.size, args.threads,
                 warmup=args.warmup, reps=args.reps, spec=architecture(args.arch),
                 conv=not args.no_conv, allocator=args.allocator, log=log)
    print(format_report(report))
    if args.json:
        write_text(args.json, json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    wrong = [f"{r['framework']} {r['mode']}" for r in report["results"]
             if "error" in r or not r["parity"]["ok"]]
    wrong += [f"{c['framework']} conv" for c in report["conv"]
              if "error" in c or not (c["grouped"]["ok"] and c["dense"]["ok"])]
    if wrong:
        print(f"not timed (wrong or failed): {', '.join(wrong)}")
    return EXIT_MISMATCH if wrong else EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``bench``."""
    b = sub.add_parser(
        "bench", help="time the same ResNet or ConvNeXt in each framework and mode, side by side",
        description="Forward throughput, training-step throughput, batch-1 latency and peak "
                    "memory of a ResNet or ConvNeXt (same weights, same input) in every framework and "
                    "mode: PyTorch eager and torch.compile (channels-last, frozen weights for "
                    "inference); Keras eager, tf.function, XLA and a frozen graph with "
                    "BatchNorm folded into the convs; Gluon imperative and "
                    "hybridized (static_alloc, static_shape, inference partitioned for oneDNN). "
                    "Each runs in its own process with the thread count set explicitly, and is "
                    "timed only after it computes the same function as eager PyTorch. Reports "
                    "GFLOP/s against the float32 matmul peak measured in the same run (the "
                    "fastest GEMM shipped), and a grouped 3x3 conv against a dense one of the "
                    "same MACs in each framework.")
    b.add_argument("--frameworks", type=framework_list, default=list(BACKEND_NAMES),
                   help="comma-separated: torch,tf,mxnet (default: all three)")
    b.add_argument("--arch", choices=list(ARCHITECTURES), metavar="NAME", default="resnet18",
                   help="the network: " + ", ".join(ARCHITECTURES) + " (resnet18, d2l's)")
    b.add_argument("--batch", type=positive, default=32, help="batch size (32)")
    b.add_argument("--size", type=positive, default=96, help="image size (96)")
    b.add_argument("--threads", type=positive, default=os.cpu_count() or 1,
                   help="threads for every framework (default: all cores)")
    b.add_argument("--modes", default="eager,compiled", help="eager,compiled (both)")
    b.add_argument("--warmup", type=positive, default=3, help="warm-up runs (3)")
    b.add_argument("--reps", type=positive, default=10, help="timed runs; median reported (10)")
    b.add_argument("--no-conv", action="store_true",
                   help="skip timing a grouped 3x3 conv against a dense one of the same MACs")
    b.add_argument("--allocator", choices=list(ALLOCATORS), default="tuned",
                   help="the workers' glibc malloc: tuned (default) keeps freed blocks for reuse "
                        "(MALLOC_MMAP_MAX_=0, no trimming), as jemalloc or tcmalloc would; "
                        "system leaves the environment's settings")
    b.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=run_bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.tools.bench")
    p.add_argument("--worker", required=True)
    args = p.parse_args(argv)
    cfg = json.loads(args.worker)
    for k in _THREAD_ENV:
        os.environ.setdefault(k, str(cfg["threads"]))
    print(json.dumps(_WORKERS[cfg.get("kind", "model")](cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


"""The ``resnet-parity`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailable, canonical_name, get_backend, install_hint
from .compare import (
    EVAL_RTOL_CPU,
    EVAL_RTOL_GPU,
    Section,
    compare,
    format_section,
    global_floor,
    pairwise,
    summarize,
)
from .spec import ResNetSpec, resnet18_spec
from .state import load_state_file, random_state
from .training import bn_counts, compare_states, labels, tolerance

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _frameworks(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        out = list(dict.fromkeys(canonical_name(n) for n in names))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not out:
        raise argparse.ArgumentTypeError("name at least one framework")
    return out


def _positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def load_backends(frameworks: Sequence[str], device: str) -> tuple[dict, dict[str, str]]:
    """The installed backends that can run on ``device``, and why the others are skipped."""
    backends, skipped = {}, {}
    for name in frameworks:
        try:
            be = get_backend(name)
        except BackendUnavailable as e:
            skipped[name] = str(e)
            continue
        if device not in be.devices():
            skipped[name] = f"{name} sees no GPU here"
            continue
        backends[name] = be
    return backends, skipped


def eval_sections(backends: dict, spec: ResNetSpec, state: dict, x: np.ndarray, device: str,
                  dtype: str, rtol: float, log: Callable[[str], None]) -> list[Section]:
    acts = {}
    for name, be in backends.items():
        log(f"running {name} on {device} ...")
        model = be.build(spec, dtype=dtype)
        be.load_state(model, state)
        acts[name] = be.activations(model, x, device=device)
    return [Section("activations, eval mode", rtol,
                    pairwise(acts, lambda o, r, *_: compare(o, r, rtol)))]


def train_sections(backends: dict, spec: ResNetSpec, state: dict, x: np.ndarray, device: str,
                   dtype: str, args: argparse.Namespace, log: Callable[[str], None]
                   ) -> list[Section]:
    y = labels(spec, x.shape[0], args.seed)
    acts, grads, after = {}, {}, {}
    for name, be in backends.items():
        log(f"running {name} on {device} ...")
        model = be.build(spec, dtype=dtype)
        be.load_state(model, state)
        acts[name] = be.activations(model, x, training=True, device=device)
        loss, g = be.gradients(model, x, y, device=device)
        grads[name] = {"loss": np.array([loss]), **g}
        for _ in range(args.steps):
            be.sgd_step(model, x, y, args.lr, args.momentum, args.weight_decay, device=device)
        after[name] = be.export_state(model)
    counts = bn_counts(spec, next(iter(acts.values())))
    b_act, b_grad = tolerance("activations", dtype), tolerance("gradients", dtype)
    b_step = tolerance("steps", dtype, args.steps)
    return [
        Section("activations, training mode (batch statistics)", b_act,
                pairwise(acts, lambda o, r, *_: compare(o, r, b_act))),
        Section("loss and gradients (floor: 1e-3 of the largest gradient)", b_grad,
                pairwise(grads, lambda o, r, *_: compare(o, r, b_grad, floor=global_floor(r)))),
        Section(f"parameters and running statistics after {args.steps} SGD step(s), lr "
                f"{args.lr:g}, momentum {args.momentum:g}, weight decay {args.weight_decay:g} "
                "(running_var in the reference's convention)", b_step,
                pairwise(after, lambda o, r, on, rn: compare_states(
                    o, r, state, rtol=b_step, unit=spec, steps=args.steps, counts=counts,
                    other_var=backends[on].convention.running_var,
                    ref_var=backends[rn].convention.running_var))),
    ]


def cmd_check(args: argparse.Namespace) -> int:
    if args.weights:
        try:
            state, spec = load_state_file(args.weights)
        except ValueError as e:
            raise CliError(str(e)) from None
        if not isinstance(spec, ResNetSpec):
            raise CliError(f"{args.weights}: holds a {type(spec).__name__}, not a whole ResNet")
        source = f"weights from {args.weights}"
    else:
        spec = resnet18_spec()
        state = random_state(spec, args.seed)
        source = f"random weights and BatchNorm statistics (seed {args.seed})"
    rtol = args.rtol if args.rtol is not None else (
        EVAL_RTOL_GPU if args.device == "gpu" else EVAL_RTOL_CPU)
    x = np.random.default_rng(args.seed).standard_normal(
        (args.batch, spec.in_channels, args.size, args.size)).astype(np.float32)
    print(f"{spec.name}: {source}; input {x.shape} NCHW; {args.mode} mode; {args.dtype}; "
          f"device {args.device}" + (f"; bound max|a-b|/max|b| <= {rtol:g}"
                                     if args.mode == "eval" else ""))
    log = (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None)
    backends, skipped = load_backends(args.frameworks, args.device)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if len(backends) < 2:
        raise CliError(f"need at least two frameworks to compare, have {sorted(backends) or 'none'}")
    if args.mode == "eval":
        sections = eval_sections(backends, spec, state, x, args.device, args.dtype, rtol, log)
    else:
        sections = train_sections(backends, spec, state, x, args.device, args.dtype, args, log)
    ok = True
    for section in sections:
        if len(sections) > 1:
            print(f"\n== {section.title}; bound {section.bound:g}")
        print(format_section(section))
        ok = ok and section.ok
    n_rows = sum(len(next(iter(s.pairs.values()))) for s in sections)
    print(f"{'PASS' if ok else 'FAIL'}: {len(backends)} frameworks ({', '.join(backends)}), "
          f"{n_rows} rows, {len(sections[0].pairs)} pair(s), {args.mode} mode")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "spec": spec.to_dict(), "input_shape": list(x.shape), "device": args.device,
            "mode": args.mode, "dtype": args.dtype, "ok": ok, "skipped": skipped,
            "sections": [{"title": s.title, "bound": s.bound, "summary": summarize(s),
                          "rows": {f"{b} vs {a}": [r.__dict__ | {"shape": list(r.shape)}
                                                   for r in rows]
                                   for (a, b), rows in s.pairs.items()}}
                         for s in sections]}, indent=1))
    return EXIT_OK if ok else EXIT_MISMATCH


def cmd_traps(args: argparse.Namespace) -> int:
    from . import traps
    missing = [n for n in BACKEND_NAMES if not load_backends([n], "cpu")[0]]
    if missing:
        raise CliError("traps compares all three frameworks; not installed: " + ", ".join(
            install_hint(n) for n in missing))
    log = (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None)
    items = traps.findings(log)
    if args.markdown:
        print(traps.markdown(items))
    else:
        for f in items:
            print(f"{f.trap}: {f.measured}\n    PyTorch: {f.pytorch} | Keras: {f.keras} | "
                  f"Gluon: {f.gluon}\n    suite: {f.fix} (test: {f.test})")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .data import DataError, load
    from .train import TrainConfig, train
    names = list(BACKEND_NAMES) if args.framework == "all" else [canonical_name(args.framework)]
    backends, skipped = load_backends(names, "cpu")
    if skipped:
        raise CliError("; ".join(skipped.values()))
    try:
        data = load(args.data)
    except DataError as e:
        raise CliError(str(e)) from None
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      resize=args.resize, seed=args.seed, init=args.init)
    try:
        runs = train(list(backends), data, cfg, Path(args.out), progress=not args.quiet)
    except ValueError as e:  # an --init file that does not fit
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: the files in {args.out} are from the last complete epoch",
              file=sys.stderr)
        return 130
    for r in runs:
        print(f"{r.name}: {r.checkpoint}, {r.native}, {r.dir / 'metrics.json'}")
    if len(runs) > 1:
        print(f"comparison: {Path(args.out) / 'comparison.json'}, "
              f"{Path(args.out) / 'comparison.png'}")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import DataError, fetch_fashion_mnist, load_fashion_mnist
    bars: dict[str, Any] = {}

    def progress(name: str, done: int, total: Optional[int]) -> None:
        if args.quiet:
            return
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, unit="B", unit_scale=True,
                                                           desc=name, file=sys.stderr))
        bar.update(done - bar.n)
    try:
        paths = fetch_fashion_mnist(args.dir, progress=progress,
                                    **({"base_url": args.url} if args.url else {}))
        data = load_fashion_mnist(args.dir)
    except DataError as e:
        raise CliError(str(e)) from None
    finally:
        for bar in bars.values():
            bar.close()
    print(f"fashion-mnist: {len(data.train)} train and {len(data.test)} test images, md5 "
          f"verified: {', '.join(p.name for p in paths)} in {args.dir}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"eager", "compiled"}:
        raise CliError(f"--modes takes eager and/or compiled, got {args.modes!r}")
    backends, skipped = load_backends(args.frameworks, "cpu")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if "torch" not in backends:
        raise CliError("bench times every mode against eager PyTorch: " + install_hint("torch"))
    log = (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None)
    report = bench.run(list(backends), modes, args.batch, args.size, args.threads,
                       warmup=args.warmup, reps=args.reps, log=log)
    print(bench.format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        bench.plot(report, args.plot)
    wrong = [f"{r['framework']} {r['mode']}" for r in report["results"]
             if "error" in r or not r["parity"]["ok"]]
    if wrong:
        print(f"not timed (wrong or failed): {', '.join(wrong)}")
    return EXIT_MISMATCH if wrong else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resnet-parity",
        description="d2l's ResNet-18 in PyTorch, Keras and MXNet Gluon: prove they compute the "
                    "same function, layer by layer.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    c = sub.add_parser(
        "check", help="load one set of weights into every framework and compare each layer",
        description="Build ResNet-18 in each installed framework, load one set of weights into "
                    "all, run one input, and print per layer the max absolute and relative "
                    "difference of every pair. Exit status 1 if any layer is out of bounds.")
    c.add_argument("--frameworks", type=_frameworks, default=list(BACKEND_NAMES),
                   help="comma-separated: torch,tf,mxnet (default: all three)")
    c.add_argument("--size", type=_positive, default=96, help="input height and width (96)")
    c.add_argument("--batch", type=_positive, default=2, help="batch size (2)")
    c.add_argument("--seed", type=int, default=0, help="seed for weights and input (0)")
    c.add_argument("--weights", metavar="FILE",
                   help="canonical safetensors file (default: random weights and random "
                        "BatchNorm statistics)")
    c.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="cpu (default) or gpu")
    c.add_argument("--rtol", type=float, default=None,
                   help=f"relative bound per layer (default {EVAL_RTOL_CPU:g} on cpu, "
                        f"{EVAL_RTOL_GPU:g} on gpu)")
    c.add_argument("--mode", choices=["eval", "train"], default="eval",
                   help="eval (default): activations with running statistics; train: "
                        "training-mode activations, loss and gradients, and the state after "
                        "--steps SGD steps")
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float32 (default) or float64, where rounding no longer hides "
                        "semantic differences")
    c.add_argument("--lr", type=float, default=0.05, help="train mode: learning rate (0.05, d2l's)")
    c.add_argument("--momentum", type=float, default=0.0, help="train mode: SGD momentum (0)")
    c.add_argument("--weight-decay", type=float, default=0.0,
                   help="train mode: PyTorch-style (coupled L2) weight decay (0)")
    c.add_argument("--steps", type=_positive, default=1, help="train mode: SGD steps (1)")
    c.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_check)
    t = sub.add_parser(
        "traps", help="measure every difference between the frameworks (README table)",
        description="Measure, on this machine, each difference between PyTorch, Keras and Gluon "
                    "that the suite fixes or exposes: d2l's Keras padding and eps, BatchNorm "
                    "momentum and running variance, weight decay, initialisers, float32 "
                    "training. Needs all three frameworks.")
    t.add_argument("--markdown", action="store_true", help="print the README's table")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    t.set_defaults(func=cmd_traps)

    tr = sub.add_parser(
        "train", help="train ResNet-18 the d2l way in one framework or all three",
        description="Train d2l's ResNet-18 (SGD, softmax cross-entropy) with each framework's own "
                    "loop: a torch DataLoader and optimizer, tf.data and Keras fit, a Gluon "
                    "DataLoader and Trainer. Prints d2l's line per epoch and writes, after every "
                    "complete epoch, OUT/<framework>/resnet18.safetensors, the framework's own "
                    "checkpoint and metrics.json. With --framework all the three start from one "
                    "initial state and see the same batches in the same order; their drift is "
                    "printed per epoch and plotted to OUT/comparison.png.")
    tr.add_argument("--framework", default="torch",
                    choices=["torch", "tf", "mxnet", "all", "pytorch", "keras", "gluon"],
                    help="which framework (torch), or all three side by side")
    tr.add_argument("--data", default="builtin", metavar="DIR|builtin",
                    help="a directory with the four Fashion-MNIST .gz files (see `resnet-parity "
                         "data`), or builtin: scikit-learn's 8x8 digits, no download (default)")
    tr.add_argument("--epochs", type=_positive, default=10, help="epochs (10)")
    tr.add_argument("--batch-size", type=_positive, default=256, help="batch size (256)")
    tr.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (0.05)")
    tr.add_argument("--resize", type=_positive, default=96, help="image size (96)")
    tr.add_argument("--out", default="runs", metavar="DIR", help="output directory (runs)")
    tr.add_argument("--init", default="xavier", metavar="xavier|FILE",
                    help="Xavier-uniform (d2l's init_cnn, default) or a canonical safetensors file")
    tr.add_argument("--seed", type=int, default=0, help="seed for init and batch order (0)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=cmd_train)

    d = sub.add_parser(
        "data", help="download a data set (fashion-mnist) and verify it",
        description="Download the four Fashion-MNIST files into DIR, verify their md5 "
                    "checksums and write each atomically; files already there and intact are "
                    "kept.")
    d.add_argument("dataset", choices=["fashion-mnist"], help="the data set")
    d.add_argument("dir", metavar="DIR", help="where to put the files")
    d.add_argument("--url", default=None, help="mirror to download from (default: the "
                   "Fashion-MNIST S3 bucket torchvision uses)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_data)

    b = sub.add_parser(
        "bench", help="time the same ResNet-18 in each framework and mode, side by side",
        description="Forward throughput, training-step throughput, batch-1 latency and peak "
                    "memory of ResNet-18 (same weights, same input) in every framework and "
                    "mode: PyTorch eager and torch.compile; Keras eager, tf.function and XLA; "
                    "Gluon imperative and hybridized (static_alloc, static_shape). Each runs in "
                    "its own process with the thread count set explicitly, and is timed only "
                    "after it computes the same function as eager PyTorch. Reports GFLOP/s "
                    "against the float32 matmul peak measured in the same run.")
    b.add_argument("--frameworks", type=_frameworks, default=list(BACKEND_NAMES),
                   help="comma-separated: torch,tf,mxnet (default: all three)")
    b.add_argument("--batch", type=_positive, default=32, help="batch size (32)")
    b.add_argument("--size", type=_positive, default=96, help="image size (96)")
    b.add_argument("--threads", type=_positive, default=os.cpu_count() or 1,
                   help="threads for every framework (default: all cores)")
    b.add_argument("--modes", default="eager,compiled", help="eager,compiled (both)")
    b.add_argument("--warmup", type=_positive, default=3, help="warm-up runs (3)")
    b.add_argument("--reps", type=_positive, default=10, help="timed runs; median reported (10)")
    b.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=cmd_bench)

    from .cli_convert import add_parsers  # convert, inspect (imports this module)
    add_parsers(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"resnet-parity: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `resnet-parity check | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

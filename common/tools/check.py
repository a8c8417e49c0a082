"""``resnet-parity check``: one set of weights in every framework, compared layer by layer.

Eval mode compares the activations of every named layer; train mode compares training-mode
activations, the loss and every gradient, and the state after ``--steps`` SGD steps, each
against the bound of :mod:`common.core.step_parity`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from ..core.backend import PRECISIONS
from ..core.compare import (
    EVAL_RTOL_CPU,
    EVAL_RTOL_GPU,
    Section,
    compare,
    format_section,
    global_floor,
    pairwise,
    summarize,
)
from ..core.spec import ARCHITECTURES, NETWORKS, ConvNeXtSpec, Network, architecture
from ..core.state import load_state_file, random_state, write_text
from ..core.step_parity import WELL_CONDITIONED, bn_counts, compare_states, labels, tolerance
from .command import (
    EXIT_MISMATCH,
    EXIT_OK,
    CliError,
    Log,
    framework_list,
    load_backends,
    positive,
    progress_log,
)
from .oracle import (
    MXNET_ERF_GRADIENT,
    eval_oracle,
    format_computed_in,
    format_trajectory,
    gradient_bound,
    train_oracle,
)
from .registry import BACKEND_NAMES


def image_size(text: str) -> tuple[int, int]:
    """``--size``: ``N`` (square) or ``HxW``."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    h, w = (positive(p) for p in (parts if len(parts) == 2 else parts * 2))
    return h, w


def eval_sections(backends: dict, spec: Network, state: dict, x: np.ndarray, device: str,
                  dtype: str, rtol: float, log: Log) -> list[Section]:
    acts = {}
    for name, be in backends.items():
        log(f"running {name} on {device} ...")
        model = be.build(spec, dtype=dtype)
        be.load_state(model, state)
        acts[name] = be.activations(model, x, device=device)
    return [Section("activations, eval mode", rtol,
                    pairwise(acts, lambda o, r, *_: compare(o, r, rtol)))]


def train_sections(backends: dict, spec: Network, state: dict, x: np.ndarray, device: str,
                   dtype: str, args: argparse.Namespace, log: Log) -> list[Section]:
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
    b_act, b_grad = tolerance("activations", dtype), gradient_bound(spec, dtype)
    # a network without BatchNorm (ConvNeXt) has none of its ill-conditioned backward passes
    b_step = tolerance("steps", dtype, args.steps,
                       bn_values=min(counts.values(), default=WELL_CONDITIONED))
    return [
        Section("activations, training mode (batch statistics)", b_act,
                pairwise(acts, lambda o, r, *_: compare(o, r, b_act))),
        Section("loss and gradients (floor: 1e-3 of the largest gradient)"
                + (f"; {MXNET_ERF_GRADIENT:g} for MXNet, whose float64 erf gradient is 3.4e-8 off"
                   if gradient_bound(spec, dtype, "mxnet") > b_grad and "mxnet" in backends
                   else ""), b_grad,
                pairwise(grads, lambda o, r, on, rn: compare(
                    o, r, gradient_bound(spec, dtype, on, rn), floor=global_floor(r)))),
        Section(f"parameters and running statistics after {args.steps} SGD step(s), lr "
                f"{args.lr:g}, momentum {args.momentum:g}, weight decay {args.weight_decay:g} "
                "(running_var in the reference's convention)", b_step,
                pairwise(after, lambda o, r, on, rn: compare_states(
                    o, r, state, rtol=b_step, unit=spec, steps=args.steps, counts=counts,
                    other_var=backends[on].convention.running_var,
                    ref_var=backends[rn].convention.running_var))),
    ]


def run_check(args: argparse.Namespace) -> int:
    if args.weights and args.arch:
        raise CliError("--weights brings its own spec; --arch is for random weights")
    if args.weights:
        try:
            state, spec = load_state_file(args.weights)
        except ValueError as e:
            raise CliError(str(e)) from None
        if not isinstance(spec, NETWORKS):
            raise CliError(f"{args.weights}: holds a {type(spec).__name__}, not a whole network")
        source = f"weights from {args.weights}"
    else:
        spec = architecture(args.arch or "resnet18")
        state = random_state(spec, args.seed)
        source = f"random weights and BatchNorm statistics (seed {args.seed})"
    notes = []
    if args.mode == "train" and isinstance(spec, ConvNeXtSpec) and spec.drop_path_rate > 0:
        notes.append(f"stochastic depth off (drop_path_rate {spec.drop_path_rate:g} -> 0): each "
                     "framework draws its own drop mask, so no two would drop the same samples")
        spec = dataclasses.replace(spec, drop_path_rate=0.0)
    if args.precision != "float32" and args.dtype != "float32":
        raise CliError(f"--precision {args.precision} keeps float32 weights; it does not mix "
                       f"with --dtype {args.dtype}")
    oracle = args.oracle or args.precision != "float32"
    if oracle and args.dtype == "float64":
        raise CliError("--oracle measures float32 (or --precision) runs against float64 twins; "
                       "--dtype float64 is the truth itself")
    if oracle and args.rtol is not None:
        raise CliError("--rtol sets the pairwise eval bound; the oracle's bounds are its own")
    if args.precision != "float32" and not args.oracle:
        notes.append(f"--precision {args.precision} is measured against the float64 truth "
                     "(--oracle): pairwise bounds are float32's")
    rtol = args.rtol if args.rtol is not None else (
        EVAL_RTOL_GPU if args.device == "gpu" else EVAL_RTOL_CPU)
    x = np.random.default_rng(args.seed).standard_normal(
        (args.batch, spec.in_channels, *args.size)).astype(np.float32)
    print(f"{spec.name}: {source}; input {x.shape} NCHW; {args.mode} mode; "
          + (f"{args.precision} against the float64 truth" if oracle else args.dtype)
          + f"; device {args.device}" + (f"; bound max|a-b|/max|b| <= {rtol:g}"
                                         if args.mode == "eval" and not oracle else ""))
    for note in notes:
        print(f"note: {note}")
    log = progress_log(args.quiet)
    backends, skipped = load_backends(args.frameworks, args.device)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if len(backends) < (1 if oracle else 2):
        raise CliError(f"need at least two frameworks to compare, have {sorted(backends) or 'none'}")
    if oracle:
        return report_oracle(backends, spec, state, x, args, skipped, log)
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
        write_text(args.json, json.dumps({
            "spec": spec.to_dict(), "input_shape": list(x.shape), "device": args.device,
            "mode": args.mode, "dtype": args.dtype, "ok": ok, "skipped": skipped,
            "sections": sections_json(sections)}, indent=1))
    return EXIT_OK if ok else EXIT_MISMATCH


def sections_json(sections: list[Section]) -> list[dict]:
    """The sections as ``--json`` writes them: bound, summary and every row of every pair."""
    return [{"title": s.title, "bound": s.bound, "summary": summarize(s),
             "rows": {f"{b} vs {a}": [r.__dict__ | {"shape": list(r.shape)} for r in rows]
                      for (a, b), rows in s.pairs.items()}}
            for s in sections]


def report_oracle(backends: dict, spec: Network, state: dict, x: np.ndarray,
                  args: argparse.Namespace, skipped: dict, log: Log) -> int:
    """``check --oracle``: print (and with ``--json`` write) every framework against the truth."""
    if args.mode == "eval":
        report = eval_oracle(backends, spec, state, x, args.device, args.precision, log)
    else:
        report = train_oracle(backends, spec, state, x, args.device, args.precision, args, log)
    for note in report.notes:
        print(f"note: {note}")
    for name, why in report.cannot.items():
        print(f"{name} cannot run {args.precision} here: {why}")
    for section in report.sections:
        print(f"\n== {section.title}; bound {section.bound:g}")
        print(format_section(section) if section.pairs else
              "one framework ran: its float64 twin is the truth, unconfirmed by another's")
    print("\n== what each framework computed in (the dtype of every recorded layer output)")
    print("\n".join(format_computed_in(report, args.precision)))
    if report.trajectory:
        print("\n== trajectory: worst parameter error against the truth after each step, and the "
              "ReLU/max-pool decisions of that step's forward pass on the other side of zero")
        print("\n".join(format_trajectory(report)))
    ok = report.ok
    truth_ok = all(s.ok for s in report.sections if s.title.startswith("truth"))
    ran = [n for n in backends if n not in report.cannot]
    print(f"{'PASS' if ok else 'FAIL'}: {len(ran)} framework(s) ({', '.join(ran)}) "
          f"in {args.precision} against the float64 truth, {args.mode} mode"
          + ("" if truth_ok else "; the float64 twins disagree, so the truth is not established"))
    if args.json:
        write_text(args.json, json.dumps({
            "spec": spec.to_dict(), "input_shape": list(x.shape), "device": args.device,
            "mode": args.mode, "precision": args.precision, "oracle": True, "ok": ok,
            "truth_ok": truth_ok, "skipped": skipped, "notes": report.notes,
            "cannot": report.cannot,
            "computed_in": report.computed_in, "trajectory": report.trajectory,
            "sections": sections_json(report.sections)}, indent=1))
    return EXIT_OK if ok else EXIT_MISMATCH


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``check``."""
    c = sub.add_parser(
        "check", help="load one set of weights into every framework and compare each layer",
        description="Build ResNet-18 (or --arch: the ResNet family, ConvNeXt) in each installed framework, "
                    "load one set of weights into "
                    "all, run one input, and print per layer the max absolute and relative "
                    "difference of every pair. Exit status 1 if any layer is out of bounds.")
    c.add_argument("--frameworks", type=framework_list, default=list(BACKEND_NAMES),
                   help="comma-separated: torch,tf,mxnet (default: all three)")
    c.add_argument("--size", type=image_size, default=(96, 96), metavar="N|HxW",
                   help="input height and width: 96 (default) or HxW, say 45x39")
    c.add_argument("--batch", type=positive, default=2, help="batch size (2)")
    c.add_argument("--seed", type=int, default=0, help="seed for weights and input (0)")
    c.add_argument("--arch", choices=list(ARCHITECTURES), metavar="NAME",
                   help="the network, with random weights: " + ", ".join(ARCHITECTURES)
                        + " (default resnet18, d2l's)")
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
    c.add_argument("--oracle", action="store_true",
                   help="measure each framework against the float64 truth (the float64 twins "
                        "of all frameworks, whose agreement is reported) instead of pairwise")
    c.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                   help="what the runs under test compute in: float32 (default), or each "
                        "framework's mixed bfloat16/float16 (PyTorch autocast, Keras dtype "
                        "policy, MXNet AMP), float32 weights kept; implies --oracle")
    c.add_argument("--lr", type=float, default=0.05, help="train mode: learning rate (0.05, d2l's)")
    c.add_argument("--momentum", type=float, default=0.0, help="train mode: SGD momentum (0)")
    c.add_argument("--weight-decay", type=float, default=0.0,
                   help="train mode: PyTorch-style (coupled L2) weight decay (0)")
    c.add_argument("--steps", type=positive, default=1, help="train mode: SGD steps (1)")
    c.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=run_check)

"""The ``resnet-parity`` command."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailable, canonical_name, get_backend, install_hint
from .compare import EVAL_RTOL_CPU, EVAL_RTOL_GPU, Row, compare, global_floor
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


Pairs = dict[tuple[str, str], list[Row]]


@dataclass
class Section:
    """One per-layer report: every pair of frameworks, the first of a pair the reference."""

    title: str
    bound: float
    pairs: Pairs


def pairwise(results: dict[str, Any], fn: Callable[[Any, Any, str, str], list[Row]]) -> Pairs:
    return {(a, b): fn(results[b], results[a], b, a)
            for a, b in itertools.combinations(results, 2)}


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


def format_table(pairs: Pairs) -> str:
    keys = list(pairs)
    rows0 = next(iter(pairs.values()))
    width = max(len(r.layer) for r in rows0)
    head = f"{'layer':<{width}}  {'shape':<18}" + "".join(
        f" {f'{b} vs {a}':>22}" for a, b in keys) + "  status"
    sub = f"{'':<{width}}  {'':<18}" + "".join(f" {'max abs':>10} {'max rel':>11}" for _ in keys)
    lines = [head, sub, "-" * len(head)]
    for i, r in enumerate(rows0):
        cells = "".join(f" {pairs[k][i].max_abs:>10.2e} {pairs[k][i].max_rel:>11.2e}" for k in keys)
        ok = all(pairs[k][i].ok for k in keys)
        notes = "; ".join(pairs[k][i].note for k in keys if pairs[k][i].note)
        lines.append(f"{r.layer:<{width}}  {str(r.shape):<18}{cells}  {'ok' if ok else 'FAIL'}"
                     + (f"  ({notes})" if notes else ""))
    return "\n".join(lines)


def summarize(section: Section) -> list[dict]:
    out = []
    for (a, b), rows in section.pairs.items():
        w = max(rows, key=lambda r: r.max_rel)
        out.append({"pair": f"{b} vs {a}", "worst_layer": w.layer, "max_rel": w.max_rel,
                    "max_abs": max(r.max_abs for r in rows)})
    return out


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
        print(format_table(section.pairs))
        for item in summarize(section):
            print(f"{item['pair']}: worst max rel {item['max_rel']:.2e} at {item['worst_layer']}; "
                  f"max abs {item['max_abs']:.2e}")
        ok = ok and all(r.ok for rows in section.pairs.values() for r in rows)
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
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"resnet-parity: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""The ``resnet-parity`` command."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailable, canonical_name, get_backend
from .compare import EVAL_RTOL_CPU, EVAL_RTOL_GPU, Row, compare
from .spec import ResNetSpec, resnet18_spec
from .state import load_state_file, random_state

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


def parity_run(frameworks: Sequence[str], spec: ResNetSpec, state: dict, x: np.ndarray,
               device: str = "cpu", log=print) -> tuple[dict[str, dict], dict[str, str]]:
    """Load one state into every installed framework and trace ``x``.

    Returns ``(activations per framework, skipped framework -> reason)``.
    """
    acts, skipped = {}, {}
    for name in frameworks:
        try:
            be = get_backend(name)
        except BackendUnavailable as e:
            skipped[name] = str(e)
            continue
        if device not in be.devices():
            skipped[name] = f"{name} sees no GPU here"
            continue
        log(f"running {name} on {device} ...")
        model = be.build(spec)
        be.load_state(model, state)
        acts[name] = be.activations(model, x, device=device)
    return acts, skipped


def compare_pairs(acts: dict[str, dict], rtol: float) -> dict[tuple[str, str], list[Row]]:
    """Every pair of frameworks, the first of the pair as reference (torch, tf, mxnet order)."""
    return {(a, b): compare(acts[b], acts[a], rtol) for a, b in itertools.combinations(acts, 2)}


def format_table(pairs: dict[tuple[str, str], list[Row]]) -> str:
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
    print(f"{spec.name}: {source}; input {x.shape} NCHW; eval mode; device {args.device}; "
          f"bound max|a-b|/max|b| <= {rtol:g}")
    log = (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None)
    acts, skipped = parity_run(args.frameworks, spec, state, x, args.device, log)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if len(acts) < 2:
        raise CliError(f"need at least two frameworks to compare, have {sorted(acts) or 'none'}")
    pairs = compare_pairs(acts, rtol)
    print(format_table(pairs))
    ok = all(r.ok for rows in pairs.values() for r in rows)
    summary = []
    for (a, b), rows in pairs.items():
        w = max(rows, key=lambda r: r.max_rel)
        summary.append({"pair": f"{b} vs {a}", "worst_layer": w.layer, "max_rel": w.max_rel,
                        "max_abs": max(r.max_abs for r in rows)})
        print(f"{b} vs {a}: worst max rel {w.max_rel:.2e} at {w.layer}; "
              f"max abs {summary[-1]['max_abs']:.2e}")
    n_layers = len(next(iter(pairs.values())))
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: {len(acts)} frameworks ({', '.join(acts)}), {n_layers} layers, "
          f"{len(pairs)} pair(s), bound {rtol:g}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "spec": spec.to_dict(), "input_shape": list(x.shape), "device": args.device,
            "rtol": rtol, "ok": ok, "skipped": skipped, "summary": summary,
            "layers": {f"{b} vs {a}": [r.__dict__ | {"shape": list(r.shape)} for r in rows]
                       for (a, b), rows in pairs.items()}}, indent=1))
    return EXIT_OK if ok else EXIT_MISMATCH


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
    c.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_check)
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

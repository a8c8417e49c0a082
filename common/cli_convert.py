"""``resnet-parity convert`` and ``resnet-parity inspect``: registered by :func:`add_parsers`."""

from __future__ import annotations

import argparse
from typing import Any

from .backend import BackendUnavailable
from .cli import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, CliError
from .compare import EVAL_RTOL_CPU, format_section
from .convert import ARCHES, Conversion, convert, format_inspection, inspect_checkpoint, stderr_log
from .formats import FAMILY_NAMES, family_name

FORMATS_HELP = """\
formats (inferred from the file name; --from/--to when the name does not say):
  canonical    .safetensors         common.state.save_state: tensors + the spec as metadata
  torch        .pt, .pth            PyTorch state_dict of resnet_torch's ResNet (read with
                                    torch.load(weights_only=True): a pickle that would run
                                    code is refused, never executed)
  torchvision  .pt, .pth            a state_dict with torchvision's resnet key names (conv1,
                                    bn1, layer2.0.downsample.0/1, fc); detected when reading
  tf           .weights.h5          Keras model.save_weights
               .keras               Keras model.save (whole model; stores the spec)
  mxnet        .params              Gluon save_parameters
               PREFIX-symbol.json   Gluon HybridBlock.export: the graph + PREFIX-0000.params
"""

SPEC_HELP = """\
spec: .safetensors and .keras files store theirs. For the others give --spec FILE (a JSON
spec, e.g. ResNetSpec.to_json()) or --arch resnet18 (d2l's) / torchvision-resnet18; with
--arch, in_channels and num_classes are read off the tensor shapes where unambiguous.
"""


def _family(text: str) -> str:
    try:
        return family_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def add_parsers(subparsers: Any) -> None:
    """Register ``convert`` and ``inspect`` on ``resnet-parity``'s subcommand parsers."""
    formats = ", ".join(FAMILY_NAMES)
    c = subparsers.add_parser(
        "convert", help="convert a checkpoint between PyTorch, Keras, Gluon and safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert the checkpoint SRC into DST, then verify: DST is read back "
                    "through its framework, its state must equal SRC's bit for bit, and SRC's "
                    "and DST's models run on one fixed input with every layer compared. DST is "
                    "written to a temporary file beside it and renamed into place only when "
                    "all of that passed, so a failed or interrupted conversion leaves no DST. "
                    f"Exit status: {EXIT_OK} converted and verified, {EXIT_MISMATCH} DST would "
                    f"not compute what SRC computes (nothing written), {EXIT_USAGE} bad usage or "
                    "bad input (one line on stderr naming the file).",
        epilog=FORMATS_HELP + "\n" + SPEC_HELP)
    c.add_argument("src", metavar="SRC", help="the checkpoint to read")
    c.add_argument("dst", metavar="DST", help="the file to write (for a Gluon export: "
                                              "PREFIX-symbol.json, with PREFIX-0000.params)")
    c.add_argument("--from", dest="src_format", type=_family, metavar="FORMAT",
                   help=f"SRC's format when its name does not say: {formats}")
    c.add_argument("--to", dest="dst_format", type=_family, metavar="FORMAT",
                   help=f"DST's format when its name does not say: {formats}")
    spec = c.add_mutually_exclusive_group()
    spec.add_argument("--spec", metavar="FILE", help="JSON spec of the network in SRC")
    spec.add_argument("--arch", choices=list(ARCHES),
                      help="a known network; in_channels and num_classes come from SRC's shapes")
    c.add_argument("--force", action="store_true", help="overwrite an existing DST")
    c.add_argument("--no-verify", dest="verify", action="store_false",
                   help="write DST without reading it back and comparing the models")
    c.add_argument("--allow-nonfinite", action="store_true",
                   help="convert weights holding NaN or inf (refused by default); the "
                        "activations are then not compared, the state still is")
    c.add_argument("--size", type=_positive, default=64,
                   help="height and width of the verification input (64)")
    c.add_argument("--seed", type=int, default=0, help="seed of the verification input (0)")
    c.add_argument("--rtol", type=float, default=EVAL_RTOL_CPU,
                   help=f"relative bound per layer, max|a-b|/max|b| ({EVAL_RTOL_CPU:g})")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_convert)

    i = subparsers.add_parser(
        "inspect", help="show a checkpoint's format, spec and tensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print FILE's format, its spec (where the format stores one), the number "
                    "of parameters, and each tensor's name, shape, dtype, min, max, mean and "
                    "count of NaN/inf values. Nothing in FILE is executed. Exit status: "
                    f"{EXIT_OK} readable, {EXIT_MISMATCH} readable but holding NaN or inf, "
                    f"{EXIT_USAGE} unreadable (one line on stderr naming the file).",
        epilog=FORMATS_HELP)
    i.add_argument("file", metavar="FILE", help="the checkpoint (a Gluon export: either file)")
    i.add_argument("--from", dest="src_format", type=_family, metavar="FORMAT",
                   help=f"FILE's format when its name does not say: {formats}")
    i.set_defaults(func=cmd_inspect)


def cmd_convert(args: argparse.Namespace) -> int:
    log = stderr_log if not args.quiet else (lambda m: None)
    try:
        result = convert(args.src, args.dst, src_format=args.src_format,
                         dst_format=args.dst_format, spec_file=args.spec, arch=args.arch,
                         force=args.force, verify_output=args.verify,
                         allow_nonfinite=args.allow_nonfinite, size=args.size, seed=args.seed,
                         rtol=args.rtol, log=log)
    except (ValueError, BackendUnavailable, OSError) as e:
        raise CliError(_one_line(e)) from None
    print(report(result))
    return EXIT_OK if result.ok else EXIT_MISMATCH


def report(r: Conversion) -> str:
    """What ``convert`` prints: source, spec, destination, verification, verdict and timings."""
    src = r.src
    lines = [f"SRC {src.path}: {src.format.name} ({src.format.description}), "
             f"{len(src.tensors)} tensors",
             f"spec {r.spec.name} ({r.spec_source}): {r.spec.to_json()}",
             f"DST {', '.join(str(p) for p in r.dst)}: {r.dst_format.name} "
             f"({r.dst_format.description})"]
    lines += [f"note: {n}" for n in r.notes]
    v = r.verification
    if v is not None:
        lines.append(f"state: {v.tensors} tensors read back from DST, " + (
            "all bit-identical to SRC's" if not v.differing else
            f"{len(v.differing)} differ: {', '.join(v.differing)}"))
        if v.section is not None:
            lines.append(f"{v.section.title}; SRC run in {v.runs[0]}, DST in {v.runs[1]}; "
                         f"bound max|a-b|/max|b| <= {v.section.bound:g}")
            lines.append(format_section(v.section))
        if v.note:
            lines.append(f"note: {v.note}")
    times = ", ".join(f"{k} {s:.2f} s" for k, s in r.seconds.items())
    if not r.written:
        lines.append(f"FAIL: DST would not compute what SRC computes; nothing written ({times}); "
                     "--no-verify writes it anyway")
    elif v is None:
        lines.append(f"wrote {', '.join(str(p) for p in r.dst)} without verifying ({times})")
    else:
        lines.append(f"PASS: wrote {', '.join(str(p) for p in r.dst)} ({times})")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        ins = inspect_checkpoint(args.file, args.src_format)
    except (ValueError, BackendUnavailable, OSError) as e:
        raise CliError(_one_line(e)) from None
    print(format_inspection(ins))
    return EXIT_MISMATCH if ins.nonfinite else EXIT_OK

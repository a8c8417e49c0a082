"""bfloat16 against float32: each framework's own mixed precision, forward pass, side by side.

Run from the repository root (figures, never pass/fail timings; README "Which framework is
right?"):

    python benchmarks/bench_precision.py --arch resnet50 --size 224 --batch 8

Each framework runs in its idiom: PyTorch ``torch.autocast`` (eager, under ``no_grad``), Keras a
``mixed_bfloat16`` dtype policy (the model called inside ``tf.function``), Gluon AMP
(``amp.init``, hybridized). MXNet's AMP is process-wide, so every (framework, precision) runs in a
child process of its own; the parent prints one table with the bfloat16/float32 ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np


def _one(framework: str, precision: str, arch: str, size: int, batch: int, repeat: int) -> dict:
    """Time ``repeat`` forward passes in this process; img/s and GFLOP/s of the best."""
    from common import architecture, get_backend, random_state
    from common.tools.bench import _timed, conv_macs

    spec = architecture(arch, in_channels=3, num_classes=1000)
    be = get_backend(framework)
    model = be.build(spec, precision=precision)
    be.load_state(model, random_state(spec, 0))
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    if framework == "torch":
        import torch
        xt = torch.from_numpy(x)
        model.eval()

        def run() -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=getattr(torch, precision),
                                                 enabled=precision != "float32"):
                model(xt)
    elif framework == "tf":
        import tensorflow as tf
        xt = tf.constant(np.transpose(x, (0, 2, 3, 1)))
        fn = tf.function(lambda t: model(t, training=False))

        def run() -> None:
            fn(xt).numpy()
    else:
        from resnet_mxnet._compat import mx
        model.hybridize(static_alloc=True, static_shape=True)
        xt = mx.nd.array(x)

        def run() -> None:
            model(xt).wait_to_read()
    best = min(_timed(run, 2, repeat)["all_s"])
    macs = conv_macs(spec, size) * batch
    return {"framework": framework, "precision": precision, "seconds": best,
            "img_s": batch / best, "gflop_s": 2 * macs / best / 1e9}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50", help="family member (resnet50)")
    p.add_argument("--size", type=int, default=224, help="input height and width (224)")
    p.add_argument("--batch", type=int, default=8, help="batch size (8)")
    p.add_argument("--repeat", type=int, default=5, help="timed passes, best kept (5)")
    p.add_argument("--frameworks", default="torch,tf,mxnet", help="comma-separated")
    p.add_argument("--one", nargs=2, metavar=("FRAMEWORK", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(*args.one, args.arch, args.size, args.batch, args.repeat)))
        return 0
    print(f"{args.arch} forward, batch {args.batch} at {args.size}x{args.size}, best of "
          f"{args.repeat}")
    print(f"{'framework':<10}{'float32 img/s':>15}{'bfloat16 img/s':>16}{'bf16/f32':>10}"
          f"{'f32 GFLOP/s':>13}{'bf16 GFLOP/s':>14}")
    for fw in args.frameworks.split(","):
        got = {}
        for precision in ("float32", "bfloat16"):
            out = subprocess.run([sys.executable, __file__, "--one", fw, precision, "--arch",
                                  args.arch, "--size", str(args.size), "--batch", str(args.batch),
                                  "--repeat", str(args.repeat)], capture_output=True, text=True)
            if out.returncode:
                print(f"{fw} {precision}: failed: {out.stderr.strip().splitlines()[-1:]}")
                break
            got[precision] = json.loads(out.stdout.strip().splitlines()[-1])
        if len(got) == 2:
            f, b = got["float32"], got["bfloat16"]
            print(f"{fw:<10}{f['img_s']:>15.1f}{b['img_s']:>16.1f}{b['img_s'] / f['img_s']:>10.2f}"
                  f"{f['gflop_s']:>13.0f}{b['gflop_s']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

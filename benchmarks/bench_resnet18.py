"""Side-by-side benchmark of ResNet-18 in PyTorch, Keras and Gluon, eager and compiled.

The same as ``resnet-parity bench``; run from the repository root:

    python benchmarks/bench_resnet18.py --batch 32 --size 96 --json bench.json --plot bench.png

Figures, never pass/fail timings: see README "Side-by-side benchmark".
"""

import sys

from common.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

"""``resnet-parity train`` and ``data``: d2l's recipe in each framework, side by side.

Each framework trains with its own idiomatic loop (``resnet_<name>/train.py``); this module
feeds them the same batches in the same order, runs them an epoch at a time side by side,
prints d2l's line per epoch, writes checkpoints after every complete epoch (canonical
safetensors and the framework's own format, each written atomically, so Ctrl-C leaves the
last complete epoch intact) and a metrics file per run; with several frameworks it also
measures how far apart they drift and plots their curves.

With ``--workers N`` one framework trains data-parallel on its own engine
(``docs/architecture.md``, "Data-parallel runs"): :func:`run_data_parallel` launches this
machine's processes through :mod:`common.tools.distributed`, each of which is a
:func:`run_worker` running a :class:`DistributedRun`; rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.backend import BaseBackend
from ..core.compare import compare, global_floor, worst
from ..core.data import (
    CIFAR10_URL,
    FASHION_MNIST_URL,
    SOURCES_HELP,
    DataError,
    Dataset,
    ImageData,
    fetch_cifar10,
    fetch_fashion_mnist,
    load,
    load_cifar10,
    load_fashion_mnist,
)
from ..core.preprocess import Preprocessing, d2l_preprocessing
from ..core.spec import ARCHITECTURES, ResNetSpec, architecture, num_inputs
from ..core.state import State, load_state_file, save_state, write_text, xavier_state
from .command import EXIT_OK, EXIT_USAGE, CliError, load_backends, one_line, positive
from .distributed import (
    ENGINE_TIMEOUT,
    Cluster,
    Console,
    LaunchError,
    Reporter,
    Shard,
    WorkerDied,
    launch,
    launched_by_engine,
)
from .formats import FAMILIES, Format, Staging
from .registry import (
    BACKEND_NAMES,
    BackendUnavailable,
    canonical_name,
    framework_module,
    get_backend,
)


@dataclass
class TrainConfig:
    """d2l's recipe by default: SGD lr 0.05, 10 epochs, batch 256, images resized to 96."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.05
    resize: int = 96
    seed: int = 0
    init: str = "xavier"  # or a canonical safetensors file
    arch: str = "resnet18"  # a member of the family (d2l's ResNet-18 by default)


@dataclass
class Epoch:
    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float
    seconds: float
    step_losses: list[float] = field(default_factory=list, repr=False)

    def line(self) -> str:
        """d2l's report line."""
        return (f"epoch {self.epoch}: loss {self.loss:.3f}, train acc {self.train_acc:.3f}, "
                f"test acc {self.test_acc:.3f}, {self.examples_per_sec:.1f} examples/sec")


def initial_state(spec: ResNetSpec, cfg: TrainConfig) -> State:
    """Xavier-uniform from the seed, or the state of the ``--init`` file, whose spec must be
    ``spec`` (a file whose spec names no labels takes the data's)."""
    if cfg.init == "xavier":
        return xavier_state(spec, cfg.seed)
    state, file_spec = load_state_file(cfg.init)
    unlabelled = getattr(file_spec, "labels", None) == () and file_spec == replace(spec, labels=())
    if file_spec != spec and not unlabelled:
        raise ValueError(f"{cfg.init}: holds {file_spec}, the data needs {spec}")
    return state


def evaluate(be: BaseBackend, model: Any, data: ImageData, batch_size: int) -> float:
    """Accuracy in eval mode (running BatchNorm statistics)."""
    correct = 0
    for x, y in data.batches(batch_size, shuffle=False):
        correct += int((be.forward(model, x).argmax(axis=1) == y).sum())
    return correct / len(data)


class Run:
    """One framework's training run and its files under ``out/<framework>/``."""

    def __init__(self, name: str, spec: ResNetSpec, state: State, train: ImageData,
                 test: ImageData, cfg: TrainConfig, out: Path) -> None:
        self.be = get_backend(name)
        self.name, self.spec, self.cfg, self.test = name, spec, cfg, test
        self.model = self.make_model(state)
        self.trainer = self.make_trainer(train)
        self.n_train = len(train)
        self.dir = out / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history: list[Epoch] = []

    def make_model(self, state: State) -> Any:
        """The framework's model of ``spec``, holding ``state``."""
        model = self.be.build(self.spec)
        self.be.load_state(model, state)
        return model

    def make_trainer(self, train: ImageData) -> Any:
        """The framework's own d2l loop over ``train``."""
        return self.be.trainer(self.model, train, self.cfg.batch_size, self.cfg.lr, self.cfg.seed)

    def train_epoch(self, e: int, bar: Optional[Callable[[float, int], None]] = None
                    ) -> tuple[float, float, float, list[float]]:
        """The framework's loop over epoch ``e``: ``(loss, train accuracy, seconds, the loss
        of every step)``, ``bar(loss, n)`` told after every batch."""
        steps: list[float] = []

        def on_batch(loss: float, n: int) -> None:
            steps.append(loss)
            if bar:
                bar(loss, n)
        start = time.perf_counter()
        loss, train_acc = self.trainer.run_epoch(e, on_batch)
        return loss, train_acc, time.perf_counter() - start, steps

    def epoch(self, e: int, bar: Optional[Callable[[float, int], None]] = None) -> Epoch:
        loss, train_acc, seconds, steps = self.train_epoch(e, bar)
        test_acc = evaluate(self.be, self.model, self.test, self.cfg.batch_size)
        result = Epoch(e + 1, loss, train_acc, test_acc, self.n_train / seconds, seconds, steps)
        self.history.append(result)
        self.save()
        return result

    @property
    def preprocessing(self) -> Preprocessing:
        """What the model was trained on, stored with the checkpoint for ``predict`` and
        ``levels``: the image resized to ``--resize``, scaled to [0, 1]."""
        return d2l_preprocessing(self.cfg.resize, "L" if num_inputs(self.spec) == 1 else "RGB")

    @property
    def native_format(self) -> Format:
        """The framework's own checkpoint format, the one ``convert`` writes for it."""
        return FAMILIES[self.name][0]

    @property
    def checkpoint(self) -> Path:
        return self.dir / f"{self.spec.name}.safetensors"

    @property
    def native(self) -> Path:
        return self.dir / f"{self.spec.name}{self.native_format.suffixes[0]}"

    def save(self) -> None:
        """Checkpoints and metrics of the last complete epoch, each file written atomically."""
        state = self.be.export_state(self.model)
        save_state(self.checkpoint, state, self.spec, self.preprocessing)
        fmt = self.native_format
        with Staging(fmt, self.native, force=True) as staged:
            fmt.write(staged.path, state, self.spec)
            staged.commit()
        metrics = {"framework": self.name, "config": asdict(self.cfg), "spec": self.spec.to_dict(),
                   "checkpoint": str(self.checkpoint), "native_checkpoint": str(self.native),
                   "epochs": [asdict(h) for h in self.history], **self.metrics_extra()}
        write_text(self.dir / "metrics.json", json.dumps(metrics, indent=1))

    def metrics_extra(self) -> dict[str, Any]:
        """What else ``metrics.json`` says about the run (nothing, for one process)."""
        return {}


def drift(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Per pair: the relative distance of all parameters ``|a-b| / |a|`` (L2), the worst single
    tensor (floored relative), and the gaps in test accuracy and loss."""
    states = {r.name: r.be.export_state(r.model) for r in runs}
    out = {}
    for a, b in itertools.combinations(runs, 2):
        ref = states[a.name]
        params = [k for k in ref if not k.endswith(("running_mean", "running_var"))]
        w = worst(compare(states[b.name], ref, names=params,
                          floor=global_floor({k: ref[k] for k in params})))
        flat_a = np.concatenate([ref[k].ravel() for k in params]).astype(np.float64)
        flat_b = np.concatenate([states[b.name][k].ravel() for k in params]).astype(np.float64)
        out[f"{b.name} vs {a.name}"] = {
            "params_rel_l2": float(np.linalg.norm(flat_b - flat_a) / np.linalg.norm(flat_a)),
            "params_max_rel": w.max_rel, "worst_param": w.layer,
            "test_acc_gap": abs(a.history[-1].test_acc - b.history[-1].test_acc),
            "loss_rel_gap": abs(a.history[-1].loss - b.history[-1].loss) / abs(a.history[-1].loss)}
    return out


def plot(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """Loss and accuracy curves of every run in one PNG (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in runs:
        steps = [s for h in r.history for s in h.step_losses]
        axes[0].plot(np.arange(1, len(steps) + 1), steps, label=r.name, lw=1)
        epochs = [h.epoch for h in r.history]
        axes[1].plot(epochs, [h.train_acc for h in r.history], marker="o", label=r.name)
        axes[2].plot(epochs, [h.test_acc for h in r.history], marker="o", label=r.name)
    for ax, title in zip(axes, ("training loss per step", "train accuracy", "test accuracy")):
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("epoch")
    axes[2].set_xlabel("epoch")
    fig.suptitle("same initial weights, same batches: PyTorch, Keras, Gluon")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def train(frameworks: Sequence[str], data: Dataset, cfg: TrainConfig, out: Path,
          progress: bool = True, print_fn: Callable[[str], None] = print) -> list[Run]:
    """Train ``frameworks`` side by side, epoch by epoch; return the runs.

    On KeyboardInterrupt the runs stop; every file under ``out`` is from the last complete
    epoch, and the exception propagates for the caller to report.
    """
    from tqdm.auto import tqdm

    spec = architecture(cfg.arch, in_channels=data.channels, num_classes=len(data.classes),
                        labels=tuple(data.classes))
    state = initial_state(spec, cfg)
    train_data, test_data = ImageData(data.train, cfg.resize), ImageData(data.test, cfg.resize)
    out.mkdir(parents=True, exist_ok=True)
    runs = [Run(name, spec, state, train_data, test_data, cfg, out) for name in frameworks]
    print_fn(header(data, train_data, test_data, spec, cfg, out))
    comparison: list[dict] = []
    for e in range(cfg.epochs):
        for r in runs:
            with tqdm(total=len(train_data), unit="img", leave=False, file=sys.stderr,
                      disable=None if progress else True, desc=f"{r.name} epoch {e + 1}/{cfg.epochs}") as bar:
                def tick(loss: float, n: int) -> None:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                    bar.update(n)
                result = r.epoch(e, tick)
            print_fn(f"{r.name:>5} {result.line()}")
        if len(runs) > 1:
            gaps = drift(runs)
            comparison.append({"epoch": e + 1, **gaps})
            for pair, g in gaps.items():
                print_fn(f"      drift after epoch {e + 1}, {pair}: parameters "
                         f"{g['params_rel_l2']:.1e} (L2; worst tensor {g['worst_param']} "
                         f"{g['params_max_rel']:.1e}), test acc gap {g['test_acc_gap']:.3f}")
            _write_comparison(runs, comparison, out)
    if len(runs) > 1:
        print_fn(final_table(runs, comparison[-1]))
    return runs


def header(data: Dataset, train_data: ImageData, test_data: ImageData, spec: ResNetSpec,
           cfg: TrainConfig, out: Path) -> str:
    """The run's first line: the data, the network and the recipe."""
    return (f"{data.name}: {len(train_data)} train / {len(test_data)} test images "
            f"({'grey' if data.channels == 1 else f'{data.channels} channels'}) resized to "
            f"{cfg.resize}x{cfg.resize}; {spec.name}, init {cfg.init}, SGD lr {cfg.lr}, "
            f"batch {cfg.batch_size}, {cfg.epochs} epochs; writing to {out}")


def final_table(runs: Sequence[Run], last: dict) -> str:
    """How far apart the runs end: accuracy, loss, and parameter distance per pair."""
    lines = [f"after {runs[0].history[-1].epoch} epochs:",
             f"  {'framework':<10}{'loss':>8}{'train acc':>11}{'test acc':>10}{'examples/s':>12}"]
    for r in runs:
        h = r.history[-1]
        lines.append(f"  {r.name:<10}{h.loss:>8.4f}{h.train_acc:>11.3f}{h.test_acc:>10.3f}"
                     f"{float(np.median([e.examples_per_sec for e in r.history])):>12.1f}")
    lines.append(f"  {'pair':<16}{'params (rel L2)':>16}{'test acc gap':>14}{'loss gap (rel)':>16}")
    for pair, g in last.items():
        if pair != "epoch":
            lines.append(f"  {pair:<16}{g['params_rel_l2']:>16.2e}{g['test_acc_gap']:>14.3f}"
                         f"{g['loss_rel_gap']:>16.2e}")
    return "\n".join(lines)


def _write_comparison(runs: Sequence[Run], comparison: list[dict], out: Path) -> None:
    first = {r.name: r.history[0].step_losses for r in runs}
    write_text(out / "comparison.json", json.dumps(
        {"drift": comparison, "first_epoch_step_losses": first,
         "final": {r.name: asdict(r.history[-1]) | {"step_losses": None} for r in runs}},
        indent=1))
    plot(runs, out / "comparison.png")


# -- data-parallel runs ----------------------------------------------------------------------
EXIT_WORKER_DIED = 1


class DistributedRun(Run):
    """One worker of a data-parallel run (``docs/architecture.md``, "Data-parallel runs"): the
    model built in the engine's scope, the framework's own loop over this worker's
    :class:`~common.tools.distributed.Shard`, the epoch's loss and accuracy added up over the
    workers by the engine. Rank 0 evaluates and writes the files, as :class:`Run` does (each
    atomically); the other workers write nothing."""

    def __init__(self, name: str, spec: ResNetSpec, state: State, train: ImageData,
                 test: ImageData, cfg: TrainConfig, out: Path, engine: Any,
                 dtype: str = "float32") -> None:
        self.engine, self.dtype = engine, dtype
        self.shard = Shard(train, engine.rank, engine.world_size)
        self.rates: list[list[float]] = []  # per epoch, every worker's images per second
        super().__init__(name, spec, state, self.shard, test, cfg, out)  # type: ignore[arg-type]
        self.n_train = self.shard.images(cfg.batch_size)[1]

    @property
    def rank(self) -> int:
        return self.engine.rank

    def make_model(self, state: State) -> Any:
        with self.engine.scope():
            model = self.be.build(self.spec, dtype=self.dtype)
            self.be.load_state(model, state)
        return self.engine.prepare(model, self.spec)

    def make_trainer(self, train: Any) -> Any:
        return self.engine.trainer(self.model, train, self.cfg.batch_size, self.cfg.lr,
                                   self.cfg.seed)

    def epoch(self, e: int, bar: Optional[Callable[[float, int], None]] = None
              ) -> Optional[Epoch]:
        """Train epoch ``e`` on every worker; rank 0 returns it (and has saved it), the others
        None."""
        loss, train_acc, seconds, steps = self.train_epoch(e, bar)
        mine = self.shard.images(self.cfg.batch_size)[0]
        rates = [0.0] * self.engine.world_size
        rates[self.rank] = mine / seconds
        total = self.engine.all_sum([loss * mine, train_acc * mine, mine, *rates])
        self.rates.append(total[3:])
        if self.rank != 0:
            return None
        test_acc = evaluate(self.be, self.model, self.test, self.cfg.batch_size)
        result = Epoch(e + 1, total[0] / total[2], total[1] / total[2], test_acc,
                       self.n_train / seconds, seconds, steps)
        self.history.append(result)
        self.save()
        return result

    def metrics_extra(self) -> dict[str, Any]:
        return {"data_parallel": {
            "engine": self.engine.description, "workers": self.engine.world_size,
            "images_per_epoch": self.n_train, "dtype": self.dtype,
            "images_per_sec_per_worker": self.rates}}


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       resize=args.resize, seed=args.seed, init=args.init, arch=args.arch)


def run_worker(args: argparse.Namespace, report: Optional[Reporter] = None) -> int:
    """One process of a data-parallel run, as its launcher set it up (``launch``, torchrun, a
    ``TF_CONFIG``, mxnet.tools.launch). An MXNet server or scheduler never returns from the
    engine's import."""
    name = canonical_name(args.framework)
    report = report or Reporter(progress=not args.quiet)
    try:
        if args.threads:  # before the engine: TensorFlow fixes its threads when it starts
            framework_module(name, "bench").set_threads(args.threads)
        engine = framework_module(name, "distributed").Engine(
            sync_bn=args.sync_bn == "on", reduction=args.grad_reduction, timeout=ENGINE_TIMEOUT)
    except (ValueError, BackendUnavailable) as e:
        report("error", message=one_line(e))
        return EXIT_USAGE
    report.rank = engine.rank
    report("ready", world=engine.world_size, engine=engine.description)
    try:
        if args.batch_size % engine.world_size:
            raise ValueError(f"--batch-size {args.batch_size} is the global batch: it must split "
                             f"equally over the {engine.world_size} workers")
        data = load(args.data, args.classes)
        cfg = _config(args)
        spec = architecture(cfg.arch, in_channels=data.channels, num_classes=len(data.classes),
                            labels=tuple(data.classes))
        state = initial_state(spec, cfg)
        train_data = ImageData(data.train, cfg.resize)
        test_data = ImageData(data.test, cfg.resize)
        out = Path(args.out)
        run = DistributedRun(name, spec, state, train_data, test_data, cfg, out, engine)
    except (DataError, ValueError) as e:
        report("error", message=one_line(e))
        return EXIT_USAGE
    mine, every = run.shard.images(cfg.batch_size)
    if run.rank == 0:
        report("line", text=header(data, train_data, test_data, spec, cfg, out))
        report("line", text=f"data-parallel: {engine.description}; batch {cfg.batch_size} = "
                            f"{engine.world_size} x {cfg.batch_size // engine.world_size}, "
                            f"{every} of {len(train_data)} images an epoch ({mine} per worker)")
    try:
        for e in range(cfg.epochs):
            report("epoch", framework=name, epoch=e + 1, epochs=cfg.epochs, images=every)
            result = run.epoch(e, lambda loss, n: report("batch", n=n, loss=loss))
            report("epoch_end")
            if result is not None:
                rates = ", ".join(f"r{r} {v:.1f}" for r, v in enumerate(run.rates[-1]))
                report("line", text=f"{name:>5} {result.line()} (per worker: {rates})")
    except KeyboardInterrupt:
        return 130
    files = f"{name}: {run.checkpoint}, {run.native}, {run.dir / 'metrics.json'}"
    rank = run.rank
    del run  # the model and its engine wrapper go before the engine does (DDP's reducer would
    engine.close()  # otherwise outlive its process group, and may hang the exit)
    if rank == 0:
        report("line", text=files)
    return EXIT_OK


def _argv(parser: argparse.ArgumentParser, args: argparse.Namespace, **override: Any) -> list[str]:
    """``train`` and its options as parsed (with ``override``): the command every process of a
    data-parallel run is given."""
    argv = ["train"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = override.get(action.dest, getattr(args, action.dest))
        if value is None or value is False:
            continue
        flag = max(action.option_strings, key=len)
        argv += [flag] if action.nargs == 0 else [flag, str(value)]
    return argv


def run_data_parallel(args: argparse.Namespace) -> int:
    """``train --workers N``: this process is a worker (its launcher set the engine's
    environment) or it launches this machine's share of the run and watches it."""
    if args.framework == "all":
        raise CliError("a data-parallel run trains one framework: name it with --framework")
    name = canonical_name(args.framework)
    if launched_by_engine(name):
        return run_worker(args)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    hosts = tuple(h for h in (args.worker_hosts or "").split(",") if h)
    try:
        cluster = Cluster(name, workers=args.workers, nnodes=args.nnodes, node_rank=args.node_rank,
                          master_addr=args.master_addr, master_port=args.master_port,
                          worker_hosts=hosts, threads=threads,
                          connect_timeout=args.connect_timeout)
    except LaunchError as e:
        raise CliError(str(e)) from None
    out = Path(args.out) / name
    console = Console(progress=not args.quiet)
    command = [sys.executable, "-m", "common.tools.cli", *_argv(args.parser, args, threads=threads)]
    try:
        launch(cluster, command, out / "logs", console, run_dir=out)
    except LaunchError as e:
        raise CliError(str(e)) from None
    except WorkerDied as e:
        console.close()
        print(f"resnet-parity: error: {e}; the files in {out} are from the last complete epoch",
              file=sys.stderr)
        return EXIT_WORKER_DIED
    except KeyboardInterrupt:
        console.close()
        print(f"\ninterrupted: every worker was stopped; the files in {out} are from the last "
              f"complete epoch", file=sys.stderr)
        return 130
    finally:
        console.close()
    return EXIT_OK


# -- the train and data commands ------------------------------------------------------------
_DATA_PARALLEL_ONLY = ("nnodes", "node_rank", "master_addr", "master_port", "worker_hosts",
                       "sync_bn", "grad_reduction", "threads", "connect_timeout")


def run_train(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return run_data_parallel(args)
    given = [d for d in _DATA_PARALLEL_ONLY if getattr(args, d) != args.parser.get_default(d)]
    if given:
        raise CliError(f"--{given[0].replace('_', '-')} is an option of data-parallel runs: "
                       f"give --workers N")
    names = list(BACKEND_NAMES) if args.framework == "all" else [canonical_name(args.framework)]
    backends, skipped = load_backends(names, "cpu")
    if skipped:
        raise CliError("; ".join(skipped.values()))
    try:
        data = load(args.data, args.classes)
    except DataError as e:
        raise CliError(str(e)) from None
    cfg = _config(args)
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


def run_data(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def progress(name: str, done: int, total: Optional[int]) -> None:
        if args.quiet:
            return
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, unit="B", unit_scale=True,
                                                           desc=name, file=sys.stderr))
        bar.update(done - bar.n)
    mirror = {"base_url": args.url} if args.url else {}
    try:
        if args.dataset == "cifar10":
            paths = [fetch_cifar10(args.dir, progress=progress, **mirror)]
            data = load_cifar10(args.dir)
        else:
            paths = fetch_fashion_mnist(args.dir, progress=progress, **mirror)
            data = load_fashion_mnist(args.dir)
    except DataError as e:
        raise CliError(str(e)) from None
    finally:
        for bar in bars.values():
            bar.close()
    print(f"{args.dataset}: {len(data.train)} train and {len(data.test)} test images, md5 "
          f"verified: {', '.join(p.name for p in paths)} in {args.dir}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``data``."""
    tr = sub.add_parser(
        "train", help="train ResNet-18 (or --arch) the d2l way in one framework or all three",
        description="Train d2l's ResNet-18, or another member of the family (--arch), with SGD "
                    "and softmax cross-entropy in each framework's own "
                    "loop: a torch DataLoader and optimizer, tf.data and Keras fit, a Gluon "
                    "DataLoader and Trainer. Prints d2l's line per epoch and writes, after every "
                    "complete epoch, OUT/<framework>/<arch>.safetensors, the framework's own "
                    "checkpoint and metrics.json. With --framework all the three start from one "
                    "initial state and see the same batches in the same order; their drift is "
                    "printed per epoch and plotted to OUT/comparison.png.")
    tr.add_argument("--framework", default="torch",
                    choices=["torch", "tf", "mxnet", "all", "pytorch", "keras", "gluon"],
                    help="which framework (torch), or all three side by side")
    tr.add_argument("--data", default="builtin", metavar="SOURCE",
                    help="the data set (default builtin): " + SOURCES_HELP + " (e.g. "
                         "cifar10:DIR). `resnet-parity data` fetches Fashion-MNIST and CIFAR-10")
    tr.add_argument("--classes", default=None, metavar="NAME,NAME,...",
                    help="train on these classes alone, labelled 0, 1, ... in the order given "
                         "(e.g. airplane,automobile,ship,truck of CIFAR-10); default: all")
    tr.add_argument("--epochs", type=positive, default=10, help="epochs (10)")
    tr.add_argument("--batch-size", type=positive, default=256, help="batch size (256)")
    tr.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (0.05)")
    tr.add_argument("--resize", type=positive, default=96, help="image size (96)")
    tr.add_argument("--out", default="runs", metavar="DIR", help="output directory (runs)")
    tr.add_argument("--init", default="xavier", metavar="xavier|FILE",
                    help="Xavier-uniform (d2l's init_cnn, default) or a canonical safetensors file")
    tr.add_argument("--seed", type=int, default=0, help="seed for init and batch order (0)")
    tr.add_argument("--arch", choices=list(ARCHITECTURES), metavar="NAME", default="resnet18",
                    help="the network, with the data's channels and classes (resnet18, d2l's; "
                         "the small members train in minutes on a CPU): " + ", ".join(ARCHITECTURES))
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    dp = tr.add_argument_group(
        "data-parallel runs", "one framework on its own engine: PyTorch DistributedDataParallel "
        "(gloo), TensorFlow MultiWorkerMirroredStrategy (a TF_CONFIG per worker), MXNet's "
        "dist_sync kvstore (a scheduler and servers beside the workers). --batch-size is the "
        "global batch, split equally; rank 0 writes the files. Under the engine's own launcher "
        "(torchrun, TF_CONFIG set, mxnet.tools.launch) the process is one worker. README: "
        "data-parallel training")
    dp.add_argument("--workers", type=positive, default=None, metavar="N",
                    help="train data-parallel with N worker processes on this machine")
    dp.add_argument("--nnodes", type=positive, default=1, metavar="M",
                    help="machines in the run, each running this command with its --node-rank (1)")
    dp.add_argument("--node-rank", type=int, default=0, metavar="R",
                    help="this machine's index, 0 to M-1; node 0 hosts the rendezvous (0)")
    dp.add_argument("--master-addr", default="127.0.0.1", metavar="HOST",
                    help="PyTorch and MXNet: node 0's address, where PyTorch's store and MXNet's "
                         "scheduler listen (127.0.0.1)")
    dp.add_argument("--master-port", type=positive, default=None, metavar="PORT",
                    help="PyTorch and MXNet: their port on node 0 (a free one on one machine; "
                         "needed with --nnodes > 1)")
    dp.add_argument("--worker-hosts", default=None, metavar="HOST:PORT,...",
                    help="TensorFlow: every worker's address, node by node, as TF_CONFIG's "
                         "cluster lists them (needed with --nnodes > 1; one machine: free "
                         "loopback ports)")
    dp.add_argument("--sync-bn", choices=["on", "off"], default="off",
                    help="off (default): each worker normalises with its own shard's batch "
                         "statistics; on: BatchNorm statistics of the global batch (Keras "
                         "synchronized=True; refused where the engine cannot here: PyTorch's "
                         "SyncBatchNorm is GPU-only, MXNet has none across workers)")
    dp.add_argument("--grad-reduction", choices=["mean", "sum"], default="mean",
                    help="mean (default): the workers' gradients averaged, the step of one "
                         "process with the global batch at the same --lr; sum: added, N times "
                         "that step (the linear-scaling rule's lr x N)")
    dp.add_argument("--threads", type=positive, default=None, metavar="T",
                    help="intra-op threads per worker (default: this machine's cores / --workers)")
    dp.add_argument("--connect-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for the other machines' master or workers to accept "
                         "a connection before giving up (60)")
    tr.set_defaults(func=run_train, parser=tr)

    d = sub.add_parser(
        "data", help="download a data set (fashion-mnist, cifar10) and verify it",
        description="Download a data set into DIR, verify its md5 checksums and write each file "
                    "atomically; files already there and intact are kept. fashion-mnist: the "
                    "four IDX .gz files. cifar10: CIFAR-10's binary version, "
                    "cifar-10-binary.tar.gz (162 MB), which `train --data DIR` reads as it is, "
                    "nothing extracted.")
    d.add_argument("dataset", choices=["fashion-mnist", "cifar10"], help="the data set")
    d.add_argument("dir", metavar="DIR", help="where to put the files")
    d.add_argument("--url", default=None, metavar="URL",
                   help=f"mirror to download from, the folder the files are in (default: "
                        f"{FASHION_MNIST_URL}, the Fashion-MNIST S3 bucket torchvision uses; for "
                        f"cifar10, {CIFAR10_URL}, the CIFAR page's)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=run_data)


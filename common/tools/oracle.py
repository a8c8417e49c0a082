"""``resnet-parity check --oracle``: every framework measured against a float64 truth.

Pairwise comparison says how far apart two frameworks are, not which one is off. Every backend
builds a float64 twin of any network, and the three twins agree with each other to ~1e-14 in
eval mode: that is the truth. The oracle runs each framework in the precision under test
(float32, or its own mixed bfloat16/float16) and its float64 twin on the same weights and input,
reports how well the twins agree (the truth is trustworthy only where they do), and then, per
layer, each framework's error against the truth (the first framework's float64 run).

Training mode adds the loss and gradients, the state after ``--steps`` SGD steps, and the
trajectory: after each step, each framework's worst parameter error, and how many ReLU (and
max-pool) decisions of that step's forward pass came out on the other side of zero than in the
truth. A float32 run that leaves the truth by orders of magnitude in one step has always crossed
such a threshold (README: "Which framework is right?").
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..core.compare import (
    EVAL_RTOL_CPU,
    EVAL_RTOL_GPU,
    Row,
    Section,
    compare,
    global_floor,
)
from ..core.spec import ConvNeXtSpec, Network
from ..core.step_parity import RUNNING, WELL_CONDITIONED, bn_counts, compare_states, labels, tolerance
from .command import Log

TRUTH = "float64"


# MXNet 1.9.1 differentiates erf with 2/sqrt(pi) held in float32: in float64 its gradient is
# 3.4e-8 off (the forward is exact), which moves every gradient below an exact GELU by ~1e-8
# (measured: 1.9e-8 on ConvNeXt-T at 64x64 against PyTorch and Keras, which agree to 6e-15).
MXNET_ERF_GRADIENT = 5e-8


def gradient_bound(spec: Network, dtype: str, *frameworks: str) -> float:
    """The gradient bound for a pair: :func:`tolerance`'s, or in float64 for MXNet against
    another framework on an exact-GELU network, MXNet's erf gradient (above)."""
    bound = tolerance("gradients", dtype)
    if (dtype == "float64" and "mxnet" in frameworks and isinstance(spec, ConvNeXtSpec)
            and spec.gelu == "exact"):
        return max(bound, MXNET_ERF_GRADIENT)
    return bound


@dataclass
class OracleReport:
    """The oracle's sections (truth agreement first), and what each framework computed in."""

    sections: list[Section]
    computed_in: dict[str, dict[str, str]] = field(default_factory=dict)  # fw -> layer -> dtype
    cannot: dict[str, str] = field(default_factory=dict)  # fw -> why it cannot run the precision
    notes: list[str] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)  # per step: fw -> (error, flips)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sections)


def eval_bound(precision: str, device: str) -> float:
    """The bound on a framework's eval-mode error against the truth, per layer."""
    if precision == "float32":
        return EVAL_RTOL_GPU if device == "gpu" else EVAL_RTOL_CPU
    return tolerance("activations", precision)


def float32_hyper(value: float) -> float:
    """``value`` as the float32 number Keras and Gluon hold it as, even for float64 variables
    (README trap: optimizer hyperparameters in float32). Giving every framework this number makes
    the float64 twins take the same steps."""
    return float(np.float32(value))


def _against_truth(results: Mapping[str, Any], truth: Any, fn: Callable[[Any, Any, str], list[Row]]
                   ) -> dict[tuple[str, str], list[Row]]:
    return {("truth", name): fn(r, truth, name) for name, r in results.items()}


def _truth_spread(truths: Mapping[str, Any], fn: Callable[[Any, Any, str, str], list[Row]]
                  ) -> dict[tuple[str, str], list[Row]]:
    names = list(truths)
    first = names[0]
    return {(f"{first} {TRUTH}", f"{n} {TRUTH}"): fn(truths[n], truths[first], n, first)
            for n in names[1:]}


def flips(acts: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray]) -> int:
    """ReLU and max-pool decisions on the other side of zero than the truth's: elements of every
    activation the truth never has negative (a ReLU's output, a pool of one) that are > 0 in one
    and not in the other."""
    return int(sum(np.count_nonzero((acts[k] > 0) != (t > 0))
                   for k, t in truth.items() if k in acts and t.size and t.min() >= 0))


def _build(be: Any, spec: Network, state: Mapping[str, np.ndarray], dtype: str,
           precision: str = "float32") -> Any:
    model = be.build(spec, dtype=dtype, precision=precision)
    be.load_state(model, state)
    return model


def _error_line(e: BaseException) -> str:
    """The line of a framework's error that says what went wrong (MXNet's come with a C++
    traceback before it)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if "Error" in ln and ":" in ln]
    line = (said or lines or [""])[-1]
    return line if line.startswith(type(e).__name__) else f"{type(e).__name__}: {line}"


def _runs(backends: dict, precision: str, run: Callable[[str, Any], None],
          *tables: dict) -> dict[str, str]:
    """``run(name, backend)`` for every framework, filling ``tables``; a framework that cannot
    compute in ``precision`` here is left out of all of them, with its error (only reduced
    precisions may fail so)."""
    cannot = {}
    for name, be in backends.items():
        try:
            run(name, be)
        except Exception as e:  # noqa: BLE001 - any framework's own error, reported as it came
            if precision == "float32":
                raise
            cannot[name] = _error_line(e)
            for table in tables:
                table.pop(name, None)
    if len(cannot) == len(backends):
        raise RuntimeError(f"no framework runs {precision} here: "
                           + "; ".join(f"{n}: {why}" for n, why in cannot.items()))
    return cannot


def eval_oracle(backends: dict, spec: Network, state: dict, x: np.ndarray, device: str,
                precision: str, log: Log) -> OracleReport:
    """Eval-mode activations of every framework against the truth."""
    acts, truths, dtypes = {}, {}, {}

    def run(name: str, be: Any) -> None:
        log(f"running {name} in {precision} and in {TRUTH} on {device} ...")
        truths[name] = be.activations(_build(be, spec, state, TRUTH), x, device=device)
        found: dict[str, str] = {}
        acts[name] = be.activations(_build(be, spec, state, "float32", precision), x,
                                    device=device, dtypes=found)
        dtypes[name] = found
    cannot = _runs(backends, precision, run, acts, truths, dtypes)
    t_bound, bound = tolerance("activations", TRUTH), eval_bound(precision, device)
    truth = next(iter(truths.values()))
    return OracleReport([
        Section(f"truth: the {TRUTH} twins against each other", t_bound,
                _truth_spread(truths, lambda o, r, *_: compare(o, r, t_bound))),
        Section(f"activations, eval mode: {precision} against the truth", bound,
                _against_truth(acts, truth, lambda o, r, _: compare(o, r, bound))),
    ], computed_in=dtypes, cannot=cannot)


def train_oracle(backends: dict, spec: Network, state: dict, x: np.ndarray, device: str,
                 precision: str, args: argparse.Namespace, log: Log) -> OracleReport:
    """Training mode against the truth: activations, loss and gradients, the state after
    ``args.steps`` SGD steps, and the trajectory step by step."""
    y = labels(spec, x.shape[0], args.seed)
    lr, momentum = float32_hyper(args.lr), float32_hyper(args.momentum)
    wd = float32_hyper(args.weight_decay)
    acts, grads, after, dtypes = {}, {}, {}, {}
    t_acts, t_grads, t_after = {}, {}, {}
    trajectory: list[dict] = [{} for _ in range(args.steps)]

    def one(name: str, be: Any) -> None:
        log(f"running {name} in {precision} and in {TRUTH} on {device} ...")
        twin = _build(be, spec, state, TRUTH)
        t_acts[name] = be.activations(twin, x, training=True, device=device)
        run, found = _build(be, spec, state, "float32", precision), {}
        acts[name] = be.activations(run, x, training=True, device=device, dtypes=found)
        dtypes[name] = found
        for key, model, out in ((name, run, grads), (name, twin, t_grads)):
            loss, g = be.gradients(model, x, y, device=device)
            out[key] = {"loss": np.array([loss]), **g}
        for k in range(args.steps):
            step_acts = be.activations(run, x, training=True, device=device)
            twin_acts = be.activations(twin, x, training=True, device=device)
            for model in (run, twin):
                be.sgd_step(model, x, y, lr, momentum, wd, device=device)
            trajectory[k][name] = {"state": be.export_state(run), "truth": be.export_state(twin),
                                   "acts": step_acts, "truth_acts": twin_acts}
        after[name], t_after[name] = be.export_state(run), be.export_state(twin)
    cannot = _runs(backends, precision, one, acts, grads, after, dtypes, t_acts, t_grads,
                   t_after, *trajectory)
    counts = bn_counts(spec, next(iter(t_acts.values())))
    few = min(counts.values(), default=WELL_CONDITIONED)
    b_act, b_grad = tolerance("activations", precision), tolerance("gradients", precision)
    b_step = tolerance("steps", precision, args.steps, bn_values=few)
    tb_act, tb_grad = tolerance("activations", TRUTH), tolerance("gradients", TRUTH)
    tb_step = tolerance("steps", TRUTH, args.steps, bn_values=few)
    first = next(iter(t_acts))  # the truth: the first framework that ran

    def states(bound: float, steps: int = args.steps) -> Callable[..., list[Row]]:
        # running_var converted into the reference framework's convention
        def fn(o: dict, r: dict, on: str, rn: str = first) -> list[Row]:
            return compare_states(o, r, state, rtol=bound, unit=spec, steps=steps,
                                  counts=counts, other_var=backends[on].convention.running_var,
                                  ref_var=backends[rn].convention.running_var)
        return fn

    def floored(bound: float) -> Callable[..., list[Row]]:
        return lambda o, r, *_: compare(o, r, bound, floor=global_floor(r))

    hyper = (f"lr {lr:.9g}, momentum {momentum:.9g}, weight decay {wd:.9g}, each as float32 holds "
             "it, in every framework")
    sections = [
        Section(f"truth: training-mode activations of the {TRUTH} twins", tb_act,
                _truth_spread(t_acts, lambda o, r, *_: compare(o, r, tb_act))),
        Section(f"truth: loss and gradients of the {TRUTH} twins"
                + (f"; {MXNET_ERF_GRADIENT:g} for MXNet, whose float64 erf gradient is 3.4e-8 off"
                   if "mxnet" in t_grads and gradient_bound(spec, TRUTH, "mxnet") > tb_grad
                   else ""), tb_grad,
                _truth_spread(t_grads, lambda o, r, on, rn: compare(
                    o, r, gradient_bound(spec, TRUTH, on, rn), floor=global_floor(r)))),
        Section(f"truth: state of the {TRUTH} twins after {args.steps} SGD step(s), {hyper}",
                tb_step, _truth_spread(t_after, states(tb_step))),
        Section(f"activations, training mode: {precision} against the truth", b_act,
                _against_truth(acts, t_acts[first], lambda o, r, _: compare(o, r, b_act))),
        Section(f"loss and gradients: {precision} against the truth (floor: 1e-3 of the "
                "largest gradient)", b_grad,
                _against_truth(grads, t_grads[first], floored(b_grad))),
        Section(f"state after {args.steps} SGD step(s): {precision} against the truth "
                "(running_var in the truth's convention)", b_step,
                _against_truth(after, t_after[first], states(b_step))),
    ]
    steps = []
    for k, per_fw in enumerate(trajectory):
        truth_k = per_fw[first]
        row: dict[str, Any] = {"step": k + 1}
        for name, rec in per_fw.items():
            rows = states(1.0, k + 1)(rec["state"], truth_k["truth"], name)
            params = [r for r in rows if not r.layer.endswith(("running_mean", "running_var"))]
            w = max(params, key=lambda r: r.max_rel)
            row[name] = {"max_rel": w.max_rel, "worst": w.layer,
                         "flips": flips(rec["acts"], truth_k["truth_acts"])}
        steps.append(row)
    notes = [f"SGD: {hyper}; labels seeded by --seed"]
    for name, st in after.items():
        if all(np.array_equal(st[k], state[k]) for k in st if not k.endswith(RUNNING)):
            notes.append(f"{name}: no parameter moved in {args.steps} step(s): its {precision} "
                         "loss scaler found the scaled gradients overflowing and skipped them "
                         "(dynamic loss scaling starts high and halves on overflow)")
    return OracleReport(sections, computed_in=dtypes, notes=notes, trajectory=steps,
                        cannot=cannot)


def format_computed_in(report: OracleReport, precision: str) -> list[str]:
    """Per framework: how many recorded layers came out in which dtype, naming the layers whose
    output dtype is not the precision under test (measured, from the tensors themselves)."""
    lines = []
    for name, dtypes in report.computed_in.items():
        tally = Counter(dtypes.values())
        other = [layer for layer, d in dtypes.items() if d != precision]
        lines.append(f"{name}: layer outputs " + ", ".join(f"{n} {d}" for d, n in tally.items())
                     + (f"; not {precision}: {', '.join(other[:8])}"
                        + (f" and {len(other) - 8} more" if len(other) > 8 else "")
                        if other and precision != "float32" else ""))
    return lines


def format_trajectory(report: OracleReport) -> list[str]:
    """One line per step: each framework's worst parameter error against the truth trajectory,
    and the threshold decisions its forward pass took differently."""
    if not report.trajectory:
        return []
    names = [k for k in report.trajectory[0] if k != "step"]
    lines = ["step" + "".join(f"  {n + ': worst rel (flips)':>30}" for n in names)]
    for row in report.trajectory:
        lines.append(f"{row['step']:>4}" + "".join(
            f"  {row[n]['max_rel']:>20.2e} ({row[n]['flips']:>5})" for n in names))
    return lines

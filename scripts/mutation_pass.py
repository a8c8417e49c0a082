#!/usr/bin/env python
"""A mutation pass: how many deliberate bugs in ``common/`` and the framework packages does the
test suite catch?

Each mutant is one small, realistic bug: a source snippet (which must occur exactly once in its
file, so a mutant stays valid or fails loudly as the code changes) and its replacement. For each
mutant the repository's files (``git ls-files --cached --others --exclude-standard``, read once
at the start, so every mutant meets the same suite) are written to a fresh temporary directory,
the mutation is applied there, and pytest runs there with ``PYTHONPATH`` pointing at the copy,
so the copy's ``common`` and ``resnet_*`` packages win over the editable install. The working
tree is only read, never written.

Verdicts: ``killed`` (pytest exited non-zero: a failed test, an error, a crash), ``survived``
(the selected tests passed), ``timeout`` (past ``--timeout``), ``error`` (pytest collected
nothing: a bad ``--tests`` selection). An unmutated baseline runs first (``--no-baseline`` skips
it): if it fails, every "killed" would be meaningless, so the pass stops.

    .venv/bin/python scripts/mutation_pass.py                  # every mutant, the whole suite
    .venv/bin/python scripts/mutation_pass.py --list           # the mutants and their claims
    .venv/bin/python scripts/mutation_pass.py --only compare-eval-rtol,state-save-in-place \\
        --tests parity_tests/test_spec.py --json /tmp/mutation_pass.json

Exit status: 0 when the pass ran (whatever the score), 1 when the baseline failed or the copy
was not what got imported, 2 on bad usage or an invalid mutant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
TEST_DIR = "parity_tests"
# Fast, broad files first so most mutants die early; every other test file follows.
FIRST = ("test_spec.py", "test_compare.py", "test_contract.py", "test_parity.py")
PACKAGES = ("common", "resnet_torch", "resnet_tf", "resnet_mxnet")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str          # relative to the repository root
    original: str      # must occur exactly once in the file
    replacement: str
    claim: str         # the claim the bug breaks


M = Mutant
MUTANTS: list[Mutant] = [
    # -- common/core/spec.py: the layer table and the options ---------------------------------
    M("spec-fc-shape", "common/core/spec.py",
      '{"weight": (self.num_classes, c), "bias"',
      '{"weight": (c, self.num_classes), "bias"',
      "the layer table gives the classifier weight in the canonical (out, in) layout"),
    M("spec-no-shortcut-bn", "common/core/spec.py",
      '            if self.shortcut_bn:\n'
      '                out.append(_bn(_join(prefix, "shortcut_bn"), attr + ("bn3",), c))\n',
      '',
      "with shortcut_bn (torchvision) the table lists the shortcut's BatchNorm"),
    M("spec-downsample-stride", "common/core/spec.py",
      "            strides = 2 if i == 0 and not self.first_block else 1\n",
      "            strides = 1\n",
      "the first block of every stage but the first halves height and width (stride 2)"),
    M("spec-bottleneck-width-ignores-width-per-group", "common/core/spec.py",
      "return self.stage_channels[stage] // EXPANSION * self.width_per_group // 64 * self.groups",
      "return self.stage_channels[stage] // EXPANSION * self.groups",
      "a bottleneck's 3x3 width follows torchvision's rule (ResNeXt, wide variants)"),
    M("spec-bn-eps-default", "common/core/spec.py",
      "bn_eps: float = 1e-5 ", "bn_eps: float = 1e-3 ",
      "d2l's BatchNorm eps is 1e-5 (Keras's 1e-3 is a trap)"),
    M("spec-momentum-keras-convention", "common/core/spec.py",
      "TORCH_BN_MOMENTUM = 0.1", "TORCH_BN_MOMENTUM = 0.9",
      "the spec's momentum is PyTorch's convention, d2l's 0.1"),
    # -- common/core/trace.py: the walk --------------------------------------------------------
    M("trace-relu1-records-input", "common/core/trace.py",
      '    y = ops.relu(y)\n    rec(f"{prefix}.relu1", y)\n',
      '    rec(f"{prefix}.relu1", y)\n    y = ops.relu(y)\n',
      "each recorded activation is its layer applied to the one before (relu1 is after the ReLU)"),
    M("trace-skips-bn2", "common/core/trace.py",
      '    y = step("bn2", "bn2", y)\n', '',
      "the walk runs every layer forward runs; its last activation equals forward"),
    M("trace-residual-adds-wrong", "common/core/trace.py",
      "    y = ops.relu(ops.add(y, x))\n", "    y = ops.relu(ops.add(y, y))\n",
      "the walk adds the (shortcut of the) block input, as forward does"),
    M("trace-no-shortcut-bn", "common/core/trace.py",
      '        if r.shortcut_bn:\n            x = step("shortcut_bn", bn, x)\n', '',
      "the walk applies the shortcut BatchNorm of a torchvision-style block"),
    # -- common/core/state.py: checks, files, random states -----------------------------------
    M("state-unexpected-ignored", "common/core/state.py",
      '    if unexpected:\n        problems.append("unexpected key(s): " + ", ".join(unexpected))\n',
      '',
      "strict load: an unexpected key is an error that names it"),
    M("state-shape-rank-only", "common/core/state.py",
      "        if tuple(arr.shape) != tuple(shape):", "        if arr.ndim != len(shape):",
      "a mis-shaped tensor is an error naming expected and actual shape"),
    M("state-inf-allowed", "common/core/state.py",
      "if not allow_nonfinite and not np.isfinite(arr).all():",
      "if not allow_nonfinite and np.isnan(arr).any():",
      "NaN and infinity are refused unless allow_nonfinite"),
    M("state-save-in-place", "common/core/state.py",
      '    with atomic_write(path) as tmp:\n'
      '        save_file({k: np.ascontiguousarray(v) for k, v in checked.items()}, str(tmp),\n'
      '                  metadata={"format": FORMAT, "spec": spec.to_json()})\n',
      '    from safetensors.numpy import save\n'
      '    path.write_bytes(save({k: np.ascontiguousarray(v) for k, v in checked.items()},\n'
      '                          metadata={"format": FORMAT, "spec": spec.to_json()}))\n',
      "save_state writes a temporary file and renames it: an interrupted save leaves the old file"),
    M("state-atomic-write-keeps-temporary", "common/core/state.py",
      "    except BaseException:\n        if os.path.exists(tmp):\n"
      "            os.unlink(tmp)\n        raise\n",
      "    except BaseException:\n        raise\n",
      "an interrupted atomic write leaves no temporary file behind"),
    M("core-imports-upward", "common/core/trace.py",
      '    """The names :func:`trace` records, in order (the same in every backend)."""\n',
      '    """The names :func:`trace` records, in order (the same in every backend)."""\n'
      '    from ..tools.registry import BACKEND_NAMES  # noqa: F401\n',
      "the core imports nothing above it, not even inside a function"),
    M("state-random-fresh-bn-stats", "common/core/state.py",
      '                elif p == "running_var":\n'
      '                    v = rng.uniform(0.5, 2.0, shape)\n'
      '                else:  # beta, running_mean\n',
      '                elif p == "running_var":\n'
      '                    v = np.ones(shape)\n'
      '                elif p == "running_mean":\n'
      '                    v = np.zeros(shape)\n'
      '                else:  # beta\n',
      "random_state draws BatchNorm statistics away from the defaults (0, 1)"),
    M("state-check-aliases", "common/core/state.py",
      "        arr = np.array(arr, dtype=dtype, copy=True)", "        arr = np.asarray(arr, dtype=dtype)",
      "validate_state returns copies: the caller's arrays are never aliased"),
    # -- common/core/compare.py: the measure and the bounds -----------------------------------
    M("compare-eval-rtol-loose", "common/core/compare.py",
      "EVAL_RTOL_CPU = 1e-5", "EVAL_RTOL_CPU = 1e-2",
      "CPU eval parity holds to 1e-5 relative, tight enough to see Keras's eps 1e-3 trap"),
    M("compare-floor-1000x", "common/core/compare.py",
      "fraction: float = 1e-3) -> float:", "fraction: float = 1.0) -> float:",
      "the gradient/parameter floor is 1e-3 of the largest magnitude, not the magnitude itself"),
    M("compare-denominator-a", "common/core/compare.py",
      "    scale = max(float(np.abs(b64).max()), floor)", "    scale = max(float(np.abs(a64).max()), floor)",
      "max rel is relative to the reference b's largest magnitude"),
    M("compare-skips-missing", "common/core/compare.py",
      '        if name not in a or name not in b:\n'
      '            side = "first" if name not in a else "second"\n'
      '            shape = tuple(np.shape(b[name] if name in b else a[name]))\n'
      '            rows.append(Row(name, shape, float("inf"), float("inf"), False, f"missing in {side}"))\n'
      '            continue\n',
      '        if name not in a or name not in b:\n'
      '            continue\n',
      "a name present on one side only is a failing row"),
    # -- common/core/step_parity.py: conventions and tolerances --------------------------------
    M("step-var-factor-inverted", "common/core/step_parity.py",
      'factor = (n - 1) / n if dst == "biased" else n / (n - 1)',
      'factor = n / (n - 1) if dst == "biased" else (n - 1) / n',
      "unbiased -> biased running variance scales the batch part by (n-1)/n"),
    M("step-var-decay-wrong", "common/core/step_parity.py",
      "    decay = (1.0 - bn_momentum) ** steps", "    decay = bn_momentum ** steps",
      "the initial running variance decays by (1 - m) per step"),
    M("step-grad-f64-tol-loose", "common/core/step_parity.py",
      '("gradients", "float64"): 1e-9', '("gradients", "float64"): 1e-6',
      "float64 gradients agree to 1e-9 (measured 2e-12)"),
    M("step-unknown-counts-well-conditioned", "common/core/step_parity.py",
      "        ill = bn_values is None or bn_values < WELL_CONDITIONED",
      "        ill = bn_values is not None and bn_values < WELL_CONDITIONED",
      "unknown BatchNorm counts are taken as ill-conditioned (the loose bound)"),
    # -- common/core/backend.py: the shared contract -------------------------------------------
    M("backend-load-writes-before-validating", "common/core/backend.py",
      '        checked = validate_state(state, self.unit_of(model), allow_nonfinite=allow_nonfinite,\n'
      '                                 dtype=self.dtype_of(model))\n'
      '        for layer in self.unit_of(model).layers():\n'
      '            self._write(resolve(model, layer.attr), layer.kind,\n'
      '                        {p: checked[f"{layer.name}.{p}"] for p in layer.shapes})\n',
      '        for layer in self.unit_of(model).layers():\n'
      '            self._write(resolve(model, layer.attr), layer.kind,\n'
      '                        {p: state[f"{layer.name}.{p}"] for p in layer.shapes\n'
      '                         if f"{layer.name}.{p}" in state})\n'
      '        validate_state(state, self.unit_of(model), allow_nonfinite=allow_nonfinite,\n'
      '                       dtype=self.dtype_of(model))\n',
      "a failed load leaves the model as it was (everything is checked before writing)"),
    M("backend-preserved-restores-only-on-error", "common/core/backend.py",
      "        try:\n            yield\n        finally:\n"
      "            self.load_state(model, saved, allow_nonfinite=True)\n",
      "        try:\n            yield\n        except BaseException:\n"
      "            self.load_state(model, saved, allow_nonfinite=True)\n            raise\n",
      "gradients() and training-mode forwards restore the whole state, running statistics too"),
    M("backend-labels-off-by-one", "common/core/backend.py",
      "y.max() >= classes", "y.max() > classes",
      "labels must lie in [0, classes)"),
    M("backend-training-forward-changes-model", "common/core/backend.py",
      "        return self._preserved(model) if training else contextlib.nullcontext()",
      "        return contextlib.nullcontext()",
      "a training-mode forward or trace leaves the running statistics unchanged"),
    M("backend-export-aliases", "common/core/backend.py",
      'out[f"{layer.name}.{p}"] = np.array(params[p], dtype=dtype, copy=True)',
      'out[f"{layer.name}.{p}"] = np.asarray(params[p], dtype=dtype)',
      "export_state returns copies, not views of the live parameters"),
    # -- common/tools/formats/ -----------------------------------------------------------------
    M("formats-torch-reader-ignores-unexpected", "common/tools/formats/native.py",
      "        checked = _fits(path, raw, expected, spec, self.description, allow_nonfinite, counters)\n",
      "        known = {k: v for k, v in raw.items() if k in expected}\n"
      "        checked = _fits(path, known, expected, spec, self.description, allow_nonfinite, counters)\n",
      "reading a checkpoint refuses unexpected keys and names them"),
    M("formats-staging-keeps-temporaries", "common/tools/formats/base.py",
      "        for tmp in self.temps:\n            if tmp.is_dir():\n"
      "                shutil.rmtree(tmp, ignore_errors=True)\n            elif tmp.exists():\n"
      "                tmp.unlink()\n",
      "        pass\n",
      "a failed or refused conversion leaves no temporary file behind"),
    M("formats-torchvision-downsample-swapped", "common/tools/formats/base.py",
      '_TV_SUB = {"shortcut": "downsample.0", "shortcut_bn": "downsample.1"}',
      '_TV_SUB = {"shortcut": "downsample.1", "shortcut_bn": "downsample.0"}',
      "torchvision's downsample.0 is the shortcut conv, downsample.1 its BatchNorm"),
    M("formats-torch-bn-names-swapped", "common/tools/formats/base.py",
      'TORCH_PARAM = {"gamma": "weight", "beta": "bias"}',
      'TORCH_PARAM = {"gamma": "bias", "beta": "weight"}',
      "PyTorch's BatchNorm weight is gamma and bias is beta"),
    # -- common/tools/convert.py ---------------------------------------------------------------
    M("convert-verify-compares-source-with-itself", "common/tools/convert.py",
      "    back = dst.read(dst_path, spec, allow_nonfinite=True)\n",
      "    dst.read(dst_path, spec, allow_nonfinite=True)\n    back = state\n",
      "verify compares SRC's state and model with DST as read back from the written file"),
    M("convert-commits-despite-activation-mismatch", "common/tools/convert.py",
      "        if result.verification is None or result.verification.ok:",
      "        if result.verification is None or not result.verification.differing:",
      "DST is written only if the per-layer activations agree too"),
    # -- common/tools/registry.py --------------------------------------------------------------
    M("registry-no-shared-instance", "common/tools/registry.py",
      '    if key not in _instances:\n'
      '        _instances[key] = framework_module(key, "backend").backend()\n'
      '    return _instances[key]\n',
      '    return framework_module(key, "backend").backend()\n',
      "one backend instance per framework: models built through it are known to later calls"),
    # -- resnet_torch --------------------------------------------------------------------------
    M("torch-bn-eps-dropped", "resnet_torch/blocks.py",
      "nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)",
      "nn.BatchNorm2d(num_channels, momentum=bn_momentum)",
      "PyTorch's BatchNorm gets the spec's bn_eps"),
    M("torch-bn-momentum-converted", "resnet_torch/blocks.py",
      "nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)",
      "nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=1.0 - bn_momentum)",
      "PyTorch takes the spec's momentum as is (its own convention)"),
    M("torch-session-leaves-mode", "resnet_torch/backend.py",
      "        try:\n            with torch.set_grad_enabled(training):\n                yield\n"
      "        finally:\n            model.train(was_training)\n",
      "        with torch.set_grad_enabled(training):\n            yield\n",
      "forward, trace and training leave the module's train/eval mode as it was"),
    M("spec-bottleneck-stride-swapped", "common/core/spec.py",
      '    return (strides, 1) if stride_at == "1x1" else (1, strides)',
      '    return (1, strides) if stride_at == "1x1" else (strides, 1)',
      "v1 puts a bottleneck's stride on the first 1x1, v1.5 on the 3x3"),
    # -- resnet_tf -----------------------------------------------------------------------------
    M("tf-layout-nchw-permutation", "resnet_tf/_layout.py",
      "NHWC_TO_NCHW = (0, 3, 1, 2)", "NHWC_TO_NCHW = (0, 3, 2, 1)",
      "Keras's NHWC activations come back as NCHW, height before width"),
    M("tf-bn-eps-keras-default", "resnet_tf/blocks.py",
      "FusedBatchNormalization(epsilon=bn_eps, momentum=1.0 - bn_momentum, **kwargs)",
      "FusedBatchNormalization(momentum=1.0 - bn_momentum, **kwargs)",
      "Keras's BatchNorm gets the spec's eps, never Keras's default 1e-3"),
    M("tf-bn-momentum-not-converted", "resnet_tf/blocks.py",
      "FusedBatchNormalization(epsilon=bn_eps, momentum=1.0 - bn_momentum, **kwargs)",
      "FusedBatchNormalization(epsilon=bn_eps, momentum=bn_momentum, **kwargs)",
      "Keras's momentum is the weight of the old value: 1 - m"),
    M("tf-stride2-asymmetric-same", "resnet_tf/blocks.py",
      "        native = s == (1, 1)", "        native = True",
      "stride-2 convs pad k//2 on each side like PyTorch, not Keras's bottom/right 'same'"),
    M("tf-maxpool-zero-padding", "resnet_tf/blocks.py",
      'self.data_format, float("-inf")))', "self.data_format))",
      "max pooling pads with -inf: padding never wins a max"),
    M("tf-kernel-permutation", "resnet_tf/_layout.py",
      '_CANONICAL_TO_KERAS = {"conv": (2, 3, 1, 0)', '_CANONICAL_TO_KERAS = {"conv": (3, 2, 1, 0)',
      "canonical (out, in, kh, kw) kernels become Keras's (kh, kw, in, out)"),
    M("tf-weight-decay-dropped", "resnet_tf/backend.py",
      "        if hyper.weight_decay:\n"
      "            grads = [g + hyper.weight_decay * v for g, v in zip(grads, variables)]\n",
      "",
      "Keras's sgd_step applies PyTorch's coupled weight decay"),
    M("tf-shortcut-stride-lost", "resnet_tf/blocks.py",
      'PaddedConv2D(num_channels, 1, strides=strides, use_bias=bias["shortcut"], name="conv3",\n'
      '                         dtype=dt)\n            if use_1x1conv',
      'PaddedConv2D(num_channels, 1, use_bias=bias["shortcut"], name="conv3",\n'
      '                         dtype=dt)\n            if use_1x1conv',
      "the 1x1 shortcut conv has the block's stride"),
    M("tf-trace-ignores-training", "resnet_tf/backend.py",
      "        return layer(x, training=self.training)", "        return layer(x)",
      "a training-mode trace normalises with batch statistics, like the training forward"),
    M("gluon-same-shift-inverted", "resnet_mxnet/blocks.py",
      "even = 1 - F.slice_axis(shape, axis=0, begin=axis, end=axis + 1) % 2",
      "even = F.slice_axis(shape, axis=0, begin=axis, end=axis + 1) % 2",
      "Gluon drops the leading padding row only where the size is even"),
    M("d2l-gluon-head-index", "common/tools/formats/d2l.py",
      '{"conv": "0", "bn": "1"}, 4, 5',
      '{"conv": "0", "bn": "1"}, 4, 6',
      "the chapter's Gluon Dense is child 9 of a four-stage net"),
    M("tf-grouped-conv-dropped", "resnet_tf/blocks.py",
      'self.conv2 = PaddedConv2D(mid, 3, strides=s3, groups=groups, padding_mode=padding,\n'
      '                                  use_bias=bias["3x3"], name="conv2", dtype=dt)\n'
      '        self.bn2',
      'self.conv2 = PaddedConv2D(mid, 3, strides=s3, padding_mode=padding,\n'
      '                                  use_bias=bias["3x3"], name="conv2", dtype=dt)\n'
      '        self.bn2',
      "ResNeXt's 3x3 conv is grouped in Keras too"),
    M("same-padding-extra-row-first", "common/core/spec.py",
      "return total // 2, total - total // 2",
      "return total - total // 2, total // 2",
      "TensorFlow's 'same' puts the extra padding row at the bottom, in PyTorch too"),
    M("d2l-keras-eps-pytorchs", "common/core/spec.py",
      '"padding": "same", "bn_eps": 1e-3,',
      '"padding": "same", "bn_eps": 1e-5,',
      "d2l's Keras code keeps Keras's BatchNorm eps"),
    # -- resnet_mxnet --------------------------------------------------------------------------
    M("mxnet-bn-eps-ignored", "resnet_mxnet/blocks.py",
      "nn.BatchNorm(axis=1, epsilon=bn_eps, momentum=1.0 - bn_momentum,",
      "nn.BatchNorm(axis=1, momentum=1.0 - bn_momentum,",
      "Gluon's BatchNorm gets the spec's bn_eps"),
    M("mxnet-bn-momentum-not-converted", "resnet_mxnet/blocks.py",
      "nn.BatchNorm(axis=1, epsilon=bn_eps, momentum=1.0 - bn_momentum,",
      "nn.BatchNorm(axis=1, epsilon=bn_eps, momentum=bn_momentum,",
      "Gluon's momentum is the weight of the old value: 1 - m"),
    M("mxnet-trainer-step-batch-1", "resnet_mxnet/backend.py",
      "        trainer.step(x.shape[0])", "        trainer.step(1)",
      "Gluon's step rescales the summed loss gradient to the batch mean"),
    M("mxnet-grad-reads-value", "resnet_mxnet/backend.py",
      "out[canon] = (param.grad() if grad else param.data()).asnumpy()",
      "out[canon] = param.data().asnumpy()",
      "gradients() reads each parameter's gradient, not its value"),
    M("mxnet-eval-inside-record", "resnet_mxnet/backend.py",
      "autograd.train_mode() if training else autograd.predict_mode()",
      "autograd.train_mode() if training else contextlib.nullcontext()",
      "an eval forward uses running statistics even inside a caller's autograd.record()"),
    M("mxnet-bottleneck-no-relu2", "resnet_mxnet/blocks.py",
      "        Y = _relu(F, self.bn2(self.conv2(Y)))\n", "        Y = self.bn2(self.conv2(Y))\n",
      "a Gluon bottleneck applies ReLU after its 3x3 conv"),
    # -- the family: pre-activation blocks, conv bias per kind, foreign checkpoints -------------
    M("torch-preact-shortcut-reads-raw-input", "resnet_torch/blocks.py",
      "            X = self.conv3(Y)\n", "            X = self.conv3(X)\n",
      "a pre-activation block's shortcut conv reads the normalised input"),
    M("tf-preact-bottleneck-no-relu3", "resnet_tf/blocks.py",
      "        Y = self.conv3(ops.relu(self.bn3(Y, training=training)))\n",
      "        Y = self.conv3(self.bn3(Y, training=training))\n",
      "a Keras pre-activation bottleneck applies ReLU before its last conv"),
    M("mxnet-preact-head-no-relu", "resnet_mxnet/model.py",
      "            x = _relu(F, self.bn(x))\n", "            x = self.bn(x)\n",
      "a v2 network's head applies BatchNorm and ReLU before the pool"),
    M("spec-conv-bias-kinds-ignored", "common/core/spec.py",
      "    return {k: k in conv_bias for k in CONV_KINDS}",
      "    return dict.fromkeys(CONV_KINDS, bool(conv_bias))",
      "conv_bias names the kinds of conv that have a bias, and only those"),
    M("hf-downsample-in-bottleneck-ignored", "common/tools/formats/huggingface.py",
      'stride_at="1x1" if bottleneck and c["downsample_in_bottleneck"] else "3x3",',
      'stride_at="3x3",',
      "Hugging Face's downsample_in_bottleneck puts the stride on the first 1x1 conv"),
    M("keras-applications-shortcut-swapped", "common/tools/formats/keras_applications.py",
      '_SUB = {"shortcut": ("0", "conv"), "shortcut_bn": ("0", "bn")}',
      '_SUB = {"shortcut": ("0", "bn"), "shortcut_bn": ("0", "conv")}',
      "keras.applications' _0_conv is the shortcut conv, _0_bn its BatchNorm"),
    # -- ConvNeXt --------------------------------------------------------------------------------
    M("torch-convnext-layer-norm-default-eps", "resnet_torch/convnext.py",
      "    return (LayerNorm2d if channels_first else nn.LayerNorm)(num_channels, eps=ln_eps)",
      "    return (LayerNorm2d if channels_first else nn.LayerNorm)(num_channels)",
      "every PyTorch LayerNorm takes the spec's eps, not PyTorch's default 1e-5"),
    M("tf-convnext-gelu-tanh", "resnet_tf/convnext.py",
      "        return 0.5 * x * (1.0 + ops.erf(x * _SQRT_HALF))",
      "        return keras.ops.gelu(x)",
      "Keras's exact GELU is exact (keras.ops.gelu defaults to the tanh form)"),
    M("mxnet-convnext-stem-norm-over-width", "resnet_mxnet/convnext.py",
      "    return nn.LayerNorm(axis=1 if channels_first else -1, epsilon=ln_eps,",
      "    return nn.LayerNorm(axis=-1, epsilon=ln_eps,",
      "Gluon's channels-first LayerNorm normalises the channels, not the width"),
    M("tf-depthwise-kernel-reshaped", "resnet_tf/_layout.py",
      '_CANONICAL_TO_KERAS = {"conv": (2, 3, 1, 0), "dwconv": (2, 3, 0, 1), "dense": (1, 0)}',
      '_CANONICAL_TO_KERAS = {"conv": (2, 3, 1, 0), "dwconv": (0, 1, 2, 3), "dense": (1, 0)}',
      "a depthwise kernel crosses into Keras by transpose, (C, 1, kh, kw) -> (kh, kw, C, 1)"),
    M("spec-convnext-drop-path-not-linear", "common/core/spec.py",
      "        rates = [self.drop_path_rate * k / (n - 1) if n > 1 else 0.0 for k in range(n)]",
      "        rates = [self.drop_path_rate for k in range(n)]",
      "stochastic depth grows linearly from 0 over the blocks, as torchvision and Hugging Face"),
    M("hf-convnext-head-eps-everywhere", "common/tools/formats/huggingface.py",
      '            patch_size=c["patch_size"], head_ln_eps=float(c["layer_norm_eps"]),',
      '            patch_size=c["patch_size"], head_ln_eps=float(c["layer_norm_eps"]),\n'
      '            **{"ln_eps": float(c["layer_norm_eps"])},',
      "transformers applies layer_norm_eps to the head's LayerNorm alone"),
    M("trace-convnext-records-channels-last", "common/core/trace.py",
      '        rec(f"{prefix}.{name}", ops.channels_first(v))',
      '        rec(f"{prefix}.{name}", v)',
      "every activation is recorded channels-first, the blocks' channels-last part too"),
]


# -- the repository snapshot ---------------------------------------------------------------------
def snapshot(repo: Path) -> dict[str, tuple[bytes, int]]:
    """``{relative path: (content, mode)}`` of every file git lists (tracked and untracked, not
    ignored), read once so that every mutant meets the same files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, capture_output=True, check=True).stdout
    files = {}
    for rel in sorted(set(out.decode().split("\0")) - {""}):
        path = repo / rel
        if path.is_file() and not path.is_symlink():  # a tracked file deleted in the tree is absent
            files[rel] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return files


def check_mutants(mutants: list[Mutant], files: dict[str, tuple[bytes, int]]) -> list[str]:
    """Every problem with the mutant list, naming the mutant: unknown file, a snippet found
    zero or several times, a no-op replacement, a duplicate id."""
    problems, seen = [], set()
    for m in mutants:
        if m.id in seen:
            problems.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        if m.file not in files:
            problems.append(f"{m.id}: no file {m.file}")
            continue
        n = files[m.file][0].decode().count(m.original)
        if n != 1:
            problems.append(f"{m.id}: its snippet occurs {n} times in {m.file} (must be exactly once)")
        if m.original == m.replacement:
            problems.append(f"{m.id}: the replacement equals the original")
    return problems


def write_copy(files: dict[str, tuple[bytes, int]], dest: Path, mutant: Optional[Mutant]) -> None:
    for rel, (data, mode) in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if mutant is not None and rel == mutant.file:
            data = data.decode().replace(mutant.original, mutant.replacement, 1).encode()
        path.write_bytes(data)
        os.chmod(path, mode)


def test_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


IMPORT_CHECK = f"""
import importlib.util, json, subprocess, sys
def origins():
    return {{p: importlib.util.find_spec(p).origin for p in {PACKAGES!r}}}
child = subprocess.run([sys.executable, "-c", "import importlib.util, json; print(json.dumps("
                        "{{p: importlib.util.find_spec(p).origin for p in {PACKAGES!r}}}))"],
                       cwd="/", capture_output=True, text=True, check=True)
print(json.dumps({{"process": origins(), "subprocess": json.loads(child.stdout)}}))
"""


def check_imports(python: str, copy: Path) -> tuple[bool, dict]:
    """Whether ``common`` and the framework packages resolve to the copy, in a process started
    like pytest and in a subprocess of it (as the CLI tests start theirs)."""
    out = subprocess.run([python, "-c", IMPORT_CHECK], cwd=copy, env=test_env(copy),
                         capture_output=True, text=True)
    if out.returncode != 0:
        return False, {"error": out.stderr.strip()[-2000:]}
    found = json.loads(out.stdout)
    ok = all(Path(origin).resolve().is_relative_to(copy.resolve())
             for where in found.values() for origin in where.values())
    return ok, found


# -- running pytest --------------------------------------------------------------------------------
def default_tests(files: dict[str, tuple[bytes, int]]) -> list[str]:
    """Every ``parity_tests/test_*.py``, the fast broad ones (:data:`FIRST`) first."""
    names = sorted(Path(rel).name for rel in files if Path(rel).parent.as_posix() == TEST_DIR
                   and re.fullmatch(r"test_.*\.py", Path(rel).name))
    ordered = [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]
    return [f"{TEST_DIR}/{n}" for n in ordered]


@dataclass
class Result:
    id: str
    file: str
    claim: str
    verdict: str            # killed | survived | timeout | error
    seconds: float
    killer: str             # the first failing test (or what killed it, or the timeout); "" if survived
    returncode: Optional[int]
    summary: str            # pytest's last line
    output_tail: str


_FAIL_LINE = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def run_pytest(python: str, files: dict[str, tuple[bytes, int]], mutant: Optional[Mutant],
               tests: list[str], timeout: float, verify_imports: bool) -> tuple[Result, Optional[dict]]:
    copy = Path(tempfile.mkdtemp(prefix="mutation-"))
    imports = None
    start = time.monotonic()
    try:
        write_copy(files, copy, mutant)
        if verify_imports:
            ok, imports = check_imports(python, copy)
            if not ok:
                raise SystemExit(f"error: the copy is not what gets imported: {json.dumps(imports)}")
        cmd = [python, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
               f"--basetemp={copy / '.pytest-tmp'}", *tests]
        proc = subprocess.Popen(cmd, cwd=copy, env=test_env(copy), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest and whatever it started
            out, _ = proc.communicate()
            rc = None
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    seconds = time.monotonic() - start
    lines = [ln for ln in out.splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    fail = _FAIL_LINE.search(out)
    if rc is None:
        verdict, killer = "timeout", f"past the {timeout:.0f} s limit"
    elif rc == 0:
        verdict, killer = "survived", ""
    elif rc == 5:
        verdict, killer = "error", "no tests collected"
    else:
        verdict = "killed"
        killer = (f"{fail.group(1)} {fail.group(2)}" if fail
                  else f"pytest exit {rc}: {summary}" if rc > 0 else f"pytest crashed (signal {-rc})")
    m = mutant or Mutant("baseline", "", "", "", "the unmutated suite passes")
    return Result(m.id, m.file, m.claim, verdict, round(seconds, 1), killer, rc, summary,
                  "\n".join(lines[-40:])), imports


# -- the command -----------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Apply each deliberate bug (mutant) to a temporary copy of the repository, run "
                    "the test suite there, and report which mutants the suite kills. The working "
                    "tree is never modified. Exit status: 0 when the pass ran (whatever the "
                    "score), 1 when the baseline failed or the copy was not imported, 2 on bad "
                    "usage or an invalid mutant.")
    p.add_argument("--only", metavar="ID[,ID]", action="append", default=[],
                   help="run only these mutants (comma-separated ids; repeatable; see --list)")
    p.add_argument("--tests", metavar="PATH", action="append", default=[],
                   help="pytest selection (a file, directory or node id; repeatable) instead of the "
                        f"whole suite ({TEST_DIR}, fast broad files first)")
    p.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                   help="per-mutant limit; past it the mutant's verdict is 'timeout' (default 900)")
    p.add_argument("--json", metavar="FILE", help="also write every result and the score to FILE")
    p.add_argument("--python", default=None, metavar="PATH",
                   help="the interpreter that runs pytest (default: .venv/bin/python of the "
                        "repository if present, else this one)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the unmutated run that first checks the selected tests pass")
    p.add_argument("--list", action="store_true", help="list the mutants and their claims, then exit")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    files = snapshot(REPO)
    problems = check_mutants(MUTANTS, files)
    if problems:
        print("invalid mutant(s):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:<46} {m.file:<28} {m.claim}")
        return 0
    wanted = [i.strip() for arg in args.only for i in arg.split(",") if i.strip()]
    unknown = sorted(set(wanted) - {m.id for m in MUTANTS})
    if unknown:
        print(f"unknown mutant id(s): {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    mutants = [m for m in MUTANTS if m.id in wanted] if wanted else list(MUTANTS)
    if args.timeout <= 0:
        print("--timeout must be positive", file=sys.stderr)
        return 2
    venv_python = REPO / ".venv" / "bin" / "python"
    python = args.python or (str(venv_python) if venv_python.exists() else sys.executable)
    tests = args.tests or default_tests(files)

    print(f"{len(mutants)} mutant(s), {len(files)} files copied per run, python {python}")
    print(f"tests: {' '.join(tests)}", flush=True)
    started = time.monotonic()
    baseline = None
    if args.baseline:
        baseline, imports = run_pytest(python, files, None, tests, args.timeout, verify_imports=True)
        print(f"imports from the copy: {json.dumps(imports)}")
        print(f"baseline: {baseline.verdict} in {baseline.seconds:.0f} s ({baseline.summary})", flush=True)
        if baseline.verdict != "survived":
            print(f"error: the unmutated suite does not pass ({baseline.killer}); stopping\n"
                  f"{baseline.output_tail}", file=sys.stderr)
            return 1

    results = []
    for n, m in enumerate(mutants, 1):
        r, imports = run_pytest(python, files, m, tests, args.timeout,
                                verify_imports=(n == 1 and not args.baseline))
        if imports is not None:
            print(f"imports from the copy: {json.dumps(imports)}")
        results.append(r)
        print(f"[{n:>2}/{len(mutants)}] {m.id:<46} {r.verdict:<8} {r.seconds:>6.0f} s  "
              f"{r.killer or ('survived' if r.verdict == 'survived' else r.summary)}", flush=True)

    total = len(results)
    killed = sum(r.verdict == "killed" for r in results)
    timeouts = sum(r.verdict == "timeout" for r in results)
    rate = killed / (total - timeouts) if total > timeouts else 0.0
    elapsed = time.monotonic() - started
    print(f"\nscore: {killed}/{total} killed ({killed / total:.0%}); "
          f"{killed}/{total - timeouts} excluding {timeouts} timeout(s) ({rate:.0%}); "
          f"{elapsed / 60:.1f} min")
    for verdict in ("survived", "timeout", "error"):
        rows = [r for r in results if r.verdict == verdict]
        if rows:
            print(f"{verdict} ({len(rows)}):")
            for r in rows:
                print(f"  {r.id} ({r.file}): {r.claim}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "tests": tests, "python": python, "timeout_s": args.timeout,
            "baseline": asdict(baseline) if baseline else None,
            "score": {"killed": killed, "total": total, "timeouts": timeouts,
                      "killed_of_total": killed / total if total else 0.0,
                      "killed_of_non_timeout": rate},
            "elapsed_s": round(elapsed, 1),
            "mutants": [{**asdict(m), **asdict(r)} for m, r in zip(mutants, results)],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

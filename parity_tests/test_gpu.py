"""GPU parity: each framework's GPU run against its CPU run, and every pair on GPU.

These run where a framework sees a GPU (TF32 turned off by the backends' parity mode) and skip
with the reason elsewhere. The bound is EVAL_RTOL_GPU: cuDNN picks other algorithms than the
CPU libraries do, and each framework picks its own.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from common import EVAL_RTOL_GPU, compare, format_rows

from .conftest import backend_or_skip, make_input

pytestmark = pytest.mark.gpu

SHAPE = (2, 1, 96, 96)


def need_gpu(be):
    if "gpu" not in be.devices():
        pytest.skip(f"{be.name}: no GPU visible to this framework here (CPU-only build or no "
                    "CUDA device); GPU parity runs where one is")


def check(acts, ref, title):
    rows = compare(acts, ref, EVAL_RTOL_GPU)
    report = format_rows(rows, title)
    print(report)
    assert all(r.ok for r in rows), report


def test_gpu_matches_cpu(be, r18, loaded):
    need_gpu(be)
    model, x = loaded(be, r18), make_input(SHAPE)
    cpu = be.activations(model, x, device="cpu")
    gpu = be.activations(model, x, device="gpu")
    check(gpu, cpu, f"{be.name}: gpu vs cpu")
    # the model moved and came back: CPU results are unchanged
    again = be.activations(model, x, device="cpu")
    assert all(again[k].tobytes() == cpu[k].tobytes() for k in cpu)


def test_pair_parity_on_gpu(pair, r18, loaded):
    ref, other = pair
    need_gpu(ref)
    need_gpu(other)
    x = make_input(SHAPE)
    acts = {be.name: be.activations(loaded(be, r18), x, device="gpu") for be in pair}
    check(acts[other.name], acts[ref.name], f"{other.name} vs {ref.name} on gpu")


def _tf32_enabled(name: str) -> bool:
    if name == "torch":
        import torch
        return torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    import tensorflow as tf
    return tf.config.experimental.tensor_float_32_execution_enabled()


def _tf32_default(name: str) -> bool:
    """Whether a fresh interpreter allows TF32 (before any parity mode touched the flags)."""
    code = ("import torch; print(torch.backends.cuda.matmul.allow_tf32 or "
            "torch.backends.cudnn.allow_tf32)") if name == "torch" else (
        "import tensorflow as tf; print(tf.config.experimental.tensor_float_32_execution_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.trap
@pytest.mark.parametrize("name", ["torch", "tf"])
def test_parity_mode_turns_tf32_off(name, r18, loaded):
    """The trap: on a GPU, PyTorch (cuDNN convolutions) and TensorFlow allow TF32 by default,
    10-bit mantissas in float32 convolutions. The backends' parity mode turns it off."""
    be = backend_or_skip(name)
    need_gpu(be)
    assert _tf32_default(name)
    be.forward(loaded(be, r18), make_input(SHAPE), device="gpu")
    assert not _tf32_enabled(name)


def test_convnext_pair_parity_on_gpu(pair):
    """ConvNeXt-T on GPU in each pair: LayerNorm, GELU and the depthwise conv in cuDNN and
    each framework's own kernels."""
    from common import architecture, random_state
    ref, other = pair
    need_gpu(ref)
    need_gpu(other)
    spec = architecture("convnext_tiny")
    state, x = random_state(spec, seed=3), make_input((2, 3, 67, 45), seed=3)
    acts = {}
    for be in pair:
        model = be.build(spec)
        be.load_state(model, state)
        acts[be.name] = be.activations(model, x, device="gpu")
    check(acts[other.name], acts[ref.name], f"ConvNeXt-T: {other.name} vs {ref.name} on gpu")

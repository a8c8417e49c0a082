"""PyTorch's ways to run the model for ``resnet-parity bench``: eager, and ``torch.compile`` on
channels-last tensors with the weights frozen into the inference graph (oneDNN's best layout
and prepacked weights, PyTorch's recipe for CPU inference)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch._inductor import config as inductor_config
from torch.nn import functional as F

# this framework's ways to run the model -> the kind ``resnet-parity bench --modes`` selects
MODES = {"eager": "eager", "compiled": "compiled"}


def runners(model: nn.Module, mode: str, lr: float = 0.05
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], float]]:
    """``(forward(x) -> logits, train_step(x, y) -> loss)`` for one mode; NCHW numpy in.

    Compiled, ``forward`` freezes the weights at its first call for each input shape (they are
    constants of the inference graph): call it on a model whose weights no longer change.
    ``train_step`` has its own graph, compiled with the weights as parameters."""
    compiled = mode == "compiled"
    layout = torch.channels_last if compiled else torch.contiguous_format
    if compiled:
        model.to(memory_format=torch.channels_last)
    infer = torch.compile(model, dynamic=False) if compiled else model
    net = torch.compile(model, dynamic=False) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def forward(x: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.inference_mode(), inductor_config.patch(freezing=compiled):
            return infer(torch.from_numpy(x).contiguous(memory_format=layout)).numpy()

    def train_step(x: np.ndarray, y: np.ndarray) -> float:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(torch.from_numpy(x).contiguous(memory_format=layout)),
                               torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    return forward, train_step


def conv_runner(x: np.ndarray, weight: np.ndarray, groups: int
                ) -> tuple[Callable[[], Any], Callable[[Any], np.ndarray]]:
    """``(run() -> output, to_numpy(output) -> NCHW)``: a 3x3 conv (padding 1, ``groups``) of
    NCHW ``x`` with a canonical ``weight``, on channels-last tensors in inference mode."""
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    wt = torch.from_numpy(weight).contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return F.conv2d(xt, wt, padding=1, groups=groups)

    return run, lambda y: y.contiguous().numpy()


def threads() -> dict[str, int]:
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def set_threads(n: int) -> None:
    torch.set_num_threads(n)

"""PyTorch's ways to run the model for ``resnet-parity bench``: eager and ``torch.compile``."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# this framework's ways to run the model -> the kind ``resnet-parity bench --modes`` selects
MODES = {"eager": "eager", "compiled": "compiled"}


def runners(model: nn.Module, mode: str, lr: float = 0.05
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], float]]:
    """``(forward(x) -> logits, train_step(x, y) -> loss)`` for one mode; NCHW numpy in."""
    net = torch.compile(model) if mode == "compiled" else model
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def forward(x: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    def train_step(x: np.ndarray, y: np.ndarray) -> float:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    return forward, train_step


def threads() -> dict[str, int]:
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def set_threads(n: int) -> None:
    torch.set_num_threads(n)

"""d2l's training loop in PyTorch: a DataLoader over the shared batches, SGD, cross-entropy."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.core.data import ImageData


class Trainer:
    """One epoch at a time, so several frameworks can be run side by side."""

    def __init__(self, model: nn.Module, data: ImageData, batch_size: int, lr: float,
                 seed: int) -> None:
        self.model, self.data, self.batch_size, self.seed = model, data, batch_size, seed
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        self.loss = nn.CrossEntropyLoss()
        self.dtype = next(model.parameters()).dtype  # batches in the model's dtype (a float64 twin)

    def loader(self, epoch: int) -> DataLoader:
        # The sampler yields the shared epoch order; collate_fn builds the (resized) batch.
        def collate(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = self.data.batch(indices)
            return torch.from_numpy(x).to(self.dtype), torch.from_numpy(y)
        return DataLoader(range(len(self.data)), collate_fn=collate,
                          batch_sampler=self.data.order(self.batch_size, epoch, self.seed))

    def run_epoch(self, epoch: int, on_batch: Callable[[float, int], None]) -> tuple[float, float]:
        """Train one epoch; return (mean loss, train accuracy) over its examples."""
        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for X, y in self.loader(epoch):
            self.optimizer.zero_grad()
            y_hat = self.model(X)
            loss = self.loss(y_hat, y)
            loss.backward()
            self.optimizer.step()
            n = len(y)
            total_loss += loss.item() * n
            correct += int((y_hat.argmax(dim=1) == y).sum())
            seen += n
            on_batch(loss.item(), n)
        return total_loss / seen, correct / seen


__all__ = ["Trainer"]

"""A Lightning script to steer from tuimon's UI: `tuimon run tests/scripts/lightning_ui_train.py`.

Written as Lightning's tutorials write a model (a LightningModule with `training_step`
and `configure_optimizers`, a `Trainer`), with tuimon added as one callback. It trains
for many epochs and takes a short nap per batch, so that a person (or a test) has time to
press keys before it ends; the UI's stop ends it early. Checkpoints go through Lightning's
own `trainer.save_checkpoint` (a `.ckpt` in the run directory).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tuimon.integrations.lightning import TuimonCallback

# Seconds per batch: slow enough to watch, fast enough to draw a loss curve at once.
PACE = 0.02


class LitRegressor(pl.LightningModule):
    def __init__(self, lr: float = 0.02) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        time.sleep(PACE)  # after the forward: time before it would read as waiting for data
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x.sum(1, keepdim=True)
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    trainer = pl.Trainer(
        max_epochs=10_000,
        accelerator="cpu",
        logger=False,
        callbacks=[TuimonCallback()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(LitRegressor(), train)
    print("FIT DONE", trainer.global_step, flush=True)


if __name__ == "__main__":
    main()

"""TensorBoard scalars for every metric written to `metrics.csv` (tracker=tensorboard)."""

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class TensorBoardWriter:
    """Writes each epoch's metrics as scalars, indexed by the optimizer step."""

    def __init__(self, log_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, row: dict) -> None:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s"):
            self.writer.add_scalar(key, row[key], global_step=row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

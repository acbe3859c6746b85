"""What building the data gives the rest of training (DataBundle), and the error it raises."""

from dataclasses import dataclass, field

from torch.utils.data import Dataset

from ..config import ConfigError
from ..errors import worker_message

# The built-in shapes are normalised with fixed statistics: nothing to compute.
SHAPES_MEAN, SHAPES_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class DataError(ConfigError):
    """A problem with the data files; the message names the file or folder and the fix.

    The message is one line: a line break in a file name is shown as \\n. A DataLoader
    worker's error reaches the main process as a new error of its class whose message is
    the worker's traceback; that keeps only the original message, the traceback's last line.
    """

    def __init__(self, message: str) -> None:
        message = worker_message(message)  # the original, where re-raised from a worker
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


@dataclass
class DataBundle:
    """What the rest of training needs to know about the data."""

    train: Dataset
    val: Dataset
    classes: list[str]
    in_channels: int
    mean: tuple[float, ...] = SHAPES_MEAN
    std: tuple[float, ...] = SHAPES_STD
    stats_source: str = "built-in"  # built-in, config, computed or cached
    cached: bool | str = False  # decoded once (data.cache): True in memory, "disk" on disk
    # data.* settings left null and chosen while the data was built (survey.py)
    chosen: dict = field(default_factory=dict)

    def normalization(self) -> dict:
        """The statistics the images were normalised with, as saved in checkpoints."""
        return {"mean": list(self.mean), "std": list(self.std)}

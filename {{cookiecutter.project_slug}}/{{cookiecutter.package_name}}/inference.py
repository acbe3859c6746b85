"""Using a trained checkpoint: evaluation on its validation set, predictions for image files.

Both start from the checkpoint alone. It holds the config the run was made with (data and
model settings), the class names and the normalisation statistics, so the images are
prepared exactly as for validation during training. Used by evaluate.py and predict.py.
"""

import csv
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, first_line, load_model_state, strip_prefixes
from .class_names import class_difference
from .config import Config, ConfigError, load_saved_config
from .data import (
    IMAGE_SUFFIXES,
    DataError,
    build_datasets,
    build_loader,
    image_transform,
    list_images,
    open_image,
    report_listing,
    shown,
)
from .declared import (
    apply_statistics,
    check_data_settings,
    check_program_fits,
    checked_channels,
    checked_classes,
    warn_download_set_aside,
    without_download,
)
from .device import pick_device, precision
from .ema import inference_weights
from .exported import PROGRAMS, load_model_file, load_program
from .files import atomic_path, atomic_write_text
from .model import build_model

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

# Top-5 accuracy is reported only when there are more classes than that.
TOP_K = 5


@dataclass
class TrainedModel:
    """A checkpoint's model, ready for inference, with what it needs to prepare inputs."""

    model: nn.Module
    cfg: Config
    classes: list[str]
    in_channels: int
    checkpoint: Path
    step: int
    device: torch.device
    autocast: object  # a zero-argument function returning a context manager

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images.to(self.device)).float().cpu()


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or for a run folder its best.pt (else last.pt)."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a checkpoint file or a run folder")
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        for name in ("best.pt", "last.pt"):
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(
        f"{path} holds no checkpoints/best.pt or checkpoints/last.pt; give a run folder of "
        "this project or a checkpoint file"
    )


def load_trained(path: Path, overrides: list[str]) -> TrainedModel:
    """The model of checkpoint `path` (verified), or of weights export.py wrote, with its
    config and `key=value` overrides (e.g. data.root=other/images to evaluate on other
    data, train.device=cpu)."""
    checkpoint = load_model_file(path)
    if not isinstance(checkpoint.get("config"), dict) or not checkpoint.get("classes"):
        raise CheckpointError(
            f"{path} holds no config or class names: give a checkpoint of a run of this "
            "project, or weights written by export.py"
        )
    # What the file declares is checked before anything is built from it (declared.py).
    saved, asks_download = without_download(checkpoint["config"])
    cfg = load_saved_config(saved, overrides)
    if asks_download and not cfg.data.download:  # the user did not give it: set aside
        warn_download_set_aside(path)
    classes = checked_classes(checkpoint["classes"], path)
    check_data_settings(cfg, path)
    cfg.model.weights = None  # the checkpoint's own weights replace any initial ones
    cfg.model.pretrained = False  # (published ones included: their file is not read)
    cfg.model.freeze = []
    if path.suffix in PROGRAMS:  # torch.export or ONNX: exported on the CPU, in eval mode
        in_channels = checked_channels(checkpoint.get("in_channels"), path)
        model, device = load_program(path), torch.device("cpu")
        check_program_fits(model, in_channels, cfg.data.image_size, len(classes), path)
    else:
        weights = inference_weights(checkpoint)
        model, in_channels = _model_with_weights(cfg, classes, weights, path)
        device = pick_device(cfg.train.device, local_rank=0)
        model = model.to(device).eval()
    apply_statistics(cfg, checkpoint.get("normalization"), in_channels, path)
    return TrainedModel(
        model=model,
        cfg=cfg,
        classes=classes,
        in_channels=in_channels,
        checkpoint=path,
        step=int(checkpoint.get("progress", {}).get("global_step", -1)),
        device=device,
        autocast=_autocast(cfg, device),
    )


def _model_with_weights(cfg: Config, classes: list[str], weights: dict, path: Path):
    """(the model of `cfg` holding `weights`, its input channels). The model is first
    built on the meta device, which allocates nothing: a width or a class list in the file
    that does not fit its weights is refused before the real model takes any memory."""
    with torch.device("meta"):
        model = build_model(cfg.model, len(classes), in_channels=3)
        in_channels = _input_channels(model, weights)
        if in_channels != 3:
            model = build_model(cfg.model, len(classes), in_channels)
    load_model_state(model, weights, path, check_only=True)
    model = build_model(cfg.model, len(classes), in_channels)
    load_model_state(model, weights, path)
    return model, in_channels


def _input_channels(model: nn.Module, weights: dict) -> int:
    """The input channels the checkpoint's model was built for (1 for grayscale)."""
    # The model's first convolution weight is (out, in, kh, kw); the checkpoint holds the
    # same key (prefixes of wrappers stripped), whatever order its keys are stored in.
    first = next((key for key, value in model.state_dict().items() if value.dim() == 4), None)
    weights = strip_prefixes(weights)
    if first is None or first not in weights or weights[first].dim() != 4:
        return 3  # not a convolutional model, or not this model: load_model_state explains
    return int(weights[first].shape[1])


def _autocast(cfg: Config, device: torch.device):
    """The same autocast as training used, so the figures match the training log."""
    return precision(cfg.train, device).autocast


@dataclass
class Evaluation:
    classes: list[str]
    confusion: torch.Tensor  # confusion[true, predicted] = number of images
    loss: float
    top_k: float | None  # top-5 accuracy, None with 5 classes or fewer

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diag().sum()) / max(self.images, 1)

    def per_class(self) -> list[tuple[str, int, int, float | None]]:
        """(class, images, correct, accuracy or None when the class has no images)."""
        rows = []
        for index, name in enumerate(self.classes):
            count, correct = int(self.confusion[index].sum()), int(self.confusion[index, index])
            rows.append((name, count, correct, correct / count if count else None))
        return rows


def evaluate_checkpoint(trained: TrainedModel) -> Evaluation:
    """Accuracy, top-5, loss and the confusion matrix on the validation set of `trained.cfg`."""
    cfg = trained.cfg
    data, data_cfg = validation_data(cfg)
    difference = class_difference(trained.classes, data.classes)
    if difference is not None:
        raise ConfigError(
            f"the classes of data.root={cfg.data.root!r} differ from the checkpoint's "
            f"({difference}); evaluate on data with the same class folders"
        )
    loader = build_loader(data.val, data_cfg, train=False, seed=cfg.seed)
    classes = len(trained.classes)
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    loss_sum, in_top_k = 0.0, 0
    batch = f"a batch of data.batch_size={data_cfg.batch_size} images of {data_cfg.image_size} px"
    with within_memory(batch, "data.batch_size"):
        for images, labels in loader:
            logits = trained.logits(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            predicted = logits.argmax(dim=1)
            confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
            if classes > TOP_K:
                top = logits.topk(TOP_K, dim=1).indices
                in_top_k += int((top == labels[:, None]).any(dim=1).sum())
    count = max(int(confusion.sum()), 1)
    top_k = in_top_k / count if classes > TOP_K else None
    return Evaluation(list(trained.classes), confusion, loss_sum / count, top_k)


def validation_data(cfg: Config):
    """(the datasets of `cfg` with its validation set, the data settings that read them),
    building only what the validation set needs: no data.cache (decoding the training set
    too would only cost time and memory, and the cache gives the same validation tensors),
    and of the built-in shapes one training image (their validation images come from a seed
    of their own: the same whatever data.train_size a file declares)."""
    data_cfg = replace(cfg.data, cache=False, train_size=1)
    what = f"the validation images of data.dataset={data_cfg.dataset}"
    if data_cfg.dataset == "shapes":
        what += f" (data.val_size={data_cfg.val_size} of {data_cfg.image_size} px)"
    with within_memory(what, "data.val_size or data.image_size"):
        return build_datasets(data_cfg, cfg.seed), data_cfg


@contextmanager
def within_memory(what: str, setting: str):
    """One DataError naming `what` and the `setting` to lower where an allocation fails:
    MemoryError, or torch's RuntimeError (CPU "can't allocate memory", CUDA out of memory)."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        text = str(error).lower()
        if isinstance(error, RuntimeError) and "allocate" not in text and "memory" not in text:
            raise
        raise DataError(
            f"{what} do not fit in this machine's memory ({first_line(error) or 'MemoryError'}); "
            f"set {setting} smaller"
        ) from None


def write_evaluation(result: Evaluation, trained: TrainedModel, folder: Path) -> list[Path]:
    """metrics.json, per_class.csv, confusion_matrix.csv and confusion_matrix.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "checkpoint": str(trained.checkpoint),
        "step": trained.step,
        "images": result.images,
        "accuracy": result.accuracy,
        "top5_accuracy": result.top_k,
        "loss": result.loss,
    }
    # Each file is replaced whole (files.atomic_path): a failure keeps the earlier one.
    paths = [folder / name for name in ("metrics.json", "per_class.csv", "confusion_matrix.csv")]
    atomic_write_text(paths[0], json.dumps(metrics, indent=2) + "\n")
    per_class = [
        [name, count, correct, "" if accuracy is None else f"{accuracy:.6f}"]
        for name, count, correct, accuracy in result.per_class()
    ]
    _write_csv(paths[1], ["class", "images", "correct", "accuracy"], per_class)
    matrix = zip(result.classes, result.confusion.tolist(), strict=True)
    confusion = [[name, *row] for name, row in matrix]
    _write_csv(paths[2], ["true \\ predicted", *result.classes], confusion)
    paths.append(plot_confusion(result, folder / "confusion_matrix.png"))
    return paths


def _write_csv(path: Path, header: list, rows: list[list]) -> None:
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def plot_confusion(result: Evaluation, path: Path) -> Path:
    """The confusion matrix as an image: rows are true classes, columns predictions."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no window, works without a display
    import matplotlib.pyplot as plt

    classes = len(result.classes)
    side = min(4 + 0.4 * classes, 30)
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(result.confusion.numpy(), cmap="Blues")
    if classes <= 40:  # beyond that, names and counts would not be readable anyway
        ticks = list(range(classes))
        axes.set_xticks(ticks, result.classes, rotation=90)
        axes.set_yticks(ticks, result.classes)
        largest = max(int(result.confusion.max()), 1)
        for (row, column), count in zip(
            torch.cartesian_prod(torch.arange(classes), torch.arange(classes)).tolist(),
            result.confusion.flatten().tolist(),
            strict=True,
        ):
            if count:
                colour = "white" if count > largest / 2 else "black"
                axes.text(column, row, count, ha="center", va="center", color=colour)
    axes.set(
        xlabel="predicted class",
        ylabel="true class",
        title=f"confusion matrix: accuracy {result.accuracy:.4f} on {result.images} images",
    )
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path


def image_files(target: Path) -> list[Path]:
    """`target` itself, or the image files under the folder `target`, sorted: those that
    training would read there (data.list_images: links followed, hidden files left out),
    with the same warnings about what is left out."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise ConfigError(
            f"{shown(target)} does not exist; give an image file or a folder of images"
        )
    listing = list_images(target)
    report_listing([listing])
    if not listing.images:
        raise ConfigError(
            f"no images in {shown(target)} (looked for {', '.join(IMAGE_SUFFIXES)} and the "
            "other suffixes of the formats PIL reads)"
        )
    return listing.images


@dataclass
class Prediction:
    file: Path
    probabilities: torch.Tensor  # one per class


def predict_files(trained: TrainedModel, files: list[Path]) -> list[Prediction]:
    """Class probabilities for each readable file, a batch at a time; unreadable files are
    skipped with a warning naming them."""
    data = trained.cfg.data
    transform = image_transform(data, trained.in_channels, False, data.mean, data.std)
    predictions, batch = [], []
    for position, path in enumerate(files):
        try:
            batch.append((path, transform(open_image(path))))
        except DataError as error:
            # Only the problem: the advice of training (data.skip_bad) is not for predict.py.
            logger.warning("skipped %s", str(error).partition("; ")[0])
        if batch and (len(batch) == data.batch_size or position == len(files) - 1):
            logits = trained.logits(torch.stack([image for _, image in batch]))
            for (image_path, _), row in zip(batch, logits.softmax(dim=1), strict=True):
                # As the outputs (text) write it: a name that is not valid UTF-8 shows its
                # bytes as \xNN (data.shown), instead of failing to be written.
                predictions.append(Prediction(Path(shown(image_path)), row))
            batch = []
    return predictions


def write_predictions(predictions: list[Prediction], classes: list[str], path: Path) -> Path:
    """A CSV: file, class, probability, and the top classes as `name=probability;...`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    top = min(TOP_K, len(classes))
    # Written whole or not at all: a failure (a full disk) keeps an earlier file as it was.
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "class", "probability", f"top{top}"])
        for prediction in predictions:
            values, indices = prediction.probabilities.topk(top)
            ranked = ";".join(
                f"{classes[index]}={value:.6f}"
                for value, index in zip(values.tolist(), indices.tolist(), strict=True)
            )
            writer.writerow(
                [prediction.file, classes[indices[0]], f"{values[0].item():.6f}", ranked]
            )
    return path

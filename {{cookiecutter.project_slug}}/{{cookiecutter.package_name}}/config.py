"""The configuration schema, and loading it from YAML files and `key=value` overrides.

The dataclasses below are the single source of truth: every setting, its type, default,
allowed values and one-line help. `configs/default.yaml`, any further YAML files (read by
yaml_files.py, which knows each key's line) and the command-line overrides are checked
against them in a user's words (config_checks.py: unknown keys, sections, types), OmegaConf
merges them onto the schema, and `validate` checks choices and ranges. Keys the template
renamed are read under their new names (renamed_settings.py). Any problem becomes one
`ConfigError` naming the full key (and the file's line) and what is allowed, before any work.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_checks import image_settings_problem, key_problem, rule_problem, tree_problem
from .pipe_roots import note_given
from .renamed_settings import current_key, with_current_keys
from .yaml_files import YamlError, parse_value, read_mapping, spelling


class ConfigError(ValueError):
    """A setting the user can fix; the message names the key and the allowed values."""


def setting(default: Any, help: str, **rules: Any) -> Any:
    """A schema field with its help text and validation rules (choices, gt, ge, le, lt).

    `default` may be a list; it is then copied per instance as dataclasses require.
    """
    metadata = {"help": help, **rules}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    dataset: str = setting(
        "shapes",
        "'shapes' (built-in, generated in memory), 'imagefolder' (your images: data.root/train "
        "and data.root/val class folders, or one folder of classes split by data.val_fraction), "
        "'shards' (tar shards written by prepare_shards.py, streamed) "
        "or a torchvision dataset: cifar10, cifar100, mnist, fashionmnist",
    )
    root: str = setting(
        "data",
        "folder of the data for imagefolder and torchvision datasets; for shards their folder "
        "or URL (http, https, file, or a pipe: command with {name})",
    )
    download: bool = setting(False, "let torchvision datasets download into data.root")
    val_fraction: float = setting(
        0.2,
        "imagefolder without a val/ folder: share of each class held out for validation "
        "(a seeded, stratified split)",
        ge=0,
        lt=1,
    )
    split_seed: int = setting(
        0, "imagefolder: seed of the train/val split (kept apart from `seed`)", ge=0
    )
    skip_bad: bool = setting(
        False, "imagefolder: skip unreadable images with a warning instead of stopping"
    )
    channels: Optional[int] = setting(
        None,
        "image channels: 1 (grayscale) or 3 (RGB), images converted on load; null = the "
        "data's own (imagefolder: 1 if every image is grayscale)",
    )
    image_size: Optional[int] = setting(
        None,
        "side of the square images fed to the model; null = automatic: from the training "
        "images' sizes and what this machine trains in reasonable time (32 for small images)",
        ge=8,
    )
    resize: Optional[int] = setting(
        None,
        "images' shorter side is resized to this before cropping to data.image_size; "
        "null = image_size * 1.14, 0 = no resize (crop the originals)",
        ge=0,
    )
    interpolation: Optional[str] = setting(
        None,
        "resampling of the resize: bilinear, bicubic or nearest; null = the pretrained "
        "weights' own (model.pretrained), else bilinear",
        choices=("bilinear", "bicubic", "nearest"),
    )
    random_crop: bool = setting(
        True, "training: random crop (false: centre crop, as for evaluation)"
    )
    flip: Optional[bool] = setting(
        None,
        "training: random horizontal flips; null = automatic: on for colour photographs "
        "(JPEG-like files of at least 64 px), off otherwise (a mirrored digit or letter may "
        "be another class)",
    )
    mean: Optional[list[float]] = setting(
        None,
        "per-channel normalisation mean, e.g. [0.485,0.456,0.406]; null = computed once "
        "from the training set and cached in the run folder",
    )
    std: Optional[list[float]] = setting(
        None, "per-channel normalisation std; null together with data.mean"
    )
    batch_size: Optional[int] = setting(
        None, "samples per batch (per process under DDP); null = automatic (recipe.py)", ge=1
    )
    num_workers: Optional[int] = setting(
        None, "DataLoader worker processes (0: the main process); null = automatic", ge=0
    )
    cache: Optional[Union[bool, str]] = setting(
        None,
        "imagefolder and torchvision datasets: decode every image once (uint8; side "
        "data.resize, or data.image_size with data.resize=0): true keeps them in memory, disk "
        "in files under data.cache_dir read memory-mapped, kept for later runs; crops, flips "
        "and normalisation then run per batch as tensor operations; null = automatic (memory "
        "when they fit, else disk when they fit there)",
        choices=(True, False, "disk"),
    )
    cache_dir: Optional[str] = setting(
        None,
        "folder of data.cache=disk's decoded images; null = cache/ beside runs/ (never "
        "inside data.root)",
    )
    shuffle_buffer: int = setting(
        1000, "shards: samples each process holds to shuffle the stream of its shards", ge=1
    )
    train_size: int = setting(10000, "shapes only: number of training images", ge=1)
    val_size: int = setting(2000, "shapes only: number of validation images", ge=1)


@dataclass
class ModelConfig:
    name: str = setting(
        "small_resnet", "'small_resnet' (this project's) or a torchvision model, e.g. resnet18"
    )
    width: int = setting(16, "small_resnet only: channels of the first stage", ge=1)
    dropout: float = setting(0.0, "small_resnet only: dropout before the classifier", ge=0, lt=1)
    weights: Optional[str] = setting(
        None,
        "initial weights from a local .pth/.pt or .safetensors file (never downloaded); "
        "a classifier of another class count is replaced",
    )
    pretrained: bool = setting(
        False,
        "start from the published weights of model.name (torchvision's, or timm's for "
        "timm:NAME), read from the local caches (TORCH_HOME, the Hugging Face cache); "
        "python -m PACKAGE.fetch_weights NAME fetches them where there is a network",
    )
    freeze: list[str] = setting(
        [],
        "parameters to freeze: name prefixes, e.g. [stem,stages.0], or up_to:PREFIX for "
        "everything from the input up to and including PREFIX, e.g. [up_to:layer2]",
    )


@dataclass
class OptimConfig:
    name: str = setting("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: Optional[float] = setting(
        None,
        "peak learning rate; null = automatic: 0.01 * sqrt(data.batch_size / 128), a tenth of "
        "that with model.pretrained",
        gt=0,
    )
    weight_decay: float = setting(
        0.05, "decoupled weight decay (never applied to biases and norm weights)", ge=0
    )
    backbone_lr_ratio: Optional[float] = setting(
        None,
        "learning rate of every parameter but the classifier, as a fraction of optim.lr; "
        "null = automatic: 0.1 with model.pretrained, else 1",
        gt=0,
        le=1,
    )
    momentum: float = setting(0.9, "sgd only: momentum", ge=0, lt=1)
    nesterov: bool = setting(True, "sgd only: Nesterov momentum")
    betas: list[float] = setting([0.9, 0.999], "adamw only: (beta1, beta2)")


@dataclass
class SchedConfig:
    name: str = setting(
        "cosine",
        "learning-rate schedule",
        choices=("cosine", "step", "multistep", "exponential", "plateau", "none"),
    )
    warmup_epochs: float = setting(
        0.5, "cosine only: linear warmup length in epochs (fractions allowed)", ge=0
    )
    min_lr_ratio: float = setting(
        0.0, "cosine only: final lr as a fraction of optim.lr", ge=0, le=1
    )
    step_size: int = setting(10, "step only: epochs between decays", ge=1)
    milestones: list[int] = setting([30, 60, 90], "multistep only: epochs at which lr decays")
    gamma: float = setting(0.1, "step, multistep, exponential, plateau: decay factor", gt=0, le=1)
    patience: int = setting(3, "plateau only: epochs without val_loss improvement", ge=0)


@dataclass
class TrainConfig:
    epochs: Optional[int] = setting(
        None, "passes over the training data; null = automatic from the training set's size", ge=1
    )
    early_stop_patience: Optional[int] = setting(
        None,
        "stop after this many epochs without a better val acc (0 = never); null = automatic",
        ge=0,
    )
    freeze_epochs: Optional[int] = setting(
        None,
        "epochs that train only the classifier, the rest frozen, before the whole network; "
        "null = automatic: a tenth of train.epochs (at least 1) with model.pretrained, else 0",
        ge=0,
    )
    max_steps: int = setting(0, "stop after this many optimizer steps (0 = no limit)", ge=0)
    grad_accum_steps: int = setting(1, "micro-batches per optimizer step", ge=1)
    grad_clip: float = setting(0.0, "clip the gradient norm to this value (0 = off)", ge=0)
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy", ge=0, lt=1)
    ema_decay: float = setting(
        0.0, "decay of a moving average of the weights, e.g. 0.999 (0 = off)", ge=0, lt=1
    )
{% if cookiecutter.use_amp %}
    amp: bool = setting(True, "mixed precision where it pays: fp16 with a grad scaler on CUDA")
    amp_dtype: str = setting(
        "auto",
        "autocast dtype; auto = fp16 on CUDA, float32 on CPU (bf16 measured slower there)",
        choices=("auto", "bf16", "fp16"),
    )
{% endif %}
    device: str = setting("auto", "auto (CUDA when available), cpu, cuda, cuda:N or mps")
    threads: Optional[int] = setting(
        None, "torch CPU threads (0 = torch's default); null = automatic", ge=0
    )
    channels_last: bool = setting(
        True, "store conv weights channels-last (measured 1.25x faster on CPU; faster on GPUs)"
    )
    compile: bool = setting(
        False, "torch.compile the model: slow first step (~20 s on CPU), pays off in long runs"
    )
    log_every: int = setting(50, "log the running loss every N optimizer steps", ge=1)
{% if cookiecutter.use_ddp %}
    ddp_timeout_s: int = setting(
        600, "seconds a rank waits for the others before the job fails", ge=1
    )
    sync_batchnorm: bool = setting(
        False, "DDP on CUDA: batch norm statistics over the global batch, not each rank's share"
    )
    find_unused_parameters: bool = setting(
        False, "DDP: allow parameters that get no gradient in a step (slower; off unless needed)"
    )
{% endif %}


@dataclass
class RunConfig:
    dir: Optional[str] = setting(None, "output folder (default: runs/<run.name>-<timestamp>)")
    name: str = setting("run", "name of the run, used in the default run.dir")
    resume: Optional[str] = setting(
        None, "go on from: a run folder, a checkpoint, auto (newest), or null (a fresh run)"
    )
    fork: bool = setting(False, "with run.resume: a new run from its weights, settings given now")
    extend: bool = setting(False, "with run.resume of a finished run: train more train.epochs")
    allow_changed_data: bool = setting(False, "resume although the data's files changed")
    keep_last: int = setting(3, "step checkpoints kept besides last.pt and best.pt", ge=1)
    save_every_steps: int = setting(
        0, "also save a checkpoint every N optimizer steps (0 = only at each epoch's end)", ge=0
    )


@dataclass
class Config:
    seed: int = setting(
        0, "seed of data generation, init, shuffling and augmentation", ge=0, lt=2**32
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


def schema_fields(schema: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every leaf setting as (full dotted key, dataclass field), in schema order."""
    leaves = []
    for item in dataclasses.fields(schema):
        key = f"{prefix}{item.name}"
        if key in _SECTIONS:
            leaves += schema_fields(_SECTIONS[key], prefix=f"{key}.")
        else:
            leaves.append((key, item))
    return leaves


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "sched": SchedConfig,
    "train": TrainConfig,
    "run": RunConfig,
}


def load_config(config_files: list[str | Path], overrides: list[str]) -> Config:
    """Merge YAML files (later wins) and `key=value` overrides onto the schema, then validate."""
    merged = OmegaConf.structured(Config)
    for path in config_files:
        merged = _merge(merged, _read_settings_file(Path(path)), source=str(path))
    return _finish(merged, overrides)


def load_saved_config(saved: dict[str, Any], overrides: list[str]) -> Config:
    """The config a checkpoint was made with (see `to_dict`), `key=value` overrides on top."""
    saved = with_current_keys(saved, "the checkpoint")
    merged = _merge(OmegaConf.structured(Config), OmegaConf.create(saved), "the checkpoint")
    return _finish(merged, overrides)


def _finish(merged: Any, overrides: list[str]) -> Config:
    for override in _parse_overrides(overrides):
        merged = _merge(merged, override, source="the command line")
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (for YAML files and checkpoints)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def validate(cfg: Config) -> None:
    """Check every rule declared in the schema: choices and numeric ranges."""
    for key, item in schema_fields():
        if problem := rule_problem(key, get_setting(cfg, key), item.metadata):
            raise ConfigError(problem)
    if cfg.optim.name == "adamw" and (
        len(cfg.optim.betas) != 2 or not all(0 <= beta < 1 for beta in cfg.optim.betas)
    ):
        raise ConfigError(
            f"optim.betas={cfg.optim.betas} is not allowed; give two numbers in [0, 1), "
            "e.g. optim.betas=[0.9,0.999]"
        )
    if problem := image_settings_problem(cfg.data):
        raise ConfigError(problem)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(
            f"train.device={cfg.train.device!r} is not allowed; choose one of: "
            "auto, cpu, cuda, cuda:N, mps"
        )
    if cfg.run.name and not re.fullmatch(r"[\w.-]+", cfg.run.name):
        raise ConfigError(
            f"run.name={cfg.run.name!r} is not allowed; use letters, digits, '_', '-' and '.'"
        )


def get_setting(cfg: Config, key: str) -> Any:
    """The value of the dotted `key` (e.g. "train.epochs") in `cfg`."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _load_yaml(path: Path) -> Any:
    """A YAML file's top-level mapping, not checked against the schema (sweep files use it)."""
    try:
        return OmegaConf.create(read_mapping(Path(path))[0])
    except YamlError as error:
        raise ConfigError(str(error)) from None


def _read_settings_file(path: Path) -> dict[Any, Any]:
    """A YAML file's settings, checked against the schema; a problem names its line."""
    try:
        settings, positions = read_mapping(path)
    except YamlError as error:
        raise ConfigError(str(error)) from None
    note_given(settings := with_current_keys(settings, str(path)))
    key, problem = tree_problem(settings, dict(schema_fields()), style="yaml")
    if not problem:
        return settings
    while key and key not in positions:  # reached through an alias: name the nearest key
        key = key.rpartition(".")[0]
    raise ConfigError(f"{positions.get(key, str(path))}: {problem}")


def _parse_overrides(overrides: list[str]) -> list[dict[str, Any]]:
    """`a.b=value` strings as nested settings, each checked against the schema; Hydra's
    `+a.b=value` form is accepted as `a.b=value`."""
    fields = dict(schema_fields())
    parsed = []
    for override in overrides:
        key, sep, text = override.partition("=")
        key = current_key(key.removeprefix("+").strip(), "the command line")
        if not sep or not key:
            missing = "value" if not sep else "key"
            raise ConfigError(
                f"override {override!r} has no {missing}; write it as key=value, e.g. optim.lr=0.01"
            )
        if text.strip() == "":
            raise ConfigError(
                f"{key} is missing a value; write it as {key}=VALUE (use {key}=null for none)"
            )
        problem = key_problem(key, fields)
        if problem:
            raise ConfigError(problem)
        try:
            nested = parse_value(text)
        except YamlError as error:
            raise ConfigError(f"{key}={spelling(text)}: {error}") from None
        for part in reversed(key.split(".")):
            nested = {part: nested}
        if problem := tree_problem(nested, fields, style="override")[1]:
            raise ConfigError(problem)
        note_given(nested)
        parsed.append(nested)
    return parsed


def _merge(base: Any, update: Any, source: str) -> Any:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{_describe(error)} (in {source})") from None


def _describe(error: OmegaConfBaseException) -> str:
    """One line from an OmegaConf error that the checks before it let through: an
    interpolation (`${...}`) that does not resolve, or resolves to the wrong type."""
    key = getattr(error, "full_key", None) or "config"
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return f"{key}: {message}; fix the value or its interpolation"

"""Published weights, offline-first: torchvision's for a torchvision `model.name`, timm's for
`model.name=timm:NAME`, read from the local caches only; training never downloads.

Where each file is looked for:
- torchvision: where torch.hub keeps it, `<torch.hub.get_dir()>/checkpoints/<file name of the
  weights' URL>` (TORCH_HOME moves it);
- timm: the Hugging Face cache (HF_HOME / HF_HUB_CACHE), by huggingface_hub's own lookup
  (try_to_load_from_cache); the few timm weights published only at a URL, in torch.hub's
  folder as above.
A missing file is one line naming the path expected and `python -m <package>.fetch_weights
NAME` (fetch_weights.py), which fetches it on a machine that has a network.

The file is read by the library's own loader, so that what the library does to it stays
theirs (torchvision's key fix-ups of old files, e.g. densenet's; timm's checkpoint filters,
its first-convolution adaptation and its classifier reset). What those loaders do, checked in
torchvision 0.29 and timm 1.0.31:
- torchvision reads the file with torch.hub.load_state_dict_from_url, whose torch.load gets
  weights_only=False: torch's full unpickler, which runs whatever code a pickle holds;
- timm reads a .safetensors file with safetensors (no code at all) and any other with
  torch.load(weights_only=True).
A file in a cache may come from anyone (it is copied over from another machine), so every
such read runs under weights_only_loads: torch's own switch TORCH_FORCE_WEIGHTS_ONLY_LOAD,
which makes every torch.load use the weights-only unpickler whatever its caller asked. The
project's own reads of weights files (model.weights, checkpoints) go through
checkpoint.load_weights.
"""

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from .config import ConfigError

TIMM_PREFIX = "timm:"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
FETCH_COMMAND = f"python -m {__package__}.fetch_weights"
# huggingface_hub's names for a weights file in a model repository, in timm's order: the
# safetensors file where it is published, else the pickled one.
HUB_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
TIMM_DEFAULT_CROP_PCT = 0.875  # timm's own default (timm.data.DEFAULT_CROP_PCT)
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@dataclass(frozen=True)
class Preprocessing:
    """How the published weights' own images were prepared: normalisation, the side of the
    square the model sees (crop_size), the shorter side resized to before the crop
    (resize_size), and the resampling of that resize."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int
    resize_size: int
    interpolation: str  # one of INTERPOLATIONS


@dataclass(frozen=True)
class WeightsFile:
    """Where the published weights of a model.name live in the local caches."""

    name: str  # the model.name
    label: str  # which weights: torchvision's enum member, timm's Hugging Face repository
    expected: str  # where the file is looked for, in words a person can follow
    found: Path | None  # the file, when it is there
    copy_hint: str  # what to copy from a machine with a network, and where to
    from_hub: bool = False  # in the Hugging Face cache (else torch.hub's folder)

    def required(self) -> Path:
        """The file, or the one line that says where it is expected and how to get it."""
        if self.found is None:
            raise ConfigError(
                f"model.pretrained=true: the weights of model.name={self.name} ({self.label}) "
                f"are not on this machine (expected {self.expected}); run `{FETCH_COMMAND} "
                f"{self.name}` on a machine with a network, then {self.copy_hint}"
            )
        return self.found


def is_timm_name(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def import_timm():
    """The timm package, or one line saying how to install it."""
    try:
        import timm
    except ImportError:
        import sys

        raise ConfigError(
            f"model.name=timm:... needs the package timm, which is not installed in "
            f'{sys.executable}; install it with pip install -e ".[timm]" (in the project folder)'
        ) from None
    return timm


def check_timm_name(name: str) -> None:
    """Fail in one line where timm knows no model (or no weights tag) of that name."""
    import difflib

    timm = import_timm()
    arch, tag = timm.models.split_model_name_tag(name.removeprefix(TIMM_PREFIX))
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        suggestions = ", ".join(TIMM_PREFIX + match for match in close)
        hint = f"; did you mean {suggestions}?" if close else ""
        raise ConfigError(
            f"model.name={name!r}: timm has no model {arch!r}{hint} (timm.list_models() "
            "lists them all)"
        )
    tags = [known.split(".", 1)[1] for known in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise ConfigError(
            f"model.name={name!r}: timm has no weights of {arch} tagged {tag!r}; its tags: "
            f"{', '.join(tags) or 'none'}"
        )


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load inside reads with torch's weights-only unpickler, whatever its caller
    asked (torch's own switch; the contrary one, if set, is set aside meanwhile)."""
    saved = {key: os.environ.get(key) for key in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def torchvision_weights(name: str):
    """torchvision's default published weights of `name` (a WeightsEnum member), or None for
    a name torchvision does not know (this project's own models) or without weights."""
    import torchvision

    try:
        return getattr(torchvision.models.get_model_weights(name), "DEFAULT", None)
    except ValueError:  # "Unknown model"
        return None


def torch_hub_file(url: str) -> Path:
    """Where torch.hub keeps the file of `url` (load_state_dict_from_url's own rule)."""
    return Path(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def published_weights_file(name: str) -> WeightsFile:
    """Where the published weights of model.name `name` are, or are expected; one line for a
    model that has none."""
    if is_timm_name(name):
        return _timm_weights_file(name)
    weights = torchvision_weights(name)
    if weights is None:
        raise ConfigError(
            f"model.pretrained=true: model.name={name} has no published weights; choose a "
            "torchvision model (e.g. resnet18) or a timm one (timm:NAME), or set "
            "model.pretrained=false"
        )
    label = f"{type(weights).__name__}.{weights.name}"
    return _torch_hub_weights(name, label, weights.url)


def _torch_hub_weights(name: str, label: str, url: str) -> WeightsFile:
    path = torch_hub_file(url)
    return WeightsFile(
        name=name,
        label=label,
        expected=str(path),
        found=path if path.is_file() else None,
        copy_hint=(
            f"copy the file to {path} (or to hub/checkpoints/{path.name} under a folder that "
            "TORCH_HOME points at)"
        ),
    )


def _timm_weights_file(name: str) -> WeightsFile:
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(
            f"model.pretrained=true: timm publishes no weights of model.name={name}; choose "
            "a tagged name with weights (timm.list_pretrained() lists them), or set "
            "model.pretrained=false"
        )
    if not cfg.hf_hub_id:  # published at a URL only: timm fetches it with torch.hub
        return _torch_hub_weights(name, cfg.url, cfg.url)
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_WEIGHTS_FILES
    found = None
    for file_name in files:
        cached = try_to_load_from_cache(repo, file_name, revision=revision or None)
        if isinstance(cached, str):  # else None, or the marker of a file known to be absent
            found = Path(cached)
            break
    cache = Path(constants.HF_HUB_CACHE)
    folder = cache / repo_folder_name(repo_id=repo, repo_type="model")
    return WeightsFile(
        name=name,
        label=cfg.hf_hub_id,
        expected=f"{folder}/snapshots/<commit>/{' or '.join(files)}",
        found=found,
        copy_hint=(
            f"copy the folder {folder.name} into {cache} (the Hugging Face cache; HF_HUB_CACHE "
            "or HF_HOME moves it)"
        ),
        from_hub=True,
    )


def torchvision_published_weights(name: str) -> tuple[dict, str]:
    """(the state dict of torchvision's published weights of `name`, as torchvision's own
    loader reads the cached file, fix-ups included; where they came from, in words)."""
    import torchvision

    weights = torchvision_weights(name)
    located = published_weights_file(name)
    path = located.required()
    with _read_by_library(located):
        model = torchvision.models.get_model(name, weights=weights)
    return model.state_dict(), f"{located.label} from {path}"


def build_timm_model(name: str, num_classes: int, in_channels: int, pretrained: bool):
    """timm's model `name` (after timm:) for `num_classes` and `in_channels`, from its
    published weights in the local cache if `pretrained`: timm's own loader then replaces a
    classifier of another class count and adapts the first convolution (a grayscale one
    gets the sum of the RGB filters)."""
    timm = import_timm()
    arch = name.removeprefix(TIMM_PREFIX)
    options = {"num_classes": num_classes, "in_chans": in_channels}
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **options)
    located = published_weights_file(name)
    overlay = {"file": str(located.required())}
    if located.from_hub:  # timm reads a hub file as a plain state dict, whatever custom_load
        overlay["custom_load"] = False
    with _read_by_library(located):
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **options)


@contextmanager
def _read_by_library(located: WeightsFile) -> Iterator[None]:
    """A library's read of `located`'s file, weights-only, with whatever it raises on a file
    it cannot use turned into one line. Those failures share no base class (the unpickler's
    own errors, safetensors', a state dict that does not fit), hence the broad catch; it
    covers this one read of a file from elsewhere."""
    try:
        with weights_only_loads():
            yield
    except MemoryError:
        raise
    except Exception as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"model.pretrained=true: {located.found} cannot be used as the weights of "
            f"{located.label} ({type(error).__name__}: {problem[:300]}); delete it and run "
            f"`{FETCH_COMMAND} {located.name}` on a machine with a network, then "
            f"{located.copy_hint}"
        ) from None


def weights_preprocessing(name: str) -> Preprocessing | None:
    """The preprocessing of `name`'s published weights, from torchvision's weights metadata
    or timm's pretrained config: no weights file read, no network. None for this project's
    own models and for models without published weights."""
    if is_timm_name(name):
        return _timm_preprocessing(name)
    weights = torchvision_weights(name)
    if weights is None:
        return None
    transforms = weights.transforms()
    mean, std = tuple(transforms.mean), tuple(transforms.std)
    if _normalises_its_input(name):
        # inception_v3 and googlenet: torchvision's builders turn on transform_input with
        # the weights, a fixed map from ImageNet's normalisation to (x - 0.5) / 0.5. The
        # model built here has it off (the same model whether or not it read the weights,
        # as a resumed run builds it), so the data takes that normalisation itself.
        mean, std = (0.5,) * len(mean), (0.5,) * len(std)
    return Preprocessing(
        mean=mean,
        std=std,
        crop_size=int(transforms.crop_size[0]),
        resize_size=int(transforms.resize_size[0]),
        interpolation=_interpolation(transforms.interpolation.value),
    )


def _normalises_its_input(name: str) -> bool:
    """Whether torchvision's `name` has a transform_input switch (built on the meta device:
    nothing is allocated or initialised)."""
    import warnings

    import torchvision

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet's notice about its future default init
        model = torchvision.models.get_model(name, weights=None)
    return hasattr(model, "transform_input")


def _timm_preprocessing(name: str) -> Preprocessing | None:
    timm = import_timm()
    try:
        cfg = timm.models.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
    except RuntimeError:  # an unknown name or tag: check_timm_name says which
        return None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    side = max(cfg.input_size[1:])  # square images here; timm's are, but for one model
    crop_pct = cfg.crop_pct or TIMM_DEFAULT_CROP_PCT
    return Preprocessing(
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        crop_size=side,
        resize_size=math.floor(side / crop_pct),  # timm's rule (transforms_factory)
        interpolation=_interpolation(cfg.interpolation),
    )


def _interpolation(value: str) -> str:
    """A library's resampling name as one of INTERPOLATIONS ("nearest-exact" -> "nearest");
    one this project does not offer falls back to bilinear, its default."""
    value = value.split("-")[0]
    return value if value in INTERPOLATIONS else "bilinear"

"""The built-in dataset: coloured shapes drawn procedurally in memory.

Ten classes of simple shapes with random position, size, colour, background and noise.
Every image comes from the seed alone, so the data needs no download and is identical on
every machine. The task is easy enough to learn in seconds on a CPU, yet hard enough
that a model which does not look at shape (only colour or brightness) stays near chance.
"""

import torch

SHAPE_CLASSES = (
    "circle",
    "ring",
    "square",
    "frame",
    "triangle",
    "plus",
    "cross",
    "horizontal_bar",
    "vertical_bar",
    "diamond",
)


def _shape_mask(name: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Boolean mask of one shape class, for offsets (dx, dy) from each shape's centre."""
    ax, ay = dx.abs(), dy.abs()
    box = torch.maximum(ax, ay)
    dist = (dx.square() + dy.square()).sqrt()
    stroke = 0.28 * r  # width of bars and outlines
    if name == "circle":
        return dist <= r
    if name == "ring":
        return (dist <= r) & (dist >= r - stroke)
    if name == "square":
        return box <= 0.85 * r
    if name == "frame":
        return (box <= 0.85 * r) & (box >= 0.85 * r - stroke)
    if name == "triangle":  # apex up, base down
        return (dy <= 0.8 * r) & (ax <= 0.55 * (dy + r))
    if name == "plus":
        return ((ax <= stroke / 2) & (ay <= r)) | ((ay <= stroke / 2) & (ax <= r))
    if name == "cross":
        return ((ax - ay).abs() <= stroke / 1.4) & (box <= 0.8 * r)
    if name == "horizontal_bar":
        return (ay <= stroke / 1.5) & (ax <= r)
    if name == "vertical_bar":
        return (ax <= stroke / 1.5) & (ay <= r)
    if name == "diamond":
        return ax + ay <= r
    raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(SHAPE_CLASSES)}")


def make_shapes(
    num_samples: int, image_size: int, seed: int, noise: float = 0.12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `num_samples` RGB images as uint8 [N, 3, S, S] and their labels as int64 [N].

    Classes are balanced (the label sequence is a shuffled repetition of 0..9).
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(SHAPE_CLASSES)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=generator)]

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * (high - low) + low

    size = float(image_size)
    radius = uniform(num_samples, low=0.2, high=0.34) * size
    centre_x = uniform(num_samples, low=0.3, high=0.7) * size
    centre_y = uniform(num_samples, low=0.3, high=0.7) * size
    foreground = uniform(num_samples, 3, low=0.35, high=1.0)
    background = uniform(num_samples, 3, low=0.0, high=0.3)
    # Swap the two colours for half the images so that brightness alone says nothing.
    swap = uniform(num_samples) < 0.5
    foreground[swap], background[swap] = background[swap].clone(), foreground[swap].clone()

    pixel = torch.arange(image_size, dtype=torch.float32) + 0.5
    mask = torch.zeros(num_samples, image_size, image_size, dtype=torch.bool)
    for label, name in enumerate(SHAPE_CLASSES):
        chosen = (labels == label).nonzero().squeeze(1)
        if chosen.numel() == 0:
            continue
        dx = pixel.view(1, 1, -1) - centre_x[chosen].view(-1, 1, 1)
        dy = pixel.view(1, -1, 1) - centre_y[chosen].view(-1, 1, 1)
        mask[chosen] = _shape_mask(name, dx, dy, radius[chosen].view(-1, 1, 1))

    # In-place steps on one [N, 3, S, S] buffer: this runs at every start, so it must be quick.
    foreground, background = foreground.view(-1, 3, 1, 1), background.view(-1, 3, 1, 1)
    images = torch.where(mask.unsqueeze(1), foreground, background)
    images.add_(torch.randn(images.shape, generator=generator), alpha=noise)
    images = images.clamp_(0.0, 1.0).mul_(255.0).add_(0.5).to(torch.uint8)  # +0.5: round
    return images, labels

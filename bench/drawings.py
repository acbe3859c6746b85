"""The drawings of the recipe benchmark's image collections: draw(rng, label, width, height)
returns one image of class `label` as floats in [0, 1], (height, width) or (height, width, 3).

Every random choice comes from `rng`, so an image is the same on every machine. Each drawing
is a different kind of visual problem, made hard enough by low contrast, clutter or classes
that overlap at their edges that a good training recipe and a bad one end up points apart.
"""

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # shapes drawn with PIL at this many times the size, then averaged down


# Drawing helpers: float images in [0, 1], (height, width) or (height, width, 3).


def pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of the pixel centres."""
    return np.mgrid[0:height, 0:width].astype(np.float32) + 0.5


def smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Noise with about `cells` blobs across the image, in [0, 1]."""
    coarse = (rng.random((cells + 1, cells + 1)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)) / 255.0


def gaussian_spot(y, x, centre, sigma_long, sigma_short, angle) -> np.ndarray:
    """A Gaussian spot, elongated along `angle` (radians) when the sigmas differ."""
    dy, dx = y - centre[0], x - centre[1]
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    return np.exp(-0.5 * ((along / sigma_long) ** 2 + (across / sigma_short) ** 2))


def hue_colour(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_degrees % 360) / 360, saturation, value))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return hue_colour(rng.uniform(0, 360), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))


def supersampled(width: int, height: int, paint: Callable) -> np.ndarray:
    """A mask in [0, 1] painted by paint(ImageDraw, scale) at SUPERSAMPLE times the size and
    averaged down, so that small shapes keep smooth edges."""
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    paint(ImageDraw.Draw(canvas), SUPERSAMPLE)
    return np.asarray(canvas.resize((width, height), Image.BOX)) / 255.0


def blend(background: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    """`colour` painted over `background` where `mask` is 1."""
    if background.ndim == 3:
        mask = mask[..., None]
    return background * (1 - mask) + mask * np.asarray(colour)


def regular_polygon(centre, radius, sides, angle) -> list[tuple[float, float]]:
    return [
        (
            centre[0] + radius * math.cos(angle + 2 * math.pi * k / sides),
            centre[1] + radius * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def plus_sign(centre, radius, thickness, angle) -> list[tuple[float, float]]:
    """The outline of a plus sign (12 corners), turned by `angle`."""
    half, arm = thickness / 2, radius
    corners = [(half, arm), (half, half), (arm, half), (arm, -half), (half, -half), (half, -arm)]
    corners += [(-x, -y) for x, y in corners]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos) for x, y in corners]


# The collections' drawings: draw(rng, label, width, height) -> float image in [0, 1].


def draw_texture(rng, label, width, height):
    """Grayscale textures at low contrast under noise: stripes near horizontal, near vertical,
    a checkerboard, rings, dots, blotches."""
    y, x = pixel_grid(width, height)
    frequency, phase = rng.uniform(1 / 9, 1 / 4), rng.uniform(0, 2 * math.pi)
    turn = rng.uniform(-0.35, 0.35) + (math.pi / 2 if label == 1 else 0)
    along = x * math.sin(turn) + y * math.cos(turn)
    across = x * math.cos(turn) - y * math.sin(turn)
    if label in (0, 1):
        pattern = np.sin(2 * math.pi * frequency * along + phase)
    elif label == 2:
        pattern = np.sin(2 * math.pi * frequency * along) * np.sin(2 * math.pi * frequency * across)
    elif label == 3:
        centre = rng.uniform(0, width), rng.uniform(0, height)
        radius = np.hypot(x - centre[0], y - centre[1])
        pattern = np.sin(2 * math.pi * frequency * radius + phase)
    elif label == 4:
        pattern = np.zeros_like(x)
        for _ in range(rng.integers(6, 14)):
            centre = rng.uniform(0, height), rng.uniform(0, width)
            pattern += gaussian_spot(y, x, centre, 1.5, 1.5, 0.0)
        pattern = 2 * np.clip(pattern, 0, 1) - 1
    else:
        pattern = 2 * smooth_noise(rng, width, height, int(rng.integers(3, 6))) - 1
    contrast, noise = rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.22)
    shading = 0.15 * (smooth_noise(rng, width, height, 2) - 0.5)
    return 0.5 + contrast * pattern + shading + rng.normal(0, noise, x.shape)


# Digits as strokes on a 1 x 1 box (x right, y down), seven-segment style, so that a "2" and a
# "5" are mirror images: a horizontal flip turns one class into another.
_TL, _TR, _ML, _MR, _BL, _BR = (0, 0), (1, 0), (0, 0.5), (1, 0.5), (0, 1), (1, 1)
DIGIT_STROKES = (
    [[_TL, _TR, _BR, _BL, _TL]],
    [[(0.55, 0.15), _TR, _BR]],
    [[_TL, _TR, _MR, _ML, _BL, _BR]],
    [[_TL, _TR, _BR, _BL], [_ML, _MR]],
    [[_TL, _ML, _MR], [_TR, _BR]],
    [[_TR, _TL, _ML, _MR, _BR, _BL]],
    [[_TR, _TL, _BL, _BR, _MR, _ML]],
    [[_TL, _TR, (0.35, 1)]],
    [[_TL, _TR, _BR, _BL, _TL], [_ML, _MR]],
    [[_MR, _ML, _TL, _TR, _BR, _BL]],
)


def draw_glyph(rng, label, width, height):
    """A digit drawn with wobbly strokes under a random affine map, on a noisy background."""
    scale = rng.uniform(0.45, 0.75) * height
    turn, shear = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)
    centre = width / 2 + rng.uniform(-3, 3), height / 2 + rng.uniform(-3, 3)
    aspect = rng.uniform(0.45, 0.7)

    def place(point):
        x = (point[0] - 0.5) * aspect + rng.normal(0, 0.05)
        y = point[1] - 0.5 + rng.normal(0, 0.05)
        x += shear * y
        cos, sin = math.cos(turn), math.sin(turn)
        return centre[0] + scale * (x * cos - y * sin), centre[1] + scale * (x * sin + y * cos)

    strokes = [[place(point) for point in stroke] for stroke in DIGIT_STROKES[label]]
    if rng.random() < 0.3:  # a stray mark
        start = rng.uniform(0, width), rng.uniform(0, height)
        strokes.append([start, (start[0] + rng.uniform(-6, 6), start[1] + rng.uniform(-6, 6))])
    thickness = rng.uniform(1.2, 2.8)

    def paint(draw, factor):
        for stroke in strokes:
            points = [(x * factor, y * factor) for x, y in stroke]
            draw.line(points, fill=255, width=round(thickness * factor), joint="curve")

    ink = supersampled(width, height, paint)
    paper, pen = rng.uniform(0.0, 0.4), rng.uniform(0.55, 1.0)
    return paper + (pen - paper) * ink + rng.normal(0, 0.12, ink.shape)


def elliptic_blob(y, x, centre, radii) -> np.ndarray:
    """A filled ellipse with a one-pixel soft edge."""
    distance = np.hypot((x - centre[0]) / radii[0], (y - centre[1]) / radii[1])
    return np.clip((1 - distance) * min(radii), 0, 1)


def draw_hue_blob(rng, label, width, height):
    """The class is the hue of the largest blob (8 hue bins, neighbours overlapping at their
    edges), among smaller blobs of any hue on a tinted, noisy background."""
    y, x = pixel_grid(width, height)
    image = np.stack([smooth_noise(rng, width, height, 3) for _ in range(3)], axis=-1)
    image = 0.5 * image.mean(axis=-1, keepdims=True) + 0.15 * image + rng.uniform(0.05, 0.3)
    for _ in range(rng.integers(2, 5)):
        radii = rng.uniform(2.5, 5.5, 2)
        centre = rng.uniform(0, width), rng.uniform(0, height)
        image = blend(image, elliptic_blob(y, x, centre, radii), random_colour(rng))
    radii = rng.uniform(7, 11, 2)
    centre = rng.uniform(radii[0], width - radii[0]), rng.uniform(radii[1], height - radii[1])
    colour = hue_colour(
        45 * label + rng.uniform(-27, 27), rng.uniform(0.4, 1), rng.uniform(0.45, 1)
    )
    image = blend(image, elliptic_blob(y, x, centre, radii), colour)
    return image + rng.normal(0, 0.05, image.shape)


SHAPE_NAMES = ("circle", "square", "triangle", "cross", "ring")


def paint_shape(draw, kind: str, centre, radius, angle, factor) -> None:
    """One of SHAPE_NAMES, filled, at `factor` times the coordinates."""
    cx, cy, r = centre[0] * factor, centre[1] * factor, radius * factor
    if kind in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if kind == "ring":
            inner = r * 0.55
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif kind == "square":
        draw.polygon(regular_polygon((cx, cy), r * 1.2, 4, angle), fill=255)
    elif kind == "triangle":
        draw.polygon(regular_polygon((cx, cy), r * 1.3, 3, angle), fill=255)
    else:
        draw.polygon(plus_sign((cx, cy), r * 1.1, r * 0.7, angle), fill=255)


def draw_scattered_shape(rng, label, width, height):
    """A shape at a random scale, place and turn, darker or lighter than its mottled
    background, with clutter lines and noise. The frames are wide; the shape stays within
    the square that a centre crop keeps."""
    shade = rng.uniform(0.25, 0.75)
    step = rng.choice([-1, 1]) * rng.uniform(0.25, 0.5)
    background = np.broadcast_to(
        hue_colour(rng.uniform(0, 360), rng.uniform(0, 0.8), shade), (height, width, 3)
    )
    background = blend(background, 0.5 * smooth_noise(rng, width, height, 4), random_colour(rng))
    radius = rng.uniform(7, 12)
    margin = (width - height) / 2 + radius + 2
    centre = rng.uniform(margin, width - margin), rng.uniform(radius + 2, height - radius - 2)
    angle = rng.uniform(0, 2 * math.pi)
    clutter = [
        rng.uniform(0, width, 2).tolist() + rng.uniform(0, height, 2).tolist() for _ in range(2)
    ]

    def paint_clutter(draw, factor):
        for x0, x1, y0, y1 in clutter:
            draw.line(
                [(x0 * factor, y0 * factor), (x1 * factor, y1 * factor)], fill=255, width=factor
            )

    image = blend(background, supersampled(width, height, paint_clutter), random_colour(rng))
    mask = supersampled(
        width,
        height,
        lambda draw, factor: paint_shape(draw, SHAPE_NAMES[label], centre, radius, angle, factor),
    )
    colour = hue_colour(rng.uniform(0, 360), rng.uniform(0, 0.8), np.clip(shade + step, 0.05, 1))
    image = blend(image, mask, colour)
    return image + rng.normal(0, 0.06, image.shape)


def draw_photo_object(rng, label, width, height):
    """A photo of an object (one of SHAPE_NAMES, about a third to a half of the frame's
    height across), lighter or darker than its mottled, unevenly lit background, with
    clutter: a 32-pixel copy of the photo still shows it, blurred; larger copies show its
    outline sharper."""
    y, x = pixel_grid(width, height)
    shade = rng.uniform(0.25, 0.75)
    step = rng.choice([-1, 1]) * rng.uniform(0.25, 0.45)
    base = hue_colour(rng.uniform(0, 360), rng.uniform(0, 0.6), shade)
    background = blend(
        np.broadcast_to(base, (height, width, 3)),
        0.4 * smooth_noise(rng, width, height, 6),
        random_colour(rng),
    )
    light = 0.8 + 0.4 * (x / width * rng.uniform(-1, 1) + y / height * rng.uniform(-1, 1)) / 2
    radius = height * rng.uniform(0.15, 0.25)
    margin = (width - height) / 2 + 1.4 * radius
    centre = rng.uniform(margin, width - margin), rng.uniform(1.4 * radius, height - 1.4 * radius)
    angle = rng.uniform(0, 2 * math.pi)
    lines = [rng.uniform(0, 1, 4) * (width, width, height, height) for _ in range(3)]

    def paint_clutter(draw, factor):
        for x0, x1, y0, y1 in lines:
            draw.line(
                [(x0 * factor, y0 * factor), (x1 * factor, y1 * factor)],
                fill=255,
                width=max(1, round(factor * height / 120)),
            )

    image = blend(background, 0.6 * supersampled(width, height, paint_clutter), random_colour(rng))
    mask = supersampled(
        width,
        height,
        lambda draw, factor: paint_shape(draw, SHAPE_NAMES[label], centre, radius, angle, factor),
    )
    colour = hue_colour(rng.uniform(0, 360), rng.uniform(0, 0.8), np.clip(shade + step, 0.05, 1))
    image = blend(image, mask, colour) * light[..., None]
    return image + rng.normal(0, 0.04, image.shape)


ICON_HUES = {"red": 0, "yellow": 60, "green": 120, "blue": 240}
ICON_SHAPES = ("circle", "square", "triangle", "cross", "bar")


def draw_icon(rng, label, width, height):
    """Small icons: the class is a shape and its colour (5 x 4), at a random size and place."""
    shape, hue = ICON_SHAPES[label % 5], list(ICON_HUES.values())[label // 5]
    radius = rng.uniform(2.5, 5)
    centre = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    angle = rng.uniform(-0.3, 0.3)

    def paint(draw, factor):
        if shape == "bar":
            box = (
                centre[0] - radius,
                centre[1] - radius * 0.35,
                centre[0] + radius,
                centre[1] + radius * 0.35,
            )
            draw.rectangle(tuple(value * factor for value in box), fill=255)
        else:
            paint_shape(draw, shape, centre, radius, angle, factor)

    background = np.full((height, width, 3), rng.uniform(0.1, 0.9)) + rng.normal(0, 0.05, 3)
    colour = hue_colour(hue + rng.uniform(-25, 25), rng.uniform(0.4, 1), rng.uniform(0.4, 1))
    image = blend(background, supersampled(width, height, paint), colour)
    return image + rng.normal(0, 0.07, image.shape)


def draw_dot_or_dash(rng, label, width, height):
    """Tiny frames: a round dot or a short dash at any angle, faint, in noise."""
    y, x = pixel_grid(width, height)
    centre = rng.uniform(2.5, height - 2.5), rng.uniform(2.5, width - 2.5)
    if label == 0:
        sigma = rng.uniform(0.7, 1.2)
        spot = gaussian_spot(y, x, centre, sigma, sigma, 0.0)
    else:
        spot = gaussian_spot(
            y, x, centre, rng.uniform(1.4, 2.2), rng.uniform(0.5, 0.9), rng.uniform(0, math.pi)
        )
    return rng.uniform(0.2, 0.4) + rng.uniform(0.3, 0.7) * spot + rng.normal(0, 0.08, x.shape)


def scene_layer(rng, kind: int, width: int, height: int) -> np.ndarray:
    """The structure of one scene class as a mask in [0, 1]: a horizon with a sun, tree
    trunks, waves, or scattered flowers."""
    y, x = pixel_grid(width, height)
    if kind == 0:
        horizon = height * rng.uniform(0.4, 0.7) + rng.uniform(-0.15, 0.15) * (x - width / 2)
        sun = elliptic_blob(
            y, x, (rng.uniform(0, width), rng.uniform(0.1, 0.35) * height), (18, 18)
        )
        return np.maximum(np.clip(y - horizon, 0, 1), sun)
    if kind == 1:
        layer = np.zeros_like(x)
        for _ in range(rng.integers(4, 9)):
            left, trunk = rng.uniform(0, width), rng.uniform(6, 16)
            layer = np.maximum(
                layer, ((x > left) & (x < left + trunk + 0.1 * y)).astype(np.float32)
            )
        return layer
    if kind == 2:
        wobble = rng.uniform(3, 10) * np.sin(
            2 * math.pi * x / rng.uniform(40, 120) + rng.uniform(0, 6.3)
        )
        return (np.sin(2 * math.pi * (y + wobble) / rng.uniform(14, 30)) > 0.3).astype(np.float32)
    layer = np.zeros_like(x)
    for _ in range(rng.integers(15, 40)):
        centre, radius = (rng.uniform(0, width), rng.uniform(0, height)), rng.uniform(3, 8)
        layer = np.maximum(layer, elliptic_blob(y, x, centre, (radius, radius)))
    return layer


def draw_scene(rng, label, width, height):
    """Large photos of a scene: its main structure, with a fainter one of another class over
    it, in random colours (colour says nothing about the class)."""
    image = blend(
        np.broadcast_to(random_colour(rng), (height, width, 3)),
        smooth_noise(rng, width, height, 3),
        random_colour(rng),
    )
    other = (label + rng.integers(1, 4)) % 4
    strength = rng.uniform(0.5, 0.9)
    image = blend(
        image,
        strength * rng.uniform(0.2, 0.85) * scene_layer(rng, other, width, height),
        random_colour(rng),
    )
    image = blend(image, strength * scene_layer(rng, label, width, height), random_colour(rng))
    return image + rng.normal(0, 0.05, image.shape)


def segment_distance(y, x, start, end) -> np.ndarray:
    """Distance of each pixel from the segment start-end ((x, y) points)."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    along = np.clip(((x - start[0]) * dx + (y - start[1]) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - start[0] - along * dx, y - start[1] - along * dy)


def draw_defect(rng, label, width, height):
    """Inspection images of a grainy surface: fine, a faint scratch, or a faint spot."""
    y, x = pixel_grid(width, height)
    surface = 0.5 + 0.2 * (smooth_noise(rng, width, height, 5) - 0.5)
    surface = surface + rng.normal(0, rng.uniform(0.04, 0.09), x.shape)
    contrast = rng.choice([-1, 1]) * rng.uniform(0.05, 0.3)
    margin = 0.25 * width
    if label == 1:
        start = rng.uniform(margin, width - margin, 2)
        turn, length = rng.uniform(0, 2 * math.pi), rng.uniform(8, 20)
        end = start + length * np.array([math.cos(turn), math.sin(turn)])
        surface += contrast * np.exp(-0.5 * (segment_distance(y, x, start, end) / 0.7) ** 2)
    elif label == 2:
        centre = rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)
        sigma = rng.uniform(1.5, 3)
        surface += contrast * gaussian_spot(y, x, centre, sigma, sigma, 0.0)
    return surface

"""The demo world: flat shapes on flat backgrounds, their captions and ground-truth masks.

A scene is one or two objects (colour, shape, size, position) on a named background.
Everything is a pure function of the Scene value, and `sample_scene` draws scenes from a
numpy Generator, so a seed fixes an image exactly. Images are drawn with Pillow at 4x and
box-downsampled to 64x64 (anti-aliased edges); each object's mask is drawn the same way
and thresholded at one half.

Captions come from two templates and parse back to attributes:
    "a large red circle on the left, on a blue background"
    "a red circle on the left and a blue square on the right, on a white background"

About a tenth of the attribute combinations are held out of training (`is_held_out`), so
adherence can be measured on captions the model never saw.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
# Half the object's extent in pixels. Small shapes are kept large enough that the VAE
# (4x downsampling) keeps their corners; two-object scenes use a middle size, unnamed.
SIZES: dict[str, int] = {"small": 9, "large": 16}
PAIR_HALF_EXTENT = 11
POSITIONS: dict[str, tuple[int, int]] = {  # object centre (x, y) in pixels
    "left": (18, 32),
    "right": (46, 32),
    "top": (32, 18),
    "bottom": (32, 46),
    "center": (32, 32),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the middle",
}
PAIR_LAYOUTS = (("left", "right"), ("top", "bottom"))
JITTER = 2  # the centre moves by up to this many pixels
PAIR_JITTER = 1  # less in two-object scenes, which keeps the objects 4+ pixels apart
TWO_OBJECT_FRACTION = 0.3
HELD_OUT_MODULUS = 10  # one combination in ten is held out


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    position: str
    size: str | None = None  # None in two-object scenes (middle size, not named)
    dx: int = 0  # jitter of the centre, pixels
    dy: int = 0

    @property
    def half_extent(self) -> int:
        return SIZES[self.size] if self.size else PAIR_HALF_EXTENT

    @property
    def centre(self) -> tuple[int, int]:
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]

    @property
    def caption(self) -> str:
        return caption_of(self)


# --- sampling ---------------------------------------------------------------------------

def _sample_objects(rng: np.random.Generator, background: str,
                    two_object_fraction: float = TWO_OBJECT_FRACTION) -> tuple[SceneObject, ...]:
    colours = [c for c in COLOURS if c != background]
    jitter = lambda: int(rng.integers(-JITTER, JITTER + 1))  # noqa: E731
    if rng.random() >= two_object_fraction:
        return (SceneObject(colour=str(rng.choice(colours)), shape=str(rng.choice(SHAPES)),
                            position=str(rng.choice(list(POSITIONS))),
                            size=str(rng.choice(list(SIZES))), dx=jitter(), dy=jitter()),)
    layout = PAIR_LAYOUTS[int(rng.integers(len(PAIR_LAYOUTS)))]
    c1, c2 = rng.choice(colours, size=2, replace=False)
    pair_jitter = lambda: int(rng.integers(-PAIR_JITTER, PAIR_JITTER + 1))  # noqa: E731
    objects = [SceneObject(colour=str(c), shape=str(rng.choice(SHAPES)), position=p,
                           dx=pair_jitter(), dy=pair_jitter()) for c, p in zip((c1, c2), layout)]
    if rng.random() < 0.5:  # either object may be named first
        objects.reverse()
    return tuple(objects)


def sample_scene(rng: np.random.Generator, split: str = "train",
                 two_object_fraction: float = TWO_OBJECT_FRACTION) -> Scene:
    """Draw a scene; split "train" never returns held-out combinations, "test" only those.
    two_object_fraction: the share of scenes with two objects (the rest have one)."""
    if split not in ("train", "test", "any"):
        raise ValueError(f"split must be train, test or any, not {split!r}")
    while True:
        background = str(rng.choice(list(COLOURS)))
        scene = Scene(background=background,
                      objects=_sample_objects(rng, background, two_object_fraction))
        if split == "any" or is_held_out(scene) == (split == "test"):
            return scene


def is_held_out(scene: Scene) -> bool:
    """True for the tenth of attribute combinations kept out of training (jitter ignored)."""
    digest = hashlib.md5(caption_of(scene).encode()).digest()
    return int.from_bytes(digest[:4], "little") % HELD_OUT_MODULUS == 0


# --- captions ---------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: SceneObject) -> str:
    words = f"{obj.size} {obj.colour}" if obj.size else obj.colour
    return f"{_article(words)} {words} {obj.shape} {POSITION_PHRASES[obj.position]}"


def caption_of(scene: Scene) -> str:
    objects = " and ".join(_object_phrase(o) for o in scene.objects)
    return f"{objects}, on {_article(scene.background)} {scene.background} background"


_WORD = lambda names: "|".join(names)  # noqa: E731
_OBJECT_RE = (rf"an? (?:(?P<size{{i}}>{_WORD(SIZES)}) )?(?P<colour{{i}}>{_WORD(COLOURS)}) "
              rf"(?P<shape{{i}}>{_WORD(SHAPES)}) "
              rf"(?P<position{{i}}>{_WORD(POSITION_PHRASES.values())})")
_CAPTION_RE = re.compile(
    rf"^{_OBJECT_RE.format(i=0)}(?: and {_OBJECT_RE.format(i=1)})?, "
    rf"on an? (?P<background>{_WORD(COLOURS)}) background$")
_PHRASE_TO_POSITION = {v: k for k, v in POSITION_PHRASES.items()}


def parse_caption(caption: str) -> Scene:
    """The inverse of caption_of (jitter is not in the caption, so it comes back as 0)."""
    match = _CAPTION_RE.match(caption.strip())
    if not match:
        raise ValueError(f"not a demo-world caption: {caption!r}")
    g = match.groupdict()
    objects = tuple(
        SceneObject(colour=g[f"colour{i}"], shape=g[f"shape{i}"], size=g[f"size{i}"],
                    position=_PHRASE_TO_POSITION[g[f"position{i}"]])
        for i in (0, 1) if g[f"shape{i}"])
    return Scene(background=g["background"], objects=objects)


# --- rendering --------------------------------------------------------------------------

def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a shape of half-extent r centred at (cx, cy), y pointing down."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # apex up, fills its bounding square
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":  # five points, fat arms (inner radius half the outer)
        cy += 0.095 * r  # centre the star's bounding box (its lower points reach 0.81 r)
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.5 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "circle":
        n = 64
        return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
                for k in range(n)]
    raise ValueError(f"unknown shape {shape!r}")


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    s = SUPERSAMPLE
    cx, cy = obj.centre
    r = obj.half_extent
    if obj.shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s - 1, (cy + r) * s - 1], fill=fill)
    else:
        draw.polygon([(x * s, y * s) for x, y in shape_polygon(obj.shape, cx, cy, r)], fill=fill)


def render(scene: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 RGB image."""
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, COLOURS[obj.colour])
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))  # (64, 64, 3)


def masks(scene: Scene) -> np.ndarray:
    """One boolean mask per object, (objects, 64, 64): pixels at least half covered."""
    big = IMAGE_SIZE * SUPERSAMPLE
    out = []
    for obj in scene.objects:
        layer = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(layer), obj, 255)
        out.append(np.asarray(layer.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)) >= 128)
    return np.stack(out)  # (objects, 64, 64)


def sample_batch(rng: np.random.Generator, n: int, split: str = "train",
                 two_object_fraction: float = TWO_OBJECT_FRACTION
                 ) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n scenes rendered: images (n, 64, 64, 3) uint8, captions, scenes."""
    scenes = [sample_scene(rng, split, two_object_fraction) for _ in range(n)]
    images = np.stack([render(s) for s in scenes])  # (n, 64, 64, 3)
    return images, [s.caption for s in scenes], scenes


def caption_corpus() -> list[str]:
    """Every caption the world can produce with one object, and the two-object ones in
    one layout order: enough text to learn every word and its merges."""
    out = []
    for bg in COLOURS:
        colours = [c for c in COLOURS if c != bg]
        for c in colours:
            for shape in SHAPES:
                for size in SIZES:
                    for pos in POSITIONS:
                        out.append(caption_of(Scene(bg, (SceneObject(c, shape, pos, size),))))
        for c1 in colours:
            for c2 in colours:
                if c1 != c2:
                    for s1 in SHAPES:
                        for layout in PAIR_LAYOUTS:
                            objs = (SceneObject(c1, s1, layout[0]), SceneObject(c2, "circle", layout[1]))
                            out.append(caption_of(Scene(bg, objs)))
    return out

"""Read a demo-world scene's attributes back from pixels, to measure prompt adherence.

The judge knows the renderer's palette and layout, nothing about the model:
- background: the median colour of the image border, snapped to the nearest named colour;
- objects: connected regions of pixels far from the background colour (largest first);
  a region made of two differently coloured parts side by side (two objects drawn
  touching) is split between them;
- object colour: the median colour inside the region (edges eroded), nearest named colour;
- size: the region's extent (the larger side of its bounding box) against a threshold
  half-way between the small and large extents;
- position: the nearest of the five anchor points to the region's bounding-box centre;
- shape: a k-nearest-neighbour classifier on mask geometry (fill of the bounding box,
  fill of the convex hull, widths of the mask at five heights and heights at five
  columns, each relative to the box), trained on rendered scenes and, after `calibrate`,
  also on VAE reconstructions of other scenes (the decoder rounds corners).

`judge_accuracy` measures the judge itself, on renders or on any images of known scenes
(for example VAE reconstructions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from precompute.demo import world

_PALETTE_NAMES = list(world.COLOURS)
_PALETTE = np.array([world.COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)  # (8, 3)
OBJECT_DISTANCE = 40.0  # RGB distance from the background that counts as object
MIN_AREA = 24  # pixels; smaller regions are noise
SIZE_THRESHOLD = (2 * world.SIZES["small"] + 2 * world.SIZES["large"]) / 2  # extent, px


def nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


def colour_margin(rgb: np.ndarray) -> float:
    """How far rgb is from being read as another colour: its distance to the second-nearest
    palette colour minus that to the nearest (RGB units)."""
    d = np.sort(np.sqrt(((_PALETTE - rgb) ** 2).sum(-1)))
    return float(d[1] - d[0])


def median_colour(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An object's colour: the median pixel over its mask eroded once (edges blend with the
    background), or over the whole mask when fewer than 4 pixels would remain."""
    core = ndimage.binary_erosion(mask, iterations=1)
    return np.median(img[core if core.sum() >= 4 else mask], 0)


@dataclass
class ReadObject:
    colour: str
    shape: str
    size: str
    position: str
    mask: np.ndarray  # (64, 64) bool


@dataclass
class Reading:
    background: str
    objects: list[ReadObject]  # largest first


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Geometry of one region, invariant to its size and position: (13,)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    fill = crop.mean()
    hull_fill = fill
    if len(ys) >= 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = ConvexHull(np.stack([xs, ys], 1).astype(float))
            hull_fill = len(ys) / max(hull.volume + hull.area / 2 + 1, 1.0)
        except QhullError:
            pass
    fractions = (0.1, 0.3, 0.5, 0.7, 0.9)
    rows = [crop[min(int(f * h), h - 1)].mean() for f in fractions]
    cols = [crop[:, min(int(f * w), w - 1)].mean() for f in fractions]
    return np.array([fill, hull_fill, w / h, *rows, *cols], dtype=np.float32)


class ShapeClassifier:
    """k-nearest neighbours on shape_features, fitted on rendered masks."""

    def __init__(self, n_scenes: int = 1200, k: int = 7, seed: int = 1234):
        rng = np.random.default_rng(seed)
        feats, labels = [], []
        for _ in range(n_scenes):
            scene = world.sample_scene(rng, split="any")
            for obj, mask in zip(scene.objects, world.masks(scene)):
                feats.append(shape_features(mask))
                labels.append(world.SHAPES.index(obj.shape))
        self.x = np.stack(feats)  # (N, 13)
        self.y = np.array(labels)
        self.scale = self.x.std(0) + 1e-3
        self.k = k

    def add_examples(self, images: np.ndarray, scenes: list[world.Scene]) -> int:
        """Add the regions read from images of known one-object scenes (e.g. VAE
        reconstructions, whose corners are rounder than the renders'); returns how many."""
        added = 0
        for image, scene in zip(images, scenes):
            reading = read_scene(image, max_objects=1)
            if len(scene.objects) == 1 and reading.objects:
                self.x = np.concatenate([self.x, shape_features(reading.objects[0].mask)[None]])
                self.y = np.append(self.y, world.SHAPES.index(scene.objects[0].shape))
                added += 1
        return added

    def predict(self, mask: np.ndarray) -> str:
        d = (((self.x - shape_features(mask)) / self.scale) ** 2).sum(-1)
        votes = np.bincount(self.y[np.argsort(d)[:self.k]], minlength=len(world.SHAPES))
        return world.SHAPES[int(np.argmax(votes))]


_CLASSIFIER: list[ShapeClassifier] = []


def shape_classifier() -> ShapeClassifier:
    if not _CLASSIFIER:  # fitted once per process (about a second)
        _CLASSIFIER.append(ShapeClassifier())
    return _CLASSIFIER[0]


def _largest_part(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    areas = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == int(np.argmax(areas)) + 1


def split_by_colour(img: np.ndarray, mask: np.ndarray, background: str) -> list[np.ndarray]:
    """[mask], or two masks when the region is two touching objects of different colours:
    its pixels fall mainly into two named colours (each at least MIN_AREA pixels and a
    fifth of the region), and the two parts sit side by side (their centres are at least
    0.4 of the region's extent apart), unlike one object whose edge or centre drifts
    towards a neighbouring hue."""
    names = [n for n in _PALETTE_NAMES if n != background]
    palette = np.array([world.COLOURS[n] for n in names], dtype=np.float32)
    pixels = img[mask]  # (P, 3)
    nearest = np.argmin(((pixels[:, None] - palette[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(names))
    a, b = np.argsort(counts)[::-1][:2]
    if counts[b] < max(MIN_AREA, 0.2 * len(pixels)):
        return [mask]
    d = ((img - palette[a]) ** 2).sum(-1) - ((img - palette[b]) ** 2).sum(-1)  # < 0: nearer a
    raw = [_largest_part(mask & side) for side in (d < 0, d >= 0)]
    # fill each part's holes, but not with the other part (a rim of edge pixels nearer
    # one colour may ring the other object)
    parts = [ndimage.binary_fill_holes(raw[i]) & ~raw[1 - i] for i in (0, 1)]
    if min(p.sum() for p in parts) < MIN_AREA:
        return [mask]
    ys, xs = np.nonzero(mask)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    centres = [np.argwhere(p).mean(0) for p in parts]
    if np.linalg.norm(centres[0] - centres[1]) < 0.4 * extent:
        return [mask]
    return parts


def read_scene(image: np.ndarray, max_objects: int = 2) -> Reading:
    """image: (64, 64, 3) uint8. Returns the background and up to max_objects objects."""
    img = image.astype(np.float32)
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    background = nearest_colour(np.median(border, 0))
    bg_rgb = np.array(world.COLOURS[background], dtype=np.float32)
    foreground = np.sqrt(((img - bg_rgb) ** 2).sum(-1)) > OBJECT_DISTANCE  # (64, 64)
    labels, n = ndimage.label(foreground)
    areas = ndimage.sum(foreground, labels, index=range(1, n + 1))
    regions = []
    for index in np.argsort(areas)[::-1][:max_objects]:
        if areas[index] < MIN_AREA:
            break
        regions += split_by_colour(img, ndimage.binary_fill_holes(labels == index + 1), background)
    objects = []
    for mask in sorted(regions, key=lambda m: -m.sum())[:max_objects]:
        ys, xs = np.nonzero(mask)
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        centre = np.array([(xs.max() + xs.min()) / 2 + 0.5, (ys.max() + ys.min()) / 2 + 0.5])
        anchors = np.array(list(world.POSITIONS.values()), dtype=np.float32)
        position = list(world.POSITIONS)[int(np.argmin(((anchors - centre) ** 2).sum(-1)))]
        objects.append(ReadObject(
            colour=nearest_colour(median_colour(img, mask)), shape=shape_classifier().predict(mask),
            size="large" if extent > SIZE_THRESHOLD else "small", position=position, mask=mask))
    return Reading(background=background, objects=objects)


ATTRIBUTES = ("background", "colour", "shape", "size", "position")


def score(reading: Reading, scene: world.Scene) -> dict[str, float]:
    """Per-attribute hits (1.0 or 0.0) of one reading against the scene its caption names.

    One-object scenes: the largest region is the object. Two-object scenes: each named
    object is matched to the read region nearest its anchor; size is not named there.
    """
    hits = {"background": float(reading.background == scene.background)}
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        read = reading.objects[0] if reading.objects else None
        for attr in ("colour", "shape", "size", "position"):
            hits[attr] = float(read is not None and getattr(read, attr) == getattr(obj, attr))
        return hits
    per_attr: dict[str, list[float]] = {"colour": [], "shape": [], "position": []}
    for obj in scene.objects:
        anchor = np.array(world.POSITIONS[obj.position], dtype=np.float32)
        candidates = [r for r in reading.objects if r.position == obj.position]
        read = candidates[0] if candidates else None
        if read is None and reading.objects:  # nearest region by its mask's centroid
            dist = [np.sum((np.argwhere(r.mask)[:, ::-1].mean(0) - anchor) ** 2)
                    for r in reading.objects]
            read = reading.objects[int(np.argmin(dist))]
        for attr in per_attr:
            per_attr[attr].append(float(read is not None and getattr(read, attr) == getattr(obj, attr)))
    hits.update({k: float(np.mean(v)) for k, v in per_attr.items()})
    return hits


def adherence(images: np.ndarray, scenes: list[world.Scene]) -> dict[str, float]:
    """Mean per-attribute hit rate over images (N, 64, 64, 3) of the given scenes."""
    rows = [score(read_scene(img), s) for img, s in zip(images, scenes)]
    return {a: float(np.mean([r[a] for r in rows if a in r])) for a in ATTRIBUTES
            if any(a in r for r in rows)}


def calibrate(transform, n: int = 600, seed: int = 99) -> int:
    """Teach the shape classifier what shapes look like after transform (images -> images,
    e.g. a VAE round trip), from n training-split scenes; judge_accuracy uses other scenes."""
    images, _, scenes = world.sample_batch(np.random.default_rng(seed), n, split="train")
    return shape_classifier().add_examples(transform(images), scenes)


def judge_accuracy(n: int = 200, seed: int = 7, transform=None) -> dict[str, float]:
    """The judge's accuracy on n held-out renders (one- and two-object scenes mixed),
    optionally passed through transform (images (N, 64, 64, 3) -> same), e.g. a VAE."""
    images, _, scenes = world.sample_batch(np.random.default_rng(seed), n, split="test")
    if transform is not None:
        images = transform(images)
    return adherence(images, scenes)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """How well scores rank the True labels above the False ones (0.5 = chance)."""
    from scipy.stats import rankdata

    pos, neg = labels.sum(), (~labels).sum()
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))

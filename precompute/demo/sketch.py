"""Sketches of the shapes world: where the objects go, drawn roughly, never their colour.

The control images of the demo ControlNet (controlnet_train.py). Per object, a polygon
around its ground-truth mask (world.masks): the mask's radial profile from its centroid,
smoothed over 37-97 degrees (so a star's points and a square's corners round off and the
exact shape is not given away), wobbled by two low-frequency waves, scaled by 0.92-1.08 and
moved by up to a pixel; drawn as an outline, a filled blob or a hatched scribble, in one
grey level from 150 to 255, on black, at 4x and box-downsampled to 64x64 like the world.
A pure function of the objects' geometry and the numpy Generator passed in: a seed fixes a
sketch, and the colours of the scene never enter it (R = G = B).

`caption_without_positions` is the caption with the position phrases left out, for the
samples in which the sketch alone must say where.

From the command line, a control image for the demo ControlNet from a caption of the world
(its position words say where the sketch goes; the colours are ignored):

    python -m precompute.demo.sketch "a large red circle on the left, on a blue background" \
        --out sketch.png [--seed 0] [--kind outline|filled|hatched]
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from precompute.demo import world

SKETCH_KINDS = ("outline", "filled", "hatched")
RAYS = 48  # angles of an object's radial profile


def radial_profile(mask: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The mask's extent from `centre` along RAYS angles, in pixels: (RAYS,). Every shape of
    the world is star-shaped around its centroid, so the first pixel outside ends the ray."""
    angles = 2 * np.pi * np.arange(RAYS) / RAYS
    radii = np.arange(0.0, 40.0, 0.25)
    xs = centre[0] + np.cos(angles)[:, None] * radii  # (RAYS, R)
    ys = centre[1] + np.sin(angles)[:, None] * radii
    inside = np.zeros(xs.shape, bool)
    ok = (xs >= 0) & (xs < mask.shape[1]) & (ys >= 0) & (ys < mask.shape[0])
    inside[ok] = mask[ys[ok].astype(int), xs[ok].astype(int)]
    first_out = np.argmin(inside, axis=1)  # first sample outside (0 if none inside)
    return radii[first_out]


def rough_outline(mask: np.ndarray, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A hand-drawn-looking polygon around one object's mask: its radial profile smoothed
    over 40-100 degrees (corners and points rounded off), wobbled by two low-frequency
    waves of up to 7%, scaled by 0.92-1.08 and moved by up to a pixel."""
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    profile = radial_profile(mask, centre)
    width = int(rng.integers(5, 14))  # rays averaged: 37 to 97 degrees
    kernel = np.ones(width) / width
    padded = np.concatenate([profile[-width:], profile, profile[:width]])
    smoothed = np.convolve(padded, kernel, mode="same")[width:-width]  # (RAYS,)
    angles = 2 * np.pi * np.arange(RAYS) / RAYS
    wobble = 1 + sum(rng.uniform(0, 0.07) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                     for k in (2, 3))
    r = smoothed * wobble * rng.uniform(0.92, 1.08)
    cx, cy = centre + rng.uniform(-1, 1, size=2)
    return [(cx + ri * math.cos(a), cy + ri * math.sin(a)) for ri, a in zip(r, angles)]


def _layer(polygon, kind: str, grey: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One object's stroke layer and its filled region, drawn at SUPERSAMPLE x."""
    s, big = world.SUPERSAMPLE, world.IMAGE_SIZE * world.SUPERSAMPLE
    points = [(x * s, y * s) for x, y in polygon]
    region = Image.new("L", (big, big), 0)
    ImageDraw.Draw(region).polygon(points, fill=255)
    strokes = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(strokes)
    if kind == "filled":
        draw.polygon(points, fill=grey)
    else:
        draw.line(points + points[:1], fill=grey, width=int(rng.integers(4, 9)), joint="curve")
    if kind == "hatched":  # parallel strokes at a random angle, 3-4 px apart, inside
        hatch = Image.new("L", (big, big), 0)
        angle, gap = rng.uniform(0, math.pi), rng.uniform(3, 4.5) * s
        dx, dy = math.cos(angle) * 2 * big, math.sin(angle) * 2 * big
        for k in np.arange(-big, big, gap):
            ox, oy = big / 2 - math.sin(angle) * k, big / 2 + math.cos(angle) * k
            ImageDraw.Draw(hatch).line([(ox - dx, oy - dy), (ox + dx, oy + dy)], fill=grey, width=s)
        strokes = Image.fromarray(np.maximum(np.asarray(strokes),
                                             np.asarray(hatch) * (np.asarray(region) > 0)))
    return strokes, region


def draw_sketch(scene: world.Scene, rng: np.random.Generator,
                kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The control image of a scene and the region it marks per object:
    ((64, 64, 3) uint8, grey or white on black, R = G = B; (objects, 64, 64) bool).
    A function of the objects' masks and rng alone: colours never enter it. `kind` fixes
    how every object is drawn (one of SKETCH_KINDS; None: drawn at random per object); the
    first object's outline is the same either way."""
    size, big = world.IMAGE_SIZE, world.IMAGE_SIZE * world.SUPERSAMPLE
    canvas, regions = np.zeros((big, big), np.uint8), []
    for mask in world.masks(scene):
        drawn = SKETCH_KINDS[int(rng.integers(len(SKETCH_KINDS)))]
        kind_of_this = kind or drawn
        grey = int(rng.integers(150, 256))
        strokes, region = _layer(rough_outline(mask, rng), kind_of_this, grey, rng)
        canvas = np.maximum(canvas, np.asarray(strokes))
        regions.append(np.asarray(region.resize((size, size), Image.BOX)) >= 128)
    small = np.asarray(Image.fromarray(canvas).resize((size, size), Image.BOX))  # (64, 64)
    return np.repeat(small[..., None], 3, axis=2), np.stack(regions)


def caption_without_positions(scene: world.Scene) -> str:
    """The scene's caption with its position phrases left out:
    "a large red circle, on a blue background"."""
    phrases = []
    for obj in scene.objects:
        words = f"{obj.size} {obj.colour}" if obj.size else obj.colour
        phrases.append(f"{'an' if words[0] in 'aeiou' else 'a'} {words} {obj.shape}")
    bg = scene.background
    return f"{' and '.join(phrases)}, on {'an' if bg[0] in 'aeiou' else 'a'} {bg} background"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m precompute.demo.sketch",
        description="Draw the demo ControlNet's control image for a caption of the shapes "
                    "world: where its objects go, roughly, in grey on black (never their colour).")
    p.add_argument("caption", help='a caption of the world, with position words: "a large red '
                                   'circle on the left, on a blue background"')
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--seed", type=int, default=0, help="the sketch's wobble and stroke (default 0)")
    p.add_argument("--kind", choices=SKETCH_KINDS, default=None,
                   help="how the objects are drawn (default: at random per object)")
    args = p.parse_args(argv)
    try:
        scene = world.parse_caption(args.caption)
    except ValueError as e:
        p.error(f"{e}; a caption of the shapes world reads e.g. \"a small yellow star at the top, "
                "on a black background\"")
    image, _ = draw_sketch(scene, np.random.default_rng(args.seed), kind=args.kind)
    Image.fromarray(image).save(args.out)
    print(f"wrote {args.out}: {len(scene.objects)} object(s), 64x64")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

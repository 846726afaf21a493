"""Validates a ControlNet run's record (run.json `controlnet`, its `controlnet_*` maps and
its `control_image`; docs/bundle-format.md, "ControlNet"). Optional: a run without
`controlnet` has none of them. Part of backend/validate_run.py.
"""

from __future__ import annotations

import re

from backend.validator import describe, is_int, is_name, is_number, is_numbers, is_side_pair

CONTROL_ARRAY = re.compile(r"controlnet_(res[1-9][0-9]{0,4}|mid)")  # (T, 1, h, w) maps
CONTROL_IMAGE = "control_image"  # one frame: the image the ControlNet read
MAX_CONDITIONING_SCALE = 10


def expected_shape(name: str, steps: int) -> list[int]:
    """A map's leading axes: T steps, one channel, and the height its name gives."""
    if name == "controlnet_mid":
        return [steps, 1]
    return [steps, 1, int(name.removeprefix("controlnet_res"))]


def check_controlnet(run) -> None:
    """run: backend/validate_run.py's _Run (its manifest, steps, latent, problems)."""
    m = run.m
    arrays = m.get("arrays") if isinstance(m.get("arrays"), dict) else {}
    images = m.get("images") if isinstance(m.get("images"), dict) else {}
    maps_there = sorted(n for n in arrays if CONTROL_ARRAY.fullmatch(n))
    if "controlnet" not in m:
        for name in maps_there + ([CONTROL_IMAGE] if CONTROL_IMAGE in images else []):
            run.add("controlnet", f"is missing, though the run has {name} (a ControlNet run's "
                    "record)")
        return
    cn = m["controlnet"]
    if not isinstance(cn, dict):
        run.add("controlnet", f"must be an object, is {describe(cn)}")
        return
    p = "controlnet."
    run.need(cn, "model", lambda v: isinstance(v, str) and v.strip(), "the ControlNet's id", p)
    run.need(cn, "control_id", is_name, "a name (letters, digits, - and _)", p)
    run.need(cn, "uncontrolled_run_id", is_name, "a run id", p)
    run.need(cn, "conditioning_scale", lambda v: is_number(v, 0, MAX_CONDITIONING_SCALE)
             and v > 0, f"a number above 0, at most {MAX_CONDITIONING_SCALE}", p)
    start = run.need(cn, "control_guidance_start", lambda v: is_number(v, 0, 1),
                     "a number from 0 to 1", p)
    end = run.need(cn, "control_guidance_end", lambda v: is_number(v, 0, 1),
                   "a number from 0 to 1", p)
    if start is not None and end is not None and start >= end:
        run.add(p + "control_guidance_end", f"is {end}, not above control_guidance_start "
                f"{start}")
    if is_number(run.g) and run.g == 0:
        run.add("guidance_scale", "is 0; a ControlNet run has a guidance scale above 0")
    _check_blocks_and_norms(run, cn, p)
    maps = run.need(cn, "maps", lambda v: isinstance(v, list) and len(set(v)) == len(v) and all(
        isinstance(x, str) and CONTROL_ARRAY.fullmatch(x) for x in v),
        "an array of distinct map names (controlnet_res<h>, controlnet_mid)", p) or []
    for name in maps:
        if name not in arrays:
            run.add(f"arrays.{name}", "is missing, though controlnet.maps names it")
    for name in maps_there:
        if name not in maps:
            run.add(f"arrays.{name}", "is not in controlnet.maps")
    if CONTROL_IMAGE not in images:
        run.add(f"images.{CONTROL_IMAGE}", "is missing (the image the ControlNet read)")


def _check_blocks_and_norms(run, cn: dict, p: str) -> None:
    hw = run.latent[1:]
    blocks = run.need(cn, "blocks", lambda v: isinstance(v, list) and v and all(
        isinstance(b, dict) and isinstance(b.get("name"), str)
        and is_side_pair(b.get("resolution"), hw) and is_int(b.get("channels"), 1, 1 << 16)
        for b in v), f"an array of {{name, resolution [h, w] at most {hw}, channels}}", p)
    if blocks is None:
        return
    run.need(cn, "residual_norms", lambda v: isinstance(v, list) and len(v) == run.steps
             and all(is_numbers(row, len(blocks)) and min(row) >= 0 for row in v),
             f"{run.steps} arrays (one per step) of {len(blocks)} numbers >= 0 (one per block)", p)

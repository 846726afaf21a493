"""Validates the bundle's optional few-step comparison, `fewstep/index.json` and its
sprites (docs/bundle-format.md, "Few-step comparison"; backend/fewstep_examples.py owns
the names). Every problem names its file and field; a section with errors is left out
by serve --skip-invalid (its problems carry section "fewstep"). Part of
backend/validator.py.

For a path of T UNet calls: `time` and `xy` hold T+1 points (the noise first, the result
last), `pred_xy` T, the sprite T+1 frames of width x height side by side; every path of
an example starts at the same point (the same noise).
"""

from __future__ import annotations

from backend.fewstep_examples import FILES, FORMAT, INDEX, MIME, SECTION, VERSION

KINDS = ("teacher", "rectified_flow", "one_step", "student")
MAX_MODELS, MAX_EXAMPLES, MAX_PATHS = 16, 256, 32
MAX_STEPS = 1000
MAX_SIDE = 1024                 # a frame's width or height in pixels
MAX_GUIDANCE = 100
FORMATS = {".webp": "WEBP", ".png": "PNG"}  # suffix -> PIL's name of the format


def present(c) -> bool:
    """Whether the bundle has the section: fewstep/ holding anything but the builder's
    .tmp (an interrupted build's temporary runs are no section)."""
    folder = c.root / SECTION
    if folder.is_symlink():
        return True
    try:
        return folder.is_dir() and any(p.name != ".tmp" for p in folder.iterdir())
    except OSError:
        return True  # c.json names why it cannot be read


def check_section(c, index: dict) -> dict | None:
    """fewstep/index.json checked (c: backend.validator.Checker), or None when the bundle
    has no section or it has errors."""
    from backend.validator import describe

    if not present(c):
        return None
    errors = c.errors()
    doc = c.json(INDEX)
    if doc is None:
        return None
    if doc.get("format") != FORMAT:
        c.add(INDEX, "format", f"must be {FORMAT!r}, is {describe(doc.get('format'))}")
    if doc.get("format_version") != VERSION:
        c.add(INDEX, "format_version", f"is {describe(doc.get('format_version'))}; this "
              f"noisepath reads version {VERSION}")
    models = _check_models(c, doc)
    examples = c.need(doc, INDEX, "examples", lambda v: isinstance(v, list) and 0 < len(v)
                      <= MAX_EXAMPLES, f"an array of 1 to {MAX_EXAMPLES} examples") or []
    seen, files = set(), set()
    for i, example in enumerate(examples):
        _check_example(c, example, f"examples[{i}].", index, models, seen, files)
    return doc if c.errors() == errors else None


def _check_models(c, doc: dict) -> set[str]:
    from backend.validator import is_name, is_number, is_sha256

    models = c.need(doc, INDEX, "models", lambda v: isinstance(v, list) and 0 < len(v)
                    <= MAX_MODELS, f"an array of 1 to {MAX_MODELS} models") or []
    ids: set[str] = set()
    for i, m in enumerate(models):
        p = f"models[{i}]."
        if not isinstance(m, dict):
            c.add(INDEX, p[:-1], "must be an object")
            continue
        mid = c.need(m, INDEX, "id", is_name, "a name (letters, digits, - and _)", p)
        if mid in ids:
            c.add(INDEX, p + "id", f"{mid!r} is used by another model")
        ids.add(mid)
        c.need(m, INDEX, "kind", lambda v: v in KINDS, f"one of {', '.join(KINDS)}", p)
        for key in ("label", "model", "scheduler", "prediction_type"):
            c.need(m, INDEX, key, lambda v: isinstance(v, str) and 0 < len(v) <= 500,
                   "a non-empty string", p)
        c.need(m, INDEX, "guidance_scale", lambda v: is_number(v, 0, MAX_GUIDANCE),
               f"a number from 0 to {MAX_GUIDANCE}", p)
        if "model_sha256" in m:
            c.need(m, INDEX, "model_sha256", is_sha256, "a SHA-256 (64 hex digits)", p)
    ids.discard(None)
    return ids


def _check_example(c, ex, p: str, index: dict, models: set[str], seen: set, files: set) -> None:
    from backend.validator import is_int, is_name, is_number, is_sha256, shown

    if not isinstance(ex, dict):
        c.add(INDEX, p[:-1], "must be an object")
        return
    eid = c.need(ex, INDEX, "id", is_name, "a name (letters, digits, - and _)", p)
    if eid is not None and eid in seen:
        c.add(INDEX, p + "id", f"{eid!r} is used by another example")
    seen.add(eid)
    c.need(ex, INDEX, "prompt", lambda v: isinstance(v, str) and len(v) <= 2000,
           "a string", p)
    c.need(ex, INDEX, "prompt_id", is_name, "a prompt id (a name)", p)
    c.need(ex, INDEX, "seed", lambda v: is_int(v, 0, 2**63 - 1), "a seed (an integer >= 0)", p)
    c.need(ex, INDEX, "noise_sha256", is_sha256, "a SHA-256 (64 hex digits)", p)
    rid = ex.get("run_id")
    if rid is not None and not (is_name(rid) and rid in index["runs"]):
        c.add(INDEX, p + "run_id", f"names no run of the bundle ({shown(str(rid))}); null "
              "when the bundle has none")
    c.need(ex, INDEX, "projection", lambda v: isinstance(v, dict) and v.get("method") == "pca"
           and isinstance(v.get("explained"), list) and len(v["explained"]) == 2
           and all(is_number(x, 0, 1) for x in v["explained"]),
           'an object: method "pca", explained (2 numbers from 0 to 1)', p)
    paths = c.need(ex, INDEX, "paths", lambda v: isinstance(v, list) and 0 < len(v) <= MAX_PATHS,
                   f"an array of 1 to {MAX_PATHS} paths", p) or []
    ids: set[str] = set()
    starts = []
    for j, path in enumerate(paths):
        start = _check_path(c, path, f"{p}paths[{j}].", models, ids, files)
        if start is not None:
            starts.append((j, start))
    for j, start in starts[1:]:
        if start != starts[0][1]:
            c.add(INDEX, f"{p}paths[{j}].xy[0]", f"is {start}, paths[{starts[0][0]}].xy[0] is "
                  f"{starts[0][1]}: every path of an example starts from its one noise")


def _check_path(c, path, p: str, models: set[str], ids: set, files: set) -> list | None:
    """One path's fields; its first point when its points can be read, else None."""
    from backend.validator import is_int, is_name, is_number

    if not isinstance(path, dict):
        c.add(INDEX, p[:-1], "must be an object")
        return None
    model = c.need(path, INDEX, "model", lambda v: v in models,
                   f"a model id of models ({', '.join(sorted(models)) or 'none valid'})", p)
    steps = c.need(path, INDEX, "num_inference_steps", lambda v: is_int(v, 1, MAX_STEPS),
                   f"an integer from 1 to {MAX_STEPS}", p)
    pid = c.need(path, INDEX, "id", is_name, "a name (letters, digits, - and _)", p)
    if pid is not None and model is not None and steps is not None and pid != f"{model}-{steps}":
        c.add(INDEX, p + "id", f"is {pid!r}, not {model}-{steps} (<model>-<num_inference_steps>)")
    if pid in ids:
        c.add(INDEX, p + "id", f"{pid!r} is used by another path of the example")
    ids.add(pid)
    c.need(path, INDEX, "straightness", lambda v: is_number(v, 0), "a number >= 0", p)
    c.need(path, INDEX, "seconds", lambda v: is_number(v, 0), "a number >= 0", p)

    def points(v, n=None):
        return (isinstance(v, list) and (n is None or len(v) == n) and 0 < len(v) <= MAX_STEPS + 1
                and all(isinstance(q, list) and len(q) == 2 and all(is_number(x) for x in q)
                        for q in v))
    pred = c.need(path, INDEX, "pred_xy", points, f"an array of [x, y] points (one per UNet "
                  f"call, at least num_inference_steps {steps})", p)
    if pred is not None and steps is not None and len(pred) < steps:
        c.add(INDEX, p + "pred_xy", f"has {len(pred)} points, fewer than num_inference_steps "
              f"{steps}")
    if pred is None:
        return None
    n = len(pred) + 1  # T+1: the noise, then the latent after each call
    c.need(path, INDEX, "time", lambda v: isinstance(v, list) and len(v) == n and all(
        is_number(x, 0, 1) for x in v), f"{n} numbers from 0 to 1 (T+1, T = len(pred_xy))", p)
    time = path.get("time")
    if isinstance(time, list) and len(time) == n and all(is_number(x, 0, 1) for x in time):
        if any(b > a for a, b in zip(time, time[1:])) or time[-1] != 0:
            c.add(INDEX, p + "time", "must fall from the noise to 0 (the result)")
    xy = c.need(path, INDEX, "xy", lambda v: points(v, n), f"{n} [x, y] points (T+1)", p)
    chord = c.need(path, INDEX, "chord", lambda v: points(v, 2), "2 [x, y] points", p)
    if xy is not None and chord is not None and chord != [xy[0], xy[-1]]:
        c.add(INDEX, p + "chord", "is not [xy[0], xy[-1]] (the noise to the result)")
    _check_sprite(c, path, p, n, files)
    return xy[0] if xy is not None else None


def _check_sprite(c, path: dict, p: str, frames: int, files: set) -> None:
    """images: the WebP or PNG named, frames T+1 of width x height side by side."""
    from PIL import Image

    from backend.format import FILE_NAME
    from backend.validator import is_int, is_name, is_sha256

    image = c.need(path, INDEX, "images", lambda v: isinstance(v, dict) and is_name(
        v.get("file"), FILE_NAME) and v["file"].endswith(tuple(MIME)) and is_sha256(v.get("sha256"))
        and is_int(v.get("width"), 1, MAX_SIDE) and is_int(v.get("height"), 1, MAX_SIDE)
        and is_int(v.get("frames"), 1, MAX_STEPS + 1), "an object: file (a .webp or .png name in "
        f"{FILES}/), sha256, frames, width, height (1 to {MAX_SIDE})", p)
    if image is None:
        return
    if image["frames"] != frames:
        c.add(INDEX, p + "images.frames", f"is {image['frames']}, not {frames} (T+1: the "
              "predicted image after each call, then the result)")
    if image["file"] in files:
        c.add(INDEX, p + "images.file", f"{image['file']!r} is used by another path")
    files.add(image["file"])
    rel = f"{FILES}/{image['file']}"
    found = c.file(rel, image["sha256"], f"{p}images.sha256")  # names fewstep/index.json's field
    if found is None:
        return
    kind = FORMATS[rel[rel.rindex("."):]]
    try:
        with Image.open(found) as im:  # reads the header only
            width, height, got = im.width, im.height, im.format
    except Exception as e:  # any unreadable image is a problem to report, not a crash
        c.add(rel, "", f"cannot be read as an image ({str(e)[:200]})")
        return
    if got != kind:
        c.add(rel, "", f"is {got}, its name says {kind}")
        return
    want = (image["frames"] * image["width"], image["height"])
    if (width, height) != want:
        c.add(rel, "", f"image is {width} x {height}, {INDEX} {p}images says {want[0]} x "
              f"{want[1]} (frames {image['frames']} x width {image['width']}, height)")

"""Prompt sets: the TOML files researchers write, parsed with their errors located.

    title = "My prompts"
    default_guidance_scale = 7     # optional: the scale the app opens on
    [settings]                     # every key optional; command-line flags win
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    scheduler = "pndm"             # optional: default the checkpoint's own; one of
                                   # pndm lms ddim ddpm euler euler_a heun kdpm2
                                   # dpmpp_2m dpmpp_2m_karras unipc
    eta = 0.0                      # optional: DDIM's eta (0: deterministic, 1: DDPM-like)
    guidance_rescale = 0.0         # optional: Lin et al. 2023's phi (0.7 for zero-SNR models)
    negative_prompt = "blurry"     # optional: the unconditional row's prompt (default "")
    num_inference_steps = 50
    height = 512
    width = 512
    seeds = [1, 2, 3]
    guidance_scales = [0, 1, 7, 20]
    storage = "full"               # full | compact (8-bit arrays, ~5x smaller; docs/bundle-format.md)
    attention_levels = [16]        # optional: the levels (map heights) the combined
                                   # attention map averages; default: all but the mid block
    controlnet = "lllyasviel/sd-controlnet-canny"  # optional: a diffusers ControlNetModel
                                   # (folder or hub id) for the groups with a control_image
    controlnet_conditioning_scales = [0.5, 1.0]  # optional (default [1.0]): swept like
                                   # guidance_scales; the run without control is always there
    controlnet_guidance_scales = [7]  # optional: the guidance scales of the runs with control
                                   # (some of guidance_scales; default: all of them above 0)
    control_guidance_start = 0.0   # optional: the fraction of the steps where control starts
    control_guidance_end = 1.0     # optional: ... and where it ends

    [[groups]]
    prompt = "a cute panda playing the guitar in a bamboo forest"
    variants = ["a cute panda playing the guitar"]
    keyword = "in a bamboo forest"  # optional: the words to highlight; default: the words that differ
    negative_prompt = "low quality"  # optional: this group's, instead of settings.negative_prompt
    control_image = "sketches/panda.png"  # optional: the ControlNet's image for these prompts
                                          # (relative to this file; needs settings.controlnet)

A bad file raises PromptFileError naming the file, line and field.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from precompute.writer import STORAGES, prompt_id, slugify

# precompute/model.py's SCHEDULERS (named here too, so the CLI's --help needs no torch)
SCHEDULERS = ("pndm", "lms", "ddim", "ddpm", "euler", "euler_a", "heun", "kdpm2", "dpmpp_2m",
              "dpmpp_2m_karras", "unipc", "lcm", "flow_euler", "instaflow")
SETTINGS_KEYS = {"model", "scheduler", "num_inference_steps", "height", "width", "seeds",
                 "guidance_scales", "image_size", "storage", "attention_levels", "eta",
                 "guidance_rescale", "negative_prompt",
                 # ControlNet (precompute/controlnet.py)
                 "controlnet", "controlnet_conditioning_scales", "controlnet_guidance_scales",
                 "control_guidance_start", "control_guidance_end"}
GROUP_KEYS = {"id", "title", "prompt", "variants", "keyword", "negative_prompt", "control_image"}
TOP_KEYS = {"title", "description", "default_guidance_scale", "settings", "groups"}


class PromptFileError(ValueError):
    def __init__(self, path, line, field_, message):
        self.path, self.line, self.field, self.message = str(path), line, field_, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {field_}: {message}" if field_ else f"{where}: {message}")


@dataclass
class PromptGroup:
    id: str
    title: str
    prompts: list[str]                  # main prompt first, then variants
    highlights: dict[str, list[list[int]]] = field(default_factory=dict)  # text -> char spans
    negative_prompt: str | None = None  # None: the file's (settings.negative_prompt, or "")
    control_image: str | None = None    # the ControlNet's image (a path), None: no control

    def as_bundle_group(self) -> dict:
        return {"id": self.id, "title": self.title,
                "prompts": [prompt_id(t) for t in self.prompts],
                "highlights": {prompt_id(t): spans for t, spans in self.highlights.items()}}


@dataclass
class PromptSet:
    title: str = "Noisepath bundle"
    description: str = ""
    default_guidance_scale: float | None = None  # the scale the app opens on (None: its rule)
    settings: dict = field(default_factory=dict)
    groups: list[PromptGroup] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """Every distinct prompt, in file order."""
        return list(dict.fromkeys(t for g in self.groups for t in g.prompts))

    @property
    def control_images(self) -> dict[str, list[str]]:
        """Prompt text -> the control images its groups name (in file order)."""
        images: dict[str, list[str]] = {}
        for g in self.groups:
            for text in g.prompts if g.control_image else ():
                images.setdefault(text, [])
                if g.control_image not in images[text]:
                    images[text].append(g.control_image)
        return images

    def negative_prompt(self, text: str, default: str = "") -> str:
        """The negative prompt of `text`: its group's, else `default` (the settings')."""
        for g in self.groups:
            if text in g.prompts and g.negative_prompt is not None:
                return g.negative_prompt
        return default


# ------------------------------------------------------------------- highlighting

def _word_spans(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]


def _merge(spans: list[list[int]], text: str) -> list[list[int]]:
    """Join spans separated only by whitespace."""
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and not text[out[-1][1]:s].strip():
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def differing_words(a: str, b: str) -> tuple[list[list[int]], list[list[int]]]:
    """Character spans of the words of a not in b, and of b not in a (a word diff)."""
    wa, wb = _word_spans(a), _word_spans(b)
    norm = [w[2].strip(",.;:").lower() for w in wa], [w[2].strip(",.;:").lower() for w in wb]
    sa, sb = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, *norm, autojunk=False).get_opcodes():
        if op != "equal":
            sa += [[wa[i][0], wa[i][1]] for i in range(i1, i2)]
            sb += [[wb[j][0], wb[j][1]] for j in range(j1, j2)]
    return _merge(sa, a), _merge(sb, b)


def keyword_spans(text: str, keywords: list[str]) -> list[list[int]] | None:
    spans = []
    for kw in keywords:
        i = text.find(kw)
        if i < 0:
            return None
        spans.append([i, i + len(kw)])
    return _merge(spans, text)


# ------------------------------------------------------------------------ parsing

def _locate(text: str, key: str, group_index: int | None = None) -> int | None:
    """1-based line of `key =` (in the group_index-th [[groups]] table, if given)."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if group_index is not None:
        heads = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*groups\s*\]\]", line)]
        if group_index >= len(heads):
            return None
        start = heads[group_index]
        end = next((i for i in range(start + 1, len(lines))
                    if re.match(r"\s*\[", lines[i])), len(lines))
    elif key in SETTINGS_KEYS:
        head = next((i for i, line in enumerate(lines)
                     if re.match(r"\s*\[\s*settings\s*\]", line)), None)
        if head is not None:
            start = head
    for i in range(start, end):
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return start + 1 if group_index is not None else None


def check_settings(s: dict, err) -> dict:
    """Validate settings (from a file or the command line); err(key, message) raises."""
    for key in s:
        if key not in SETTINGS_KEYS:
            err(key, f"unknown setting; expected one of {', '.join(sorted(SETTINGS_KEYS))}")
    if "model" in s and not (isinstance(s["model"], str) and s["model"].strip()):
        err("model", "must be a hub id or a folder path")
    if "scheduler" in s and s["scheduler"] not in SCHEDULERS:
        err("scheduler", f"must be one of {', '.join(SCHEDULERS)} (leave it out to use the "
            "checkpoint's own)")
    for key, what in (("eta", "DDIM's eta"), ("guidance_rescale", "Lin et al. 2023's phi")):
        v = s.get(key)
        if v is not None and not (type(v) in (int, float) and 0 <= v <= 1):
            err(key, f"must be a number from 0 to 1 ({what})")
    if "eta" in s and s["eta"] and s.get("scheduler") not in (None, "ddim"):
        err("eta", "is DDIM's noise setting; use it with scheduler \"ddim\"")
    if "negative_prompt" in s and not isinstance(s["negative_prompt"], str):
        err("negative_prompt", "must be a string (\"\": none)")
    n = s.get("num_inference_steps")
    if n is not None and not (type(n) is int and 1 <= n <= 1000):
        err("num_inference_steps", "must be an integer from 1 to 1000")
    for key in ("height", "width"):
        v = s.get(key)
        if v is not None and not (type(v) is int and v >= 8 and v % 8 == 0):
            err(key, "must be a positive multiple of 8 (the VAE downsamples by 8)")
    v = s.get("image_size")
    if v is not None and not (type(v) is int and 8 <= v <= 2048):
        err("image_size", "must be an integer from 8 to 2048")
    seeds = s.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and seeds and
                                  all(type(x) is int and 0 <= x < 2**63 for x in seeds)):
        err("seeds", "must be a non-empty list of non-negative integers")
    if seeds is not None and len(set(seeds)) != len(seeds):
        err("seeds", "has duplicates")
    check_scales(s, "guidance_scales", 100, err)
    levels = s.get("attention_levels")
    if levels is not None and not (isinstance(levels, list) and levels and
                                   all(type(x) is int and x >= 1 for x in levels)):
        err("attention_levels", "must be a non-empty list of map heights, e.g. [16] or [32, 16] "
            "(the combined attention map averages those cross-attention levels)")
    if levels is not None and len(set(levels)) != len(levels):
        err("attention_levels", "has duplicates")
    check_control_settings(s, err)
    if "storage" in s and s["storage"] not in STORAGES:
        err("storage", f"must be one of {', '.join(STORAGES)} (compact: 8-bit arrays, "
            "derived arrays and previews left out; docs/bundle-format.md)")
    return s


def check_scales(s: dict, key: str, high: float, err) -> None:
    """s[key], when given: a non-empty list of distinct numbers from 0 to `high` (a sweep)."""
    scales = s.get(key)
    if scales is not None and not (isinstance(scales, list) and scales and all(
            type(x) in (int, float) and 0 <= x <= high for x in scales)):
        err(key, f"must be a non-empty list of numbers from 0 to {high}")
    if scales is not None and len({float(x) for x in scales}) != len(scales):
        err(key, "has duplicates")


def check_control_settings(s: dict, err) -> None:
    """The ControlNet settings (diffusers' bounds for start and end)."""
    if "controlnet" in s and not (isinstance(s["controlnet"], str) and s["controlnet"].strip()):
        err("controlnet", "must be a ControlNet's hub id or folder path (a diffusers "
            "ControlNetModel, e.g. lllyasviel/sd-controlnet-canny)")
    check_scales(s, "controlnet_conditioning_scales", 10, err)
    for key in ("control_guidance_start", "control_guidance_end"):
        v = s.get(key)
        if v is not None and not (type(v) in (int, float) and 0 <= v <= 1):
            err(key, "must be a number from 0 to 1 (a fraction of the steps)")
    start, end = s.get("control_guidance_start", 0), s.get("control_guidance_end", 1)
    if type(start) in (int, float) and type(end) in (int, float) and start >= end:
        err("control_guidance_end", f"must be above control_guidance_start ({start})")
    if "guidance_scales" in s:
        check_control_guidance(s, err)


def check_control_guidance(settings: dict, err) -> None:
    """controlnet_guidance_scales, when given: some of guidance_scales' values above 0."""
    chosen = settings.get("controlnet_guidance_scales")
    if chosen is not None:
        swept = {float(g) for g in settings.get("guidance_scales") or []}
        if not (isinstance(chosen, list) and chosen and all(
                type(g) in (int, float) and g > 0 and float(g) in swept for g in chosen)):
            err("controlnet_guidance_scales", "must be a non-empty list of guidance_scales' "
                f"values above 0 (here: {', '.join(f'{g:g}' for g in sorted(swept) if g)}): the runs with "
                "control sit beside the uncontrolled runs at the same scale")
        elif len({float(g) for g in chosen}) != len(chosen):
            err("controlnet_guidance_scales", "has duplicates")


def check_control(prompt_set: "PromptSet", settings: dict, err) -> None:
    """A ControlNet needs control images and the images a ControlNet; err(key, message)."""
    controlnet = settings.get("controlnet")
    if controlnet and not prompt_set.control_images:
        err("controlnet", "is set, but no group names a control_image: give one (a group's "
            "control_image, or --control-image)")
    if prompt_set.control_images and not controlnet:
        err("controlnet", "is missing: a group names a control_image, which needs a ControlNet "
            "(settings.controlnet, or --controlnet)")
    scales = settings.get("controlnet_conditioning_scales")
    if controlnet and scales is not None and not any(scales):
        err("controlnet_conditioning_scales", "has only 0, the run without control, which is "
            "always recorded: give a scale above 0 (1: the ControlNet as trained)")
    if controlnet and not any(float(g) != 0 for g in settings.get("guidance_scales") or [1]):
        err("guidance_scales", "has only 0: ControlNet runs need a guidance scale above 0 "
            "(guidance 0 is the prompt-free run, which runs without control)")
    check_control_guidance(settings, err)


def _control_image(value, base: Path, fail) -> str | None:
    """A group's control_image as a path (relative to the prompt file), checked readable."""
    if value is None:
        return None
    if not (isinstance(value, str) and value.strip()):
        fail("control_image", "must be an image file's path (relative to the prompt file)")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        from PIL import Image
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        fail("control_image", f"{path}: no such file")
    except Exception as e:  # PIL's errors for a file that is not an image vary
        fail("control_image", f"{path}: not a readable image ({type(e).__name__}: {e})")
    return str(path)


def load_prompt_file(path: str | Path) -> PromptSet:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PromptFileError(path, None, "", f"cannot read the prompt file ({e.strerror})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # TOML files are UTF-8 (toml.io)
        raise PromptFileError(path, raw[:e.start].count(b"\n") + 1, "",
                              f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as "
                              "UTF-8, as TOML requires") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise PromptFileError(path, int(m.group(1)) if m else None, "", f"not valid TOML: {e}")
    return parse_prompt_set(data, path, text)


def parse_prompt_set(data: dict, path="<prompts>", text: str = "") -> PromptSet:
    def fail(key, message, group=None, label=None):
        raise PromptFileError(path, _locate(text, key, group), label or key, message)

    for key in data:
        if key not in TOP_KEYS:
            fail(key, f"unknown key; expected {', '.join(sorted(TOP_KEYS))}")
    for key in ("title", "description"):
        if key in data and not isinstance(data[key], str):
            fail(key, "must be a string")
    default_g = data.get("default_guidance_scale")
    if default_g is not None:
        if isinstance(default_g, bool) or not isinstance(default_g, (int, float)) \
                or not 0 <= default_g <= 100:
            fail("default_guidance_scale", "must be a number from 0 to 100")
        scales = (data.get("settings") or {}).get("guidance_scales")
        if isinstance(scales, list) and default_g not in scales:
            fail("default_guidance_scale", f"{default_g} is not one of settings.guidance_scales "
                                           f"{scales}")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        fail("settings", "must be a table: [settings]")
    check_settings(settings, lambda k, msg: fail(k, msg, label=f"settings.{k}"))
    groups_raw = data.get("groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        fail("groups", "the file needs at least one [[groups]] table with a prompt")
    groups, ids = [], set()
    for i, g in enumerate(groups_raw):
        if not isinstance(g, dict):
            fail("groups", f"entry {i + 1} is not a table ({type(g).__name__}); each group "
                 "must be a table with a prompt: [[groups]] then prompt = \"...\"")
        group_fail = (lambda k, msg, i=i: fail(k, msg, group=i, label=f"groups[{i}].{k}"))
        groups.append(_parse_group(g, i, group_fail))
        groups[-1].control_image = _control_image(g.get("control_image"), Path(path).parent,
                                                  group_fail)
        if groups[-1].id in ids:
            fail("id", f"duplicate group id {groups[-1].id!r}", group=i, label=f"groups[{i}].id")
        ids.add(groups[-1].id)
        negatives = {t: g.negative_prompt for g in groups[:-1] for t in g.prompts}
        for prompt in groups[-1].prompts:  # the app finds a prompt's runs by prompt and seed
            if prompt in negatives and negatives[prompt] != groups[-1].negative_prompt:
                fail("negative_prompt", f"prompt {prompt!r} is in an earlier group with another "
                     "negative prompt; a prompt has one negative prompt per bundle", group=i,
                     label=f"groups[{i}].negative_prompt")
    return PromptSet(title=data.get("title", "Noisepath bundle"),
                     description=data.get("description", ""),
                     default_guidance_scale=None if default_g is None else float(default_g),
                     settings=settings, groups=groups)


def _parse_group(g: dict, i: int, fail) -> PromptGroup:
    for key in g:
        if key not in GROUP_KEYS:
            fail(key, f"unknown key; expected {', '.join(sorted(GROUP_KEYS))}")
    main = g.get("prompt")
    if not isinstance(main, str) or not main.strip():
        fail("prompt", "must be a non-empty string")
    variants = g.get("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, str) and v.strip()
                                                 for v in variants):
        fail("variants", "must be a list of non-empty strings")
    if main in variants:
        fail("variants", "repeats the main prompt")
    highlights = {main: [], **{v: [] for v in variants}}
    for v in variants:  # the words each variant changes, marked on both sides
        a, b = differing_words(main, v)
        highlights[main] = _merge(highlights[main] + a, main)
        highlights[v] = b
    keyword = g.get("keyword")
    if keyword is not None:
        kws = [keyword] if isinstance(keyword, str) else keyword
        if not (isinstance(kws, list) and all(isinstance(k, str) and k for k in kws)):
            fail("keyword", "must be a string or a list of strings")
        spans = keyword_spans(main, kws)
        if spans is None:
            fail("keyword", "must appear in the prompt exactly as written")
        highlights[main] = spans
    title = g.get("title", main)
    if not isinstance(title, str):
        fail("title", "must be a string")
    negative = g.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        fail("negative_prompt", "must be a string (\"\": none)")
    gid = g.get("id", f"{slugify(main, 32)}-{i + 1}")
    if not (isinstance(gid, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", gid)):
        fail("id", "must be lowercase letters, digits and dashes (at most 64)")
    return PromptGroup(id=gid, title=title, prompts=[main, *variants],
                       highlights=highlights, negative_prompt=negative)


def single_prompt_set(prompt: str, variants: list[str], control_image=None) -> PromptSet:
    """The quick form: `--prompt "..." --variant "..."` (`--negative-prompt` is a setting;
    `--control-image`: the ControlNet's image for the prompt and its variants)."""
    group = {"prompt": prompt, "variants": variants}
    if control_image is not None:
        group["control_image"] = str(Path(control_image).resolve())
    return parse_prompt_set({"groups": [group]}, "--prompt/--variant")

"""Validates one run of a bundle (runs/<run_id>/run.json, docs/bundle-format.md): first
the manifest's schema (every field the server reads: types, ranges, finite numbers,
names, expected shapes), then, only for a well-formed manifest, the files it names.

Part of backend/validator.py, which checks the index, prompts and trajectories.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from backend import codec, previews
from backend.format import (ATTENTION_ARRAY, FILE_NAME, IMAGE_MIMES, MAX_ARRAY_BYTES,
                            MAX_GUIDANCE, MAX_SEED, OPTIONAL_IMAGES, REQUIRED_IMAGES,
                            STEP_ARRAYS, X0_SOURCES, recorded_steps)
from backend.validate_control import CONTROL_ARRAY, CONTROL_IMAGE, check_controlnet
from backend.validate_control import expected_shape as control_shape
from backend.validator import (Checker, brief, describe, is_int, is_name, is_number, is_numbers,
                               is_sha256, is_side_pair, listed_document, shown)

DERIVED_KIND = {"noise_pred": "guidance", "attention": "attention_mean"}  # what may be derived
MAX_HISTORY = 3  # earlier calls a multistep step reads (LMS and PLMS: 3; PRK: 3 in one)


def check_run(c: Checker, rid: str, entry, config: dict, listed_prompts: dict,
              prompts: dict) -> dict | None:
    """The run's manifest, if it could be read (problems carry run_id=rid)."""
    with c.scope(run_id=rid):
        m = listed_document(c, "run", rid, entry, f"runs/{rid}/run.json")
        if m is None:
            return None
        errors = c.errors()
        run = _Run(c, rid, m, config, prompts)
        run.check_fields(entry, listed_prompts)
        run.check_entries()
        if c.errors() == errors:  # schema first: files only for a well-formed manifest
            run.check_files()
        return m


class _Run:
    def __init__(self, c: Checker, rid: str, m: dict, config: dict, prompts: dict):
        self.c, self.rid, self.m = c, rid, m
        self.rel, self.folder = f"runs/{rid}/run.json", f"runs/{rid}"
        self.steps = recorded_steps(config)                              # T: UNet calls
        self.num_inference_steps = config["num_inference_steps"]
        self.guidance_mode = config.get("guidance_mode", "classifier_free")
        self.latent = config["latent_shape"]                             # [C, h, w]
        pid = m.get("prompt_id")
        self.prompt = prompts.get(pid) if isinstance(pid, str) else None
        self.g = m.get("guidance_scale")
        self.arrays: dict[str, dict] = {}   # the well-formed entries
        self.images: dict[str, dict] = {}

    def add(self, field_, message):
        self.c.add(self.rel, field_, message)

    def need(self, obj, key, ok, what, prefix=""):
        return self.c.need(obj, self.rel, key, ok, what, prefix)

    # -- 1. fields
    def check_fields(self, entry: dict, listed_prompts: dict) -> None:
        m, steps = self.m, self.steps
        if m.get("run_id") != self.rid:
            self.add("run_id", f"is {describe(m.get('run_id'))}, folder is {self.rid!r}")
        pid = self.need(m, "prompt_id", lambda v: isinstance(v, str), "a prompt id")
        if pid is not None and self.prompt is None:
            self.add("prompt_id", f"prompt {shown(pid)!r} is "
                     + ("invalid" if pid in listed_prompts else "not in the bundle"))
        self.need(m, "seed", lambda v: is_int(v, 0, MAX_SEED), f"an integer from 0 to {MAX_SEED}")
        self.need(m, "guidance_scale", lambda v: is_number(v, 0, MAX_GUIDANCE),
                  f"a number from 0 to {MAX_GUIDANCE}")
        n = self.num_inference_steps
        if m.get("num_inference_steps") != n or type(m.get("num_inference_steps")) is not int:
            self.add("num_inference_steps", f"is {describe(m.get('num_inference_steps'))}, the "
                     f"bundle has {n}")
        for key in ("prompt_id", "seed", "guidance_scale"):
            if entry.get(key) != m.get(key):
                self.c.add("bundle.json", f"runs.{self.rid}.{key}", f"is {describe(entry.get(key))}"
                           f", run.json says {describe(m.get(key))}")
        sched = self.need(m, "scheduler", lambda v: isinstance(v, dict), "an object") or {}
        for key in ("timesteps", "alphas_cumprod", "weaken"):
            self.need(sched, key, lambda v: is_numbers(v, steps), f"an array of {steps} numbers",
                      "scheduler.")
        self.need(sched, "sigmas", lambda v: v is None or is_numbers(v, steps),
                  f"null or an array of {steps} numbers", "scheduler.")
        self.check_sampler_fields(sched, listed_prompts)
        if m.get("latent_preview") is not None:
            self.need(m, "latent_preview", lambda v: isinstance(v, dict) and _matrix(
                v.get("matrix"), self.latent[0], 3) and _matrix([v.get("bias")], 1, 3),
                f"null or an object with matrix ({self.latent[0]} x 3 numbers) and bias (3)")
        self.check_attention()
        check_controlnet(self)  # a ControlNet run's record (backend/validate_control.py)

    def check_sampler_fields(self, sched: dict, listed_prompts: dict) -> None:
        """The optional fields of other schedulers, negative prompts and guidance_rescale."""
        m, steps, p = self.m, self.steps, "scheduler."
        if "step_index" in sched:  # each UNet call's scheduler step: 0, ..., steps - 1 in order
            n = self.num_inference_steps
            self.need(sched, "step_index", lambda v: isinstance(v, list) and len(v) == steps
                      and all(is_int(x, 0, n - 1) for x in v) and v[0] == 0 and v[-1] == n - 1
                      and all(0 <= b - a <= 1 for a, b in zip(v, v[1:])),
                      f"{steps} integers rising by 0 or 1 from 0 to {n - 1}", p)
        if "pred_original_sample" in sched:
            self.need(sched, "pred_original_sample", lambda v: v in X0_SOURCES,
                      f"one of {', '.join(X0_SOURCES)}", p)
        if "multistep" in sched:  # a multistep solver's shares of each step (multistep.py)
            self.need(sched, "multistep", lambda v: _multistep(v, steps),
                      f"an object of current ({steps} numbers), history ({steps} arrays of at "
                      f"most {MAX_HISTORY} numbers) and history_calls ({steps} integers, 0 "
                      "where history is empty, else at least its length)", p)
        arrays = m.get("arrays") if isinstance(m.get("arrays"), dict) else {}
        if "noise_scale" in sched or "variance_noise" in arrays:
            self.need(sched, "noise_scale", lambda v: is_numbers(v, steps) and min(v) >= 0,
                      f"an array of {steps} numbers >= 0 (variance_noise's factors)", p)
            if "variance_noise" not in arrays:
                self.add("arrays.variance_noise", "is missing though scheduler.noise_scale is "
                         "there")
        if "flow_time" in sched:  # a flow model's t = 1 - sigma of each call (fewstep.py)
            self.need(sched, "flow_time", lambda v: is_numbers(v, steps) and 0 <= min(v)
                      and max(v) <= 1, f"an array of {steps} numbers from 0 to 1", p)
        self.check_guidance_mode()
        if "negative_prompt_id" in m:
            nid = m["negative_prompt_id"]
            if not (isinstance(nid, str) and nid in listed_prompts):
                self.add("negative_prompt_id", f"is {describe(nid)}, not a prompt of the bundle")
        if "guidance_rescale" in m or "guidance_rescale_std_ratio" in m:
            self.need(m, "guidance_rescale", lambda v: is_number(v, 0, 1) and v > 0,
                      "a number above 0, at most 1", "")
            self.need(m, "guidance_rescale_std_ratio", lambda v: is_numbers(v, steps),
                      f"an array of {steps} numbers", "")
            if isinstance(arrays.get("noise_pred"), dict) and "derived" in arrays["noise_pred"]:
                self.add("arrays.noise_pred.derived", "a guidance_rescale run's noise_pred is "
                         "not the guidance formula of its branches: it must be stored")

    def check_guidance_mode(self) -> None:
        """run.json's guidance_mode is the bundle's; a "none" run is at guidance 1."""
        m, mode = self.m, self.guidance_mode
        if "guidance_mode" in m and m["guidance_mode"] != mode:
            self.add("guidance_mode", f"is {describe(m['guidance_mode'])}, the bundle's is {mode!r}")
        if mode == "none" and is_number(self.g) and self.g != 1:
            self.add("guidance_scale", f"is {self.g}; a bundle without classifier-free guidance "
                     "(guidance_mode none: the prompt's prediction alone) has runs at 1 only")

    def check_attention(self) -> None:
        """`attention`: null, or tokens, resolutions and combined (what the API reads)."""
        att = self.m.get("attention")
        if att is None:
            return
        if not isinstance(att, dict):
            self.add("attention", f"must be null or an object, is {describe(att)}")
            return
        hw = self.latent[1:]
        p = "attention."
        if self.prompt is not None:
            k = self.prompt["tokens"]["n_real"]
            self.need(att, "tokens", lambda v: v == k and type(v) is int,
                      f"{k} (the prompt's real tokens)", p)
        self.need(att, "resolutions", lambda v: isinstance(v, list) and len(set(v)) == len(v)
                  and all(is_int(x, 1, hw[0]) for x in v),
                  f"an array of distinct map heights from 1 to {hw[0]}", p)
        combined = self.need(att, "combined", lambda v: isinstance(v, dict), "an object", p)
        if combined is not None:
            self.need(combined, "resolution", lambda v: is_side_pair(v, hw),
                      f"[H, W], each from 1 to the latent's {hw}", "attention.combined.")
        if att.get("mid_block_resolution") is not None:
            self.need(att, "mid_block_resolution", lambda v: is_side_pair(v, hw),
                      "null or [h, w]", p)
        arrays = self.m.get("arrays")
        if isinstance(arrays, dict) and "attention" not in arrays:
            self.add("arrays.attention", "is missing though attention is described")

    # -- 2. array and image entries
    def expected_shape(self, name: str) -> list | None:
        """The shape an array must have; None where a field it depends on is invalid."""
        if name in STEP_ARRAYS:
            return [self.steps + STEP_ARRAYS[name], *self.latent]
        if CONTROL_ARRAY.fullmatch(name):
            return control_shape(name, self.steps)
        att = self.m.get("attention")
        if self.prompt is None or not isinstance(att, dict):
            return None
        head = [self.prompt["tokens"]["n_real"], self.steps]
        if name == "attention":
            hw = (att.get("combined") or {}).get("resolution") if isinstance(
                att.get("combined"), dict) else None
        elif name == "attention_mid":
            hw = att.get("mid_block_resolution")
        else:  # attention_res<r>: r rows, at most the latent's columns
            return head + [int(name.removeprefix("attention_res"))]
        return head + list(hw) if is_side_pair(hw, self.latent[1:]) else None

    def check_entries(self) -> None:
        arrays = self.need(self.m, "arrays", lambda v: isinstance(v, dict), "an object") or {}
        required = {"latents", "noise_pred", "pred_original_sample"}
        if is_number(self.g) and self.g != 1 and self.guidance_mode != "embedding":
            required.add("noise_pred_uncond")  # an LCM's guidance is an embedding: no such row
        if is_number(self.g) and self.g != 0:
            required.add("noise_pred_text")
        for name in sorted(required - set(arrays)):
            self.add(f"arrays.{name}", "is missing")
        for name, entry in arrays.items():
            if self.array_entry(name, entry):
                self.arrays[name] = entry
        for name, entry in arrays.items():
            if name in self.arrays and "derived" in entry:
                self.derived_array(name, entry)
        images = self.need(self.m, "images", lambda v: isinstance(v, dict), "an object") or {}
        for name in sorted(set(REQUIRED_IMAGES) - set(images)):
            self.add(f"images.{name}", "is missing")
        for name, entry in images.items():
            if self.image_entry(name, entry):
                self.images[name] = entry

    def array_entry(self, name: str, e) -> bool:
        f = f"arrays.{shown(name)}"
        if name not in STEP_ARRAYS and not ATTENTION_ARRAY.fullmatch(name) \
                and not CONTROL_ARRAY.fullmatch(name):
            self.add(f, f"is not an array of the format ({', '.join(STEP_ARRAYS)}, attention, "
                     "attention_res<r>, attention_mid, controlnet_res<h>, controlnet_mid)")
            return False
        if not isinstance(e, dict):
            self.add(f, f"must be an object, is {describe(e)}")
            return False
        errors = self.c.errors()
        if e.get("dtype") != "float16":
            self.add(f"{f}.dtype", f"must be float16, is {describe(e.get('dtype'))}")
        shape = e.get("shape")
        if not (isinstance(shape, list) and len(shape) == 4 and all(is_int(x, 1, 1 << 20)
                                                                    for x in shape)
                and all(x <= lim for x, lim in zip(shape[2:], self.latent[1:]))):
            self.add(f"{f}.shape", f"must be 4 positive integers, the last two at most the "
                     f"latent's {self.latent[1:]}, is {describe(shape)}")
            return False
        if math.prod(shape) * 2 > MAX_ARRAY_BYTES:
            self.add(f"{f}.shape", f"is {shape}: over {MAX_ARRAY_BYTES >> 20} MiB as float16")
        expected = self.expected_shape(name)
        if expected is not None and shape[:len(expected)] != expected:
            self.add(f"{f}.shape", f"is {shape}, expected {expected}")
        if "derived" in e:
            if self.c.new_in_2(self.rel, f"{f}.derived") and DERIVED_KIND.get(name) != e["derived"]:
                self.add(f"{f}.derived", f"is {brief(e['derived'])}; "
                         + (f"{name} is derived by {DERIVED_KIND[name]!r}" if name in
                            DERIVED_KIND else f"{name} is stored, never derived"))
            if "max_abs_error" in e:
                self.error_bound(f, e)
            return self.c.errors() == errors
        suffix = ".q8.npz" if "encoding" in e else ".npy"
        if not (is_name(e.get("file"), FILE_NAME) and e["file"].endswith(suffix)
                and is_sha256(e.get("sha256"))):
            self.add(f, f"must have file (a plain file name ending {suffix}) and sha256 (64 hex "
                     "digits)")
            return False
        if "encoding" in e and self.c.new_in_2(self.rel, f"{f}.encoding"):
            if e["encoding"] != codec.ENCODING:
                self.add(f"{f}.encoding", f"is {brief(e['encoding'])}; this noisepath reads "
                         f"{codec.ENCODING!r}")
            self.error_bound(f, e)
            if "stored_shape" in e:
                self.stored_shape(f, e)
        return self.c.errors() == errors

    def stored_shape(self, f: str, e: dict) -> None:
        """A resized array's stored maps: the same leading axes, maps no larger than the
        array's (the reader upsamples them to its shape)."""
        stored, shape = e["stored_shape"], e["shape"]
        if not (isinstance(stored, list) and len(stored) == 4
                and all(is_int(x, 1, 1 << 20) for x in stored)
                and stored[:2] == shape[:2] and all(a <= b for a, b in zip(stored[2:], shape[2:]))):
            self.add(f"{f}.stored_shape", f"must be 4 positive integers, the first two the "
                     f"shape's {shape[:2]}, the maps no larger than {shape[2:]}; is "
                     f"{describe(stored)}")

    def error_bound(self, f: str, e: dict) -> None:
        if not is_number(e.get("max_abs_error"), 0):
            self.add(f"{f}.max_abs_error", "must be a number >= 0")

    def derived_array(self, name: str, e: dict) -> None:
        """A derived array's sources: stored arrays of this run that give its shape."""
        f = f"arrays.{name}"
        sources = e.get("from")
        if not (isinstance(sources, list) and sources and all(isinstance(x, str) for x in sources)):
            self.add(f"{f}.from", "must be a non-empty array of array names")
            return
        for source in sources:
            src = self.arrays.get(source)
            if src is None or "derived" in src:
                self.add(f"{f}.from", f"names {shown(source)!r}, which is not a stored array of "
                         "this run")
                return
        if e["derived"] == "guidance" and is_number(self.g):
            g = self.g
            branches = {0: ["noise_pred_uncond"], 1: ["noise_pred_text"]}.get(
                g, ["noise_pred_uncond", "noise_pred_text"])
            if sources != branches:
                self.add(f"{f}.from", f"is {sources}; at guidance {g} it must be {branches}")
        elif e["derived"] == "attention_mean" and not all(x.startswith("attention_res")
                                                          for x in sources):
            self.add(f"{f}.from", f"is {sources}; the combined map averages attention_res<r> "
                     "levels")
        lead = 2 if e["derived"] == "attention_mean" else 4  # the axes the sources share
        for source in sources:
            if self.arrays[source]["shape"][:lead] != e["shape"][:lead]:
                self.add(f"{f}.shape", f"is {e['shape']}, but {source} is "
                         f"{self.arrays[source]['shape']}")
                return

    def image_entry(self, name: str, e) -> bool:
        f = f"images.{shown(name)}"
        expected = {**REQUIRED_IMAGES, **OPTIONAL_IMAGES, CONTROL_IMAGE: 1 - self.steps}
        if name not in expected:
            self.add(f, f"is not an image of the format ({', '.join(expected)})")
            return False
        ints = [e.get(k) for k in ("count", "frame_width", "frame_height", "columns")] \
            if isinstance(e, dict) else []
        if not (ints and all(is_int(v, 1, 1 << 16) for v in ints)):
            self.add(f, "must be an object whose count, frame_width, frame_height and columns "
                     "are positive integers")
            return False
        n, fw, fh, cols = ints
        ok = True
        if n != self.steps + expected[name]:
            self.add(f"{f}.count", f"is {n}, expected {self.steps + expected[name]}")
            ok = False
        if e.get("derived") is True:
            return self.derived_image(name, e) and ok
        ok = self.frame_error(f, e) and ok
        mime, file = e.get("mime"), e.get("file")
        if not (isinstance(mime, str) and mime in IMAGE_MIMES and is_name(file, FILE_NAME)
                and file.lower().endswith(IMAGE_MIMES[mime]) and is_sha256(e.get("sha256"))):
            self.add(f, f"must have mime (one of {', '.join(IMAGE_MIMES)}), file (a file name "
                     "with its extension) and sha256 (64 hex digits)")
            return False
        return ok

    def frame_error(self, f: str, e: dict) -> bool:
        """A lossy sprite's quality (1-100) and measured errors (0-255 levels), if recorded."""
        ok = True
        if "quality" in e and not is_int(e["quality"], 1, 100):
            self.add(f"{f}.quality", f"must be an integer 1 to 100, is {describe(e['quality'])}")
            ok = False
        for key in ("mean_abs_error", "max_frame_mean_abs_error", "final_mean_abs_error"):
            if key in e and not is_number(e[key], 0, 255):
                self.add(f"{f}.{key}", f"must be a number 0 to 255 (levels of a channel), is "
                         f"{describe(e[key])}")
                ok = False
        return ok

    def derived_image(self, name: str, e: dict) -> bool:
        """A preview the server renders (backend/previews.py): the sprite it will get."""
        f = f"images.{name}"
        if not self.c.new_in_2(self.rel, f"{f}.derived"):
            return False
        source = self.arrays.get(name)
        if name not in previews.PREVIEWS or e.get("from") != [name] or source is None:
            self.add(f"{f}.from", f"must be [{name!r}], an array of this run with a preview "
                     f"({', '.join(previews.PREVIEWS)})")
            return False
        if e.get("mime") not in ("image/png", "image/jpeg"):
            self.add(f"{f}.mime", "must be image/png or image/jpeg")
        elif e["mime"] == "image/jpeg" and not all(k in e for k in ("quality",
                                                                     *previews.ERROR_KEYS)):
            self.add(f, "a JPEG preview records quality and its measured error ("
                     f"{', '.join(previews.ERROR_KEYS)}): the server renders it at that quality")
        self.frame_error(f, e)
        if not isinstance(self.m.get("latent_preview"), dict):
            self.add("latent_preview", f"must have matrix ({self.latent[0]} x 3) and bias (3 "
                     "numbers): the previews are rendered with it")
        n, shape = e["count"], source["shape"]
        for key, value in {"frame_height": shape[-2], "frame_width": shape[-1],
                           "columns": math.ceil(math.sqrt(n))}.items():
            if e[key] != value:
                self.add(f"{f}.{key}", f"is {e[key]}, the rendered preview has {value}")
        return True

    # -- 3. files
    def check_files(self) -> None:
        for name, e in self.arrays.items():
            if "derived" in e:
                continue
            rel = f"{self.folder}/{e['file']}"
            path = self.c.file(rel, e["sha256"], f"arrays.{name}.sha256")
            if path is None:
                continue
            if "encoding" in e:
                self.encoded_array(rel, path, name, e)
            else:
                self.c.npy(rel, path, e["dtype"], e["shape"])
        for name, e in self.images.items():
            if e.get("derived") is not True:
                self.image_file(name, e)

    def encoded_array(self, rel: str, path, name: str, e: dict) -> None:
        """A q8-delta .npz: exactly the members q, lo and scale, no member inflated past
        what the manifest's shape implies. At start-up q's header (uint8, the manifest's
        shape) and the others' declared sizes; in decode mode every member in full (lo
        and scale float32, the map axes reduced to 1, finite, scale >= 0), as the server
        checks them when it first decodes the array (codec.check_members)."""
        c, shape = self.c, e.get("stored_shape", e["shape"])  # the members' shape
        try:
            members = codec.read_npz(path, header_only=() if c.decode else ("q",),
                                     limits=codec.member_limits(shape),
                                     sizes_only=() if c.decode else ("lo", "scale"))
        except codec.MemberTooLarge as err:
            c.add(rel, err.member, str(err))
            return
        except Exception as err:  # a truncated, corrupt or foreign file: reported, not raised
            c.add(rel, "", f"not a readable .npz file ({type(err).__name__}: {str(err)[:200]})")
            return
        if sorted(members) != sorted(codec.MEMBERS):
            c.add(rel, "members", f"are {sorted(members)}, expected exactly "
                  f"{', '.join(codec.MEMBERS)}")
            return
        q = members["q"]
        q_dtype, q_shape = (q.dtype, q.shape) if c.decode else q
        if q_dtype != np.uint8:
            c.add(rel, "q", f"dtype is {q_dtype}, expected uint8")
        if list(q_shape) != shape:
            c.add(rel, "q", f"file has {list(q_shape)}, manifest says {shape}")
        reduced = codec.spatially_reduced(shape)
        for key in ("lo", "scale"):
            a = members[key]
            if not c.decode:
                self.member_size(rel, key, a, 4 * math.prod(reduced), reduced)
            elif a.dtype != np.float32:
                c.add(rel, key, f"dtype is {a.dtype}, expected float32")
            elif list(a.shape) != reduced:
                c.add(rel, key, f"shape is {list(a.shape)}, expected {reduced}")
            elif not np.isfinite(a).all() or (key == "scale" and (a < 0).any()):
                c.add(rel, key, "must be finite" + (" and >= 0" if key == "scale" else ""))

    def member_size(self, rel: str, key: str, size: int, data: int, shape: list) -> None:
        """A member's declared size: its data and an .npy header (numpy pads headers to
        a multiple of 64 bytes)."""
        header = size - data
        if not (0 < header <= codec.HEADER_BYTES and header % 64 == 0):
            self.c.add(rel, key, f"holds {size:,} bytes: not a float32 array of shape {shape} "
                       f"({data:,} bytes) and its header")

    def image_file(self, name: str, e: dict) -> None:
        rel = f"{self.folder}/{e['file']}"
        path = self.c.file(rel, e["sha256"], f"images.{name}.sha256")
        if path is None:
            return
        try:
            with Image.open(path) as im:
                size = im.size
        except Exception as err:  # a truncated or foreign file must be reported, not raised
            self.c.add(rel, "", f"not a readable image ({type(err).__name__}: {str(err)[:200]})")
            return
        n, fw, fh, cols = (e[k] for k in ("count", "frame_width", "frame_height", "columns"))
        expected = (cols * fw, math.ceil(n / cols) * fh)
        if size != expected:
            self.c.add(rel, "", f"image is {size[0]}x{size[1]}, manifest implies "
                       f"{expected[0]}x{expected[1]}")


def _multistep(value, steps: int) -> bool:
    """scheduler.multistep: per UNet call, this call's share of the step's move, the
    shares of the earlier calls' stored outputs (newest first) and how many calls those
    hold (PNDM's Runge-Kutta warm-up keeps three in one)."""
    if not isinstance(value, dict):
        return False
    current, history, calls = value.get("current"), value.get("history"), value.get("history_calls")
    return (is_numbers(current, steps) and isinstance(history, list) and len(history) == steps
            and all(isinstance(h, list) and len(h) <= MAX_HISTORY and is_numbers(h, len(h))
                    for h in history)
            and isinstance(calls, list) and len(calls) == steps
            and all(is_int(n, 0, MAX_HISTORY) and (n == 0) == (not h) and n >= len(h)
                    for n, h in zip(calls, history)))


def _matrix(value, rows: int, cols: int) -> bool:
    return isinstance(value, list) and len(value) == rows and all(
        is_numbers(r, cols) for r in value)


def check_unlisted_runs(c: Checker, listed: set) -> None:
    """Warn about run folders the index does not list (a precompute was interrupted)."""
    try:
        folders = sorted(p.parent.name for p in (c.root / "runs").glob("*/run.json"))
    except OSError:
        return
    for name in folders:
        if name not in listed:
            c.add(f"runs/{name}", "", "run folder is not listed in bundle.json (run `noisepath "
                  "precompute` again to rebuild the index)", "warning")

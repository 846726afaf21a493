"""The API's JSON documents and arrays, built from a `Bundle` (docs/api.md).

Pure functions of the bundle: no Flask, no HTTP. `backend/store.py` calls them once
and caches the encoded bodies; `noisepath export` writes the same bodies as files.
"""

from __future__ import annotations

import io
from importlib import metadata

import numpy as np

from backend import previews
from backend.bundle import Bundle, is_file_array
from backend.format import FORMAT

EMPTY_PROMPT_ID = "empty"
VERSION_CHARS = 12          # ?v=<first 12 hex digits of the file's sha256>
STATS = {  # stats name -> (array, reduction)
    "latents_std": ("latents", "std"),
    "noise_pred_norm": ("noise_pred", "norm"),
    "noise_pred_uncond_norm": ("noise_pred_uncond", "norm"),
    "noise_pred_text_norm": ("noise_pred_text", "norm"),
    "pred_original_sample_std": ("pred_original_sample", "std"),
    "variance_noise_norm": ("variance_noise", "norm"),  # |z| of a stochastic step's draw
}
# per-step vectors: API name -> (array, frame offset from the step index)
CENTRE = {
    "latents": ("latents", 0),
    "noise_pred_uncond": ("noise_pred_uncond", 0),
    "noise_pred_text": ("noise_pred_text", 0),
    "noise_pred": ("noise_pred", 0),
    "latents_next": ("latents", 1),
    "pred_original_sample": ("pred_original_sample", 0),
    "variance_noise": ("variance_noise", 0),
}
# config.json keys the app reads when a bundle has them: UNet calls per run (heun, kdpm2,
# pndm make more than num_inference_steps), DDIM's eta, guidance_rescale's phi, and how a
# few-step model's runs are guided (precompute/fewstep.py: none, embedding)
SAMPLER_CONFIG = ("num_timesteps", "eta", "guidance_rescale", "guidance_mode")
# config.json keys of an SDXL bundle the text level shows: size and crop conditioning
MODEL_CONFIG = ("conditioning",)
# run.json keys of a run made with a negative prompt, guidance_rescale or a guidance mode
RUN_SAMPLER = ("negative_prompt_id", "guidance_rescale", "guidance_rescale_std_ratio",
               "guidance_mode")


def num_key(x) -> str:
    """A number as JavaScript's String() writes it (7 -> "7", 7.5 -> "7.5"): JSON keys."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def bundle_url(rel: str, sha256: str | None) -> str:
    return f"bundle/{rel}?v={sha256[:VERSION_CHARS]}" if sha256 else f"bundle/{rel}"


def run_version(b: Bundle, rid: str) -> str:
    """The ?v= of a run's API arrays and images: its run.json's checksum, which changes
    whenever any of the run's files (and so anything derived from them) does."""
    return b.index["runs"][rid]["sha256"][:VERSION_CHARS]


def api_arrays(b: Bundle, rid: str) -> list[str]:
    """Arrays of a run served by the API (encoded or derived), not as bundle files."""
    return [n for n, e in b.runs[rid]["arrays"].items() if not is_file_array(e)]


def api_images(b: Bundle, rid: str) -> list[str]:
    """Images of a run rendered by the server (the previews of a compact bundle)."""
    return [n for n, e in b.runs[rid]["images"].items() if e.get("derived") is True]


def _version() -> str:
    try:
        return metadata.version("noisepath")
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------- index

def index(b: Bundle) -> dict:
    cfg = b.config
    model_info = cfg.get("model_info") or {}
    groups_of: dict[str, list[str]] = {pid: [] for pid in b.index["prompts"]}
    for g in b.index["groups"]:
        for pid in g.get("prompts", []):
            groups_of.setdefault(pid, []).append(g["id"])
    runs = {rid: {"prompt_id": r["prompt_id"], "seed": r["seed"],
                  "guidance_scale": r["guidance_scale"], **control_entry(r)}
            for rid, r in b.runs.items()}
    return {
        "title": cfg.get("title", "Noisepath"),
        "description": cfg.get("description", ""),
        "default_guidance_scale": cfg.get("default_guidance_scale"),
        "config": {
            "model": cfg["model"], "scheduler": cfg["scheduler"],
            "num_inference_steps": cfg["num_inference_steps"],
            "height": cfg.get("height"), "width": cfg.get("width"),
            "image_size": cfg.get("image_size"), "latent_shape": cfg["latent_shape"],
            "storage": cfg.get("storage", "full"),
            "prediction_type": cfg.get("prediction_type", model_info.get("prediction_type")),
            **{k: cfg[k] for k in SAMPLER_CONFIG if cfg.get(k) is not None},
            **{k: cfg[k] for k in MODEL_CONFIG if cfg.get(k) is not None},
        },
        "seeds": sorted({r["seed"] for r in runs.values()}),
        "guidance_scales": sorted({r["guidance_scale"] for r in runs.values()}),
        "groups": [{"id": g["id"], "title": g.get("title", g["id"]),
                    "prompts": list(g.get("prompts", [])),
                    "highlights": g.get("highlights", {})} for g in b.index["groups"]],
        "prompts": {pid: {"text": p["text"], "groups": groups_of.get(pid, [])}
                    for pid, p in b.index["prompts"].items()},
        "runs": runs,
        "run_lookup": run_lookup(b),
        "control_lookup": control_lookup(b),
        "trajectories": sorted(int(s) for s in b.trajectories),
        "fewstep": b.fewstep is not None,  # the app asks for api/fewstep/ only then (no 404)
        "skipped_runs": list(b.skipped_runs),
        "about": {
            "app": "noisepath", "version": _version(),
            "format": FORMAT, "format_version": b.index.get("format_version"),
            "dtype": cfg.get("dtype"), "model_info": model_info,
            "scheduler_config": cfg.get("scheduler_config", {}),
        },
    }


def run_lookup(b: Bundle) -> dict:
    """prompt_id -> seed -> guidance -> run_id; guidance 0 is the shared run of the prompt's
    negative prompt (its guided runs' negative_prompt_id; the empty prompt's without one)."""
    lookup: dict[str, dict[str, dict[str, str]]] = {}
    shared = {}  # (negative prompt id, seed) -> the guidance-0 run (its prompt_id)
    negative = {}  # prompt id -> its negative prompt's id
    for rid, r in b.runs.items():
        if "controlnet" in r:  # a ControlNet run: control_lookup
            continue
        if float(r["guidance_scale"]) == 0.0:
            shared[r["prompt_id"], num_key(r["seed"])] = rid
        else:
            negative[r["prompt_id"]] = b.runs[rid].get("negative_prompt_id", EMPTY_PROMPT_ID)
        lookup.setdefault(r["prompt_id"], {}).setdefault(num_key(r["seed"]), {})[
            num_key(r["guidance_scale"])] = rid
    for pid in b.index["prompts"]:
        nid = negative.get(pid, EMPTY_PROMPT_ID)
        for (owner, seed), rid in shared.items():
            if owner == nid:
                lookup.setdefault(pid, {}).setdefault(seed, {})["0"] = rid
    return lookup


def control_entry(m: dict) -> dict:
    """index.runs' fields of a ControlNet run: its control_id and conditioning scale."""
    cn = m.get("controlnet")
    return {} if cn is None else {"control_id": cn["control_id"],
                                  "controlnet_conditioning_scale": cn["conditioning_scale"]}


def control_lookup(b: Bundle) -> dict:
    """prompt_id -> seed -> guidance -> control_id -> conditioning scale -> run_id, for the
    ControlNet runs; scale "0" is the run without control from the same noise (its
    uncontrolled_run_id, when that run is in the bundle)."""
    lookup: dict = {}
    for rid, r in b.runs.items():
        cn = r.get("controlnet")
        if cn is None:
            continue
        by_scale = lookup.setdefault(r["prompt_id"], {}).setdefault(num_key(r["seed"]), {}) \
            .setdefault(num_key(r["guidance_scale"]), {}).setdefault(cn["control_id"], {})
        by_scale[num_key(cn["conditioning_scale"])] = rid
        if cn["uncontrolled_run_id"] in b.runs:
            by_scale["0"] = cn["uncontrolled_run_id"]
    return lookup


# ------------------------------------------------------------------------ prompts

TOKEN_KEYS = ("input_ids", "pieces", "n_real", "truncated", "dropped_pieces")


def prompt(b: Bundle, pid: str) -> dict:
    p = b.prompts[pid]
    emb = p["arrays"]["text_embeddings"]
    tokens = p["tokens"]
    return {
        "prompt_id": pid, "text": p["text"],
        "tokens": {k: tokens.get(k) for k in TOKEN_KEYS},
        # SDXL: the second tokenizer's tokens; zeroed: the vectors are zeros (precompute/sdxl.py)
        **({"tokens_2": {k: p["tokens_2"].get(k) for k in TOKEN_KEYS}} if "tokens_2" in p else {}),
        **({"zeroed": p["zeroed"]} if "zeroed" in p else {}),
        "text_embeddings": {"url": bundle_url(f"prompts/{pid}/{emb['file']}", emb.get("sha256")),
                            "dtype": emb["dtype"], "shape": emb["shape"]},
        "empty_prompt_id": EMPTY_PROMPT_ID if EMPTY_PROMPT_ID in b.prompts else None,
    }


# --------------------------------------------------------------------------- runs

def run_numbers(b: Bundle, rid: str) -> tuple[dict, dict]:
    """(stats, centre) of a run, read once from its memory-mapped arrays.

    stats: name -> per-step list or None; centre: name -> (frames, C) array of the
    values at the latent's centre pixel, or None when the array is absent.
    """
    arrays = b.runs[rid]["arrays"]
    stats, centre = {}, {}
    for name, (array, how) in STATS.items():
        if array not in arrays:
            stats[name] = None
            continue
        a = np.asarray(b.array(rid, array), dtype=np.float32)         # (frames, C, h, w)
        flat = a.reshape(a.shape[0], -1)
        v = flat.std(axis=1) if how == "std" else np.sqrt(np.square(flat).sum(axis=1))
        stats[name] = [float(x) for x in v]
    for array in {a for a, _ in CENTRE.values()}:
        if array in arrays:
            a = b.array(rid, array)                                     # (frames, C, h, w)
            centre[array] = np.asarray(a[:, :, a.shape[2] // 2, a.shape[3] // 2],
                                       dtype=np.float32)                # (frames, C)
    return stats, centre


def run(b: Bundle, rid: str, stats: dict) -> dict:
    m = b.runs[rid]
    return {
        "run_id": rid, "prompt_id": m["prompt_id"], "seed": m["seed"],
        "guidance_scale": m["guidance_scale"], "num_inference_steps": m["num_inference_steps"],
        "scheduler": m["scheduler"], "latent_preview": m.get("latent_preview"),
        "attention": m.get("attention"),
        "images": {name: image_entry(b, rid, name) for name in m["images"]},
        "arrays": {name: {"url": array_url(b, rid, name), "dtype": e["dtype"],
                          "shape": e["shape"]}
                   for name, e in m["arrays"].items()},
        "stats": stats,
        **{k: m[k] for k in RUN_SAMPLER if k in m},
        **({"controlnet": m["controlnet"]} if "controlnet" in m else {}),
    }


def array_url(b: Bundle, rid: str, name: str) -> str:
    e = b.runs[rid]["arrays"][name]
    if is_file_array(e):
        return bundle_url(f"runs/{rid}/{e['file']}", e.get("sha256"))
    return f"api/runs/{rid}/arrays/{name}.npy?v={run_version(b, rid)}"


# what a run document tells of a sprite besides its url and mime (a lossy one's quality
# and measured error, in 0-255 levels: backend/previews.py, frame_errors)
IMAGE_FACTS = ("count", "frame_width", "frame_height", "columns", "approximate", "quality",
               *previews.ERROR_KEYS)


def api_image_path(b: Bundle, rid: str, name: str) -> str:
    """The API path of a preview the server renders: its extension follows the entry's
    mime (latents.png, or latents.jpg for JPEG previews)."""
    fmt = previews.MIME_FORMAT.get(b.runs[rid]["images"][name]["mime"], "png")
    return f"api/runs/{rid}/images/{name}.{previews.FORMATS[fmt][0]}"


def image_entry(b: Bundle, rid: str, name: str) -> dict:
    e = b.runs[rid]["images"][name]
    url = (f"{api_image_path(b, rid, name)}?v={run_version(b, rid)}" if e.get("derived") is True
           else bundle_url(f"runs/{rid}/{e['file']}", e.get("sha256")))
    return {"url": url, "mime": e["mime"], **{k: e[k] for k in IMAGE_FACTS if k in e}}


def step(b: Bundle, rid: str, i: int, centre: dict) -> dict:
    m = b.runs[rid]
    sched = m["scheduler"]
    sigmas = sched.get("sigmas")
    out = {"run_id": rid, "step": i, "timestep": sched["timesteps"][i],
           "sigma": sigmas[i] if sigmas is not None else None,
           "alpha_cumprod": sched["alphas_cumprod"][i], "weaken": sched["weaken"][i],
           "guidance_scale": m["guidance_scale"],
           # the call's scheduler step and a stochastic step's noise factor, where recorded
           "step_index": sched["step_index"][i] if "step_index" in sched else None,
           "noise_scale": sched["noise_scale"][i] if "noise_scale" in sched else None,
           "multistep": multistep_at(sched, i)}
    for name, (array, offset) in CENTRE.items():
        values = centre.get(array)
        out[name] = None if values is None else [float(x) for x in values[i + offset]]
    return out


def multistep_at(sched: dict, i: int) -> dict | None:
    """A multistep solver's call i (docs/bundle-format.md, scheduler.multistep): this
    call's share of the step's move, the earlier calls' (newest first), how many calls
    those hold; None for other schedulers and older bundles."""
    record = sched.get("multistep")
    if not record:
        return None
    return {key: record[key][i] for key in ("current", "history", "history_calls")}


# ---------------------------------------------------------------------- attention

def attention_array_name(b: Bundle, rid: str, res: str) -> str | None:
    """The run's array holding resolution `res` ("combined" or "16"), or None."""
    att = b.runs[rid].get("attention")
    if not att:
        return None
    if res == "combined":
        return "attention"
    if res in {str(r) for r in att.get("resolutions", [])}:
        name = f"attention_res{res}"
        return name if name in b.runs[rid]["arrays"] else None
    return None


def npy_bytes(a: np.ndarray) -> bytes:
    """A NumPy 1.0-format .npy of `a` as little-endian float16, C order."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a, dtype="<f2"), version=(1, 0),
                              allow_pickle=False)
    return buf.getvalue()


def run_array(b: Bundle, rid: str, name: str) -> bytes:
    return npy_bytes(b.array(rid, name))                               # (T, C, h, w) ...


def run_image(b: Bundle, rid: str, name: str) -> bytes:
    """A preview sprite, rendered as the writer renders it for a full bundle, in the format
    and quality its entry records."""
    m = b.runs[rid]
    return previews.preview_sprite(name, b.array(rid, name), m["latent_preview"],
                                   m["scheduler"].get("sigmas"),
                                   *previews.entry_format(m["images"][name]))[0]


def attention_token(b: Bundle, rid: str, name: str, k: int) -> bytes:
    return npy_bytes(b.array(rid, name)[k])                            # (T, r, r)


def attention_step(b: Bundle, rid: str, name: str, i: int) -> bytes:
    return npy_bytes(b.array(rid, name)[:, i])                         # (K, r, r)


# ---------------------------------------------------------------- sweeps, trajectories

def sweep_keys(b: Bundle) -> list[tuple[str, str]]:
    """(prompt_id, seed) pairs that have a sweep: a prompt's own run at that seed."""
    return sorted({(r["prompt_id"], num_key(r["seed"])) for r in b.runs.values()})


def sweep(b: Bundle, pid: str, seed: str) -> dict:
    by_guidance = run_lookup(b).get(pid, {}).get(seed, {})
    runs = []
    for rid in sorted(set(by_guidance.values()), key=lambda r: b.runs[r]["guidance_scale"]):
        m = b.runs[rid]
        decoded = image_entry(b, rid, "decoded")
        runs.append({"guidance_scale": m["guidance_scale"], "run_id": rid,
                     "decoded": decoded, "final_frame": decoded["count"] - 1})
    return {"prompt_id": pid, "seed": int(seed), "runs": runs}


def trajectory(b: Bundle, seed: str) -> dict:
    t = b.trajectories[seed]
    return {"seed": int(seed), "method": t["method"],
            "runs": {rid: xy for rid, xy in t["runs"].items() if rid in b.runs}}

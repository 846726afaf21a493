"""The JSON API (docs/api.md): thin views over the bundle store.

Each view checks its ids and indices (404 for an unknown id, 400 for an index out of
range) and sends a body the store built once.
"""

from __future__ import annotations

import re

from flask import Blueprint, request

from backend import payloads
from backend.errors import bad_request, not_found
from backend.resource import IMMUTABLE, REVALIDATE, send
from backend.store import Store, get_store

bp = Blueprint("api", __name__, url_prefix="/api")

# an index as the export names its files: no sign, no leading zeros, no unicode digits
_INDEX = re.compile(r"0|[1-9][0-9]{0,17}", re.ASCII)


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def index_or_400(text: str, n: int, what: str) -> int:
    if _INDEX.fullmatch(text) and int(text) < n:
        return int(text)
    bad_request(f"{what} {_show(text)} is out of range: use an integer from 0 to {n - 1}")


def run_or_404(store: Store, run_id: str) -> str:
    if run_id not in store.runs:
        skipped = " (it was skipped as invalid at startup)" \
            if run_id in store.bundle.skipped_runs else ""
        not_found(f"unknown run {_show(run_id)}{skipped}; api/index.json lists the runs")
    return run_id


def attention_or_404(store: Store, run_id: str, res: str) -> str:
    resolutions = store.resolutions(run_id)
    if not resolutions:
        not_found(f"run {_show(run_id)} has no attention maps (guidance 0 ignores the prompt)")
    if res not in resolutions:
        not_found(f"unknown resolution {_show(res)}: run {run_id} has "
                  f"{', '.join(resolutions)}")
    return store.attention_name(run_id, res)


@bp.get("/index.json")
def index():
    return send(get_store().index)


@bp.get("/prompts/<prompt_id>.json")
def prompt(prompt_id: str):
    res = get_store().prompts.get(prompt_id)
    if res is None:
        not_found(f"unknown prompt {_show(prompt_id)}; api/index.json lists the prompts")
    return send(res)


@bp.get("/runs/<run_id>.json")
def run(run_id: str):
    store = get_store()
    return send(store.runs[run_or_404(store, run_id)])


@bp.get("/runs/<run_id>/steps/<step>.json")
def step(run_id: str, step: str):
    store = get_store()
    run_or_404(store, run_id)
    return send(store.step(run_id, index_or_400(step, store.steps, "step")))


@bp.get("/runs/<run_id>/attention/<res>/tokens/<token>.npy")
def attention_token(run_id: str, res: str, token: str):
    store = get_store()
    name = attention_or_404(store, run_or_404(store, run_id), res)
    k = index_or_400(token, store.n_tokens(run_id), "token")
    return send(store.attention_token(run_id, name, k))


@bp.get("/runs/<run_id>/attention/<res>/steps/<step>.npy")
def attention_step(run_id: str, res: str, step: str):
    store = get_store()
    name = attention_or_404(store, run_or_404(store, run_id), res)
    return send(store.attention_step(run_id, name, index_or_400(step, store.steps, "step")))


def versioned(store: Store, run_id: str) -> str:
    """Immutable caching for a URL with the run's ?v= (the URL changes with the run)."""
    return IMMUTABLE if request.args.get("v") == store.versions[run_id] else REVALIDATE


@bp.get("/runs/<run_id>/arrays/<name>.npy")
def run_array(run_id: str, name: str):
    store = get_store()
    if name not in store.api_arrays[run_or_404(store, run_id)]:
        not_found(f"run {run_id} serves no array {_show(name)} here; the run document's "
                  "arrays.<name>.url says where each array is")
    return send(store.run_array(run_id, name), versioned(store, run_id))


@bp.get("/runs/<run_id>/images/<name>.<ext>")
def run_image(run_id: str, name: str, ext: str):
    store = get_store()
    path = f"api/runs/{run_id}/images/{name}.{ext}"  # the extension follows the entry's mime
    if (name not in store.api_images[run_or_404(store, run_id)]
            or payloads.api_image_path(store.bundle, run_id, name) != path):
        not_found(f"run {run_id} renders no image {_show(name)}; the run document's "
                  "images.<name>.url says where each image is")
    return send(store.run_image(run_id, name), versioned(store, run_id))


@bp.get("/sweeps/<prompt_id>/<seed>.json")
def sweep(prompt_id: str, seed: str):
    res = get_store().sweeps.get((prompt_id, seed))
    if res is None:
        not_found(f"no guidance sweep for prompt {_show(prompt_id)} and seed {_show(seed)}; "
                  "api/index.json's run_lookup lists what exists")
    return send(res)


@bp.get("/trajectories/<seed>.json")
def trajectory(seed: str):
    res = get_store().trajectories.get(seed)
    if res is None:
        not_found(f"no trajectory map for seed {_show(seed)}; api/index.json's "
                  "trajectories lists the seeds that have one")
    return send(res)

"""The static export's packed layout (docs/api.md, "Static export"): which files
`noisepath export` writes for a bundle, and their bodies.

`noisepath serve` answers a run one step, one token and one decoded array at a time;
written out one file per answer, the shipped demo bundle became 890 MB in 61,401 files.
The export instead holds, per run, what the front end needs once, and the front end
(frontend/js/packed.js) cuts each answer out of it:

- `api/runs/<id>/steps.json`: the run's step documents, one JSON array;
- `api/runs/<id>/arrays/<name>.q8.npz`: a compact bundle's q8-delta arrays that the app
  reads (latents and the attention levels), with deflated members, since browsers
  inflate deflate but not the bundle's LZMA;
- the run document gains `packed` entries saying where each of those arrays comes from
  (that file, or derived from others: the combined attention map), and lists only the
  arrays the export holds; api/index.json gains `export`, which switches the front end
  to this layout.

Every other API document and the bundle's own files are written as the server sends
them. Pure functions of the store and its bundle: no files written here.
"""

from __future__ import annotations

import json
import zipfile
from typing import Iterator

from backend import codec, fewstep_examples, speech_examples
from backend.bundle import UNREADABLE, inside, is_file_array
from backend.payloads import api_image_path, run_version
from backend.resource import json_bytes

LAYOUT = {"layout": "packed", "version": 1}
# read by the comparison view (js/compare-model.js) and the refiner's added noise of a
# stochastic run (js/model.js addedNoise), besides attention
APP_ARRAYS = ("latents", "variance_noise")


class PackError(Exception):
    """A bundle file that cannot be packed: the message names it."""


def documents(store) -> Iterator[str]:
    """The API paths exported as the server answers them (the run documents and the
    index are changed on the way: `run_document`, `index_document`)."""
    yield "api/index.json"
    yield from (f"api/prompts/{pid}.json" for pid in store.prompts)
    for rid in store.runs:
        yield f"api/runs/{rid}.json"
        yield from (api_image_path(store.bundle, rid, name)
                    for name in store.api_images[rid])
    yield from (f"api/sweeps/{pid}/{seed}.json" for pid, seed in store.sweeps)
    yield from (f"api/trajectories/{seed}.json" for seed in store.trajectories)
    yield from speech_examples.api_paths(store.bundle)  # the spoken examples and their files
    yield from fewstep_examples.api_paths(store.bundle)  # the few-step comparison and sprites


def index_document(body: bytes) -> bytes:
    return json_bytes({**json.loads(body), "export": LAYOUT})


def app_arrays(store, rid: str) -> list[str]:
    """The run arrays the front end reads (the comparison's latents, every attention
    level it can show and a ControlNet run's maps), with the arrays they are derived from."""
    arrays = store.bundle.runs[rid]["arrays"]
    wanted = [n for n in APP_ARRAYS if n in arrays]
    wanted += [store.attention_name(rid, res) for res in store.resolutions(rid)]
    wanted += (store.bundle.runs[rid].get("controlnet") or {}).get("maps", [])  # ControlNet's
    names: list[str] = []
    while wanted:
        name = wanted.pop(0)
        if name not in names:
            names.append(name)
            wanted += arrays[name].get("from", []) if "derived" in arrays[name] else []
    return names


def packed_arrays(store, rid: str) -> list[str]:
    """The app's arrays that the export writes as api/runs/<id>/arrays/<name>.q8.npz."""
    arrays = store.bundle.runs[rid]["arrays"]
    return [n for n in app_arrays(store, rid) if arrays[n].get("encoding") == codec.ENCODING]


def packed_url(store, rid: str, name: str) -> str:
    return f"api/runs/{rid}/arrays/{name}.q8.npz?v={run_version(store.bundle, rid)}"


def run_document(store, rid: str, body: bytes) -> bytes:
    """The server's run document with `packed` entries, listing the arrays the export holds:
    every stored .npy (copied with the bundle) and the app's encoded and derived arrays."""
    doc = json.loads(body)
    manifest = store.bundle.runs[rid]["arrays"]
    app = app_arrays(store, rid)
    arrays = {}
    for name, entry in doc["arrays"].items():
        m = manifest[name]
        if is_file_array(m):
            arrays[name] = entry
        elif name in app:
            how = ({"derived": m["derived"], "from": list(m["from"])} if "derived" in m
                   else {"url": packed_url(store, rid, name), "encoding": m["encoding"],
                         **({"stored_shape": m["stored_shape"]} if "stored_shape" in m else {})})
            arrays[name] = {**entry, "packed": how}
    return json_bytes({**doc, "arrays": arrays})


def steps_document(bodies: list[bytes]) -> bytes:
    """The run's step documents, in order, as one JSON array (the bodies unchanged)."""
    return b"[" + b",".join(bodies) + b"]"


def packed_array(store, rid: str, name: str) -> bytes:
    """An encoded array for the browser: the bundle file's q8-delta members, deflated
    (written the same way every time, so the bytes follow from the bundle's)."""
    entry = store.bundle.runs[rid]["arrays"][name]
    try:
        path = inside(store.bundle.root / "runs" / rid, entry["file"])
        stored = entry.get("stored_shape", entry["shape"])  # resized attention: smaller maps
        members = codec.read_npz(path, limits=codec.member_limits(stored))
        codec.check_members(members, stored)
    except UNREADABLE as e:
        raise PackError(f"bundle file runs/{rid}/{entry['file']}: cannot be packed ({e})") from e
    return codec.npz_bytes(members, zipfile.ZIP_DEFLATED)

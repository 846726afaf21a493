"""The bundle's few-step comparison (docs/bundle-format.md, "Few-step comparison"): the
optional `fewstep/` section that `python -m precompute.fewstep_bundle BUNDLE` writes.
Each example is a prompt and a seed whose one noise went through the teacher at 50, 4
and 1 steps and through the students (a 2-rectified flow, a one-step student): each
path's latents and predicted final latents on one 2-D map, its chord, its straightness
and a sprite of its predicted final images.

This module owns the section's names and its serving:
- the names (SECTION, INDEX, FORMAT, VERSION, ...) the builder, the validator
  (backend/validate_fewstep.py) and the server share;
- `kept_section`: the checked section as served (a `run_id` whose run is not served,
  under serve --skip-invalid, becomes null);
- the blueprint: GET api/fewstep/index.json and GET api/fewstep/files/<file> (404 JSON
  for a bundle without the section, and for a name the index does not list: names are
  looked up, never used as paths), which `noisepath export` writes (`api_paths`).

No torch: serving reads JSON and files only.
"""

from __future__ import annotations

SECTION = "fewstep"
INDEX = f"{SECTION}/index.json"
FILES = f"{SECTION}/files"
FORMAT = "noisepath-fewstep"
VERSION = 1
INDEX_URL = "api/fewstep/index.json"
FILES_URL = "api/fewstep/files"
EXTENSION_KEY = "noisepath.fewstep"
MIME = {".webp": "image/webp", ".png": "image/png"}  # a sprite's type, by its name's suffix


def kept_section(section: dict | None, runs: dict) -> dict | None:
    """The checked section with each example's run_id null where that run is not served."""
    if section is None:
        return None
    examples = [{**e, "run_id": e["run_id"] if e.get("run_id") in runs else None}
                for e in section["examples"]]
    return {**section, "examples": examples}


def files_of(section: dict | None) -> dict[str, str]:
    """sprite file name -> sha256, for every path of every example."""
    if section is None:
        return {}
    return {p["images"]["file"]: p["images"]["sha256"]
            for e in section["examples"] for p in e["paths"]}


def served_document(section: dict) -> dict:
    """api/fewstep/index.json: the section's index, each sprite with the URL the page
    loads (?v= its sha256's start: cached for good)."""
    from backend.payloads import VERSION_CHARS

    def path(p):
        image = p["images"]
        url = f"{FILES_URL}/{image['file']}?v={image['sha256'][:VERSION_CHARS]}"
        return {**p, "images": {**image, "url": url}}
    return {**section, "examples": [{**e, "paths": [path(p) for p in e["paths"]]}
                                    for e in section["examples"]]}


def api_paths(bundle) -> list[str]:
    """The URL paths (no leading slash) the app answers for the section: what `noisepath
    export` writes (backend/export_pack.py); none without the section."""
    section = getattr(bundle, "fewstep", None)
    if section is None:
        return []
    return [INDEX_URL] + [f"{FILES_URL}/{name}" for name in sorted(files_of(section))]


def init_app(app) -> None:
    """Register the section's routes over the app's bundle (store.init_app first)."""
    from flask import Blueprint, current_app, request

    from backend.errors import not_found
    from backend.payloads import VERSION_CHARS
    from backend.resource import IMMUTABLE, REVALIDATE, json_resource, make_resource, send
    from backend.store import get_store_of

    bundle = get_store_of(app).bundle
    section = getattr(bundle, "fewstep", None)
    app.extensions[EXTENSION_KEY] = {
        "document": json_resource(served_document(section)) if section is not None else None,
        "files": files_of(section), "bodies": {}}
    bp = Blueprint("fewstep_examples", __name__, url_prefix="/api/fewstep")

    @bp.get("/index.json")
    def index():
        document = current_app.extensions[EXTENSION_KEY]["document"]
        if document is None:
            not_found("this bundle has no few-step comparison (its fewstep/ section: "
                      "python -m precompute.fewstep_bundle BUNDLE adds one)")
        return send(document)

    @bp.get("/files/<name>")
    def file(name: str):
        served = current_app.extensions[EXTENSION_KEY]
        sha = served["files"].get(name)
        path = bundle.file_path(f"{FILES}/{name}") if sha else None
        if path is None:
            not_found(f"no few-step sprite {name[:80]!r}; api/fewstep/index.json gives the "
                      "URLs")
        if name not in served["bodies"]:
            try:
                body = path.read_bytes()
            except OSError as e:
                not_found(f"few-step sprite {name!r} cannot be read ({e.strerror or e})")
            served["bodies"][name] = make_resource(body, MIME[name[name.rindex("."):]])
        fresh = request.args.get("v") == sha[:VERSION_CHARS]
        return send(served["bodies"][name], IMMUTABLE if fresh else REVALIDATE)

    app.register_blueprint(bp)

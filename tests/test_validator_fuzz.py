"""Hostile bundles: a valid bundle's JSON documents mutated at random (values of other
types, keys deleted or renamed, NaN and infinities, negative and huge numbers, ids that
are paths). The promise (docs/bundle-format.md, "What validation guarantees"): either
validation names the file and field of a problem and the reader refuses the bundle with
a BundleError, or the app answers every URL it lists without a 5xx. Never an exception.

50 bundles per run (about 5 s of CPU); 800 more with `pytest -m slow tests/test_validator_fuzz.py`.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import create_app
from backend.bundle import Bundle
from backend.format import BundleError
from backend.validator import validate_bundle
from tests.synthetic_bundle import make_bundle

FAST = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

VALUES = [None, True, False, 0, 1, -1, 4, 5, 77, 2**63, 10**30, -10**30, 10**400, 0.5, -0.5,
          1e308, float("nan"), float("inf"), float("-inf"), "", "x", "float16", "q8-delta",
          "image/png", "yes", "nan", "../../../evilrun", "/etc/passwd", "a/b", "..", ".work",
          "latents.npy", "../run.json", "\x00", "x" * 300, [], {}, [1], [[1, 2]], [None],
          {"file": "../../bundle.json"}, {"a": 1}]
KEYS = ["", "../../../evilrun", "..", "a/b", ".work", "nan", "NaN", "-1", "01", "1.5",
        "\x00", "x" * 300, "latents", "attention_res99", "attention", "empty", "noise_pred"]


@pytest.fixture(scope="module", params=["full", "compact"])
def bundle(request, tmp_path_factory):
    """A tiny bundle (2 steps, 4x4 latents, one prompt pair, guidance 0 and 7) that the
    test mutates and restores, and its JSON documents' original text."""
    root = make_bundle(tmp_path_factory.mktemp(request.param) / "b", storage=request.param,
                       steps=2, seeds=(1,), guidance_scales=(0, 7), latent=4, image_size=8,
                       prompts=[("a red circle", "a blue star")])
    docs = ["bundle.json"] + sorted(str(p.relative_to(root)) for pattern in
                                    ("runs/*/run.json", "prompts/*/prompt.json",
                                     "trajectories/*.json") for p in root.glob(pattern))
    originals = {rel: (root / rel).read_text() for rel in docs}
    assert validate_bundle(root) == []
    return root, originals


def nodes(doc, path=()):
    """Paths to the nodes of a JSON document (of a list only its first and last items)."""
    yield path
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from nodes(value, path + (key,))
    elif isinstance(doc, list) and doc:
        for i in sorted({0, len(doc) - 1}):
            yield from nodes(doc[i], path + (i,))


def mutate(doc, path, how, value, key):
    """The document with the node at `path` replaced by value, deleted, or (in an object)
    renamed to key."""
    if not path:
        return value if how == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[key] = parent.pop(last)
    return doc


def rechain(root, rel):
    """Re-record a mutated document's sha256 in bundle.json, so the mutation itself is
    what validation meets, not only a checksum mismatch."""
    from precompute.writer import sha256_file
    try:
        index = json.loads((root / "bundle.json").read_text())
        kind, key = rel.split("/")[:2]
        if kind == "trajectories":
            key = next(s for s, t in index["trajectories"].items() if t["file"] == rel)
        index[kind][key]["sha256"] = sha256_file(root / rel)
        (root / "bundle.json").write_text(json.dumps(index))
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
        pass  # bundle.json itself is broken already


_MANY = re.compile(r"/(steps|tokens)/([2-9]|[1-9][0-9]+)\.(json|npy)$")


def served_without_5xx(app) -> None:
    """Every URL the store lists (of steps and tokens the first two), and every bundle
    file it references, answers below 500."""
    store = app.extensions["noisepath.store"]
    client = app.test_client()
    urls = [p for p in store.api_paths() if not _MANY.search(p)]
    urls += [f"bundle/{rel}" for rel in store.files]
    for url in urls:
        r = client.get("/" + url)
        assert r.status_code < 500, (url, r.data[:300])


def check_mutated(root, frontend, checksums: bool) -> None:
    problems = validate_bundle(root, checksums=checksums)  # never raises
    assert all(isinstance(p.file, str) and isinstance(p.field, str) and p.message
               for p in problems)
    errors = [p for p in problems if p.severity == "error"]
    config = {"BUNDLE_DIR": root, "FRONTEND_DIR": frontend, "CHECKSUMS": checksums}
    if errors:
        with pytest.raises(BundleError):
            Bundle(root, checksums=checksums)
        try:  # serve --skip-invalid: refused as a whole, or the rest served
            app = create_app({**config, "SKIP_INVALID": True})
        except BundleError:
            return
    else:
        app = create_app(config)
    served_without_5xx(app)


def _mutated_bundles_never_crash(bundle, frontend, settings_):
    root, originals = bundle
    docs = sorted(originals)

    @settings_
    @given(data=st.data())
    def run(data):
        changed = set()
        try:
            for _ in range(data.draw(st.integers(1, 3), label="mutations")):
                rel = data.draw(st.sampled_from(docs), label="document")
                doc = json.loads((root / rel).read_text())
                path = data.draw(st.sampled_from(list(nodes(doc))), label="node")
                how = data.draw(st.sampled_from(["replace", "replace", "delete", "rename"]))
                value = data.draw(st.one_of(st.sampled_from(VALUES), st.integers(),
                                            st.floats(), st.text(max_size=8)), label="value")
                key = data.draw(st.sampled_from(KEYS), label="key")
                (root / rel).write_text(json.dumps(mutate(doc, path, how, value, key)))
                changed.add(rel)
                if rel != "bundle.json" and data.draw(st.booleans(), label="rechain"):
                    rechain(root, rel)
                    changed.add("bundle.json")
            check_mutated(root, frontend, checksums=data.draw(st.booleans(), label="checksums"))
        finally:
            for rel in changed:
                (root / rel).write_text(originals[rel])
    run()


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend")
    (root / "index.html").write_text("<!doctype html>")
    return root


def test_mutated_bundles_are_refused_by_name_or_served_without_5xx(bundle, frontend):
    _mutated_bundles_never_crash(bundle, frontend, FAST)


@pytest.mark.slow
def test_mutated_bundles_never_crash_many(bundle, frontend, asked_for):
    _mutated_bundles_never_crash(bundle, frontend, SLOW)


def test_the_mutation_machinery_reaches_the_server(bundle, frontend):
    """A mutation that keeps the bundle valid is served (the test is not all refusals)."""
    root, originals = bundle
    rel = "bundle.json"
    try:
        (root / rel).write_text(json.dumps(mutate(json.loads(originals[rel]), ("config", "title"),
                                                  "replace", "another title", None)))
        assert validate_bundle(root) == []
        app = create_app({"BUNDLE_DIR": root, "FRONTEND_DIR": frontend})
        served_without_5xx(app)
        assert json.loads(app.test_client().get("/api/index.json").data)["title"] == \
            "another title"
    finally:
        (root / rel).write_text(originals[rel])

"""`noisepath export`: a static site that answers every URL the front end requests."""

import argparse
import io
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from backend import codec, create_app, export_cli, export_pack
from backend.export_cli import ExportError, write_site
from tests.browser_helpers import SKIP_REASON, browser_available, serve_folder, wait_ready
from tests.synthetic_bundle import PROMPTS, make_bundle

JS = Path(__file__).resolve().parent.parent / "frontend" / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="needs node (to run the ES modules)")


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend")
    (root / "js").mkdir()
    (root / "index.html").write_text("<!doctype html><script type=module src=js/app.js>"
                                     "</script>")
    (root / "js" / "app.js").write_text("export {};\n")
    (root / ".git-keep").write_text("")
    return root


@pytest.fixture(scope="module")
def app(synthetic_bundle_ro, frontend):
    return create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": frontend})


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A smaller bundle for the tests of how the export is written."""
    return make_bundle(tmp_path_factory.mktemp("tiny") / "b", steps=2, seeds=(1,),
                       guidance_scales=(0, 7), prompts=PROMPTS[:1])


@pytest.fixture(scope="module")
def tiny_app(tiny_bundle, frontend):
    return create_app({"BUNDLE_DIR": tiny_bundle, "FRONTEND_DIR": frontend})


@pytest.fixture(scope="module")
def www(app, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    write_site(app, root / "course" / "noisepath")
    return root


@pytest.fixture(scope="module")
def site(www):
    """The export under a sub-path (/course/noisepath/) of a real HTTP server."""
    with serve_folder(www) as url:
        yield url + "course/noisepath/"


def fetch(base: str, url: str) -> bytes:
    with urllib.request.urlopen(urllib.parse.urljoin(base, url), timeout=10) as r:
        assert r.status == 200, url
        return r.read()


def urls_in(obj):
    """Every `url` field anywhere in a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "url" and isinstance(v, str):
                yield v
            else:
                yield from urls_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from urls_in(v)


def static_reads(get_json):
    """What the static front end fetches (js/api.js, js/packed.js), found only by following
    the export's own JSON: the documents, each run's steps.json, and every `url` in them
    but the api/.../arrays/<name>.npy ones, which it decodes from their `packed` entries."""
    index = get_json("api/index.json")
    yield "api/index.json"
    for pid in index["prompts"]:
        yield f"api/prompts/{pid}.json"
        yield from urls_in(get_json(f"api/prompts/{pid}.json"))
    for rid in index["runs"]:
        run = get_json(f"api/runs/{rid}.json")
        yield f"api/runs/{rid}.json"
        yield f"api/runs/{rid}/steps.json"
        yield from (u for u in urls_in(run)
                    if not (u.startswith("api/") and "/arrays/" in u and ".npy?" in u))
    for pid, by_seed in index["run_lookup"].items():
        for seed in by_seed:
            yield f"api/sweeps/{pid}/{seed}.json"
            yield from urls_in(get_json(f"api/sweeps/{pid}/{seed}.json"))
    for seed in index["trajectories"]:
        yield f"api/trajectories/{seed}.json"


def without_packing(doc: dict) -> dict:
    """An exported run document as the server sends it: no `packed` entries."""
    arrays = {n: {k: v for k, v in e.items() if k != "packed"} for n, e in doc["arrays"].items()}
    return {**doc, "arrays": arrays}


def check_static_reads(read, app) -> set[str]:
    """Every file the static front end fetches exists in the export and holds what the
    server answers (a run document: its arrays are the ones the export holds; steps.json:
    the server's step documents). Returns the URLs."""
    client = app.test_client()
    store = app.extensions["noisepath.store"]
    seen = set()
    for url in static_reads(lambda u: json.loads(read(u))):
        if url in seen:
            continue
        seen.add(url)
        body = read(url)
        if url == "api/index.json":
            assert json.loads(body) == {**client.get("/" + url).get_json(),
                                        "export": {"layout": "packed", "version": 1}}
        elif url.endswith("/steps.json"):
            rid = url.split("/")[2]
            assert json.loads(body) == [client.get(f"/api/runs/{rid}/steps/{i}.json").get_json()
                                        for i in range(store.steps)], url
        elif url.startswith("api/runs/") and url.count("/") == 2:
            served = client.get("/" + url).get_json()
            exported = without_packing(json.loads(body))
            assert exported == {**served, "arrays": {n: e for n, e in served["arrays"].items()
                                                     if n in exported["arrays"]}}, url
            rid = served["run_id"]
            assert set(export_pack.app_arrays(store, rid)) <= set(exported["arrays"]), url
        elif ".q8.npz?" not in url:
            assert body == client.get("/" + url).data, url
    return seen


def test_every_file_the_static_front_end_reads_exists_in_the_export(site, app):
    seen = check_static_reads(lambda u: fetch(site, u), app)
    assert len(seen) > 100
    assert any("?v=" in u for u in seen) and any(u.endswith("/steps.json") for u in seen)


def test_the_export_holds_one_steps_file_a_run_and_no_per_step_or_per_token_file(app, www):
    api = www / "course" / "noisepath" / "api"
    store = app.extensions["noisepath.store"]
    assert not list(api.rglob("steps/*")) and not list(api.rglob("attention"))
    for rid in store.runs:
        assert sorted(p.name for p in (api / "runs" / rid).iterdir()) == ["steps.json"]


def test_front_end_is_at_the_site_root(site):
    assert b"js/app.js" in fetch(site, "")
    assert fetch(site, "js/app.js") == b"export {};\n"
    with pytest.raises(urllib.error.HTTPError):
        fetch(site, ".git-keep")


def test_export_holds_only_the_referenced_bundle_files(app, www):
    out = www / "course" / "noisepath"
    bundle_files = {p.relative_to(out / "bundle").as_posix()
                    for p in (out / "bundle").rglob("*") if p.is_file()}
    assert bundle_files == set(app.extensions["noisepath.store"].files)
    assert not any(f.endswith(".json") for f in bundle_files)


def test_bundle_files_are_hard_linked_where_the_file_system_allows_else_copied(
        tiny_app, tmp_path, monkeypatch):
    store = tiny_app.extensions["noisepath.store"]
    rel = next(iter(store.files))
    write_site(tiny_app, tmp_path / "linked")
    if os.stat(store.bundle.root).st_dev == os.stat(tmp_path).st_dev:
        assert os.path.samefile(store.bundle.file_path(rel), tmp_path / "linked" / "bundle" / rel)

    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(export_cli.os, "link", refuse)
    write_site(tiny_app, tmp_path / "copied")
    copy = tmp_path / "copied" / "bundle" / rel
    assert not os.path.samefile(store.bundle.file_path(rel), copy)
    assert copy.read_bytes() == store.bundle.file_path(rel).read_bytes()


def test_refuses_a_non_empty_folder_unless_forced(tiny_app, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        write_site(tiny_app, out)
    assert (out / "keep.txt").read_text() == "mine"
    write_site(tiny_app, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "api" / "index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_folder_is_filled(tiny_app, tmp_path):
    (tmp_path / "out").mkdir()
    write_site(tiny_app, tmp_path / "out")
    assert (tmp_path / "out" / "index.html").is_file()


def test_a_failed_export_leaves_the_old_site_and_no_temporary_folder(tiny_app, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "out"
    write_site(tiny_app, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(export_pack, "documents", lambda store: iter(["api/index.json",
                                                                       "api/nope.json"]))
    with pytest.raises(ExportError, match="api/nope.json"):
        write_site(tiny_app, out, force=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("target", ["bundle", "bundle/sub", "frontend", "parent-of-frontend"])
def test_refuses_to_export_over_its_sources(app, synthetic_bundle_ro, frontend, target):
    out = {"bundle": synthetic_bundle_ro, "bundle/sub": synthetic_bundle_ro / "sub",
           "frontend": frontend, "parent-of-frontend": frontend.parent}[target]
    with pytest.raises(ExportError, match="overlaps"):
        write_site(app, out, force=True)


def parse(*argv):
    p = argparse.ArgumentParser()
    export_cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_exports_and_reports(tiny_bundle, tmp_path, capsys):
    assert export_cli.run(parse(str(tmp_path / "site"), "--bundle", str(tiny_bundle))) == 0
    assert "API files" in capsys.readouterr().out
    assert (tmp_path / "site" / "api" / "index.json").is_file()
    assert export_cli.run(parse(str(tmp_path / "site"), "--bundle", str(tiny_bundle))) == 1
    assert "--force" in capsys.readouterr().err


def test_cli_refuses_a_bad_bundle(synthetic_bundle, tmp_path, capsys):
    (synthetic_bundle / "runs" / "empty--s1-g0" / "run.json").write_text("{")
    assert export_cli.run(parse(str(tmp_path / "site"), "--bundle",
                                str(synthetic_bundle))) == 1
    assert "runs/empty--s1-g0/run.json" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def compact_app(compact_bundle_ro, frontend):
    return create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend})


@pytest.fixture(scope="module")
def compact_site(compact_app, tmp_path_factory):
    out = tmp_path_factory.mktemp("compact-www") / "site"
    write_site(compact_app, out)
    return out


def test_a_compact_bundle_exports_its_packed_arrays_and_rendered_previews(compact_site,
                                                                          compact_app):
    out = compact_site
    # a static server ignores the ?v= query, as the export's files do
    urls = check_static_reads(lambda u: (out / u.split("?")[0]).read_bytes(), compact_app)
    assert any("/arrays/latents.q8.npz?v=" in u for u in urls)
    assert any("/images/latents.png?v=" in u for u in urls)
    assert not list((out / "api").rglob("*.npy"))
    assert not list((out / "bundle" / "runs").rglob("*.np[yz]"))


def test_packed_arrays_decode_to_the_arrays_the_server_sends(compact_site, compact_app):
    """The packed files' members, decoded and derived as codec.py does and cast to float16,
    are the server's api/.../arrays/<name>.npy bodies, value for value."""
    store = compact_app.extensions["noisepath.store"]
    client = compact_app.test_client()
    checked = 0
    for rid in store.runs:
        run = json.loads((compact_site / f"api/runs/{rid}.json").read_bytes())
        values = {}

        def decode(name):
            how = run["arrays"][name]["packed"]
            if "derived" in how:
                return codec.derive(how["derived"], [decode(n) for n in how["from"]],
                                    run["arrays"][name]["shape"], run["guidance_scale"])
            return codec.load(compact_site / how["url"].split("?")[0], codec.step_axis(name),
                              run["arrays"][name]["shape"], how.get("stored_shape"))

        for name, entry in run["arrays"].items():
            values[name] = decode(name).astype(np.float16)
            served = np.load(io.BytesIO(client.get("/" + entry["url"]).data))
            np.testing.assert_array_equal(values[name], served, err_msg=f"{rid} {name}")
            checked += 1
        assert set(values) == set(export_pack.app_arrays(store, rid))
    assert checked > 10


def test_a_bundle_file_symlinked_out_of_the_bundle_is_refused_by_name(tiny_bundle, tmp_path,
                                                                      capsys):
    """Nothing outside the bundle is exported: one line naming the file, no site written."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    sprite = next((bundle / "runs").glob("*/decoded.*"))
    outside = tmp_path / "elsewhere" / sprite.name
    outside.parent.mkdir()
    shutil.move(sprite, outside)
    sprite.symlink_to(outside)
    code = export_cli.run(parse(str(tmp_path / "site"), "--bundle", str(bundle)))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert sprite.relative_to(bundle).as_posix() in err
    assert not (tmp_path / "site").exists()


def test_an_output_folder_inside_a_file_is_refused(tiny_app, tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ExportError, match=f"{tmp_path / 'file'} is a file, so "
                                          f"{tmp_path / 'file' / 'site'} cannot be made"):
        write_site(tiny_app, tmp_path / "file" / "site")
    assert (tmp_path / "file").read_text() == "mine"


def test_force_through_a_symlinked_folder_replaces_its_target_and_keeps_the_link(tiny_app,
                                                                                 tmp_path):
    real = tmp_path / "www" / "real"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("old site")
    (tmp_path / "link").symlink_to(real)
    write_site(tiny_app, tmp_path / "link", force=True)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == real
    assert (real / "index.html").is_file() and not (real / "old.txt").exists()
    # nothing left beside the link or the folder (no .link.old-*, .real.old-*, .tmp-*)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "www"]
    assert [p.name for p in real.parent.iterdir()] == ["real"]


# -- the front end's side of the packed layout (js/api.js, js/packed.js), run in node

API_DRIVER = """
import { createApi, urls } from "./api.js";
import { existsSync, readFileSync } from "node:fs";
const [root, casesPath] = process.argv.slice(2);
globalThis.fetch = async (url) => {  // a static server: the file at the path, the query ignored
  const path = `${root}/${url.split("?")[0]}`;
  return existsSync(path) ? new Response(readFileSync(path)) : new Response("", { status: 404 });
};
const api = createApi();
await api.load(urls.index());
const out = [];
for (const { url, kind } of JSON.parse(readFileSync(casesPath, "utf8"))) {
  const value = await api.load(url, kind);
  out.push(kind === "npy" ? { shape: value.shape, data: Array.from(value.data) } : value);
}
process.stdout.write(JSON.stringify(out));
"""

NUMBERS_DRIVER = """
import { attentionMean, halfBits } from "./packed.js";
import { readFileSync } from "node:fs";
const { values, levels, size } = JSON.parse(readFileSync(process.argv[2], "utf8"));
const arrays = levels.map((l) => ({ data: Float32Array.from(l.data), shape: l.shape }));
const mean = attentionMean(arrays, size);
process.stdout.write(JSON.stringify({ half: values.map(halfBits), mean: Array.from(mean.data) }));
"""


def run_node(tmp_path: Path, driver: str, *args) -> object:
    """Run `driver` as an ES module beside copies of the front end's modules."""
    for name in ("api.js", "npy.js", "packed.js"):
        shutil.copy(JS / name, tmp_path / name)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "driver.js").write_text(driver)
    proc = subprocess.run([NODE, str(tmp_path / "driver.js"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cut_urls(store) -> list[dict]:
    """Every per-step, per-token and array URL the views ask for (js/api.js's `urls`)."""
    cases = []
    for rid in store.runs:
        cases += [{"url": f"api/runs/{rid}/steps/{i}.json", "kind": "json"}
                  for i in range(store.steps)]
        for res in store.resolutions(rid):
            base = f"api/runs/{rid}/attention/{res}"
            cases += [{"url": f"{base}/tokens/{k}.npy", "kind": "npy"}
                      for k in range(store.n_tokens(rid))]
            cases += [{"url": f"{base}/steps/{i}.npy", "kind": "npy"} for i in range(store.steps)]
    return cases


@pytest.fixture
def resized(tmp_path, monkeypatch, frontend):
    """(app, its export) of a compact bundle whose 8x8 attention level is stored 4x4
    (`stored_shape`; codec.ATTENTION_STORED_SIDE lowered as tests/test_compact_encodings.py
    does)."""
    monkeypatch.setattr(codec, "ATTENTION_STORED_SIDE", 4)
    bundle = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(0, 7))
    app = create_app({"BUNDLE_DIR": bundle, "FRONTEND_DIR": frontend})
    write_site(app, tmp_path / "site")
    return app, tmp_path / "site"


@needs_node
@pytest.mark.parametrize("storage", ["full", "compact", "resized"])
def test_the_front_end_cuts_the_servers_answers_out_of_the_packed_files(
        storage, app, www, compact_app, compact_site, request, tmp_path):
    """js/api.js over the export (switched to the packed layout by api/index.json) answers
    every step, token and step-of-attention URL, and each array URL of the run documents,
    with exactly the server's values: float16 after the same float32 decoding (and, for
    attention stored smaller, the same upsampling)."""
    app, root = {"full": lambda: (app, www / "course" / "noisepath"),
                 "compact": lambda: (compact_app, compact_site),
                 "resized": lambda: request.getfixturevalue("resized")}[storage]()
    store = app.extensions["noisepath.store"]
    cases = cut_urls(store)
    for rid in store.runs:
        run = json.loads((root / f"api/runs/{rid}.json").read_bytes())
        cases += [{"url": e["url"], "kind": "npy"} for e in run["arrays"].values()]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    got = run_node(tmp_path, API_DRIVER, root, tmp_path / "cases.json")
    client = app.test_client()
    for case, value in zip(cases, got, strict=True):
        served = client.get("/" + case["url"]).data
        if case["kind"] == "json":
            assert value == json.loads(served), case["url"]
        else:
            expected = np.load(io.BytesIO(served)).astype(np.float32)
            assert value["shape"] == list(expected.shape), case["url"]
            np.testing.assert_array_equal(np.float32(value["data"]), expected.ravel(),
                                          err_msg=case["url"])
    assert any("/attention/combined/steps/" in c["url"] for c in cases)
    assert storage == "full" or any(".npy?v=" in c["url"] and c["url"].startswith("api/")
                                    for c in cases)
    assert storage != "resized" or any("stored_shape" in e.get("packed", {}) for rid in store.runs
                                       for e in json.loads((root / f"api/runs/{rid}.json")
                                                           .read_bytes())["arrays"].values())


@needs_node
def test_float16_rounding_and_the_combined_map_match_numpy(tmp_path):
    """halfBits is NumPy's float32 -> float16 (round half to even, subnormals, overflow);
    attentionMean of levels of three sizes is codec.attention_mean, value for value."""
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 65504.0, 65519.0, 65520.0, -7e4, 2.0 ** -24, 2.0 ** -25,
             1.5 * 2.0 ** -25, 2.0 ** -26, 3 * 2.0 ** -25, 6.1e-5, 1 + 2.0 ** -11,
             1 + 3 * 2.0 ** -11, float("inf"), float("-inf")]
    values = np.float32(np.concatenate([edges, rng.normal(0, 1, 2000),
                                        rng.normal(0, 1e-5, 2000) * rng.integers(0, 2, 2000)]))
    levels = [rng.random((2, 3, s, t), dtype=np.float32) for s, t in ((8, 8), (4, 4), (3, 5))]
    (tmp_path / "case.json").write_text(json.dumps({
        "values": [float(v) if np.isfinite(v) else (1e39 if v > 0 else -1e39) for v in values],
        "levels": [{"data": [float(x) for x in a.ravel()], "shape": list(a.shape)} for a in levels],
        "size": [8, 8]}))
    got = run_node(tmp_path, NUMBERS_DRIVER, tmp_path / "case.json")
    with np.errstate(over="ignore"):  # 65520 and -7e4 overflow to infinity, as meant
        assert got["half"] == values.astype(np.float16).view(np.uint16).tolist()
    expected = codec.attention_mean(levels, (8, 8))
    np.testing.assert_array_equal(np.float32(got["mean"]), expected.ravel())


# -- the exported site in a browser (Playwright driving Debian's chromium)

@pytest.fixture(scope="module")
def compact_site_url(compact_bundle_ro, tmp_path_factory):
    """`noisepath export` of the compact synthetic bundle with the real front end, on a plain
    static file server under a sub-path."""
    www = tmp_path_factory.mktemp("compact-real-www")
    write_site(create_app({"BUNDLE_DIR": compact_bundle_ro}), www / "course")
    with serve_folder(www) as url:
        yield url + "course/"


@pytest.mark.browser
@pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)
def test_the_exported_site_plays_a_run_shows_a_words_attention_and_compares_two_prompts(
        page, compact_site_url, shots):
    """Over the packed layout: every request answered (no 404), one steps file per run
    instead of a file per step, and the views that slice it all draw."""
    asked, failed = [], []
    page.on("request", lambda r: asked.append(r.url))
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(f"{compact_site_url}?prompt=a-red-circle-on-the-left-ad3b43dc&seed=1&guidance=7"
              "&open=guidance")
    wait_ready(page)
    # plays the 5 steps to the end: an address without a step starts playing by itself
    # (state.js), so Play is pressed only where it has not (a click would pause it)
    if page.locator(".tc-play").get_attribute("aria-label") == "Play":
        page.locator(".tc-play").click()
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '5'")
    # the guidance formula with the step's numbers (steps.json, cut per step)
    page.wait_for_function("() => { const t = document.querySelector('#guidance-formula')"
                           ".innerText; return t.includes('×') && !t.includes('loading'); }")
    page.locator("#prompt-words .token-word", has_text="circle").click()
    page.locator("#decoded-frame.has-attention").wait_for()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '4'")
    page.locator("#decoded-frame.has-attention").wait_for()
    page.screenshot(path=str(shots / "export-attention.png"))
    page.locator("#compare-open").click()
    page.locator("#panel-compare").wait_for()
    for n, word in ((1, "circle"), (2, "square")):
        page.locator(f"#compare-lanes .lane-{n} .lane-attention.has-attention").wait_for()
        caption = page.locator(f"#compare-lanes .lane-{n} .lane-figure-attention figcaption")
        assert caption.inner_text() == f"Where “{word}” acts"
    page.locator("#difference-chart .dc-latents .dc-line[d]").wait_for()
    for width, height in ((390, 844), (1366, 768), (1920, 1080)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(shots / f"export-compare-{width}.png"))
    assert failed == []
    assert any(u.endswith("/steps.json") for u in asked)
    assert any(".q8.npz" in u for u in asked)  # the compact bundle's packed arrays
    assert not [u for u in asked if "/steps/" in u or "/attention/" in u or ".npy?v=" in u
                and "/api/runs/" in u]
    # the page fixture fails the test on any console error or uncaught exception

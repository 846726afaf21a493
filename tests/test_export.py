"""`noisepath export`: a static site that answers every URL the front end requests."""

import argparse
import functools
import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from backend import create_app, export_cli
from backend.export_cli import ExportError, write_site
from tests.synthetic_bundle import PROMPTS, make_bundle


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
    root = www

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/course/noisepath/"
    server.shutdown()
    server.server_close()
    thread.join()


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


def front_end_urls(get_json):
    """What the front end requests, found only by following the API's own JSON."""
    index = get_json("api/index.json")
    yield "api/index.json"
    for pid in index["prompts"]:
        yield f"api/prompts/{pid}.json"
        yield from urls_in(get_json(f"api/prompts/{pid}.json"))
    for rid in index["runs"]:
        run = get_json(f"api/runs/{rid}.json")
        yield f"api/runs/{rid}.json"
        yield from urls_in(run)
        steps = run["num_inference_steps"]
        yield from (f"api/runs/{rid}/steps/{i}.json" for i in range(steps))
        if run["attention"]:
            for res in ["combined", *map(str, run["attention"]["resolutions"])]:
                base = f"api/runs/{rid}/attention/{res}"
                yield from (f"{base}/tokens/{k}.npy" for k in range(run["attention"]["tokens"]))
                yield from (f"{base}/steps/{i}.npy" for i in range(steps))
    for pid, by_seed in index["run_lookup"].items():
        for seed in by_seed:
            yield f"api/sweeps/{pid}/{seed}.json"
            yield from urls_in(get_json(f"api/sweeps/{pid}/{seed}.json"))
    for seed in index["trajectories"]:
        yield f"api/trajectories/{seed}.json"


def test_every_url_the_front_end_requests_exists_in_the_export(site, app):
    client = app.test_client()
    seen = set()
    for url in front_end_urls(lambda u: json.loads(fetch(site, u))):
        if url in seen:
            continue
        seen.add(url)
        body = fetch(site, url)
        assert body == client.get("/" + url).data, url
    assert len(seen) > 600
    assert any("?v=" in u for u in seen) and any("/attention/4/steps/" in u for u in seen)


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
    store = tiny_app.extensions["noisepath.store"]
    monkeypatch.setattr(store, "api_paths", lambda: iter(["api/index.json", "api/nope.json"]))
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


def test_a_compact_bundle_exports_its_decoded_arrays_and_rendered_previews(
        compact_bundle_ro, frontend, tmp_path):
    app = create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend})
    out = tmp_path / "site"
    write_site(app, out)
    client = app.test_client()
    urls = set(front_end_urls(lambda u: json.loads((out / u.split("?")[0]).read_bytes())))
    for url in urls:  # a static server ignores the ?v= query, as the export's files do
        assert (out / url.split("?")[0]).read_bytes() == client.get("/" + url).data, url
    assert any("/arrays/noise_pred.npy?v=" in u for u in urls)
    assert any("/images/latents.png?v=" in u for u in urls)
    assert not list(out.rglob("*.npz")) and not list((out / "bundle" / "runs").rglob("*.npy"))


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

"""A bundle's spoken examples (its speech/ section, docs/bundle-format.md "Spoken
examples"): `python -m precompute.speech_bundle` writes them (espeak-ng speaks prompts
of the bundle, the demo recognizer hears the stored clip), the validator checks them by
file and field, the server answers them with no torch and no pocketsphinx, and
`noisepath export` carries them."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from backend import create_app, speech
from backend.format import BundleError
from backend.validator import validate_bundle
from tests.speech_helpers import ESPEAK, ESPEAK_SKIP
from tests.synthetic_bundle import make_bundle

needs_speech = [pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_SKIP),
                pytest.mark.skipif(speech.missing_library() is not None,
                                   reason=speech.missing_library() or "")]
pytestmark = needs_speech

CAPTIONS = ("a red star at the top, on a blue background",
            "a large blue circle on the left, on a red background")


SPEAK = ["--voices", "en-us", "--per-voice", "1", "--guidance", "7"]


def make_spoken_bundle(root: Path, recognizer=None) -> Path:
    """A small bundle of two demo captions (seed 1, guidance 0 and 7) with one spoken
    example made by the precompute step: en-us says the first caption."""
    from precompute import speech_bundle

    make_bundle(root, seeds=(1,), guidance_scales=(0, 7), prompts=[CAPTIONS])
    assert speech_bundle.main([str(root), *SPEAK], recognizer) == 0
    return root


@pytest.fixture(scope="module")
def recognizer():
    return speech.DemoRecognizer()  # made once: a decoder takes a second or more to build


@pytest.fixture(scope="module")
def spoken_ro(tmp_path_factory, recognizer):
    return make_spoken_bundle(tmp_path_factory.mktemp("spoken") / "b", recognizer)


@pytest.fixture
def spoken(tmp_path, spoken_ro):
    """A private copy that a test may damage."""
    return Path(shutil.copytree(spoken_ro, tmp_path / "b"))


def section(root: Path) -> dict:
    return json.loads((root / "speech" / "index.json").read_text())


def test_the_precompute_step_writes_an_example_the_recognizer_heard_right(spoken_ro,
                                                                         recognizer):
    doc = section(spoken_ro)
    [ex] = doc["examples"]
    assert ex["text"] == CAPTIONS[0] and ex["voice"] == "en-us"
    assert ex["result"]["understood"] and ex["result"]["text"] == CAPTIONS[0]
    assert [w["word"] for w in ex["result"]["words"]] == CAPTIONS[0].replace(",", "").split()
    assert all(0 <= w["confidence"] <= 1 for w in ex["result"]["words"])
    assert ex["run_id"].endswith("--s1-g7")
    # the stored clip is what the recognizer heard: hearing its bytes again says the same
    clip = (spoken_ro / "speech" / ex["clip"]["file"]).read_bytes()
    again = recognizer.recognize(speech.decode(clip))
    assert again["words"] == ex["result"]["words"]
    assert validate_bundle(spoken_ro) == []


def test_the_precompute_step_again_is_up_to_date_and_touches_nothing(spoken, recognizer,
                                                                     capsys):
    from precompute import speech_bundle

    folder = spoken / "speech"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    assert speech_bundle.main([str(spoken), *SPEAK], recognizer) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before
    assert not list((spoken / ".tmp").iterdir())  # no staging left behind


def test_a_run_that_is_not_in_the_bundle_is_refused_in_one_line(spoken_ro, recognizer):
    from precompute import speech_bundle

    with pytest.raises(SystemExit, match="no demo caption of the bundle has a run at seed 9"):
        speech_bundle.main([str(spoken_ro), *SPEAK, "--seed", "9"], recognizer)


# -- the validator: every damage named by file and field

def _damage_index(change):
    def damage(root: Path):
        doc = section(root)
        change(doc, doc["examples"][0])
        (root / "speech" / "index.json").write_text(json.dumps(doc))
    return damage


def _clip(root: Path) -> Path:
    return root / "speech" / section(root)["examples"][0]["clip"]["file"]


def _spectrogram(root: Path) -> Path:
    return root / "speech" / section(root)["examples"][0]["spectrogram"]["file"]


def _sixteen_bit(root: Path):
    """The clip rewritten 16-bit (its sha256 updated): the index still says 8."""
    import hashlib

    from precompute.speech_bundle import wav_bytes

    x = speech.to_mono_16k(*speech.read_clip(_clip(root).read_bytes()))
    data = wav_bytes(x, 16)
    _clip(root).write_bytes(data)
    _damage_index(lambda doc, ex: ex["clip"].update(sha256=hashlib.sha256(data).hexdigest()))(root)


def _png(root: Path, size):
    import hashlib

    from PIL import Image

    path = _spectrogram(root)
    Image.new("L", size).save(path, format="PNG")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _damage_index(lambda doc, ex: ex["spectrogram"].update(sha256=digest))(root)


DAMAGES = {
    "format": (_damage_index(lambda doc, ex: doc.update(format="other")),
               "speech/index.json", "format"),
    "no examples": (_damage_index(lambda doc, ex: doc.update(examples=[])),
                    "speech/index.json", "examples"),
    "unknown run": (_damage_index(lambda doc, ex: ex.update(run_id="nope--s1-g7")),
                    "speech/index.json", "examples[0].run_id"),
    "another prompt's run": (_damage_index(lambda doc, ex: ex.update(run_id="empty--s1-g0")),
                             "speech/index.json", "examples[0].run_id"),
    "text not the prompt's": (_damage_index(lambda doc, ex: ex.update(text="a blue star")),
                              "speech/index.json", "examples[0].text"),
    "confidence over 1": (_damage_index(lambda doc, ex: ex["result"]["words"][0].update(
        confidence=1.5)), "speech/index.json", "examples[0].result.words"),
    "a word after the clip's end": (_damage_index(lambda doc, ex: ex["result"]["words"][-1].update(
        end=60.0)), "speech/index.json", "examples[0].result.words"),
    "transcript not the prompt": (_damage_index(lambda doc, ex: ex["result"].update(
        text="a blue star at the top, on a red background")),
        "speech/index.json", "examples[0].result.text"),
    "NaN in the waveform": (lambda root: (root / "speech" / "index.json").write_text(
        (root / "speech" / "index.json").read_text().replace('"max":[', '"max":[NaN,', 1)),
        "speech/index.json", "examples[0].waveform.max[0]"),
    "clip missing": (lambda root: _clip(root).unlink(), "speech/en-us-", ""),
    "clip changed": (lambda root: _clip(root).write_bytes(_clip(root).read_bytes()[:-400]),
                     "speech/en-us-", "examples[0].clip.sha256"),
    "clip 16-bit, index says 8": (_sixteen_bit, "speech/en-us-", "bits"),
    "spectrogram of another size": (lambda root: _png(root, (10, 64)), "speech/en-us-", ""),
    "speech/ leads out of the bundle": (lambda root: (
        shutil.move(root / "speech", root.parent / "elsewhere"),
        os.symlink(root.parent / "elsewhere", root / "speech")), "speech/index.json", ""),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_section_is_named_by_file_and_field(spoken, damage):
    change, file, field = DAMAGES[damage]
    change(spoken)
    problems = [p for p in validate_bundle(spoken) if p.severity == "error"]
    assert problems, damage
    assert all(p.file.startswith(file) for p in problems), problems
    assert any(p.field == field for p in problems), problems


def test_serve_refuses_a_bundle_whose_section_is_damaged_unless_told_to_skip_it(spoken):
    _damage_index(lambda doc, ex: ex.update(run_id="nope--s1-g7"))(spoken)
    with pytest.raises(BundleError, match=r"speech/index.json: examples\[0\].run_id"):
        create_app({"BUNDLE_DIR": spoken})
    # --skip-invalid serves every run and leaves only the damaged section out
    app = create_app({"BUNDLE_DIR": spoken, "SKIP_INVALID": True})
    bundle = app.extensions["noisepath.store"].bundle
    assert bundle.skipped_sections == ["speech"] and bundle.speech is None
    assert bundle.runs and not bundle.skipped_runs
    assert app.test_client().get("/api/speech/examples.json").get_json()["examples"] == []


# -- serving and export

def test_the_api_answers_the_examples_and_their_files(spoken_ro):
    from tests.test_api import SPEC, check_schema

    client = create_app({"BUNDLE_DIR": spoken_ro}).test_client()
    r = client.get("/api/speech/examples.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert check_schema(r.json, {"$ref": "#/components/schemas/SpeechExamples"}) == []
    assert set(SPEC["paths"]["/api/speech/files/{name}"]["get"]["responses"]["200"][
        "content"]) == {"audio/wav", "image/png"}
    [ex] = r.json["examples"]
    assert (ex["seed"], ex["guidance_scale"]) == (1, 7.0)
    assert ex["result"]["words"] == section(spoken_ro)["examples"][0]["result"]["words"]
    for url, mime, file in ((ex["clip"]["url"], "audio/wav", ex["clip"]),
                            (ex["spectrogram"]["png"], "image/png", None)):
        got = client.get("/" + url)
        assert got.status_code == 200 and got.mimetype == mime
        assert "immutable" in got.headers["Cache-Control"]  # the URL carries its sha256
    assert client.get("/" + ex["clip"]["url"]).data == (
        spoken_ro / "speech" / section(spoken_ro)["examples"][0]["clip"]["file"]).read_bytes()
    missing = client.get("/api/speech/files/index.json")  # only the files the index names
    assert missing.status_code == 404 and missing.json["error"] == "not_found"


def test_a_bundle_without_the_section_answers_no_examples(synthetic_app):
    r = synthetic_app.test_client().get("/api/speech/examples.json")
    assert r.status_code == 200 and r.json["examples"] == []


def test_serving_the_examples_needs_no_torch_and_no_pocketsphinx(spoken_ro, monkeypatch):
    """With both unimportable (an import of either raises ImportError), the app starts
    over the bundle and answers the examples and their files."""
    for name in ("torch", "pocketsphinx", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)
    client = create_app({"BUNDLE_DIR": spoken_ro}).test_client()
    doc = client.get("/api/speech/examples.json").json
    assert len(doc["examples"]) == 1
    assert client.get("/" + doc["examples"][0]["clip"]["url"]).status_code == 200
    assert client.get("/" + doc["examples"][0]["spectrogram"]["png"]).status_code == 200


def test_the_export_carries_the_examples_as_served(spoken_ro, tmp_path):
    from backend.export_cli import write_site

    app = create_app({"BUNDLE_DIR": spoken_ro})
    write_site(app, tmp_path / "site")
    client = app.test_client()
    served = client.get("/api/speech/examples.json").json
    exported = json.loads((tmp_path / "site" / "api/speech/examples.json").read_bytes())
    assert exported == served
    for url in (served["examples"][0]["clip"]["url"], served["examples"][0]["spectrogram"]["png"]):
        path = url.split("?")[0]
        assert (tmp_path / "site" / path).read_bytes() == client.get("/" + url).data

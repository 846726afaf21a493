"""The bundle's few-step comparison (issue 16): `python -m precompute.fewstep_bundle`
builds fewstep/ from tiny offline models through the precompute's own loop and writer;
the validator names a damaged section's file and field; the API serves and export
writes it (backend/fewstep_examples.py, backend/validate_fewstep.py)."""

import hashlib
import io
import json
import shutil
import sys

import numpy as np
import pytest

from backend import create_app
from backend.format import BundleError
from backend.validator import validate_bundle
from precompute import fewstep_bundle

PROMPT = "a red circle on the left"


def tiny_models(root):
    """A teacher with the demo model's recipe (DDIM, v-prediction, zero terminal SNR) but
    SD 1.5's "leading" spacing, which the builder must replace, and a flow-matching student
    (another UNet, the same VAE and text encoder: FlowMatchEulerDiscreteScheduler)."""
    import torch
    from diffusers import (DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)

    from tests import tiny_sd

    parts = tiny_sd.build_components("sd2v")
    parts["scheduler"] = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="leading")
    StableDiffusionPipeline(**parts).save_pretrained(root / "teacher")
    torch.manual_seed(7)
    parts["unet"] = UNet2DConditionModel(**tiny_sd.unet_config("sd2v"))
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    StableDiffusionPipeline(**parts).save_pretrained(root / "student")
    return root / "teacher", root / "student"


def builder_args(bundle, teacher, student):
    """Teacher at 3 and 1 steps; the one student folder as the rectified flow and as the
    one-step student (loaded once), each at 1."""
    return [str(bundle), "--teacher", str(teacher), "--student", f"rectified-flow={student}",
            "--student", f"one-step={student}", "--steps", "teacher=3,1", "rectified-flow=1",
            "--guidance", "3", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A bundle with the prompt at seed 1 (the synthetic writer's: only its bundle.json is
    read) and its fewstep/ section, made by the builder from the tiny models."""
    import torch

    from tests.synthetic_bundle import make_bundle

    root = tmp_path_factory.mktemp("fewstep")
    teacher, student = tiny_models(root)
    # 16 px images: the tiny VAE's 8 x 8 latents
    make_bundle(root / "bundle", steps=2, seeds=(1,), guidance_scales=(3,), latent=2,
                prompts=[(PROMPT, "a blue circle on the left")])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend on a busy machine
    try:
        assert fewstep_bundle.main(builder_args(root / "bundle", teacher, student)) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def section(root) -> dict:
    return json.loads((root / "bundle" / "fewstep" / "index.json").read_text())


def paths_of(root) -> dict:
    return {p["id"]: p for p in section(root)["examples"][0]["paths"]}


@pytest.fixture
def bundle(built, tmp_path):
    """A private copy of the built bundle that a test may damage."""
    return shutil.copytree(built / "bundle", tmp_path / "bundle")


# -- the builder

@pytest.mark.slow
def test_every_path_starts_from_the_seeds_one_noise(built):
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    [example] = section(built)["examples"]
    assert [p["id"] for p in example["paths"]] == [
        "teacher-3", "teacher-1", "rectified-flow-1", "one-step-1"]
    assert len({json.dumps(p["xy"][0]) for p in example["paths"]}) == 1  # one start point
    # the noise is the seed's, drawn as loop.NOISE draws it, stored in float16
    noise = randn_tensor((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(1))
    stored = noise.numpy()[0].astype(np.float16).astype("<f4")
    assert example["noise_sha256"] == hashlib.sha256(stored.tobytes()).hexdigest()
    assert example["id"].endswith("--s1") and example["prompt"] == PROMPT


@pytest.mark.slow
def test_each_path_has_its_lengths_and_a_sprite_of_its_frames(built):
    from PIL import Image

    for pid, path in paths_of(built).items():
        t = path["num_inference_steps"]
        assert (len(path["time"]), len(path["xy"]), len(path["pred_xy"])) == (t + 1, t + 1, t), pid
        assert path["chord"] == [path["xy"][0], path["xy"][-1]]
        assert path["time"][-1] == 0 and path["images"]["frames"] == t + 1
        with Image.open(built / "bundle/fewstep/files" / path["images"]["file"]) as im:
            assert im.size == (16 * (t + 1), 16)  # the tiny VAE's 16 px images side by side
            assert im.format == "WEBP" and path["images"]["file"].endswith(".webp")


@pytest.mark.slow
def test_the_teachers_one_step_starts_from_pure_noise_with_trailing_spacing(built):
    """The teacher's own config says "leading", which at one step calls the UNet at
    timestep 1 (time 0.04: nearly the image); trailing starts at 999, alpha_bar 0."""
    paths = paths_of(built)
    assert paths["teacher-1"]["time"] == [1.0, 0.0]
    assert paths["teacher-3"]["time"][0] == 1.0
    assert section(built)["models"][0]["timestep_spacing"] == "trailing"


@pytest.mark.slow
def test_a_one_step_flow_path_is_straight_and_a_curved_teacher_path_is_not(built):
    paths = paths_of(built)
    # one step is one segment: 0 by construction (precompute/straightness.py), the
    # teacher's too (its DDIM step lands on alpha_bar_0, which flow time accounts for)
    assert paths["rectified-flow-1"]["straightness"] == 0
    assert paths["one-step-1"]["straightness"] == 0
    assert paths["teacher-1"]["straightness"] == 0
    assert paths["teacher-3"]["straightness"] > 0.01  # a random UNet's path bends


@pytest.mark.slow
def test_the_section_validates_and_a_second_run_is_up_to_date(built, capsys):
    assert validate_bundle(built / "bundle") == []
    assert not (built / "bundle/fewstep/.tmp").exists()
    before = {p: p.stat().st_mtime_ns for p in (built / "bundle/fewstep").rglob("*")}
    args = builder_args(built / "bundle", built / "teacher", built / "student")
    assert fewstep_bundle.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (built / "bundle/fewstep").rglob("*")} == before


@pytest.mark.slow
def test_a_damaged_section_is_not_up_to_date(bundle, built, capsys):
    """The same command over a section missing a sprite builds it again."""
    (bundle / "fewstep/files" / sprite(bundle)).unlink()
    assert fewstep_bundle.main(builder_args(bundle, built / "teacher", built / "student")) == 0
    assert "wrote" in capsys.readouterr().out
    assert validate_bundle(bundle) == []


@pytest.mark.slow
def test_asking_for_another_sprite_format_is_not_up_to_date(built):
    doc = section(built)
    models = [fewstep_bundle.Model(m["id"], m["kind"], m["label"], m["model"],
                                   [p["num_inference_steps"] for p in doc["examples"][0]["paths"]
                                    if p["model"] == m["id"]], m["guidance_scale"],
                                   sha256=m["model_sha256"]) for m in doc["models"]]
    examples = [fewstep_bundle.Example(e["prompt_id"], e["prompt"], e["seed"])
                for e in doc["examples"]]
    existing = fewstep_bundle.existing_request(built / "bundle")
    assert existing == fewstep_bundle.request_of(models, examples, "webp")
    assert existing != fewstep_bundle.request_of(models, examples, "png")
    # a section whose straightness came from another definition (an older builder's) is rebuilt
    index_file = built / "bundle" / fewstep_bundle.INDEX
    original = index_file.read_bytes()
    assert doc["straightness_definition"] == fewstep_bundle.STRAIGHTNESS_DEFINITION
    index_file.write_text(json.dumps({k: v for k, v in doc.items() if k != "straightness_definition"}))
    try:
        assert fewstep_bundle.existing_request(built / "bundle") != \
            fewstep_bundle.request_of(models, examples, "webp")
    finally:
        index_file.write_bytes(original)


def run(latents, pred, flow=True, level=None, end=0.0):
    """read_path's record of a path: flow sigmas 1 - i/N by default, ending at `end`."""
    n = len(pred)
    level = np.linspace(1, 0, n + 1)[:-1] if level is None else level
    return {"latents": np.asarray(latents), "pred": np.asarray(pred), "flow": flow,
            "level": np.asarray(level), "end": end, "x_T": np.asarray(latents[0], np.float16),
            "frames": np.zeros((n + 1, 2, 2, 3), np.uint8)}


def test_straightness_is_zero_on_the_chord_and_grows_with_the_bend():
    rng = np.random.default_rng(0)
    z, x0 = rng.standard_normal(8), rng.standard_normal(8)
    sigmas = np.array([1.0, 0.75, 0.5, 0.25])
    line = [(1 - s) * x0 + s * z for s in [*sigmas, 0.0]]
    assert fewstep_bundle.straightness(run(line, [x0] * 4)) == pytest.approx(0, abs=1e-12)
    bend = rng.standard_normal(8)  # each call predicts an image off the result
    curved = [x0 + 0.5 * bend * s for s in sigmas]
    mild = [x0 + 0.1 * bend * s for s in sigmas]
    assert 0 < fewstep_bundle.straightness(run(line, mild)) < fewstep_bundle.straightness(
        run(line, curved))


def test_each_path_ends_where_its_schedulers_last_step_lands():
    """The straightness' chord ends at the result's own noise level: a flow student's
    sigma 0, the trailing DDIM teacher's alpha_bar_0 (set_alpha_to_one false) after 1, 4 or
    50 steps (their last call at 999 - 1000 + 1000 / N: one stride above 0)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from precompute.fewstep import FlowMatchEulerScheduler

    ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type="v_prediction", rescale_betas_zero_snr=True,
                         set_alpha_to_one=False, timestep_spacing="trailing")
    for steps in (1, 4, 50):
        assert fewstep_bundle.end_level(ddim, steps, flow=False) == float(ddim.alphas_cumprod[0])
    assert 0.999 < float(ddim.alphas_cumprod[0]) < 1  # the demo's 0.99915: not the image
    flow = FlowMatchEulerScheduler.from_config(FlowMatchEulerDiscreteScheduler().config)
    assert fewstep_bundle.end_level(flow, 4, flow=True) == 0.0


def test_the_time_axis_puts_the_teacher_and_a_student_at_one_noise_level_alike():
    """`time` is flow sigma for every path, the teacher's latents read as flow latents
    (sigma = s / (a + s), precompute/straightness.py), so the scrubber meets a VP teacher
    and a flow student where their latents have the same signal-to-noise ratio: alpha_bar
    0.5 (a = s) is sigma 0.5, not sqrt(1 - alpha_bar) = 0.71."""
    x = np.zeros((4, 2))
    teacher = run(x, x[:3], flow=False, level=np.array([0.0, 0.5, 0.8]), end=0.999)
    student = run(x, x[:3], level=np.array([1.0, 0.5, 1 / 3]))
    s = np.sqrt(0.2)
    assert fewstep_bundle.time_axis(teacher) == pytest.approx(
        [1.0, 0.5, s / (np.sqrt(0.8) + s), 0.0], abs=10 ** -fewstep_bundle.DECIMALS)
    assert fewstep_bundle.time_axis(teacher)[1] == fewstep_bundle.time_axis(student)[1]


def test_a_section_on_another_time_axis_is_not_up_to_date(tmp_path):
    """The section names its time axis (`time_definition`) and the up-to-date check compares
    it: a section built when the teacher's time was sqrt(1 - alpha_bar) (no definition, or
    another) is rebuilt, not kept; the same section naming today's axis is up to date."""
    models = [fewstep_bundle.Model("teacher", "teacher", "Teacher", "t", [2], 3.0, sha256="ab")]
    examples = [fewstep_bundle.Example("p", "a prompt", 1)]
    doc = {"straightness_definition": fewstep_bundle.STRAIGHTNESS_DEFINITION,
           "models": [{"id": "teacher", "model_sha256": "ab", "guidance_scale": 3.0}],
           "examples": [{"id": examples[0].id, "prompt": "a prompt", "seed": 1,
                         "paths": [{"id": "teacher-2", "images": {"file": "x.webp"}}]}]}
    index_file = tmp_path / fewstep_bundle.INDEX
    index_file.parent.mkdir(parents=True)
    wanted = fewstep_bundle.request_of(models, examples, "webp")
    for definition, up_to_date in ((fewstep_bundle.TIME_DEFINITION, True), (None, False),
                                   ("sqrt(1 - alpha_bar)", False)):
        index_file.write_text(json.dumps({**doc, "time_definition": definition}
                                         if definition else doc))
        assert (fewstep_bundle.existing_request(tmp_path) == wanted) is up_to_date, definition


def test_paths_that_start_from_other_noise_are_refused_by_name():
    rng = np.random.default_rng(1)
    z, x0 = rng.standard_normal((2, 8))
    model = fewstep_bundle.Model("teacher", "teacher", "T", "t", [1], 3.0)
    other = fewstep_bundle.Model("one-step", "one_step", "O", "o", [1], 1.0)
    a, b = run([z, x0], [x0]), run([z + 1e-3, x0], [x0])
    example = fewstep_bundle.Example("p", "a prompt", 1)
    with pytest.raises(SystemExit, match="path one-step-1 starts from other noise than teacher-1"):
        fewstep_bundle.build_example(example, [(model, 1, a, 0.1), (other, 1, b, 0.1)])


def test_the_teachers_path_names_the_bundles_run_only_when_it_is_the_same_run(tmp_path):
    from precompute.writer import prompt_id, run_id

    teacher = fewstep_bundle.Model("teacher", "teacher", "T", str(tmp_path), [50, 1], 3.0,
                                   facts={"scheduler": "ddim"})
    rid = run_id(prompt_id(PROMPT), 1, 3.0)
    config = {"model": str(tmp_path), "scheduler": "ddim", "num_inference_steps": 50,
              "model_info": {"scheduler": {"config": {"timestep_spacing": "trailing"}}}}
    index = {"config": config, "runs": {rid: {}}}
    example = fewstep_bundle.Example(prompt_id(PROMPT), PROMPT, 1)
    assert fewstep_bundle.main_run(index, tmp_path, teacher, example) == rid
    config["model_info"]["scheduler"]["config"]["timestep_spacing"] = "leading"
    assert fewstep_bundle.main_run(index, tmp_path, teacher, example) is None


def test_sprites_are_webp_unless_png_is_asked_for_or_the_strip_is_too_wide():
    from PIL import Image

    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    for fmt, wide, kind in (("webp", 1, "WEBP"), ("png", 1, "PNG"), ("webp", 3300, "PNG")):
        data, ext = fewstep_bundle.sprite(np.repeat(frames, wide, axis=0), fmt)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, ext, im.size) == (kind, kind.lower(), (5 * 3 * wide, 4))
    png, _ = fewstep_bundle.sprite(frames, "png")  # lossless: the frames come back
    with Image.open(io.BytesIO(png)) as im:
        assert np.array_equal(np.asarray(im), np.concatenate(list(frames), axis=1))


def test_a_changed_model_gets_new_temporary_runs(tmp_path):
    """An interrupted build resumes from fewstep/.tmp; a student trained meanwhile (other
    files, another SHA-256) must not reuse the old student's runs there."""
    old = fewstep_bundle.Model("one-step", "one_step", "O", "o", [1], 1.0, sha256="a" * 64)
    new = fewstep_bundle.Model("one-step", "one_step", "O", "o", [1], 1.0, sha256="b" * 64)
    assert fewstep_bundle.temporary_bundle(tmp_path, old, 1) != \
        fewstep_bundle.temporary_bundle(tmp_path, new, 1)


@pytest.mark.parametrize("args, message", [
    (["--student", "rectified-flow"], "expected ID=VALUE"),
    (["--student", "x=/nowhere"], "--student x=/nowhere: not a pipeline folder"),
    (["--steps", "nobody=1"], "no model has id 'nobody'"),
    (["--steps", "teacher=4,4"], "distinct"),
    (["--prompts", "not-a-prompt"], "not a prompt id of the bundle"),
])
def test_bad_arguments_are_refused_in_one_line(synthetic_bundle_ro, tmp_path, args, message):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model_index.json").write_text("{}")  # refused before it loads
    base = [str(synthetic_bundle_ro), "--teacher", str(tmp_path / "teacher"), "--guidance", "3"]
    with pytest.raises(SystemExit) as e:
        fewstep_bundle.main(base + args)
    assert message in str(e.value) and "\n" not in str(e.value)


# -- the validator

def damage_index(change):
    def apply(root):
        path = root / "fewstep" / "index.json"
        doc = json.loads(path.read_text())
        change(doc, doc["examples"][0]["paths"])
        path.write_text(json.dumps(doc))
    return apply


def sprite(root) -> str:
    doc = json.loads((root / "fewstep" / "index.json").read_text())
    return doc["examples"][0]["paths"][0]["images"]["file"]


def wrong_size_sprite(root):
    """A valid PNG of one frame too few, its sha256 updated: only the size is wrong."""
    from PIL import Image

    index = root / "fewstep" / "index.json"
    doc = json.loads(index.read_text())
    image = doc["examples"][0]["paths"][0]["images"]
    Image.new("RGB", (16 * (image["frames"] - 1), 16)).save(root / "fewstep/files" / image["file"])
    image["sha256"] = hashlib.sha256((root / "fewstep/files" / image["file"]).read_bytes()).hexdigest()
    index.write_text(json.dumps(doc))


DAMAGES = {
    "xy a point short": (damage_index(lambda doc, paths: paths[0]["xy"].pop()),
                         "fewstep/index.json", "examples[0].paths[0].xy"),
    "unknown model": (damage_index(lambda doc, paths: paths[1].update(model="nobody")),
                      "fewstep/index.json", "examples[0].paths[1].model"),
    "run_id names no run": (damage_index(lambda doc, paths: doc["examples"][0].update(
        run_id="nope--s1-g3")), "fewstep/index.json", "examples[0].run_id"),
    "NaN straightness": (lambda root: (root / "fewstep/index.json").write_text(
        (root / "fewstep/index.json").read_text().replace('"straightness":', '"straightness":NaN,"x":', 1)),
        "fewstep/index.json", "examples[0].paths[0].straightness"),
    "sprite missing": (lambda root: (root / "fewstep/files" / sprite(root)).unlink(),
                       "fewstep/files/", ""),
    "sprite of another size": (wrong_size_sprite, "fewstep/files/", ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_section_is_named_by_file_and_field(bundle, damage):
    change, file, field = DAMAGES[damage]
    change(bundle)
    problems = [p for p in validate_bundle(bundle) if p.severity == "error"]
    assert problems and all(p.file.startswith(file) and p.section == "fewstep"
                            for p in problems), problems
    assert any(p.field == field for p in problems), problems


@pytest.mark.slow
def test_serve_leaves_a_damaged_section_out_only_when_told_to(bundle):
    damage_index(lambda doc, paths: paths[1].update(model="nobody"))(bundle)
    with pytest.raises(BundleError, match=r"fewstep/index.json: examples\[0\].paths\[1\].model"):
        create_app({"BUNDLE_DIR": bundle})
    app = create_app({"BUNDLE_DIR": bundle, "SKIP_INVALID": True})
    store = app.extensions["noisepath.store"]
    assert store.bundle.skipped_sections == ["fewstep"] and store.bundle.runs
    r = app.test_client().get("/api/fewstep/index.json")
    assert r.status_code == 404 and r.json["error"] == "not_found"


# -- serving and export

@pytest.mark.slow
def test_the_api_serves_the_section_and_its_sprites_without_torch(built, monkeypatch):
    for name in ("torch", "diffusers", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)
    client = create_app({"BUNDLE_DIR": built / "bundle"}).test_client()
    r = client.get("/api/fewstep/index.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    stored = section(built)
    assert r.json["examples"][0]["noise_sha256"] == stored["examples"][0]["noise_sha256"]
    for path in r.json["examples"][0]["paths"]:
        got = client.get("/" + path["images"]["url"])
        assert got.status_code == 200 and got.mimetype == "image/webp"
        assert "immutable" in got.headers["Cache-Control"]  # the URL carries its sha256
        assert got.data == (built / "bundle/fewstep/files" / path["images"]["file"]).read_bytes()
    for name in ("index.json", "..%2Findex.json", "nope.png"):  # looked up, never a path
        missing = client.get(f"/api/fewstep/files/{name}")
        assert missing.status_code == 404 and missing.json["error"] == "not_found"


def test_a_bundle_without_the_section_answers_404_json(synthetic_app):
    r = synthetic_app.test_client().get("/api/fewstep/index.json")
    assert r.status_code == 404 and r.json["error"] == "not_found"
    assert "fewstep_bundle" in r.json["message"]


@pytest.mark.slow
def test_the_export_writes_the_section_as_served(built, tmp_path):
    from backend.export_cli import write_site

    app = create_app({"BUNDLE_DIR": built / "bundle"})
    write_site(app, tmp_path / "site")
    client = app.test_client()
    served = client.get("/api/fewstep/index.json").json
    assert json.loads((tmp_path / "site/api/fewstep/index.json").read_bytes()) == served
    for path in served["examples"][0]["paths"]:
        url = path["images"]["url"]
        assert (tmp_path / "site" / url.split("?")[0]).read_bytes() == client.get("/" + url).data

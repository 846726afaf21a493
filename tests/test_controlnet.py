"""ControlNet (precompute/controlnet.py): the loop reproduces StableDiffusionControlNetPipeline,
records how strongly the control acts, and the precompute writes it into a bundle the
validator, the API and the export take.

Tiny random pipeline (tests/tiny_sd.py) and a tiny ControlNet made from its UNet
(ControlNetModel.from_unet), fp32 on CPU, offline. A fresh ControlNet's zero convolutions
make it a no-op, so the test sets them to random non-zero weights as diffusers' own tests
do (tests/pipelines/controlnet/test_controlnet.py: normal weights, bias 1), and asserts
that control changes the output. Tolerances as tests/test_loop.py gives them, relative to
the compared tensor's scale (its largest |value|): 1e-6 for a run swept alone (the loop and
the pipeline do the same float32 operations), 5e-5 for runs batched with others (float32
summation order of batched convolutions; observed 4e-6 here). A wrong scale, window or
image would be off by a good fraction of the scale.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from precompute.controlnet import (ControlSweep, block_names, control_id,  # noqa: E402
                                   load_controlnet, prepare_image, read_control_image)
from precompute.loop import run_guidance_sweep  # noqa: E402
from tests.test_loop import BATCH_RTOL, PIPELINE_RTOL, assert_close_to_scale  # noqa: E402
from tests.tiny_sd import tiny_components  # noqa: E402

torch.set_num_threads(1)

PROMPT = "a red circle on a blue background"
STEPS, SIZE, SEED = 4, 16, 3
START, END = 0.0, 0.75  # the last of 4 calls runs without control (controlnet_keep 0)


def write_tiny_controlnet(folder, unet, seed=0):
    """A ControlNet for the tiny UNet, its zero convolutions made non-zero, saved as a
    diffusers folder (what the precompute loads)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    # the tiny VAE downsamples by 2: the control image's embedding must too (16 -> 32)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))

    def init_weights(m):
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight)
            m.bias.data.fill_(1.0)
    controlnet.controlnet_down_blocks.apply(init_weights)
    controlnet.controlnet_mid_block.apply(init_weights)
    controlnet.save_pretrained(folder)
    return folder


def write_control_image(path, size=SIZE):
    """A sketch: a white filled square on black, off centre (what a scribble looks like)."""
    from PIL import Image

    a = np.zeros((size, size, 3), np.uint8)
    a[2:9, 7:14] = 255
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    c = tiny_components("sd15", "lms")
    base = tmp_path_factory.mktemp("controlnet")
    folder = write_tiny_controlnet(base / "controlnet", c.unet)
    image = write_control_image(base / "sketch.png")
    return c, str(folder), image


def sweep(c, folder, image_path, guidance_scales, scales, start=START, end=END):
    controlnet = load_controlnet(folder, c)
    image = prepare_image(read_control_image(image_path), c, SIZE, SIZE)
    control = ControlSweep(controlnet, image, scales, folder,
                           control_id(image_path, folder, start, end), start, end)
    return run_guidance_sweep(c, PROMPT, SEED, guidance_scales, STEPS, SIZE, SIZE,
                              capture_attention=False, control=control)


def pipeline_latent(c, folder, image_path, guidance_scale, scale):
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    pipe = StableDiffusionControlNetPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        controlnet=load_controlnet(folder, c), scheduler=c.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, Image.open(image_path), guidance_scale=guidance_scale,
               controlnet_conditioning_scale=scale, control_guidance_start=START,
               control_guidance_end=END, num_inference_steps=STEPS, height=SIZE, width=SIZE,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent")
    return out.images[0].numpy()


def test_final_latent_matches_the_controlnet_pipeline_and_control_changes_it(tiny):
    c, folder, image = tiny
    (alone,) = sweep(c, folder, image, [7.5], [0.8])
    expected = pipeline_latent(c, folder, image, 7.5, 0.8)
    assert_close_to_scale(alone.latents[-1], expected, PIPELINE_RTOL)
    # one batched sweep: two scales at guidance 7.5, one at guidance 1, and the run
    # without control (scale 0) of the same noise
    runs = sweep(c, folder, image, [7.5, 7.5, 7.5, 1.0], [0.0, 0.8, 1.5, 0.8])
    plain, controlled, strong, unguided = runs
    assert_close_to_scale(controlled.latents[-1], expected, BATCH_RTOL)
    for run, g, scale in ((strong, 7.5, 1.5), (unguided, 1.0, 0.8)):
        assert_close_to_scale(run.latents[-1], pipeline_latent(c, folder, image, g, scale),
                              BATCH_RTOL, err_msg=f"guidance {g}, scale {scale}")
    # the scale-0 run is the plain run of the same prompt, seed and guidance (batched with
    # the controlled rows, so within float32 summation order)
    (alone,) = run_guidance_sweep(c, PROMPT, SEED, [7.5], STEPS, SIZE, SIZE,
                                  capture_attention=False)
    assert_close_to_scale(plain.latents, alone.latents, BATCH_RTOL)
    assert plain.control is None
    # control acts: the final latent moves by a good fraction of its scale
    moved = np.abs(controlled.latents[-1] - plain.latents[-1]).max()
    assert moved > 0.05 * np.abs(plain.latents[-1]).max()


def test_residual_norms_and_maps_per_step_and_block(tiny):
    c, folder, image = tiny
    weak, strong = sweep(c, folder, image, [7.5, 7.5], [0.5, 1.0])
    record = strong.control
    names = block_names(load_controlnet(folder, c))
    assert [b["name"] for b in record.blocks] == names
    assert names[0] == "conv_in" and names[-1] == "mid_block"
    assert record.residual_norms.shape == (STEPS, len(names))
    assert (record.residual_norms[:3] > 0).all()
    assert (record.residual_norms[3] == 0).all()  # control_guidance_end 0.75: off at call 4
    # the maps: one per resolution of the skips (8 and 4 here) and the mid block
    assert sorted(record.maps) == ["mid", "res4", "res8"]
    assert record.maps["res8"].shape == (STEPS, 1, 8, 8)
    # the map's energy is the sum of its blocks' squared norms
    at8 = [k for k, b in enumerate(record.blocks) if b["resolution"] == [8, 8]
           and b["name"] != "mid_block"]
    np.testing.assert_allclose(np.square(record.maps["res8"][0]).sum(),
                               np.square(record.residual_norms[0, at8]).sum(), rtol=1e-5)
    # the text row's residuals of the first call scale with the conditioning scale (same
    # x_T, same text row); later calls differ because the latents do
    np.testing.assert_allclose(weak.control.residual_norms[0] * 2, record.residual_norms[0],
                               rtol=1e-5)
    assert record.image.shape == (SIZE, SIZE, 3) and record.image.max() == 255


# -- the bundle -------------------------------------------------------------------------

PROMPT_FILE = """\
[settings]
scheduler = "euler"
num_inference_steps = 3
height = 16
width = 16
seeds = [1]
guidance_scales = [0, 5]
controlnet = "{controlnet}"
controlnet_conditioning_scales = [0.5, 1]
control_guidance_end = 0.7

[[groups]]
prompt = "a red circle"
control_image = "sketch.png"
"""


def _precompute(folder, image, out, storage="full"):
    """Precompute PROMPT_FILE (beside the image) in this process, counting the loop's passes."""
    import io

    from precompute import loop
    from precompute.prompts import load_prompt_file
    from precompute.run import Options, precompute
    from tests.tiny_sd import tiny_pipeline_path

    prompts = image.parent / "prompts.toml"
    prompts.write_text(PROMPT_FILE.format(controlnet=folder))
    passes, sweep = [], loop.run_guidance_sweep

    def counting(components, prompt, seed, guidance_scales, *args, control=None, **kwargs):
        passes.append((prompt, list(guidance_scales), control and control.scales))
        return sweep(components, prompt, seed, guidance_scales, *args, control=control, **kwargs)
    loop.run_guidance_sweep = counting
    try:
        precompute(load_prompt_file(prompts), out,
                   {"model": str(tiny_pipeline_path("sd15")), "storage": storage},
                   Options(device="cpu", projection="pca", progress=False, workers=0,
                           log=io.StringIO()))
    finally:
        loop.run_guidance_sweep = sweep
    return passes


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    c, folder, image = tiny
    out = tmp_path_factory.mktemp("cn-bundle") / "b"
    return out, _precompute(folder, image, out), folder, image


def test_one_sweep_computes_the_controlled_runs_with_the_uncontrolled_and_it_validates(bundle):
    from backend.validator import validate_bundle

    out, passes = bundle[:2]
    # one pass: the shared guidance-0 run, the plain run at 5 and two controlled runs
    assert passes == [("a red circle", [0.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.5, 1.0])]
    assert validate_bundle(out, checksums=True, decode=True) == []
    runs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/run.json")}
    controlled = {r: m for r, m in runs.items() if "controlnet" in m}
    assert len(runs) == 4 and len(controlled) == 2
    for rid, m in controlled.items():
        cn = m["controlnet"]
        assert cn["uncontrolled_run_id"] in runs and "controlnet" not in runs[cn["uncontrolled_run_id"]]
        assert cn["control_guidance_end"] == 0.7 and len(cn["residual_norms"]) == 3
        assert all(v == 0 for v in cn["residual_norms"][-1])  # call 3 of 3 lies past 0.7
        assert cn["maps"] == ["controlnet_res8", "controlnet_res4", "controlnet_mid"]
        assert m["arrays"]["controlnet_res8"]["shape"] == [3, 1, 8, 8]
        assert m["images"]["control_image"]["count"] == 1
    # a rerun of the same file computes nothing
    folder, image = bundle[2:]
    assert _precompute(folder, image, out) == []


def test_the_api_serves_the_control_record_lookup_and_image(bundle):
    from backend import create_app

    client = create_app({"BUNDLE_DIR": bundle[0]}).test_client()
    index = client.get("/api/index.json").get_json()
    (pid,) = [p for p in index["control_lookup"]]
    by_scale = next(iter(index["control_lookup"][pid]["1"]["5"].values()))
    assert sorted(by_scale) == ["0", "0.5", "1"]
    assert index["run_lookup"][pid]["1"]["5"] == by_scale["0"]  # the plain run stays the plain
    assert index["runs"][by_scale["1"]]["controlnet_conditioning_scale"] == 1
    doc = client.get(f"/api/runs/{by_scale['1']}.json").get_json()
    assert doc["controlnet"]["conditioning_scale"] == 1
    from tests.test_api import check_schema  # docs/openapi.yaml describes both
    assert check_schema(index, {"$ref": "#/components/schemas/Index"}) == []
    assert check_schema(doc, {"$ref": "#/components/schemas/Run"}) == []
    assert client.get("/" + doc["images"]["control_image"]["url"]).status_code == 200
    assert client.get("/" + doc["arrays"]["controlnet_res8"]["url"]).status_code == 200


def test_a_compact_copy_validates_and_exports_the_control_image_and_maps(bundle, tmp_path):
    from backend import create_app
    from backend.export_cli import write_site
    from backend.validator import validate_bundle
    from precompute.compact import compact_bundle

    compact = tmp_path / "compact"
    compact_bundle(bundle[0], compact)
    assert validate_bundle(compact, checksums=True, decode=True) == []
    site = tmp_path / "site"
    write_site(create_app({"BUNDLE_DIR": compact}), site)
    index = json.loads((site / "api/index.json").read_text())
    rid = next(r for r, e in index["runs"].items() if e.get("controlnet_conditioning_scale") == 1)
    doc = json.loads((site / f"api/runs/{rid}.json").read_text())
    assert doc["controlnet"]["maps"][0] == "controlnet_res8"
    assert (site / doc["images"]["control_image"]["url"].split("?")[0]).is_file()
    assert list(site.glob(f"api/runs/{rid}/arrays/controlnet_res8*"))


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["controlnet"].update(conditioning_scale=-1), "controlnet.conditioning_scale"),
    (lambda m: m["controlnet"].update(control_guidance_start=0.9), "controlnet.control_guidance_end"),
    (lambda m: m["controlnet"]["residual_norms"].pop(), "controlnet.residual_norms"),
    (lambda m: m["controlnet"]["maps"].remove("controlnet_mid"), "arrays.controlnet_mid"),
    (lambda m: m["images"].pop("control_image"), "images.control_image"),
    (lambda m: m.pop("controlnet"), "controlnet"),
    (lambda m: m["arrays"]["controlnet_res8"].update(shape=[3, 1, 4, 8]), "arrays.controlnet_res8.shape"),
])
def test_a_broken_controlnet_record_is_named_by_file_and_field(bundle, tmp_path, edit, field):
    import shutil

    from backend.validator import validate_bundle
    from precompute.writer import BundleWriter, read_config

    out = tmp_path / "b"
    shutil.copytree(bundle[0], out)
    path = next(p for p in out.glob("runs/*/run.json") if "controlnet" in p.read_text())
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    BundleWriter(out, read_config(out)).rebuild_index()  # the index's checksum follows
    problems = [(p.file, p.field) for p in validate_bundle(out) if p.severity == "error"]
    assert (f"runs/{path.parent.name}/run.json", field) in problems, problems


def test_prompt_files_name_a_controlnet_and_control_images_with_located_errors(tmp_path):
    from precompute.prompts import PromptFileError, check_control, load_prompt_file

    write_control_image(tmp_path / "sketch.png")
    (tmp_path / "notes.txt").write_text("not an image")
    good = PROMPT_FILE.format(controlnet="lllyasviel/sd-controlnet-canny")
    (tmp_path / "p.toml").write_text(good)
    prompts = load_prompt_file(tmp_path / "p.toml")
    assert prompts.control_images == {"a red circle": [str(tmp_path / "sketch.png")]}
    for old, new, message in [
        ('"sketch.png"', '"missing.png"', "groups[0].control_image: " + str(tmp_path / "missing.png")
         + ": no such file"),
        ('"sketch.png"', '"notes.txt"', "groups[0].control_image: " + str(tmp_path / "notes.txt")
         + ": not a readable image"),
        ("[0.5, 1]", "[0.5, 0.5]", "settings.controlnet_conditioning_scales: has duplicates"),
        ("control_guidance_end = 0.7", "control_guidance_start = 0.8\ncontrol_guidance_end = 0.7",
         "settings.control_guidance_end: must be above control_guidance_start (0.8)"),
        ("control_guidance_end = 0.7", "controlnet_guidance_scales = [3]",
         "settings.controlnet_guidance_scales: must be a non-empty list of guidance_scales' "
         "values above 0 (here: 5)"),
    ]:
        (tmp_path / "bad.toml").write_text(good.replace(old, new))
        with pytest.raises(PromptFileError) as e:
            load_prompt_file(tmp_path / "bad.toml")
        assert message in str(e.value) and str(e.value).startswith(str(tmp_path / "bad.toml"))
    # controlnet_guidance_scales: the runs with control at some guidance scales only
    from precompute.run import plan_jobs

    settings = {**prompts.settings, "guidance_scales": [0, 1, 5], "seeds": [1, 2]}
    assert {g for j in plan_jobs(prompts, settings) if j.control_image
            for g in j.guidance_scales} == {1.0, 5.0}
    control = [j for j in plan_jobs(prompts, {**settings, "controlnet_guidance_scales": [5]})
               if j.control_image]
    assert len(control) == 2 and all(j.guidance_scales == [5.0, 5.0] for j in control)
    assert all(j.control_scales == [0.5, 1.0] for j in control)
    errors = []
    check_control(prompts, {"guidance_scales": [1]}, lambda k, m: errors.append((k, m)))
    assert errors and errors[0][0] == "controlnet" and "needs a ControlNet" in errors[0][1]


@pytest.mark.parametrize("argv, message", [
    (["--prompts", "{p}", "--control-image", "{img}"], "--control-image goes with --prompt"),
    (["--prompt", "a cat", "--control-image", "{img}"], "command line: --controlnet: is missing: "
     "a group names a control_image, which needs a ControlNet"),
    (["--prompt", "a cat", "--controlnet", "x/y"], "command line: --controlnet: is set, but no "
     "group names a control_image"),
    (["--prompt", "a cat", "--controlnet", "x/y", "--control-image", "{img}",
      "--control-guidance-start", "0.5", "--control-guidance-end", "0.5"],
     "command line: --control-guidance-end: must be above control_guidance_start (0.5)"),
    (["--prompt", "a cat", "--controlnet", "x/y", "--control-image", "{img}",
      "--guidance-scales", "0"], "command line: --guidance-scales: has only 0"),
    (["--prompt", "a cat", "--controlnet", "x/y", "--control-image", "{img}",
      "--controlnet-conditioning-scales", "0"],
     "command line: --controlnet-conditioning-scales: has only 0, the run without control"),
])
def test_the_quick_form_s_control_flags_are_checked_before_any_model_loads(
        tmp_path, monkeypatch, capsys, argv, message):
    from tests.test_precompute_cli import precompute_in_process, said

    img = write_control_image(tmp_path / "sketch.png")
    (tmp_path / "p.toml").write_text('[[groups]]\nprompt = "a cat"\n')
    argv = [a.format(p=tmp_path / "p.toml", img=img) for a in argv]
    assert precompute_in_process(monkeypatch, *argv, "--out", tmp_path / "b") == 2
    assert any(message in line for line in said(capsys)), said(capsys)


def test_controlled_runs_added_to_a_bundle_reuse_its_runs_without_control(bundle, tmp_path):
    import shutil

    from backend.validator import validate_bundle

    out = tmp_path / "b"
    shutil.copytree(bundle[0], out)
    for run in out.glob("runs/*--ctl-*"):
        shutil.rmtree(run)
    # the plain runs are there: the sweep computes the controlled ones alone
    assert _precompute(*bundle[2:], out) == [("a red circle", [5.0, 5.0], [0.5, 1.0])]
    assert validate_bundle(out) == []

"""Prompt files: the shipped set parses; a bad file is reported with its line and field."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from precompute.prompts import (GROUP_KEYS, SETTINGS_KEYS, TOP_KEYS, PromptFileError,
                                differing_words, load_prompt_file, parse_prompt_set,
                                single_prompt_set)
from precompute.run import plan_jobs, shared_job
from precompute.writer import prompt_id

SHIPPED = Path(__file__).parent.parent / "precompute" / "prompts" / "diffusion-explainer.toml"

GOOD = """\
title = "t"
[settings]
seeds = [1, 2]
guidance_scales = [0, 1, 7]

[[groups]]
prompt = "a red circle"
variants = ["a blue circle"]

[[groups]]
prompt = "a big square"
"""


def test_shipped_prompt_set_has_the_reference_settings_and_26_prompts():
    ps = load_prompt_file(SHIPPED)
    assert len(ps.groups) == 13 and len(ps.texts) == 26
    assert ps.settings == {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                           "scheduler": "lms", "num_inference_steps": 50, "height": 512,
                           "width": 512, "image_size": 256, "seeds": [1, 2, 3],
                           "guidance_scales": [0, 1, 7, 20]}
    for g in ps.groups:  # every main prompt has its changed keyword marked
        main = g.prompts[0]
        assert g.highlights[main], g.id
        assert all(main[s:e].strip() for s, e in g.highlights[main])


def test_keyword_marks_the_words_that_differ():
    a, b = differing_words("a pineapple by the water", "a baobab tree by the water")
    assert a == [[2, 11]] and b == [[2, 13]]


def test_one_job_per_prompt_and_seed_plus_a_shared_guidance_zero_job(tmp_path):
    (tmp_path / "p.toml").write_text(GOOD)
    ps = load_prompt_file(tmp_path / "p.toml")
    jobs = plan_jobs(ps, {**ps.settings})
    assert [j.key for j in jobs if j.prompt is None] == ["s1-g0", "s2-g0"]
    assert len([j for j in jobs if j.prompt]) == 3 * 2
    assert all(j.guidance_scales == [1.0, 7.0] for j in jobs if j.prompt)


def test_negative_prompts_split_the_shared_guidance_zero_run_and_name_the_runs(tmp_path):
    """A group's negative prompt wins over the file's; each negative prompt has its own
    shared guidance-0 run per seed (its unconditional branch), and a guided run's id names
    the negative prompt it used."""
    text = GOOD.replace('guidance_scales = [0, 1, 7]', 'guidance_scales = [0, 1, 7]\n'
                        'negative_prompt = "blurry"')
    (tmp_path / "p.toml").write_text(text + 'negative_prompt = ""\n')
    ps = load_prompt_file(tmp_path / "p.toml")
    assert ps.negative_prompt("a big square", "blurry") == ""
    assert ps.negative_prompt("a red circle", "blurry") == "blurry"
    jobs = plan_jobs(ps, {**ps.settings})
    blurry = prompt_id("blurry")
    assert [(j.key, j.negative_prompt) for j in jobs if j.prompt is None] == [
        (f"{blurry}--s1-g0", "blurry"), (f"{blurry}--s2-g0", "blurry"),
        ("s1-g0", ""), ("s2-g0", "")]
    assert [j.run_ids for j in jobs if j.prompt is None][0] == [f"{blurry}--s1-g0"]
    red = next(j for j in jobs if j.prompt == "a red circle" and j.seed == 1)
    assert red.run_ids == [f"{prompt_id('a red circle')}--neg-{blurry}--s1-g{g}" for g in (1, 7)]
    square = next(j for j in jobs if j.prompt == "a big square" and j.seed == 1)
    assert square.run_ids == [f"{prompt_id('a big square')}--s1-g{g}" for g in (1, 7)]
    assert shared_job(red, jobs).negative_prompt == "blurry"
    assert shared_job(square, jobs).key == "s1-g0"


def test_a_prompt_with_two_negative_prompts_is_a_located_error(tmp_path):
    text = GOOD + 'negative_prompt = "dark"\n\n[[groups]]\nprompt = "a big square"\nid = "again"\n'
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(PromptFileError, match=r":14: groups\[2\].negative_prompt: prompt 'a big "
                       r"square' is in an earlier group with another negative prompt"):
        load_prompt_file(tmp_path / "p.toml")


@pytest.mark.parametrize("setting, words", [
    ('scheduler = "dpm++"', "must be one of pndm, lms, ddim, ddpm, euler, euler_a, heun, kdpm2, "
                            "dpmpp_2m, dpmpp_2m_karras, unipc"),
    ('eta = 1.5', "must be a number from 0 to 1"),
    ('scheduler = "euler"\neta = 0.5', "DDIM's noise setting"),
    ('guidance_rescale = -0.1', "must be a number from 0 to 1"),
    ('negative_prompt = 3', "must be a string"),
])
def test_sampler_settings_are_checked(tmp_path, setting, words):
    (tmp_path / "p.toml").write_text(GOOD.replace("seeds = [1, 2]", f"seeds = [1, 2]\n{setting}"))
    with pytest.raises(PromptFileError, match=words):
        load_prompt_file(tmp_path / "p.toml")


def test_the_prompt_files_scheduler_names_are_the_precomputes():
    from precompute.model import SCHEDULERS as MODEL_SCHEDULERS
    from precompute.prompts import SCHEDULERS

    assert SCHEDULERS == tuple(MODEL_SCHEDULERS)


@pytest.mark.parametrize("replace, line, field, words", [
    ('seeds = [1, 2]', 3, "settings.seeds", "non-negative integers"),
    ('guidance_scales = [0, 1, 7]', 4, "settings.guidance_scales", "duplicates"),
    ('prompt = "a big square"', 11, "groups[1].prompt", "non-empty string"),
    ('variants = ["a blue circle"]', 8, "groups[0].variants", "list of non-empty strings"),
    ('title = "t"', 2, "colour", "unknown key"),
    ('[settings]', 3, "settings.modle", "unknown setting"),
])
def test_bad_field_is_reported_with_its_line(tmp_path, replace, line, field, words):
    bad = {
        'seeds = [1, 2]': 'seeds = [1, -2]',
        'guidance_scales = [0, 1, 7]': 'guidance_scales = [0, 1, 1.0]',
        'prompt = "a big square"': 'prompt = ""',
        'variants = ["a blue circle"]': 'variants = "a blue circle"',
        'title = "t"': 'title = "t"\ncolour = 3',
        '[settings]': '[settings]\nmodle = "x"',
    }[replace]
    (tmp_path / "p.toml").write_text(GOOD.replace(replace, bad))
    with pytest.raises(PromptFileError) as e:
        load_prompt_file(tmp_path / "p.toml")
    assert (e.value.line, e.value.field) == (line, field)
    assert words in e.value.message
    assert str(e.value).startswith(f"{tmp_path / 'p.toml'}:{e.value.line}: {field}: ")


def test_toml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "p.toml").write_text(GOOD.replace('prompt = "a red circle"', 'prompt = "a red'))
    with pytest.raises(PromptFileError, match=r"p.toml:7: not valid TOML"):
        load_prompt_file(tmp_path / "p.toml")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read the prompt file"):
        load_prompt_file(tmp_path / "nope.toml")


def test_keyword_must_appear_in_the_prompt(tmp_path):
    (tmp_path / "p.toml").write_text(GOOD + 'keyword = "triangle"\n')
    with pytest.raises(PromptFileError, match=r":12: groups\[1\].keyword: must appear"):
        load_prompt_file(tmp_path / "p.toml")


def test_quick_form_marks_the_variant_words():
    ps = single_prompt_set("spiderman in space", ["winnie the pooh in space"])
    [g] = ps.groups
    assert g.highlights == {"spiderman in space": [[0, 9]],
                            "winnie the pooh in space": [[0, 15]]}


def test_shipped_demo_prompts_are_the_issues_set():
    """13 pairs, each a demo-world caption (so the judge can read the images back), three
    seeds, four guidance scales from "ignores the prompt" to "exaggerates", stored compactly;
    then the demo ControlNet's prompts, one each, with a sketch that exists."""
    from precompute.demo import world

    demo = load_prompt_file(SHIPPED.parent / "demo.toml")
    pairs = [g for g in demo.groups if g.control_image is None]
    sketched = [g for g in demo.groups if g.control_image is not None]
    assert len(pairs) == 13 and all(len(g.prompts) == 2 for g in pairs)
    assert demo.groups[:13] == pairs  # the app opens on the first pair
    assert len(sketched) == 2 and all(len(g.prompts) == 1 and Path(g.control_image).is_file()
                                      for g in sketched)
    assert demo.settings["controlnet"] == "static/demo-controlnet"
    for text in (t for g in pairs for t in g.prompts):
        world.parse_caption(text)  # raises on a caption the world cannot render
    assert demo.settings["seeds"] == [1, 2, 3] and demo.settings["guidance_scales"] == [0, 1, 3, 7]
    assert demo.settings["num_inference_steps"] == 50 and demo.settings["storage"] == "compact"


def test_default_guidance_scale_must_be_one_of_the_scales(tmp_path):
    assert load_prompt_file(SHIPPED.parent / "demo.toml").default_guidance_scale == 3.0
    assert load_prompt_file(SHIPPED).default_guidance_scale is None  # the app's own rule
    (tmp_path / "p.toml").write_text(GOOD.replace('title = "t"', 'title = "t"\ndefault_guidance_scale = 7'))
    assert load_prompt_file(tmp_path / "p.toml").default_guidance_scale == 7.0
    for bad, words in (("3", "3 is not one of settings.guidance_scales"),
                       ('"7"', "must be a number from 0 to 100")):
        (tmp_path / "p.toml").write_text(
            GOOD.replace('title = "t"', f'title = "t"\ndefault_guidance_scale = {bad}'))
        with pytest.raises(PromptFileError, match=r"p.toml:2: default_guidance_scale: " + words):
            load_prompt_file(tmp_path / "p.toml")


def test_storage_setting_is_full_or_compact(tmp_path):
    (tmp_path / "p.toml").write_text(GOOD.replace("[settings]", '[settings]\nstorage = "compact"'))
    assert load_prompt_file(tmp_path / "p.toml").settings["storage"] == "compact"
    (tmp_path / "p.toml").write_text(GOOD.replace("[settings]", '[settings]\nstorage = "small"'))
    with pytest.raises(PromptFileError, match=r"p.toml:3: settings.storage: must be one of full, "
                                              "compact"):
        load_prompt_file(tmp_path / "p.toml")


def test_attention_levels_are_distinct_map_heights(tmp_path):
    (tmp_path / "p.toml").write_text(GOOD.replace("[settings]", "[settings]\nattention_levels = [16]"))
    assert load_prompt_file(tmp_path / "p.toml").settings["attention_levels"] == [16]
    for bad, words in (("16", "must be a non-empty list of map heights"), ("[]", "must be a non-"),
                       ("[16, 0]", "must be a non-"), ("[16, 16]", "has duplicates")):
        (tmp_path / "p.toml").write_text(GOOD.replace("[settings]", f"[settings]\nattention_levels = {bad}"))
        with pytest.raises(PromptFileError, match=r"p.toml:3: settings.attention_levels: " + words):
            load_prompt_file(tmp_path / "p.toml")


@pytest.mark.parametrize("text, line, field, words", [
    ("groups = [1, 2]\n", 1, "groups", "entry 1 is not a table (int); each group must be a table"),
    ('groups = ["a red circle"]\n', 1, "groups", "entry 1 is not a table (str)"),
    ('[[groups]]\nprompt = "a red circle"\ntitle = 5\n', 3, "groups[0].title", "must be a string"),
])
def test_a_group_of_the_wrong_type_is_a_located_error(tmp_path, text, line, field, words):
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(PromptFileError) as e:
        load_prompt_file(tmp_path / "p.toml")
    assert (e.value.line, e.value.field) == (line, field) and words in e.value.message


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "p.toml").write_bytes(b'title = "t"\n\n[[groups]]\nprompt = "caf\xe9"\n')
    with pytest.raises(PromptFileError, match=r"p.toml:4: not UTF-8 text \(byte 0xe9\)"):
        load_prompt_file(tmp_path / "p.toml")


# any TOML value a hostile or careless file can hold
_toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6)


def _near(keys):
    """Dictionaries over the keys a prompt file uses (and a stray one), any values."""
    return st.dictionaries(st.sampled_from(sorted(keys) + ["stray"]), _toml_values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(top=_near(TOP_KEYS - {"settings", "groups"}), prompt_settings=_near(SETTINGS_KEYS),
       groups=st.lists(_near(GROUP_KEYS) | _toml_values, max_size=3))
def test_any_prompt_file_content_parses_or_is_a_prompt_file_error(top, prompt_settings, groups):
    """Whatever a file holds, the precompute gets a PromptSet or one located message, never
    a TypeError or KeyError traceback."""
    data = {**top, "settings": prompt_settings, "groups": groups}
    try:
        parse_prompt_set(data, "p.toml")
    except PromptFileError:
        pass

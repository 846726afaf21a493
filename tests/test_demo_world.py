"""The demo world: deterministic scenes, captions that parse back, masks, and the judge."""
import numpy as np
import pytest

from precompute.demo import judge, world


def test_same_seed_gives_same_images_and_captions():
    a = world.sample_batch(np.random.default_rng(3), 8)
    b = world.sample_batch(np.random.default_rng(3), 8)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (8, 64, 64, 3) and a[0].dtype == np.uint8


def test_two_object_fraction_sets_the_share_of_two_object_scenes():
    counts = {f: sum(len(s.objects) == 2 for s in world.sample_batch(
        np.random.default_rng(4), 200, two_object_fraction=f)[2]) for f in (0.0, 0.3, 0.5, 1.0)}
    assert counts[0.0] == 0 and counts[1.0] == 200
    assert 40 <= counts[0.3] <= 80 and 80 <= counts[0.5] <= 120  # binomial, 200 draws


@pytest.mark.parametrize("caption", [
    "a large red circle on the left, on a blue background",
    "an orange star at the top and a white square at the bottom, on a green background",
    "a small black triangle in the middle, on a yellow background",
])
def test_caption_round_trips_through_parse(caption):
    assert world.caption_of(world.parse_caption(caption)) == caption


def test_every_sampled_caption_parses_back_to_its_attributes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.sample_scene(rng, split="any")
        parsed = world.parse_caption(scene.caption)
        assert parsed.background == scene.background
        assert [(o.colour, o.shape, o.size, o.position) for o in parsed.objects] == \
               [(o.colour, o.shape, o.size, o.position) for o in scene.objects]


def test_unknown_caption_raises():
    with pytest.raises(ValueError):
        world.parse_caption("a photo of an astronaut riding a horse")


def test_train_and_test_splits_never_share_a_caption():
    train = {world.sample_scene(np.random.default_rng(s), "train").caption for s in range(300)}
    test = {world.sample_scene(np.random.default_rng(s), "test").caption for s in range(300)}
    assert train and test and not train & test
    assert all(world.is_held_out(world.parse_caption(c)) for c in test)


def test_masks_cover_the_object_colour_and_nothing_else():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scene = world.sample_scene(rng, split="any")
        image, masks = world.render(scene), world.masks(scene)
        assert masks.shape == (len(scene.objects), 64, 64)
        assert not (masks.sum(0) > 1).any(), "objects never overlap"
        for obj, mask in zip(scene.objects, masks):
            inside = image[mask]
            assert np.abs(np.median(inside, 0) - world.COLOURS[obj.colour]).max() <= 2
        background = ~masks.any(0)
        assert np.abs(np.median(image[background], 0) - world.COLOURS[scene.background]).max() <= 2


def test_small_and_large_objects_differ_in_extent():
    def extent(size):
        scene = world.Scene("white", (world.SceneObject("red", "circle", "center", size),))
        ys, xs = np.nonzero(world.masks(scene)[0])
        return xs.max() - xs.min() + 1
    assert extent("small") < judge.SIZE_THRESHOLD < extent("large")


def test_judge_reads_held_out_renders_perfectly():
    accuracy = judge.judge_accuracy(n=120)
    assert all(v >= 0.98 for v in accuracy.values()), accuracy


def test_judge_reports_misses_on_a_blank_image():
    scene = world.parse_caption("a large red circle on the left, on a blue background")
    blank = np.zeros((64, 64, 3), np.uint8) + np.array(world.COLOURS["blue"], np.uint8)
    hits = judge.score(judge.read_scene(blank), scene)
    assert hits == {"background": 1.0, "colour": 0.0, "shape": 0.0, "size": 0.0, "position": 0.0}


def test_judge_splits_two_touching_objects_by_colour():
    from scipy import ndimage

    scene = world.Scene("white", (world.SceneObject("red", "circle", "left", dx=4),
                                  world.SceneObject("blue", "square", "right", dx=-4)))
    image = world.render(scene)
    far = np.sqrt(((image.astype(float) - world.COLOURS["white"]) ** 2).sum(-1)) > judge.OBJECT_DISTANCE
    assert ndimage.label(far)[1] == 1  # one connected region: the objects touch
    reading = judge.read_scene(image)
    assert sorted((o.colour, o.position) for o in reading.objects) == [("blue", "right"), ("red", "left")]
    hits = judge.score(reading, scene)  # (shapes are read from masks cut where they touch)
    assert (hits["background"], hits["colour"], hits["position"]) == (1.0, 1.0, 1.0)


def test_judge_keeps_one_object_whose_centre_drifts_to_another_hue():
    scene = world.parse_caption("a large orange circle in the middle, on a blue background")
    image = world.render(scene).copy()
    yy, xx = np.mgrid[:64, :64]
    image[(yy - 32) ** 2 + (xx - 32) ** 2 <= 8 ** 2] = world.COLOURS["yellow"]  # a yellow core
    reading = judge.read_scene(image)
    assert len(reading.objects) == 1 and reading.objects[0].position == "center"

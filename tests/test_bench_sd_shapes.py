"""benchmarks/bench_sd_shapes.py, the CPU comparison at SD 1.5's shapes, works: on narrow
widths it runs every variant side by side and reports the job loop's waits on writers."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests.bench_loader import load_benchmark  # noqa: E402


@pytest.mark.slow
def test_bench_sd_shapes_times_every_variant_and_the_waits_on_writers(tmp_path):
    from precompute import latent_preview

    fit, n_images = latent_preview.fit_latent_preview, latent_preview.N_IMAGES
    bench = load_benchmark("bench_sd_shapes")
    result = bench.main(["--quick", "--sizes", "64", "--steps", "1", "--seeds", "1", "2",
                            "--serial-up-to", "64", "--out", str(tmp_path / "r.json")])
    # the benchmark's cached preview map is its own: the module is as it was
    assert latent_preview.fit_latent_preview is fit and latent_preview.N_IMAGES == n_images
    (size,) = result["sizes"]
    v = size["variants"]
    assert list(v) == ["(c) plain StableDiffusionPipeline", "(b) loop, no captures or decodes",
                       "(a0) precompute, --workers 0", "(a) precompute, --workers 1"]
    assert all(x["seconds"] > 0 for x in v.values())
    serial, pool = v["(a0) precompute, --workers 0"], v["(a) precompute, --workers 1"]
    # 1 prompt x 2 seeds x guidance 7: two runs, one job each, both written
    assert size["jobs"] == 2 and serial["computed"] == pool["computed"] == 2
    assert (serial["workers"], pool["workers"]) == (0, 1)
    # serial writes are all waiting, none of it a drain; the pool's last job is drained
    assert serial["write_wait_seconds"] > 0 and serial["write_drain_seconds"] == 0
    assert 0 < pool["write_drain_seconds"] <= pool["write_wait_seconds"]
    for x in (serial, pool):
        assert x["wall_over_compute"] >= 1 and x["wall_over_compute_full_set"] >= 1
    assert size["parts"]["seconds_per_unet_row"] > 0
    # each job's 3 latents (1 step) are decoded in whole batches: the padded count
    w = size["workload"]
    assert w["precompute_decodes"] == 2 * 3
    assert w["precompute_decodes_padded"] == 2 * -(-3 // w["decode_batch"]) * w["decode_batch"]
    # --table reprints the saved measurements with the same derived columns
    again = bench.main(["--table", str(tmp_path / "r.json")])
    assert again["sizes"][0]["variants"] == json.loads(json.dumps(v))

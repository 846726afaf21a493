"""Trajectory maps: one fitted projection per call, deterministic, (T+1, 2) per run."""

import numpy as np
import pytest

from precompute.projection import project_trajectories


def trajectories(n_runs=3, steps=10, seed=0):
    """Random walks that converge, like latents from x_T to x_0: {run_id: (T+1, 4, 8, 8)}."""
    rng = np.random.default_rng(seed)
    return {f"run-{i}": np.cumsum(rng.normal(size=(steps + 1, 4, 8, 8)), axis=0).astype(np.float32)
            for i in range(n_runs)}


def test_pca_projection_is_deterministic_with_shape_t_plus_1_by_2():
    runs = trajectories()
    first = project_trajectories(runs, method="pca", seed=0)
    second = project_trajectories(dict(reversed(list(runs.items()))), method="pca", seed=0)
    assert set(first) == set(runs)
    for run_id, points in first.items():
        assert points.shape == (11, 2) and points.dtype == np.float32
        np.testing.assert_allclose(points, second[run_id], atol=1e-5)


def test_projection_is_normalized_to_minus_one_one():
    points = np.concatenate(list(project_trajectories(trajectories(), method="pca").values()))
    assert points.min() >= -1 - 1e-6 and points.max() <= 1 + 1e-6
    assert np.isclose(np.abs(points).max(), 1, atol=1e-6)


def test_runs_share_one_map():
    """A run's points depend on the other runs passed: they were fitted together."""
    runs = trajectories()
    together = project_trajectories(runs, method="pca")
    alone = project_trajectories({"run-0": runs["run-0"]}, method="pca")
    assert not np.allclose(together["run-0"], alone["run-0"])


def test_pca_first_axis_follows_the_main_direction_of_change():
    line = np.linspace(0, 1, 11, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 8, 8), np.float32)
    (points,) = project_trajectories({"r": line}, method="pca").values()
    np.testing.assert_allclose(np.abs(points[:, 0]), np.abs(np.linspace(-1, 1, 11)), atol=1e-5)
    # the second axis is rounding noise: the float32 Gram matrix is off by up to about
    # D * eps32 of its scale (D = 256 numbers summed per entry), so the second axis scores
    # reach up to sqrt(D * eps32) = 5.5e-3 of the first axis' range (observed 4e-4 here;
    # another CPU sums in another order)
    d = line[0].size
    np.testing.assert_allclose(points[:, 1], 0, atol=np.sqrt(d * np.finfo(np.float32).eps))


def test_unknown_method_raises_value_error():
    with pytest.raises(ValueError, match="umap"):
        project_trajectories(trajectories(), method="tsne")


@pytest.mark.slow
def test_umap_projection_is_deterministic_with_shape_t_plus_1_by_2():
    """Slow: numba compiles UMAP on first use (about 15 s)."""
    runs = trajectories(n_runs=2, steps=8)
    first = project_trajectories(runs, method="umap", seed=3)
    second = project_trajectories(runs, method="umap", seed=3)
    for run_id, points in first.items():
        assert points.shape == (9, 2)
        np.testing.assert_array_equal(points, second[run_id])
        assert np.all(np.abs(points) <= 1 + 1e-6)

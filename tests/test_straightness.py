"""precompute/straightness.py: the straightness the app shows per path and the bench
measures (issue 16): 0 on a straight path, in flow time and through the teacher's VP
conversion; the sigma-weighted value worked out by hand on curved paths; 0 by construction
for one step, its rounding left in chord_mismatch."""

import math

import numpy as np
import pytest

from precompute import straightness as st

# float64 sums of O(1) numbers: relative rounding ~1e-16 per element, squared ~1e-32;
# 1e-24 of |chord|^2 leaves room for a few hundred elements and steps and nothing else
STRAIGHT = 1e-24


def euler(z, sigmas, velocities):
    """An Euler path's end from z: y <- y - (sigma_i - sigma_i+1) v_i."""
    y = z.copy()
    for i, v in enumerate(velocities):
        y = y - (sigmas[i] - sigmas[i + 1]) * v
    return y


def test_a_straight_path_walked_at_constant_speed_measures_zero():
    rng = np.random.default_rng(0)
    z, x0 = rng.standard_normal((2, 2, 3, 4))  # (B, ...) two samples
    sigmas = np.array([1.0, 0.9, 0.6, 0.25, 0.0])  # uneven steps
    velocities = np.stack([z - x0] * 4)
    end = euler(z, sigmas, velocities)
    found = st.straightness(st.flow_path(sigmas[:-1], 0.0, velocities, z, end))
    assert found["length"] == 1.0
    assert np.all(found["relative"] < STRAIGHT) and np.all(found["chord_mismatch"] < STRAIGHT)


def test_a_vp_teachers_ddim_path_to_a_point_is_straight_in_flow_time():
    """A VP model whose data is one point predicts x0_hat = target at every call; its
    DDIM path (x' = sqrt(a') x0_hat + sqrt(1 - a') eps_hat) is curved in x_t but a straight
    line at constant speed in y = x_t / (a + s), sigma = s / (a + s), ending at alpha_bar_0."""
    rng = np.random.default_rng(1)
    z, target = rng.standard_normal((2, 1, 8))
    alpha_bars, end_bar = [0.0, 0.2, 0.6, 0.9], 0.99915
    x, samples, outputs = z, [], []
    for i, a in enumerate(alpha_bars):
        eps_hat = (x - math.sqrt(a) * target) / math.sqrt(1 - a)
        samples.append(x)
        outputs.append(math.sqrt(a) * eps_hat - math.sqrt(1 - a) * target)  # v_prediction
        nxt = alpha_bars[i + 1] if i + 1 < len(alpha_bars) else end_bar
        x = math.sqrt(nxt) * target + math.sqrt(1 - nxt) * eps_hat
    path = st.vp_path(alpha_bars, end_bar, samples, outputs, x, "v_prediction")
    found = st.straightness(path)
    assert path.sigmas[0] == 1.0 and found["length"] == pytest.approx(1 - st.vp_to_flow(end_bar)[1])
    # (its end read as x_t, not x_t / (a + s) = x_t / 1.0287, would be ~1e-4 off the chord)
    assert found["relative"][0] < STRAIGHT and found["chord_mismatch"][0] < STRAIGHT


@pytest.mark.parametrize("sigmas, k, expected", [
    # sigma steps 1/4, 3/4, velocities c + b then c - b/3 (their weighted mean is c):
    # S = 1/4 |b|^2 + 3/4 |b/3|^2 = (1/4 + 1/12) |b|^2 = |b|^2 / 3 (the unweighted mean
    # over calls would be 0.56 |b|^2)
    ([1.0, 0.75, 0.0], -1 / 3, 1 / 3),
    # two steps of 0.4 ending at sigma 0.2 (L = 0.8), velocities c + b, c - b: the chord is
    # (z - x0) / L = c, S = |b|^2
    ([1.0, 0.6, 0.2], -1.0, 1.0),
])
def test_a_curved_paths_straightness_is_its_sigma_weighted_velocity_variance(sigmas, k, expected):
    c = np.array([[1.0, 2.0, -1.0, 0.5]])  # (B=1, 4): |c|^2 = 6.25 / 4 per element
    b = np.array([[0.5, -0.5, 0.5, -0.5]])  # |b|^2 = 0.25 per element
    z = np.array([[0.3, -1.2, 0.8, 2.0]])
    velocities = np.stack([c + b, c + k * b])
    path = st.flow_path(sigmas[:-1], sigmas[-1], velocities, z, euler(z, sigmas, velocities))
    found = st.straightness(path)
    # hand values: S = expected |b|^2, relative = S / |c|^2; float64 rounding of O(1) sums
    assert found["S"][0] == pytest.approx(expected * 0.25, rel=1e-12)
    assert found["relative"][0] == pytest.approx(expected * 0.25 / (6.25 / 4), rel=1e-12)
    assert found["chord_mismatch"][0] < STRAIGHT


def test_one_step_is_straight_by_construction_and_its_rounding_is_reported_apart():
    z, c = np.array([[1.0, -2.0, 0.5]]), np.array([[0.4, 0.1, -0.3]])
    off = 1e-3  # a recording whose velocity is off its own step by 1e-3 of it
    path = st.flow_path([1.0], 0.0, c[None], z, z - c * (1 + off))
    found = st.straightness(path)
    assert found["S"][0] == 0 and found["relative"][0] == 0
    assert found["chord_mismatch"][0] == pytest.approx((off / (1 + off)) ** 2, rel=1e-9)


def test_the_predictions_convert_to_one_x0_and_noise():
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal((2, 6))
    a, s = math.sqrt(0.3), math.sqrt(0.7)
    x = a * x0 + s * eps
    for kind, out in (("epsilon", eps), ("v_prediction", a * eps - s * x0), ("sample", x0)):
        got = st.vp_predictions(out, x, 0.3, kind)
        assert np.allclose(got, (x0, eps), rtol=0, atol=1e-12), kind  # O(1) values, float64
    with pytest.raises(ValueError, match="zero terminal SNR"):
        st.vp_predictions(eps, x, 0.0, "epsilon")
    with pytest.raises(ValueError, match="'flow'"):
        st.vp_predictions(eps, x, 0.3, "flow")
    with pytest.raises(ValueError, match="sigma falling"):
        st.straightness(st.flow_path([1.0, 1.0], 0.0, np.stack([x[None]] * 2), x[None], x0[None]))

"""What a multistep solver's step takes from this UNet call and from earlier calls
(precompute/multistep.py, run.json's `scheduler.multistep`, issue 19).

Tiny random pipelines (tests/tiny_sd.py), fp32 on CPU, offline. The split is checked
two ways: it adds up to the scheduler's own prev_sample (replaying the recorded run with
a fresh scheduler), and its shares equal the ones the solvers' published weights give
(PLMS's Adams-Bashforth 55, -59, 37, -9 over 24; PRK's Runge-Kutta 1, 2, 2, 1 over 6;
LMS's coefficients from diffusers' get_lms_coefficient) applied to the recorded outputs.
"""

import copy
import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from backend.validate_run import _multistep  # noqa: E402
from precompute.loop import _project, run_guidance_sweep  # noqa: E402
from precompute.multistep import Tracker  # noqa: E402
from precompute.run import scheduler_record  # noqa: E402
from tests.tiny_sd import tiny_components  # noqa: E402

torch.set_num_threads(1)

PROMPT, STEPS, SIZE, SEED = "a red circle on the left", 5, 16, 3
MULTISTEP = ["lms", "pndm", "dpmpp_2m", "unipc"]
# Reconstruction: rest + current + history_k are differences of a few float32 scheduler
# steps on values of the latent's size, so their sum is off from prev_sample by float32
# rounding of that size: 1e-5 of max|x_{t-1}| (about 100 ulps) is ample; a dropped or
# double-counted stored output is off by a good fraction of the step's move (>= 1e-2 here).
RECONSTRUCT_RTOL = 1e-5
# Shares are ratios of sums over the latent of float32 parts: 1e-4 absolute (shares are
# of order 1) allows the cancellation in x_{t-1} - rest (the move is ~1/10 of the latent).
SHARE_ATOL = 1e-4


@functools.lru_cache(maxsize=None)  # each scheduler's sweep once: the tests only read it
def sweep(kind, name, scales=(0, 7.5)):
    c = tiny_components(kind, name)
    return c, run_guidance_sweep(c, PROMPT, SEED, list(scales), STEPS, SIZE, SIZE,
                                 capture_attention=False)


@pytest.mark.parametrize("kind, name", [("sd15", n) for n in MULTISTEP] + [("sd2v", "unipc")])
def test_the_split_adds_up_to_the_schedulers_step_and_is_what_the_run_recorded(kind, name):
    """Replay the recorded guided run with a fresh scheduler: at every call rest + current
    + sum(history) equals the step's prev_sample, and the shares are the recorded ones."""
    c, (_, run) = sweep(kind, name)
    scheduler = copy.deepcopy(c.scheduler)
    scheduler.set_timesteps(STEPS)
    tracker, rec = Tracker(), run.multistep
    assert len(rec["current"]) == len(rec["history"]) == len(run.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        x_t, out = torch.from_numpy(run.latents[i][None]), torch.from_numpy(run.noise_pred[i][None])
        before = copy.deepcopy(scheduler)
        prev = scheduler.step(out, t, x_t).prev_sample
        zero_step, parts = tracker.step(before, out, prev, lambda s, o: s.step(o, t, x_t).prev_sample)
        scale = float(prev.abs().max())
        total = parts.rest + parts.current + sum(parts.history, torch.zeros_like(prev))
        np.testing.assert_allclose(total.numpy(), prev.numpy(), rtol=0, atol=RECONSTRUCT_RTOL * scale,
                                   err_msg=f"{name} call {i}")
        np.testing.assert_allclose(prev[0].numpy(), run.latents[i + 1], rtol=0, atol=1e-6 * scale)
        # the zero-output step the tracker made is the one the run's weaken was measured with
        assert float(-_project(prev - zero_step, out)[0]) == pytest.approx(float(run.weaken[i]), rel=1e-5, abs=1e-7)
        assert len(parts.history) == len(rec["history"][i]) and parts.history_calls == rec["history_calls"][i]
        np.testing.assert_allclose([float(parts.current_share[0]), *parts.history_shares[0].tolist()],
                                   [rec["current"][i], *rec["history"][i]], rtol=0, atol=SHARE_ATOL)
    # a multistep solver uses earlier calls after its first step; run.json keeps the record
    assert rec["history_calls"][0] == 0 and max(rec["history_calls"]) >= 1
    assert scheduler_record(run)["multistep"] == rec and _multistep(rec, len(run.timesteps))


def test_single_step_schedulers_record_no_history():
    for name in ("ddim", "euler"):
        _, runs = sweep("sd15", name, (7.5,))
        assert all(r.multistep is None for r in runs)
        assert "multistep" not in scheduler_record(runs[0])


def _shares(weighted):
    """Per term, <w_k e_k, M> / <M, M> with M = sum_k w_k e_k: its share of the move."""
    move = sum(w * e.astype(np.float64) for w, e in weighted)
    return [float(w * (e * move).sum() / (move * move).sum()) for w, e in weighted]


def test_pndm_shares_are_the_runge_kutta_and_adams_bashforth_weights_of_the_outputs():
    """PNDM with PRK warm-up (4 calls per step for 3 steps, then PLMS). Its 4th Runge-Kutta
    call moves by (e0 + 2 e1 + 2 e2 + e3) / 6 of its step's calls; the first PLMS call
    with three stored outputs (the PRK steps' first calls, 0, 4, 8) by
    (55 e12 - 59 e8 + 37 e4 - 9 e0) / 24; both through DDIM's transfer, which scales the
    combination by one factor (epsilon prediction), so the shares are the weights'."""
    _, (_, run) = sweep("sd15", "pndm")
    rec, e = run.multistep, run.noise_pred
    rk = _shares([(1, e[3]), (2, e[2]), (2, e[1]), (1, e[0])])
    assert rec["history_calls"][3] == 3 and len(rec["history"][3]) == 1  # summed in cur_model_output
    np.testing.assert_allclose([rec["current"][3], rec["history"][3][0]], [rk[0], sum(rk[1:])],
                               rtol=0, atol=SHARE_ATOL)
    assert rec["history_calls"][:3] == [0, 0, 0] and rec["current"][:3] == pytest.approx([1, 1, 1])
    ab4 = _shares([(55, e[12]), (-59, e[8]), (37, e[4]), (-9, e[0])])
    assert rec["history_calls"][12] == 3
    np.testing.assert_allclose([rec["current"][12], *rec["history"][12]], ab4, rtol=0, atol=SHARE_ATOL)
    assert ab4[0] > 1 and ab4[1] < 0  # an extrapolation: more than all of this call's output


def test_lms_shares_are_its_coefficients_applied_to_the_stored_outputs():
    """LMS with epsilon prediction: each stored derivative is the call's noise prediction,
    x_{t-1} = x_t + sum_k c_k eps_k with diffusers' get_lms_coefficient."""
    c, (_, run) = sweep("sd15", "lms")
    scheduler = copy.deepcopy(c.scheduler)
    scheduler.set_timesteps(STEPS)
    for i in range(STEPS):
        order = min(i + 1, 4)
        weighted = [(scheduler.get_lms_coefficient(order, i, k), run.noise_pred[i - k]) for k in range(order)]
        expected = _shares(weighted)
        got = [run.multistep["current"][i], *run.multistep["history"][i]]
        np.testing.assert_allclose(got, expected, rtol=0, atol=SHARE_ATOL, err_msg=f"call {i}")


def test_dpm_solver_shares_are_its_2m_weights_on_what_each_call_predicted():
    """DPM-Solver++ 2M, epsilon prediction: x_{t-1} = (s_{t-1}/s_t) x_t + a_{t-1}(1 - e^-h)
    ((1 + 1/2r) m_0 - 1/2r m_1), each m_k = x0 of call k = (x_k - sigma_k eps_k) / alpha_k.
    What call k's UNet output moved is its -sigma_k/alpha_k eps_k (diffusers' sigmas are
    that ratio); the x_k / alpha_k part is the latent's, in the rest, as for the current
    call. The last step is first order (lower_order_final below 15 steps)."""
    c, (_, run) = sweep("sd15", "dpmpp_2m")
    scheduler = copy.deepcopy(c.scheduler)
    scheduler.set_timesteps(STEPS)
    sigma, e = scheduler.sigmas.double().numpy(), run.noise_pred
    lam = -np.log(sigma[:-1])  # lambda = log(alpha / sigma_t) = -log(sigma)
    for i in range(1, STEPS - 1):
        r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
        expected = _shares([((1 + 0.5 / r) * -sigma[i], e[i]), (-0.5 / r * -sigma[i - 1], e[i - 1])])
        got = [run.multistep["current"][i], *run.multistep["history"][i]]
        np.testing.assert_allclose(got, expected, rtol=0, atol=SHARE_ATOL, err_msg=f"call {i}")
    assert run.multistep["history"][0] == [] and run.multistep["history"][STEPS - 1] == []


@pytest.fixture(scope="module")
def lms_bundle(tmp_path_factory):
    """The browser tests' small LMS bundle (random arrays, a scheduler.multistep record)."""
    from tests.test_browser_schedulers import make_scheduler_bundle

    return make_scheduler_bundle(tmp_path_factory.mktemp("lms") / "b", "lms")


@pytest.mark.parametrize("change, words", [
    (None, None),  # as written: valid
    (lambda r: r.update(history_calls=[1, 1, 2, 3]), "0 where history is empty"),
    (lambda r: r.update(current=r["current"][:3]), "current (4 numbers)"),
    (lambda r: r["history"].__setitem__(3, [0.1, 0.2, 0.3, 0.4]), "at most 3"),
    (lambda r: r.update(current="lots"), "an object of current"),
])
def test_the_validator_checks_the_multistep_record(lms_bundle, tmp_path, change, words):
    """scheduler.multistep is optional (older bundles validate without it) and, where
    present, has one entry per UNet call with history_calls consistent with history."""
    import json
    import shutil

    from backend.validator import validate_bundle
    from precompute.writer import build_index, write_json_atomic

    root = tmp_path / "b"
    shutil.copytree(lms_bundle, root)
    path = next((root / "runs").glob("*-g7/run.json"))
    if change is not None:
        manifest = json.loads(path.read_text())
        change(manifest["scheduler"]["multistep"])
        write_json_atomic(path, manifest)
        write_json_atomic(root / "bundle.json", build_index(root))  # the run's new checksum
    errors = [(p.file, p.field, p.message) for p in validate_bundle(root) if p.severity == "error"]
    if words is None:
        assert errors == []
    else:
        assert [(f, fld) for f, fld, _ in errors] == [(str(path.relative_to(root)), "scheduler.multistep")]
        assert words in errors[0][2], errors


def test_a_dpm_solver_models_facts_are_json_without_infinities():
    """config.json records the scheduler's config; DPM-Solver's default lambda_min_clipped
    is -inf, which the bundle's JSON (allow_nan=False) cannot hold: it is written "-inf"
    (before: `noisepath precompute --scheduler dpmpp_2m` stopped writing config.json)."""
    import json

    c = tiny_components("sd15", "dpmpp_2m")
    facts = c.describe()
    json.dumps(facts, allow_nan=False)
    assert facts["scheduler"]["config"]["lambda_min_clipped"] == "-inf"

"""The bundle format's names and its error types (docs/bundle-format.md): shared by the
reader (backend/bundle.py), the validator (backend/validator.py) and the writer
(precompute/writer.py), so none of them spells the format on its own."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

FORMAT = "noisepath-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)   # 1: every array a .npy, every image a file (storage "full")
STORAGES = ("full", "compact")
MAX_TOKENS = 77

# images a run must have, and how many frames each holds (T = recorded_steps(config))
REQUIRED_IMAGES = {"decoded": 1, "pred_original_sample": 0, "latents": 1}
OPTIONAL_IMAGES = {"noise_pred_uncond": 0, "noise_pred_text": 0, "noise_pred": 0}
# arrays: name -> extra frames beyond T (latents hold x_T too)
STEP_ARRAYS = {"latents": 1, "noise_pred": 0, "pred_original_sample": 0,
               "noise_pred_uncond": 0, "noise_pred_text": 0, "variance_noise": 0}
# where a run's pred_original_sample comes from (run.json scheduler.pred_original_sample)
X0_SOURCES = ("step", "model_outputs", "formula", "denoised", "flow")
# config.guidance_mode (absent: classifier_free): "none", every run the prompt's prediction
# alone (guidance 1; SD-Turbo's way); "embedding", an LCM UNet given w = g - 1 as an
# embedding, no unconditional row (precompute/fewstep.py)
GUIDANCE_MODES = ("classifier_free", "none", "embedding")
ATTENTION_ARRAY = re.compile(r"attention(_res[1-9][0-9]{0,4}|_mid)?")  # (K, T, H, W) maps
IMAGE_MIMES = {"image/png": (".png",), "image/webp": (".webp",), "image/jpeg": (".jpg", ".jpeg")}

# Ids are names, never paths: the folder names of runs and prompts, URL segments
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")   # a file in its own folder
SEED_KEY = re.compile(r"0|[1-9][0-9]{0,18}")                  # a seed as a JSON key
SHA256 = re.compile(r"[0-9a-f]{64}")
# ranges (precompute/prompts.py refuses settings outside them)
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100
MAX_LATENT_CHANNELS = 64
MAX_LATENT_SIDE = 1024
MAX_ARRAY_BYTES = 1 << 30   # what one array may decode to (float16); a demo run's largest: 0.4 MB


@dataclass(frozen=True)
class Problem:
    file: str          # path relative to the bundle root
    field: str         # dotted field inside the file, or "" for the file itself
    message: str
    severity: str = "error"   # "error" | "warning"
    run_id: str | None = None      # the run it makes invalid (skipped with --skip-invalid)
    prompt_id: str | None = None   # the prompt it makes invalid (skipped with its runs)
    seed: str | None = None        # the trajectory map it makes invalid (skipped)
    section: str | None = None     # the optional section it makes invalid ("speech": left out)

    @property
    def skippable(self) -> bool:
        """A problem of one run, prompt, trajectory map or optional section, not of the
        whole bundle."""
        return (self.run_id, self.prompt_id, self.seed, self.section) != (None, None, None, None)

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{self.severity}: {where}: {self.message}"


class BundleError(Exception):
    def __init__(self, root, problems: list[Problem]):
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"bundle {root} has {len(problems)} problem(s):\n  {lines}{more}")
class ArrayReadError(BundleError):
    """A run array's file that passed the validator's checks (which read the start of
    each file) but cannot be read in full when first decoded: corrupt past its start, or
    broken after start-up."""

    def __init__(self, file: str, name: str, cause: Exception):
        self.problem = Problem(file, f"arrays.{name}", f"cannot be read ({type(cause).__name__}: "
                               f"{cause}); the file is corrupt or half-written (`noisepath "
                               "validate` with checksums finds every such file)")
        self.problems = [self.problem]
        Exception.__init__(self, str(self.problem))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recorded_steps(config: dict) -> int:
    """T, the steps a run records: one per UNet call (config.json's num_timesteps, more than
    num_inference_steps for heun, kdpm2 and pndm; bundles made before it: the same)."""
    return config.get("num_timesteps", config["num_inference_steps"])

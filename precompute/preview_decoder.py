"""`--preview-decoder`: a tiny decoder for a run's in-between frames.

Decoding every step with the full VAE is most of a GPU precompute's work (101 decodes a
50-step run). diffusers' AutoencoderTiny (TAESD, e.g. "madebyollin/taesd" for SD 1.x)
decodes the same latents about 50x cheaper and close enough for a frame the viewer
scrubs past. The rule: each run's final image (the last x_t) always comes from the full
VAE; every other x_t frame and every predicted-x0 frame from the tiny decoder. The run
records which frames are approximate and by how much the tiny decoder differs from the
full VAE on that run's final image (both decode it), in run.json's
`images.<name>.approximate` (docs/bundle-format.md); the app labels those frames with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from precompute.pipeline_io import DecodedRun, decode_padded


class PreviewDecoder:
    """An AutoencoderTiny on the model's device and dtype, and the name it was given."""

    def __init__(self, vae, name: str):
        self.vae, self.name = vae, str(name)

    @classmethod
    def load(cls, path_or_id: str, device, dtype) -> "PreviewDecoder":
        """A diffusers AutoencoderTiny from a folder or hub id (HF_HUB_OFFLINE is honoured)."""
        from diffusers import AutoencoderTiny

        try:
            vae = AutoencoderTiny.from_pretrained(str(path_or_id), torch_dtype=dtype)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"--preview-decoder {path_or_id}: not a diffusers AutoencoderTiny "
                             f"folder or hub id this machine can load ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return cls(vae.to(device).requires_grad_(False).eval(), path_or_id)

    def check(self, components) -> None:
        """Refuse a decoder that does not read this model's latents."""
        channels = components.unet.config.in_channels
        got = self.vae.config.latent_channels
        if got != channels:
            raise ValueError(f"--preview-decoder {self.name}: decodes {got}-channel latents, "
                             f"the model's have {channels}")

    def decode_job(self, components, results, batch_size: int) -> list[DecodedRun]:
        """Every frame of the job's runs with the tiny decoder, then each run's final x_t
        with the full VAE (which replaces the tiny one's, and measures it)."""
        latents = np.concatenate([np.concatenate([r.latents, r.pred_original_sample])
                                  for r in results])
        quick = decode_padded(components, latents, batch_size, vae=self.vae)
        finals = decode_padded(components, np.stack([r.latents[-1] for r in results]),
                               batch_size)                                    # (G, H, W, 3)
        if quick.shape[1:] != finals.shape[1:]:
            raise ValueError(f"--preview-decoder {self.name}: decodes to "
                             f"{quick.shape[1]}x{quick.shape[2]}, the model's VAE to "
                             f"{finals.shape[1]}x{finals.shape[2]}")
        out, start = [], 0
        for r, final in zip(results, finals):
            n, m = len(r.latents), len(r.pred_original_sample)
            decoded = quick[start:start + n].copy()
            difference = image_difference(decoded[-1], final)
            decoded[-1] = final
            out.append(DecodedRun(decoded, quick[start + n:start + n + m], {
                "decoded": self.entry([0, n - 2], difference),
                "pred_original_sample": self.entry([0, m - 1], difference)}))
            start += n + m
        return out

    def entry(self, frames: list[int], difference: dict) -> dict:
        """images.<name>.approximate: the decoder, the approximate frames (first and last,
        inclusive) and the difference measured on the run's final image."""
        return {"decoder": Path(self.name).name if Path(self.name).exists() else self.name,
                "frames": frames, "final_image_difference": difference}


def image_difference(approximate: np.ndarray, exact: np.ndarray) -> dict:
    """How far two uint8 RGB images (H, W, 3) are apart, in 0..255 levels: the mean and
    largest absolute difference per channel value, and the PSNR in dB."""
    a, b = np.asarray(approximate, np.float64), np.asarray(exact, np.float64)
    diff = np.abs(a - b)
    mse = float(np.mean(diff ** 2))
    psnr = 99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
    return {"mean_abs": round(float(diff.mean()), 3), "max_abs": int(diff.max()),
            "psnr_db": round(min(psnr, 99.0), 2)}

"""ControlNet in the instrumented loop: what the control image adds to the UNet, per step.

ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models") is a trainable copy of the UNet's encoder that reads an extra image (edges, a
scribble, a pose) and adds its features, through zero-initialised 1x1 convolutions, to
the frozen UNet's skip connections (`down_block_additional_residuals`) and to its mid
block (`mid_block_additional_residual`) at every UNet call. This module owns:

- loading a diffusers `ControlNetModel` (a folder or hub id) and checking it fits the UNet;
- the control image, prepared as StableDiffusionControlNetPipeline.prepare_image does;
- `ControlSweep`: the per-call `controlnet(...)` call for the loop's batched rows (each run
  its own `controlnet_conditioning_scale`, one `control_guidance_start/end` window, as the
  pipeline's `controlnet_keep`; guess_mode=False), the UNet keywords it gives, and what
  is recorded per run: each residual's norm and a magnitude map per resolution.

Names follow diffusers:

    down_block_res_samples   the residuals added to the UNet's skip connections, one per
                             skip (conv_in, every resnet, every downsampler), each scaled
    mid_block_res_sample     the residual added to the mid block's output
    conditioning_scale       controlnet_conditioning_scale x controlnet_keep[i]
    controlnet_keep[i]       1 while the call lies in [control_guidance_start, _end] of the
                             run (as fractions of its UNet calls), else 0

A run with conditioning scale 0 is the run without control: the UNet's output is exactly
the plain run's (adding zero residuals changes no value), so the bundle's normal run of
the same prompt, seed and guidance scale is the comparison (`uncontrolled_run_id`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# what the bundle calls the maps (docs/bundle-format.md, "ControlNet"): controlnet_res<h>
# for the skip connections at map height h, controlnet_mid for the mid block
MAP_PREFIX = "controlnet_"
IMAGE_NAME = "control_image"


# -- loading --------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _load(model: str, device: str, dtype):
    from diffusers import ControlNetModel

    try:
        controlnet = ControlNetModel.from_pretrained(str(model), torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise ValueError(f"controlnet {model!r} cannot be loaded as a diffusers ControlNetModel "
                         f"(a folder with config.json and diffusion_pytorch_model.*, or a hub "
                         f"id such as lllyasviel/sd-controlnet-canny): {str(e)[:300]}") from None
    return controlnet.to(device).eval().requires_grad_(False)


def load_controlnet(model: str, components):
    """The ControlNetModel `model` on the components' device and dtype (loaded once per
    process), or ValueError saying why it cannot drive this UNet."""
    controlnet = _load(str(model), str(components.device), components.dtype)
    check_controlnet(controlnet, components, model)
    return controlnet


def check_controlnet(controlnet, components, model="controlnet") -> None:
    """Refuse a ControlNet whose residuals the UNet cannot take (another base model)."""
    c, u = controlnet.config, components.unet.config
    if c.get("addition_embed_type") is not None or components.text_encoder_2 is not None:
        raise ValueError(f"{model}: SDXL ControlNets are not supported yet; use an SD 1.x or "
                         "2.x ControlNet with an SD 1.x or 2.x model")
    if c.get("global_pool_conditions"):
        raise ValueError(f"{model}: global_pool_conditions (the shuffle ControlNet) pools its "
                         "residuals to one value per channel, which has no map to record; use "
                         "another ControlNet")
    for key in ("in_channels", "cross_attention_dim"):
        if c.get(key) != u.get(key):
            raise ValueError(f"{model}: {key} is {c.get(key)}, the model's UNet has "
                             f"{u.get(key)}: this ControlNet was trained for another base model")
    if list(c.block_out_channels) != list(u.block_out_channels):
        raise ValueError(f"{model}: block_out_channels {list(c.block_out_channels)} do not "
                         f"match the UNet's {list(u.block_out_channels)}: this ControlNet was "
                         "trained for another base model")


# -- the control image ------------------------------------------------------------

def read_control_image(path):
    """The control image at `path` as an RGB PIL image, or ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"control image {path}: no such file") from None
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"control image {path}: not a readable image ({e})") from None


def prepare_image(image, components, height: int, width: int):
    """(1, 3, height, width) in [0, 1] on the components' device and dtype: the pipeline's
    prepare_image for one image (VaeImageProcessor with do_convert_rgb, no normalization:
    resized to height x width, values / 255)."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=components.vae_scale_factor,
                                  do_convert_rgb=True, do_normalize=False)
    tensor = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    return tensor.to(device=components.device, dtype=components.dtype)


def image_uint8(prepared) -> np.ndarray:
    """The prepared control image as the bundle stores it: (H, W, 3) uint8."""
    x = prepared[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (x * 255).round().astype(np.uint8)


def control_id(image_path, model: str, start: float, end: float) -> str:
    """The id of one control setup (image, ControlNet, start/end window), in run ids: the
    image's file name and 8 hex digits of a hash of all four, so another image or model
    never reuses a run."""
    from precompute.writer import slugify

    data = Path(image_path).read_bytes()
    digest = hashlib.sha1(data + f"\0{model}\0{float(start)!r}\0{float(end)!r}".encode())
    return f"{slugify(Path(image_path).stem, 20)}-{digest.hexdigest()[:8]}"


def controlnet_keep(i: int, calls: int, start: float, end: float) -> float:
    """1.0 while call i of `calls` lies in the control window, else 0.0: the pipeline's
    controlnet_keep (StableDiffusionControlNetPipeline.__call__, step 7.2)."""
    return 1.0 - float(i / calls < start or (i + 1) / calls > end)


def window(settings: dict) -> tuple[float, float]:
    """(control_guidance_start, control_guidance_end) of the settings (default 0, 1)."""
    start, end = settings.get("control_guidance_start"), settings.get("control_guidance_end")
    return float(0.0 if start is None else start), float(1.0 if end is None else end)


def sweep_for(settings: dict, image_path, scales: list[float], components) -> "ControlSweep":
    """The ControlSweep of one job: the settings' ControlNet and window, the image at
    `image_path` prepared at the settings' size, `scales` one per run of the sweep."""
    model = settings["controlnet"]
    start, end = window(settings)
    image = prepare_image(read_control_image(image_path), components, settings["height"],
                          settings["width"])
    return ControlSweep(load_controlnet(model, components), image, [float(c) for c in scales],
                        model, control_id(image_path, model, start, end), start, end)


# -- the residuals' names -----------------------------------------------------------

def block_names(controlnet) -> list[str]:
    """One name per residual, in down_block_res_samples' order, then the mid block: the
    UNet module whose output each joins (conv_in, down_blocks.<i>.resnets.<j>,
    down_blocks.<i>.downsamplers.0, mid_block)."""
    names = ["conv_in"]
    for i, block in enumerate(controlnet.down_blocks):
        names += [f"down_blocks.{i}.resnets.{j}" for j in range(len(block.resnets))]
        if getattr(block, "downsamplers", None):
            names.append(f"down_blocks.{i}.downsamplers.0")
    return names + ["mid_block"]


# -- one sweep ----------------------------------------------------------------------

@dataclass
class ControlRecord:
    """What one controlled run records (T = UNet calls, B = residuals incl. the mid block)."""

    model: str
    control_id: str
    conditioning_scale: float
    control_guidance_start: float
    control_guidance_end: float
    blocks: list[dict]                 # B x {name, resolution [h, w], channels}
    residual_norms: np.ndarray         # (T, B) |residual| of the text row, after scaling
    maps: dict[str, np.ndarray]        # "res<h>" / "mid" -> (T, 1, h, w) per-pixel magnitude
    image: np.ndarray                  # (H, W, 3) uint8, the image as the ControlNet read it


@dataclass
class ControlSweep:
    """The ControlNet of one loop sweep: `scales[g]` is run g's controlnet_conditioning_scale
    (0: that run is uncontrolled). The loop calls `unet_kwargs` once per UNet call and
    `record(g)` for each run's result."""

    controlnet: object
    image: object                      # (1, 3, H, W), prepare_image's
    scales: list[float]
    model: str = "controlnet"
    control_id: str = "control"
    start: float = 0.0
    end: float = 1.0
    _norms: list = field(default_factory=list)    # per call: {g: (B,) tensor}
    _maps: list = field(default_factory=list)     # per call: {g: {key: (h, w) tensor}}
    _blocks: list | None = None

    def unet_kwargs(self, i: int, calls: int, latent_model_input, t, encoder_hidden_states,
                    uncond_runs: list[int], text_runs: list[int]) -> dict:
        """The UNet's down_block_additional_residuals and mid_block_additional_residual for
        the rows [uncond x Gu, text x Gt] of call i ({} when no row is controlled now).
        Each row gets the residuals of its own run's scale x controlnet_keep[i], computed
        from the same latent, timestep and text embeddings the UNet sees (guess_mode=False:
        both branches of classifier-free guidance get control, as in the pipeline)."""
        if any(self.scales[g] for g in uncond_runs if g not in text_runs):
            raise ValueError("a guidance-0 run cannot have control here (it is the prompt-free "
                             "run every prompt shares); give it conditioning scale 0")
        keep = controlnet_keep(i, calls, self.start, self.end)
        row_runs = list(uncond_runs) + list(text_runs)
        row_scale = torch.tensor([self.scales[g] * keep for g in row_runs],
                                 device=latent_model_input.device, dtype=torch.float32)
        active = (row_scale != 0).nonzero().flatten()
        text_row = {g: len(uncond_runs) + k for k, g in enumerate(text_runs)}
        controlled = [g for g in text_runs if self.scales[g] != 0]
        if len(active) == 0:
            self._remember(None, text_row, controlled)
            return {}
        down, mid = self.controlnet(
            latent_model_input[active], t, encoder_hidden_states=encoder_hidden_states[active],
            controlnet_cond=self.image.expand(len(active), -1, -1, -1), conditioning_scale=1.0,
            guess_mode=False, return_dict=False)
        scale = row_scale[active].view(-1, 1, 1, 1)  # float32, as a Python scalar multiplies
        residuals = []
        for sample in [*down, mid]:  # the pipeline's sample * conditioning_scale, per row
            full = sample.new_zeros((len(row_runs), *sample.shape[1:]))
            full[active] = (sample * scale).to(sample.dtype)
            residuals.append(full)
        self._remember(residuals, text_row, controlled)
        return {"down_block_additional_residuals": tuple(residuals[:-1]),
                "mid_block_additional_residual": residuals[-1]}

    def _remember(self, residuals, text_row: dict, controlled: list[int]) -> None:
        """Per controlled run: each residual's norm and the per-pixel magnitude at each
        resolution, of its text-conditioned row (zeros where the window is closed)."""
        if residuals is not None and self._blocks is None:
            names = block_names(self.controlnet)
            self._blocks = [{"name": n, "resolution": list(r.shape[2:]), "channels": r.shape[1]}
                            for n, r in zip(names, residuals)]
        norms, maps = {}, {}
        for g in controlled:
            if residuals is None:
                norms[g], maps[g] = None, None
                continue
            rows = [r[text_row[g]].float() for r in residuals]             # (C_b, h_b, w_b)
            norms[g] = torch.stack([r.norm() for r in rows])              # (B,), on the device
            squares = {}
            for block, r in zip(self._blocks, rows):
                key = "mid" if block["name"] == "mid_block" else f"res{r.shape[1]}"
                squares[key] = squares.get(key, 0) + r.square().sum(dim=0)  # (h, w)
            maps[g] = {k: v.sqrt() for k, v in squares.items()}
        self._norms.append(norms)
        self._maps.append(maps)

    def record(self, g: int) -> ControlRecord | None:
        """Run g's record, or None for an uncontrolled run (scale 0)."""
        if self.scales[g] == 0 or not self._norms or g not in self._norms[0]:
            return None
        if self._blocks is None:
            raise ValueError("the control window held no UNet call: no residual was added "
                             "(control_guidance_start/end too close together for this many "
                             "steps)")
        shapes = {}
        for step in self._maps:
            if step[g] is not None:
                shapes = {k: tuple(v.shape) for k, v in step[g].items()}
                break
        norms = np.stack([np.zeros(len(self._blocks), np.float32) if n[g] is None
                          else n[g].cpu().numpy() for n in self._norms])     # (T, B)
        maps = {k: np.stack([np.zeros(hw, np.float32) if m[g] is None else m[g][k].cpu().numpy()
                             for m in self._maps])[:, None] for k, hw in shapes.items()}
        return ControlRecord(model=self.model, control_id=self.control_id,
                             conditioning_scale=float(self.scales[g]),
                             control_guidance_start=float(self.start),
                             control_guidance_end=float(self.end), blocks=self._blocks,
                             residual_norms=norms, maps=maps, image=image_uint8(self.image))


# -- in the bundle ------------------------------------------------------------------

def bundle_record(record: ControlRecord, uncontrolled_run_id: str) -> tuple[dict, dict, dict]:
    """A controlled run's run.json field `controlnet`, its map arrays and its control image
    (docs/bundle-format.md, "ControlNet")."""
    arrays = {MAP_PREFIX + key: maps for key, maps in record.maps.items()}
    manifest = {
        "model": record.model, "control_id": record.control_id,
        "conditioning_scale": record.conditioning_scale,
        "control_guidance_start": record.control_guidance_start,
        "control_guidance_end": record.control_guidance_end,
        "uncontrolled_run_id": uncontrolled_run_id,
        "blocks": record.blocks,
        "residual_norms": [[float(x) for x in row] for row in record.residual_norms],
        "maps": sorted(arrays, key=_map_order),
    }
    return manifest, arrays, {IMAGE_NAME: (record.image[None], "png")}


def _map_order(name: str):
    """Finest resolution first, the mid block last."""
    key = name.removeprefix(MAP_PREFIX)
    return (1, 0) if key == "mid" else (0, -int(key.removeprefix("res")))

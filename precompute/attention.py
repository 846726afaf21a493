"""Captures the UNet's cross-attention maps: which pixels look at which prompt token.

PyTorch's scaled_dot_product_attention never returns its weights, so for the
cross-attention layers (`attn2`, queries = pixels, keys = the 77 text tokens) we
let the stock processor compute the layer output (the image stays bit-identical to
an uncaptured run) and recompute, for the captured batch rows only,

    A = softmax(Q K^T * scale)        # (rows, heads, pixels, 77), in fp32

Self-attention (`attn1`) keeps its stock processor untouched. Everything is reduced
on the device before it reaches the host: mean over heads, only the prompt's real
tokens (start, word pieces, first end token; no padding), mean over the layers of one
resolution. Per step the host receives, for each captured row,

    "res64", "res32", ...  (rows, K, r_h, r_w)   mean over the layers at that resolution
    "mid"                  (rows, K, r_h, r_w)   the mid block (kept apart, see below)
    "combined"             (rows, K, h, w)       resolution maps upsampled bilinearly to
                                                 the latent size, equal weight each

"combined" leaves the mid block out: at the lowest resolution its map is a few blurry
pixels that, upsampled, dilute the average (shared/demo-trial/README.md measured it
at chance level). `combined_levels` (map heights, e.g. [16]) narrows it further to the
levels that localize for a given model: the demo model's 8x8 level spreads colour words
over the whole image (docs/demo-model.md), much as researchers average only SD's 16x16
maps (Hertz et al. 2022, Prompt-to-Prompt). `meta` records which layers fed which map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def is_cross_attention(name: str) -> bool:
    """Processor names of SD's cross-attention layers end in `attn2.processor`."""
    return name.endswith("attn2.processor")


def layer_resolution(latent_hw: tuple[int, int], seq_len: int) -> tuple[int, int]:
    """(r_h, r_w) of a layer with `seq_len` pixels: the latent halved k times.

    The UNet downsamples with stride-2 convolutions (padding 1), so each level is
    ceil(previous / 2); non-square latents are fine.
    """
    h, w = latent_hw
    while True:
        if h * w == seq_len:
            return h, w
        if h == 1 and w == 1:
            raise ValueError(f"no downsampling of latent size {latent_hw} has {seq_len} pixels")
        h, w = (h + 1) // 2, (w + 1) // 2


def level_heights(unet_config, latent_hw: tuple[int, int]) -> list[int]:
    """Map heights of the UNet's cross-attention levels outside the mid block, from its
    config alone (down block i works at the latent halved i times; the up blocks mirror
    them), largest first: [64, 32, 16] for SD 1.x at 512x512, [16, 8] for the demo."""
    h, heights = latent_hw[0], []
    for block in unet_config["down_block_types"]:
        heights.append(h)
        h = (h + 1) // 2
    up = list(reversed(heights))[:len(unet_config["up_block_types"])]
    levels = {heights[i] for i, b in enumerate(unet_config["down_block_types"]) if "CrossAttn" in b}
    levels |= {up[i] for i, b in enumerate(unet_config["up_block_types"]) if "CrossAttn" in b}
    return sorted(levels, reverse=True)


def check_levels(levels, available: list[int]) -> None:
    """Raise ValueError unless every height in `levels` is one of `available`."""
    missing = sorted(set(int(h) for h in levels) - set(available), reverse=True)
    if missing:
        raise ValueError(f"attention_levels {missing}: this UNet has no cross-attention level "
                         f"of that height at this image size; its levels are "
                         f"{', '.join(map(str, available)) or 'none'} (the mid block cannot "
                         "be chosen)")


def resolution_key(name: str, hw: tuple[int, int]) -> str:
    if name.startswith("mid_block"):
        return "mid"
    return f"res{hw[0]}" if hw[0] == hw[1] else f"res{hw[0]}x{hw[1]}"


def attention_probs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T * scale) over all keys, in fp32: (B, heads, pixels, keys).

    Mirrors the preprocessing of diffusers' AttnProcessor2_0 (group norm, cross norm,
    per-head q/k norms) so it is the distribution the stock layer used.
    """
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, N, C)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query = attn.to_q(hidden_states)  # (B, N, inner)
    key = attn.to_k(encoder_hidden_states)  # (B, 77, inner)
    batch, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, 77, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = query.float() @ key.float().transpose(-1, -2) * attn.scale  # (B, heads, N, 77)
    return scores.softmax(dim=-1)


class _CaptureProcessor:
    """Runs the stock processor, then hands the layer's inputs to the capture."""

    def __init__(self, capture: CrossAttentionCapture, name: str, stock):
        self.capture, self.name, self.stock = capture, name, stock

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if self.capture.active and encoder_hidden_states is not None:
            self.capture.record(self.name, attn, hidden_states, encoder_hidden_states)
        return out


class CrossAttentionCapture:
    """Context manager that captures cross-attention maps of some UNet batch rows.

        with CrossAttentionCapture(unet, latent_hw=(64, 64), n_tokens=K, rows=[2, 3]) as cap:
            for t in timesteps:
                unet(...)
                maps = cap.pop_step()   # {"combined": (2, K, 64, 64), "res16": ..., ...}

    rows: indices into the UNet batch to capture (e.g. the text-conditioned rows).
    n_tokens: keep keys [0, n_tokens) (the prompt's real tokens).
    check_softmax: also track the largest |sum over all keys - 1| (for tests).
    combined_levels: heights of the levels "combined" averages (default: all but mid).
    """

    def __init__(self, unet, latent_hw, n_tokens: int, rows, check_softmax: bool = False,
                 combined_levels=None):
        self.unet, self.latent_hw, self.n_tokens = unet, tuple(latent_hw), int(n_tokens)
        self.rows = list(rows)
        # the loop's text rows are contiguous: a slice selects them without an index copy
        contiguous = self.rows == list(range(self.rows[0], self.rows[-1] + 1)) if self.rows else False
        self._select = slice(self.rows[0], self.rows[-1] + 1) if contiguous else self.rows
        self.check_softmax = check_softmax
        self.combined_levels = None if combined_levels is None else sorted(
            {int(h) for h in combined_levels}, reverse=True)
        self.max_softmax_error = 0.0
        self.active = False
        self.layers: dict[str, str] = {}  # layer name -> resolution key, in call order
        self.sizes: dict[str, tuple[int, int]] = {}  # resolution key -> (r_h, r_w)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._calls = 0

    # -- installing and removing the processors
    def __enter__(self):
        self._original = self.unet.attn_processors
        processors = {
            name: _CaptureProcessor(self, name, proc) if is_cross_attention(name) else proc
            for name, proc in self._original.items()
        }
        self.n_cross_layers = sum(map(is_cross_attention, processors))
        self.unet.set_attn_processor(processors)
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False
        self.unet.set_attn_processor(dict(self._original))
        return False

    # -- called from inside the UNet, once per cross-attention layer
    @torch.no_grad()
    def record(self, name, attn, hidden_states, encoder_hidden_states):
        rows = self._select
        probs = attention_probs(attn, hidden_states[rows], encoder_hidden_states[rows])  # (R, heads, N, 77)
        if self.check_softmax:
            error = (probs.sum(dim=-1) - 1).abs().max().item()
            self.max_softmax_error = max(self.max_softmax_error, error)
        seq_len = probs.shape[2]
        hw = layer_resolution(self.latent_hw, seq_len)
        key = resolution_key(name.removesuffix(".processor"), hw)
        self.layers.setdefault(name.removesuffix(".processor"), key)
        self.sizes[key] = hw
        maps = probs.mean(dim=1)[..., : self.n_tokens]  # (R, N, K)
        maps = maps.transpose(1, 2).reshape(len(self.rows), self.n_tokens, *hw)  # (R, K, r_h, r_w)
        if key in self._sums:
            self._sums[key] += maps
            self._counts[key] += 1
        else:
            self._sums[key], self._counts[key] = maps, 1
        self._calls += 1

    # -- called by the loop once per UNet call
    @torch.no_grad()
    def pop_step(self) -> dict[str, torch.Tensor]:
        """This step's maps on the host, float32, and reset for the next step."""
        if self._calls != self.n_cross_layers:
            raise RuntimeError(f"captured {self._calls} cross-attention calls, expected {self.n_cross_layers}")
        maps = {key: total / self._counts[key] for key, total in self._sums.items()}  # (R, K, r_h, r_w)
        combined = [
            maps[key] if self.sizes[key] == self.latent_hw
            else F.interpolate(maps[key], size=self.latent_hw, mode="bilinear", align_corners=False)
            for key in self.combined_keys
        ]
        maps["combined"] = torch.stack(combined).mean(dim=0)  # (R, K, h, w)
        self._sums, self._counts, self._calls = {}, {}, 0
        return {key: value.float().cpu() for key, value in maps.items()}

    @property
    def combined_keys(self) -> list[str]:
        """Resolution keys averaged into "combined": those of `combined_levels`, else all but
        the mid block (if anything else)."""
        keys = sorted({k for k in self.layers.values() if k != "mid"}, key=lambda k: -self._area(k))
        if self.combined_levels is None:
            return keys or ["mid"]
        check_levels(self.combined_levels, [self.sizes[k][0] for k in keys])
        return [k for k in keys if self.sizes[k][0] in self.combined_levels]

    def _area(self, key):
        return self.sizes[key][0] * self.sizes[key][1]

    @property
    def meta(self) -> dict:
        """Which layers went into which map (JSON-ready)."""
        return {
            "n_layers": len(self.layers),
            "latent_size": list(self.latent_hw),
            "resolutions": {
                key: {"size": list(self.sizes[key]), "layers": [n for n, k in self.layers.items() if k == key]}
                for key in sorted(self.sizes, key=lambda k: -self._area(k))
            },
            "combined": {"size": list(self.latent_hw), "from": self.combined_keys,
                         "upsampling": "bilinear", "weights": "equal per resolution"},
            "heads": "mean",
            "tokens": self.n_tokens,
        }

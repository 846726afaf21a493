"""Compact storage of a run's arrays (docs/bundle-format.md, "Compact storage").

Two ideas, numpy only, shared by the writer (precompute/writer.py) and the reader
(backend/bundle.py) so the two cannot drift apart:

- q8-delta: each 2-D map (one step and channel of a latent, one token and step of an
  attention map) is quantized to 8 bits between its own min and max,

      q = round((x - lo) / scale),  scale = (max - min) / 255   # |x - (lo + q*scale)| <= scale/2

  and the uint8 values are delta-coded along the step axis (wrapping mod 256, so the
  delta step is lossless) before deflate: neighbouring steps are alike, so the deltas
  are small and compress well. Stored as `<name>.q8.npz` with members q, lo, scale,
  each LZMA-compressed (a standard zip method that numpy's np.load and Python's zipfile
  read; 20% smaller than deflate on the demo bundle). Files with deflated members, as
  earlier writers made them, read the same.
- resized attention: compact storage keeps an attention level no larger than the app
  draws it (ATTENTION_STORED_SIDE; docs/bundle-format.md), averaged over f x f blocks,
  and the reader upsamples it back to the level's shape bilinearly (`stored_shape` in
  the manifest entry: the q member's shape).
- derived arrays, not stored at all, recomputed exactly as the precompute defines them:
  the guided noise prediction (classifier-free guidance) and the combined attention map
  (the per-resolution maps upsampled bilinearly like torch's F.interpolate, averaged).
"""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np

ENCODING = "q8-delta"
MEMBERS = ("q", "lo", "scale")
DERIVED_KINDS = ("guidance", "attention_mean")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so identical arrays give identical files
# The largest side compact storage keeps an attention map at. The app lays a map over the
# decoded image, drawn at most 16-17rem (256-272 CSS px) wide and smoothed by the browser:
# a 32 x 32 map is 8 CSS px a cell there. Averaged 2 x 2 and upsampled back bilinearly,
# an SD-sized stand-in's 64 x 64 level came back within 3.1% of its range (at blob peaks)
# and localized as well as before (docs/performance.md, "Bundle size at Stable
# Diffusion's size").
ATTENTION_STORED_SIDE = 32


def step_axis(name: str) -> int:
    """Run arrays are (T, C, h, w), attention maps (K, T, H, W): the axis of the steps."""
    return 1 if name.startswith("attention") else 0


# ------------------------------------------------------------------------- q8-delta

def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8, lo float32, scale float32) per 2-D map over the last two axes."""
    x = np.asarray(x, np.float32)
    lo = x.min(axis=(-2, -1), keepdims=True)                      # (..., 1, 1)
    scale = (x.max(axis=(-2, -1), keepdims=True) - lo) / np.float32(255)
    safe = np.where(scale > 0, scale, np.float32(1))              # a constant map: q = 0
    q = np.clip(np.rint((x - lo) / safe), 0, 255).astype(np.uint8)
    return q, lo, scale


def delta(q: np.ndarray, axis: int) -> np.ndarray:
    """q[i] - q[i-1] along axis (the first slice kept), wrapping mod 256."""
    return np.diff(q, axis=axis, prepend=np.zeros_like(np.take(q, [0], axis=axis)))


def undelta(d: np.ndarray, axis: int) -> np.ndarray:
    return np.cumsum(d, axis=axis, dtype=np.uint8)                # wraps mod 256


def dequantize(q: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return lo + q * scale                                          # float32


def encode(x: np.ndarray, axis: int) -> tuple[bytes, np.ndarray]:
    """An array -> (the .q8.npz file's bytes, the float32 values a reader decodes)."""
    q, lo, scale = quantize(x)
    members = {"q": delta(q, axis), "lo": lo, "scale": scale}
    return npz_bytes(members), dequantize(q, lo, scale)


def decode(members: dict[str, np.ndarray], axis: int) -> np.ndarray:
    """The members of a .q8.npz -> float32 values (callers cast to float16)."""
    return dequantize(undelta(members["q"], axis), members["lo"], members["scale"])


def npz_bytes(members: dict[str, np.ndarray], compression: int = zipfile.ZIP_LZMA) -> bytes:
    """An .npz (a zip of .npy files, LZMA-compressed) with fixed timestamps: deterministic.

    np.savez_compressed stamps each member with the current time, so two writes of the
    same arrays would differ; this writes the same zip without the clock. compression:
    zipfile.ZIP_LZMA (the default; np.load reads it) or zipfile.ZIP_DEFLATED.
    """
    if compression not in (zipfile.ZIP_LZMA, zipfile.ZIP_DEFLATED):
        raise ValueError(f"compression must be zipfile.ZIP_LZMA or ZIP_DEFLATED, not {compression!r}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, array in members.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compress_type=compression,
                        compresslevel=9 if compression == zipfile.ZIP_DEFLATED else None)
    return buf.getvalue()


class MemberTooLarge(ValueError):
    """An .npz member that declares more bytes than its array may hold: refused before
    anything is inflated (a small file can inflate to gigabytes)."""

    def __init__(self, member: str, declared: int, limit: int):
        self.member = member
        super().__init__(f"member {member}.npy declares {declared:,} bytes inflated; the "
                         f"manifest's shape allows at most {limit:,}: refused unread")


HEADER_BYTES = 1 << 12   # room for an .npy member's header (numpy writes 128 bytes)
_SMALL_READ = 256        # compressed bytes zipfile fetches for a small read (its default: 4 KiB)
_CHUNK = 1 << 12         # compressed bytes inflated at a time (LZMA inflates each to <= ~28 MB)


def member_limits(shape) -> dict[str, int]:
    """The most bytes each member of a q8-delta file of decoded `shape` may inflate to."""
    n = math.prod(shape)
    m = math.prod(spatially_reduced(shape))
    return {"q": HEADER_BYTES + n, "lo": HEADER_BYTES + 4 * m, "scale": HEADER_BYTES + 4 * m}


def read_npz(path, header_only: tuple[str, ...] = (), limits: dict[str, int] | None = None,
             sizes_only: tuple[str, ...] = ()) -> dict[str, object]:
    """Members of an .npz: name -> array, or (dtype, shape) for names in header_only
    (read from the member's first bytes, without inflating the rest), or the number of
    bytes it declares for names in sizes_only (from the zip's directory: nothing read).
    Raises on a bad file.

    limits (member_limits): name -> the most bytes the member may inflate to. A member
    declaring more raises MemberTooLarge before it is inflated; a member not named is
    listed as (None, None), unread. Without limits every member is read (the writer's own
    files, tests)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            if limits is not None and name not in limits:
                out[name] = (None, None)
                continue
            if limits is not None and info.file_size > limits[name]:
                raise MemberTooLarge(name, info.file_size, limits[name])
            if name in sizes_only:
                out[name] = info.file_size
                continue
            with zf.open(info) as f:
                # zipfile inflates all it fetches (LZMA without an output bound): a header
                # read of 4 KiB of compressed deltas inflated ~16 KiB, 1 CPU s over the
                # demo bundle's validation. Bulk reads (_CHUNK) fetch as much as before.
                f.MIN_READ_SIZE = _SMALL_READ
                out[name] = _read_member(f, info.file_size, name in header_only)
    return out


def _read_member(f, size: int, header_only: bool):
    """One .npy member: its array, read in bounded chunks after checking that the header's
    shape is exactly what the member holds; or (dtype, shape)."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read(f)
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ValueError("an .npz member holds Python objects; only numbers are read")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != size - f.tell():
        raise ValueError(f"a member's header says {list(shape)} {dtype} ({nbytes:,} bytes), "
                         f"but it holds {size - f.tell():,} bytes")
    if header_only:
        return dtype, tuple(shape)
    data = bytearray(nbytes)
    view, pos = memoryview(data), 0
    while pos < nbytes:  # small reads: zipfile inflates about one read's worth at a time
        got = f.readinto(view[pos:pos + _CHUNK])
        if not got:
            raise EOFError(f"a member ends after {pos:,} of {nbytes:,} bytes")
        pos += got
    array = np.frombuffer(data, dtype)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def load(path, axis: int, shape=None, stored_shape=None) -> np.ndarray:
    """A .q8.npz file -> float32 values. shape: the manifest's (decoded) shape; given, no
    member is inflated beyond what it implies (member_limits). stored_shape: the members'
    shape when the maps were stored smaller (resized attention): decoded, then upsampled
    bilinearly to shape."""
    stored = stored_shape if stored_shape is not None else shape
    members = read_npz(path, limits=None if stored is None else member_limits(stored))
    if stored is not None:
        check_members(members, stored)
    values = decode(members, axis)
    if shape is not None and list(values.shape) != list(shape):
        values = upsample_bilinear(values, list(shape)[-2:])
    return values


# ------------------------------------------------------------------ resized maps

def stored_factor(shape, largest: int | None = None) -> int:
    """The block side f a map of `shape` (..., h, w) is averaged over to be stored no larger
    than `largest` (default ATTENTION_STORED_SIDE) on a side: the smallest f that divides h
    and w with both sides <= largest and neither below largest / 2; 1 (kept as it is) when
    the map is that small already or no such f exists."""
    largest = ATTENTION_STORED_SIDE if largest is None else largest
    h, w = int(shape[-2]), int(shape[-1])
    if max(h, w) <= largest:
        return 1
    for f in range(2, max(h, w) + 1):
        small = (h // f, w // f)
        if h % f == 0 and w % f == 0 and max(small) <= largest and min(small) >= largest // 2:
            return f
    return 1


def downsample_area(x: np.ndarray, f: int) -> np.ndarray:
    """Each f x f block of the last two axes averaged (float32): (..., h, w) -> (..., h/f, w/f)."""
    x = np.asarray(x, np.float32)
    if f == 1:
        return x
    *lead, h, w = x.shape
    return x.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1), dtype=np.float32)


def encode_resized(x: np.ndarray, axis: int, f: int) -> tuple[bytes, np.ndarray, list[int]]:
    """encode() of the maps averaged over f x f blocks: (file bytes, the float32 values a
    reader gets back at x's shape, the stored shape)."""
    small = downsample_area(x, f)
    data, values = encode(small, axis)
    if f > 1:
        values = upsample_bilinear(values, x.shape[-2:])
    return data, values, list(small.shape)


def check_members(members: dict[str, np.ndarray], shape) -> None:
    """What a reader needs of a q8-delta file of decoded `shape` (ValueError naming the
    member otherwise): q uint8 of that shape; lo and scale float32 with both map axes 1,
    finite, scale >= 0. Start-up validation reads only q's header and the others' sizes."""
    reduced = tuple(spatially_reduced(shape))
    expected = {"q": (np.uint8, tuple(shape)), "lo": (np.float32, reduced),
                "scale": (np.float32, reduced)}
    for key, (dtype, shape_) in expected.items():
        a = members[key]
        if a.dtype != dtype or a.shape != shape_:
            raise ValueError(f"member {key} is {a.dtype} {list(a.shape)}, expected "
                             f"{np.dtype(dtype)} {list(shape_)}")
    if not (np.isfinite(members["lo"]).all() and np.isfinite(members["scale"]).all()
            and (members["scale"] >= 0).all()):
        raise ValueError("members lo and scale must be finite, scale >= 0")


def spatially_reduced(shape) -> list[int]:
    """The shape of lo and scale for an array of `shape`: the two map axes reduced to 1."""
    return [*list(shape)[:-2], 1, 1]


# ------------------------------------------------------------------------- derived

def guidance(sources: list[np.ndarray], guidance_scale: float) -> np.ndarray:
    """Classifier-free guidance as precompute/loop.py computes it, in float32:
    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond).
    One source (guidance 0 or 1: the run has one branch) is the guided prediction itself."""
    if len(sources) == 1:
        return np.asarray(sources[0], np.float32)
    uncond, text = (np.asarray(s, np.float32) for s in sources)
    return uncond + np.float32(guidance_scale) * (text - uncond)


def bilinear_weights(n_in: int, n_out: int):
    """Source indices and weights of torch's bilinear interpolation, align_corners=False:
    src = (dst + 0.5) * n_in / n_out - 0.5, clamped at 0 (as aten's upsample kernels)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale
                     - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)                                      # floor (src >= 0)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def upsample_bilinear(x: np.ndarray, size) -> np.ndarray:
    """F.interpolate(x, size, mode="bilinear", align_corners=False) over the last two axes."""
    x = np.asarray(x, np.float32)
    h0, h1, a0, a1 = bilinear_weights(x.shape[-2], int(size[0]))
    w0, w1, b0, b1 = bilinear_weights(x.shape[-1], int(size[1]))
    # width first, then height, as aten's CPU kernel nests them (agrees within float32 rounding)
    cols = x[..., w0] * b0 + x[..., w1] * b1                            # (..., h, W)
    return cols[..., h0, :] * a0[:, None] + cols[..., h1, :] * a1[:, None]  # (..., H, W)


def attention_mean(levels: list[np.ndarray], size) -> np.ndarray:
    """The combined attention map (precompute/attention.py, pop_step): every level's map
    upsampled to `size` (a level already that size is taken as it is), equal weights."""
    maps = [np.asarray(a, np.float32) if tuple(a.shape[-2:]) == tuple(size)
            else upsample_bilinear(a, size) for a in levels]
    return np.mean(np.stack(maps), axis=0, dtype=np.float32)


def derive(kind: str, sources: list[np.ndarray], shape, guidance_scale: float) -> np.ndarray:
    """A derived array's float32 values from its sources' values (entry `from`, in order)."""
    if kind == "guidance":
        return guidance(sources, guidance_scale)
    if kind == "attention_mean":
        return attention_mean(sources, list(shape)[-2:])
    raise ValueError(f"unknown derived array kind {kind!r}; expected one of {DERIVED_KINDS}")

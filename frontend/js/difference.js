/**
 * How far apart two runs of the same seed are: per-step distances between their latents
 * (latents.npy) and between their decoded images (the decoded sprites, read through a
 * canvas), and the difference image at one step. Plain array arithmetic; the pixels of a
 * sprite are read once and kept with the image.
 */
import { d3 } from "./lib.js";

const pixelsOf = new WeakMap(); // HTMLImageElement -> {data, width, height}

/** The RGBA pixels of a loaded image (a whole sprite), read once. */
export function spritePixels(image) {
  let p = pixelsOf.get(image);
  if (!p) {
    const width = image.naturalWidth;
    const height = image.naturalHeight;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(image, 0, 0);
    p = { data: ctx.getImageData(0, 0, width, height).data, width, height };
    pixelsOf.set(image, p);
  }
  return p;
}

/**
 * Root-mean-square difference of two runs' latents at every step.
 * @param a, b {data, shape: [T+1, C, h, w]}
 * @returns {Float32Array} T+1 values
 */
export function latentDistance(a, b) {
  const steps = Math.min(a.shape[0], b.shape[0]);
  const size = a.shape.slice(1).reduce((x, y) => x * y, 1);
  const out = new Float32Array(steps);
  for (let s = 0; s < steps; s++) {
    let sum = 0;
    const base = s * size;
    for (let j = 0; j < size; j++) {
      const d = a.data[base + j] - b.data[base + j];
      sum += d * d;
    }
    out[s] = Math.sqrt(sum / size);
  }
  return out;
}

/** Visit every pixel of frame `index` of two sprites laid out as `entry` says: fn(offsetA, offsetB). */
function eachPixel(pa, pb, entry, index, fn) {
  const { frame_width: fw, frame_height: fh, columns } = entry;
  const x0 = (index % columns) * fw;
  const y0 = Math.floor(index / columns) * fh;
  for (let y = 0; y < fh; y++) {
    let o = 4 * ((y0 + y) * pa.width + x0);
    for (let x = 0; x < fw; x++, o += 4) fn(o, o, x, y);
  }
}

/**
 * Mean absolute difference of two runs' decoded images at every frame, as a share of
 * the full pixel range (0: identical, 1: black against white everywhere).
 */
export function imageDistance(pa, pb, entry) {
  const out = new Float32Array(entry.count);
  const n = 3 * entry.frame_width * entry.frame_height;
  for (let i = 0; i < entry.count; i++) {
    let sum = 0;
    eachPixel(pa, pb, entry, i, (o) => {
      sum += Math.abs(pa.data[o] - pb.data[o]) + Math.abs(pa.data[o + 1] - pb.data[o + 1])
        + Math.abs(pa.data[o + 2] - pb.data[o + 2]);
    });
    out[i] = sum / (255 * n);
  }
  return out;
}

/** 256 magma colours (perceptually uniform, readable with colour-vision deficiencies). */
const MAGMA = d3.range(256).map((j) => d3.rgb(d3.interpolateMagma(j / 255)));

/**
 * The difference image of frame `index`: the mean |difference| over R, G, B, coloured with
 * magma; full brightness at half the pixel range, so small differences stay visible.
 * @returns {{data: Uint8ClampedArray, width: number, height: number}}
 */
export function differenceFrame(pa, pb, entry, index) {
  const width = entry.frame_width;
  const height = entry.frame_height;
  const data = new Uint8ClampedArray(4 * width * height);
  eachPixel(pa, pb, entry, index, (o, ob, x, y) => {
    const d = (Math.abs(pa.data[o] - pb.data[o]) + Math.abs(pa.data[o + 1] - pb.data[o + 1])
      + Math.abs(pa.data[o + 2] - pb.data[o + 2])) / 3;
    const c = MAGMA[Math.min(255, Math.round(2 * d))];
    const t = 4 * (y * width + x);
    data[t] = c.r;
    data[t + 1] = c.g;
    data[t + 2] = c.b;
    data[t + 3] = 255;
  });
  return { data, width, height };
}

/**
 * The static export's packed layout (docs/api.md, "Static export"): what `noisepath serve`
 * answers one step or one token at a time, a `noisepath export` holds once per run, and
 * this module cuts the answer out of it, so the views request the same URLs either way.
 *
 * - api/runs/<id>/steps/<i>.json      -> element i of api/runs/<id>/steps.json
 * - api/runs/<id>/attention/<res>/tokens/<k>.npy, .../steps/<i>.npy
 *                                     -> a slice of the run's attention array
 * - api/runs/<id>/arrays/<name>.npy   -> decoded from the run document's `packed` entry:
 *   a q8-delta .npz with deflated members (browsers inflate deflate natively, not the
 *   bundle's LZMA), upsampled when its maps were stored smaller (`stored_shape`), or
 *   derived from other arrays (the combined attention map).
 *
 * Decoded arrays equal the server's bodies value for value: the same float32 arithmetic
 * as backend/codec.py, then rounded to float16 as the server sends them.
 */
import { parseNpyRaw, toFloat32 } from "./npy.js";

const STEP = /^api\/runs\/([^/?]+)\/steps\/(\d+)\.json$/;
const ATTENTION = /^api\/runs\/([^/?]+)\/attention\/([^/?]+)\/(tokens|steps)\/(\d+)\.npy$/;
const ARRAY = /^api\/runs\/([^/?]+)\/arrays\/([^/?]+)\.npy(\?.*)?$/;

/**
 * How to answer `url` from the packed files, or null for a URL fetched as it is.
 * @returns {null | ((load: (url: string, kind: string) => Promise<any>) => Promise<any>)}
 *   given the API's own cached `load`, resolves to what the server would have answered
 */
export function packedSource(url) {
  let m = STEP.exec(url);
  if (m) {
    const [, id, i] = m;
    return async (load) => (await load(`api/runs/${id}/steps.json`))[Number(i)];
  }
  m = ATTENTION.exec(url);
  if (m) {
    const [, id, res, axis, n] = m;
    return async (load) => {
      const run = await load(`api/runs/${id}.json`);
      const name = res === "combined" ? "attention" : `attention_res${res}`;
      const entry = run.arrays[name];
      if (!entry) throw new Error(`${url}: the run has no ${name}`);
      const array = await load(entry.url, "npy");                       // (K, T, r, r)
      return axis === "tokens" ? sliceFirst(array, Number(n)) : sliceSecond(array, Number(n));
    };
  }
  m = ARRAY.exec(url);
  if (m) {
    const [, id, name] = m;
    return async (load) => {
      const run = await load(`api/runs/${id}.json`);
      const values = await arrayValues(run, name, load);
      return { data: roundToHalf(values.data), shape: values.shape };
    };
  }
  return null;
}

function sliceFirst(array, k) {
  const size = array.shape.slice(1).reduce((a, b) => a * b, 1);
  return { data: array.data.subarray(k * size, (k + 1) * size), shape: array.shape.slice(1) };
}

/** array[:, i] of a (K, T, ...) array: a copy. */
function sliceSecond(array, i) {
  const [K, T, ...rest] = array.shape;
  const size = rest.reduce((a, b) => a * b, 1);
  const out = new Float32Array(K * size);
  for (let k = 0; k < K; k++) {
    out.set(array.data.subarray((k * T + i) * size, (k * T + i + 1) * size), k * size);
  }
  return { data: out, shape: [K, ...rest] };
}

/** A run array's float32 values before the float16 rounding (what codec.py derives from). */
async function arrayValues(run, name, load) {
  const entry = run.arrays[name];
  const packed = entry && entry.packed;
  if (!packed) throw new Error(`the run's ${name} is not in this export`);
  if (packed.derived) {
    const sources = await Promise.all(packed.from.map((n) => arrayValues(run, n, load)));
    return derive(packed.derived, sources, entry.shape);
  }
  if (packed.encoding !== "q8-delta") throw new Error(`${name}: unknown encoding ${packed.encoding}`);
  const members = await readNpz(await load(packed.url, "buffer"));
  const stored = packed.stored_shape || entry.shape;  // resized attention: maps stored smaller
  const values = decodeQ8(members, stored, name.startsWith("attention") ? 1 : 0);
  return stored.join() === entry.shape.join() ? values : upsampleBilinear(values, entry.shape.slice(-2));
}

// ------------------------------------------------------------------------- q8-delta

/**
 * The float32 values of a q8-delta array (backend/codec.py): q delta-coded along `axis`
 * (mod 256), then lo + q * scale per 2-D map.
 */
export function decodeQ8({ q, lo, scale }, shape, axis) {
  const n = shape.reduce((a, b) => a * b, 1);
  if (q.data.length !== n) throw new Error(`q8-delta: q holds ${q.data.length} values, not ${n}`);
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const steps = shape[axis];
  const codes = Uint8Array.from(q.data);
  for (let o = 0; o < n; o += steps * inner) {
    for (let j = o + inner; j < o + steps * inner; j++) codes[j] = (codes[j] + codes[j - inner]) & 255;
  }
  const map = shape[shape.length - 2] * shape[shape.length - 1];
  const out = new Float32Array(n);
  for (let m = 0; m < n / map; m++) {
    const [a, s] = [lo.data[m], scale.data[m]];
    for (let j = m * map; j < (m + 1) * map; j++) out[j] = Math.fround(a + Math.fround(codes[j] * s));
  }
  return { data: out, shape: [...shape] };
}

// -------------------------------------------------------------------------- derived

/** codec.derive: the combined attention map (the only derived array the app reads), in float32. */
export function derive(kind, sources, shape) {
  if (kind === "attention_mean") return attentionMean(sources, shape.slice(-2));
  throw new Error(`derived array kind ${kind} is not read by the app`);
}

/** codec.attention_mean: every level upsampled to `size`, summed in order, divided by their number. */
export function attentionMean(levels, size) {
  const maps = levels.map((a) => (a.shape.slice(-2).join() === size.join() ? a : upsampleBilinear(a, size)));
  const out = new Float32Array(maps[0].data);
  for (const m of maps.slice(1)) for (let j = 0; j < out.length; j++) out[j] = Math.fround(out[j] + m.data[j]);
  for (let j = 0; j < out.length; j++) out[j] = Math.fround(out[j] / maps.length);
  return { data: out, shape: maps[0].shape };
}

/** codec.bilinear_weights: torch's bilinear interpolation, align_corners=False, in float32. */
function bilinearWeights(nIn, nOut) {
  const f = Math.fround;
  const scale = f(nIn / nOut);
  const i0 = [];
  const i1 = [];
  const w0 = [];
  const w1 = [];
  for (let d = 0; d < nOut; d++) {
    const src = Math.max(f(f(f(d + 0.5) * scale) - 0.5), 0);
    const lo = Math.floor(src);
    i0.push(lo);
    i1.push(Math.min(lo + 1, nIn - 1));
    w1.push(f(src - lo));
    w0.push(f(1 - f(src - lo)));
  }
  return { i0, i1, w0, w1 };
}

/** codec.upsample_bilinear over the last two axes: width first, then height. */
export function upsampleBilinear(a, [H, W]) {
  const f = Math.fround;
  const [h, w] = a.shape.slice(-2);
  const lead = a.shape.slice(0, -2);
  const maps = lead.reduce((x, y) => x * y, 1);
  const rows = bilinearWeights(h, H);
  const cols = bilinearWeights(w, W);
  const out = new Float32Array(maps * H * W);
  const mid = new Float32Array(h * W);
  for (let m = 0; m < maps; m++) {
    const src = a.data.subarray(m * h * w, (m + 1) * h * w);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < W; x++) {
        mid[y * W + x] = f(f(src[y * w + cols.i0[x]] * cols.w0[x]) + f(src[y * w + cols.i1[x]] * cols.w1[x]));
      }
    }
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        out[m * H * W + y * W + x] = f(f(mid[rows.i0[y] * W + x] * rows.w0[y]) + f(mid[rows.i1[y] * W + x] * rows.w1[y]));
      }
    }
  }
  return { data: out, shape: [...lead, H, W] };
}

// ---------------------------------------------------------------------- float16

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The float16 bits nearest to x (round half to even), as NumPy's astype(float16). */
export function halfBits(x) {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const e = (b >>> 23) & 0xff;
  const m = b & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);          // infinity, NaN
  const E = e - 112;                                                // the float16 exponent
  if (E >= 31) return sign | 0x7c00;                                // too large: infinity
  let h;
  let rest;
  let half;
  if (E <= 0) {                                                     // subnormal, or zero
    if (E < -10) return sign;
    const shift = 14 - E;
    const full = m | 0x800000;
    h = full >>> shift;
    rest = full & ((1 << shift) - 1);
    half = 1 << (shift - 1);
  } else {
    h = (E << 10) | (m >>> 13);
    rest = m & 0x1fff;
    half = 0x1000;
  }
  if (rest > half || (rest === half && (h & 1))) h += 1;            // a carry may reach infinity
  return sign | h;
}

/** Every value rounded to the nearest float16, kept as float32 (what the server's '<f2' holds). */
export function roundToHalf(data) {
  const bits = new Uint16Array(data.length);
  for (let j = 0; j < data.length; j++) bits[j] = halfBits(data[j]);
  return toFloat32(bits);
}

// ------------------------------------------------------------------------- .npz

/**
 * The members of an .npz (a zip of .npy files, stored or deflated) -> name -> raw array.
 * Reads the zip's central directory; inflates with the browser's DecompressionStream.
 */
export async function readNpz(buffer) {
  const view = new DataView(buffer);
  let end = buffer.byteLength - 22;
  while (end >= 0 && view.getUint32(end, true) !== 0x06054b50) end -= 1;
  if (end < 0) throw new Error("npz: not a zip file");
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  const members = {};
  for (let n = 0; n < count; n++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new Error("npz: bad central directory");
    const method = view.getUint16(at + 10, true);
    const size = view.getUint32(at + 20, true);
    const nameLength = view.getUint16(at + 28, true);
    const skip = nameLength + view.getUint16(at + 30, true) + view.getUint16(at + 32, true);
    const local = view.getUint32(at + 42, true);
    const name = new TextDecoder().decode(new Uint8Array(buffer, at + 46, nameLength));
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    const body = new Uint8Array(buffer, start, size);
    members[name.replace(/\.npy$/, "")] = parseNpyRaw(await inflate(body, method, name));
    at += 46 + skip;
  }
  return members;
}

async function inflate(body, method, name) {
  if (method === 0) return body.slice().buffer;
  if (method !== 8) throw new Error(`npz: member ${name} uses zip method ${method}; only deflate is read`);
  const stream = new Blob([body]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Response(stream).arrayBuffer();
}

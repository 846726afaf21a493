/**
 * Reads NumPy .npy files (format 1.0/2.0, little-endian, C order) into Float32Arrays.
 *
 * The bundle stores arrays as '<f2' (float16); they are widened once through a
 * 65,536-entry lookup table. '<f4' is accepted too; parseNpyRaw also reads '|u1'
 * (the static export's packed arrays, js/packed.js).
 */

let HALF_TABLE = null;

function halfTable() {
  if (HALF_TABLE) return HALF_TABLE;
  HALF_TABLE = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v;
    if (exp === 0) v = frac * 2 ** -24;                       // subnormal
    else if (exp === 31) v = frac ? NaN : Infinity;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    HALF_TABLE[h] = sign * v;
  }
  return HALF_TABLE;
}

/** Parse the Python-literal header dict: {'descr': '<f2', 'fortran_order': False, 'shape': (3, 4), } */
function parseHeader(text) {
  const descr = /'descr':\s*'([^']+)'/.exec(text);
  const fortran = /'fortran_order':\s*(True|False)/.exec(text);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(text);
  if (!descr || !fortran || !shape) throw new Error(`npy: unreadable header ${text}`);
  return {
    descr: descr[1],
    fortranOrder: fortran[1] === "True",
    shape: shape[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number),
  };
}

const TYPED = { "<f2": Uint16Array, "<f4": Float32Array, "|u1": Uint8Array };

/**
 * The array of a .npy as it is stored: {descr, shape, data} with data a Uint16Array
 * ('<f2' bits), Float32Array ('<f4') or Uint8Array ('|u1').
 * @param {ArrayBuffer} buffer the file's bytes
 */
export function parseNpyRaw(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("npy: not a .npy file");
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const offset = major === 1 ? 10 : 12;
  const header = parseHeader(new TextDecoder("latin1").decode(bytes.subarray(offset, offset + headerLen)));
  if (header.fortranOrder) throw new Error("npy: Fortran order is not supported");
  const Typed = TYPED[header.descr];
  if (!Typed) throw new Error(`npy: dtype ${header.descr} is not supported`);
  const start = offset + headerLen;
  const count = header.shape.reduce((a, b) => a * b, 1);
  const data = new Typed(buffer.slice(start, start + count * Typed.BYTES_PER_ELEMENT));
  return { descr: header.descr, shape: header.shape, data };
}

/** float16 bits widened to float32 values. */
export function toFloat32(halves) {
  const table = halfTable();
  const data = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) data[i] = table[halves[i]];
  return data;
}

/**
 * @param {ArrayBuffer} buffer the file's bytes ('<f2' or '<f4')
 * @returns {{data: Float32Array, shape: number[]}}
 */
export function parseNpy(buffer) {
  const { descr, shape, data } = parseNpyRaw(buffer);
  if (descr === "<f2") return { data: toFloat32(data), shape };
  if (descr === "<f4") return { data, shape };
  throw new Error(`npy: dtype ${descr} is not supported`);
}

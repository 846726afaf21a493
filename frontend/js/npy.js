/**
 * Reads NumPy .npy files (format 1.0/2.0, little-endian, C order) into Float32Arrays.
 *
 * The bundle stores arrays as '<f2' (float16); they are widened once through a
 * 65,536-entry lookup table. '<f4' is accepted too.
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

/**
 * @param {ArrayBuffer} buffer the file's bytes
 * @returns {{data: Float32Array, shape: number[]}}
 */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("npy: not a .npy file");
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const offset = major === 1 ? 10 : 12;
  const header = parseHeader(new TextDecoder("latin1").decode(bytes.subarray(offset, offset + headerLen)));
  if (header.fortranOrder) throw new Error("npy: Fortran order is not supported");
  const start = offset + headerLen;
  const count = header.shape.reduce((a, b) => a * b, 1);
  let data;
  if (header.descr === "<f2") {
    const halves = new Uint16Array(buffer.slice(start, start + count * 2));
    const table = halfTable();
    data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = table[halves[i]];
  } else if (header.descr === "<f4") {
    data = new Float32Array(buffer.slice(start, start + count * 4));
  } else {
    throw new Error(`npy: dtype ${header.descr} is not supported`);
  }
  return { data, shape: header.shape };
}

"""One immutable HTTP body and how to send it: ETag, gzip, caching, 304.

Every response the app sends from the bundle or the front end is a `Resource`
built once (body, content type, a content-hash ETag and, where it helps, a gzip
body compressed once) and sent by `send`, which picks the encoding the client
accepts and answers If-None-Match with 304.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass

from flask import Response, request

JSON = "application/json"
NPY = "application/octet-stream"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"          # may be stored, but ask (cheap with the ETag) before reuse

# content types by file extension: the only files the app serves
MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": JSON,
    ".map": JSON,
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".webp": "image/webp",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".npy": NPY,
}
# worth compressing: text and raw arrays; images are compressed already
COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt", ".md", ".npy"}
MIN_GZIP_BYTES = 256
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Resource:
    body: bytes
    mimetype: str
    etag: str                  # content hash, unquoted
    gz: bytes | None = None    # the gzip body, when it is worth sending

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gz or b"")


def make_resource(body: bytes, mimetype: str, compress: bool | None = None) -> Resource:
    """Hash and (if `compress`, default: by content type) gzip a body, once."""
    if compress is None:
        compress = mimetype in (JSON, NPY) or mimetype.startswith("text/")
    gz = None
    if compress and len(body) >= MIN_GZIP_BYTES:
        packed = gzip.compress(body, GZIP_LEVEL, mtime=0)
        if len(packed) < 0.9 * len(body):
            gz = packed
    return Resource(body, mimetype, hashlib.sha256(body).hexdigest()[:32], gz)


def _finite(obj):
    """JSON has no NaN or Infinity: a non-finite number becomes null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_bytes(obj) -> bytes:
    return json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def json_resource(obj) -> Resource:
    return make_resource(json_bytes(obj), JSON)


def accepts_gzip() -> bool:
    return request.accept_encodings["gzip"] > 0


def send(res: Resource, cache_control: str = REVALIDATE) -> Response:
    """The response for `res`: gzip if accepted and smaller, 304 if the client has it."""
    use_gz = res.gz is not None and accepts_gzip()
    etag = res.etag + "-gz" if use_gz else res.etag
    inm = request.if_none_match
    not_modified = inm and (inm.star_tag or inm.contains_weak(res.etag)
                            or inm.contains_weak(res.etag + "-gz"))
    if not_modified:
        resp = Response(status=304)
    else:
        resp = Response(res.gz if use_gz else res.body, content_type=res.mimetype)
        if use_gz:
            resp.headers["Content-Encoding"] = "gzip"
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = cache_control
    if res.gz is not None:
        resp.vary.add("Accept-Encoding")
    return resp

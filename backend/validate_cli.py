"""`noisepath validate BUNDLE_DIR`: report every problem of a bundle by file and field.

By default every byte is read (SHA-256 of every file, every run array decoded);
--no-checksums checks what `noisepath serve` checks at start-up (schema, headers)."""

from pathlib import Path

from backend.validator import validate_bundle


def add_arguments(p):
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR", help="the bundle folder")
    p.add_argument("--no-checksums", action="store_true",
                   help="skip SHA-256 checks and decoding every array: only what serve checks "
                   "at start-up (faster on large bundles)")


def run(args) -> int:
    thorough = not args.no_checksums
    problems = validate_bundle(args.bundle, checksums=thorough, decode=thorough)
    for p in problems:
        print(p)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if errors:
        print(f"{args.bundle}: {errors} error(s), {warnings} warning(s)")
        return 1
    print(f"{args.bundle}: valid ({warnings} warning(s))")
    return 0

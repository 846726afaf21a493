"""`noisepath`: one command with subcommands.

    noisepath precompute   run a Stable Diffusion model and record every step into a bundle
    noisepath validate     check a bundle: schema, shapes, dtypes, files, checksums
    noisepath serve        open the app on a bundle (the shipped demo by default)
    noisepath export       write the app and a bundle as a fully static site
    noisepath train-demo   train the tiny demo model the shipped bundle was made with

Heavy imports (torch) happen only inside the subcommands that need them, so
`serve`, `export` and `validate` work with the light install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Each module has add_arguments(parser) and run(args).
SUBCOMMANDS = {
    "precompute": ("precompute.cli", "run a Stable Diffusion model over prompts and record "
                   "every denoising step into a bundle (needs the [precompute] extra)"),
    "validate": ("backend.validate_cli", "check a bundle and name the file and field of "
                 "every problem"),
    "serve": ("backend.serve_cli", "serve the app on a bundle with a production WSGI server"),
    "export": ("backend.export_cli", "write a fully static copy of the app and a bundle"),
    "train-demo": ("precompute.demo.cli", "train the tiny Stable-Diffusion-shaped demo model "
                   "(needs the [precompute] extra)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noisepath", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `noisepath COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ImportError as e:  # a missing optional extra must not break the others
            p.set_defaults(_import_error=e)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        print(f"noisepath {args.command}: {args._import_error}\n"
              "Install the optional dependencies with:  pip install -e '.[precompute]'",
              file=sys.stderr)
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

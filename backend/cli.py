"""`noisepath`: one command with subcommands.

    noisepath precompute   run a Stable Diffusion model and record every step into a bundle
    noisepath validate     check a bundle: schema, shapes, dtypes, files, checksums
    noisepath serve        open the app on a bundle (the shipped demo by default)
    noisepath export       write the app and a bundle as a fully static site
    noisepath compact      re-encode a full bundle as a compact one (8-bit arrays)
    noisepath refresh      re-derive a bundle's model facts and preview map from its model
    noisepath train-demo   train the tiny demo model the shipped bundle was made with
                           (train-demo students: its 2-rectified-flow and one-step students;
                           train-demo controlnet: a ControlNet for it, on sketches)

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
    "compact": ("precompute.compact", "re-encode a full bundle with storage \"compact\" "
                "(8-bit arrays, derived arrays and previews left to the server; no torch)"),
    "refresh": ("precompute.refresh", "re-derive what a bundle records about its model "
                "(the one latent preview map of every run, tokenizer facts) from the model "
                "(needs the [precompute] extra)"),
    "train-demo": ("precompute.demo.train", "train the tiny Stable-Diffusion-shaped demo model, "
                   "or with `students` its reflow students, with `controlnet` a ControlNet for it "
                   "(needs the [precompute] extra)"),
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends an option's help with "(default: X)" unless the help already names its default
    (its own words say more, e.g. "default 3: below --speech-at-once"), and never for an
    option that is unset by default (None, False, an empty list): "(default: None)" says
    nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] \
                or default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand. Given the `command` being run, only its module is
    imported (the others are listed by name): `noisepath serve` must not wait for torch,
    which the precompute commands import."""
    parser = argparse.ArgumentParser(
        prog="noisepath", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `noisepath COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        if command in SUBCOMMANDS and name != command:
            sub.add_parser(name, help=help_, description=help_)
            continue
        try:
            mod, error = importlib.import_module(module), None
        except ImportError as e:  # a missing optional extra must not break the others
            mod, error = None, e
        own_parser = mod is not None and not hasattr(mod, "add_arguments")
        p = sub.add_parser(name, help=help_, description=help_, add_help=not own_parser,
                           formatter_class=DefaultsHelpFormatter)
        p.set_defaults(_module=module, _import_error=error)
        p.set_defaults(_own_parser=own_parser)  # then main(argv) gets the rest of the line
        if mod is not None and not own_parser:
            mod.add_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    except KeyboardInterrupt:  # Ctrl+C while the command's modules load: nothing started
        print("\ninterrupted", file=sys.stderr)
        return 130
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "_own_parser", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        print(f"noisepath {args.command}: {args._import_error}\n"
              "Install the optional dependencies with:  pip install -e '.[precompute]'",
              file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(args._module)
        if args._own_parser:
            return mod.main(rest) or 0
        return mod.run(args) or 0
    except KeyboardInterrupt:  # a command may say what Ctrl+C left (serve: nothing)
        message = getattr(sys.modules.get(args._module), "INTERRUPTED_MESSAGE",
                          "interrupted; finished work is kept, run the same command to resume")
        print(f"\n{message}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The command line: ``python -m fastcells {bench,check,info}``.

Each subcommand lives in its own module with two functions, ``add_arguments(parser)`` and
``run(args) -> exit status``; this file only wires them together.
"""

import argparse
import importlib

# subcommand -> (module, one-line help)
COMMANDS = {
    "bench": ("fastcells.benchmark.cli", "time fastcells against torch.nn and the naive loop, write a report"),
    "check": ("fastcells.numcheck.cli", "check every available backend against a float64 reference"),
    "info": ("fastcells.info", "versions, device and which backends are usable here"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fastcells", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{bench,check,info}")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)

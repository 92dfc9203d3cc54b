"""The front ends of ``moe-harness``: one module per subcommand, each with ``add_parser(sub)``
(its flags), a function turning the parsed flags into the command's options object
(harness.options) and ``main(args, backend)``, which builds that object and hands it to the
engine module of the same name. Only these modules (and harness.cli) use argparse."""

# Subcommand modules, in the order ``moe-harness --help`` lists them.
COMMAND_MODULES = ("check", "releases", "ep_world", "bench", "mutate")


def add_sglang_wheel(parser, help: str = "an sglang release wheel (.whl) to use for --impl sglang==VERSION without "
                                         "a package index; repeatable (it is cached under its version)") -> None:
    """The --sglang-wheel flag (repeatable; a list of paths), as check, bench and releases take it."""
    parser.add_argument("--sglang-wheel", action="append", default=[], metavar="PATH", help=help)

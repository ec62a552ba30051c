"""`qanchor` subcommands: one module per command, each with `add_parser(subparsers)` (see services/cli/__main__)."""

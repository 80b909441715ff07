"""Subcommands of the `ternary-hf` CLI; each module exposes `register(subparsers)`."""

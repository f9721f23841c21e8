"""Sub-commands of `nrt`; each module defines `register(subparsers)` and is discovered by `nrt.cli`."""

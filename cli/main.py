"""The `aipg-node` command."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from importlib import import_module, metadata

from .errors import USER_ERRORS

PROG = "aipg-node"

# Command modules, each with add_parser(subparsers, data_dir_parent). Kept as names so
# that `aipg-node --version` does not import onnxruntime or the network stack.
COMMAND_MODULES = (
    "aipg.cli.keys_cmd",
    "aipg.cli.models_cmd",
    "aipg.cli.chain_cmd",
    "aipg.cli.node_cmd",
    "aipg.cli.client_cmd",
)


def version() -> str:
    try:
        return metadata.version("aipg-node")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    data_dir_parent = argparse.ArgumentParser(add_help=False)
    data_dir_parent.add_argument(
        "--data-dir",
        metavar="DIR",
        help="node data dir (default: $AIPG_DATA_DIR, else the platform's user data dir)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="AI Power Grid node: host AI workloads, verify others' work, earn AIPG.",
        epilog="Run `aipg-node COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        add_parser = import_module(name).add_parser
        # Commands that touch a data dir take the shared --data-dir parent parser.
        if len(inspect.signature(add_parser).parameters) == 2:
            add_parser(sub, data_dir_parent)
        else:
            add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (also used by the console script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            return int(args.func(args) or 0)
        except BaseExceptionGroup as group:
            raise _single_error(group) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("AIPG_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(e).__name__}: {e} (set AIPG_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 70


def _single_error(group: BaseExceptionGroup) -> BaseException:
    """The one error inside nested trio exception groups (or the group itself)."""
    leaves = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    return leaves[0] if len(leaves) == 1 else group


if __name__ == "__main__":
    sys.exit(main())

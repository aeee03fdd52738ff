"""The ``resilientdb`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``resilientdb`` console script."""
    parser = argparse.ArgumentParser(
        prog="resilientdb",
        description="An asyncio connection supervisor for asyncpg, aiomysql and aiosqlite.",
    )
    parser.add_argument("--version", action="version", version=f"resilientdb {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

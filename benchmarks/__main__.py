"""``make bench``: every benchmark in turn."""

from __future__ import annotations

import sys

from benchmarks import overhead


def main() -> int:
    print("## Overhead: resilientdb against the raw driver pool\n")
    return overhead.main([])


if __name__ == "__main__":
    sys.exit(main())

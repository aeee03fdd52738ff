"""``make bench``: every benchmark in turn."""

from __future__ import annotations

import sys

from benchmarks import ledger, overhead


def main() -> int:
    print("## Overhead: resilientdb against the raw driver pool\n")
    rc = overhead.main([])
    print("\n## Ledger under fire: reconciliation\n")
    rc |= ledger.main([])
    return rc


if __name__ == "__main__":
    sys.exit(main())

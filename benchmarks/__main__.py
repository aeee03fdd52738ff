"""``make bench``: every benchmark in turn on shared throwaway servers, then RESULTS.md.

``python -m benchmarks [--quick] [--out DIR] [--skip-ledger]``. Each benchmark also runs
alone: ``python -m benchmarks.overhead`` (``outages``, ``storm``, ``memory``, ``ledger``,
``streaming``).
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import time

from benchmarks import _servers, ledger, memory, outages, overhead, report, storm, streaming
from benchmarks._common import parser, quiet_logs, settings, write_json

LEDGER_SECONDS = 60


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--skip-ledger", action="store_true", help="skip the ledger run")
    args = p.parse_args(argv)
    s = settings(args)
    started = time.perf_counter()
    rc = 0
    try:
        for module in (overhead, outages, storm, memory, streaming):
            print(f"\n## {module.__name__}\n", flush=True)
            asyncio.run(module.run(s))  # type: ignore[attr-defined]
    finally:
        _servers.cleanup()
    if not (args.skip_ledger or s.quick):
        print("\n## Ledger under fire: reconciliation\n", flush=True)
        with quiet_logs():  # its event log would bury the table
            rc |= ledger.main(["--duration", str(LEDGER_SECONDS)])
    write_json(
        "meta",
        {
            "date": datetime.date.today().isoformat(),
            "duration_s": round(time.perf_counter() - started),
            "quick": s.quick,
        },
        s.out,
    )
    path = report.write(s.out)
    print(f"\nwrote {path}")
    print(path.read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())

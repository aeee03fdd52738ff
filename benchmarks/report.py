"""RESULTS.md from the result files: the tables, and each target checked.

``python -m benchmarks.report [--out DIR]`` rewrites RESULTS.md from ``DIR/*.json`` (the
directory's parent for the default results directory, else inside DIR). Text between the
``<!-- notes -->`` markers of an existing RESULTS.md (the discussion) is kept.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

from benchmarks._common import RESULTS, parser, read_json
from benchmarks._report_sections import (
    memory_section,
    outage_section,
    overhead_section,
    storm_section,
)

__all__ = ["memory_section", "outage_section", "overhead_section", "storm_section", "write"]

NOTES_START, NOTES_END = "<!-- notes -->", "<!-- /notes -->"


def _target_lines(verdicts: list[tuple[str, bool, str]]) -> list[str]:
    lines = ["| target | met | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {how} |" for name, ok, how in verdicts]
    return lines


def write(out: Path = RESULTS) -> Path:
    from benchmarks import _report_sections as sections

    target = out.parent / "RESULTS.md" if out == RESULTS else out / "RESULTS.md"
    notes = ""
    if target.exists():
        text = target.read_text()
        if NOTES_START in text and NOTES_END in text:
            notes = text[text.index(NOTES_START) + len(NOTES_START) : text.index(NOTES_END)]
    from benchmarks import streaming

    names = ("overhead", "outages", "storm", "memory", "ledger", "streaming")
    data = {name: read_json(name, out) for name in names}
    meta = read_json("meta", out) or {}
    verdicts = sections.verdicts(data) + streaming.verdicts(data["streaming"])
    parts = [
        "# Benchmark results",
        "",
        f"Measured {meta.get('date', datetime.date.today().isoformat())} with `make bench` "
        f"({meta.get('duration_s', '?')} s) on a shared {os.cpu_count()}-core machine "
        f"({platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()}) that also runs the database servers: the absolute figures "
        "are noisy; the ratios, measured in interleaved rounds, are what to compare. "
        "(The ledger section may come from a longer `python -m benchmarks.ledger` run.) "
        "Every server is a throwaway PostgreSQL / MariaDB started by the benchmark on a "
        "loopback port; faults go through resilientdb's FaultProxy. Raw data: `results/*.json`.",
        "",
        "## Targets",
        "",
        *_target_lines(verdicts),
        "",
        NOTES_START + (notes or "\n") + NOTES_END,
        "",
    ]
    for name, render in (
        ("overhead", overhead_section),
        ("outages", outage_section),
        ("storm", storm_section),
        ("memory", memory_section),
        ("ledger", sections.ledger_section),
        ("streaming", streaming.section),
    ):
        if data[name] is not None:
            parts += [render(data[name]), ""]
    target.write_text("\n".join(parts).rstrip() + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    print(write(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

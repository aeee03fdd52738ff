"""``resilientdb demo``: the demo's code, kept out of the library proper.

- ``run``: the command itself (scenarios, the two runs side by side, the per-second lines);
- ``workload``: the workload, its schema and the supervised client, and the recorded operations;
- ``raw_clients``: the same workload on the raw drivers, without resilientdb (the contrast);
- ``faults``: the real faults applied to both runs;
- ``report``: the figures, computed from the records and the database;
- ``plot``: the optional timeline image (matplotlib).

Arrows run from here into the library (the supervisor, ``config``, ``testing.FaultProxy``),
never back: nothing in ``resilientdb`` outside ``cli/`` imports this package.

Importing this package imports none of its modules: ``resilientdb.cli`` imports ``run`` when
the command is given.
"""

"""Development harness shared by the test suite and the benchmarks; never shipped in the wheel.

- ``harness.servers``: throwaway PostgreSQL and MariaDB servers (``_server_base``,
  ``_pg_server``, ``_mariadb_server`` hold the code);
- ``harness.backends``: what differs per backend, described once (placeholders, DDL, the
  SQL each one can run, its driver's errors, how to kill the app's connections);
- ``harness.ledger``: the ledger workload and its reconciliation (``_ledger_report``);
- ``harness.ledger_faults``: the ledger's fault schedules and runners per backend;
- ``harness.polling``: ``until`` and ``wait_for``, the polling helpers.

Tests and benchmarks import from here; this package imports the shipped ``resilientdb``
package but nothing from ``tests`` or ``benchmarks``, and the shipped package never imports it.
"""

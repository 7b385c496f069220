"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package.

    with PgServer() as pg:
        url = pg.create_database("t1")   # postgresql://hwtests:<password>@127.0.0.1:<port>/t1

Data and socket directories live in one temp dir; the server listens on 127.0.0.1
only, on a free port, with a random password (scram) for TCP and trust on its
private unix socket. PostgreSQL refuses to run as root, so as root the server runs
as `nobody` through `runuser`. `stop()` stops it with `pg_ctl stop -m fast` and, if
that fails, kills the postmaster by the PID in its `postmaster.pid`; then the temp
dir is removed. Nothing else is started or stopped.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import InfraError

RUN_AS = "nobody"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<v>/bin holding initdb and pg_ctl (or the ones on PATH)."""
    def version(p: str) -> tuple:
        try:
            return tuple(int(x) for x in Path(p).parent.name.split("."))
        except ValueError:
            return (0,)
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None."""
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (install the Debian package postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and runuser (util-linux) is missing: PostgreSQL refuses to run as root"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, user: str = "hwtests"):
        self.user = user
        self.password = secrets.token_hex(12)
        self.bindir = find_bindir()
        self.tmp: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self._as_root = os.geteuid() == 0

    # -- process helpers
    def _cmd(self, argv: list[str]) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", RUN_AS, "--"] + argv
        return argv

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.pop("PGPASSWORD", None)
        return subprocess.run(self._cmd(argv), capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(self.tmp), stdin=subprocess.DEVNULL)

    @property
    def datadir(self) -> Path:
        return self.tmp / "data"

    @property
    def sockdir(self) -> Path:
        return self.tmp / "sock"

    # -- lifecycle
    def start(self) -> "PgServer":
        why = unavailable_reason()
        if why:
            raise InfraError(why)
        self.tmp = Path(tempfile.mkdtemp(prefix="hwtests-pg-"))
        try:
            self.sockdir.mkdir()
            pwfile = self.tmp / "pw"
            pwfile.write_text(self.password + "\n")
            if self._as_root:
                ent = pwd.getpwnam(RUN_AS)
                for p in (self.tmp, self.sockdir, pwfile):
                    os.chown(p, ent.pw_uid, ent.pw_gid)
            os.chmod(self.tmp, 0o700)
            os.chmod(pwfile, 0o600)
            r = self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user, "-E", "UTF8",
                           "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                           f"--pwfile={pwfile}"])
            pwfile.unlink()
            if r.returncode != 0:
                raise InfraError(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
            last = ""
            for _ in range(5):   # a port taken between probing and binding: try another
                self.port = _free_port()
                opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.sockdir} "
                        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
                r = self._run([str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.datadir),
                               "-l", str(self.tmp / "server.log"), "-o", opts])
                if r.returncode == 0:
                    break
                last = self.log_tail()
            else:
                raise InfraError(f"PostgreSQL did not start: {last}")
            self.pid = self._postmaster_pid()
        except BaseException:
            self.stop()
            raise
        return self

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = (self.tmp / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def stop(self) -> None:
        if self.tmp is None:
            return
        pid = self.pid or self._postmaster_pid()
        if self.datadir.exists() and pid:
            try:
                self._run([str(self.bindir / "pg_ctl"), "stop", "-w", "-t", "30", "-m", "fast", "-D",
                           str(self.datadir)], timeout=60)
            except subprocess.TimeoutExpired:
                pass
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)    # only the postmaster we started
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 10
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        self.pid = None

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases
    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def admin_connect(self):
        import psycopg
        return psycopg.connect(host=str(self.sockdir), port=self.port, user=self.user, dbname="postgres",
                               autocommit=True)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL (with the password: never print it unredacted)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}")
        with self.admin_connect() as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

"""Host access: run commands, background processes and files on a lab host.

Everything the suite does on a host goes through a `Transport`: `SSHTransport`
(one persistent paramiko connection, host key verified, TCP_NODELAY) or
`LocalTransport` (this machine). Commands given as a list are quoted with
`shlex.join`; a string is handed to the remote shell as it is, so only code
constants may be strings.
"""

from __future__ import annotations

import logging
import os
import posixpath
import secrets
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import HwtestsError, InfraError

Command = str | Sequence[str]

DEFAULT_TIMEOUT = 60.0
RUN_ENV = "HWTESTS_RUN"       # every command a transport runs carries this run's token in its environment
TMP_PARENT = "/tmp"

# paramiko's reader thread logs a traceback when a host drops the connection (a VM
# rebooting, a killed sshd); we report that ourselves in one line. The handler keeps
# Python's last-resort stderr printing away; a configured root logger still gets it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class RemoteError(InfraError):
    """A host could not be reached, or a command on it failed or timed out."""


class HostKeyError(RemoteError):
    """The host's key is unknown or has changed: refused."""


class CommandFailed(RemoteError):
    def __init__(self, host: str, result: "CmdResult"):
        self.result = result
        tail = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]
        super().__init__(f"{host}: `{_short(result.cmd)}` exited {result.exit_status}"
                         + (f": {tail[:300]}" if tail else ""), exit_code=1)


class CommandTimeout(RemoteError):
    def __init__(self, host: str, cmd: str, timeout: float, note: str = ""):
        self.cmd = cmd
        super().__init__(f"{host}: `{_short(cmd)}` did not finish within {timeout:g} s" + (f"; {note}" if note else ""),
                         exit_code=1)


def _short(cmd: str, n: int = 120) -> str:
    return cmd if len(cmd) <= n else cmd[: n - 3] + "..."


def leftover_cleanup(token: str, tmpdir: str) -> str:
    """Shell code that ends every process of the run `token` and removes its temp dir.

    A run's commands, and whatever they started, carry `HWTESTS_RUN=<token>` in their
    environment (the kernel keeps a process's initial environment in /proc/PID/environ),
    so this finds them wherever they are: background jobs, their children, a foreground
    command whose SSH channel died with the controller. Two passes catch a fork
    in between. The token is random per transport, so nothing else matches.
    """
    var = shlex.quote(f"{RUN_ENV}={token}")
    return (f"for _ in 1 2; do for f in $(grep -lsxzF {var} /proc/[0-9]*/environ 2>/dev/null); do "
            f'p=${{f#/proc/}}; kill -KILL "${{p%/environ}}" 2>/dev/null; done; done; '
            f"rm -rf --one-file-system {shlex.quote(tmpdir)}")


def quote_cmd(cmd: Command) -> str:
    """A command line for a POSIX shell; every list element is quoted."""
    if isinstance(cmd, str):
        return cmd
    return shlex.join(str(c) for c in cmd)


@dataclass
class CmdResult:
    cmd: str
    exit_status: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass
class Background:
    """A process started with `Transport.start`; `stop()` ends it and its children."""

    transport: "Transport"
    cmd: str
    pid: int
    out_path: str
    err_path: str
    name: str = ""
    _stopped: CmdResult | None = field(default=None, repr=False)

    def alive(self) -> bool:
        # A zombie is not alive: on hosts whose init reaps late, kill -0 would say it is.
        probe = f's=$(cat /proc/{self.pid}/stat 2>/dev/null) && s=${{s##*) }} && [ "${{s%% *}}" != Z ]'
        return self.transport.run(probe, check=False, timeout=10).ok

    def wait(self, timeout: float) -> CmdResult:
        """Wait for the process to exit by itself; CommandTimeout if it does not."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise CommandTimeout(self.transport.name, self.cmd, timeout)
            time.sleep(0.05)
        return self._collect()

    def stop(self, grace: float = 3.0) -> CmdResult:
        """TERM the process group, KILL it after `grace` seconds; return its output."""
        if self._stopped is not None:
            return self._stopped
        t = self.transport
        t.run(f"kill -TERM -{self.pid} 2>/dev/null; true", check=False, timeout=10)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        t.run(f"kill -KILL -{self.pid} 2>/dev/null; true", check=False, timeout=10)
        return self._collect()

    def output(self) -> tuple[str, str]:
        r = self.transport.run(quote_cmd(["cat", self.out_path]), check=False, timeout=30)
        e = self.transport.run(quote_cmd(["cat", self.err_path]), check=False, timeout=30)
        return r.stdout, e.stdout

    def _collect(self) -> CmdResult:
        out, err = self.output()
        rc_txt = self.transport.run(quote_cmd(["cat", self.out_path + ".rc"]), check=False, timeout=10).stdout.strip()
        rc = int(rc_txt) if rc_txt.lstrip("-").isdigit() else -9
        self._stopped = CmdResult(self.cmd, rc, out, err, 0.0)
        self.transport._forget(self)
        return self._stopped


class Transport:
    """What every host access offers. Subclasses implement `_exec` and file I/O."""

    name: str
    default_timeout: float = DEFAULT_TIMEOUT

    def __init__(self, name: str, default_timeout: float = DEFAULT_TIMEOUT):
        self.name = name
        self.default_timeout = default_timeout
        self._tmpdir: str | None = None
        self._bg: list[Background] = []
        self._lock = threading.Lock()
        self.run_token = secrets.token_hex(8)
        # What was set up on the host for this connection (built programs, ...): lives and dies
        # with this transport and its temp dir, so a new session never finds an old one's entries.
        self.memo: dict[str, Any] = {}
        # Told before the temp dir is made and after it is removed (the host's restore
        # journal sets itself here), so a run the controller never finished is cleaned
        # up by the next one: `tracker.tmpdir_made(t, path, undo)`, `tracker.tmpdir_removed(t, path)`.
        self.tracker = None

    # -- commands -----------------------------------------------------------
    def run(self, cmd: Command, *, timeout: float | None = None, check: bool = True,
            input: bytes | None = None) -> CmdResult:
        """Run a command and wait for it; raise CommandFailed on non-zero when `check`."""
        line = quote_cmd(cmd)
        t = self.default_timeout if timeout is None else timeout
        res = self._exec(line, t, input)
        if check and not res.ok:
            raise CommandFailed(self.name, res)
        return res

    def start(self, cmd: Command, *, name: str = "bg") -> Background:
        """Start a command in its own process group, output to files in the temp dir."""
        line = quote_cmd(cmd)
        base = posixpath.join(self.tmpdir, f"{name}-{secrets.token_hex(4)}")
        out, err = base + ".out", base + ".err"
        # setsid gives the job its own process group, so stop() reaches its children;
        # the wrapper records the exit status even when nobody waits for it.
        wrapper = f"{line} >{shlex.quote(out)} 2>{shlex.quote(err)} </dev/null; echo $? >{shlex.quote(out + '.rc')}"
        launch = (f"setsid sh -c {shlex.quote(wrapper)} >/dev/null 2>&1 </dev/null & echo $!")
        r = self.run(launch, timeout=15)
        bg = Background(self, line, int(r.stdout.strip().splitlines()[-1]), out, err, name)
        with self._lock:
            self._bg.append(bg)
        return bg

    def _forget(self, bg: Background) -> None:
        with self._lock:
            if bg in self._bg:
                self._bg.remove(bg)

    # -- files --------------------------------------------------------------
    @property
    def tmpdir(self) -> str:
        """A private (0700) temp dir for this run, removed by `close()`.

        Its name is chosen here so the tracker (the host's journal) can note it, with
        the run's token, before it exists; `mkdir` fails on an existing name or link.
        """
        if self._tmpdir is None:
            alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            for _ in range(5):
                path = posixpath.join(TMP_PARENT, "hwtests." + "".join(secrets.choice(alphabet) for _ in range(8)))
                self._track("tmpdir_made", path, leftover_cleanup(self.run_token, path))
                r = self.run(["mkdir", "-m", "700", path], timeout=15, check=False)
                if r.ok:
                    self._tmpdir = path
                    break
                self._track("tmpdir_removed", path)
            else:
                raise CommandFailed(self.name, r)
        return self._tmpdir

    def _track(self, event: str, *args) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        try:
            getattr(tracker, event)(self, *args)
        except HwtestsError:
            pass       # a host whose journal cannot be written (no root) still runs; it is just not tracked

    def upload(self, local_path: str | os.PathLike, remote_name: str | None = None, mode: int = 0o644) -> str:
        """Copy a local file into the run's temp dir; return its remote path."""
        with open(local_path, "rb") as f:
            data = f.read()
        name = remote_name or os.path.basename(os.fspath(local_path))
        return self.put_bytes(data, name, mode)

    def put_bytes(self, data: bytes, remote_name: str, mode: int = 0o644) -> str:
        path = posixpath.join(self.tmpdir, remote_name)
        self.write_file(path, data, mode)
        return path

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        raise NotImplementedError

    def read_file(self, path: str) -> bytes:
        raise NotImplementedError

    def _exec(self, line: str, timeout: float, input: bytes | None) -> CmdResult:
        raise NotImplementedError

    # -- lifetime -----------------------------------------------------------
    def cleanup(self) -> None:
        """Stop background jobs and remove the temp dir (best effort, never raises)."""
        self.memo.clear()
        for bg in list(self._bg):
            try:
                bg.stop(grace=1.0)
            except HwtestsError:
                pass
        if self._tmpdir is not None:
            try:
                r = self.run(["rm", "-rf", "--one-file-system", self._tmpdir], check=False, timeout=15)
            except HwtestsError:
                return      # unreachable: the journal keeps it for the next run
            if r.ok:
                self._track("tmpdir_removed", self._tmpdir)
            self._tmpdir = None

    def close(self) -> None:
        self.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalTransport(Transport):
    """This machine, for `localhost` hosts and for the controller's own work."""

    def _exec(self, line: str, timeout: float, input: bytes | None) -> CmdResult:
        t0 = time.monotonic()
        proc = subprocess.Popen(["sh", "-c", line], stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                env=dict(os.environ, **{RUN_ENV: self.run_token}))
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise CommandTimeout(self.name, line, timeout) from None
        except BaseException:         # Ctrl-C / SIGTERM while waiting: do not leave it running
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            raise
        return CmdResult(line, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                         time.monotonic() - t0)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


def nodelay(sock: socket.socket) -> socket.socket:
    """Without TCP_NODELAY, Nagle plus delayed ACK add ~40 ms to every SSH round trip."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SSHTransport(Transport):
    """One persistent paramiko connection to a host.

    The host key is checked against the inventory's known_hosts (or the user's);
    an unknown key is refused unless the inventory opts in with
    `accept_new_host_key: true`, and a changed key is always refused.
    """

    def __init__(self, name: str, cfg, *, connect_timeout: float = 10.0,
                 default_timeout: float = DEFAULT_TIMEOUT, jump: "SSHTransport | None" = None):
        super().__init__(name, default_timeout)
        self.cfg = cfg
        self.connect_timeout = connect_timeout
        self.jump = jump
        self._client = None
        self._sftp = None
        self._refused: HostKeyError | None = None
        self._lost = False
        self._conn_lock = threading.Lock()

    # -- connection ---------------------------------------------------------
    def _sock(self):
        cfg = self.cfg
        if self.jump is not None:
            chan = self.jump.client().get_transport().open_channel(
                "direct-tcpip", (cfg.host, cfg.port), ("127.0.0.1", 0), timeout=self.connect_timeout)
            return chan
        if cfg.proxy_command:
            import paramiko
            return paramiko.ProxyCommand(cfg.proxy_command)
        if cfg.netns:
            from .netns import connect_in_netns
            try:
                return nodelay(connect_in_netns(cfg.netns, cfg.host, cfg.port, self.connect_timeout))
            except HwtestsError as exc:
                raise RemoteError(f"{self.name}: cannot connect to {exc}") from None
        try:
            s = socket.create_connection((cfg.host, cfg.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise RemoteError(f"{self.name}: cannot connect to {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        return nodelay(s)

    def client(self):
        with self._conn_lock:
            if self._refused is not None:      # a refused host key stays refused: never try again
                raise self._refused
            if self._client is not None and self._client.get_transport() is not None \
                    and self._client.get_transport().is_active():
                return self._client
            if self._client is not None:
                self._lost = True             # we had a connection and it died
                _close(self._client)
                self._client = None
            self._sftp = None
            try:
                self._client = self._connect()
            except HostKeyError as exc:
                self._refused = exc
                raise
            except RemoteError as exc:
                if not self._lost:
                    raise
                why = str(exc).removeprefix(f"{self.name}: ")
                raise RemoteError(f"{self.name}: SSH connection lost (sshd gone or host down), "
                                  f"reconnecting failed: {why}") from None
            self._lost = False
            return self._client

    def _connect(self):
        import paramiko
        cfg = self.cfg
        c = paramiko.SSHClient()
        known = cfg.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        if os.path.exists(known):
            c.load_host_keys(known)
        elif not cfg.accept_new_host_key:
            raise HostKeyError(f"{self.name}: known_hosts file {known} does not exist; "
                               "add the host key or set ssh.accept_new_host_key: true")
        c.set_missing_host_key_policy(_AcceptNewPolicy(known) if cfg.accept_new_host_key else paramiko.RejectPolicy())
        password, passphrase = self._secret("password_env"), self._secret("passphrase_env")
        sock = self._sock()
        try:
            c.connect(cfg.host, port=cfg.port, username=cfg.user, key_filename=cfg.key, password=password,
                      passphrase=passphrase,
                      sock=sock, timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                      auth_timeout=self.connect_timeout, allow_agent=cfg.key is None,
                      look_for_keys=cfg.key is None)
        except paramiko.BadHostKeyException:
            _close(sock)
            raise HostKeyError(f"{self.name}: host key for {cfg.host}:{cfg.port} has CHANGED (does not match "
                               f"{known}); refusing to connect") from None
        except paramiko.PasswordRequiredException:
            _close(sock)
            raise RemoteError(f"{self.name}: key {cfg.key} is encrypted: name the environment variable holding "
                              "its passphrase in ssh.passphrase_env", exit_code=2) from None
        except paramiko.SSHException as exc:
            _close(sock)
            if cfg.passphrase_env and cfg.key and str(exc) in ("Invalid key", "Unable to parse key file"):
                raise RemoteError(f"{self.name}: cannot decrypt key {cfg.key} with the passphrase in "
                                  f"${cfg.passphrase_env} (wrong passphrase?)", exit_code=2) from None
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(f"{self.name}: host key for {cfg.host}:{cfg.port} is unknown (not in {known}); "
                                   "refusing to connect (set ssh.accept_new_host_key: true to trust it)") from None
            if any(m in str(exc) for m in ("protocol banner", "No existing session", "Timeout")):
                # TCP got through but sshd said nothing in time (paramiko words it variously)
                raise RemoteError(f"{self.name}: not answering: no SSH greeting from {cfg.host}:{cfg.port} within "
                                  f"{self.connect_timeout:g} s (host hung or overloaded?)") from None
            raise RemoteError(f"{self.name}: ssh {cfg.user}@{cfg.host}:{cfg.port}: {exc}") from None
        except OSError as exc:
            _close(sock)
            raise RemoteError(f"{self.name}: ssh {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        c.get_transport().set_keepalive(15)
        return c

    def _secret(self, field: str) -> str | None:
        """The password or passphrase from the environment variable the inventory names (never logged)."""
        var = getattr(self.cfg, field)
        if var is None:
            return None
        if var not in os.environ:
            raise RemoteError(f"{self.name}: ssh.{field}: environment variable {var} is not set", exit_code=2)
        return os.environ[var]

    # -- commands -----------------------------------------------------------
    def _exec(self, line: str, timeout: float, input: bytes | None) -> CmdResult:
        t0 = time.monotonic()
        try:
            tr = self.client().get_transport()
            chan = tr.open_session(timeout=self.connect_timeout)
            # The first stdout line is the pid (= process group: sshd makes each
            # session a new session) so a timed-out command can be killed.
            chan.exec_command(f"echo $$; {RUN_ENV}={self.run_token}; export {RUN_ENV}; exec sh -c {shlex.quote(line)}")
        except (OSError, EOFError) as exc:
            raise RemoteError(f"{self.name}: connection lost: {exc}") from None
        except Exception as exc:  # paramiko.SSHException and friends
            if isinstance(exc, RemoteError):
                raise
            if "Timeout opening channel" in str(exc):
                raise RemoteError(f"{self.name}: not answering: no SSH channel within {self.connect_timeout:g} s "
                                  "(host hung or overloaded?)") from None
            raise RemoteError(f"{self.name}: cannot run command: {exc}") from None
        if input is not None:
            chan.sendall(input)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = t0 + timeout
        chan.settimeout(0.2)
        try:
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed or not tr.is_active():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    if not self._kill_remote(out):
                        self._drop_client()     # the connection hangs: the next command reconnects
                        raise CommandTimeout(self.name, line, timeout, "the host does not answer")
                    raise CommandTimeout(self.name, line, timeout)
                if not got:
                    try:
                        data = chan.recv(65536)
                        if data:
                            out += data
                    except socket.timeout:
                        pass
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C or SIGTERM while the command runs: end it on the host before unwinding,
            # or it would go on after the controller has gone.
            chan.close()
            self._kill_remote(out)
            raise
        if not tr.is_active() and not chan.exit_status_ready():
            raise RemoteError(f"{self.name}: connection lost while running `{_short(line)}`")
        status = chan.recv_exit_status()
        chan.close()
        first, _, rest = bytes(out).partition(b"\n")
        return CmdResult(line, status if status is not None else -1, rest.decode(errors="replace"),
                         bytes(err).decode(errors="replace"), time.monotonic() - t0)

    def _kill_remote(self, out: bytearray) -> bool:
        """Kill the process group whose id the command printed first; False if the host did not answer."""
        pid = bytes(out).split(b"\n", 1)[0].strip()
        try:
            # without its pid (the host never said it) this only checks that the host answers
            self._exec(f"kill -KILL -{int(pid)} 2>/dev/null; true" if pid.isdigit() else "true", 10, None)
        except RemoteError:
            return False
        return True

    def _drop_client(self) -> None:
        with self._conn_lock:
            c, self._client, self._sftp = self._client, None, None
            self._lost = True
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    # -- files --------------------------------------------------------------
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.client().open_sftp()
            # a host that stops answering makes a file transfer fail instead of hang
            self._sftp.get_channel().settimeout(max(self.default_timeout, 30.0))
        return self._sftp

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        try:
            with self.sftp().open(path, "wb") as f:
                f.set_pipelined(True)
                f.write(data)
            self.sftp().chmod(path, mode)
        except (OSError, EOFError) as exc:
            raise RemoteError(f"{self.name}: cannot write {path}: {exc}") from None

    def read_file(self, path: str) -> bytes:
        try:
            with self.sftp().open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as exc:
            raise RemoteError(f"{self.name}: cannot read {path}: {exc}") from None

    def close(self) -> None:
        try:
            if self._client is not None and self._client.get_transport() is not None \
                    and self._client.get_transport().is_active():
                self.cleanup()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._sftp = None


def _close(sock) -> None:
    try:
        sock.close()
    except Exception:
        pass


class _AcceptNewPolicy:
    """Trust a host key seen for the first time and remember it (explicit opt-in only)."""

    def __init__(self, known_hosts: str):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(os.path.abspath(self.known_hosts)), exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

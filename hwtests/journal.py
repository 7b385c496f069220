"""The restore journal kept on each host.

Every change the suite makes to a host (a NIC setting, a sysctl, a flow rule)
is appended to a journal file on that host, with the command that undoes it,
*before* the change is made. Teardown undoes the entries in reverse order. If
the controller dies (SIGKILL, power loss), the entries stay on the host and the
next run that acquires the host undoes them before doing anything else.

The file lives in /var/lib/hwtests and is named after the host's hostname and
network namespace, so namespace hosts that share one filesystem keep apart.

A journal also tracks its transport's run (`kind` "run"): before the run's temp
dir is made, an entry names it with the run's token, whose undo kills every
process carrying the token and removes the dir. The transport marks it undone
when it cleans up; after a controller crash the next run does it, first, even
across a reboot (a temp dir may outlive one). `restore()` leaves alone the run
of the transport it works through (that one cleans up itself, at its end).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass

from .errors import HwtestsError
from .transport import Command, Transport, quote_cmd

JOURNAL_DIR = "/var/lib/hwtests"


@dataclass
class Entry:
    id: str
    desc: str
    undo: str
    owner: str
    time: float
    boot_id: str = ""
    kind: str = ""        # "" a change to the host; "run" a run's temp dir and processes
    run: str = ""         # the run's token (kind "run")


class Journal:
    def __init__(self, t: Transport, owner: str = ""):
        self.t = t
        self.owner = owner
        self._path: str | None = None
        self._boot_id: str | None = None
        self._seq = 0
        self._tmp_ids: dict[str, str] = {}
        if getattr(t, "tracker", False) is None:
            t.tracker = self      # the transport tells us about its temp dir (see tmpdir_made)

    @property
    def boot_id(self) -> str:
        if self._boot_id is None:
            self._boot_id = self.t.run(["cat", "/proc/sys/kernel/random/boot_id"], timeout=15).stdout.strip()
        return self._boot_id

    @property
    def path(self) -> str:
        if self._path is None:
            r = self.t.run("printf '%s.%s' \"$(hostname)\" \"$(stat -L -c %i /proc/self/ns/net)\"", timeout=15)
            ident = "".join(c for c in r.stdout.strip() if c.isalnum() or c in "._-") or "host"
            self._path = f"{JOURNAL_DIR}/journal.{ident}.jsonl"
        return self._path

    def _append(self, rec: dict) -> None:
        line = json.dumps(rec, separators=(",", ":"))
        script = 'umask 077 && mkdir -p "$1" && printf "%s\\n" "$2" >> "$3" && sync "$3"'
        self.t.run(["sh", "-c", script, "sh", JOURNAL_DIR, line, self.path], timeout=15)

    def _new_id(self) -> str:
        self._seq += 1
        return f"{int(time.time() * 1000)}-{self._seq}"

    # Called by the transport (its `tracker`) -------------------------------------
    def tmpdir_made(self, t: Transport, path: str, undo: str) -> None:
        eid = self._new_id()
        self._append({"op": "do", "id": eid, "desc": f"temp dir {path} and the processes of its run",
                      "undo": undo, "owner": self.owner, "time": time.time(), "boot": self.boot_id,
                      "kind": "run", "run": t.run_token})
        self._tmp_ids[path] = eid

    def tmpdir_removed(self, t: Transport, path: str) -> None:
        eid = self._tmp_ids.pop(path, None)
        if eid is not None:
            self._append({"op": "undone", "id": eid})

    def change(self, desc: str, do: Command, undo: Command, timeout: float | None = None) -> None:
        """Journal `undo`, then run `do`. If `do` fails, undo at once and re-raise."""
        eid = self._new_id()
        undo_line = quote_cmd(undo)
        self._append({"op": "do", "id": eid, "desc": desc, "undo": undo_line, "owner": self.owner,
                      "time": time.time(), "boot": self.boot_id})
        try:
            self.t.run(do, timeout=timeout)
        except HwtestsError:
            self.t.run(undo_line, check=False, timeout=timeout)
            self._append({"op": "undone", "id": eid})
            raise

    def pending(self) -> list[Entry]:
        """What `restore()` would undo, oldest first.

        Changes journaled in an earlier boot were reset by the reboot (the suite
        only changes runtime state), so undoing them now would be wrong; a run's
        temp dir may have outlived the reboot, so run entries stay whatever the boot.
        The live run of this journal's own transport is not listed.
        """
        return [e for e in self._read()[0] if not self._own(e)]

    def _read(self) -> tuple[list[Entry], str]:
        r = self.t.run(["cat", self.path], check=False, timeout=15)
        if not r.ok:
            return [], ""
        entries = parse(r.stdout)
        return [e for e in entries if e.kind == "run" or not e.boot_id or e.boot_id == self.boot_id], r.stdout

    def _own(self, e: Entry) -> bool:
        return e.kind == "run" and e.run == getattr(self.t, "run_token", None)

    def restore(self) -> list[str]:
        """Undo every pending entry: runs left behind first (their processes may hold what the
        changes set up), then the changes, newest first; return the errors (empty when all went well).

        The run of this journal's own transport is kept: it is live, and cleans up itself.
        """
        errors: list[str] = []
        failed: set[str] = set()
        all_entries, raw = self._read()
        entries = [e for e in all_entries if not self._own(e)]
        todo = [e for e in entries if e.kind == "run"] + list(reversed([e for e in entries if e.kind != "run"]))
        for e in todo:
            try:
                r = self.t.run(e.undo, check=False, timeout=60)
            except HwtestsError as exc:
                errors.append(f"{self.t.name}: undo of '{e.desc}' failed: {exc}")
                failed.add(e.id)
                continue
            if not r.ok:
                errors.append(f"{self.t.name}: undo of '{e.desc}' (`{e.undo}`) exited {r.exit_status}: "
                              f"{r.stderr.strip()[-200:]}")
                failed.add(e.id)
        # Keep only what could not be undone (the next run tries again) and our own live run;
        # rewriting also drops the do/undone pairs of runs that ended well.
        keep = [e for e in all_entries if e.id in failed or self._own(e)]
        body = "".join(json.dumps(_record(e), separators=(",", ":")) + "\n" for e in keep)
        if raw and raw != body:
            script = 'printf "%s" "$1" > "$2.tmp" && mv "$2.tmp" "$2" && sync "$2"'
            self.t.run(["sh", "-c", script, "sh", body, self.path], timeout=15)
        return errors

    # Helpers for the common kinds of change ------------------------------------
    def sysctl(self, name: str, value: str) -> None:
        key = "/proc/sys/" + name.replace(".", "/")
        old = self.t.run(["cat", key], timeout=15).stdout.strip()
        self.change(f"sysctl {name}={value}", ["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", value, key],
                    ["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", old, key])


def _record(e: Entry) -> dict:
    rec = {"op": "do", "id": e.id, "desc": e.desc, "undo": e.undo, "owner": e.owner, "time": e.time,
           "boot": e.boot_id}
    if e.kind:
        rec.update(kind=e.kind, run=e.run)
    return rec


def parse(text: str) -> list[Entry]:
    """Pure: pending entries of a journal file's text (corrupt lines are skipped)."""
    done: set[str] = set()
    entries: list[Entry] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue   # a line torn by a crash mid-write: the change after it never ran
        if not isinstance(rec, dict):
            continue
        if rec.get("op") == "undone":
            done.add(str(rec.get("id")))
        elif rec.get("op") == "do" and isinstance(rec.get("undo"), str):
            entries.append(Entry(str(rec.get("id")), str(rec.get("desc", "")), rec["undo"],
                                 str(rec.get("owner", "")), float(rec.get("time", 0) or 0),
                                 str(rec.get("boot", "")), str(rec.get("kind") or ""), str(rec.get("run") or "")))
    return [e for e in entries if e.id not in done]


def describe(entries: list[Entry]) -> str:
    return "; ".join(shlex.quote(e.desc) for e in entries)

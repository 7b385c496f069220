"""Secrets and hostile inventory values, for real on an own netns lab.

- a1 logs in with an encrypted key whose passphrase is in an environment variable, b1 with
  root's password from another (the lab's sshds take it: each host sees a shadow file of
  its own, bound over /etc/shadow in its private mount namespace); results go to a real
  PostgreSQL server behind a password. After `hwtests run` (HTML report, JUnit XML, -v)
  and the reading commands, none of the three secrets is anywhere: output, files the run
  wrote, every row of the database, the hosts' journals.
- inventory values and the build label that reach commands on the hosts hold shell
  syntax that would create a canary file if any of it ran: it must not exist afterwards.
- wrong or missing secrets: one line naming the host, the secret not in it.
- the traffic programs' cache dir on a host is used only when private to the login user.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from hwtests import labnetns, traffic
from hwtests.journal import JOURNAL_DIR
from hwtests.transport import LocalTransport
from pgfixture import pg_server  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.postgres]
HWTESTS = str(Path(sys.executable).with_name("hwtests"))


def _cli(*args: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([HWTESTS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _secret_inventory(inv_path: Path, tmp: Path, hostile: str, phrase: str) -> Path:
    """The lab's inventory with a1 on an encrypted key, b1 on a password, hostile source paths."""
    st_dir = inv_path.parent
    key = tmp / "encrypted_key"
    shutil.copy(st_dir / "client_key", key)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", phrase, "-f", str(key)], check=True, timeout=30,
                   capture_output=True)
    inv = yaml.safe_load(inv_path.read_text())
    inv["hosts"]["a1"]["ssh"].update(key=str(key), passphrase_env="HWT_TEST_KEY_PASSPHRASE")
    b1 = inv["hosts"]["b1"]["ssh"]
    del b1["key"]
    b1["password_env"] = "HWT_TEST_SSH_PASSWORD"
    for h in ("a1", "b1"):
        inv["hosts"][h].update(pagepool_src=hostile, build_dir=hostile)
    out = tmp / "inventory.yaml"
    out.write_text(yaml.safe_dump(inv, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory, pg_server):  # noqa: F811
    from conftest import unavailable
    from hwtests.errors import HwtestsError
    try:
        labnetns.preflight()
    except HwtestsError as exc:
        unavailable(str(exc))
    tmp = tmp_path_factory.mktemp("secrets")
    password, phrase = "pw-" + secrets.token_hex(10), "kp-" + secrets.token_hex(10)
    canary = Path(f"/tmp/hwt-pwned-{secrets.token_hex(3)}")      # short: it goes into a label too
    hostile = (f"/nonexistent/$(touch {canary})`touch {canary}`;touch {canary}|touch {canary}&&touch {canary}"
               f"'\"\n touch {canary} #")
    label = f"sec$(touch {canary})`touch {canary}`;touch {canary}'\""
    state = tmp / "lab"
    inv_path = labnetns.up(state, pairs=1, password=password)
    work = tmp / "work"
    work.mkdir()
    try:
        inv = _secret_inventory(Path(inv_path), tmp, hostile, phrase)
        db = pg_server.create_database("secrets")
        env = dict(os.environ, HWT_TEST_KEY_PASSPHRASE=phrase, HWT_TEST_SSH_PASSWORD=password, COLUMNS="1000",
                   HWTESTS_LINERATE_DURATION="3", HWTESTS_LINERATE_REPEAT="1", HWTESTS_LINERATE_WARMUP="1",
                   HWTESTS_LINERATE_COOLDOWN="0")
        outs = {}
        outs["run"] = _cli("run", "--inventory", str(inv), "--kernel-build", label, "--db", db, "--html",
                           str(work / "run.html"), "--junitxml", str(work / "junit.xml"), "-v", "-rA",
                           "-k", "link or pagepool or (linerate and tcp)", "-p", "no:cacheprovider", env=env, cwd=work)
        outs["probe"] = _cli("probe", "--inventory", str(inv), "--json", env=env, cwd=work, timeout=300)
        outs["report"] = _cli("report", "--db", db, "--out", str(work / "report.html"), "--csv",
                              str(work / "samples.csv"), env=env, cwd=work, timeout=300)
        outs["compare"] = _cli("compare", "--db", db, "--baseline", label, "--candidate", label, "--json",
                               env=env, cwd=work, timeout=300)
        outs["wrong_pw"] = _cli("probe", "--inventory", str(inv), "--host", "b1", env=dict(
            env, HWT_TEST_SSH_PASSWORD="wrong-" + password), cwd=work, timeout=120)
        outs["wrong_phrase"] = _cli("probe", "--inventory", str(inv), "--host", "a1", env=dict(
            env, HWT_TEST_KEY_PASSPHRASE="wrong-" + phrase), cwd=work, timeout=120)
        no_pw = {k: v for k, v in env.items() if k != "HWT_TEST_SSH_PASSWORD"}
        outs["missing_pw"] = _cli("probe", "--inventory", str(inv), "--host", "b1", env=no_pw, cwd=work, timeout=120)
        # the functions that hand these values to the hosts, called directly too
        from hwtests import hostconn, inventory, pagepool
        plain = inventory.load(inv_path)
        t = hostconn.connect(plain.hosts["a1"], plain.defaults)
        try:
            direct = {"facts": pagepool.host_facts(t, hostile), "source": pagepool.host_source(t, hostile)}
        finally:
            t.close()
        import psycopg
        rows = []
        with psycopg.connect(db) as con:
            tables = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
            for t in tables:
                rows += [r[0] for r in con.execute(f'SELECT row_to_json(t)::text FROM "{t}" t')]
        journals = {p.name: p.read_text(errors="replace") for p in Path(JOURNAL_DIR).glob("journal.*")}
        yield {"outs": outs, "secrets": {"password": password, "passphrase": phrase,
                                         "db password": urlsplit(db).password},
               "canary": canary, "work": work, "rows": rows, "tables": tables, "journals": journals, "label": label,
               "direct": direct}
    finally:
        labnetns.down(state)
        if canary.exists():
            canary.unlink()     # (the test below has failed by then)


def test_logins_with_passphrase_and_password_worked(secret_run):
    r = secret_run["outs"]["run"]
    out = r.stdout + r.stderr
    print("\n".join(ln for ln in out.splitlines() if ln.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))))
    assert r.returncode in (0, 1), out[-3000:]       # pagepool may fail on the hostile source path: not a login
    assert "Traceback" not in out, out[-3000:]
    passed = [ln for ln in out.splitlines() if ln.startswith("PASSED") and "test_link" in ln]
    assert len(passed) >= 3, out[-3000:]             # link up, ping v4 and v6: both hosts logged in and ran
    assert any(ln.startswith("PASSED") and "test_linerate[pair1-tcp]" in ln for ln in out.splitlines()), out[-3000:]
    probe = secret_run["outs"]["probe"]
    assert probe.returncode == 0 and '"a1"' in probe.stdout and '"b1"' in probe.stdout, probe.stderr[-2000:]
    stored = json.dumps(secret_run["label"])[1:-1]
    assert any(stored in row for row in secret_run["rows"])       # the label was stored as given
    assert secret_run["outs"]["report"].returncode == 0, secret_run["outs"]["report"].stderr[-2000:]


def test_no_secret_anywhere(secret_run):
    places = {f"{name} output": r.stdout + r.stderr for name, r in secret_run["outs"].items()}
    for p in secret_run["work"].rglob("*"):
        if p.is_file():
            places[str(p.relative_to(secret_run["work"]))] = p.read_bytes().decode(errors="replace")
    places["database rows"] = "\n".join(secret_run["rows"])
    places.update({f"journal {k}": v for k, v in secret_run["journals"].items()})
    assert {"run.html", "junit.xml", "report.html", "samples.csv"} <= set(places), sorted(places)
    assert any('"metric":"gbps"' in row for row in secret_run["rows"]), secret_run["rows"][:5]    # samples too
    leaks = [f"{what} in {where}" for what, s in secret_run["secrets"].items() for where, text in places.items()
             if s and s in text]
    assert not leaks, leaks


def test_hostile_values_ran_nothing(secret_run):
    assert not secret_run["canary"].exists(), "a hostile inventory value or label was run by a shell"
    # and they did reach the hosts, as one argument each
    d = secret_run["direct"]
    assert d["facts"]["build_dir"].startswith("/nonexistent/$(touch "), d["facts"]
    assert d["facts"]["build"] == "0" and d["source"] is None


@pytest.mark.parametrize("case,host,fragment", [
    ("wrong_pw", "b1", "Authentication failed"),
    ("wrong_phrase", "a1", "cannot decrypt key"),
    ("missing_pw", "b1", "environment variable HWT_TEST_SSH_PASSWORD is not set"),
])
def test_wrong_or_missing_secret_is_one_line(secret_run, case, host, fragment):
    r = secret_run["outs"][case]
    err = r.stderr.strip()
    print(f"{case}: exit {r.returncode}: {err}")
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr, err
    assert err.startswith(f"hwtests: error: {host}: ") and "\n" not in err, err
    assert fragment in err, err
    for s in secret_run["secrets"].values():
        assert s not in err and f"wrong-{s}" not in err


# -- the traffic programs' cache dir on a host -----------------------------------------------------

def test_host_cache_dir_used_only_when_private(tmp_path, monkeypatch):
    t = LocalTransport("h1", 30)
    try:
        base = tmp_path / "var-cache"
        base.mkdir()
        monkeypatch.setattr(traffic, "HOST_CACHE", str(base / "hwtests" / "traffic"))
        d = traffic._host_cache_dir(t, "ab" * 32, "x86_64", "6.12.0")
        assert d.startswith(str(base / "hwtests" / "traffic") + "/")
        for p in (base / "hwtests", base / "hwtests" / "traffic", Path(d)):
            assert oct(p.stat().st_mode & 0o777) == "0o700", p           # made private
        # another user could write there: not trusted, the run's private temp dir instead
        os.chmod(base / "hwtests" / "traffic", 0o777)
        d2 = traffic._host_cache_dir(t, "ab" * 32, "x86_64", "6.12.0")
        assert d2.startswith(t.tmpdir + "/"), d2
        os.chmod(base / "hwtests" / "traffic", 0o700)
        os.chmod(base / "hwtests", 0o1777)
        assert traffic._host_cache_dir(t, "cd" * 32, "x86_64", "6.12.0").startswith(t.tmpdir + "/")
        os.chmod(base / "hwtests", 0o700)
        os.chown(Path(d), 65534, 65534)                             # someone else's
        assert traffic._host_cache_dir(t, "ab" * 32, "x86_64", "6.12.0").startswith(t.tmpdir + "/")
    finally:
        t.close()


def test_files_on_hosts_go_to_the_private_temp_dir(tmp_path):
    t = LocalTransport("h1", 30)
    try:
        f = tmp_path / "x.bin"
        f.write_bytes(b"payload")
        remote = t.upload(f)
        assert remote.startswith(t.tmpdir + "/")
        assert oct(os.stat(t.tmpdir).st_mode & 0o777) == "0o700"
        tmp = t.tmpdir
    finally:
        t.close()
    assert not os.path.exists(tmp)

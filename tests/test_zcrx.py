"""io_uring zcrx receiver pieces that need no VM: its arguments, what it says when the kernel
lacks the device-less mode, the skip reason built from that, the sender's header write, and
the report's label for copy-fallback figures.

The transfers themselves need a 7.1+ kernel (ZCRX_REG_NODEV): they run here when this
machine's kernel offers it, and always in the VM lab (tests/test_zcrx_vm.py).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess

import pytest

from hwtests import traffic

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="io_uring zcrx registration needs CAP_NET_ADMIN")


def _run(argv, timeout=30):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)


def _nodev_answer(bins) -> tuple[int, dict]:
    """hwt_rx --zcrx-nodev --bind-only on this machine: (exit, its JSON line)."""
    r = _run([bins.rx, "--mode", "zcrx", "--zcrx-nodev", "--bind-only"])
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (r.returncode, r.stdout, r.stderr)
    return r.returncode, lines[0]


# -- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("args,says", [
    (["--area-size", "5000"], "not a multiple of the page size"),
    (["--cq-entries", "12"], "power of two"),
    (["--cq-entries", "8", "--flows", "16"], "smaller than the submission queue"),
    (["--zcrx-path", "sideways"], "sideways"),
    (["--zcrx-path", "zero-copy"], "needs --ifname"),
])
def test_zcrx_usage_errors(bins, args, says):
    r = _run([bins.rx, "--mode", "zcrx", *args])
    assert r.returncode == traffic.EXIT_USAGE and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr


def test_zcrx_options_need_zcrx_mode(bins):
    for opt in (["--zcrx-nodev"], ["--cq-entries", "64"]):
        r = _run([bins.rx, "--mode", "tcp", *opt])
        assert r.returncode == traffic.EXIT_USAGE and "need --mode zcrx" in r.stderr, r.stderr


# -- the kernel's answer -----------------------------------------------------------------------

@needs_root
def test_nodev_refusal_names_the_query(bins):
    """Where the kernel lacks ZCRX_REG_NODEV, the receiver says so from the zcrx query (exit 4)."""
    rc, doc = _nodev_answer(bins)
    if rc == 0:
        pytest.skip(f"this kernel ({os.uname().release}) offers ZCRX_REG_NODEV: the transfer tests cover it")
    assert rc == traffic.EXIT_UNSUPPORTED, doc
    if doc["step"].startswith("io_uring_setup"):
        pytest.skip(f"io_uring unusable here: {doc['unsupported']}")
    assert doc["step"] == "zcrx: IORING_REGISTER_QUERY", doc
    assert doc["errno"] in (errno.EINVAL, errno.EOPNOTSUPP) and "no ZCRX_REG_NODEV" in doc["extack"], doc
    exc = traffic.Unsupported(doc["unsupported"], host="local", role="rx", step=doc["step"], errno=doc["errno"],
                              summary=doc)
    why = traffic.zcrx_unsupported_reason(exc, os.uname().release)
    assert why.startswith(f"io_uring zcrx: kernel {os.uname().release} has no ZCRX_REG_NODEV (query "), why


@needs_root
def test_nodev_loopback_small_cq_several_flows(bins, lt):
    """On a kernel with ZCRX_REG_NODEV: a 16-entry CQ and 4 flows complete, every byte validated."""
    rc, doc = _nodev_answer(bins)
    if rc != 0:
        pytest.skip(f"this kernel ({os.uname().release}) has no device-less zcrx: {doc.get('unsupported')}")
    n = 32 << 20
    r = traffic.run_pair(lt, lt, "127.0.0.1", "zcrx", "tcp", flows=4, bytes_=n, duration=60, rx_bins=bins,
                         tx_bins=bins, rx_args=["--zcrx-nodev", "--cq-entries", "16"])
    assert r.ok and r.rx["validated_bytes"] == n and r.mismatches == 0, r.rx
    assert r.rx["zcrx_path"] == "nodev-copy" and r.rx["refills"] == r.rx["zcrx_data_cqes"], r.rx
    assert r.rx["refill_pending"] == 0 and r.rx["cq_full_rearms"] > 0, r.rx


def test_zcrx_unsupported_reason():
    def u(step, eno, extack=""):
        return traffic.Unsupported(f"{step}: {os.strerror(eno)}", role="rx", step=step, errno=eno,
                                   summary={"extack": extack} if extack else {})

    q = "zcrx: IORING_REGISTER_QUERY"
    assert traffic.zcrx_unsupported_reason(u(q, errno.EINVAL, "no ZCRX_REG_NODEV: the zcrx query failed with EINVAL"),
                                           "6.12.118") == \
        "io_uring zcrx: kernel 6.12.118 has no ZCRX_REG_NODEV (query EINVAL)"
    assert traffic.zcrx_unsupported_reason(u(q, errno.EOPNOTSUPP, "no ZCRX_REG_NODEV: register_flags 0x1"),
                                           "7.0.1") == \
        "io_uring zcrx: kernel 7.0.1 has no ZCRX_REG_NODEV (query: register_flags 0x1)"
    assert traffic.zcrx_unsupported_reason(u("io_uring: IORING_OP_RECV_ZC", errno.EOPNOTSUPP), "6.6.1") == \
        "io_uring zcrx: kernel 6.6.1: io_uring: IORING_OP_RECV_ZC: Operation not supported"


def test_summary_zcrx_fields_checked():
    ok = {"role": "rx", "mode": "zcrx", "zcrx_path": "nodev-copy", "refills": 3, "refill_flushes": 1,
          "zcrx_register_flags": 3, "area_sizing": "default (no NIC ring)"}
    assert traffic.check_summary(dict(ok), "h", "rx")["zcrx_path"] == "nodev-copy"
    for k, v in (("zcrx_path", "zerocopy"), ("refill_pending", -1), ("cq_full_rearms", True), ("area_sizing", 4)):
        with pytest.raises(traffic.TrafficError, match=k):
            traffic.check_summary(dict(ok, **{k: v}), "h", "rx")


# -- the sender's stream header --------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed")
@pytest.mark.parametrize("mode", ["tcp", "zerocopy"])
def test_header_goes_with_the_first_payload(bins, mode, tmp_path):
    """hwt_tx writes the 16-byte header and payload in one sendmsg, never the header alone."""
    rx = subprocess.Popen([bins.rx, "--mode", "tcp", "--addr", "127.0.0.1", "--bytes", "1M", "--timeout", "20"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = json.loads(rx.stdout.readline())["port"]
        log = tmp_path / "strace.txt"
        r = _run(["strace", "-f", "-e", "trace=sendto,sendmsg,write", "-o", log, bins.tx, "--mode", mode,
                  "--addr", "127.0.0.1", "--port", port, "--bytes", "1M", "--chunk", "64K"], timeout=60)
        out, _ = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
    assert r.returncode == 0 and rx.returncode == 0, (r.stderr, out)
    assert json.loads(out.strip().splitlines()[-1])["validated_bytes"] == 1 << 20
    calls = [ln for ln in log.read_text().splitlines() if re.search(r"\b(sendto|sendmsg)\(", ln)]
    assert calls, log.read_text()[-2000:]
    first = calls[0]
    assert "sendmsg(" in first and "iov_len=16}" in first and "iov_len=65536}" in first, first
    assert not any(re.search(r"sendto\(\d+, \"HWT1", ln) for ln in calls), calls[:3]


# -- the report ---------------------------------------------------------------------------------

def test_report_labels_copy_fallback(tmp_path):
    from hwtests.report import TEST_LABELS, write_report
    from hwtests.store import HostInfo, Run, Sample, Store

    st = Store.open(str(tmp_path / "r.db"))
    host = HostInfo(role="rx", name="vm-a", kernel_release="7.3.4+deb13-cloud-amd64", proc_version="Linux 7.3.4",
                    config_hash="c", cmdline="", boot_id="b", nic_driver="virtio_net", nic_firmware="")
    rid = st.begin_run(Run(label="deb7", pair="vm", controller="ctl", inventory_hash="i", source="measured",
                           hosts=[host]))
    st.add_samples(rid, [Sample(test=t, metric="gbps", value=v, unit="Gbit/s", better="higher", repetition=i,
                                boot_id="b", host="vm-a")
                         for t, v in (("linerate/zcrx-nodev", 0.03), ("linerate/tcp", 0.5)) for i in range(3)])
    st.finish_run(rid)
    html = write_report(st, tmp_path / "r.html", builds=["deb7"]).read_text()
    label = TEST_LABELS["linerate/zcrx-nodev"]
    assert label == "copy fallback, functional"
    heads = re.findall(r"<h3>.*?</h3>", html, re.S)
    nodev = [h for h in heads if "linerate/zcrx-nodev" in h]
    tcp = [h for h in heads if "linerate/tcp" in h]
    assert nodev and all(label in h for h in nodev), nodev
    assert tcp and not any(label in h for h in tcp), tcp
    rows = re.findall(r'<td class="test">.*?</td>', html, re.S)
    assert any("linerate/zcrx-nodev" in r.replace("<wbr>", "") and label in r for r in rows), rows

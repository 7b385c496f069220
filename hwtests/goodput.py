"""The TCP goodput ceiling of an Ethernet link: what share of the link speed one TCP stream can carry.

Pure: no I/O. A stream at 100% of the link speed is impossible; the ceiling is what
is left after per-packet overhead, so "% of TCP ceiling" says how close a result is to
what is achievable at that MTU, where "% of link" mixes that in with the framing.

Per full-sized segment of an MTU-byte IP packet:
- on the wire: MTU + 38 bytes (preamble and start delimiter 8, Ethernet header 14,
  frame check sequence 4, inter-frame gap 12);
- TCP payload: MTU - 52 for IPv4 (IP header 20, TCP header 20, timestamp option 12,
  which Linux sends by default), MTU - 72 for IPv6 (IP header 40).

So the ceiling is (MTU - 52) / (MTU + 38) for IPv4, (MTU - 72) / (MTU + 38) for IPv6:
1448/1538 (94.1%) at MTU 1500 over IPv4, i.e. the familiar 941 Mbit/s on gigabit Ethernet.
No VLAN tag, no SACK blocks, no other TCP options are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

ETHERNET_OVERHEAD = 38                  # preamble + SFD 8, header 14, FCS 4, inter-frame gap 12
IP_HEADER = {4: 20, 6: 40}
TCP_HEADER = 20
TCP_TIMESTAMPS = 12                     # the option (10) padded to 4-byte alignment
MAX_MTU = 65535                         # IPv4 total length / IPv6 payload length without jumbograms


@dataclass(frozen=True)
class Ceiling:
    mtu: int
    family: int                         # 4 or 6
    payload: int                        # TCP payload bytes per full segment
    wire: int                           # bytes on the wire per full segment
    fraction: float                     # payload / wire

    @property
    def pct(self) -> float:
        return 100.0 * self.fraction


def tcp_ceiling(mtu: int, family: int = 4) -> Ceiling:
    """The goodput ceiling of one TCP stream with timestamps at this MTU (ValueError on nonsense)."""
    if family not in IP_HEADER:
        raise ValueError(f"address family must be 4 or 6, not {family!r}")
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise ValueError(f"MTU must be an integer, not {mtu!r}")
    headers = IP_HEADER[family] + TCP_HEADER + TCP_TIMESTAMPS
    if not headers < mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} is outside {headers + 1}..{MAX_MTU} (IPv{family}, TCP with timestamps)")
    payload, wire = mtu - headers, mtu + ETHERNET_OVERHEAD
    return Ceiling(mtu=mtu, family=family, payload=payload, wire=wire, fraction=payload / wire)


def family_of(addr: str) -> int:
    """4 or 6: the family of a data address (an IPv6 one has a colon)."""
    return 6 if ":" in addr else 4


def share_of_ceiling(gbps: float, speed_mbps: float, ceiling: Ceiling) -> float:
    """Percent of the TCP goodput ceiling a throughput reached on a link of this speed."""
    if speed_mbps <= 0:
        raise ValueError(f"link speed must be positive, not {speed_mbps!r}")
    return 100.0 * gbps * 1000.0 / (speed_mbps * ceiling.fraction)

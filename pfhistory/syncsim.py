"""The simulated firewall's changes as the pfsync packets OpenBSD would send for them.

Built on ``simulate.iter_events`` (the same seeded model as the state files): the states
alive when the simulated period starts go out as a bulk update (BUS START, a full UPD of
each, BUS END), as a peer answering a bulk request sends them; then every creation is an
INS, every change of pf's peer states or timeout an UPD_C and every removal a DEL_C, as
pfsync_insert_state(), pfsync_update_state() and pfsync_delete_state() queue them
(sys/net/if_pfsync.c). Messages are queued and sent when the next one would not fit the
MTU or one second after the first one was queued (pfsync's send timeout), so a packet's
time is when OpenBSD would have sent it.
"""

from pfhistory import pfsync
from pfhistory.simulate import SimulationConfig, iter_events

__all__ = ["iter_datagrams", "DEFAULT_MTU", "SEND_DELAY"]

DEFAULT_MTU = 1500          # the sync interface's (Ethernet)
SEND_DELAY = 1.0            # seconds a queued message waits at most
_IP_HEADER = 20
_SUB = pfsync.SUBHEADER_SIZE


class _Queue:
    """Messages waiting for their packet, and the bytes they would take."""

    def __init__(self, mtu):
        self.room = mtu - _IP_HEADER - pfsync.HEADER_SIZE
        self.messages = []
        self.size = 0
        self.first_at = None

    def cost(self, action, raw):
        same = self.messages and self.messages[-1][0] == action
        return len(raw) + (0 if same else _SUB)

    def fits(self, action, raw):
        return self.size + self.cost(action, raw) <= self.room

    def add(self, at, action, raw):
        if not self.messages:
            self.first_at = at
        self.size += self.cost(action, raw)
        self.messages.append((action, raw))

    def take(self):
        messages = self.messages
        self.messages, self.size, self.first_at = [], 0, None
        return pfsync.encode(messages)


def iter_datagrams(cfg: SimulationConfig, mtu=DEFAULT_MTU, delay=SEND_DELAY, src=b"\0\0\0\0",
                   dst=bytes((224, 0, 0, 240))):
    """Yield (epoch seconds, IPv4 datagram) of the pfsync traffic of ``cfg``, in time order."""
    queue = _Queue(mtu)
    ident = 0
    cid = cfg.creatorid
    start = cfg.start.timestamp()

    def packet(at):
        nonlocal ident
        ident += 1
        return at, pfsync.encode_ip(queue.take(), src=src, dst=dst, ident=ident)

    def message(at, action, raw):
        out = []
        if queue.messages and at > queue.first_at + delay:
            out.append(packet(queue.first_at + delay))
        if not queue.fits(action, raw):
            out.append(packet(at))
        queue.add(at, action, raw)
        return out

    bulk = []
    started = False
    for at, kind, state in iter_events(cfg):
        if not started:
            if kind == "insert" and at <= start:
                bulk.append(state)
                continue
            started = True
            yield from _bulk(bulk, start, cid, message)
            bulk = []
        if kind == "insert":
            out = message(at, pfsync.ACT_INS, state.record_at(at))
        elif kind == "update":
            out = message(at, *pfsync.upd_c(state.record_at(at)))
        else:
            out = message(at, *pfsync.del_c(cid, state.id))
        yield from out
    if not started:
        yield from _bulk(bulk, start, cid, message)
    if queue.messages:
        yield packet(queue.first_at + delay)


def _bulk(states, at, cid, message):
    out = list(message(at, *pfsync.bus(cid, pfsync.BUS_START)))
    for state in states:
        out += message(at, pfsync.ACT_UPD, state.record_at(at))
    out += message(at, *pfsync.bus(cid, pfsync.BUS_END))
    return out


def write_and_send(cfg: SimulationConfig, pcap_path, send=None, iface=None, pps=20000):
    """Write cfg's pfsync traffic to a pcap file and, with ``send``, send it to that
    address now, at most ``pps`` packets a second. Returns the number of packets."""
    import os
    import socket
    import time

    from pfhistory.capture import PcapWriter
    from pfhistory.exceptions import PFError

    dst = bytes((224, 0, 0, 240))
    sock = None
    if send is not None:
        try:
            dst = socket.inet_aton(send)
        except OSError:
            raise PFError(f"--send {send!r} is not an IPv4 address") from None
        from pfhistory.syncsocket import open_sender

        sock = open_sender(iface)
    if os.path.isdir(pcap_path):
        raise PFError(f"--pfsync {pcap_path}: is a directory; give a file name")
    try:
        writer = PcapWriter(pcap_path)
    except OSError as e:
        raise PFError(f"--pfsync {pcap_path}: cannot write the capture: {e.strerror}") from None
    n = 0
    gap = 1.0 / pps if pps else 0.0
    next_send = time.monotonic()
    try:
        with writer:
            for at, datagram in iter_datagrams(cfg, dst=dst):
                writer.write(at, datagram)
                n += 1
                if sock is not None:
                    now = time.monotonic()
                    if now < next_send:
                        time.sleep(next_send - now)
                    next_send = max(now, next_send) + gap
                    try:
                        sock.sendto(datagram, (send, 0))
                    except OSError as e:
                        raise PFError(f"--send {send}: {e.strerror}") from None
    finally:
        if sock is not None:
            sock.close()
    return n

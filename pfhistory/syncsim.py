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
    address now, at most ``pps`` packets a second. Returns the number of packets.

    The file is written whole or not at all (a temporary file renamed over it at the end),
    as the snapshots are: ``collect --from-pcap`` would record a partial one as complete."""
    import os
    import signal
    import socket

    from pfhistory import outfile
    from pfhistory.exceptions import PFError

    dst = bytes((224, 0, 0, 240))
    if send is not None:
        try:
            dst = socket.inet_pton(socket.AF_INET, send)
        except OSError:
            raise PFError(f"--send {send!r} is not an IPv4 address") from None
    if os.path.isdir(pcap_path):
        raise PFError(f"--pfsync {pcap_path}: is a directory; give a file name")
    if cfg.start.timestamp() + cfg.duration + SEND_DELAY > _PCAP_LAST:
        raise PFError(f"--pfsync {pcap_path}: the last packets would be sent after "
                      f"2106-02-07T06:28:15Z, past pcap's 32-bit seconds: end the period "
                      f"a second earlier")
    sock = None
    if send is not None:
        from pfhistory.syncsocket import open_sender

        try:
            sock = open_sender(iface)
        except OSError as e:
            raise PFError(f"--send {send}: {e.strerror}") from None
    tmp = None
    try:
        target, tmp = _output(pcap_path)
        n = _write(cfg, tmp or target, sock, send, pps, dst)
        if tmp is not None:
            os.replace(tmp, target)
            tmp = None
    except BrokenPipeError:
        raise               # the reader went away (| head): no error of ours
    except OSError as e:
        raise PFError(f"--pfsync {pcap_path}: cannot write the capture: {e.strerror}") from None
    except PFError as e:
        if tmp is not None and tmp in str(e):     # the writer's: name the file asked for
            raise PFError(str(e).replace(tmp, os.fspath(pcap_path))) from None
        raise
    except _Terminated:
        outfile.discard(tmp)
        os.kill(os.getpid(), signal.SIGTERM)    # its handler is the default again
        raise
    finally:
        outfile.discard(tmp)
        if sock is not None:
            sock.close()
    return n


# Pcap packet times are unsigned 32-bit seconds.
_PCAP_LAST = 0xFFFFFFFF


def _output(path):
    """(final name, temporary name) for writing ``path`` (pfhistory.outfile's rule): a
    new owner-only file beside it, renamed over it when complete, or, for a device,
    FIFO or /dev/stdout, the path itself (temporary None). A symlink is refused."""
    import os
    import tempfile

    from pfhistory import outfile

    target = os.path.abspath(path)
    if not outfile.replaces(target):
        return target, None
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".tmp",
                               dir=os.path.dirname(target))     # 0600
    os.close(fd)
    return target, tmp


def _write(cfg, path, sock, send, pps, dst):
    """Write (and send) the packets. SIGTERM unwinds as Ctrl-C does, so that the caller
    removes what it has written before the process ends by that signal."""
    import signal
    import threading

    from pfhistory.capture import PcapWriter
    from pfhistory.exceptions import PFError

    term = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if term:
        signal.signal(signal.SIGTERM, _terminated)
    writer = None
    try:
        with PcapWriter(path) as writer:
            _fill(cfg, writer, sock, send, pps, dst)
        return writer.packets
    except PFError:
        if writer is not None and isinstance(writer.error, BrokenPipeError):
            raise writer.error from None    # the reader went away as the end was written
        raise
    finally:
        if term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _fill(cfg, writer, sock, send, pps, dst):
    """Write (and send) every datagram, at most pps a second when sending."""
    import time

    from pfhistory.exceptions import PFError

    gap = 1.0 / pps if pps else 0.0
    next_send = time.monotonic()
    for at, datagram in iter_datagrams(cfg, dst=dst):
        writer.write(at, datagram)
        if writer.error is not None:
            # The capture is this command's product: stop at once, not after
            # simulating the rest for nothing.
            raise writer.error
        if sock is not None:
            now = time.monotonic()
            if now < next_send:
                time.sleep(next_send - now)
            next_send = max(now, next_send) + gap
            try:
                sock.sendto(datagram, (send, 0))
            except OSError as e:
                raise PFError(f"--send {send}: {e.strerror}") from None


class _Terminated(BaseException):
    """SIGTERM while writing: unwinds to remove the temporary file, then ends the process
    by the same signal, as it would have been ended."""


def _terminated(signum, frame):
    raise _Terminated(signum)

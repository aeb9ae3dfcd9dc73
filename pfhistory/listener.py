"""`pfhistory listen`: record pfsync traffic from the network as it arrives.

One thread only receives (so a burst, or a write waiting for the cron collector's lock,
never leaves packets in the socket buffer long), the main thread decodes and writes them
in batches (SyncRecorder). SIGTERM and SIGINT stop receiving, write what was received,
and return. Packets are dated when they are received.
"""

import collections
import errno
import os
import signal
import socket
import threading
import time

from pfhistory.collector import DEFAULT_SAMPLE_RETENTION, expire_samples
from pfhistory.db import describe_db_error, is_db_error, write_transaction
from pfhistory.exceptions import PFError
from pfhistory.syncrecorder import SyncRecorder
from pfhistory.syncsocket import open_receiver

__all__ = ["Listener"]

_RECV_SIZE = 65535
_POLL_S = 0.1              # how often the receiver looks at the stop flag
_GIVE_UP_AFTER = 600.0     # seconds of failing writes before giving up
_QUIET_S = 0.1             # when stopping: silence that ends the last reads
_DRAIN_MAX_S = 1.0         # and the most time they may take
_EXPIRE_EVERY_S = 60.0     # how often samples past the retention are dropped


class Listener:
    """Receive pfsync datagrams on a raw socket and record them in batches."""

    def __init__(self, engine, url, iface=None, batch_packets=512, batch_ms=200,
                 write_pcap=None, log=None, sock=None,
                 sample_retention=DEFAULT_SAMPLE_RETENTION, warn=None):
        self.engine = engine
        self.sample_retention = sample_retention
        self._expired_at = time.monotonic()
        self.url = url
        self.iface = iface
        self.sock = sock if sock is not None else open_receiver(iface)
        self.recorder = SyncRecorder(engine, f"pfsync {iface or 'any'}",
                                     batch_packets=batch_packets, batch_ms=batch_ms)
        self.queue = collections.deque()
        self.arrived = threading.Event()
        self.stop = threading.Event()
        self.log = log or (lambda line: None)
        self.warn = warn or self.log      # said even without -v
        self._pcap_failed = False
        self.pcap = None
        if write_pcap is not None:
            from pfhistory.capture import PcapWriter

            try:
                self.pcap = PcapWriter(write_pcap)
            except OSError as e:
                self.sock.close()
                raise PFError(f"--write-pcap {write_pcap}: {e.strerror}") from None
        self.receive_error = None

    # -- the receiving thread ------------------------------------------------------------

    def _receive(self):
        sock, queue, arrived, stop = self.sock, self.queue, self.arrived, self.stop
        sock.settimeout(_POLL_S)
        recv, now = sock.recv, time.time
        while not stop.is_set():
            try:
                data = recv(_RECV_SIZE)
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                self.receive_error = e
                stop.set()
                break
            queue.append((now(), data))
            arrived.set()
        # Stopping: take what is already in the socket buffer or in flight on the wire,
        # until it has been quiet for a moment (bounded).
        sock.settimeout(_QUIET_S)
        deadline = time.monotonic() + _DRAIN_MAX_S
        while self.receive_error is None and time.monotonic() < deadline:
            try:
                data = recv(_RECV_SIZE)
            except (socket.timeout, InterruptedError):
                break
            except OSError:
                break
            queue.append((now(), data))
        arrived.set()

    # -- the main thread ----------------------------------------------------------------

    def run(self):
        """Until SIGTERM/SIGINT: receive, record in batches. Returns the SyncRecorder."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=self._receive, name="pfsync-receive", daemon=True)
        thread.start()
        self.log(f"listening for pfsync on {self.iface or 'every interface'} "
                 f"(pid {os.getpid()})")
        failing_since = None
        finished = False
        try:
            while True:
                stopping = self.stop.is_set()
                self._drain()
                rec = self.recorder
                if rec.first_at is not None and (stopping or rec.due(time.monotonic())):
                    try:
                        result = rec.flush()
                        failing_since = None
                        if result is not None:
                            rec.roll_up(result.collected_at)     # hours it completed
                        self._expire_samples()
                    except Exception as e:
                        if not is_db_error(e) or stopping:
                            raise
                        # Keep the packets and try again at the next batch: the cron
                        # collector may hold the write lock for a big table.
                        failing_since = failing_since or time.monotonic()
                        self.log(describe_db_error(e, self.url) + "; retrying")
                        if time.monotonic() - failing_since > _GIVE_UP_AFTER:
                            raise
                        rec.first_at = time.monotonic()
                if stopping:
                    thread.join()
                    self._drain()
                    if rec.first_at is not None:
                        result = rec.flush()
                        if result is not None:
                            rec.roll_up(result.collected_at)
                    break
                wait = None if rec.first_at is None else max(
                    0.0, rec.first_at + rec.batch_s - time.monotonic())
                self.arrived.wait(_POLL_S if wait is None else min(wait, _POLL_S))
                self.arrived.clear()
            finished = True
        finally:
            self.stop.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # The receiving thread stops within a poll and its drain; it must not
            # find its socket closed under it.
            thread.join(_POLL_S + _DRAIN_MAX_S + 1.0)
            self.sock.close()
            if self.pcap is not None:
                try:
                    self.pcap.close()
                except PFError:
                    if finished:
                        raise
                    # an error already on its way out says more
        if self.receive_error is not None:
            raise PFError(f"receiving pfsync failed: {self.receive_error.strerror}")
        return self.recorder

    def _expire_samples(self):
        """Every minute, drop samples older than the retention, a bounded amount at a
        time (each batch writes one sample per changed state, as a collection does)."""
        if time.monotonic() - self._expired_at < _EXPIRE_EVERY_S:
            return
        self._expired_at = time.monotonic()
        with write_transaction(self.engine) as conn:
            expire_samples(conn, int(time.time()) - self.sample_retention, max_batches=5)

    def _drain(self):
        queue, add, pcap = self.queue, self.recorder.add, self.pcap
        clock = time.monotonic()
        while queue:
            at, data = queue.popleft()
            if pcap is not None:
                pcap.write(at, data)
                if pcap.error is not None and not self._pcap_failed:
                    self._pcap_failed = True
                    self.warn(f"cannot write the capture to {pcap.path}: "
                              f"{pcap.error.strerror or pcap.error}; recording goes on "
                              f"without it")
            add(at, data, clock=clock)

    def _on_signal(self, signum, _frame):
        self.stop.set()
        self.arrived.set()

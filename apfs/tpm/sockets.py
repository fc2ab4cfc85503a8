"""The socket servers of a vTPM: threads with blocking sockets that move bytes between a
client and a protocol core of :mod:`vdev.tpm.swtpm` / :mod:`vdev.tpm.mssim`.

Owns: :class:`Servers` (the listening sockets of one mount and a thread per connection),
the connection loops, SCM_RIGHTS on swtpm's UNIX control socket.

Why threads and not trio tasks on the daemon's loop: measured with ``scripts/bench-tpm``
(GetRandom(32) round trips, everything pinned to one CPU) a blocking ``recv``/``sendall``
loop per connection costs one system call each way and no scheduler; a trio task adds the
event loop's wake-ups (the naive trio server measured 2x swtpm).  The TPM commands run in
the connection's thread (``VTpm.transmit`` is thread-safe and serves callers in arrival
order), so a slow RSA key generation holds neither the FUSE loop nor other clients' reads.

The per-request loop is C (``apfs/tpm/_pump.c``, :class:`_Pump`): a connection's commands,
and the requests that only acknowledge (swtpm's CMD_SET_LOCALITY, mssim's idle signals),
run without Python while the vTPM's :class:`~vdev.tpm.fastpath.FastPath` allows; a listener
served inline is accepted from in C too.  What C hands back — a request it does not take,
a command that must be saved first, a connection that needs Python — is served here, the
Python way, by the same handler.

Every connection ends with one log line when it ends for a reason other than the client's
own orderly close: a malformed frame, a client that stops reading its responses (sends time
out after :data:`SEND_TIMEOUT`), a refused request.  No exception leaves a connection thread:
what is not a socket error is logged with its traceback and closes that connection only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apfs.tpm import _pump
from vdev.tpm import mssim, swtpm
from vdev.tpm.fastpath import FastPath
from vdev.tpm.frontend import Malformed, Reply
from vdev.tpm.virtio import VirtioError
from vdev.tpm.vtpm import VTpm

log = logging.getLogger("apfs.tpm")

RECV_SIZE = 65536
SEND_TIMEOUT = 5.0
"""A client that has not taken a response within this many seconds is dropped."""
JOIN_TIMEOUT = 5.0
_ACCEPT_AGAIN = (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE)
"""accept() errors after which the loop accepts again (a client gone before its accept, or
no descriptor free right now); any other means close() shut the listener."""
LOOPBACK = "127.0.0.1"



class Connection:
    """One client connection as a handler sees it: the socket, the label of its log lines,
    and :meth:`wait`, which a handler that can be served inline calls before each read.

    Served inline, a connection runs in its listener's accepting thread, which saves the
    thread start and hand-over that cost more than the rest of a round trip (the swtpm
    TCTI of tpm2-tss opens a connection per command).  Then :meth:`wait` watches the
    listener too: when another client connects while this one is idle, a new thread takes
    over accepting (and serves that client the same way), so nobody waits for this
    connection to end.  A command that computes does not wait: the newcomer's connection
    is accepted by the kernel meanwhile, and its commands would wait for the TPM anyway."""

    __slots__ = ("_hand_over", "_poll", "_sock_fd", "label", "listener_fd", "sock")

    def __init__(self, sock: socket.socket, label: str, listener: socket.socket | None = None,
                 hand_over: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.label = label
        self._sock_fd = sock.fileno()
        self._hand_over = hand_over
        self._poll: select.poll | None = None
        self.listener_fd = -1
        """The listener this connection watches while idle (-1: none, or handed over)."""
        if listener is not None:
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)
            self._poll.register(listener, select.POLLIN)
            self.listener_fd = listener.fileno()

    @property
    def handed_over(self) -> bool:
        """Served inline, and another thread accepts now."""
        return self._hand_over is not None and self._poll is None

    def wait(self) -> None:
        """Return once the client sent something or hung up (the next read will not block);
        hand accepting over first if another client connects meanwhile."""
        poll = self._poll
        if poll is None:
            return
        ready = poll.poll()
        if any(fd == self._sock_fd for fd, _events in ready):
            return  # this client first, even when another one connects at the same time
        self.hand_over()

    def hand_over(self) -> None:
        """Another client is waiting: a new thread accepts from now on."""
        self._poll = None
        self.listener_fd = -1
        assert self._hand_over is not None
        self._hand_over()


Handler = Callable[[Connection], None]


class FrontEndError(Exception):
    """A server cannot start (port taken, socket path in use); the message says which."""


def _set_send_timeout(sock: socket.socket) -> None:
    seconds = int(SEND_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", seconds, int((SEND_TIMEOUT - seconds) * 1e6)))


class Servers:
    """Listening sockets and their connections; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._pumps: set[_Pump] = set()
        self._paths: list[Path] = []
        self._closed = False

    # -- listening -------------------------------------------------------------------------

    def listen_tcp_pair(self, port: int) -> tuple[socket.socket, socket.socket]:
        """Loopback listeners on ``port`` and ``port + 1``; with 0, a free pair the system
        chose."""
        for _ in range(50 if port == 0 else 1):
            first = self._tcp_listener(port, "")
            try:
                second = self._tcp_listener(first.getsockname()[1] + 1,
                                            f" (the port after {first.getsockname()[1]})")
            except FrontEndError:
                first.close()
                if port:
                    raise
                continue
            return first, second
        raise FrontEndError("no free pair of consecutive loopback ports was found")

    @staticmethod
    def _tcp_listener(port: int, what: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise FrontEndError(f"--tpm-port: cannot listen on {LOOPBACK}:{port}{what}: "
                                f"{exc.strerror}") from None
        return sock

    def listen_unix(self, path: Path) -> socket.socket:
        """A UNIX stream listener at ``path`` (removed again by :meth:`close`); a stale
        socket nobody answers on is replaced, anything else there is refused."""
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise FrontEndError(f"--tpm-socket {path}: exists and is not a socket")
            if _answers(path):
                raise FrontEndError(f"--tpm-socket {path}: another server is listening there")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise FrontEndError(f"--tpm-socket {path}: cannot listen: {exc.strerror}") from None
        self._paths.append(path)
        return sock

    def serve(self, listener: socket.socket, name: str, handler: Handler, *,
              inline: bool = False) -> None:
        """Accept connections on ``listener`` in a thread; each one runs ``handler`` in a
        thread of its own, or with ``inline`` (a handler that calls
        :meth:`Connection.wait` before each read that may wait for the client indefinitely)
        in the accepting thread while no other client needs it."""
        with self._lock:
            self._listeners.append(listener)
        self._start(self._accept_loop, (listener, name, handler, inline), f"{name} accept")

    def _start(self, target: Callable[..., None], args: tuple[object, ...], name: str) -> None:
        thread = threading.Thread(target=self._run, args=(target, args), name=name,
                                  daemon=True)
        with self._lock:
            if self._closed:
                return
            self._threads.add(thread)
        thread.start()

    def _run(self, target: Callable[..., None], args: tuple[object, ...]) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept_loop(self, listener: socket.socket, name: str, handler: Handler,
                     inline: bool) -> None:
        def hand_over() -> None:
            self._start(self._accept_loop, (listener, name, handler, inline), f"{name} accept")

        if inline and isinstance(handler, Pumped) and handler.path is not None:
            self._pumped_accept_loop(listener, name, handler, handler.path, hand_over)
            return
        while True:
            try:
                sock, peer = listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_AGAIN:
                    continue
                return  # the listener was shut down by close()
            label = f"{name} {_peer(peer)}"
            if not inline:
                self.run_connection(sock, label, handler)
            elif self._serve_here(self._register(sock), sock, label, listener, hand_over,
                                  handler):
                return

    def _pumped_accept_loop(self, listener: socket.socket, name: str, handler: Pumped,
                            path: FastPath, hand_over: Callable[[], None]) -> None:
        """Accepting in C: a connection whose commands all run there (the swtpm TCTI's
        connection per command) costs no Python at all; one that needs Python is handed over
        and served here as :meth:`_accept_loop` serves it."""
        pump = _Pump(path)
        with self._lock:
            if self._closed:
                return
            self._pumps.add(pump)
        try:
            while True:
                outcome = pump.accept(listener)
                what, fd, _request, _response, error = outcome
                if what == _pump.STOPPED:
                    return
                if fd < 0:  # accept() itself failed
                    if error in _ACCEPT_AGAIN:
                        continue
                    return  # the listener was shut down by close()
                sock = socket.socket(fileno=fd)
                try:
                    label = f"{name} {_peer(sock.getpeername())}"
                except OSError:  # the client is gone already
                    label = f"{name} (gone)"

                def serve(connection: Connection, first: Outcome = outcome) -> None:
                    handler.serve(connection, pump, first)

                # C set the connection's options already: only tracked here.
                if self._serve_here(self._track(sock), sock, label, listener, hand_over, serve):
                    return
        finally:
            with self._lock:
                self._pumps.discard(pump)

    def _serve_here(self, tracked: bool, sock: socket.socket, label: str,
                    listener: socket.socket, hand_over: Callable[[], None],
                    handler: Handler) -> bool:
        """Serve a connection in its accepting thread (``tracked``: :meth:`_track` took it);
        True when this thread stops accepting (another one accepts now, or the servers are
        closed)."""
        if not tracked:
            return True
        connection = Connection(sock, label, listener, hand_over)
        self._connection(connection, handler)
        return connection.handed_over

    def run_connection(self, sock: socket.socket, label: str, handler: Handler) -> None:
        """Serve ``sock`` with ``handler`` in a thread of its own; the socket is closed at
        its end."""
        if self._register(sock):
            self._start(self._connection, (Connection(sock, label), handler), label)

    def _register(self, sock: socket.socket) -> bool:
        """Set a new connection's options and track it (False: closed, as the servers are).
        ``apfs/tpm/_pump.c`` gives the connections it accepts the same options."""
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _set_send_timeout(sock)
        return self._track(sock)

    def _track(self, sock: socket.socket) -> bool:
        """Track a connection for :meth:`close` (False: closed already, and so is ``sock``)."""
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._connections.add(sock)
        return True

    def _connection(self, connection: Connection, handler: Handler) -> None:
        sock, label = connection.sock, connection.label
        try:
            handler(connection)
        except OSError as exc:
            if not self._closed:
                log.warning("%s: closed: %s", label, exc.strerror or exc)
        except Exception:
            log.exception("%s: closed after an internal error", label)
        finally:
            with self._lock:
                self._connections.discard(sock)
            sock.close()

    def close(self) -> None:
        """Stop accepting, end every connection, remove the socket files made here."""
        with self._lock:
            self._closed = True
            listeners, self._listeners = self._listeners, []
            connections = list(self._connections)
            threads = list(self._threads)
            pumps = list(self._pumps)
        for pump in pumps:
            pump.stop()  # its connection, if any (C holds it, Python never saw it)
        for sock in [*listeners, *connections]:
            # shutdown() wakes a thread blocked in accept()/recv() on it; close() alone
            # would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for listener in listeners:
            listener.close()
        for thread in threads:
            if thread is not threading.current_thread():
                # A thread inside a long TPM command finishes it first; it is a daemon
                # thread, so a command still running after this does not hold the exit.
                thread.join(JOIN_TIMEOUT)
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._paths.clear()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _peer(peer: object) -> str:
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return "local"


# -- connection loops ----------------------------------------------------------------------

def _send(sock: socket.socket, label: str, reply: Reply) -> bool:
    """Send a reply; False when it closes the connection (logged unless quiet)."""
    if reply.log:
        log.warning("%s: %s", label, reply.log)
    if reply.data:
        sock.sendall(reply.data)
    if reply.close:
        if not reply.quiet:
            log.warning("%s: closed: %s", label, reply.close)
        return False
    return True


_FRAMINGS = {"swtpm": _pump.SWTPM, "mssim": _pump.MSSIM, "swtpm-control": _pump.CONTROL,
             "mssim-platform": _pump.PLATFORM}


Outcome = tuple[int, int, bytes, bytes, int]
"""What ``apfs.tpm._pump.Pump.serve``/``accept`` return: what came, the connection's
descriptor, the request as read, the response, an errno."""


class _Pump:
    """Commands served in C (``apfs/tpm/_pump.c``) while the vTPM's
    :class:`~vdev.tpm.fastpath.FastPath` allows; what it hands back goes the Python way."""

    __slots__ = ("_finish", "_native")

    def __init__(self, path: FastPath) -> None:
        assert path.finish is not None
        self._native = _pump.Pump(path.process, path.locks, path.gate, path.stores,
                                  _FRAMINGS[path.framing], path.limits, SEND_TIMEOUT,
                                  path.locality, path.acks)
        self._finish = path.finish

    @classmethod
    def of(cls, path: FastPath | None) -> _Pump | None:
        return None if path is None else cls(path)

    def accept(self, listener: socket.socket) -> Outcome:
        """Accept and serve ``listener``'s connections in C until one needs Python (it is
        handed over with the outcome), accept fails, or :meth:`stop`."""
        return self._native.accept(listener.fileno())

    def stop(self) -> None:
        """End :meth:`accept` from another thread."""
        self._native.stop()

    def read(self, connection: Connection, first: Outcome | None = None) -> bytes:
        """Serve commands (after ``first``, an outcome of :meth:`accept` for this
        connection) until a read that the C loop did not run: its bytes, or b"" when the
        client closed the connection."""
        serve, fd = self._native.serve, connection.sock.fileno()
        outcome = first
        while True:
            what, _fd, request, response, error = outcome or serve(fd, connection.listener_fd)
            outcome = None
            if what == _pump.OTHER:
                return request
            if what == _pump.TAIL:
                connection.sock.sendall(self._finish(request, response))
            elif what == _pump.HANDOVER:
                connection.hand_over()
            elif what == _pump.FAILED:
                raise OSError(error, os.strerror(error))
            else:
                return b""


@dataclass(frozen=True)
class Pumped:
    """A handler whose commands run in C when they may: ``serve(connection, pump, first)``
    with the connection's pump (None: all in Python) and what :meth:`_Pump.accept` handed
    over (None for a connection Python accepted).  Served inline, its listener's
    connections are accepted in C too (:meth:`Servers._pumped_accept_loop`)."""

    path: FastPath | None
    serve: Callable[[Connection, _Pump | None, Outcome | None], None]

    def __call__(self, connection: Connection) -> None:
        self.serve(connection, _Pump.of(self.path), None)


def swtpm_data(core: swtpm.Swtpm) -> Pumped:
    """The data channel: one command per read of at least a header, raw or TCG-prefixed,
    any number per connection (:class:`vdev.tpm.swtpm.DataReader`).  While no read is
    half-way, raw commands run in C when they may (:class:`_Pump`)."""

    def serve(connection: Connection, pump: _Pump | None, first: Outcome | None) -> None:
        reader = swtpm.DataReader()
        sock, wait, feed, execute = connection.sock, connection.wait, reader.feed, core.execute
        recv, sendall = sock.recv, sock.sendall
        try:
            while True:
                if pump is not None and not reader.pending:
                    data = pump.read(connection, first)
                    first = None
                else:
                    wait()
                    data = recv(reader.room)
                if not data:
                    break
                command = feed(data)
                if command is not None:
                    sendall(execute(command))
        except VirtioError as exc:  # a command beyond the virtio device's 4096 bytes
            log.warning("%s: closed: %s", connection.label, exc)
            return
        _log_early_close(connection.label, reader.pending)

    # The path once: the same locks and cells for every connection.
    return Pumped(core.fast_path(), serve)


def swtpm_control(core: swtpm.Swtpm, servers: Servers, *, takes_fds: bool) -> Pumped:
    """The control channel; with ``takes_fds`` (UNIX sockets) CMD_SET_DATAFD's descriptor is
    taken from SCM_RIGHTS and its data channel served in a thread of its own.  Over TCP,
    CMD_SET_LOCALITY is answered in C when it may (:meth:`vdev.tpm.swtpm.Swtpm.
    control_fast_path`); the C loop reads no ancillary data, so a UNIX socket's requests are
    all Python's."""
    data_handler = swtpm_data(core)

    def serve_data_fd(connection: Connection) -> None:
        try:
            data_handler(connection)
        finally:
            core.data_fd_in_use = False

    def serve(connection: Connection, pump: _Pump | None, first: Outcome | None) -> None:
        sock, label = connection.sock, connection.label
        reader = swtpm.ControlReader()
        deadline = 0.0
        while True:
            fds: list[int] = []
            request: bytes | None = None
            started = reader.pending
            if started:
                sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                if started:
                    data = sock.recv(RECV_SIZE)
                elif pump is not None:
                    data = pump.read(connection, first)
                    first = None
                else:
                    connection.wait()  # between requests: may hand the accepting over
                    if takes_fds:
                        data, fds, _flags, _addr = socket.recv_fds(sock, RECV_SIZE, 4)
                    else:
                        data = sock.recv(RECV_SIZE)
            except TimeoutError:  # swtpm's 500 ms are up: it processes what came
                request = reader.take_partial()
            else:
                if not data:
                    _close_fds(fds)
                    _log_early_close(label, reader.pending)
                    return
                if not started:  # a request's first bytes: swtpm's 500 ms start now
                    deadline = time.monotonic() + swtpm.REQUEST_TIMEOUT
                reader.feed(data)
            if sock.gettimeout() is not None:  # (each settimeout is two system calls)
                sock.settimeout(None)
            try:
                request = request or reader.next_request()
                while request is not None:
                    reply = core.control(request, tuple(fds))
                    if reply.log:
                        log.warning("%s: %s", label, reply.log)
                    _close_fds([fd for fd in fds if fd != reply.data_fd])
                    fds = []
                    if reply.data_fd is not None:
                        data_sock = socket.socket(fileno=reply.data_fd)
                        servers.run_connection(data_sock, f"{label} data fd", serve_data_fd)
                    sock.sendall(reply.data)
                    request = reader.next_request()
            except Malformed as exc:
                log.warning("%s: closed: %s", label, exc)
                return
            finally:
                _close_fds(fds)

    return Pumped(None if takes_fds else core.control_fast_path(), serve)


def quick_ack(sock: socket.socket) -> None:
    """tpm2-tss writes mssim's 9-byte prefix and the command separately without
    TCP_NODELAY: Nagle holds the command until the prefix is acknowledged, and a delayed
    ACK costs 40 ms per command.  Acknowledge at once (``apfs/tpm/_pump.c`` does the same)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _log_early_close(label: str, pending: bool) -> None:
    """A client that hangs up in the middle of a request: one line (a clean close between
    requests is how clients end a connection, and is not logged)."""
    if pending:
        log.warning("%s: closed: the client hung up in the middle of a request", label)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def mssim_port(port_type: type[mssim.CommandPort] | type[mssim.PlatformPort], tpm: VTpm,
               sizes: mssim.CommandSizes) -> Pumped:
    """The mssim command or platform port (SEND_COMMAND, and the signals that change
    nothing, are answered in C when they may)."""

    def serve(connection: Connection, pump: _Pump | None, first: Outcome | None) -> None:
        sock, label = connection.sock, connection.label
        port = port_type(tpm, sizes)
        while True:
            try:
                if pump is not None and not port.pending:
                    data = pump.read(connection, first)
                    first = None
                else:
                    connection.wait()
                    data = sock.recv(RECV_SIZE)
                if not data:
                    break
                replies = port.receive(data)
            except VirtioError as exc:
                log.warning("%s: closed: %s", label, exc)
                return
            for reply in replies:
                if not _send(sock, label, reply):
                    return
            if port.pending:
                quick_ack(sock)
        _log_early_close(label, port.pending)

    path = (mssim.fast_path(tpm, sizes) if port_type is mssim.CommandPort
            else mssim.platform_fast_path(tpm))
    return Pumped(path, serve)

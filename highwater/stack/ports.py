"""Port checks for the local stack: is a port free to bind, is something answering on it.

Example:
    >>> port = free_port()
    >>> port_in_use(port)
    False
"""

from __future__ import annotations

import errno
import socket

LOCALHOST = "127.0.0.1"


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """Whether a server could not bind ``host:port`` now (another socket listens there).

    ``SO_REUSEADDR`` is set as the servers themselves set it, so connections lingering in TIME_WAIT
    from a previous run do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def port_open(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = LOCALHOST) -> int:
    """A port the kernel says is free right now (another process may still take it before you do)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct free ports (all held open while picking, so none is returned twice).

    Example:
        >>> len(set(free_ports(3)))
        3
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()

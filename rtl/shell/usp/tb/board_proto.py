"""Wire protocol of the simulated board (version 1): constants and framing
shared by the server (board_server.py, inside the simulator) and the Python
client (board_selftest.py). The Rust side (host/hw) implements the same
contract, written down in bitstream-docs/usp-shell.md ("Simulated board
protocol").

UNIX SOCK_STREAM, little-endian. Request: u32 op, u32 tag, u32 len, payload;
file descriptors ride on the request header (SCM_RIGHTS). Reply: u32 status,
u32 tag (echoed), u32 len, payload."""

import os
import socket
import struct

VERSION = 1

HDR = struct.Struct("<III")
MAX_PAYLOAD = 16 << 20          # a longer request is refused (status BAD_REQUEST) and the link closed
MAX_FDS = 64                    # file descriptors accepted with one request

# Operations.
HELLO = 1
CFG_READ = 2
CFG_WRITE = 3
MEM_READ = 4
MEM_WRITE = 5
DMA_MAP = 6
DMA_UNMAP = 7
MSIX_ENABLE = 8
MSIX_DISABLE = 9
RESET = 10
ADVANCE = 11
STATS = 12
BYE = 13

OP_NAMES = {HELLO: "HELLO", CFG_READ: "CFG_READ", CFG_WRITE: "CFG_WRITE", MEM_READ: "MEM_READ",
            MEM_WRITE: "MEM_WRITE", DMA_MAP: "DMA_MAP", DMA_UNMAP: "DMA_UNMAP", MSIX_ENABLE: "MSIX_ENABLE",
            MSIX_DISABLE: "MSIX_DISABLE", RESET: "RESET", ADVANCE: "ADVANCE", STATS: "STATS", BYE: "BYE"}

# Reply status.
OK = 0
UR = 1                  # Unsupported Request / Completer Abort completion
NO_COMPLETION = 2       # completion timeout or link down: nothing answered
BAD_REQUEST = 3         # payload: UTF-8 text
INTERNAL = 4            # payload: UTF-8 text

STATUS_NAMES = {OK: "OK", UR: "UR", NO_COMPLETION: "NO_COMPLETION", BAD_REQUEST: "BAD_REQUEST",
                INTERNAL: "INTERNAL"}

# RESET kinds.
RESET_FLR = 0
RESET_HOT = 1
RESET_LINK_DOWN = 2
RESET_LINK_UP = 3

# DMA_MAP permission bits.
PERM_READ = 1           # the device may read
PERM_WRITE = 2          # the device may write

# ADVANCE: bit 63 of the cycle count = stop as soon as the core is idle.
ADVANCE_UNTIL_IDLE = 1 << 63

MEM_MAX = 1 << 20       # MEM_READ / MEM_WRITE length limit

# Payload layouts.
HELLO_REQ = struct.Struct("<I")
HELLO_REP = struct.Struct("<IQQHHHHIIIII")
CFG_READ_REQ = struct.Struct("<II")
CFG_WRITE_REQ = struct.Struct("<III")
U32 = struct.Struct("<I")
MEM_REQ = struct.Struct("<B3xIQ")           # bar, pad, len, offset (MEM_WRITE: + len bytes)
DMA_MAP_REQ = struct.Struct("<QQQI")        # iova, len, fd_offset, perm
DMA_UNMAP_REQ = struct.Struct("<QQ")        # iova, len
RESET_REQ = struct.Struct("<I")
ADVANCE_REQ = struct.Struct("<Q")
ADVANCE_REP = struct.Struct("<QI")          # cycles_run, idle
STATS_REP = struct.Struct("<QQQQ")          # sim_cycles_total, tlps_rx, tlps_tx, msix_sent


def recv_exact(sock, n):
    """Reads exactly n bytes; None on EOF before the first byte, ConnectionError on EOF later."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if not buf:
                return None
            raise ConnectionError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_header_fds(sock):
    """Reads one 12-byte header and the descriptors attached to it.
    Returns (header bytes, [fds]) or (None, []) on EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, HDR.size, MAX_FDS)
    if not data:
        for fd in fds:
            _close(fd)
        return None, []
    if len(data) < HDR.size:
        rest = recv_exact(sock, HDR.size - len(data))
        if rest is None:
            for fd in fds:
                _close(fd)
            return None, []
        data += rest
    return data, list(fds)


def send_frame(sock, a, tag, payload=b"", fds=()):
    """Sends header (a = op or status, tag, len) and payload; fds on the header."""
    hdr = HDR.pack(a, tag, len(payload))
    # MSG_NOSIGNAL: a peer that went away is an EPIPE error, not a SIGPIPE.
    if fds:
        socket.send_fds(sock, [hdr], list(fds), socket.MSG_NOSIGNAL)
        if payload:
            sock.sendall(payload, socket.MSG_NOSIGNAL)
    else:
        sock.sendall(hdr + bytes(payload), socket.MSG_NOSIGNAL)


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass

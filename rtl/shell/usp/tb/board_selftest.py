"""Self-test of the simulated board, through its socket only (run by
`board.py --self-test`): listens on a temporary socket, starts board.py as
the server, and drives the shell the way the Rust board backend will:
identity and config space, MMIO, one descriptor through the ring in a
shared memfd with its MSI-X on an eventfd, a DMA fault, BAR2 bulk, FLR, link
down/up, hot reset, malformed requests. Prints one line per check and a few
speed figures (wall-clock figures vary with the machine's load)."""

import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import mmap

import board_proto as bp
import regmap as rm

NV = rm.const("NUM_VECTORS")
PAGE = rm.const("PAGE_SIZE")
CLK_NS = 4
IOVA = 0x1000_0000              # the memfd's place in IOVA space
IOVA_UNMAPPED = 0x2000_0000     # nothing there
IOVA_RO = 0x3000_0000           # one page mapped read-only, then write-only
MEM_BYTES = 256 * 1024
SQ_OFF, CQ_OFF, SRC_OFF, DST_OFF = 0x0000, 0x1000, 0x10000, 0x20000


class CheckFailed(Exception):
    pass


class Client:
    def __init__(self, sock):
        self.s = sock
        self.tag = 0

    def req(self, op, payload=b"", fds=()):
        self.tag = (self.tag + 1) & 0xFFFFFFFF
        bp.send_frame(self.s, op, self.tag, payload, fds)
        hdr = bp.recv_exact(self.s, bp.HDR.size)
        if hdr is None:
            raise CheckFailed("server closed the connection (op %s)" % bp.OP_NAMES.get(op, op))
        st, tag, n = bp.HDR.unpack(hdr)
        if tag != self.tag:
            raise CheckFailed("reply tag %d, request tag %d" % (tag, self.tag))
        pl = bp.recv_exact(self.s, n) if n else b""
        return st, pl

    def ok(self, op, payload=b"", fds=()):
        st, pl = self.req(op, payload, fds)
        if st != bp.OK:
            raise CheckFailed("%s: status %s: %s" % (bp.OP_NAMES.get(op, op), bp.STATUS_NAMES.get(st, st),
                                                     pl.decode(errors="replace")))
        return pl

    def cfg_read(self, off, width):
        return bp.U32.unpack(self.ok(bp.CFG_READ, bp.CFG_READ_REQ.pack(off, width)))[0]

    def cfg_write(self, off, width, val):
        self.ok(bp.CFG_WRITE, bp.CFG_WRITE_REQ.pack(off, width, val))

    def mem_read(self, bar, off, n):
        return self.ok(bp.MEM_READ, bp.MEM_REQ.pack(bar, n, off))

    def mem_write(self, bar, off, data):
        self.ok(bp.MEM_WRITE, bp.MEM_REQ.pack(bar, len(data), off) + data)

    def rd(self, reg):
        return struct.unpack("<I", self.mem_read(0, rm.reg(reg), 4))[0]

    def wr(self, reg, val):
        self.mem_write(0, rm.reg(reg), struct.pack("<I", val & 0xFFFFFFFF))

    def advance(self, cycles, until_idle=True):
        rep = self.ok(bp.ADVANCE, bp.ADVANCE_REQ.pack(cycles | (bp.ADVANCE_UNTIL_IDLE if until_idle else 0)))
        return bp.ADVANCE_REP.unpack(rep)

    def stats(self):
        return bp.STATS_REP.unpack(self.ok(bp.STATS))


desc = rm.descriptor


class Ring:
    """Submission and completion rings in the shared memfd."""

    def __init__(self, c, mem, size=16):
        self.c, self.mem, self.size = c, mem, size
        self.tail = self.head = 0
        self.phase = 1
        c.wr("CTRL", 0)
        for reg, v in (("SQ_BASE_LO", IOVA + SQ_OFF), ("SQ_BASE_HI", (IOVA + SQ_OFF) >> 32),
                       ("CQ_BASE_LO", IOVA + CQ_OFF), ("CQ_BASE_HI", (IOVA + CQ_OFF) >> 32),
                       ("SQ_SIZE", size), ("CQ_SIZE", size)):
            c.wr(reg, v & 0xFFFFFFFF)
        c.wr("CTRL", rm.bit("CTRL", "ENABLE"))

    def put(self, d):
        o = SQ_OFF + self.tail * rm.const("DESC_BYTES")
        self.mem[o:o + len(d)] = d
        self.tail = (self.tail + 1) % self.size

    def doorbell(self):
        self.c.wr("SQ_TAIL", self.tail)

    def take(self):
        """The next completion entry (tag, status, result, bytes) or None."""
        o = CQ_OFF + self.head * rm.const("CPL_BYTES")
        w = struct.unpack("<4I", self.mem[o:o + rm.const("CPL_BYTES")])
        info = w[rm.V["CPL_INFO_WORD"]]
        if (info >> rm.V["CPL_INFO_PHASE_LSB"]) & 1 != self.phase:
            return None
        self.head = (self.head + 1) % self.size
        if self.head == 0:
            self.phase ^= 1
        self.c.wr("CQ_HEAD", self.head)
        st = (info >> rm.V["CPL_INFO_STATUS_LSB"]) & ((1 << rm.V["CPL_INFO_STATUS_WIDTH"]) - 1)
        return w[rm.V["CPL_TAG_WORD"]], st, w[rm.V["CPL_RESULT_WORD"]], w[rm.V["CPL_BYTES_WORD"]]


def eventfd_count(fd):
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


def run(c, devmem_pages, dmalog_pages):
    n = [0]
    t_start = time.monotonic()

    def check(cond, what):
        if not cond:
            raise CheckFailed(what)
        n[0] += 1
        print("ok %2d  %s" % (n[0], what), flush=True)

    # HELLO
    h = bp.HELLO_REP.unpack(c.ok(bp.HELLO, bp.HELLO_REQ.pack(bp.VERSION)))
    ver, bar0, bar2, vid, did, svid, sid, dpages, lpages, khz, mrrs, mps = h
    check(ver == 1 and (vid, did) == (rm.const("PCI_VENDOR_ID"), rm.const("PCI_DEVICE_ID"))
          and (svid, sid) == (vid, did),
          "HELLO: version 1, IDs %04x:%04x subsystem %04x:%04x" % (vid, did, svid, sid))
    check(bar0 == rm.const("BAR0_SIZE") and bar2 == devmem_pages * PAGE and dpages == devmem_pages
          and lpages == dmalog_pages,
          "HELLO: BAR0 %#x bytes, BAR2 %#x bytes (%d pages), DMA log %d pages, %d kHz, MRRS %d, MPS %d"
          % (bar0, bar2, dpages, lpages, khz, mrrs, mps))

    # Config space.
    cmd = c.cfg_read(0x04, 2)
    check(cmd & 2 and not cmd & 4, "CFG_READ command %#06x: memory decoding on, bus mastering off" % cmd)
    ptr = c.cfg_read(0x34, 1) & 0xFC
    cap = None
    seen = []
    while ptr and len(seen) < 48:
        cid = c.cfg_read(ptr, 1)
        seen.append("%02x@%02x" % (cid, ptr))
        if cid == 0x11:
            cap = ptr
        ptr = c.cfg_read(ptr + 1, 1) & 0xFC
    check(cap is not None, "capability list %s has MSI-X" % " ".join(seen))
    ctrl = c.cfg_read(cap + 2, 2)
    tbl, pba = c.cfg_read(cap + 4, 4), c.cfg_read(cap + 8, 4)
    check((ctrl & 0x7FF) + 1 == NV and tbl == rm.const("MSIX_TABLE_OFFSET") | 0 and pba == rm.const("MSIX_PBA_OFFSET") | 0,
          "MSI-X: %d vectors, table BIR 0 + %#x, PBA BIR 0 + %#x" % ((ctrl & 0x7FF) + 1, tbl & ~7, pba & ~7))
    c.cfg_write(0x04, 2, cmd | 4)
    check(c.cfg_read(0x04, 2) & 4, "CFG_WRITE: bus mastering on")

    # MMIO.
    check(c.rd("ID") == rm.const("DEVICE_MAGIC"), "BAR0 ID reads DEVICE_MAGIC %#x" % rm.const("DEVICE_MAGIC"))
    for v in (0xDEADBEEF, 0x01234567):
        c.wr("SCRATCH", v)
        got = c.rd("SCRATCH")
        check(got == v, "SCRATCH write/read %#010x" % v)

    # DMA: a memfd in IOVA space, two eventfds for MSI-X.
    mfd = os.memfd_create("simboard-selftest")
    os.ftruncate(mfd, MEM_BYTES)
    mem = mmap.mmap(mfd, MEM_BYTES, flags=mmap.MAP_SHARED)
    c.ok(bp.DMA_MAP, bp.DMA_MAP_REQ.pack(IOVA, MEM_BYTES, 0, bp.PERM_READ | bp.PERM_WRITE), [mfd])
    st, msg = c.req(bp.DMA_MAP, bp.DMA_MAP_REQ.pack(IOVA + 0x1000, 0x1000, 0, 3), [mfd])
    check(st == bp.BAD_REQUEST, "DMA_MAP overlapping a mapping: BAD_REQUEST (%s)" % msg.decode())
    st, msg = c.req(bp.DMA_MAP, bp.DMA_MAP_REQ.pack(0xFEE0_0000, 0x1000, 0, 3), [mfd])
    check(st == bp.BAD_REQUEST, "DMA_MAP over the MSI window: BAD_REQUEST (%s)" % msg.decode())
    efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(NV)]
    c.ok(bp.MSIX_ENABLE, bp.U32.pack(NV), efds)
    ring = Ring(c, mem)
    c.wr("IRQ_MASK", 0)
    rnd = random.Random(1)
    src = rnd.randbytes(3000)
    mem[SRC_OFF:SRC_OFF + len(src)] = src
    mem[DST_OFF:DST_OFF + 4096] = bytes(4096)
    ring.put(desc(rm.opcode("COPY_H2H"), IOVA + SRC_OFF + 3, IOVA + DST_OFF + 5, 2900, tag=0x51, irq=True))
    ring.doorbell()
    ran, idle = c.advance(1_000_000)
    e = ring.take()
    check(e == (0x51, rm.status("OK"), 0, 2900) and idle,
          "COPY_H2H of 2900 bytes through the ring: completion %s after %d cycles, idle" % (e, ran))
    check(mem[DST_OFF + 5:DST_OFF + 5 + 2900] == src[3:2903] and mem[DST_OFF + 4] == 0
          and mem[DST_OFF + 5 + 2900] == 0, "the copy is in the memfd, seen by the client")
    irq = [eventfd_count(fd) for fd in efds]
    check(irq[rm.const("VECTOR_CPL")] == 1 and irq[rm.const("VECTOR_ERR")] == 0,
          "MSI-X completion vector on its eventfd: %s" % irq)
    c.wr("IRQ_STATUS", rm.bit("IRQ_STATUS", "CPL"))

    # A read of an unmapped IOVA: DMA fault.
    ring.put(desc(rm.opcode("CRC32C"), IOVA_UNMAPPED + 0x40, 0, 64, tag=0x52))
    ring.doorbell()
    c.advance(1_000_000)
    e = ring.take()
    code = c.rd("ERR_CODE")
    addr = c.rd("ERR_ADDR_LO") | (c.rd("ERR_ADDR_HI") << 32)
    check(e is not None and e[:2] == (0x52, rm.status("DMA_READ_FAULT"))
          and code == rm.status("DMA_READ_FAULT") and addr == IOVA_UNMAPPED + 0x40,
          "CRC32C of an unmapped IOVA: DMA_READ_FAULT at %#x" % addr)
    irq = [eventfd_count(fd) for fd in efds]
    check(irq[rm.const("VECTOR_ERR")] == 1, "MSI-X error vector on its eventfd: %s" % irq)
    c.wr("IRQ_STATUS", rm.bit("IRQ_STATUS", "ERR"))

    # Permissions: a read-only mapping takes no write, a write-only one gives no read.
    ro = os.memfd_create("simboard-ro")
    os.ftruncate(ro, PAGE)
    os.pwrite(ro, b"\xAA" * 64, 0)
    c.ok(bp.DMA_MAP, bp.DMA_MAP_REQ.pack(IOVA_RO, PAGE, 0, bp.PERM_READ), [ro])
    ring.put(desc(rm.opcode("FILL_HOST"), 0, IOVA_RO, 64, 0x11111111, tag=0x53))
    ring.doorbell()
    c.advance(1_000_000)
    e = ring.take()
    check(e is not None and e[1] == rm.status("OK") and os.pread(ro, 64, 0) == b"\xAA" * 64,
          "FILL_HOST into a read-only mapping: dropped (completion %s; the confirming read succeeds, "
          "datasheet 11.2 limit)" % (e,))
    c.ok(bp.DMA_UNMAP, bp.DMA_UNMAP_REQ.pack(IOVA_RO, PAGE))
    c.ok(bp.DMA_MAP, bp.DMA_MAP_REQ.pack(IOVA_RO, PAGE, 0, bp.PERM_WRITE), [ro])
    ring.put(desc(rm.opcode("CRC32C"), IOVA_RO, 0, 64, tag=0x54))
    ring.doorbell()
    c.advance(1_000_000)
    e = ring.take()
    check(e is not None and e[:2] == (0x54, rm.status("DMA_READ_FAULT")),
          "CRC32C of a write-only mapping: DMA_READ_FAULT")
    c.ok(bp.DMA_UNMAP, bp.DMA_UNMAP_REQ.pack(IOVA_RO, PAGE))
    os.close(ro)
    eventfd_count(efds[rm.const("VECTOR_ERR")])
    c.wr("IRQ_STATUS", rm.bit("IRQ_STATUS", "ERR"))

    # Busy DMA workload: simulated cycles per wall second.
    c.wr("CTRL", rm.bit("CTRL", "SOFT_RESET"))
    ring = Ring(c, mem)
    for k in range(8):
        ring.put(desc(rm.opcode("COPY_H2H"), IOVA + SRC_OFF, IOVA + DST_OFF + 256 * k, 2048, tag=0x60 + k))
    ring.doorbell()
    t0 = time.monotonic()
    ran, idle = c.advance(5_000_000)
    dt = time.monotonic() - t0
    done = [ring.take() for _ in range(8)]
    check(all(d is not None and d[1] == rm.status("OK") for d in done) and idle,
          "8 x COPY_H2H of 2 KiB: all OK, idle after %d cycles" % ran)
    speed_adv = ran / dt

    # BAR0 4-byte read round trips.
    t0 = time.monotonic()
    reads = 200
    for _ in range(reads):
        c.rd("ID")
    speed_rd = reads / (time.monotonic() - t0)

    # BAR2 bulk, 64 KiB.
    bulk = rnd.randbytes(64 * 1024)
    c.mem_write(2, 0, bulk)
    c.mem_read(2, 0, 4)                 # waits for the posted writes
    cyc0 = c.stats()[0]
    t0 = time.monotonic()
    got = c.mem_read(2, 0, len(bulk))
    dt = time.monotonic() - t0
    cyc = c.stats()[0] - cyc0
    check(got == bulk, "BAR2 64 KiB MEM_WRITE / MEM_READ round trip")
    speed_bulk = (len(bulk) / dt / 1e3, dt, len(bulk) / (cyc * CLK_NS * 1e-9) / 1e6, cyc)

    # FLR.
    c.wr("SCRATCH", 0x5A5A5A5A)
    c.ok(bp.RESET, bp.RESET_REQ.pack(bp.RESET_FLR))
    cmd = c.cfg_read(0x04, 2)
    check(c.rd("ID") == rm.const("DEVICE_MAGIC") and c.rd("SCRATCH") == 0 and cmd & 2 and not cmd & 4,
          "FLR: ID reads, SCRATCH back to 0, memory decoding on, bus mastering off (command %#06x)" % cmd)
    # MSI-X set restored by the reset: a NOP's interrupt still reaches the eventfd.
    c.cfg_write(0x04, 2, cmd | 4)
    for fd in efds:
        eventfd_count(fd)
    ring = Ring(c, mem)
    c.wr("IRQ_MASK", 0)
    ring.put(desc(rm.opcode("NOP"), tag=0x70, irq=True))
    ring.doorbell()
    c.advance(1_000_000)
    e = ring.take()
    irq = [eventfd_count(fd) for fd in efds]
    check(e is not None and e[:2] == (0x70, rm.status("OK")) and irq[rm.const("VECTOR_CPL")] == 1,
          "after FLR (bus mastering on again): NOP completes, MSI-X restored: %s" % irq)

    # Unmap, twice.
    c.ok(bp.DMA_UNMAP, bp.DMA_UNMAP_REQ.pack(IOVA, MEM_BYTES))
    st, msg = c.req(bp.DMA_UNMAP, bp.DMA_UNMAP_REQ.pack(IOVA, MEM_BYTES))
    check(st == bp.BAD_REQUEST, "DMA_UNMAP of a mapping no longer there: BAD_REQUEST")

    # Link down, up, hot reset.
    c.ok(bp.RESET, bp.RESET_REQ.pack(bp.RESET_LINK_DOWN))
    st, msg = c.req(bp.MEM_READ, bp.MEM_REQ.pack(0, 4, rm.reg("ID")))
    check(st == bp.NO_COMPLETION, "link down: MEM_READ gets NO_COMPLETION (%s)" % msg.decode())
    c.ok(bp.RESET, bp.RESET_REQ.pack(bp.RESET_LINK_UP))
    c.ok(bp.RESET, bp.RESET_REQ.pack(bp.RESET_HOT))
    c.wr("SCRATCH", 0x77)
    check(c.rd("ID") == rm.const("DEVICE_MAGIC") and c.rd("SCRATCH") == 0x77,
          "link up + hot reset: MMIO works again")

    # Malformed requests; the server goes on.
    bad = [
        (99, b""),                                              # unknown op
        (bp.MEM_READ, b"\x00" * 5),                             # wrong length
        (bp.MEM_READ, bp.MEM_REQ.pack(1, 4, 0)),                # no BAR1
        (bp.MEM_READ, bp.MEM_REQ.pack(0, 4, rm.const("BAR0_SIZE"))),   # beyond BAR0
        (bp.CFG_READ, bp.CFG_READ_REQ.pack(2, 4)),              # misaligned
        (bp.DMA_MAP, bp.DMA_MAP_REQ.pack(IOVA, 4096, 0, 3)),    # no fd
        (bp.HELLO, bp.HELLO_REQ.pack(7)),                       # other version
    ]
    for op, pl in bad:
        st, msg = c.req(op, pl)
        check(st == bp.BAD_REQUEST, "malformed %s: BAD_REQUEST (%s)" % (bp.OP_NAMES.get(op, op), msg.decode()))
    check(c.rd("ID") == rm.const("DEVICE_MAGIC"), "the server goes on after malformed requests")

    cycles, rx, tx, msix = c.stats()
    c.ok(bp.BYE)
    c.s.close()
    for fd in efds:
        os.close(fd)
    mem.close()
    os.close(mfd)
    print("simboard: STATS %d simulated cycles, %d TLPs received and %d sent by the root complex, %d MSI-X"
          % (cycles, rx, tx, msix))
    print("simboard: ADVANCE on a busy DMA workload: %.0f simulated cycles per wall second" % speed_adv)
    print("simboard: BAR0 4-byte MEM_READ: %.0f round trips per second" % speed_rd)
    print("simboard: BAR2 64 KiB MEM_READ: %.1f kB/s wall (%.1f s), %.0f MB/s simulated at 250 MHz (%d cycles)"
          % speed_bulk)
    print("simboard self-test: %d checks passed in %.1f s" % (n[0], time.monotonic() - t_start))


def main(a, board_py):
    """Starts the server (board.py) on a temporary socket and runs the checks."""
    with tempfile.TemporaryDirectory(prefix="simboard-") as tmp:
        path = os.path.join(tmp, "board.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(1)
        ls.settimeout(1.0)
        cmd = [sys.executable, str(board_py), "--socket", path, "--devmem-pages", str(a.devmem_pages),
               "--dmalog-pages", str(a.dmalog_pages), "--write-confirm", str(a.write_confirm),
               "--build-dir", a.build_dir] + (["--wave"] if a.wave else [])
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd)
        sock = None
        try:
            while sock is None:
                try:
                    sock, _ = ls.accept()
                except socket.timeout:
                    if proc.poll() is not None:
                        print("simboard self-test: the server exited with %d before connecting" % proc.returncode,
                              file=sys.stderr)
                        return 1
                    if time.monotonic() - t0 > 900:
                        print("simboard self-test: no connection within 900 s", file=sys.stderr)
                        return 1
            sock.settimeout(None)
            print("simboard: server connected %.1f s after launch" % (time.monotonic() - t0), flush=True)
            run(Client(sock), a.devmem_pages, a.dmalog_pages)
        except (CheckFailed, OSError) as e:
            print("simboard self-test: FAILED: %s" % e, file=sys.stderr)
            if sock is not None:
                sock.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 1
        finally:
            ls.close()
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print("simboard self-test: the server did not end after BYE", file=sys.stderr)
            return 1
        if rc != 0:
            print("simboard self-test: the server exited with %d after BYE" % rc, file=sys.stderr)
            return 1
        print("simboard: server ended cleanly after BYE")
        return 0

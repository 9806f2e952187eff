"""The simulated board: the UltraScale+ shell + core on Icarus, behind
cocotbext-pcie's root complex, served to another process over a UNIX socket
(protocol in board_proto.py and bitstream-docs/usp-shell.md).

Started by board.py (one cocotb test, `board`). It connects to the socket in
VFPGA_SIMBOARD_SOCKET (the client listens), then serves one request at a
time until BYE or EOF. Simulated time is stepped: it stands still while the
server waits for a request (the blocking recv holds the simulator) and runs
only while a request is served (TLP round trips, resets) and on ADVANCE."""

import errno
import json
import logging
import mmap
import os
import socket
import struct
import time
import traceback

import cocotb
from cocotb.handle import Force, Release
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from cocotbext.axi.address_space import Region
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.caps import PciCapId
from cocotbext.pcie.core.tlp import CplStatus, Tlp, TlpType
from cocotbext.pcie.core.utils import PcieId

import board_proto as bp
import regmap as rm
from usp_model import usp_device

P = json.loads(os.environ["SIMBOARD_PARAMS"])       # what the shell was built with
NV = rm.const("NUM_VECTORS")
PAGE = rm.const("PAGE_SIZE")
CLK_NS = 4                                          # user_clk 250 MHz
USER_CLK_KHZ = 250_000
MPS = 256                                           # root complex max payload size (bytes)
MRRS = 512                                          # root complex max read request size (bytes)
TLP_TIMEOUT_NS = 50_000_000                         # completion timeout of the root complex (50 ms, as a host)
CONNECT_S = 10.0
LOST_TLP_CYCLES = 5_000                             # see op_advance
RC_BAR32_BASE = 0xFE00_0000                         # 32-bit BAR window of the root complex
RC_MSI_BASE = 0xFEE0_0000                           # its MSI window (16 bytes used)
# IOVA ranges DMA_MAP refuses: the root complex's own windows.
RESERVED = ((RC_BAR32_BASE, 0xFF00_0000), (1 << 63, 1 << 64))

MEM_REQ_TYPES = (TlpType.MEM_READ, TlpType.MEM_READ_64, TlpType.MEM_WRITE, TlpType.MEM_WRITE_64)
CPL_TYPES = (TlpType.CPL, TlpType.CPL_DATA, TlpType.CPL_LOCKED, TlpType.CPL_LOCKED_DATA)


class BadRequest(Exception):
    """Answered with status BAD_REQUEST and the message."""


class Unanswered(Exception):
    """Answered with status NO_COMPLETION."""


class Refused(Exception):
    """Answered with status UR."""


class DmaRegion(Region):
    """A region of the root complex's memory space backed by a shared mmap of
    the client's file: the device's reads and writes hit the client's memory."""

    def __init__(self, mm, size, perm, fd, iova):
        super().__init__(size)
        self.mm, self.perm, self.fd, self.iova = mm, perm, fd, iova

    async def _read(self, address, length, **kwargs):
        return self.mm[address:address + length]

    async def _write(self, address, data, **kwargs):
        self.mm[address:address + len(data)] = bytes(data)

    def close(self):
        self.mm.close()
        bp._close(self.fd)


class Board:
    def __init__(self, dut):
        self.dut = dut
        self.log = logging.getLogger("cocotb.simboard")
        self.log.setLevel(logging.INFO)

        rc = self.rc = RootComplex()
        rc.max_payload_size = {128: 0, 256: 1, 512: 2}[MPS]
        rc.max_read_request_size = {128: 0, 256: 1, 512: 2}[MRRS]
        rc.split_on_all_rcb = True          # completions split at every 64-byte RCB, as the suite does
        self.devmem_bytes = P["DEVMEM_PAGES"] * PAGE

        self.dev = usp_device(dut, MPS, P, self.devmem_bytes)
        self.dev.log.setLevel(logging.WARNING)
        rc.log.setLevel(logging.WARNING)
        for n in ("s_axis_cq", "m_axis_cc", "m_axis_rq", "s_axis_rc"):
            logging.getLogger("cocotb.vfpga_usp_shell." + n).setLevel(logging.WARNING)
        rc.make_port().connect(self.dev)
        dut.cfg_flr_in_process.value = 0
        dut.cfg_hot_reset_out.value = 0

        # The IOVA space belongs to the client. The root complex's own
        # allocation pool (0 - 2 GiB) goes, so that an address no DMA_MAP
        # claims gets UR; its 32-bit BAR window (1 GiB at 0xc0000000) and MSI
        # window (0x80000000) move to where an x86 host keeps them, just
        # below 4 GiB: BARs from 0xfe000000, MSI at 0xfee00000.
        sp = rc.mem_address_space
        sp.regions = [r for r in sp.regions
                      if r[3] is not rc.mem_pool and r[3] is not rc.msi_region
                      and not (r[3] is rc.mem_region and r[0] < 1 << 32)]
        rc.mem_base = RC_BAR32_BASE
        sp.register_region(rc.mem_region, RC_BAR32_BASE, RC_MSI_BASE - RC_BAR32_BASE, offset=None)
        sp.register_region(rc.msi_region, RC_MSI_BASE)

        # Counters. down_*: memory requests of the root complex to the BARs
        # (sent / taken by the shell on CQ); up_*: requests of the shell on RQ
        # (sent / handled by the root complex). Unequal = TLPs in flight.
        self.down_sent = self.down_recv = self.up_sent = self.up_recv = 0
        self.tlps_rx = self.tlps_tx = self.msix_sent = 0
        self.handler_errors = 0
        orig_send, orig_handle = rc.send, rc.handle_tlp

        async def send(tlp):
            self.tlps_tx += 1
            if tlp.fmt_type in MEM_REQ_TYPES:
                self.down_sent += 1
            await orig_send(tlp)

        async def handle_tlp(tlp):
            self.tlps_rx += 1
            try:
                await orig_handle(tlp)
            except Exception:  # noqa: BLE001 - a bad TLP must not end the simulation
                self.handler_errors += 1
                self.log.warning("root complex: error handling %r:\n%s", tlp, traceback.format_exc())
            if tlp.fmt_type not in CPL_TYPES:
                self.up_recv += 1
        rc.send = send
        rc.handle_tlp = handle_tlp

        # DMA mappings (iova -> DmaRegion) and the permission checks on top
        # of the root complex's memory handlers.
        self.maps = {}
        for t in (TlpType.MEM_READ, TlpType.MEM_READ_64):
            rc.register_rx_tlp_handler(t, self._read_gate(rc.rx_tlp_handler[t]))
        for t in (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64):
            rc.register_rx_tlp_handler(t, self._write_gate(rc.rx_tlp_handler[t]))

        # MSI-X: a fixed set of vectors in the root complex's MSI window; a
        # message for vector i writes 1 to eventfd i.
        self.vectors = rc.msi_alloc_vectors(NV)
        self.vec_of_data = {v.data: i for i, v in enumerate(self.vectors)}
        self.msix_fds = []
        self.msix_on = False

        async def msi_write(addr, data, **kwargs):
            self.msix_sent += 1
            if addr != 0 or len(data) != 4:
                self.log.warning("MSI window: write of %d bytes at +%d ignored", len(data), addr)
                return
            i = self.vec_of_data.get(struct.unpack("<I", bytes(data))[0])
            if i is not None and i < len(self.msix_fds):
                try:
                    os.write(self.msix_fds[i], (1).to_bytes(8, "little"))
                except OSError as e:
                    self.log.warning("MSI-X vector %d: eventfd write failed: %s", i, e)
        rc.msi_region.write = msi_write

        self.link_up = True
        self.saved_cfg = None

    # ------------------------------------------------------------------ bring-up
    async def start(self):
        d = self.dut
        await FallingEdge(d.user_reset)
        await Timer(100, "ns")
        cocotb.start_soon(self._monitor())
        await self.rc.enumerate()
        self.pdev = self.rc.find_device(self.dev.functions[0].pcie_id)
        await self.pdev.enable_device()             # memory decoding; bus mastering stays off
        self.dev.functions[0].pcie_cap.max_read_request_size = {128: 0, 256: 1, 512: 2}[MRRS]
        self.bar = {0: self.pdev.bar_window[0], 2: self.pdev.bar_window[2]}
        self.bar_len = {0: self.pdev.bar_size[0], 2: self.pdev.bar_size[2]}
        await self._wait_core_ready()
        self.log.info("simboard: up, BAR0 %#x bytes at %#x, BAR2 %#x bytes at %#x",
                      self.bar_len[0], self.pdev.bar_addr[0], self.bar_len[2], self.pdev.bar_addr[2])

    async def _monitor(self):
        d = self.dut
        clk = d.user_clk
        cqv, cqr, cql = d.s_axis_cq_tvalid, d.s_axis_cq_tready, d.s_axis_cq_tlast
        rqv, rqr, rql = d.m_axis_rq_tvalid, d.m_axis_rq_tready, d.m_axis_rq_tlast
        while True:
            await RisingEdge(clk)
            if cqv.value and cqr.value and cql.value:
                self.down_recv += 1
            if rqv.value and rqr.value and rql.value:
                self.up_sent += 1

    async def _wait_core_ready(self):
        # The core takes no MMIO until its bitmaps are clear: this read waits.
        v = await self.bar[0].read_dword(rm.reg("ID"), timeout=TLP_TIMEOUT_NS, timeout_unit="ns")
        if v != rm.const("DEVICE_MAGIC"):
            raise RuntimeError("ID register reads %#x after reset" % v)

    async def _cycles(self, n):
        for _ in range(n):
            await RisingEdge(self.dut.user_clk)

    # ------------------------------------------------------------------ idle
    def in_flight(self):
        return self.down_sent != self.down_recv or self.up_sent != self.up_recv

    def idle(self):
        """ADVANCE's idle: the hardware is idle and no TLP is in flight
        between the root complex and the shell."""
        return not self.in_flight() and self.hw_idle()

    def hw_idle(self):
        """The core has nothing to do (what host/sim's harness calls idle:
        the core's `idle` and no request or response on its ports) and the
        shell's completer and requester are idle (no request half decoded,
        nothing outstanding, no beat on CQ, CC or RC)."""
        d = self.dut
        return bool(d.core_idle.value and d.rq_idle.value and int(d.u_cq.state.value) == 0
                    and not d.mmio_req_valid.value and not d.mmio_rsp_valid.value
                    and not d.dma_req_valid.value and not d.dma_rsp_valid.value
                    and not d.dm_req_valid.value and not d.dm_rsp_valid.value
                    and not d.s_axis_cq_tvalid.value and not d.m_axis_cc_tvalid.value
                    and not d.s_axis_rc_tvalid.value)

    def _resync(self):
        if self.in_flight():
            self.log.warning("simboard: counters resynchronized (down %d/%d, up %d/%d)",
                          self.down_sent, self.down_recv, self.up_sent, self.up_recv)
        self.down_recv = self.down_sent
        self.up_recv = self.up_sent

    # ------------------------------------------------------------------ DMA gates
    def _cover(self, addr, n, need):
        """None: [addr, addr+n) touches no mapping. True: it lies in mappings
        that all allow `need`. False: partly unmapped or not allowed."""
        touched = False
        covered = 0
        for iova, r in self.maps.items():
            lo, hi = max(addr, iova), min(addr + n, iova + r.size)
            if lo < hi:
                touched = True
                if r.perm & need != need:
                    return False
                covered += hi - lo
        if not touched:
            return None
        return covered == n

    def _read_gate(self, orig):
        async def gate(tlp):
            if self._cover(tlp.address, max(tlp.length, 1) * 4, bp.PERM_READ) is False:
                await self.rc.send(Tlp.create_ur_completion_for_tlp(tlp, PcieId(0, 0, 0)))
                return
            await orig(tlp)
        return gate

    def _write_gate(self, orig):
        async def gate(tlp):
            if self._cover(tlp.address, max(tlp.length, 1) * 4, bp.PERM_WRITE) is False:
                return                      # dropped, as an IOMMU would
            await orig(tlp)
        return gate

    # ------------------------------------------------------------------ config
    def cfg_tlp(self, kind):
        """A type-1 configuration request from the root complex to the function."""
        req = Tlp()
        req.fmt_type = kind
        req.requester_id = PcieId(0, 0, 0)
        req.completer_id = self.pdev.pcie_id
        return req

    async def cfg_read(self, off, width):
        if not self.link_up:
            raise Unanswered("link down")
        req = self.cfg_tlp(TlpType.CFG_READ_1)
        req.set_addr_be(off, width)
        cpls = await self.rc.perform_nonposted_operation(req, TLP_TIMEOUT_NS, "ns")
        if not cpls:
            raise Unanswered("config read at %#x: no completion" % off)
        if cpls[0].status != CplStatus.SC:
            raise Refused("config read at %#x: completion status %s" % (off, cpls[0].status))
        d = bytes(cpls[0].get_data())
        return int.from_bytes(d[off % 4:off % 4 + width], "little")

    async def cfg_write(self, off, width, value):
        if not self.link_up:
            raise Unanswered("link down")
        req = self.cfg_tlp(TlpType.CFG_WRITE_1)
        req.set_addr_be_data(off, (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little"))
        cpls = await self.rc.perform_nonposted_operation(req, TLP_TIMEOUT_NS, "ns")
        if not cpls:
            raise Unanswered("config write at %#x: no completion" % off)
        if cpls[0].status != CplStatus.SC:
            raise Refused("config write at %#x: completion status %s" % (off, cpls[0].status))

    # ------------------------------------------------------------------ MSI-X
    def _msix_cap(self):
        off = self.pdev.get_capability_offset(PciCapId.MSIX)
        if not off:
            raise RuntimeError("the function has no MSI-X capability")
        return off

    async def _msix_program(self, count):
        """As the host kernel does: table entries (address in the root
        complex's MSI window, data, unmasked) for vectors < count, the others
        masked; then MSI-X Enable with the function mask clear."""
        tbl = rm.const("MSIX_TABLE_OFFSET")
        cap = self._msix_cap()
        ctrl = await self.cfg_read(cap + 2, 2)
        await self.cfg_write(cap + 2, 2, (ctrl | 0x4000) & ~0x8000)      # masked, off while programming
        for i in range(NV):
            v = self.vectors[i]
            entry = struct.pack("<IIII", v.addr & 0xFFFFFFFF, v.addr >> 32, v.data, 0 if i < count else 1)
            await self.bar[0].write(tbl + 16 * i, entry)
        await self.bar[0].read_dword(tbl, timeout=TLP_TIMEOUT_NS, timeout_unit="ns")   # flush
        await self.cfg_write(cap + 2, 2, (ctrl | 0x8000) & ~0x4000)
        self.msix_on = True

    async def _msix_off(self):
        cap = self._msix_cap()
        ctrl = await self.cfg_read(cap + 2, 2)
        await self.cfg_write(cap + 2, 2, ctrl & ~0x8000)
        self.msix_on = False

    def _close_msix_fds(self):
        for fd in self.msix_fds:
            bp._close(fd)
        self.msix_fds = []

    # ------------------------------------------------------------------ resets
    async def _save_cfg(self):
        cmd = await self.cfg_read(0x04, 2)
        bars = [await self.cfg_read(0x10 + 4 * i, 4) for i in range(6)]
        return cmd, bars

    async def _restore_cfg(self, saved):
        """What VFIO's reset does with config space: BARs back, memory
        decoding on; bus mastering stays off (the client turns it on). An
        enabled MSI-X set is programmed again (the kernel restores it)."""
        cmd, bars = saved
        await self.cfg_write(0x04, 2, 0)
        for i, b in enumerate(bars):
            await self.cfg_write(0x10 + 4 * i, 4, b)
        await self.cfg_write(0x04, 2, (cmd | 0x0002) & ~0x0004)
        await self._wait_core_ready()
        if self.msix_on:
            await self._msix_program(len(self.msix_fds))
        else:
            await self._msix_off()
        await self._cycles(50)
        self._resync()

    async def reset(self, kind):
        d = self.dut
        if kind == bp.RESET_LINK_DOWN:
            if self.link_up:
                self.saved_cfg = await self._save_cfg()
                d.user_lnk_up.value = Force(0)
                await self._cycles(5)
                self.link_up = False
            return
        if kind == bp.RESET_LINK_UP:
            if not self.link_up:
                d.user_lnk_up.value = Release()
                await self._cycles(5)
                self.link_up = True
                await self._restore_cfg(self.saved_cfg)
            return
        if not self.link_up:
            raise Unanswered("link down")
        saved = await self._save_cfg()
        # Bus mastering and decoding off first, as the kernel does.
        await self.cfg_write(0x04, 2, saved[0] & ~0x0007)
        await self._cycles(20)
        if kind == bp.RESET_FLR:
            d.cfg_flr_in_process.value = 1
            for _ in range(10_000):
                await RisingEdge(d.user_clk)
                if int(d.cfg_flr_done.value) & 1:
                    break
            else:
                d.cfg_flr_in_process.value = 0
                raise RuntimeError("FLR: the shell never pulsed cfg_flr_done")
            d.cfg_flr_in_process.value = 0
        elif kind == bp.RESET_HOT:
            d.cfg_hot_reset_out.value = 1
            await self._cycles(5)
            d.cfg_hot_reset_out.value = 0
        else:
            raise BadRequest("unknown reset kind %d" % kind)
        await self._cycles(5)
        await self._restore_cfg(saved)

    # ------------------------------------------------------------------ ops
    def _check_bar(self, bar, off, n):
        if bar not in self.bar:
            raise BadRequest("BAR %d: only BAR0 and BAR2 exist" % bar)
        if not 1 <= n <= bp.MEM_MAX:
            raise BadRequest("length %d: must be 1..%d" % (n, bp.MEM_MAX))
        if off + n > self.bar_len[bar]:
            raise BadRequest("BAR%d offset %#x + %d beyond its %#x bytes" % (bar, off, n, self.bar_len[bar]))

    async def op_hello(self, pl, fds):
        (ver,) = bp.HELLO_REQ.unpack(pl)
        if ver != bp.VERSION:
            raise BadRequest("client version %d, this server speaks %d" % (ver, bp.VERSION))
        f = self.pdev
        return bp.HELLO_REP.pack(bp.VERSION, self.bar_len[0], self.bar_len[2], f.vendor_id, f.device_id,
                                 f.subsystem_vendor_id, f.subsystem_id, P["DEVMEM_PAGES"],
                                 P["DMALOG_PAGES_MAX"], USER_CLK_KHZ, MRRS, MPS)

    @staticmethod
    def _check_cfg(off, width):
        if width not in (1, 2, 4):
            raise BadRequest("config width %d: must be 1, 2 or 4" % width)
        if off % width or off + width > 4096:
            raise BadRequest("config offset %#x: must be aligned to the width and below 4096" % off)

    async def op_cfg_read(self, pl, fds):
        off, width = bp.CFG_READ_REQ.unpack(pl)
        self._check_cfg(off, width)
        return bp.U32.pack(await self.cfg_read(off, width))

    async def op_cfg_write(self, pl, fds):
        off, width, value = bp.CFG_WRITE_REQ.unpack(pl)
        self._check_cfg(off, width)
        if width < 4 and value >> (8 * width):
            raise BadRequest("value %#x does not fit in %d bytes" % (value, width))
        await self.cfg_write(off, width, value)
        return b""

    async def op_mem_read(self, pl, fds):
        bar, n, off = bp.MEM_REQ.unpack(pl)
        self._check_bar(bar, off, n)
        if not self.link_up:
            raise Unanswered("link down")
        try:
            return bytes(await self.bar[bar].read(off, n, timeout=TLP_TIMEOUT_NS, timeout_unit="ns"))
        except Exception as e:  # noqa: BLE001 - cocotbext-pcie raises plain Exceptions
            msg = str(e)
            if "Timeout" in msg:
                raise Unanswered("BAR%d read at %#x: completion timeout" % (bar, off)) from e
            if "Unsuccessful" in msg:
                raise Refused("BAR%d read at %#x: unsuccessful completion" % (bar, off)) from e
            raise

    async def op_mem_write(self, pl, fds):
        bar, n, off = bp.MEM_REQ.unpack_from(pl)
        data = pl[bp.MEM_REQ.size:]
        if len(data) != n:
            raise BadRequest("MEM_WRITE: length field %d, %d data bytes" % (n, len(data)))
        self._check_bar(bar, off, n)
        if self.link_up:            # link down: the write goes nowhere
            await self.bar[bar].write(off, data)
        return b""

    async def op_dma_map(self, pl, fds):
        iova, n, fd_off, perm = bp.DMA_MAP_REQ.unpack(pl)
        if len(fds) != 1:
            raise BadRequest("DMA_MAP needs exactly 1 file descriptor, got %d" % len(fds))
        if perm & ~3:
            raise BadRequest("permission bits %#x: only bit0 (read) and bit1 (write)" % perm)
        if n == 0 or iova + n > 1 << 64:
            raise BadRequest("IOVA range %#x + %#x is empty or beyond 2^64" % (iova, n))
        if fd_off % mmap.ALLOCATIONGRANULARITY:
            raise BadRequest("fd offset %#x is not a multiple of %d" % (fd_off, mmap.ALLOCATIONGRANULARITY))
        if self._cover(iova, n, 0) is not None:
            raise BadRequest("IOVA range %#x + %#x overlaps an existing mapping" % (iova, n))
        if any(iova < hi and lo < iova + n for lo, hi in RESERVED) or self.rc.mem_address_space.find_regions(iova, n):
            raise BadRequest("IOVA range %#x + %#x overlaps the root complex's BAR and MSI windows "
                             "(0xfe000000-0xfeffffff, from 2^63)" % (iova, n))
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if perm & bp.PERM_WRITE else 0)
        try:
            mm = mmap.mmap(fds[0], n, flags=mmap.MAP_SHARED, prot=prot, offset=fd_off)
        except (OSError, ValueError, OverflowError) as e:
            raise BadRequest("mmap of the fd (%#x bytes at %#x) failed: %s" % (n, fd_off, e)) from e
        r = DmaRegion(mm, n, perm, fds[0], iova)
        self.rc.mem_address_space.register_region(r, iova, n)
        self.maps[iova] = r
        fds.clear()                         # the mapping owns the fd now
        return b""

    async def op_dma_unmap(self, pl, fds):
        iova, n = bp.DMA_UNMAP_REQ.unpack(pl)
        r = self.maps.get(iova)
        if r is None or r.size != n:
            raise BadRequest("no mapping of exactly %#x + %#x" % (iova, n))
        del self.maps[iova]
        sp = self.rc.mem_address_space
        sp.regions = [x for x in sp.regions if x[3] is not r]
        r.close()
        return b""

    async def op_msix_enable(self, pl, fds):
        (count,) = bp.U32.unpack(pl)
        if count > NV:
            raise BadRequest("%d vectors: the function has %d" % (count, NV))
        if len(fds) != count:
            raise BadRequest("MSIX_ENABLE of %d vectors needs %d eventfds, got %d" % (count, count, len(fds)))
        if not self.link_up:
            raise Unanswered("link down")
        self._close_msix_fds()
        self.msix_fds = list(fds)
        fds.clear()
        await self._msix_program(count)
        return b""

    async def op_msix_disable(self, pl, fds):
        if self.link_up:
            await self._msix_off()
        self.msix_on = False
        self._close_msix_fds()
        return b""

    async def op_reset(self, pl, fds):
        (kind,) = bp.RESET_REQ.unpack(pl)
        if kind > 3:
            raise BadRequest("reset kind %d: 0 FLR, 1 hot reset, 2 link down, 3 link up" % kind)
        await self.reset(kind)
        return b""

    async def op_advance(self, pl, fds):
        (req,) = bp.ADVANCE_REQ.unpack(pl)
        until_idle = bool(req & bp.ADVANCE_UNTIL_IDLE)
        n = req & ~bp.ADVANCE_UNTIL_IDLE
        clk = self.dut.user_clk
        ran = 0
        lost = 0
        while ran < n:
            if until_idle:
                if self.hw_idle():
                    if not self.in_flight():
                        break
                    # A TLP counted as in flight while nothing moves for
                    # this long was lost by a model: stop counting it.
                    lost += 1
                    if lost >= LOST_TLP_CYCLES:
                        self._resync()
                        continue
                else:
                    lost = 0
            await RisingEdge(clk)
            ran += 1
        return bp.ADVANCE_REP.pack(ran, int(self.idle()))

    async def op_stats(self, pl, fds):
        cycles = int(cocotb.utils.get_sim_time("ns")) // CLK_NS
        return bp.STATS_REP.pack(cycles, self.tlps_rx, self.tlps_tx, self.msix_sent)

    async def op_bye(self, pl, fds):
        return b""

    # op -> (handler, payload length or None for "at least the fixed part", fds allowed)
    OPS = {
        bp.HELLO: (op_hello, bp.HELLO_REQ.size, False),
        bp.CFG_READ: (op_cfg_read, bp.CFG_READ_REQ.size, False),
        bp.CFG_WRITE: (op_cfg_write, bp.CFG_WRITE_REQ.size, False),
        bp.MEM_READ: (op_mem_read, bp.MEM_REQ.size, False),
        bp.MEM_WRITE: (op_mem_write, None, False),
        bp.DMA_MAP: (op_dma_map, bp.DMA_MAP_REQ.size, True),
        bp.DMA_UNMAP: (op_dma_unmap, bp.DMA_UNMAP_REQ.size, False),
        bp.MSIX_ENABLE: (op_msix_enable, bp.U32.size, True),
        bp.MSIX_DISABLE: (op_msix_disable, 0, False),
        bp.RESET: (op_reset, bp.RESET_REQ.size, False),
        bp.ADVANCE: (op_advance, bp.ADVANCE_REQ.size, False),
        bp.STATS: (op_stats, 0, False),
        bp.BYE: (op_bye, 0, False),
    }

    async def dispatch(self, op, pl, fds):
        """Returns (status, payload). Never raises; closes the fds it does not keep."""
        try:
            ent = self.OPS.get(op)
            if ent is None:
                raise BadRequest("unknown op %d" % op)
            handler, size, fds_ok = ent
            name = bp.OP_NAMES[op]
            if size is None:
                if len(pl) < bp.MEM_REQ.size:
                    raise BadRequest("%s: payload of %d bytes, needs at least %d" % (name, len(pl), bp.MEM_REQ.size))
            elif len(pl) != size:
                raise BadRequest("%s: payload of %d bytes, expected %d" % (name, len(pl), size))
            if fds and not fds_ok:
                raise BadRequest("%s takes no file descriptors, got %d" % (name, len(fds)))
            return bp.OK, await handler(self, pl, fds)
        except BadRequest as e:
            return bp.BAD_REQUEST, str(e).encode()
        except Refused as e:
            return bp.UR, str(e).encode()
        except Unanswered as e:
            return bp.NO_COMPLETION, str(e).encode()
        except Exception as e:  # noqa: BLE001 - any failure is answered, the server goes on
            self.log.warning("simboard: op %d failed:\n%s", op, traceback.format_exc())
            return bp.INTERNAL, ("%s: %s" % (type(e).__name__, e)).encode()
        finally:
            for fd in fds:
                bp._close(fd)

    # ------------------------------------------------------------------ socket
    def connect(self, path):
        deadline = time.monotonic() + CONNECT_S
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except OSError as e:
                s.close()
                if time.monotonic() > deadline or e.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    raise RuntimeError("simboard: cannot connect to %s: %s" % (path, e)) from e
                time.sleep(0.05)

    async def serve(self, path):
        sock = self.connect(path)
        self.log.info("simboard: connected to %s", path)
        served = 0
        try:
            while True:
                try:
                    hdr, fds = bp.recv_header_fds(sock)
                except (ConnectionError, OSError) as e:
                    self.log.info("simboard: client gone (%s)", e)
                    return
                if hdr is None:
                    self.log.info("simboard: EOF after %d requests", served)
                    return
                op, tag, n = bp.HDR.unpack(hdr)
                if n > bp.MAX_PAYLOAD:
                    for fd in fds:
                        bp._close(fd)
                    msg = "payload of %d bytes: the limit is %d; closing" % (n, bp.MAX_PAYLOAD)
                    try:
                        bp.send_frame(sock, bp.BAD_REQUEST, tag, msg.encode())
                    except OSError:
                        pass
                    self.log.warning("simboard: %s", msg)
                    return
                try:
                    pl = bp.recv_exact(sock, n) if n else b""
                except (ConnectionError, OSError) as e:
                    pl = None
                    self.log.info("simboard: client gone mid-request (%s)", e)
                if pl is None:
                    for fd in fds:
                        bp._close(fd)
                    return
                status, rep = await self.dispatch(op, pl, fds)
                served += 1
                try:
                    bp.send_frame(sock, status, tag, rep)
                except OSError as e:
                    self.log.info("simboard: client gone (%s)", e)
                    return
                if op == bp.BYE and status == bp.OK:
                    self.log.info("simboard: BYE after %d requests", served)
                    return
        finally:
            sock.close()
            self._close_msix_fds()
            for r in self.maps.values():
                r.close()
            self.maps.clear()


@cocotb.test()
async def board(dut):
    """Serves the simulated board until BYE or EOF."""
    b = Board(dut)
    await b.start()
    await b.serve(os.environ["VFPGA_SIMBOARD_SOCKET"])

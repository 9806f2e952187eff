"""TLP-level tests of the UltraScale+ PCIe shell (rtl/shell/usp/) with
cocotbext-pcie's root complex and UltraScale+ hard-block model, on Icarus.

Run by rtl/shell/usp/tb/run.py (scripts/test.d/25-shell). Offsets and
constants come from the generated include through regmap.py."""

import json
import logging
import os
import random
import struct

import cocotb
from cocotb.handle import Force, Release
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.tlp import Tlp, TlpType
from cocotbext.pcie.core.utils import PcieId
from cocotbext.pcie.xilinx.us.tlp import Tlp_us

import regmap as rm
from usp_model import usp_device

P = json.loads(os.environ["SHELL_PARAMS"])      # the parameters the DUT was built with
DEVMEM_BYTES = P["DEVMEM_PAGES"] * rm.const("PAGE_SIZE")
NV = rm.const("NUM_VECTORS")
STATE_WORDS = rm.const("STATE_WORDS")
OUT_DIR = os.environ.get("SHELL_OUT", ".")

CLK_NS = 4


def crc32c(data, seed=0):
    """CRC-32C as the datasheet defines it (PATTERN = seed)."""
    crc = ~seed & 0xFFFFFFFF
    poly = rm.const("CRC32C_POLY_REFLECTED")
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (poly if crc & 1 else 0)
    return ~crc & 0xFFFFFFFF


class TB:
    def __init__(self, dut):
        self.dut = dut
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)

        self.rc = RootComplex()
        self.rc.max_payload_size = 0          # 128 bytes
        self.rc.max_read_request_size = 0     # 128 bytes
        self.rc.split_on_all_rcb = True       # split read completions at every 64-byte RCB

        self.dev = usp_device(dut, 256, P, DEVMEM_BYTES)
        self.dev.log.setLevel(logging.WARNING)
        self.rc.log.setLevel(logging.WARNING)
        self.rc.make_port().connect(self.dev)

        dut.cfg_flr_in_process.value = 0
        dut.cfg_hot_reset_out.value = 0

        # RQ monitor (started after reset): every TLP the shell sends upstream.
        self.rq_tlps = 0
        for n in ("s_axis_cq", "m_axis_cc", "m_axis_rq", "s_axis_rc"):
            logging.getLogger("cocotb.vfpga_usp_shell." + n).setLevel(logging.WARNING)
        # Interrupt log: vector -> count.
        self.irqs = [0] * NV
        # Read interception (by address range): "swallow" or ("delay", ns).
        self.read_hook = None
        self.swallowed = []
        for t in (TlpType.MEM_READ, TlpType.MEM_READ_64):
            orig = self.rc.rx_tlp_handler[t]
            self.rc.register_rx_tlp_handler(t, self._make_read_hook(orig))

    def _make_read_hook(self, orig):
        async def hook(tlp):
            rules = self.read_hook if isinstance(self.read_hook, list) else [self.read_hook]
            h = next((r for r in rules if r is not None and r["lo"] <= tlp.address < r["hi"]), None)
            if h is not None:
                if h["mode"] == "swallow":
                    self.swallowed.append(tlp.tag)
                    return
                if h["mode"] == "ca":
                    h["count"] = h.get("count", 0) + 1
                    await self.rc.send(Tlp.create_ca_completion_for_tlp(tlp, PcieId(0, 0, 0)))
                    return
                if h["mode"] == "poison":
                    h["count"] = h.get("count", 0) + 1
                    cpl = Tlp.create_completion_data_for_tlp(tlp, PcieId(0, 0, 0))
                    cpl.byte_count = tlp.get_be_byte_count()
                    cpl.lower_address = (tlp.address + tlp.get_first_be_offset()) & 0x7F
                    cpl.set_data(await self.rc.mem_address_space.read(tlp.address, tlp.length * 4))
                    cpl.ep = True
                    await self.rc.send(cpl)
                    return
                if h["mode"] == "delay":
                    async def later():
                        await Timer(h["ns"], "ns")
                        await orig(tlp)
                    h["count"] = h.get("count", 0) + 1
                    cocotb.start_soon(later())
                    return
            await orig(tlp)
        return hook

    async def _rq_monitor(self):
        d = self.dut
        while True:
            await RisingEdge(d.user_clk)
            if d.m_axis_rq_tvalid.value and d.m_axis_rq_tready.value and d.m_axis_rq_tlast.value:
                self.rq_tlps += 1

    async def _cc_monitor(self):
        """Every completion the shell sends: the reserved bits of its CC
        descriptor (PG213: bits 7, 15:10, 31:30, 47) are zero. The
        UltraScale+ model ignores them; the hard block need not."""
        d = self.dut
        first = True
        reserved = (1 << 7) | (0x3F << 10) | (0x3 << 30) | (1 << 47)
        while True:
            await RisingEdge(d.user_clk)
            if d.m_axis_cc_tvalid.value and d.m_axis_cc_tready.value:
                if first:
                    desc = d.m_axis_cc_tdata.value.to_unsigned() & ((1 << 96) - 1)
                    assert desc & reserved == 0, "CC descriptor reserved bits set: %#026x" % desc
                first = bool(d.m_axis_cc_tlast.value)

    async def cycles(self, n):
        for _ in range(n):
            await RisingEdge(self.dut.user_clk)

    async def init(self, msix=True):
        await FallingEdge(self.dut.user_reset)
        await Timer(100, "ns")
        cocotb.start_soon(self._rq_monitor())
        cocotb.start_soon(self._cc_monitor())
        await self.rc.enumerate()
        self.pdev = self.rc.find_device(self.dev.functions[0].pcie_id)
        await self.pdev.enable_device()
        await self.pdev.set_master()
        self.dev.functions[0].pcie_cap.max_read_request_size = 0   # MRRS 128
        self.bar0 = self.pdev.bar_window[0]
        self.bar2 = self.pdev.bar_window[2]
        if msix:
            await self.pdev.alloc_irq_vectors(NV, NV)
            for v in range(NV):
                self.pdev.request_irq(v, self._irq_handler(v))
        # Host memory for rings and buffers.
        self.mem = self.rc.mem_pool.alloc_region(256 * 1024)
        self.mem_base = self.mem.get_absolute_address(0)
        await self.wait_reset_done()

    def _irq_handler(self, v):
        async def h():
            self.irqs[v] += 1
        return h

    async def wait_reset_done(self):
        # The core takes no MMIO until its bitmaps are clear: a read waits.
        assert await self.rd(rm.reg("ID")) == rm.const("DEVICE_MAGIC")

    # ---- register access
    async def rd(self, off):
        return await self.bar0.read_dword(off)

    async def wr(self, off, val):
        await self.bar0.write_dword(off, val & 0xFFFFFFFF)

    # ---- rings
    async def setup_rings(self, sq_base, cq_base, size=16):
        await self.wr(rm.reg("CTRL"), 0)
        await self.wr(rm.reg("SQ_BASE_LO"), sq_base & 0xFFFFFFFF)
        await self.wr(rm.reg("SQ_BASE_HI"), sq_base >> 32)
        await self.wr(rm.reg("CQ_BASE_LO"), cq_base & 0xFFFFFFFF)
        await self.wr(rm.reg("CQ_BASE_HI"), cq_base >> 32)
        await self.wr(rm.reg("SQ_SIZE"), size)
        await self.wr(rm.reg("CQ_SIZE"), size)
        self.sq_base, self.cq_base, self.ring_size = sq_base, cq_base, size
        self.sq_tail = 0
        self.cq_head = 0
        self.cq_phase = 1
        await self.wr(rm.reg("CTRL"), rm.bit("CTRL", "ENABLE"))

    def desc(self, op, src=0, dst=0, length=0, pattern=0, tag=0, irq=False):
        return rm.descriptor(op, src, dst, length, pattern, tag, irq)

    async def host_write(self, addr, data):
        await self.mem.write(addr - self.mem_base, data)

    async def host_read(self, addr, n):
        return bytes(await self.mem.read(addr - self.mem_base, n))

    async def submit(self, d):
        slot = self.sq_base + self.sq_tail * rm.const("DESC_BYTES")
        await self.host_write(slot, d)
        self.sq_tail = (self.sq_tail + 1) % self.ring_size
        await self.wr(rm.reg("SQ_TAIL"), self.sq_tail)

    async def wait_cpl(self, timeout_us=400):
        """Waits for the next completion entry; returns (tag, status, result, bytes)."""
        ent = self.cq_base + self.cq_head * rm.const("CPL_BYTES")
        for _ in range(timeout_us * 4):
            raw = await self.host_read(ent, rm.const("CPL_BYTES"))
            w = struct.unpack("<4I", raw)
            info = w[rm.V["CPL_INFO_WORD"]]
            if (info >> rm.V["CPL_INFO_PHASE_LSB"]) & 1 == self.cq_phase:
                self.cq_head = (self.cq_head + 1) % self.ring_size
                if self.cq_head == 0:
                    self.cq_phase ^= 1
                await self.wr(rm.reg("CQ_HEAD"), self.cq_head)
                st = (info >> rm.V["CPL_INFO_STATUS_LSB"]) & ((1 << rm.V["CPL_INFO_STATUS_WIDTH"]) - 1)
                return w[rm.V["CPL_TAG_WORD"]], st, w[rm.V["CPL_RESULT_WORD"]], w[rm.V["CPL_BYTES_WORD"]]
            await Timer(250, "ns")
        raise AssertionError("no completion")

    async def wait_status(self, bit_name, timeout_us=200):
        for _ in range(timeout_us * 10):
            if await self.rd(rm.reg("STATUS")) & rm.bit("STATUS", bit_name):
                return
            await Timer(100, "ns")
        raise AssertionError("STATUS.%s never set" % bit_name)


# ---------------------------------------------------------------------------
@cocotb.test()
async def test_enumeration(dut):
    """IDs, class, revision, BAR types and sizes, MSI-X capability."""
    tb = TB(dut)
    await tb.init(msix=False)
    pd = tb.pdev
    assert pd.vendor_id == P["VENDOR_ID"], hex(pd.vendor_id)
    assert pd.device_id == P["DEVICE_ID"], hex(pd.device_id)
    cls_rev = await tb.rc.config_read_dword(pd.pcie_id, 0x08)
    assert cls_rev >> 8 == rm.const("PCI_CLASS_CODE") and cls_rev & 0xFF == rm.const("PCI_REVISION")
    sub = await tb.rc.config_read_dword(pd.pcie_id, 0x2C)
    assert sub == (P["SUBSYS_ID"] << 16) | P["SUBSYS_VENDOR_ID"], hex(sub)
    # BAR0: 32-bit, non-prefetchable memory of BAR0_SIZE.
    bar0 = await tb.rc.config_read_dword(pd.pcie_id, 0x10)
    assert bar0 & 0xF == 0, hex(bar0)
    assert pd.bar_size[0] == rm.const("BAR0_SIZE"), pd.bar_size
    # BAR2: 64-bit prefetchable of the device-memory size.
    bar2 = await tb.rc.config_read_dword(pd.pcie_id, 0x18)
    assert bar2 & 0xF == 0xC, hex(bar2)
    assert pd.bar_size[2] == DEVMEM_BYTES, pd.bar_size
    # MSI-X capability: table and PBA in BAR0 at the datasheet offsets.
    from cocotbext.pcie.core.caps import PciCapId
    ctrl = await pd.capability_read_dword(PciCapId.MSIX, 0)
    assert ((ctrl >> 16) & 0x7FF) + 1 == NV
    tbl = await pd.capability_read_dword(PciCapId.MSIX, 4)
    pba = await pd.capability_read_dword(PciCapId.MSIX, 8)
    assert tbl == rm.const("MSIX_TABLE_OFFSET") | 0, hex(tbl)
    assert pba == rm.const("MSIX_PBA_OFFSET") | 0, hex(pba)
    # The core's PCI_ID register reflects the shell's identity parameters.
    pci_id = await tb.rd(rm.reg("PCI_ID"))
    assert pci_id == (P["DEVICE_ID"] << 16) | P["VENDOR_ID"], hex(pci_id)
    assert await tb.rd(rm.reg("DEVMEM_PAGES")) == P["DEVMEM_PAGES"]


@cocotb.test()
async def test_mmio(dut):
    """Register widths, unassigned offsets, BAR2 at every width and alignment, UR."""
    tb = TB(dut)
    await tb.init(msix=False)
    assert await tb.rd(rm.reg("ID")) == rm.const("DEVICE_MAGIC")
    assert await tb.rd(rm.reg("RTL_VERSION")) == rm.const("RTL_VERSION")
    for v in (0xDEADBEEF, 0x12345678, 0):
        await tb.wr(rm.reg("SCRATCH"), v)
        assert await tb.rd(rm.reg("SCRATCH")) == v
    # 64-bit access = two 32-bit registers, low first.
    await tb.wr(rm.reg("SCRATCH"), 0xA5A5A5A5)
    q = await tb.bar0.read_qword(rm.reg("SCRATCH") & ~7)
    lo_first = rm.reg("SCRATCH") % 8 == 0
    assert ((q >> 32) if not lo_first else q & 0xFFFFFFFF) == 0xA5A5A5A5
    # Illegal widths read all ones; writes are ignored.
    assert (await tb.bar0.read(rm.reg("ID"), 1))[0] == 0xFF
    assert await tb.bar0.read_word(rm.reg("ID")) == 0xFFFF
    assert await tb.bar0.read(rm.reg("ID") + 1, 2) == b"\xff\xff"
    await tb.bar0.write_byte(rm.reg("SCRATCH"), 0x11)
    await tb.bar0.write_word(rm.reg("SCRATCH") + 2, 0x2222)
    assert await tb.rd(rm.reg("SCRATCH")) == 0xA5A5A5A5
    # Unassigned offsets read 0.
    for off in (0x03C, 0x0FC, 0x800, 0xFFC, 0x1000, 0x1FFC):
        assert await tb.rd(off) == 0, hex(off)
    await tb.wr(0x1000, 0xFFFFFFFF)
    assert await tb.rd(0x1000) == 0

    # BAR2: 1/2/4/8 bytes at every alignment, and longer runs, against a shadow.
    rnd = random.Random(1)
    base = 3 * 4096
    shadow = bytearray(rnd.randbytes(256))
    await tb.bar2.write(base, bytes(shadow))
    assert await tb.bar2.read(base, 256) == shadow
    for width in (1, 2, 4, 8):
        for align in range(8):
            off = 64 + align + 8 * width
            data = rnd.randbytes(width)
            await tb.bar2.write(base + off, data)
            shadow[off:off + width] = data
            assert await tb.bar2.read(base + off, width) == shadow[off:off + width], (width, align)
    for _ in range(20):
        off = rnd.randrange(0, 200)
        n = rnd.randrange(1, 56)
        if rnd.random() < 0.5:
            data = rnd.randbytes(n)
            await tb.bar2.write(base + off, data)
            shadow[off:off + n] = data
        else:
            assert await tb.bar2.read(base + off, n) == shadow[off:off + n]
    assert await tb.bar2.read(base, 256) == shadow
    # A whole page, through MPS/MRRS-sized TLPs.
    page = rnd.randbytes(4096)
    t0 = cocotb.utils.get_sim_time("ns")
    await tb.bar2.write(5 * 4096, page)
    await tb.bar2.read(5 * 4096, 4)            # waits until the posted writes are done
    t1 = cocotb.utils.get_sim_time("ns")
    assert await tb.bar2.read(5 * 4096, 4096) == page
    t2 = cocotb.utils.get_sim_time("ns")
    line = ("BAR2 4 KiB through 128-byte TLPs: write %.0f cycles (%.0f MB/s at 250 MHz), read %.0f cycles "
            "(%.0f MB/s; one read TLP at a time, as the root-complex model issues them)"
            % ((t1 - t0) / CLK_NS, 4096 / ((t1 - t0) * 1e-9) / 1e6, (t2 - t1) / CLK_NS, 4096 / ((t2 - t1) * 1e-9) / 1e6))
    tb.log.info("%s", line)
    with open(os.path.join(OUT_DIR, "bar2_rate.txt"), "w") as f:
        f.write(line + "\n")

    # An I/O request gets UR (the device has no I/O BAR: the block answers).
    try:
        await tb.rc.io_read(tb.pdev.bar_addr[0], 4, timeout=2000)
        raise AssertionError("I/O read succeeded")
    except Exception as e:  # noqa: BLE001 - cocotbext raises a plain Exception on UR
        assert "Unsupported" in str(e) or "UR" in str(e) or "unsuccessful" in str(e).lower(), str(e)
    # Requests the block forwards but the shell must refuse: inject on CQ and
    # look at the completion on CC.
    for t in (TlpType.IO_READ, TlpType.IO_WRITE, TlpType.FETCH_ADD, TlpType.MEM_READ_LOCKED):
        st = await inject_np(tb, t, bar_id=0, addr=rm.reg("SCRATCH"))
        assert st == 1, (t, st)      # UR
    # A read of a BAR the function does not have: UR; a write there is dropped.
    st = await inject_np(tb, TlpType.MEM_READ, bar_id=4, addr=0)
    assert st == 1
    assert await tb.rd(rm.reg("SCRATCH")) == 0xA5A5A5A5


async def inject_np(tb, fmt_type, bar_id, addr):
    """Puts a request straight into the block's CQ queue and returns the
    completion status the shell sends on CC."""
    got = []
    orig_send = tb.dev.send

    async def capture(tlp):
        if tlp.fmt_type in (TlpType.CPL, TlpType.CPL_DATA) and tlp.tag == 0x1F:
            got.append(tlp)
            return
        await orig_send(tlp)
    tb.dev.send = capture
    tlp = Tlp_us()
    tlp.fmt_type = fmt_type
    tlp.requester_id = PcieId(0, 0, 0)
    tlp.tag = 0x1F
    tlp.address = addr
    tlp.first_be = 0xF
    if fmt_type in (TlpType.IO_WRITE, TlpType.FETCH_ADD):
        tlp.set_data(b"\x01\x00\x00\x00")
    else:
        tlp.length = 1
    tlp.bar_id = bar_id
    tlp.bar_aperture = 14
    tlp.completer_id = tb.dev.functions[0].pcie_id
    tb.dev.cq_queue.put_nowait(tlp)
    for _ in range(2000):
        if got:
            break
        await RisingEdge(tb.dut.user_clk)
    tb.dev.send = orig_send
    assert got, "no completion on CC for %r" % fmt_type
    return int(got[0].status)


# ---------------------------------------------------------------------------
@cocotb.test()
async def test_ordering(dut):
    """1,000 random interleavings of BAR2 writes and DIRTY_BITS / BAR2 reads:
    a read never passes an earlier (posted) write."""
    tb = TB(dut)
    await tb.init(msix=False)
    rnd = random.Random(2)
    pages = P["DEVMEM_PAGES"]
    groups = max(1, pages // 32)
    shadow = bytearray(DEVMEM_BYTES)
    known = bytearray(DEVMEM_BYTES)     # device memory outlives a test: compare what this test wrote
    written = []
    dirty = set()
    await tb.wr(rm.reg("DIRTY_SEL"), 0)
    # Drain whatever is dirty now (all groups).
    for _ in range(groups):
        await tb.rd(rm.reg("DIRTY_BITS"))
    sel = 0
    checks = 0
    for i in range(1000):
        r = rnd.random()
        if r < 0.55:
            page = rnd.randrange(pages)
            off = rnd.randrange(4096 - 8)
            n = rnd.choice((1, 2, 4, 8))
            data = rnd.randbytes(n)
            await tb.bar2.write(page * 4096 + off, data)       # posted: returns at once
            shadow[page * 4096 + off:page * 4096 + off + n] = data
            known[page * 4096 + off:page * 4096 + off + n] = b"\x01" * n
            written.append(page * 4096 + off)
            dirty.add(page)
        elif r < 0.9:
            bits = await tb.rd(rm.reg("DIRTY_BITS"))
            want = 0
            for p in list(dirty):
                if p // 32 == sel:
                    want |= 1 << (p % 32)
                    dirty.discard(p)
            assert bits == want, "op %d: DIRTY_BITS group %d = %#x, expected %#x" % (i, sel, bits, want)
            sel = (sel + 1) % groups
            checks += 1
        else:
            a = rnd.choice(written) + rnd.randrange(-4, 4) if written else 0
            a = min(max(a, 0), DEVMEM_BYTES - 8)
            n = rnd.choice((1, 2, 4, 8))
            got = await tb.bar2.read(a, n)
            for j in range(n):
                assert not known[a + j] or got[j] == shadow[a + j], "op %d: BAR2 read at %#x" % (i, a + j)
            checks += 1
    tb.log.info("ordering: 1000 operations, %d reads checked", checks)


# ---------------------------------------------------------------------------
HOST_SRC = 0x10000      # offsets in the host region
HOST_DST = 0x20000
HOST_AREA = 0x8000
DEV_DST = 0             # device-memory destination window
DEV_SRC = 8 * 4096      # device-memory source window (initialized through BAR2)
DEV_SRC_LEN = 2 * 4096


class Shadow:
    """A Python model of the data movement of every opcode."""

    def __init__(self, host, dev):
        self.host = host      # bytearray of the host region
        self.dev = dev        # bytearray of device memory

    def run(self, op, src, dst, length, pattern, base):
        h, d = self.host, self.dev
        if op == rm.opcode("COPY_H2D"):
            d[dst:dst + length] = h[src - base:src - base + length]
        elif op == rm.opcode("COPY_D2H"):
            h[dst - base:dst - base + length] = d[src:src + length]
        elif op == rm.opcode("COPY_H2H"):
            h[dst - base:dst - base + length] = h[src - base:src - base + length]
        elif op == rm.opcode("CRC32C"):
            return crc32c(h[src - base:src - base + length], pattern)
        elif op == rm.opcode("FILL_DEV"):
            pb = struct.pack("<I", pattern)
            d[dst:dst + length] = bytes(pb[i % 4] for i in range(length))
        elif op == rm.opcode("FILL_HOST"):
            pb = struct.pack("<I", pattern)
            h[dst - base:dst - base + length] = bytes(pb[i % 4] for i in range(length))
        return 0


async def dma_setup(tb, rnd):
    await tb.setup_rings(tb.mem_base + 0x0000, tb.mem_base + 0x1000)
    host = bytearray(await tb.host_read(tb.mem_base, 0x30000))
    init = rnd.randbytes(HOST_AREA)
    await tb.host_write(tb.mem_base + HOST_SRC, init)
    host[HOST_SRC:HOST_SRC + HOST_AREA] = init
    dev = bytearray(DEVMEM_BYTES)
    dinit = rnd.randbytes(DEV_SRC_LEN)
    await tb.bar2.write(DEV_SRC, dinit)
    dev[DEV_SRC:DEV_SRC + DEV_SRC_LEN] = dinit
    return Shadow(host, dev)


@cocotb.test()
async def test_dma(dut):
    """Every opcode from rings in root-complex memory, random unaligned
    addresses and lengths, split completions, MPS and MRRS 128."""
    tb = TB(dut)
    await tb.init(msix=False)
    assert int(dut.cfg_max_payload.value) == 0 and int(dut.cfg_max_read_req.value) == 0
    rnd = random.Random(3)
    sh = await dma_setup(tb, rnd)
    base = tb.mem_base
    ops = ["NOP", "COPY_H2D", "COPY_D2H", "COPY_H2H", "CRC32C", "FILL_DEV", "FILL_HOST"]
    plan = []
    # Edge cases first: 64/128-byte boundary crossings, 1 byte, 0 bytes, 4 KiB crossing.
    edges = [(63, 2), (1, 64), (127, 3), (60, 130), (0, 1), (5, 0), (4090, 20)]
    for i in range(34):
        op = ops[i % len(ops)]
        if i < len(edges) * 2:
            off, n = edges[(i // 2) % len(edges)]
        else:
            off, n = rnd.randrange(0, 4000), rnd.randrange(1, 300)
        plan.append((op, off, n, rnd.getrandbits(32)))
    for k, (op, off, n, pat) in enumerate(plan):
        code = rm.opcode(op)
        src = dst = 0
        if op in ("COPY_H2D", "COPY_H2H", "CRC32C"):
            src = base + HOST_SRC + off % (HOST_AREA - n)
        if op == "COPY_D2H":
            src = DEV_SRC + off % (DEV_SRC_LEN - n)
        if op in ("COPY_D2H", "COPY_H2H", "FILL_HOST"):
            dst = base + HOST_DST + (off * 7 + 3) % (HOST_AREA - n)
        if op in ("COPY_H2D", "FILL_DEV"):
            dst = DEV_DST + (off * 5 + 1) % (DEV_SRC - n)
        if op == "CRC32C" and k % 3 == 0:
            pat = 0
        await tb.submit(tb.desc(code, src, dst, n, pat, tag=0x100 + k, irq=False))
        want = 0 if op == "NOP" else sh.run(code, src, dst, n, pat, base)
        tag, st, res, nbytes = await tb.wait_cpl()
        assert tag == 0x100 + k and st == rm.status("OK"), (k, op, tag, st)
        assert nbytes == (0 if op == "NOP" else n), (k, op, nbytes, n)
        if op == "CRC32C":
            assert res == want, (k, hex(res), hex(want))
        if op in ("COPY_D2H", "COPY_H2H", "FILL_HOST"):
            got = await tb.host_read(dst, n)
            assert got == sh.host[dst - base:dst - base + n], (k, op, hex(dst), n)
        if op in ("COPY_H2D", "FILL_DEV") and n:
            got = await tb.bar2.read(dst, n)
            assert got == sh.dev[dst:dst + n], (k, op, hex(dst), n)
    # Whole destination areas, once more.
    assert await tb.host_read(base + HOST_DST, HOST_AREA) == sh.host[HOST_DST:HOST_DST + HOST_AREA]
    assert await tb.rd(rm.reg("CNT_DESC")) == len(plan)
    assert await tb.rd(rm.reg("CNT_ERR")) == 0


# ---------------------------------------------------------------------------
UNMAPPED = 0x40_0000_1000    # no root-complex region there: UR


async def err_regs(tb):
    code = await tb.rd(rm.reg("ERR_CODE"))
    lo = await tb.rd(rm.reg("ERR_ADDR_LO"))
    hi = await tb.rd(rm.reg("ERR_ADDR_HI"))
    return code, (hi << 32) | lo


@cocotb.test()
async def test_faults(dut):
    """UR source, ring outside, swallowed read (completion timeout), write
    outside memory (WRITE_CONFIRM=1)."""
    tb = TB(dut)
    await tb.init(msix=False)
    rnd = random.Random(4)
    await dma_setup(tb, rnd)
    base = tb.mem_base
    # 1. Source outside every region: UR -> DMA_READ_FAULT with the address.
    src = UNMAPPED + 0x35
    await tb.submit(tb.desc(rm.opcode("COPY_H2H"), src, base + HOST_DST, 100, tag=1))
    tag, st, _, nbytes = await tb.wait_cpl()
    assert (tag, st, nbytes) == (1, rm.status("DMA_READ_FAULT"), 0), (tag, st, nbytes)
    assert await err_regs(tb) == (rm.status("DMA_READ_FAULT"), src)
    # 2. Write outside memory: the confirming read turns it into DMA_WRITE_FAULT.
    dst = UNMAPPED + 0x2000 + 3
    await tb.submit(tb.desc(rm.opcode("FILL_HOST"), 0, dst, 70, 0x11223344, tag=2))
    tag, st, _, nbytes = await tb.wait_cpl()
    assert (tag, st, nbytes) == (2, rm.status("DMA_WRITE_FAULT"), 0), (tag, st, nbytes)
    assert await err_regs(tb) == (rm.status("DMA_WRITE_FAULT"), dst)
    # A write fault after some good bursts: bytes before it were moved.
    dst = base + 0x40000 - 64            # last 64 bytes of the region, then unmapped
    await tb.submit(tb.desc(rm.opcode("FILL_HOST"), 0, dst, 200, 0x55555555, tag=3))
    tag, st, _, nbytes = await tb.wait_cpl()
    assert (tag, st, nbytes) == (3, rm.status("DMA_WRITE_FAULT"), 64), (tag, st, nbytes)
    # 3. A read that is never answered: completion timeout -> DMA_READ_FAULT.
    src = base + HOST_SRC + 0x100 + 7
    tb.read_hook = {"mode": "swallow", "lo": src & ~0xFFF, "hi": (src & ~0xFFF) + 0x1000}
    await tb.submit(tb.desc(rm.opcode("CRC32C"), src, 0, 40, tag=4))
    tag, st, _, nbytes = await tb.wait_cpl()
    assert (tag, st, nbytes) == (4, rm.status("DMA_READ_FAULT"), 0), (tag, st, nbytes)
    assert await err_regs(tb) == (rm.status("DMA_READ_FAULT"), src)
    assert tb.swallowed, "the hook saw no read"
    tb.read_hook = None
    for t in tb.swallowed:                 # the block retires the tag after its own timeout
        tb.dev.active_request[t] = None
    # 3a. Completer abort and poisoned data: DMA_READ_FAULT too.
    for k, mode in enumerate(("ca", "poison")):
        src = base + HOST_SRC + 0x3000 + 11
        tb.read_hook = {"mode": mode, "lo": src & ~0xFFF, "hi": (src & ~0xFFF) + 0x1000}
        await tb.submit(tb.desc(rm.opcode("COPY_H2H"), src, base + HOST_DST, 30, tag=0x30 + k))
        tag, st, _, nbytes = await tb.wait_cpl()
        assert (tag, st, nbytes) == (0x30 + k, rm.status("DMA_READ_FAULT"), 0), (mode, tag, st, nbytes)
        assert await err_regs(tb) == (rm.status("DMA_READ_FAULT"), src), mode
        assert tb.read_hook["count"] == 1, mode
    tb.read_hook = None
    # 3b. A completion that comes after the timeout, while the next read waits:
    # dropped (its tag is stale); the next read gets its own data.
    src1 = base + HOST_SRC + 0x1000 + 3
    src2 = base + HOST_SRC + 0x2000 + 9
    to_ns = P["CPL_TIMEOUT"] * CLK_NS
    tb.read_hook = [
        {"mode": "delay", "ns": to_ns + 4000, "lo": src1 & ~0xFFF, "hi": (src1 & ~0xFFF) + 0x1000},
        {"mode": "delay", "ns": 6000, "lo": src2 & ~0xFFF, "hi": (src2 & ~0xFFF) + 0x1000},
    ]
    await tb.submit(tb.desc(rm.opcode("CRC32C"), src1, 0, 48, tag=0x41))
    await tb.submit(tb.desc(rm.opcode("CRC32C"), src2, 0, 48, tag=0x42))
    tag, st, _, _ = await tb.wait_cpl()
    assert (tag, st) == (0x41, rm.status("DMA_READ_FAULT")), (tag, st)
    tag, st, res, nbytes = await tb.wait_cpl()
    want = crc32c(await tb.host_read(src2, 48))
    assert (tag, st, nbytes, res) == (0x42, rm.status("OK"), 48, want), (tag, st, nbytes, hex(res), hex(want))
    tb.read_hook = None
    # The engine goes on: a good copy now works.
    await tb.submit(tb.desc(rm.opcode("COPY_H2H"), base + HOST_SRC, base + HOST_DST, 100, tag=5))
    tag, st, _, nbytes = await tb.wait_cpl()
    assert (tag, st, nbytes) == (5, rm.status("OK"), 100)
    # 4. Completion ring outside memory: CQ_WRITE_FAULT and HALTED.
    await tb.wr(rm.reg("CTRL"), rm.bit("CTRL", "SOFT_RESET"))
    await tb.setup_rings(base, UNMAPPED + 0x3000)
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=6))
    await tb.wait_status("HALTED")
    assert await err_regs(tb) == (rm.status("CQ_WRITE_FAULT"), UNMAPPED + 0x3000)
    # 5. Submission ring outside memory: SQ_FETCH_FAULT and HALTED.
    await tb.wr(rm.reg("CTRL"), rm.bit("CTRL", "SOFT_RESET"))
    assert not await tb.rd(rm.reg("STATUS")) & rm.bit("STATUS", "HALTED")
    await tb.setup_rings(UNMAPPED + 0x4000, base + 0x1000)
    await tb.wr(rm.reg("SQ_TAIL"), 1)
    await tb.wait_status("HALTED")
    assert await err_regs(tb) == (rm.status("SQ_FETCH_FAULT"), UNMAPPED + 0x4000)


@cocotb.test(skip=P["WRITE_CONFIRM"] != 0)
async def test_write_fault_noconfirm(dut):
    """WRITE_CONFIRM=0: a write outside memory vanishes and completes OK
    (the one case where this setting disagrees with the model)."""
    tb = TB(dut)
    await tb.init(msix=False)
    await dma_setup(tb, random.Random(5))
    await tb.submit(tb.desc(rm.opcode("FILL_HOST"), 0, UNMAPPED + 3, 70, 0x11223344, tag=2))
    tag, st, _, nbytes = await tb.wait_cpl()
    assert (tag, st, nbytes) == (2, rm.status("OK"), 70), (tag, st, nbytes)
    # Reads still fault.
    await tb.submit(tb.desc(rm.opcode("COPY_H2H"), UNMAPPED, tb.mem_base + HOST_DST, 8, tag=3))
    tag, st, _, _ = await tb.wait_cpl()
    assert st == rm.status("DMA_READ_FAULT")


@cocotb.test()
async def test_write_cost(dut):
    """Cycles per 64-byte DMA write burst (request to response) and per
    descriptor, for this build's WRITE_CONFIRM."""
    tb = TB(dut)
    await tb.init(msix=False)
    await dma_setup(tb, random.Random(6))
    await tb.bar2.read(DEV_SRC, 4)        # the BAR2 initialization writes are done
    d = dut
    lat = []
    span = []
    stop = [False]

    async def mon():
        t0 = None
        cyc = 0
        while not stop[0]:
            await RisingEdge(d.user_clk)
            cyc += 1
            if d.dma_req_valid.value == 1 and d.dma_req_ready.value == 1:
                if not span:
                    span.append(cyc)
                if d.dma_req_write.value == 1 and int(d.dma_req_len.value) == 64:
                    t0 = cyc                    # a data burst (not the 16-byte completion entry)
            if d.dma_rsp_valid.value == 1 and t0 is not None:
                lat.append(cyc - t0)
                span[1:] = [cyc]
                t0 = None
    cocotb.start_soon(mon())
    n = 2048
    start = cocotb.utils.get_sim_time("ns")
    await tb.submit(tb.desc(rm.opcode("COPY_D2H"), DEV_SRC, tb.mem_base + HOST_DST, n, tag=9))
    tag, st, _, nbytes = await tb.wait_cpl()
    total = (cocotb.utils.get_sim_time("ns") - start) / CLK_NS
    await tb.cycles(200)                # the completion entry's write may still be confirming
    stop[0] = True
    assert st == rm.status("OK") and nbytes == n
    bursts = lat
    assert len(bursts) == n // 64, len(bursts)
    avg = sum(bursts) / len(bursts)
    line = ("WRITE_CONFIRM=%d: %d write bursts of 64 bytes, %.1f cycles per burst request->response "
            "(min %d, max %d); COPY_D2H of %d bytes: %d cycles from the descriptor fetch to the "
            "last burst's response, %.0f cycles as seen by the polling driver"
            % (P["WRITE_CONFIRM"], len(bursts), avg, min(bursts), max(bursts), n, span[1] - span[0], total))
    tb.log.info("write cost: %s", line)
    with open(os.path.join(OUT_DIR, "write_cost_%d.txt" % P["WRITE_CONFIRM"]), "w") as f:
        f.write(line + "\n")


# ---------------------------------------------------------------------------
async def msix_entry(tb, v, word):
    return await tb.rd(rm.const("MSIX_TABLE_OFFSET") + 16 * v + 4 * word)


@cocotb.test()
async def test_msix(dut):
    """Vectors programmed through BAR0 arrive at the RC; a masked vector sets
    its PBA bit and is delivered on unmask; nothing lost or sent twice."""
    tb = TB(dut)
    await tb.init(msix=True)
    base = tb.mem_base
    tbl = rm.const("MSIX_TABLE_OFFSET")
    pba = rm.const("MSIX_PBA_OFFSET")
    # The table holds what the RC programmed.
    for v in range(NV):
        assert await msix_entry(tb, v, 0) == tb.pdev.msi_vectors[v].addr & 0xFFFFFFFF
        assert await msix_entry(tb, v, 2) == tb.pdev.msi_vectors[v].data
        assert await msix_entry(tb, v, 3) == 0
    await tb.setup_rings(base, base + 0x1000)
    await tb.wr(rm.reg("IRQ_MASK"), 0)
    cpl_bit = rm.bit("IRQ_STATUS", "CPL")
    err_bit = rm.bit("IRQ_STATUS", "ERR")
    vc, ve = rm.const("VECTOR_CPL"), rm.const("VECTOR_ERR")

    async def settle():
        await tb.cycles(300)
    # 1. Completion vector.
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=1, irq=True))
    await tb.wait_cpl()
    await settle()
    assert tb.irqs == [1 if v == vc else 0 for v in range(NV)], tb.irqs
    await tb.wr(rm.reg("IRQ_STATUS"), cpl_bit)
    # 2. Error vector (a read fault).
    await tb.submit(tb.desc(rm.opcode("CRC32C"), UNMAPPED, 0, 4, tag=2))
    await tb.wait_cpl()
    await settle()
    assert tb.irqs[ve] == 1 and tb.irqs[vc] == 1, tb.irqs
    await tb.wr(rm.reg("IRQ_STATUS"), err_bit)
    # 3. Per-vector mask: pending in the PBA, delivered once on unmask.
    await tb.wr(tbl + 16 * vc + 12, 1)
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=3, irq=True))
    await tb.wait_cpl()
    await settle()
    assert tb.irqs[vc] == 1, tb.irqs
    assert await tb.rd(pba) == 1 << vc
    await tb.wr(tbl + 16 * vc + 12, 0)
    await settle()
    assert tb.irqs[vc] == 2, tb.irqs
    assert await tb.rd(pba) == 0
    await tb.wr(rm.reg("IRQ_STATUS"), cpl_bit)
    # 4. Function mask (MSI-X capability): same, for both vectors.
    from cocotbext.pcie.core.caps import PciCapId
    ctrl = await tb.pdev.capability_read_word(PciCapId.MSIX, 2)
    await tb.pdev.capability_write_word(PciCapId.MSIX, 2, ctrl | 0x4000)
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=4, irq=True))
    await tb.wait_cpl()
    await tb.submit(tb.desc(rm.opcode("CRC32C"), UNMAPPED, 0, 4, tag=5))
    await tb.wait_cpl()
    await settle()
    assert tb.irqs == [2, 1], tb.irqs
    assert await tb.rd(pba) == (1 << vc) | (1 << ve)
    await tb.pdev.capability_write_word(PciCapId.MSIX, 2, ctrl & ~0x4000)
    await settle()
    assert tb.irqs == [3, 2], tb.irqs
    assert await tb.rd(pba) == 0
    # Nothing more arrives.
    await tb.cycles(500)
    assert tb.irqs == [3, 2], tb.irqs


@cocotb.test()
async def test_msix_table(dut):
    """MSI-X table fields are independent: each DWORD write, in ascending,
    descending and mixed field order, changes its field only (every field
    of every entry is read back after each write); vector control keeps
    only its mask bit. Each value's bit 0 is the complement of the entry's
    mask bit, so a write that leaks into the vector control shows."""
    tb = TB(dut)
    await tb.init(msix=False)
    tbl = rm.const("MSIX_TABLE_OFFSET")
    rnd = random.Random(6)
    model = {(v, w): (1 if w == 3 else 0) for v in range(NV) for w in range(4)}   # reset: masked
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]
    for rnd_round in range(len(orders)):
        for v in range(NV):
            for w in orders[(rnd_round + v) % len(orders)]:
                val = (rnd.getrandbits(32) & ~1) | (model[(v, 3)] ^ 1)
                await tb.wr(tbl + 16 * v + 4 * w, val)
                model[(v, w)] = (val & 1) if w == 3 else val
                for vv in range(NV):
                    for ww in range(4):
                        got = await msix_entry(tb, vv, ww)
                        assert got == model[(vv, ww)], \
                            "after writing entry %d field %d: entry %d field %d = %#x, want %#x" % (
                                v, w, vv, ww, got, model[(vv, ww)])


@cocotb.test()
async def test_bus_master_off(dut):
    """Bus Master Enable clear: no request reaches the RC; the core sees a
    fault; a pending message goes out once bus mastering is back."""
    tb = TB(dut)
    await tb.init(msix=True)
    base = tb.mem_base
    await tb.wr(rm.reg("IRQ_MASK"), 0)
    await tb.setup_rings(base, base + 0x1000)
    await tb.pdev.set_master(False)
    await tb.cycles(20)
    assert int(dut.cfg_function_status.value) & 4 == 0
    n0 = tb.rq_tlps
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=1, irq=True))
    await tb.wait_status("HALTED")
    await tb.cycles(300)
    assert tb.rq_tlps == n0, "a TLP left the shell with bus mastering off"
    assert (await err_regs(tb))[0] == rm.status("SQ_FETCH_FAULT")
    assert tb.irqs == [0, 0]
    assert await tb.rd(rm.const("MSIX_PBA_OFFSET")) == 1 << rm.const("VECTOR_ERR")
    await tb.pdev.set_master(True)
    await tb.cycles(300)
    assert tb.irqs[rm.const("VECTOR_ERR")] == 1, tb.irqs
    assert tb.rq_tlps == n0 + 1


# ---------------------------------------------------------------------------
@cocotb.test()
async def test_quiesce(dut):
    """Quiesce while a copy's read completions are delayed, read the state
    words, soft reset, restore, resume: the copy finishes with the right data."""
    tb = TB(dut)
    await tb.init(msix=False)
    rnd = random.Random(7)
    sh = await dma_setup(tb, rnd)
    base = tb.mem_base
    src, dst, n = base + HOST_SRC + 5, base + HOST_DST + 9, 1000
    tb.read_hook = {"mode": "delay", "ns": 3000, "lo": base + HOST_SRC, "hi": base + HOST_SRC + HOST_AREA}
    await tb.submit(tb.desc(rm.opcode("COPY_H2H"), src, dst, n, tag=0x77))
    while tb.read_hook.get("count", 0) < 3:
        await Timer(200, "ns")
    await tb.wr(rm.reg("CTRL"), rm.bit("CTRL", "ENABLE") | rm.bit("CTRL", "QUIESCE"))
    await tb.wait_status("QUIESCED")
    tb.read_hook = None
    await tb.wr(rm.reg("STATE_IDX"), 0)
    words = [await tb.rd(rm.reg("STATE_DATA")) for _ in range(STATE_WORDS)]
    assert words[rm.state_index("HEADER")] == rm.const("STATE_HEADER")
    assert words[rm.state_index("CUR_FLAGS")] & 1, "no descriptor in flight at quiesce"
    done = words[rm.state_index("CUR_DONE")]
    assert 0 < done < n, done
    with open(os.path.join(OUT_DIR, "state_words.txt"), "w") as f:
        f.write("".join("%08x\n" % w for w in words))
    with open(os.path.join(OUT_DIR, "state_devmem_bytes.txt"), "w") as f:
        f.write("%d\n" % DEVMEM_BYTES)
    # Soft reset: everything architectural back to reset values.
    await tb.wr(rm.reg("CTRL"), rm.bit("CTRL", "SOFT_RESET"))
    assert await tb.rd(rm.reg("SQ_SIZE")) == 0
    # Restore into the reset device and resume.
    await tb.wr(rm.reg("CTRL"), rm.bit("CTRL", "QUIESCE"))
    await tb.wait_status("QUIESCED")
    await tb.wr(rm.reg("STATE_IDX"), 0)
    for w in words:
        await tb.wr(rm.reg("STATE_DATA"), w)
    await tb.wr(rm.reg("CTRL"), rm.bit("CTRL", "RESUME"))
    st = await tb.rd(rm.reg("STATUS"))
    assert not st & (rm.bit("STATUS", "STATE_INVALID") | rm.bit("STATUS", "QUIESCED")), hex(st)
    tag, cst, _, nbytes = await tb.wait_cpl()
    assert (tag, cst, nbytes) == (0x77, rm.status("OK"), n), (tag, cst, nbytes)
    sh.run(rm.opcode("COPY_H2H"), src, dst, n, 0, base)
    assert await tb.host_read(dst, n) == sh.host[dst - base:dst - base + n]
    tb.log.info("quiesce: stopped at CUR_DONE=%d of %d, resumed and finished", done, n)


@cocotb.test()
async def test_resets(dut):
    """FLR (cfg_flr_in_process / cfg_flr_done), hot reset and link down reset
    the core and the MSI-X table; device memory keeps its contents."""
    tb = TB(dut)
    await tb.init(msix=True)
    await tb.bar2.write(0x100, b"keep")
    for kind in ("flr", "hot", "link"):
        await tb.wr(rm.reg("SCRATCH"), 0x5A5A)
        assert await tb.rd(rm.reg("SCRATCH")) == 0x5A5A
        await tb.wr(rm.const("MSIX_TABLE_OFFSET") + 0, 0xFEE00000)
        await tb.wr(rm.const("MSIX_TABLE_OFFSET") + 12, 0)
        assert await msix_entry(tb, 0, 3) == 0
        assert await msix_entry(tb, 0, 0) == 0xFEE00000
        if kind == "flr":
            dut.cfg_flr_in_process.value = 1
            seen = 0
            for _ in range(50):
                await RisingEdge(dut.user_clk)
                if dut.cfg_flr_done.value == 1:
                    seen += 1
            assert seen == 1, "cfg_flr_done pulses: %d" % seen
            dut.cfg_flr_in_process.value = 0
        elif kind == "hot":
            dut.cfg_hot_reset_out.value = 1
            await tb.cycles(5)
            dut.cfg_hot_reset_out.value = 0
        else:                               # link down (the model keeps user_lnk_up high)
            dut.user_lnk_up.value = Force(0)
            await tb.cycles(5)
            dut.user_lnk_up.value = Release()
        await tb.wait_reset_done()
        assert await tb.rd(rm.reg("SCRATCH")) == 0, kind
        assert await msix_entry(tb, 0, 3) == 1, kind     # vector masked again
        assert await msix_entry(tb, 0, 0) == 0, kind
        assert await tb.bar2.read(0x100, 4) == b"keep"


@cocotb.test()
async def test_intx(dut):
    """MSI-X off: the core's INTx level drives cfg_interrupt_int[0] (the
    block's legacy interrupt input; the model does not turn it into messages)."""
    tb = TB(dut)
    await tb.init(msix=False)
    base = tb.mem_base
    await tb.setup_rings(base, base + 0x1000)
    await tb.wr(rm.reg("IRQ_MASK"), 0)
    assert int(dut.cfg_interrupt_int.value) == 0
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=1, irq=True))
    await tb.wait_cpl()
    await tb.cycles(50)
    assert int(dut.cfg_interrupt_int.value) == 1 and int(dut.cfg_interrupt_pending.value) == 1
    await tb.wr(rm.reg("IRQ_STATUS"), rm.bit("IRQ_STATUS", "CPL"))
    await tb.rd(rm.reg("IRQ_STATUS"))
    await tb.cycles(10)
    assert int(dut.cfg_interrupt_int.value) == 0
    # INTx disabled in the command register: no level.
    await tb.submit(tb.desc(rm.opcode("NOP"), tag=2, irq=True))
    await tb.wait_cpl()
    cmd = await tb.rc.config_read_word(tb.pdev.pcie_id, 0x04)
    await tb.rc.config_write_word(tb.pdev.pcie_id, 0x04, cmd | 0x400)
    await tb.cycles(20)
    assert int(dut.cfg_interrupt_int.value) == 0
    await tb.rc.config_write_word(tb.pdev.pcie_id, 0x04, cmd)
    await tb.cycles(20)
    assert int(dut.cfg_interrupt_int.value) == 1

//! `vfpga-hil`: the hardware-in-the-loop suite. The same scenarios run on
//! every backend: the model always, the Verilated RTL when `vfpga-sim` was
//! built with Verilator, and a board when a board config is present
//! (`VFPGA_HIL_CONFIG`, else `config/board.yaml`).
//!
//! Each scenario is a function over a [`Target`]: a `&mut dyn Device`, the
//! [`DmaPort`] it was given (guest memory: [`GUEST_LEN`] bytes of shared,
//! fd-backed memory at IOVA [`GUEST_BASE`], so that a board can IOMMU-map
//! it) and the [`IrqLog`] it raises interrupts on. A scenario uses only the
//! seam's provided driver methods and [`RingDriver`], so the register-level
//! driver code a board uses is exactly what runs here on the model and the
//! RTL. Results are verified against plain Rust (`crc32c`, byte copies).
//!
//! The scenarios ([`SCENARIOS`]): identity, every DMA opcode, ring
//! wrap-around, interrupt mask/pending, quiesce/save/restore/resume of an
//! in-flight descriptor, device-memory dirty bitmap, DMA write log, DMA
//! outside mapped memory. The save/restore conformance checks of
//! `vfpga_device::conformance` complement them.
//!
//! [`hil_suite!`] instantiates every scenario as a `#[test]` for a factory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vfpga_device::conformance::{ConformanceError, expect_eq, mismatch};
use vfpga_device::ring::{Completion, Desc, RingDriver, RingError};
use vfpga_device::{Device, DeviceError, DmaFault, DmaPort, IrqLog, MmapMemory, Perm};
use vfpga_regs::{
    CplStatus, DmalogCtrl, Features, IrqMask, IrqPending, IrqStatus, Opcode, Status, consts,
    offsets,
};

/// IOVA of the suite's guest memory (above 4 GiB, so the `*_HI` registers count).
pub const GUEST_BASE: u64 = 0x1_0000_0000;
/// Size of the suite's guest memory (1 MiB, 256 pages).
pub const GUEST_LEN: u64 = 1 << 20;
/// Device memory the suite needs, in pages.
pub const MIN_DEVMEM_PAGES: u32 = 16;
const SQ: u64 = GUEST_BASE;
const CQ: u64 = GUEST_BASE + 0x1000;
const SRC: u64 = GUEST_BASE + 0x10000;
const DST: u64 = GUEST_BASE + 0x40000;
const END: u64 = GUEST_BASE + GUEST_LEN;
const RING: u32 = 16;
/// Units for one batch of descriptors (steps, cycles; a self-running device
/// counts polls).
const MAX_UNITS: u64 = 2_000_000;
/// Longest wait for a self-running device (a hang guard, not a measurement).
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Why a scenario failed.
#[derive(Debug, thiserror::Error)]
pub enum HilError {
    /// The device returned an error where none was expected.
    #[error("device error")]
    Device(#[from] DeviceError),
    /// Driving the rings failed.
    #[error("ring driver")]
    Ring(#[from] RingError),
    /// Guest memory access failed.
    #[error("guest memory")]
    Memory(#[from] DmaFault),
    /// Setting up the backend or its memory failed.
    #[error("setup: {what}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The device behaved differently from the datasheet.
    #[error("{check}: {detail}")]
    Mismatch {
        /// Which expectation.
        check: &'static str,
        /// What was seen.
        detail: String,
    },
}

/// The conformance suite's failures map one to one onto the suite's own
/// (its [`mismatch`] and [`expect_eq`] helpers serve both).
impl From<ConformanceError> for HilError {
    fn from(e: ConformanceError) -> Self {
        match e {
            ConformanceError::Device(e) => HilError::Device(e),
            ConformanceError::Ring(e) => HilError::Ring(e),
            ConformanceError::Memory(e) => HilError::Memory(e),
            ConformanceError::Mismatch { check, detail } => HilError::Mismatch { check, detail },
        }
    }
}

/// A device under test, its guest memory and its interrupt log.
pub struct Target<'a> {
    /// The device.
    pub dev: &'a mut dyn Device,
    /// The DMA port it was built with.
    pub dma: &'a DmaPort,
    /// The IRQ sink it was built with.
    pub irq: &'a IrqLog,
}

/// A scenario.
pub type Scenario = fn(&mut Target<'_>) -> Result<(), HilError>;

/// Every scenario, by name.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("identity", identity),
    ("dma_opcodes", dma_opcodes),
    ("ring_wrap_around", ring_wrap_around),
    ("interrupt_mask_and_pending", interrupt_mask_and_pending),
    (
        "inflight_quiesce_save_restore",
        inflight_quiesce_save_restore,
    ),
    ("dirty_bitmap", dirty_bitmap),
    ("dma_write_log", dma_write_log),
    ("dma_outside_mapped_memory", dma_outside_mapped_memory),
];

/// Fresh guest memory: [`GUEST_LEN`] bytes of an unlinked temporary file,
/// shared-mapped at [`GUEST_BASE`] (a board can IOMMU-map it).
pub fn guest_port() -> Result<DmaPort, HilError> {
    let setup = |what: &str, e: std::io::Error| HilError::Setup {
        what: what.to_string(),
        source: Some(Box::new(e)),
    };
    let file = tempfile::tempfile().map_err(|e| setup("guest memory file", e))?;
    file.set_len(GUEST_LEN)
        .map_err(|e| setup("guest memory size", e))?;
    let mem = MmapMemory::map_file_shared(&file, 0, GUEST_LEN as usize)
        .map_err(|e| setup("guest memory map", e))?;
    let dma = DmaPort::new();
    dma.map(GUEST_BASE, Arc::new(mem), Perm::RW)
        .map_err(|e| HilError::Setup {
            what: "mapping guest memory".into(),
            source: Some(Box::new(e)),
        })?;
    Ok(dma)
}

pub use vfpga_device::testkit::pattern;

/// Byte `i` of a FILL with `pat` (datasheet §5.2: byte `i mod 4`, little-endian).
fn fill_bytes(pat: u32, len: usize) -> Vec<u8> {
    let b = pat.to_le_bytes();
    (0..len).map(|i| b[i % 4]).collect()
}

fn host(t: &Target<'_>, iova: u64, len: usize) -> Result<Vec<u8>, HilError> {
    let mut b = vec![0; len];
    t.dma.host_read(iova, &mut b)?;
    Ok(b)
}

fn devmem(t: &mut Target<'_>, off: u64, len: usize) -> Result<Vec<u8>, HilError> {
    let mut b = vec![0; len];
    t.dev.devmem_read(off, &mut b)?;
    Ok(b)
}

/// Soft reset, then rings at SQ/CQ with `size` entries.
fn fresh(t: &mut Target<'_>, size: u32) -> Result<RingDriver, HilError> {
    t.dev.soft_reset()?;
    let st = t.dev.status()?;
    if st.intersects(Status::QUIESCED | Status::HALTED) {
        return Err(mismatch("soft reset", format!("STATUS {st:?} after SOFT_RESET")).into());
    }
    Ok(RingDriver::setup(t.dev, t.dma, SQ, size, CQ, size)?)
}

fn run(
    t: &mut Target<'_>,
    r: &mut RingDriver,
    descs: &[Desc],
) -> Result<Vec<Completion>, HilError> {
    Ok(r.run(t.dev, descs, MAX_UNITS)?)
}

fn expect_ok(c: &Completion, tag: u32, bytes: u32) -> Result<(), HilError> {
    if c.tag != tag || c.status() != Some(CplStatus::Ok) || c.bytes != bytes {
        return Err(mismatch(
            "completion",
            format!("{c:?}, expected tag {tag} status OK bytes {bytes}"),
        )
        .into());
    }
    Ok(())
}

/// Lets the device run until `vector` has been raised `want` times in all.
/// Messages may reach the sink from another thread (a board's eventfds), so
/// after a short burst of steps this also waits in wall time, up to the hang
/// guard.
fn wait_irqs(t: &mut Target<'_>, vector: u32, want: usize) -> Result<(), HilError> {
    let start = Instant::now();
    for i in 0u32.. {
        if t.irq.count(vector as u16) >= want {
            break;
        }
        t.dev.advance(16)?;
        let self_running = t.dev.info().self_running;
        if self_running || i > 1000 {
            std::thread::sleep(Duration::from_micros(100));
            // A stepped device has long finished; only a forwarding thread
            // can still be on its way.
            let guard = if self_running {
                HANG_GUARD
            } else {
                HANG_GUARD / 6
            };
            if start.elapsed() > guard {
                break;
            }
        }
    }
    expect_eq("messages on vector", t.irq.count(vector as u16), want)?;
    Ok(())
}

/// Lets the device settle (idle) so that a message it should not send would
/// have been sent.
fn settle(t: &mut Target<'_>) -> Result<(), HilError> {
    t.dev.run_until_idle(10_000)?;
    t.dev.advance(64)?;
    Ok(())
}

/// The identity registers agree with the seam, this build and the datasheet.
pub fn identity(t: &mut Target<'_>) -> Result<(), HilError> {
    let id = t.dev.check_identity()?;
    expect_eq("ID", t.dev.read_reg(offsets::ID)?, consts::DEVICE_MAGIC)?;
    expect_eq("RTL major", id.rtl_major(), {
        vfpga_regs::fields::rtl_version::MAJOR.get(consts::RTL_VERSION)
    })?;
    let f = Features::from_bits_retain(t.dev.read_reg(offsets::FEATURES)?);
    expect_eq("FEATURES", f.contains(Features::all()), true)?;
    expect_eq(
        "DEVMEM_PAGES vs BAR2",
        u64::from(id.devmem_pages) * u64::from(consts::PAGE_SIZE),
        t.dev.info().bar2_size,
    )?;
    if id.devmem_pages < MIN_DEVMEM_PAGES {
        return Err(mismatch(
            "device memory",
            format!("the suite needs {MIN_DEVMEM_PAGES} pages"),
        )
        .into());
    }
    t.dev.soft_reset()?;
    t.dev.write_reg(offsets::SCRATCH, 0x5a5a_1234)?;
    expect_eq("SCRATCH", t.dev.read_reg(offsets::SCRATCH)?, 0x5a5a_1234)?;
    expect_eq(
        "IRQ_MASK after reset",
        t.dev.read_reg(offsets::IRQ_MASK)?,
        IrqMask::all().bits(),
    )?;
    Ok(())
}

/// Every opcode, with unaligned, page-crossing, multi-burst operands,
/// verified against plain Rust.
pub fn dma_opcodes(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, RING)?;
    let src = pattern(7, 16384);
    t.dma.host_write(SRC, &src)?;
    let (n, crc_a) = (5000u32, 1500usize);
    let descs = [
        Desc::new(Opcode::CopyH2d, 1, SRC + 3, 0x1001, n, 0),
        Desc::new(Opcode::CopyD2h, 2, 0x1001, DST + 7, n, 0),
        Desc::new(Opcode::CopyH2h, 3, SRC + 5, DST + 0x8000 + 1, 777, 0),
        Desc::new(Opcode::Crc32c, 4, SRC, 0, 4000, 0),
        Desc::new(Opcode::Crc32c, 5, SRC, 0, crc_a as u32, 0),
        Desc::new(Opcode::FillDev, 6, 0, 0x3003, 999, 0xa1b2_c3d4),
        Desc::new(Opcode::FillHost, 7, 0, DST + 0x10000 + 2, 1234, 0x0102_0304),
        Desc::new(Opcode::Nop, 8, 0, 0, 100, 0),
        Desc::new(Opcode::Crc32c, 9, SRC, 0, 0, 0xdead_beef),
    ];
    let c = run(t, &mut r, &descs)?;
    expect_eq("completions", c.len(), descs.len())?;
    expect_ok(&c[0], 1, n)?;
    expect_ok(&c[1], 2, n)?;
    let want = &src[3..3 + n as usize];
    expect_eq(
        "COPY_H2D into device memory",
        devmem(t, 0x1001, n as usize)? == want,
        true,
    )?;
    expect_eq(
        "COPY_D2H to host",
        host(t, DST + 7, n as usize)? == want,
        true,
    )?;
    expect_ok(&c[2], 3, 777)?;
    expect_eq(
        "COPY_H2H",
        host(t, DST + 0x8000 + 1, 777)? == src[5..5 + 777],
        true,
    )?;
    expect_ok(&c[3], 4, 4000)?;
    expect_eq("CRC32C", c[3].result, crc32c::crc32c(&src[..4000]))?;
    expect_ok(&c[4], 5, crc_a as u32)?;
    expect_ok(&c[5], 6, 999)?;
    expect_eq(
        "FILL_DEV",
        devmem(t, 0x3003, 999)?,
        fill_bytes(0xa1b2_c3d4, 999),
    )?;
    expect_ok(&c[6], 7, 1234)?;
    expect_eq(
        "FILL_HOST",
        host(t, DST + 0x10000 + 2, 1234)?,
        fill_bytes(0x0102_0304, 1234),
    )?;
    expect_ok(&c[7], 8, 0)?;
    expect_ok(&c[8], 9, 0)?;
    expect_eq("CRC of nothing returns PATTERN", c[8].result, 0xdead_beef)?;
    // A CRC continued over a split buffer (PATTERN = previous result).
    let rest = 4000 - crc_a;
    let c2 = run(
        t,
        &mut r,
        &[Desc::new(
            Opcode::Crc32c,
            10,
            SRC + crc_a as u64,
            0,
            rest as u32,
            c[4].result,
        )],
    )?;
    expect_ok(&c2[0], 10, rest as u32)?;
    expect_eq(
        "CRC32C continued",
        c2[0].result,
        crc32c::crc32c_append(c[4].result, &src[crc_a..4000]),
    )?;
    expect_eq("CRC32C split = whole", c2[0].result, c[3].result)?;
    // Neighbours of the destinations are untouched.
    expect_eq("byte before COPY_D2H", host(t, DST + 6, 1)?, vec![0])?;
    expect_eq(
        "byte after FILL_HOST",
        host(t, DST + 0x10000 + 2 + 1234, 1)?,
        vec![0],
    )?;
    expect_eq("CNT_DESC", t.dev.read_reg(offsets::CNT_DESC)?, 10)?;
    Ok(())
}

/// A 4-entry ring used for 11 descriptors: completions in order, slots and
/// phases wrap.
pub fn ring_wrap_around(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, 4)?;
    let descs: Vec<Desc> = (0..11u32)
        .map(|i| Desc::new(Opcode::FillHost, 100 + i, 0, DST + u64::from(i) * 64, 64, i))
        .collect();
    let c = run(t, &mut r, &descs)?;
    expect_eq("completions", c.len(), 11)?;
    for (i, x) in c.iter().enumerate() {
        expect_ok(x, 100 + i as u32, 64)?;
        expect_eq("completion slot", x.slot, (i % 4) as u16)?;
        expect_eq(
            "fill",
            host(t, DST + i as u64 * 64, 64)?,
            fill_bytes(i as u32, 64),
        )?;
    }
    expect_eq("SQ_HEAD", t.dev.read_reg(offsets::SQ_HEAD)?, 11 % 4)?;
    let tail = t.dev.read_reg(offsets::CQ_TAIL)?;
    expect_eq(
        "CQ_TAIL index",
        vfpga_regs::fields::cq_tail::INDEX.get(tail),
        11 % 4,
    )?;
    // 11 entries: passes 1, 2 and part of 3, so the phase is 1 again.
    expect_eq(
        "CQ_TAIL phase",
        vfpga_regs::fields::cq_tail::PHASE.get(tail),
        1,
    )?;
    Ok(())
}

/// IRQ_MASK holds messages back in IRQ_PENDING; unmasking sends them once;
/// W1C of IRQ_STATUS drops a pending message unsent.
pub fn interrupt_mask_and_pending(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, RING)?;
    let (cpl, err) = (consts::VECTOR_CPL, consts::VECTOR_ERR);
    let base_cpl = t.irq.count(cpl as u16);
    let base_err = t.irq.count(err as u16);
    let c = run(
        t,
        &mut r,
        &[Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq()],
    )?;
    expect_ok(&c[0], 1, 0)?;
    settle(t)?;
    let pending = || IrqPending::CPL.bits();
    expect_eq(
        "IRQ_STATUS",
        t.dev.read_reg(offsets::IRQ_STATUS)?,
        IrqStatus::CPL.bits(),
    )?;
    expect_eq(
        "IRQ_PENDING while masked",
        t.dev.read_reg(offsets::IRQ_PENDING)?,
        pending(),
    )?;
    expect_eq("no message while masked", t.irq.count(cpl as u16), base_cpl)?;
    t.dev.write_reg(offsets::IRQ_MASK, IrqMask::ERR.bits())?;
    wait_irqs(t, cpl, base_cpl + 1)?;
    expect_eq(
        "IRQ_PENDING after send",
        t.dev.read_reg(offsets::IRQ_PENDING)?,
        0,
    )?;
    expect_eq(
        "IRQ_STATUS stays until W1C",
        t.dev.read_reg(offsets::IRQ_STATUS)?,
        IrqStatus::CPL.bits(),
    )?;
    t.dev
        .write_reg(offsets::IRQ_STATUS, IrqStatus::CPL.bits())?;
    expect_eq(
        "IRQ_STATUS after W1C",
        t.dev.read_reg(offsets::IRQ_STATUS)?,
        0,
    )?;

    // ERR, masked: pending, then dropped by W1C and never sent.
    let bad = Desc {
        opcode: 0x7f,
        ..Desc::new(Opcode::Nop, 2, 0, 0, 0, 0)
    };
    let c = run(t, &mut r, &[bad])?;
    expect_eq("bad opcode", c[0].status(), Some(CplStatus::BadOpcode))?;
    settle(t)?;
    expect_eq(
        "ERR_CODE",
        t.dev.read_reg(offsets::ERR_CODE)?,
        CplStatus::BadOpcode.raw(),
    )?;
    expect_eq(
        "ERR pending while masked",
        t.dev.read_reg(offsets::IRQ_PENDING)?,
        IrqPending::ERR.bits(),
    )?;
    t.dev
        .write_reg(offsets::IRQ_STATUS, IrqStatus::ERR.bits())?;
    expect_eq(
        "W1C drops the pending message",
        t.dev.read_reg(offsets::IRQ_PENDING)?,
        0,
    )?;
    t.dev.write_reg(offsets::IRQ_MASK, 0)?;
    settle(t)?;
    expect_eq(
        "a dropped message is not sent",
        t.irq.count(err as u16),
        base_err,
    )?;
    t.dev.write_reg(offsets::ERR_CODE, 0)?;
    expect_eq(
        "ERR_CODE cleared by a write",
        t.dev.read_reg(offsets::ERR_CODE)?,
        0,
    )?;

    // ERR, unmasked: sent once.
    let rsvd = Desc {
        rsvd: 1,
        ..Desc::new(Opcode::Nop, 3, 0, 0, 0, 0)
    };
    let c = run(t, &mut r, &[rsvd])?;
    expect_eq("reserved CTL bits", c[0].status(), Some(CplStatus::BadDesc))?;
    wait_irqs(t, err, base_err + 1)?;
    expect_eq(
        "no CPL message without the IRQ flag",
        t.irq.count(cpl as u16),
        base_cpl + 1,
    )?;
    Ok(())
}

/// Quiesce with a descriptor in flight, check it is frozen, save, soft-reset
/// (losing everything), restore, resume: it finishes exactly once with the
/// right bytes.
pub fn inflight_quiesce_save_restore(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, RING)?;
    t.dev.write_reg(offsets::IRQ_MASK, 0)?;
    let len = 48 * 1024u32;
    let src = pattern(11, len as usize);
    t.dma.host_write(SRC, &src)?;
    let base_cpl = t.irq.count(consts::VECTOR_CPL as u16);
    r.submit(
        t.dev,
        &Desc::new(Opcode::CopyH2h, 42, SRC, DST + 3, len, 0).with_irq(),
    )?;
    // Catch it mid-flight between steps (a self-running board may be done first).
    let mut caught = None;
    for _ in 0..200_000 {
        t.dev.quiesce()?;
        let s = t.dev.save_state()?;
        let a = s.arch;
        if a.cur_flags & 1 != 0 && a.cur_done > 0 && a.cur_done < a.cur_len {
            caught = Some(s);
            break;
        }
        if a.cnt_desc > 0 {
            break;
        }
        t.dev.resume()?;
        t.dev.advance(1)?;
    }
    let Some(saved) = caught else {
        if t.dev.info().self_running {
            t.dev.resume()?;
            tracing::warn!("the device finished before it could be caught in flight");
            return Ok(());
        }
        return Err(mismatch(
            "catch the descriptor in flight",
            "never saw 0 < CUR_DONE < CUR_LEN",
        )
        .into());
    };
    // Frozen: no state change, no DMA, no message while quiesced.
    let mem_before = host(t, DST, len as usize + 8)?;
    t.dev.advance(1000)?;
    let _ = t.dev.read_reg(offsets::TIMER_LO)?;
    expect_eq("state frozen while quiesced", t.dev.save_state()?, saved)?;
    expect_eq(
        "no DMA while quiesced",
        host(t, DST, len as usize + 8)? == mem_before,
        true,
    )?;
    expect_eq(
        "no message while quiesced",
        t.irq.count(consts::VECTOR_CPL as u16),
        base_cpl,
    )?;
    // Lose everything, then restore.
    t.dev.soft_reset()?;
    t.dev.quiesce()?;
    t.dev.restore_state(&saved)?;
    t.dev.resume()?;
    let mut r = RingDriver::attach(t.dev, t.dma)?;
    let c = r.wait_all(t.dev, MAX_UNITS)?;
    expect_eq("completions after restore", c.len(), 1)?;
    expect_ok(&c[0], 42, len)?;
    expect_eq("copied bytes", host(t, DST + 3, len as usize)? == src, true)?;
    wait_irqs(t, consts::VECTOR_CPL, base_cpl + 1)?;
    Ok(())
}

fn bits_set(words: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        for b in 0..64 {
            if w & (1 << b) != 0 {
                out.push(i as u64 * 64 + b);
            }
        }
    }
    out
}

/// BAR2 writes and DMA into device memory set exactly their pages' dirty
/// bits; reads set none; a read of the bitmap clears it.
pub fn dirty_bitmap(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, RING)?;
    t.dev.take_dirty_pages()?;
    t.dev.devmem_write(2 * 4096 + 100, &[1; 10])?;
    t.dev.devmem_write(6 * 4096 - 1, &[2])?;
    let _ = devmem(t, 7 * 4096, 4096)?;
    t.dma.host_write(SRC, &pattern(3, 4096))?;
    let c = run(
        t,
        &mut r,
        &[
            Desc::new(Opcode::CopyH2d, 1, SRC, 9 * 4096 + 4000, 200, 0),
            Desc::new(Opcode::FillDev, 2, 0, 12 * 4096, 16, 0x55),
            Desc::new(Opcode::CopyD2h, 3, 14 * 4096, DST, 64, 0),
        ],
    )?;
    for (i, x) in c.iter().enumerate() {
        expect_eq("status", x.status(), Some(CplStatus::Ok))
            .map_err(|e| mismatch("dirty workload", format!("descriptor {i}: {e}")))?;
    }
    expect_eq(
        "dirty pages",
        bits_set(&t.dev.take_dirty_pages()?),
        vec![2, 5, 9, 10, 12],
    )?;
    expect_eq(
        "bitmap cleared by the read",
        bits_set(&t.dev.take_dirty_pages()?),
        vec![],
    )?;
    Ok(())
}

/// The DMA write log records the host pages the device wrote (data and
/// completions, never reads) inside its window, and OVERFLOW outside it.
pub fn dma_write_log(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, RING)?;
    t.dev.dma_log_start(GUEST_BASE, 64)?;
    let page = |iova: u64| (iova - GUEST_BASE) / 4096;
    let fill_at = GUEST_BASE + 0x20000 + 4000;
    let d2h_at = GUEST_BASE + 0x30000 + 4090;
    let c = run(
        t,
        &mut r,
        &[
            Desc::new(Opcode::FillHost, 1, 0, fill_at, 200, 7),
            Desc::new(Opcode::CopyD2h, 2, 0, d2h_at, 10, 0),
            Desc::new(Opcode::Crc32c, 3, GUEST_BASE + 0x3f000, 0, 4096, 0),
        ],
    )?;
    expect_eq("completions", c.len(), 3)?;
    let (bits, overflow) = t.dev.dma_log_take()?;
    let mut want = vec![
        page(CQ),
        page(fill_at),
        page(fill_at) + 1,
        page(d2h_at),
        page(d2h_at) + 1,
    ];
    want.sort_unstable();
    expect_eq("logged pages", bits_set(&bits), want)?;
    expect_eq("overflow inside the window", overflow, false)?;
    let (bits, _) = t.dev.dma_log_take()?;
    expect_eq("log cleared by the read", bits_set(&bits), vec![])?;
    // A window that misses the writes: OVERFLOW, sticky until read.
    t.dev.dma_log_stop()?;
    t.dev.dma_log_start(GUEST_BASE + 0x80000, 8)?;
    let c = run(
        t,
        &mut r,
        &[Desc::new(Opcode::FillHost, 4, 0, fill_at, 8, 1)],
    )?;
    expect_ok(&c[0], 4, 8)?;
    let (bits, overflow) = t.dev.dma_log_take()?;
    expect_eq("nothing inside the window", bits_set(&bits), vec![])?;
    expect_eq("OVERFLOW", overflow, true)?;
    expect_eq(
        "OVERFLOW cleared",
        t.dev.read_reg(offsets::DMALOG_CTRL)? & DmalogCtrl::OVERFLOW.bits(),
        0,
    )?;
    t.dev.dma_log_stop()?;
    expect_eq("stopped", t.dev.read_reg(offsets::DMALOG_CTRL)?, 0)?;
    Ok(())
}

/// DMA to or from memory that is not mapped is refused: the descriptor
/// completes with a fault (bursts before the fault done), ERR_ADDR names
/// the address, the engine goes on; a ring outside memory halts it until
/// SOFT_RESET.
pub fn dma_outside_mapped_memory(t: &mut Target<'_>) -> Result<(), HilError> {
    let mut r = fresh(t, RING)?;
    let hole = END + 0x1000;
    let err_addr = |t: &mut Target<'_>| -> Result<u64, HilError> {
        Ok(u64::from(t.dev.read_reg(offsets::ERR_ADDR_LO)?)
            | (u64::from(t.dev.read_reg(offsets::ERR_ADDR_HI)?) << 32))
    };
    let c = run(t, &mut r, &[Desc::new(Opcode::CopyH2d, 1, hole, 0, 64, 0)])?;
    expect_eq("read fault", c[0].status(), Some(CplStatus::DmaReadFault))?;
    expect_eq("bytes before the fault", c[0].bytes, 0)?;
    expect_eq(
        "ERR_CODE",
        t.dev.read_reg(offsets::ERR_CODE)?,
        CplStatus::DmaReadFault.raw(),
    )?;
    expect_eq("ERR_ADDR", err_addr(t)?, hole)?;
    // A fill that runs off the end: the first burst lands, the second faults.
    let c = run(
        t,
        &mut r,
        &[Desc::new(Opcode::FillHost, 2, 0, END - 8, 64, 0x1111_1111)],
    )?;
    expect_eq("write fault", c[0].status(), Some(CplStatus::DmaWriteFault))?;
    expect_eq("bytes before the fault", c[0].bytes, 8)?;
    expect_eq("ERR_ADDR", err_addr(t)?, END)?;
    expect_eq(
        "the in-bounds burst",
        host(t, END - 8, 8)?,
        fill_bytes(0x1111_1111, 8),
    )?;
    let c = run(t, &mut r, &[Desc::new(Opcode::Nop, 3, 0, 0, 0, 0)])?;
    expect_ok(&c[0], 3, 0)?;
    // The SQ itself outside memory: SQ_FETCH_FAULT halts the engine.
    t.dev.soft_reset()?;
    RingDriver::setup(t.dev, t.dma, hole, 4, CQ, 4)?;
    t.dev.write_reg(offsets::SQ_TAIL, 1)?;
    let start = Instant::now();
    while !t.dev.status()?.contains(Status::HALTED) {
        let p = t.dev.advance(64)?;
        if (p.idle && !t.dev.info().self_running) || start.elapsed() > HANG_GUARD {
            break;
        }
    }
    expect_eq("HALTED", t.dev.status()?.contains(Status::HALTED), true)?;
    expect_eq(
        "ERR_CODE",
        t.dev.read_reg(offsets::ERR_CODE)?,
        CplStatus::SqFetchFault.raw(),
    )?;
    expect_eq("ERR_ADDR", err_addr(t)?, hole)?;
    t.dev.soft_reset()?;
    expect_eq(
        "SOFT_RESET clears HALTED",
        t.dev.status()?.contains(Status::HALTED),
        false,
    )?;
    Ok(())
}

/// Runs `scenario` on a fresh device from `factory` (with fresh guest
/// memory and IRQ log). `Ok(false)` when the factory says the backend is not
/// available here.
pub fn run_scenario<F>(scenario: Scenario, factory: F) -> Result<bool, HilError>
where
    F: FnOnce(DmaPort, Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError>,
{
    let dma = guest_port()?;
    let irq = Arc::new(IrqLog::new());
    let Some(mut dev) = factory(dma.clone(), irq.clone())? else {
        return Ok(false);
    };
    let mut t = Target {
        dev: dev.as_mut(),
        dma: &dma,
        irq: &irq,
    };
    scenario(&mut t)?;
    Ok(true)
}

/// Panics with the whole error chain of a failed scenario; prints a skip.
pub fn report(name: &str, backend: &str, r: Result<bool, HilError>) {
    match r {
        Ok(true) => {}
        Ok(false) => eprintln!("{backend}/{name}: skipped (backend not available here)"),
        Err(e) => {
            panic!("{backend}/{name}: {}", vfpga_device::error_chain(&e));
        }
    }
}

/// Instantiates every scenario as a `#[test]` for a backend. `$factory` is
/// an expression of type `fn(DmaPort, Arc<IrqLog>) -> Result<Option<Box<dyn
/// Device>>, HilError>` (`None`: backend not available, the test says it
/// skipped). The scenarios of one backend run one at a time (a board can be
/// opened once).
#[macro_export]
macro_rules! hil_suite {
    ($backend:literal, $factory:expr) => {
        static LOCK: ::std::sync::Mutex<()> = ::std::sync::Mutex::new(());
        $crate::hil_suite!(@one $backend, $factory, identity);
        $crate::hil_suite!(@one $backend, $factory, dma_opcodes);
        $crate::hil_suite!(@one $backend, $factory, ring_wrap_around);
        $crate::hil_suite!(@one $backend, $factory, interrupt_mask_and_pending);
        $crate::hil_suite!(@one $backend, $factory, inflight_quiesce_save_restore);
        $crate::hil_suite!(@one $backend, $factory, dirty_bitmap);
        $crate::hil_suite!(@one $backend, $factory, dma_write_log);
        $crate::hil_suite!(@one $backend, $factory, dma_outside_mapped_memory);
    };
    (@one $backend:literal, $factory:expr, $name:ident) => {
        #[test]
        fn $name() {
            let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            $crate::report(
                stringify!($name),
                $backend,
                $crate::run_scenario($crate::$name, $factory),
            );
        }
    };
}

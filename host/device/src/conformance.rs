//! The save/restore conformance suite, written once for every backend.
//!
//! Each check is a generic function over a *factory*: a closure that builds
//! a fresh device wired to the [`DmaPort`] and [`IrqLog`] it is given. The
//! checks use only the [`Device`] trait and this crate's helpers (the
//! [`RingDriver`] in particular), so the model, the Verilated RTL and a board
//! run exactly the same suite. [`conformance_tests!`](crate::conformance_tests)
//! instantiates every check as a `#[test]`:
//!
//! ```ignore
//! vfpga_device::conformance_tests!(|dma, irq| {
//!     vfpga_model::Model::new(ModelConfig::default(), dma, irq).map_err(Into::into)
//! });
//! ```
//!
//! The checks (datasheet §4, §8, §9):
//! - [`snapshot_mutate_restore`]: snapshot → run more work and change
//!   registers and device memory → restore → the snapshot reads back equal;
//! - [`frozen_while_quiesced`]: with a descriptor in flight, the state words
//!   and guest memory do not move across `advance`, BAR reads and ignored
//!   writes, and no interrupt is sent;
//! - [`save_requires_quiesce`];
//! - [`bad_state_is_refused`]: each malformed state is refused for the right
//!   word and the device stays quiesced (and harmless);
//! - [`restore_continues_inflight`]: a state saved mid-descriptor and restored
//!   into a fresh instance finishes with the same memory, completions,
//!   interrupts and state as an uninterrupted run;
//! - [`pending_interrupt_migrates`]: a masked pending message moves with the
//!   state and is sent once, on the destination;
//! - [`identity_mismatch_is_refused`].
//!
//! Guest memory is a [`VecMemory`] of [`GUEST_LEN`] bytes at IOVA
//! [`GUEST_BASE`]; the suite touches only the first 4 KiB of device memory.

use std::sync::Arc;

use vfpga_regs::{ArchState, Opcode, STATE_LAYOUT, StateErr, Status, offsets, state as sw};

use crate::ring::{Completion, Desc, RingDriver, RingError};
use crate::{Device, DeviceError, DeviceState, DmaFault, DmaPort, IrqLog, Perm, VecMemory};

/// IOVA of the suite's guest memory (above 4 GiB so the `*_HI` words count).
pub const GUEST_BASE: u64 = 0x4_0000_0000;
/// Size of the suite's guest memory.
pub const GUEST_LEN: usize = 128 * 1024;
const SQ: u64 = GUEST_BASE;
const CQ: u64 = GUEST_BASE + 0x1000;
const DATA: u64 = GUEST_BASE + 0x2000;
const RING: u32 = 16;
/// Budget for running the workload to completion (units of the backend).
const MAX_UNITS: u64 = 2_000_000;
/// Attempts at catching a descriptor mid-flight.
const MAX_TRIES: usize = 20_000;

/// Why a conformance check failed.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The device returned an error where none was expected.
    #[error("device error")]
    Device(#[from] DeviceError),
    /// Driving the rings failed.
    #[error("ring driver")]
    Ring(#[from] RingError),
    /// Guest memory could not be set up or read.
    #[error("guest memory")]
    Memory(#[from] DmaFault),
    /// The device behaved differently from the datasheet.
    #[error("{check}: {detail}")]
    Mismatch {
        /// Which expectation.
        check: &'static str,
        /// What was seen.
        detail: String,
    },
}

/// A [`ConformanceError::Mismatch`] for expectation `check` with what was
/// seen. Shared with other suites over the device seam (`vfpga-hil`), which
/// convert it into their own error.
pub fn mismatch(check: &'static str, detail: impl Into<String>) -> ConformanceError {
    ConformanceError::Mismatch {
        check,
        detail: detail.into(),
    }
}

/// Checks `got == want`, else a [`mismatch`] for `check` that shows both.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(
    check: &'static str,
    got: T,
    want: T,
) -> Result<(), ConformanceError> {
    if got == want {
        Ok(())
    } else {
        Err(mismatch(check, format!("got {got:?}, expected {want:?}")))
    }
}

/// A device under test with its guest memory and interrupt log.
#[derive(Debug)]
pub struct Fixture<D> {
    /// The device.
    pub dev: D,
    /// Its DMA port.
    pub dma: DmaPort,
    /// The guest memory mapped at [`GUEST_BASE`].
    pub mem: Arc<VecMemory>,
    /// Messages it sent.
    pub irq: Arc<IrqLog>,
}

/// Builds a fixture: fresh guest memory (filled with a fixed pattern), a
/// fresh IRQ log, and a device from `factory`, whose identity is checked.
pub fn fixture<D, F>(factory: &mut F) -> Result<Fixture<D>, ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mem = Arc::new(VecMemory::new(GUEST_LEN));
    let dma = DmaPort::new();
    dma.map(GUEST_BASE, mem.clone(), Perm::RW)
        .map_err(|e| mismatch("map guest memory", e.to_string()))?;
    let irq = Arc::new(IrqLog::new());
    let mut dev = factory(dma.clone(), irq.clone())?;
    dev.check_identity()?;
    if dev.info().bar2_size < 4096 {
        return Err(mismatch(
            "device memory",
            "the suite needs at least one page",
        ));
    }
    let mut x = 0x2545_f491u32;
    let data: Vec<u8> = (0..GUEST_LEN - (DATA - GUEST_BASE) as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    dma.host_write(DATA, &data)?;
    Ok(Fixture { dev, dma, mem, irq })
}

/// The suite's workload: every opcode, several multi-burst descriptors, all
/// with the IRQ flag, inside the first page of device memory.
pub fn workload() -> Vec<Desc> {
    let d = |op, tag, src, dst, len, pat| Desc::new(op, tag, src, dst, len, pat).with_irq();
    vec![
        d(Opcode::CopyH2h, 1, DATA + 3, DATA + 0x8000 + 5, 6000, 0),
        d(Opcode::CopyH2d, 2, DATA + 0x100, 0x21, 3000, 0),
        d(Opcode::Crc32c, 3, DATA + 0x7, 0, 5000, 0x1234),
        d(Opcode::CopyD2h, 4, 0x10, DATA + 0x10000 + 0xff0, 3100, 0),
        d(Opcode::FillDev, 5, 0, 0xc03, 777, 0xa5a5_0ff0),
        d(Opcode::FillHost, 6, 0, DATA + 0x14000 + 1, 999, 0x0102_0304),
        d(Opcode::Nop, 7, 0, 0, 100, 0),
    ]
}

fn ring_setup<D: Device>(f: &mut Fixture<D>) -> Result<RingDriver, ConformanceError> {
    let r = RingDriver::setup(&mut f.dev, &f.dma, SQ, RING, CQ, RING)?;
    f.dev.write_reg(offsets::IRQ_MASK, 0)?;
    Ok(r)
}

fn submit_all<D: Device>(
    f: &mut Fixture<D>,
    r: &mut RingDriver,
    descs: &[Desc],
) -> Result<(), ConformanceError> {
    for d in descs {
        r.submit(&mut f.dev, d)?;
    }
    Ok(())
}

/// Quiesces, saves, and resumes (when `resume`), until the saved state shows
/// a descriptor part-way through (`0 < CUR_DONE < CUR_LEN`). Returns that
/// state (the device is left quiesced), or `None` if the device finished
/// first (only acceptable for a self-running backend).
fn catch_in_flight<D: Device>(dev: &mut D) -> Result<Option<DeviceState>, ConformanceError> {
    for _ in 0..MAX_TRIES {
        dev.quiesce()?;
        let s = dev.save_state()?;
        let a = &s.arch;
        if a.cur_flags & 1 != 0 && a.cur_done > 0 && a.cur_done < a.cur_len {
            return Ok(Some(s));
        }
        if a.cnt_desc as usize >= workload().len() {
            break;
        }
        dev.resume()?;
        dev.advance(1)?;
    }
    if dev.info().self_running {
        return Ok(None);
    }
    Err(mismatch(
        "catch a descriptor in flight",
        "never saw 0 < CUR_DONE < CUR_LEN between steps",
    ))
}

fn devmem_page<D: Device>(dev: &mut D) -> Result<Vec<u8>, ConformanceError> {
    let mut b = vec![0; 4096];
    dev.devmem_read(0, &mut b)?;
    Ok(b)
}

/// The state words with the timing-dependent ones (timer) zeroed.
pub fn untimed(a: &ArchState) -> [u32; sw::WORDS] {
    let mut w = a.to_words();
    for (x, d) in w.iter_mut().zip(STATE_LAYOUT.iter()) {
        if d.timing {
            *x = 0;
        }
    }
    w
}

/// Snapshot → mutate (more work, registers, device memory) → restore →
/// the snapshot reads back equal, word for word and byte for byte.
pub fn snapshot_mutate_restore<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mut f = fixture(&mut factory)?;
    let mut r = ring_setup(&mut f)?;
    f.dev.write_reg(offsets::SCRATCH, 0x5eed_0001)?;
    let w = workload();
    r.run(&mut f.dev, &w[..3], MAX_UNITS)?;
    f.dev.quiesce()?;
    let s1 = f.dev.save_state()?;
    let m1 = devmem_page(&mut f.dev)?;
    // Mutate through normal operation.
    f.dev.resume()?;
    f.dev.write_reg(offsets::SCRATCH, 0xdead_beef)?;
    f.dev.write_reg(offsets::IRQ_MASK, 3)?;
    r.run(&mut f.dev, &w[3..], MAX_UNITS)?;
    f.dev.devmem_write(0x800, &[0x55; 64])?;
    f.dev.quiesce()?;
    let s2 = f.dev.save_state()?;
    if untimed(&s2.arch) == untimed(&s1.arch) {
        return Err(mismatch("mutate", "the state did not change"));
    }
    // Restore.
    f.dev.restore_state(&s1)?;
    f.dev.devmem_write(0, &m1)?;
    expect_eq("state after restore", f.dev.save_state()?, s1)?;
    expect_eq("device memory after restore", devmem_page(&mut f.dev)?, m1)?;
    Ok(())
}

/// While quiesced with a descriptor in flight: state words, guest memory and
/// the interrupt log do not change across `advance`, BAR reads and writes the
/// datasheet says are ignored.
pub fn frozen_while_quiesced<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mut f = fixture(&mut factory)?;
    let mut r = ring_setup(&mut f)?;
    f.dev.write_reg(offsets::IRQ_MASK, 3)?;
    submit_all(&mut f, &mut r, &workload())?;
    let caught = catch_in_flight(&mut f.dev)?;
    f.dev.quiesce()?;
    let s1 = f.dev.save_state()?;
    let g1 = f.mem.snapshot();
    let irqs = f.irq.raised().len();
    for _ in 0..10 {
        f.dev.advance(1000)?;
    }
    for off in (0..0x200).step_by(4) {
        f.dev.read_reg(off)?;
    }
    devmem_page(&mut f.dev)?;
    for (off, v) in [
        (offsets::SCRATCH, 0x1111_1111),
        (offsets::CTRL, 0),
        (offsets::IRQ_MASK, 0),
        (offsets::IRQ_STATUS, 3),
        (offsets::ERR_CODE, 0),
        (offsets::SQ_TAIL, 0),
        (offsets::CQ_HEAD, 1),
        (offsets::SQ_BASE_LO, 0x40),
    ] {
        f.dev.write_reg(off, v)?;
    }
    for _ in 0..10 {
        f.dev.advance(1000)?;
    }
    expect_eq("state while quiesced", f.dev.save_state()?, s1)?;
    expect_eq("guest memory while quiesced", f.mem.snapshot() == g1, true)?;
    expect_eq("interrupts while quiesced", f.irq.raised().len(), irqs)?;
    if caught.is_some() && s1.arch.cur_flags & 1 == 0 {
        return Err(mismatch("in flight", "the descriptor vanished"));
    }
    Ok(())
}

/// Save and restore need a quiesced device; `STATE_DATA` reads 0 otherwise.
pub fn save_requires_quiesce<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mut f = fixture(&mut factory)?;
    f.dev.write_reg(offsets::SCRATCH, 42)?;
    if !matches!(f.dev.save_state(), Err(DeviceError::NotQuiesced(_))) {
        return Err(mismatch("save while running", "was not refused"));
    }
    f.dev.write_reg(offsets::STATE_IDX, 0)?;
    expect_eq(
        "STATE_DATA while running",
        f.dev.read_reg(offsets::STATE_DATA)?,
        0,
    )?;
    f.dev.quiesce()?;
    let s = f.dev.save_state()?;
    f.dev.resume()?;
    if !matches!(f.dev.restore_state(&s), Err(DeviceError::NotQuiesced(_))) {
        return Err(mismatch("restore while running", "was not refused"));
    }
    expect_eq("SCRATCH", f.dev.read_reg(offsets::SCRATCH)?, 42)?;
    Ok(())
}

/// Each malformed state is refused with the datasheet's code and word; the
/// device stays quiesced, refuses `RESUME`, takes no step, and accepts the
/// good state afterwards.
pub fn bad_state_is_refused<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mut f = fixture(&mut factory)?;
    let mut r = ring_setup(&mut f)?;
    r.run(&mut f.dev, &workload()[..2], MAX_UNITS)?;
    f.dev.quiesce()?;
    let good = f.dev.save_state()?;
    type Corrupt = fn(&mut ArchState);
    let cases: [(Corrupt, StateErr, usize); 8] = [
        (|a| a.header ^= 0x100, StateErr::Header, sw::HEADER),
        (|a| a.irq_mask |= 4, StateErr::ReservedBits, sw::IRQ_MASK),
        (
            |a| a.sq_base_lo |= 8,
            StateErr::ReservedBits,
            sw::SQ_BASE_LO,
        ),
        (|a| a.cq_size = 48, StateErr::RingSize, sw::CQ_SIZE),
        (|a| a.sq_head = 16, StateErr::RingIndex, sw::SQ_HEAD),
        (|a| a.err_code = 0x42, StateErr::Value, sw::ERR_CODE),
        (|a| a.cur_len = 1, StateErr::Inflight, sw::CUR_LEN),
        (
            |a| {
                a.cur_flags = 1;
                a.cur_ctl = Opcode::FillDev.raw();
                a.cur_dst_hi = 1;
                a.cur_len = 4;
            },
            StateErr::Inflight,
            sw::CUR_DST_LO,
        ),
    ];
    let g1 = f.mem.snapshot();
    for (corrupt, code, word) in cases {
        let mut bad = good;
        corrupt(&mut bad.arch);
        match f.dev.restore_state(&bad) {
            Err(DeviceError::StateRejected(v)) if v.code == code && v.word == word => {}
            other => {
                return Err(mismatch(
                    "bad state",
                    format!("expected {} in word {word}, got {other:?}", code.name()),
                ));
            }
        }
        if f.dev.resume().is_ok() {
            return Err(mismatch("RESUME of a bad state", "was accepted"));
        }
        let st = f.dev.status()?;
        expect_eq(
            "STATUS after a refused RESUME",
            st & (Status::QUIESCED | Status::STATE_INVALID),
            Status::QUIESCED | Status::STATE_INVALID,
        )?;
        f.dev.advance(1000)?;
    }
    expect_eq("guest memory", f.mem.snapshot() == g1, true)?;
    f.dev.restore_state(&good)?;
    f.dev.resume()?;
    expect_eq(
        "STATE_INVALID after a good RESUME",
        f.dev.status()?.contains(Status::STATE_INVALID),
        false,
    )?;
    Ok(())
}

/// What a run of the workload leaves behind.
#[derive(Debug, PartialEq)]
struct Outcome {
    completions: Vec<Completion>,
    guest: Vec<u8>,
    devmem: Vec<u8>,
    state: [u32; sw::WORDS],
    irqs: (usize, usize),
}

fn finish<D: Device>(
    f: &mut Fixture<D>,
    r: &mut RingDriver,
    mut completions: Vec<Completion>,
    irqs_before: (usize, usize),
) -> Result<Outcome, ConformanceError> {
    completions.extend(r.wait_all(&mut f.dev, MAX_UNITS)?);
    f.dev.quiesce()?;
    let state = untimed(&f.dev.save_state()?.arch);
    Ok(Outcome {
        completions,
        guest: f.mem.snapshot(),
        devmem: devmem_page(&mut f.dev)?,
        state,
        irqs: (
            irqs_before.0 + f.irq.count(0),
            irqs_before.1 + f.irq.count(1),
        ),
    })
}

/// A state saved with a descriptor part-way through, restored (with device
/// memory) into a fresh instance sharing the same guest memory, then resumed,
/// finishes exactly like an uninterrupted run: same guest memory, device
/// memory, completions, interrupt messages and state words (timer aside).
pub fn restore_continues_inflight<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let w = workload();
    // Uninterrupted reference.
    let mut a = fixture(&mut factory)?;
    let mut ra = ring_setup(&mut a)?;
    submit_all(&mut a, &mut ra, &w)?;
    let want = finish(&mut a, &mut ra, Vec::new(), (0, 0))?;
    expect_eq("reference completions", want.completions.len(), w.len())?;

    // Interrupted: save mid-flight on B, restore into fresh C.
    let mut b = fixture(&mut factory)?;
    let mut rb = ring_setup(&mut b)?;
    submit_all(&mut b, &mut rb, &w)?;
    let caught = catch_in_flight(&mut b.dev)?;
    b.dev.quiesce()?;
    let saved = b.dev.save_state()?;
    if let Some(c) = caught {
        expect_eq("state caught in flight", saved, c)?;
    }
    let mut dm = vec![0; b.dev.info().bar2_size as usize];
    b.dev.devmem_read(0, &mut dm)?;
    let irqs_b = (b.irq.count(0), b.irq.count(1));
    // The completions B already wrote stay in the CQ, in guest memory that
    // C shares: the driver collects them from C's side.
    let irq_c = Arc::new(IrqLog::new());
    let mut c = Fixture {
        dev: factory(b.dma.clone(), irq_c.clone())?,
        dma: b.dma.clone(),
        mem: b.mem.clone(),
        irq: irq_c,
    };
    drop(b);
    c.dev.quiesce()?;
    c.dev.devmem_write(0, &dm)?;
    c.dev.restore_state(&saved)?;
    expect_eq("state read back after restore", c.dev.save_state()?, saved)?;
    c.dev.resume()?;
    let got = finish(&mut c, &mut rb, Vec::new(), irqs_b)?;
    expect_eq("completions", &got.completions, &want.completions)?;
    expect_eq(
        "interrupt messages (vector 0, vector 1)",
        got.irqs,
        want.irqs,
    )?;
    expect_eq("final state words", got.state, want.state)?;
    if got.devmem != want.devmem {
        return Err(mismatch(
            "device memory",
            "differs from the uninterrupted run",
        ));
    }
    if got.guest != want.guest {
        let i = got.guest.iter().zip(&want.guest).position(|(x, y)| x != y);
        return Err(mismatch(
            "guest memory",
            format!("first difference at offset {i:?}"),
        ));
    }
    Ok(())
}

/// A message pending (masked) when the device is saved is sent once, by the
/// destination, after `RESUME` and unmasking; the source never sends it.
pub fn pending_interrupt_migrates<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mut a = fixture(&mut factory)?;
    let mut r = ring_setup(&mut a)?;
    a.dev.write_reg(offsets::IRQ_MASK, 3)?;
    r.run(
        &mut a.dev,
        &[Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq()],
        MAX_UNITS,
    )?;
    a.dev.quiesce()?;
    a.dev.write_reg(offsets::IRQ_MASK, 0)?;
    let s = a.dev.save_state()?;
    expect_eq("IRQ_PENDING saved", s.arch.irq_pending, 1)?;
    expect_eq(
        "IRQ_MASK saved (unmask ignored while quiesced)",
        s.arch.irq_mask,
        3,
    )?;
    let mut b = fixture(&mut factory)?;
    b.dev.quiesce()?;
    b.dev.restore_state(&s)?;
    b.dev.resume()?;
    // A clocked device delivers a few cycles after the write: let it run.
    b.dev.run_until_idle(1000)?;
    expect_eq("sent while masked", b.irq.raised(), vec![])?;
    b.dev.write_reg(offsets::IRQ_MASK, 0)?;
    b.dev.advance(64)?;
    b.dev.run_until_idle(1000)?;
    expect_eq("sent after unmask", b.irq.raised(), vec![0])?;
    b.dev.run_until_idle(1000)?;
    b.dev.write_reg(offsets::IRQ_MASK, 0)?;
    expect_eq("sent once", b.irq.raised(), vec![0])?;
    expect_eq("source sent nothing", a.irq.raised(), vec![])?;
    Ok(())
}

/// A state from a device with another identity is refused and changes
/// nothing.
pub fn identity_mismatch_is_refused<D, F>(mut factory: F) -> Result<(), ConformanceError>
where
    D: Device,
    F: FnMut(DmaPort, Arc<IrqLog>) -> Result<D, DeviceError>,
{
    let mut f = fixture(&mut factory)?;
    f.dev.write_reg(offsets::SCRATCH, 7)?;
    f.dev.quiesce()?;
    let s = f.dev.save_state()?;
    let mut others = [s; 3];
    others[0].identity.devmem_pages *= 2;
    others[1].identity.rtl_version += 1 << 16;
    others[2].identity.vendor_id ^= 1;
    for mut o in others {
        o.arch.scratch = 8;
        if !matches!(
            f.dev.restore_state(&o),
            Err(DeviceError::IdentityMismatch { .. })
        ) {
            return Err(mismatch(
                "foreign state",
                format!("{:?} was not refused", o.identity),
            ));
        }
        expect_eq("state after a refused restore", f.dev.save_state()?, s)?;
    }
    // The same major.minor with another patch level loads.
    let mut patch = s;
    patch.identity.rtl_version ^= 1;
    f.dev.restore_state(&patch)?;
    f.dev.resume()?;
    expect_eq(
        "device still runs",
        f.dev.status()?.contains(Status::QUIESCED),
        false,
    )?;
    Ok(())
}

/// Runs one check and panics with its error chain: the body of the tests
/// [`conformance_tests!`](crate::conformance_tests) generates.
pub fn run_check(name: &str, r: Result<(), ConformanceError>) {
    if let Err(e) = r {
        panic!(
            "conformance check {name} failed: {}",
            crate::error_chain(&e)
        );
    }
}

/// Instantiates every conformance check as a `#[test]` for a factory
/// expression `|dma: DmaPort, irq: Arc<IrqLog>| -> Result<D, DeviceError>`,
/// evaluated afresh for each test. Use it inside a module of a test crate.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@one $factory, snapshot_mutate_restore);
        $crate::conformance_tests!(@one $factory, frozen_while_quiesced);
        $crate::conformance_tests!(@one $factory, save_requires_quiesce);
        $crate::conformance_tests!(@one $factory, bad_state_is_refused);
        $crate::conformance_tests!(@one $factory, restore_continues_inflight);
        $crate::conformance_tests!(@one $factory, pending_interrupt_migrates);
        $crate::conformance_tests!(@one $factory, identity_mismatch_is_refused);
    };
    (@one $factory:expr, $check:ident) => {
        #[test]
        fn $check() {
            $crate::conformance::run_check(
                stringify!($check),
                $crate::conformance::$check($factory),
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeDevice;

    fn fake(_: DmaPort, _: Arc<IrqLog>) -> Result<FakeDevice, DeviceError> {
        Ok(FakeDevice::new(4))
    }

    #[test]
    fn the_fake_passes_the_state_port_checks() {
        save_requires_quiesce(fake).unwrap();
        identity_mismatch_is_refused(fake).unwrap();
    }

    #[test]
    fn a_device_without_an_engine_fails_the_engine_checks() {
        assert!(restore_continues_inflight(fake).is_err());
        assert!(pending_interrupt_migrates(fake).is_err());
    }
}

//! Scenarios: plain serde data (so a failing one can be saved, replayed and
//! shrunk), a seeded generator, and the host-side driver that applies one to
//! a [`Lockstep`].

use serde::{Deserialize, Serialize};
use vfpga_device::ring::{Completion, Desc};
use vfpga_device::{Device, DeviceError};
use vfpga_regs::{Ctrl, consts, cpl, desc, offsets};

use crate::backend::SideDevice;
use crate::lockstep::{GuestLayout, Lockstep, RawAccess, Transplant, WaitAccess, fill};
use crate::slow::SlowSpec;

/// Version of the scenario format.
pub const SCENARIO_VERSION: u32 = 1;

/// IOVA of guest memory in generated scenarios (above 4 GiB, so the `_HI`
/// address words matter).
pub const GUEST_BASE: u64 = 0x1_0000_0000;
/// Guest memory size in generated scenarios.
pub const GUEST_LEN: u64 = 64 * 1024;
/// Offset of the SQ area in guest memory (up to 4 KiB).
const SQ_AREA: u64 = 0;
/// Offset of the CQ area (up to 4 KiB).
const CQ_AREA: u64 = 0x1000;
/// Offset of the data area.
const DATA_AREA: u64 = 0x2000;

/// One stimulus operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Program the rings (`CTRL` cleared, ring registers, `CTRL.ENABLE`);
    /// a base may be unmapped on purpose (fetch / completion-write faults).
    SetupRings {
        /// SQ base IOVA (low bits beyond the alignment are written too).
        sq_base: u64,
        /// SQ entries.
        sq_size: u32,
        /// CQ base IOVA.
        cq_base: u64,
        /// CQ entries.
        cq_size: u32,
    },
    /// Write descriptors into free SQ slots (as the reference's `SQ_HEAD`
    /// says) and ring the doorbell once.
    Submit {
        /// The descriptors (those that do not fit are dropped).
        descs: Vec<Desc>,
    },
    /// Consume new completions (from the reference's guest memory) and
    /// write `CQ_HEAD`.
    Consume,
    /// Run both sides until idle and compare.
    Run,
    /// Advance only the checked side by this many units.
    RunChecked {
        /// Units (cycles for the RTL, steps for the model).
        units: u64,
    },
    /// Quiesce (the checked side where it is; the reference aligned to it).
    Quiesce,
    /// Resume.
    Resume,
    /// Save the state of both (compared).
    Save,
    /// While quiesced: restore a saved state with one word changed on both,
    /// compare the verdicts, then restore the saved state.
    RestoreMutated {
        /// State word index.
        word: usize,
        /// Bits flipped.
        xor: u32,
        /// More words changed, `(index, bits flipped)`: a state with several
        /// faults (which one validation reports is compared).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        more: Vec<(usize, u32)>,
        /// Words then set, `(index, value)` (values at the limits).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        set: Vec<(usize, u32)>,
    },
    /// State transplant (quiesces first; both end quiesced).
    Transplant {
        /// Direction.
        direction: Transplant,
    },
    /// `CTRL.SOFT_RESET`.
    SoftReset,
    /// Write a BAR0 register by name.
    WriteReg {
        /// Register name (from `regmap.yaml`).
        reg: String,
        /// Value.
        value: u32,
    },
    /// Read a BAR0 register by name.
    ReadReg {
        /// Register name.
        reg: String,
    },
    /// Host write to device memory through BAR2 (may run beside DMA: the
    /// generator keeps it off the bytes DMA uses).
    DevmemWrite {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Seed of the data.
        seed: u64,
    },
    /// Read device memory through BAR2 (compared when aligned).
    DevmemRead {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Host write to guest memory (both sides settle first).
    HostWrite {
        /// Offset in guest memory.
        offset: u64,
        /// Length.
        len: u32,
        /// Seed of the data.
        seed: u64,
    },
    /// Read and clear the device-memory dirty bitmap (compared).
    TakeDirty,
    /// Start the DMA write log over a window.
    DmaLogStart {
        /// Window base IOVA.
        base: u64,
        /// Window pages.
        pages: u32,
    },
    /// Read and clear the DMA write log (compared).
    DmaLogTake,
    /// Stop the DMA write log.
    DmaLogStop,
    /// Hold the `nth` next distinct DMA access on both sides (slow memory
    /// only), run both into that wait, and issue `accesses` during it
    /// ([`Lockstep::dma_wait`]). A 32-bit write of `SQ_TAIL` or `CQ_HEAD`
    /// among them is a doorbell that keeps the rings as they are: it writes
    /// the driver's current tail or head, whatever value it holds, and is
    /// left out while the driver has no rings.
    DmaWait {
        /// Which access (1 = the next new one).
        nth: u64,
        /// MMIO issued during the wait.
        accesses: Vec<WaitAccess>,
    },
    /// Back-to-back MMIO after both sides settled ([`Lockstep::back_to_back`]):
    /// each access with the idle cycles before it (after the previous one
    /// was accepted; 0 = presented while the previous is being served).
    BackToBack {
        /// `(access, gap)` pairs.
        accesses: Vec<(WaitAccess, u32)>,
    },
    /// MMIO racing a running burst ([`Lockstep::racing_burst`]): write
    /// `descs` into free SQ slots (both sides settled), then ring the
    /// doorbell and issue `accesses` back to back while the checked side
    /// runs the descriptors (bitmap reads against the burst's marks).
    RacingBurst {
        /// The descriptors (those that do not fit are dropped).
        descs: Vec<Desc>,
        /// `(access, gap)` pairs after the doorbell.
        accesses: Vec<(WaitAccess, u32)>,
    },
    /// Requests presented as they are to the MMIO port, which the
    /// [`Device`] seam cannot express, from a settled point
    /// ([`Lockstep::raw_port`]): each answer compared with the datasheet's.
    RawPort {
        /// The requests, in order.
        accesses: Vec<RawAccess>,
    },
    /// Quiesce, restore the saved state with this timer value on both
    /// sides, and check that the checked side's quiesced timer reads it
    /// exactly ([`Lockstep::check_timer_restore`]).
    TimerRestore {
        /// The timer value restored (the high word matters: `TIMER_HI` is
        /// latched by the `TIMER_LO` read).
        timer: u64,
    },
    /// From a settled point: `DMA_THROTTLE` = `idle` on both sides, then
    /// `descs` submitted and run until settled (compared as ever); on the
    /// checked side, where it counts its cycles, the cycles that took are
    /// bounded by datasheet §5.5: at least `idle` per burst after the first
    /// (a burst moves at most 64 bytes: the bursts are at least the bytes
    /// `CNT_BYTES` grew by, over 64), and with `idle` 0 and fast memory at
    /// most [`THROTTLE_CYCLES_PER_BURST`] per burst plus
    /// [`THROTTLE_CYCLES_FIXED`]. `DMA_THROTTLE` is 0 again afterwards.
    ThrottleTiming {
        /// `DMA_THROTTLE.IDLE`.
        idle: u32,
        /// What runs (device-memory fills: no host memory in the bursts).
        descs: Vec<Desc>,
    },
    /// Hardware reset of both sides (settled first) followed at once by
    /// `accesses` back to back, presented on the RTL from the cycle the reset
    /// is released ([`Lockstep::reset_then`]).
    ResetThen {
        /// `(access, gap)` pairs.
        accesses: Vec<(WaitAccess, u32)>,
    },
    /// Hardware reset (the core's reset input) of both sides at `at`.
    HwReset {
        /// Where.
        at: ResetPoint,
    },
}

/// Where a hardware reset lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "point", rename_all = "kebab-case")]
pub enum ResetPoint {
    /// Both sides settled (idle).
    Settled,
    /// Wherever the previous operations left both aligned (after a quiesce,
    /// the step boundary the checked side stopped at); settled otherwise.
    Here,
    /// Inside the step that waits for the `nth` next distinct DMA access
    /// (slow memory only; nothing happens when no side reaches it).
    DmaWait {
        /// Which access (1 = the next new one).
        nth: u64,
    },
}

/// A replayable scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// [`SCENARIO_VERSION`].
    pub version: u32,
    /// Seed it was generated from.
    pub seed: u64,
    /// Device memory in pages.
    pub devmem_pages: u32,
    /// Guest memory of each side.
    pub guest: GuestLayout,
    /// The operations.
    pub ops: Vec<Op>,
}

impl Scenario {
    /// The scenario for a pair whose DMA does not go through the lockstep's
    /// guest memory (the simulated board reaches it through its file, as a
    /// board reaches guest memory through the IOMMU): fast memory, and
    /// without the operations that hold a DMA access (`DmaWait`, a reset
    /// inside a DMA wait).
    pub fn without_slow_memory(mut self) -> Scenario {
        self.guest.slow = None;
        self.ops.retain(|op| {
            !matches!(
                op,
                Op::DmaWait { .. }
                    | Op::HwReset {
                        at: ResetPoint::DmaWait { .. }
                    }
            )
        });
        self
    }
}

/// Host-side driver state (what a guest driver keeps).
#[derive(Debug, Clone, Default)]
struct Driver {
    rings: Option<Rings>,
}

#[derive(Debug, Clone, Copy)]
struct Rings {
    sq_base: u64,
    sq_size: u32,
    cq_base: u64,
    cq_size: u32,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
}

/// What a scenario run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunStats {
    /// Scenario operations applied.
    pub scenario_ops: u64,
    /// Lockstep operations (device-level stimulus).
    pub operations: u64,
    /// Operations after which effects were compared.
    pub compared: u64,
    /// State transplants.
    pub transplants: u64,
    /// Completions consumed by the driver.
    pub completions: u64,
    /// The scenario's guest memory is slow (DMA answers pend).
    #[serde(default)]
    pub slow_memory: bool,
    /// DMA waits both sides were brought into.
    #[serde(default)]
    pub dma_waits: u64,
    /// MMIO accesses issued during those waits.
    #[serde(default)]
    pub wait_accesses: u64,
    /// Hardware resets applied.
    #[serde(default)]
    pub hw_resets: u64,
    /// Of those, inside a step waiting for DMA.
    #[serde(default)]
    pub hw_resets_in_step: u64,
    /// Back-to-back MMIO sequences.
    #[serde(default)]
    pub back_to_back: u64,
    /// Accesses in them.
    #[serde(default)]
    pub back_to_back_accesses: u64,
    /// MMIO sequences racing a running burst.
    #[serde(default)]
    pub racing_bursts: u64,
    /// Accesses in them (the doorbell included).
    #[serde(default)]
    pub racing_accesses: u64,
    /// Of those, `DIRTY_BITS`/`DMALOG_BITS` reads (read-and-clear against
    /// the burst's marks).
    #[serde(default)]
    pub racing_bitmap_reads: u64,
    /// Pages those reads returned on the checked side that the reference
    /// (reading before its first step) did not: marks read mid-burst.
    #[serde(default)]
    pub racing_marks_mid_burst: u64,
    /// Raw port accesses compared with the datasheet's answer.
    #[serde(default)]
    pub raw_port_accesses: u64,
    /// Throttle timings bounded on the checked side ([`Op::ThrottleTiming`]).
    #[serde(default)]
    pub throttle_timings: u64,
}

/// Upper bound on the cycles one unthrottled 64-byte device-memory fill
/// burst may take on the RTL with fast memory ([`Op::ThrottleTiming`]):
/// a burst is a few cycles, and back-pressure drops `ready` on at most half
/// of them; far below the 65,535-cycle gap a throttle can leave.
pub const THROTTLE_CYCLES_PER_BURST: u64 = 200;
/// Fixed part of that bound: the descriptor fetch, the completion write
/// and the interrupt of a run, with margin.
pub const THROTTLE_CYCLES_FIXED: u64 = 4000;

fn reg_offset(name: &str) -> Result<u32, DeviceError> {
    vfpga_regs::REGISTERS
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.offset)
        .ok_or_else(|| DeviceError::Device(format!("scenario names unknown register {name}")))
}

/// What ends every scenario, and every phase before the next (which then
/// resumes): settle, drain both bitmaps, quiesce, save.
fn finale() -> [Op; 6] {
    [
        Op::Run,
        Op::Consume,
        Op::TakeDirty,
        Op::DmaLogTake,
        Op::Quiesce,
        Op::Save,
    ]
}

/// Applies `sc` to `ls`, then a final settle and comparison of the bitmaps,
/// the DMA log and the quiesced state. Stops at the first error; a
/// divergence is then in [`Lockstep::divergence`]. Where the checked side
/// has the pins and counts cycles (the RTL): its `TIMER` is checked after
/// power-on and every reset ([`Lockstep::check_timer_since`]), and its INTx
/// level after every operation ([`Lockstep::check_intx`]).
pub fn apply<A: Device + SideDevice, B: Device + SideDevice>(
    ls: &mut Lockstep<A, B>,
    sc: &Scenario,
    stats: &mut RunStats,
) -> Result<(), DeviceError> {
    let mut drv = Driver::default();
    stats.slow_memory = sc.guest.slow.is_some();
    // Power-on is a reset too: the checked side's cycles since then.
    let since = ls.checked_cycles()?.map(|_| 0);
    ls.check_timer_since(since)?;
    let finale = finale();
    for (i, op) in sc.ops.iter().chain(finale.iter()).enumerate() {
        ls.note(format!("scenario op {i}: {}", op_summary(op)));
        stats.scenario_ops += 1;
        apply_op(ls, &mut drv, op, stats)?;
        ls.check_intx()?;
    }
    Ok(())
}

/// One line describing an operation.
pub fn op_summary(op: &Op) -> String {
    match op {
        Op::Submit { descs } => format!("submit {} descriptors", descs.len()),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn apply_op<A: Device + SideDevice, B: Device + SideDevice>(
    ls: &mut Lockstep<A, B>,
    drv: &mut Driver,
    op: &Op,
    stats: &mut RunStats,
) -> Result<(), DeviceError> {
    match op {
        Op::SetupRings {
            sq_base,
            sq_size,
            cq_base,
            cq_size,
        } => {
            if ls.is_quiesced()? {
                return Ok(());
            }
            // The host rewrites ring memory: both sides at the same point first.
            ls.settle()?;
            // Zero the CQ (when mapped) so stale phases cannot match.
            let cq_bytes = u64::from(*cq_size) * cpl::SIZE as u64;
            if cq_bytes > 0 && ls.reference().dma.is_mapped(*cq_base & !15, cq_bytes) {
                ls.host_write(*cq_base & !15, &vec![0u8; cq_bytes as usize])?;
            }
            ls.write_reg(offsets::CTRL, 0)?;
            ls.write_reg(offsets::SQ_BASE_LO, *sq_base as u32)?;
            ls.write_reg(offsets::SQ_BASE_HI, (*sq_base >> 32) as u32)?;
            ls.write_reg(offsets::SQ_SIZE, *sq_size)?;
            ls.write_reg(offsets::CQ_BASE_LO, *cq_base as u32)?;
            ls.write_reg(offsets::CQ_BASE_HI, (*cq_base >> 32) as u32)?;
            ls.write_reg(offsets::CQ_SIZE, *cq_size)?;
            ls.write_reg(offsets::CTRL, Ctrl::ENABLE.bits())?;
            // The driver's view is what the device took.
            let rd = |ls: &mut Lockstep<A, B>, lo, hi| -> Result<u64, DeviceError> {
                Ok(u64::from(ls.read_reg(lo)?) | (u64::from(ls.read_reg(hi)?) << 32))
            };
            let sq_base = rd(ls, offsets::SQ_BASE_LO, offsets::SQ_BASE_HI)?;
            let cq_base = rd(ls, offsets::CQ_BASE_LO, offsets::CQ_BASE_HI)?;
            let sq_size = ls.read_reg(offsets::SQ_SIZE)?;
            let cq_size = ls.read_reg(offsets::CQ_SIZE)?;
            let sq_tail = ls.read_reg(offsets::SQ_TAIL)?;
            let cq_head = ls.read_reg(offsets::CQ_HEAD)?;
            let tail = ls.read_reg(offsets::CQ_TAIL)?;
            let phase = vfpga_regs::fields::cq_tail::PHASE.get(tail) != 0;
            let idx = vfpga_regs::fields::cq_tail::INDEX.get(tail);
            drv.rings = (sq_size >= 2 && cq_size >= 2).then_some(Rings {
                sq_base,
                sq_size,
                cq_base,
                cq_size,
                sq_tail,
                cq_head,
                phase: if idx >= cq_head { phase } else { !phase },
            });
        }
        Op::Submit { descs } => {
            let Some(r) = drv.rings.as_mut() else {
                return Ok(());
            };
            if ls.is_quiesced()? {
                return Ok(());
            }
            let head = ls.read_reg(offsets::SQ_HEAD)?;
            let mut room = (head + r.sq_size - r.sq_tail - 1) % r.sq_size;
            let mut wrote = false;
            for d in descs {
                if room == 0 {
                    break;
                }
                let at = r
                    .sq_base
                    .wrapping_add(u64::from(r.sq_tail) * desc::SIZE as u64);
                if ls.reference().dma.is_mapped(at, desc::SIZE as u64) {
                    ls.host_write(at, &d.to_bytes())?;
                }
                r.sq_tail = (r.sq_tail + 1) % r.sq_size;
                room -= 1;
                wrote = true;
            }
            if wrote {
                let t = r.sq_tail;
                ls.write_reg(offsets::SQ_TAIL, t)?;
            }
        }
        Op::Consume => {
            let Some(r) = drv.rings.as_mut() else {
                return Ok(());
            };
            if ls.is_quiesced()? {
                return Ok(());
            }
            let mut n = 0;
            loop {
                let at = r
                    .cq_base
                    .wrapping_add(u64::from(r.cq_head) * cpl::SIZE as u64);
                let mut b = [0u8; cpl::SIZE];
                if ls.host_read(at, &mut b).is_err() {
                    break;
                }
                let c = Completion::from_bytes(&b);
                if c.phase != r.phase || n >= r.cq_size {
                    break;
                }
                n += 1;
                r.cq_head = (r.cq_head + 1) % r.cq_size;
                if r.cq_head == 0 {
                    r.phase = !r.phase;
                }
            }
            if n > 0 {
                stats.completions += u64::from(n);
                let h = r.cq_head;
                ls.write_reg(offsets::CQ_HEAD, h)?;
            }
        }
        Op::Run => {
            ls.settle()?;
        }
        Op::RunChecked { units } => {
            ls.run_checked(*units)?;
        }
        Op::Quiesce => ls.quiesce()?,
        Op::Resume => {
            // A refused resume (equal on both sides) leaves both quiesced.
            match ls.resume() {
                Ok(()) => {}
                Err(e @ DeviceError::StateRejected(_)) if ls.divergence().is_none() => {
                    tracing::debug!(%e, "resume refused on both sides");
                }
                Err(e) => return Err(e),
            }
        }
        Op::Save => {
            if ls.is_quiesced()? {
                ls.save_state()?;
            }
        }
        Op::RestoreMutated {
            word,
            xor,
            more,
            set,
        } => {
            if !ls.is_quiesced()? {
                return Ok(());
            }
            let s = ls.save_state()?;
            let mut w = s.arch.to_words();
            for (i, x) in std::iter::once((*word, *xor)).chain(more.iter().copied()) {
                if let Some(v) = w.get_mut(i) {
                    *v ^= x;
                }
            }
            for (i, x) in set {
                if let Some(v) = w.get_mut(*i) {
                    *v = *x;
                }
            }
            let mut bad = s;
            bad.arch = vfpga_regs::ArchState::from_words(&w);
            let r = ls.restore_state(&bad);
            if ls.divergence().is_some() {
                return r;
            }
            let refused = match r {
                Ok(()) => false,
                Err(DeviceError::StateRejected(_)) => true,
                Err(e) => return Err(e),
            };
            // A refused state is refused by RESUME too, which sets
            // STATUS.STATE_INVALID (the next good RESUME clears it).
            if refused {
                match ls.resume() {
                    Err(DeviceError::StateRejected(_)) if ls.divergence().is_none() => {}
                    Err(e) => return Err(e),
                    Ok(()) => {
                        return Err(DeviceError::Device(
                            "a state restore refused was resumed on both sides".into(),
                        ));
                    }
                }
            }
            // What the refusal (or the acceptance) left visible: STATUS
            // (STATE_INVALID) and STATE_ERR (compared: no side effects).
            ls.read_reg(offsets::STATUS)?;
            ls.read_reg(offsets::STATE_ERR)?;
            ls.restore_state(&s)?;
            ls.read_reg(offsets::STATUS)?;
        }
        Op::Transplant { direction } => {
            ls.transplant(*direction)?;
        }
        Op::SoftReset => {
            let since = ls.checked_cycles()?;
            ls.soft_reset()?;
            drv.rings = None;
            ls.check_timer_since(since)?;
        }
        Op::WriteReg { reg, value } => {
            let o = reg_offset(reg)?;
            let since = ls.checked_cycles()?;
            ls.write_reg(o, *value)?;
            if o == offsets::CTRL && *value & Ctrl::SOFT_RESET.bits() != 0 {
                drv.rings = None;
                if !ls.is_quiesced()? {
                    ls.settle()?;
                }
                ls.check_timer_since(since)?;
            }
        }
        Op::ReadReg { reg } => {
            let o = reg_offset(reg)?;
            ls.read_reg(o)?;
        }
        Op::DevmemWrite { offset, len, seed } => {
            let size = ls.info().bar2_size;
            if offset.saturating_add(u64::from(*len)) <= size {
                ls.devmem_write(*offset, &fill(*seed, *len as usize))?;
            }
        }
        Op::DevmemRead { offset, len } => {
            let size = ls.info().bar2_size;
            if offset.saturating_add(u64::from(*len)) <= size {
                let mut b = vec![0u8; *len as usize];
                ls.devmem_read(*offset, &mut b)?;
            }
        }
        Op::HostWrite { offset, len, seed } => {
            let g = ls_guest(ls);
            if offset.saturating_add(u64::from(*len)) <= g.len {
                if !ls.is_quiesced()? {
                    ls.settle()?;
                }
                ls.host_write(g.base + offset, &fill(*seed, *len as usize))?;
            }
        }
        Op::TakeDirty => {
            ls.take_dirty_pages()?;
        }
        Op::DmaLogStart { base, pages } => ls.dma_log_start(*base, *pages)?,
        Op::DmaLogTake => {
            ls.dma_log_take()?;
        }
        Op::DmaLogStop => ls.dma_log_stop()?,
        Op::DmaWait { nth, accesses } => {
            let accesses = doorbells_now(drv, accesses);
            let r = ls.dma_wait(*nth, &accesses)?;
            stats.dma_waits += u64::from(r.reached);
            stats.wait_accesses += u64::from(r.accesses);
        }
        Op::BackToBack { accesses } => {
            ls.back_to_back(accesses)?;
            stats.back_to_back += 1;
            stats.back_to_back_accesses += accesses.len() as u64;
        }
        Op::RacingBurst { descs, accesses } => {
            let Some(r) = drv.rings.as_mut() else {
                return Ok(());
            };
            if ls.is_quiesced()? {
                return Ok(());
            }
            // Descriptors are written with both sides at rest; the doorbell
            // is the first racing access.
            ls.settle()?;
            let head = ls.read_reg(offsets::SQ_HEAD)?;
            let mut room = (head + r.sq_size - r.sq_tail - 1) % r.sq_size;
            let mut wrote = false;
            for d in descs {
                if room == 0 {
                    break;
                }
                let at = r
                    .sq_base
                    .wrapping_add(u64::from(r.sq_tail) * desc::SIZE as u64);
                if ls.reference().dma.is_mapped(at, desc::SIZE as u64) {
                    ls.host_write(at, &d.to_bytes())?;
                }
                r.sq_tail = (r.sq_tail + 1) % r.sq_size;
                room -= 1;
                wrote = true;
            }
            if !wrote {
                return Ok(());
            }
            let mut seq = vec![(reg_access("SQ_TAIL", 4, Some(u64::from(r.sq_tail))), 0)];
            seq.extend(accesses.iter().cloned());
            let rep = ls.racing_burst(&seq)?;
            stats.racing_bursts += 1;
            stats.racing_accesses += seq.len() as u64;
            stats.racing_bitmap_reads += rep.bitmap_reads;
            stats.racing_marks_mid_burst += rep.marks_mid_burst;
        }
        Op::TimerRestore { timer } => {
            ls.quiesce()?;
            ls.check_timer_restore(*timer)?;
        }
        Op::ThrottleTiming { idle, descs } => {
            if drv.rings.is_none() || ls.is_quiesced()? {
                return Ok(());
            }
            ls.settle()?;
            ls.write_reg(offsets::DMA_THROTTLE, *idle)?;
            let b0 = ls.read_reg(offsets::CNT_BYTES_LO)?;
            let c0 = ls.checked_cycles()?;
            apply_op(
                ls,
                drv,
                &Op::Submit {
                    descs: descs.clone(),
                },
                stats,
            )?;
            ls.settle()?;
            let c1 = ls.checked_cycles()?;
            let b1 = ls.read_reg(offsets::CNT_BYTES_LO)?;
            ls.write_reg(offsets::DMA_THROTTLE, 0)?;
            let (Some(c0), Some(c1)) = (c0, c1) else {
                return Ok(());
            };
            let bursts = u64::from(b1.wrapping_sub(b0)).div_ceil(64);
            let took = c1.saturating_sub(c0);
            let least = bursts.saturating_sub(1) * u64::from(*idle);
            let most = (*idle == 0 && !stats.slow_memory)
                .then_some(bursts * THROTTLE_CYCLES_PER_BURST + THROTTLE_CYCLES_FIXED);
            if took < least || most.is_some_and(|m| took > m) {
                return Err(ls.diverge_outcome(
                    "cycles of a run under DMA_THROTTLE (datasheet §5.5)",
                    format!(
                        "{bursts} bursts with IDLE {idle}: at least {least}{}",
                        most.map(|m| format!(", at most {m}")).unwrap_or_default()
                    ),
                    format!("{took} cycles"),
                ));
            }
            stats.throttle_timings += 1;
        }
        Op::ResetThen { accesses } => {
            let since = ls.checked_cycles()?;
            ls.reset_then(accesses)?;
            drv.rings = None;
            stats.hw_resets += 1;
            stats.back_to_back += 1;
            stats.back_to_back_accesses += accesses.len() as u64;
            ls.check_timer_since(since)?;
        }
        Op::RawPort { accesses } => {
            stats.raw_port_accesses += ls.raw_port(accesses)?;
        }
        Op::HwReset { at } => {
            let since = ls.checked_cycles()?;
            match at {
                ResetPoint::Settled => {
                    if !ls.is_quiesced()? {
                        ls.settle()?;
                    }
                    ls.hardware_reset()?;
                    stats.hw_resets += 1;
                }
                ResetPoint::Here => {
                    ls.hardware_reset()?;
                    stats.hw_resets += 1;
                }
                ResetPoint::DmaWait { nth } => {
                    if ls.reset_in_dma_wait(*nth)? {
                        stats.hw_resets += 1;
                        stats.hw_resets_in_step += 1;
                    } else {
                        return Ok(());
                    }
                }
            }
            drv.rings = None;
            ls.check_timer_since(since)?;
        }
    }
    Ok(())
}

/// `accesses` with each 32-bit `SQ_TAIL`/`CQ_HEAD` write set to the
/// driver's current tail/head (a doorbell that changes nothing: the ring
/// stays consistent, datasheet §5.3 serves it during a DMA wait), or left
/// out when the driver has no rings.
fn doorbells_now(drv: &Driver, accesses: &[WaitAccess]) -> Vec<WaitAccess> {
    let bell = |a: &WaitAccess, o: u32| {
        !a.bar2 && a.len == 4 && a.write.is_some() && a.offset == u64::from(o)
    };
    accesses
        .iter()
        .filter_map(|a| {
            let mut a = a.clone();
            if bell(&a, offsets::SQ_TAIL) {
                a.write = Some(u64::from(drv.rings?.sq_tail));
            } else if bell(&a, offsets::CQ_HEAD) {
                a.write = Some(u64::from(drv.rings?.cq_head));
            }
            Some(a)
        })
        .collect()
}

fn ls_guest<A: Device, B: Device>(ls: &mut Lockstep<A, B>) -> GuestLayout {
    let m = ls.reference().dma.mappings();
    let (base, len) = m.first().copied().unwrap_or((0, 0));
    GuestLayout {
        base,
        len,
        fill_seed: 0,
        slow: None,
    }
}

// ---------------------------------------------------------------------------
// The generator.

/// A small seeded generator (splitmix64): scenarios depend on nothing but
/// their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `pct`%.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Generates the scenario of `seed` for a device with `devmem_pages` pages
/// (at least 2: the last page is where the host writes while DMA runs).
pub fn generate(seed: u64, devmem_pages: u32) -> Scenario {
    let mut g = Gen {
        r: Rng::new(seed),
        devmem: u64::from(devmem_pages) * u64::from(consts::PAGE_SIZE),
        tag: 0,
        slow: None,
        aux: Rng::new(seed ^ 0x6175_7869_6c69_6172),
    };
    // Half the scenarios get memory that answers later (DMA by message).
    if g.r.pct(50) {
        g.slow = Some(SlowSpec {
            seed: g.r.next_u64(),
            pct: g.r.pick(&[10u8, 30, 60, 100]),
            max_pends: g.r.pick(&[1u32, 3, 8]),
        });
    }
    let mut ops = Vec::new();
    ops.push(g.setup_rings());
    ops.push(Op::WriteReg {
        reg: "IRQ_MASK".into(),
        value: g.r.pick(&[0, 0, 0, 1, 2, 3]),
    });
    if g.r.pct(50) {
        ops.push(g.dma_log_start());
    }
    let n = 8 + g.r.below(40);
    for _ in 0..n {
        g.one(&mut ops);
    }
    // Phase 2, from a generator of its own: phase 1 (with its own finale)
    // stays exactly what earlier versions generated for this seed, so a
    // divergence they found is still found.
    g.next_phase(&mut ops, seed, 2);
    ops.push(g.setup_rings());
    for _ in 0..4 + g.r.below(8) {
        g.phase2(&mut ops);
    }
    // Phase 3, likewise after phase 2's own finale: the state port and the
    // device-memory port at their edges.
    g.next_phase(&mut ops, seed, 3);
    for _ in 0..2 + g.r.below(4) {
        if g.r.pct(50) {
            g.state_port(&mut ops);
        } else {
            g.devmem_port(&mut ops);
        }
    }
    // Phase 4, likewise: while quiesced, a write of STATE_DATA with
    // STATE_IDX past the last word (ignored; the index stays), and a
    // restore whose state is refused for two reasons (§9.3 names the
    // first).
    g.next_phase(&mut ops, seed, 4);
    g.phase4(&mut ops);
    // Phase 5, likewise: requests on the MMIO port that the Device seam
    // cannot express, between ordinary accesses.
    g.next_phase(&mut ops, seed, 5);
    for _ in 0..1 + g.r.below(3) {
        let op = g.raw_port();
        ops.push(op);
        if g.r.pct(50) {
            ops.push(Op::TakeDirty);
        }
    }
    // A quiesced timer restored with a high word (a run never counts that
    // far), read back, then running on from there.
    let timer = (1 + g.r.below(0xffff)) << 32 | g.r.below(1 << 32);
    ops.extend([Op::TimerRestore { timer }, Op::Resume]);
    g.reset_then_bitmaps(&mut ops);
    // Phase 6, likewise: the DMA rate limit's timing. A throttled run
    // (each burst's gap paid), then a reset in the middle of a long gap
    // and an unthrottled run after it (the reset ends the gap, §5.5).
    g.r = Rng::new(seed ^ 0x7068_6173_6536);
    g.throttle_timing(&mut ops);
    Scenario {
        version: SCENARIO_VERSION,
        seed,
        devmem_pages,
        guest: GuestLayout {
            base: GUEST_BASE,
            len: GUEST_LEN,
            fill_seed: seed,
            slow: g.slow,
        },
        ops,
    }
}

struct Gen {
    r: Rng,
    devmem: u64,
    tag: u32,
    slow: Option<SlowSpec>,
    /// Draws of additions made after the campaign (doorbells during a DMA
    /// wait): a stream of their own, so that what `r` generates, and every
    /// earlier kill, stays as it was.
    aux: Rng,
}

/// A BAR0 access by register name (offsets come from the generated map).
fn reg_access(name: &str, len: u8, write: Option<u64>) -> WaitAccess {
    WaitAccess {
        bar2: false,
        offset: reg_offset(name).map_or(0, u64::from),
        len,
        write,
    }
}

impl Gen {
    fn setup_rings(&mut self) -> Op {
        let mut sq_size = self.r.pick(&[2u32, 4, 4, 8, 8, 16, 32]);
        let mut cq_size = self.r.pick(&[2u32, 4, 4, 8, 16]);
        // Sometimes a size the device must refuse (not a power of two, above
        // MAX_RING_ENTRIES) or 0 (ring off): the write is ignored or turns
        // the ring off, and the driver then has no rings.
        if self.r.pct(6) {
            let bad = self
                .r
                .pick(&[0u32, 1, 3, 6, 24, 2 * consts::MAX_RING_ENTRIES]);
            if self.r.pct(50) {
                sq_size = bad;
            } else {
                cq_size = bad;
            }
        }
        let sq_slots = (4096 / desc::SIZE as u64).saturating_sub(u64::from(sq_size));
        let cq_slots = (4096 / cpl::SIZE as u64).saturating_sub(u64::from(cq_size));
        let mut sq_base = GUEST_BASE + SQ_AREA + self.r.below(sq_slots + 1) * desc::SIZE as u64;
        let mut cq_base = GUEST_BASE + CQ_AREA + self.r.below(cq_slots + 1) * cpl::SIZE as u64;
        if self.r.pct(10) {
            sq_base |= self.r.below(32); // low bits the device drops
        }
        if self.r.pct(4) {
            sq_base = GUEST_BASE + GUEST_LEN + 0x1000 * self.r.below(4); // fetch fault
        }
        if self.r.pct(4) {
            cq_base = GUEST_BASE - 0x1000; // completion write fault
        }
        Op::SetupRings {
            sq_base,
            sq_size,
            cq_base,
            cq_size,
        }
    }

    fn dma_log_start(&mut self) -> Op {
        let base = GUEST_BASE + self.r.pick(&[0u64, 0, 0x2000, 0x8000]);
        let pages = self.r.pick(&[1u32, 4, 8, 16, 16, 64]);
        Op::DmaLogStart { base, pages }
    }

    fn len(&mut self) -> u32 {
        match self.r.below(20) {
            0 => 0,
            1 => consts::MAX_DESC_LEN + 1,
            2..=4 => 1 + self.r.below(8) as u32,
            5..=6 => self.r.pick(&[64u32, 128, 4096, 4095, 4097]),
            7..=9 => self.r.below(5000) as u32,
            _ => self.r.below(700) as u32,
        }
    }

    /// A host address for `len` bytes: mostly inside the data area, sometimes
    /// outside mapped memory or straddling its end.
    fn host(&mut self, len: u32) -> u64 {
        let l = u64::from(len).min(GUEST_LEN - DATA_AREA);
        match self.r.below(25) {
            0 => GUEST_BASE + GUEST_LEN - l / 2 - 1, // straddles the end
            1 => 0x1000 + self.r.below(0x1000),      // unmapped
            _ => GUEST_BASE + DATA_AREA + self.r.below(GUEST_LEN - DATA_AREA - l + 1),
        }
    }

    /// A device-memory offset for `len` bytes, off the last page (where the
    /// host writes while DMA runs); sometimes out of range.
    fn dev(&mut self, len: u32) -> u64 {
        let limit = self.devmem - u64::from(consts::PAGE_SIZE);
        let l = u64::from(len);
        match self.r.below(20) {
            0 => self.devmem.saturating_sub(l / 2),
            1 => u64::MAX - self.r.below(64),
            _ if l <= limit => self.r.below(limit - l + 1),
            _ => self.devmem.saturating_sub(l / 2),
        }
    }

    fn desc(&mut self) -> Desc {
        let opcode = match self.r.below(24) {
            0 => self.r.pick(&[7u8, 8, 0x80, 0xff]),
            1 => 0,
            n => 1 + (n % 6) as u8,
        };
        let mut len = self.len();
        if len > consts::MAX_DESC_LEN {
            // BAD_DESC: keep it.
        } else if len as u64 > GUEST_LEN - DATA_AREA {
            len = (GUEST_LEN - DATA_AREA) as u32;
        }
        let (src, dst) = match opcode {
            1 => (self.host(len), self.dev(len)),
            2 => (self.dev(len), self.host(len)),
            3 => {
                let s = self.host(len);
                let d = if self.r.pct(15) {
                    s.wrapping_add(self.r.below(96)) // overlapping copy
                } else {
                    self.host(len)
                };
                (s, d)
            }
            4 => (self.host(len), 0),
            5 => (0, self.dev(len)),
            6 => (0, self.host(len)),
            _ => (self.r.next_u64(), self.r.next_u64()),
        };
        self.tag += 1;
        Desc {
            opcode,
            irq: self.r.pct(50),
            rsvd: u32::from(self.r.pct(4)),
            tag: self.tag,
            src,
            dst,
            len,
            pattern: if self.r.pct(30) {
                0
            } else {
                self.r.next_u64() as u32
            },
        }
    }

    /// MMIO during a DMA wait: accesses §5.3 serves during the wait, and
    /// sometimes one that must wait for the step (last: it ends the wait).
    fn wait_accesses(&mut self) -> Vec<WaitAccess> {
        let mut v = Vec::new();
        for _ in 0..self.r.below(5) {
            v.push(match self.r.below(10) {
                0..=4 => {
                    let reg = self.r.pick(&[
                        "STATUS",
                        "SQ_HEAD",
                        "SQ_TAIL",
                        "CQ_TAIL",
                        "CQ_HEAD",
                        "CNT_DESC",
                        "CNT_ERR",
                        "CNT_BYTES_LO",
                        "ERR_CODE",
                        "ERR_ADDR_LO",
                        "IRQ_STATUS",
                        "IRQ_PENDING",
                        "IRQ_MASK",
                        "CTRL",
                        "SCRATCH",
                        "DIRTY_SEL",
                        "DMALOG_CTRL",
                        "STATE_IDX",
                    ]);
                    reg_access(reg, 4, None)
                }
                5..=6 => {
                    let reg = self.r.pick(&[
                        "ERR_ADDR_LO",
                        "SQ_BASE_LO",
                        "CNT_BYTES_LO",
                        "SQ_TAIL",
                        "IRQ_STATUS",
                    ]);
                    reg_access(reg, 8, None)
                }
                7 => reg_access("SCRATCH", 4, Some(self.r.next_u64() & 0xffff_ffff)),
                8 => reg_access("IRQ_MASK", 4, Some(self.r.below(4))),
                _ => {
                    if self.r.pct(50) {
                        reg_access("IRQ_STATUS", 4, Some(self.r.below(4)))
                    } else {
                        // IRQ_STATUS and IRQ_MASK as one 64-bit write.
                        reg_access(
                            "IRQ_STATUS",
                            8,
                            Some(self.r.below(4) | (self.r.below(4) << 32)),
                        )
                    }
                }
            });
        }
        // A doorbell (SQ_TAIL or CQ_HEAD, the driver's current value: see
        // `Op::DmaWait`), served during the wait like the accesses above.
        if self.aux.pct(50) {
            let reg = if self.aux.pct(50) {
                "SQ_TAIL"
            } else {
                "CQ_HEAD"
            };
            let at = self.aux.below(v.len() as u64 + 1) as usize;
            v.insert(at, reg_access(reg, 4, Some(0)));
        }
        if self.r.pct(45) {
            v.push(match self.r.below(12) {
                0 | 1 => reg_access("DIRTY_BITS", 4, None),
                2 => reg_access("DMALOG_BITS", 4, None),
                3 => reg_access("STATE_DATA", 4, None),
                4 => reg_access("DIRTY_SEL", 8, None), // DIRTY_BITS in the high half
                5 => reg_access("ERR_CODE", 4, Some(0)),
                6 => reg_access("CTRL", 4, Some(self.r.pick(&[0u64, 1]))),
                7 => reg_access("DIRTY_SEL", 4, Some(self.r.below(4))),
                8 => reg_access("DMALOG_CTRL", 4, Some(self.r.below(2))),
                9 => reg_access("STATE_CTRL", 4, Some(1)),
                10 => reg_access("DMA_THROTTLE", 4, Some(self.small_throttle().into())),
                _ => WaitAccess {
                    bar2: true,
                    offset: self.r.below(self.devmem / 8) * 8,
                    len: 8,
                    write: None,
                },
            });
        }
        v
    }

    /// A back-to-back sequence: select a dirty group, write BAR2 in it, read
    /// `DIRTY_BITS` and the written word at once, and a few more.
    fn back_to_back(&mut self) -> Op {
        let pages = self.devmem / u64::from(consts::PAGE_SIZE);
        let mut v = Vec::new();
        let gap = |r: &mut Rng| r.pick(&[0u32, 0, 0, 0, 1, 2, 3, 7]);
        for _ in 0..1 + self.r.below(3) {
            let page = self.r.below(pages);
            let word = page * u64::from(consts::PAGE_SIZE) + 8 * self.r.below(512);
            let len = self.r.pick(&[1u8, 2, 4, 8]);
            let lane = self.r.below(u64::from(9 - len)) & !(u64::from(len) - 1);
            let g = gap(&mut self.r);
            v.push((reg_access("DIRTY_SEL", 4, Some(page / 32)), g));
            let g = gap(&mut self.r);
            let mask = if len == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * u64::from(len))) - 1
            };
            v.push((
                WaitAccess {
                    bar2: true,
                    offset: word + lane,
                    len,
                    write: Some(self.r.next_u64() & mask),
                },
                g,
            ));
            let g = gap(&mut self.r);
            v.push((reg_access("DIRTY_BITS", 4, None), g));
            if self.r.pct(60) {
                let g = gap(&mut self.r);
                v.push((
                    WaitAccess {
                        bar2: true,
                        offset: word,
                        len: 8,
                        write: None,
                    },
                    g,
                ));
            }
            if self.r.pct(30) {
                v.push((reg_access("DIRTY_BITS", 4, None), 0));
            }
            if self.r.pct(30) {
                let x = self.r.next_u64() & 0xffff_ffff;
                v.push((reg_access("SCRATCH", 4, Some(x)), gap(&mut self.r)));
                v.push((reg_access("SCRATCH", 4, None), 0));
            }
            if self.r.pct(40) {
                // A 64-bit BAR0 access as one port request (byte enables
                // 0xff: both registers, low one first).
                let a = match self.r.below(4) {
                    0 => reg_access("SQ_BASE_LO", 8, None),
                    1 => reg_access("CNT_BYTES_LO", 8, None),
                    2 => reg_access("IRQ_STATUS", 8, None),
                    _ => reg_access(
                        "IRQ_STATUS",
                        8,
                        Some(self.r.below(4) | (self.r.below(4) << 32)),
                    ),
                };
                v.push((a, gap(&mut self.r)));
            }
        }
        Op::BackToBack { accesses: v }
    }

    /// MMIO racing a burst into device memory: descriptors that write
    /// device memory (and some guest memory, for the DMA log), and bitmap
    /// reads, select writes and reads, BAR2 accesses to the last page
    /// (never a DMA target) spread over the burst.
    fn racing_burst(&mut self, ops: &mut Vec<Op>) {
        if self.r.pct(30) {
            ops.push(self.dma_log_start());
        }
        let pages = self.devmem / u64::from(consts::PAGE_SIZE);
        let last = self.devmem - u64::from(consts::PAGE_SIZE);
        let mut descs = Vec::new();
        for _ in 0..1 + self.r.below(3) {
            let mut d = self.desc();
            d.opcode = self.r.pick(&[1u8, 1, 5, 5, 2]);
            d.rsvd = 0;
            d.len = self.r.pick(&[256u32, 1024, 4096, 4096, 8192, 12288]);
            d.len = d.len.min(consts::MAX_DESC_LEN);
            let dev = self.r.below(last.saturating_sub(u64::from(d.len)) + 1);
            let host = GUEST_BASE
                + DATA_AREA
                + self
                    .r
                    .below(GUEST_LEN - DATA_AREA - u64::from(d.len).min(GUEST_LEN - DATA_AREA) + 1);
            (d.src, d.dst) = match d.opcode {
                1 => (host, dev),
                2 => (dev, host),
                _ => (0, dev),
            };
            descs.push(d);
        }
        let gap = |r: &mut Rng| r.pick(&[0u32, 0, 1, 2, 5, 10, 20, 40, 80, 160]);
        let mut v = Vec::new();
        for _ in 0..4 + self.r.below(12) {
            let a = match self.r.below(12) {
                0..=2 => reg_access("DIRTY_BITS", 4, None),
                3 | 4 => reg_access("DIRTY_SEL", 8, None), // SEL, then BITS
                5 => reg_access("DIRTY_SEL", 4, Some(self.r.below(pages.div_ceil(32) + 1))),
                6 => reg_access("DMALOG_BITS", 4, None),
                7 => reg_access("DMALOG_SEL", 8, None),
                8 => reg_access("DMALOG_SEL", 4, Some(self.r.below(3))),
                9 => {
                    let len = self.r.pick(&[1u8, 2, 4, 8]);
                    let lane = self.r.below(u64::from(9 - len)) & !(u64::from(len) - 1);
                    let mask = if len == 8 {
                        u64::MAX
                    } else {
                        (1u64 << (8 * u64::from(len))) - 1
                    };
                    WaitAccess {
                        bar2: true,
                        offset: last + 8 * self.r.below(512) + lane,
                        len,
                        write: Some(self.r.next_u64() & mask),
                    }
                }
                10 => WaitAccess {
                    bar2: true,
                    offset: last + 8 * self.r.below(512),
                    len: 8,
                    write: None,
                },
                _ => {
                    if self.r.pct(50) {
                        reg_access("SCRATCH", 4, Some(self.r.next_u64() & 0xffff_ffff))
                    } else {
                        reg_access("DIRTY_SEL", 4, None)
                    }
                }
            };
            let g = gap(&mut self.r);
            v.push((a, g));
        }
        ops.push(Op::RacingBurst { descs, accesses: v });
    }

    /// A soft reset followed at once by DMA-log accesses: the log bitmap
    /// (its largest window) takes thousands of cycles to clear after the
    /// reset; a read that overtook that sweep would return stale bits (the
    /// read right before the reset leaves a non-zero word behind: the
    /// completions of the submitted work are logged).
    fn reset_then_log(&mut self, ops: &mut Vec<Op>) {
        ops.push(Op::DmaLogStart {
            base: GUEST_BASE,
            pages: self.r.pick(&[16u32, 64]),
        });
        let k = 1 + self.r.below(3);
        let descs = (0..k).map(|_| self.desc()).collect();
        ops.push(Op::Submit { descs });
        ops.push(Op::Run);
        let gap = |r: &mut Rng| r.pick(&[0u32, 0, 1, 3, 10]);
        let mut v = vec![
            (reg_access("DMALOG_SEL", 4, Some(0)), gap(&mut self.r)),
            (reg_access("DMALOG_BITS", 4, None), gap(&mut self.r)),
            (
                reg_access("CTRL", 4, Some(u64::from(Ctrl::SOFT_RESET.bits()))),
                gap(&mut self.r),
            ),
            (
                reg_access("DMALOG_PAGES", 4, Some(1 + self.r.below(64))),
                gap(&mut self.r),
            ),
        ];
        if self.r.pct(30) {
            let base = GUEST_BASE + self.r.pick(&[0u64, 0x2000]);
            v.push((reg_access("DMALOG_BASE_LO", 4, Some(base & 0xffff_ffff)), 0));
        }
        v.push((reg_access("DMALOG_BITS", 4, None), gap(&mut self.r)));
        if self.r.pct(50) {
            v.push((reg_access("DMALOG_SEL", 8, None), gap(&mut self.r)));
        }
        if self.r.pct(40) {
            let en = vfpga_regs::DmalogCtrl::ENABLE.bits();
            v.push((reg_access("DMALOG_CTRL", 4, Some(u64::from(en))), 0));
            v.push((reg_access("DMALOG_BITS", 4, None), 0));
        }
        v.push((reg_access("DIRTY_BITS", 4, None), gap(&mut self.r)));
        v.push((reg_access("DMALOG_CTRL", 4, None), 0));
        ops.push(Op::BackToBack { accesses: v });
        ops.push(self.setup_rings());
        ops.push(Op::WriteReg {
            reg: "IRQ_MASK".into(),
            value: 0,
        });
    }

    /// A restore of the saved state with one bit flipped, or (half the
    /// time) with faults in several of the words validation checks, some set
    /// to values at the limits: which fault validation reports first
    /// (datasheet §9.3 order) is compared.
    fn restore_mutated(&mut self) -> Op {
        use vfpga_regs::state as sw;
        let word = self.r.below(sw::WORDS as u64) as usize;
        let xor = 1 << self.r.below(32);
        let (mut more, mut set) = (Vec::new(), Vec::new());
        if self.r.pct(50) {
            let checked = [
                sw::HEADER,
                sw::SQ_SIZE,
                sw::CQ_SIZE,
                sw::SQ_HEAD,
                sw::SQ_TAIL,
                sw::CQ_HEAD,
                sw::CQ_TAIL,
                sw::ERR_CODE,
                sw::CUR_FLAGS,
                sw::CUR_CTL,
                sw::CUR_LEN,
                sw::CUR_DONE,
                sw::CUR_SLOT,
                sw::CUR_SRC_LO,
                sw::CUR_DST_LO,
                sw::CUR_CRC,
                sw::CUR_TAG,
            ];
            for _ in 0..1 + self.r.below(3) {
                let w = if self.r.pct(85) {
                    self.r.pick(&checked)
                } else {
                    self.r.below(sw::WORDS as u64) as usize
                };
                if self.r.pct(40) {
                    let devmem = self.devmem as u32;
                    let v = self.r.pick(&[
                        0u32,
                        1,
                        3,
                        7,
                        0xff,
                        0x200,
                        consts::MAX_DESC_LEN,
                        consts::MAX_DESC_LEN + 1,
                        devmem,
                        devmem - 64,
                        0xffff_ffff,
                    ]);
                    set.push((w, v));
                } else {
                    more.push((w, 1 << self.r.below(32)));
                }
            }
        }
        Op::RestoreMutated {
            word,
            xor,
            more,
            set,
        }
    }

    /// A descriptor whose device-memory range ends exactly at the end of
    /// device memory (in range: the last byte is the last one), run at once
    /// so no host write to the last page races it.
    fn at_devmem_end(&mut self, ops: &mut Vec<Op>) {
        let mut d = self.desc();
        d.opcode = self.r.pick(&[1u8, 2, 5]);
        d.rsvd = 0;
        d.len = self.r.pick(&[1u32, 8, 64, 100, 4096, 5000]);
        let at = self.devmem - u64::from(d.len);
        let host = GUEST_BASE + DATA_AREA + self.r.below(0x4000);
        (d.src, d.dst) = match d.opcode {
            1 => (host, at),
            2 => (at, host),
            _ => (0, at),
        };
        // Consumed and run again: a full completion ring does not leave it
        // pending for a later host write to race.
        ops.extend([Op::Submit { descs: vec![d] }, Op::Run, Op::Consume, Op::Run]);
    }

    /// Phase 2: restores of states with several faults (run into the middle
    /// of work first, so a descriptor is often in flight), descriptors at
    /// the limits (`MAX_DESC_LEN` exactly, a device-memory range ending
    /// exactly at its end), and ordinary work between.
    fn phase2(&mut self, ops: &mut Vec<Op>) {
        match self.r.below(6) {
            0 | 1 => {
                let k = 1 + self.r.below(4);
                let descs = (0..k).map(|_| self.desc()).collect();
                ops.push(Op::Submit { descs });
                ops.push(Op::RunChecked {
                    units: self.r.below(300),
                });
                ops.push(Op::Quiesce);
                let op = self.restore_mutated();
                ops.push(op);
                ops.push(Op::Resume);
            }
            2 => self.at_devmem_end(ops),
            3 => {
                let mut d = self.desc();
                d.rsvd = 0;
                d.len = consts::MAX_DESC_LEN;
                ops.push(Op::Submit { descs: vec![d] });
                ops.push(Op::Run);
                ops.push(Op::Consume);
            }
            4 => ops.push(Op::Consume),
            _ => {
                let k = 1 + self.r.below(4);
                let descs = (0..k).map(|_| self.desc()).collect();
                ops.push(Op::Submit { descs });
            }
        }
    }

    /// The state port at its edges: `STATE_IDX` at or past the last word,
    /// then `STATE_DATA` twice: read while quiesced (the index stops at
    /// `STATE_WORDS`), read or written while running (reads 0, writes
    /// ignored).
    fn state_port(&mut self, ops: &mut Vec<Op>) {
        let words = vfpga_regs::state::WORDS as u32;
        let quiesce = self.r.pct(50);
        if quiesce {
            ops.push(Op::RunChecked {
                units: self.r.below(200),
            });
            ops.push(Op::Quiesce);
        }
        let idx = self
            .r
            .pick(&[0u32, 1, words - 2, words - 1, words, words + 1]);
        ops.push(Op::WriteReg {
            reg: "STATE_IDX".into(),
            value: idx,
        });
        for _ in 0..2 {
            // Writes only while running (ignored there); a write while
            // quiesced changes the state the resume validates.
            if quiesce || self.r.pct(50) {
                ops.push(Op::ReadReg {
                    reg: "STATE_DATA".into(),
                });
            } else {
                let any = self.r.next_u64() as u32;
                ops.push(Op::WriteReg {
                    reg: "STATE_DATA".into(),
                    value: self.r.pick(&[0u32, 1, 0x8000_0000, any]),
                });
            }
            ops.push(Op::ReadReg {
                reg: "STATE_IDX".into(),
            });
        }
        if quiesce {
            ops.push(Op::Resume);
        }
    }

    /// BAR2 on the RTL's port at its edges: sub-word reads in every lane,
    /// and accesses ending exactly at the end of device memory (the last
    /// page: never a DMA target).
    fn devmem_port(&mut self, ops: &mut Vec<Op>) {
        let last = self.devmem - u64::from(consts::PAGE_SIZE);
        let mut v = Vec::new();
        for _ in 0..1 + self.r.below(3) {
            let word = if self.r.pct(40) {
                self.devmem - 8
            } else {
                last + 8 * self.r.below(512)
            };
            v.push((
                WaitAccess {
                    bar2: true,
                    offset: word,
                    len: 8,
                    write: Some(self.r.next_u64()),
                },
                0,
            ));
            for _ in 0..1 + self.r.below(3) {
                let len = self.r.pick(&[1u8, 2, 4, 8]);
                let lane = self.r.below(u64::from(9 - len)) & !(u64::from(len) - 1);
                let write = self.r.pct(30).then(|| {
                    let mask = if len == 8 {
                        u64::MAX
                    } else {
                        (1u64 << (8 * u64::from(len))) - 1
                    };
                    self.r.next_u64() & mask
                });
                v.push((
                    WaitAccess {
                        bar2: true,
                        offset: word + lane,
                        len,
                        write,
                    },
                    self.r.pick(&[0u32, 0, 1, 3]),
                ));
            }
            v.push((
                WaitAccess {
                    bar2: true,
                    offset: word,
                    len: 8,
                    write: None,
                },
                0,
            ));
        }
        ops.push(Op::BackToBack { accesses: v });
    }

    /// Ends a phase with its finale (settle, drain both bitmaps, quiesce,
    /// save, resume) and draws phase `n` from a generator of its own
    /// (seeded `seed` ^ "phase" `n` in ASCII), so that each earlier phase
    /// stays exactly what earlier versions generated for this seed.
    fn next_phase(&mut self, ops: &mut Vec<Op>, seed: u64, n: u8) {
        ops.extend(finale());
        ops.push(Op::Resume);
        self.r = Rng::new(seed ^ (0x7068_6173_6530 | u64::from(n)));
    }

    /// A device-memory fill of `len` bytes (no host memory in its bursts).
    fn fill(&mut self, len: u32) -> Desc {
        let mut d = self.desc();
        d.opcode = 5;
        d.rsvd = 0;
        d.len = len;
        d.src = 0;
        // Off the last page (the host writes it while work runs).
        let room = self.devmem - u64::from(consts::PAGE_SIZE) - u64::from(len);
        d.dst = self.r.below(room + 1) & !63;
        d
    }

    /// Phase 6 ([`Op::ThrottleTiming`]).
    fn throttle_timing(&mut self, ops: &mut Vec<Op>) {
        ops.push(self.setup_rings());
        let idle = self.r.pick(&[16u32, 100, 1000]);
        let len = self.r.pick(&[256u32, 1024, 4096]);
        let d = self.fill(len);
        ops.push(Op::ThrottleTiming {
            idle,
            descs: vec![d],
        });
        ops.extend([
            Op::WriteReg {
                reg: "DMA_THROTTLE".into(),
                value: 60_000,
            },
            Op::Submit {
                descs: vec![self.fill(64)],
            },
            Op::RunChecked { units: 400 },
            Op::HwReset {
                at: ResetPoint::Here,
            },
        ]);
        ops.push(self.setup_rings());
        let d = self.fill(4096);
        ops.push(Op::ThrottleTiming {
            idle: 0,
            descs: vec![d],
        });
    }

    fn phase4(&mut self, ops: &mut Vec<Op>) {
        use vfpga_regs::state as sw;
        let words = sw::WORDS as u32;
        ops.push(Op::RunChecked {
            units: self.r.below(200),
        });
        ops.push(Op::Quiesce);
        ops.push(Op::WriteReg {
            reg: "STATE_IDX".into(),
            value: self.r.pick(&[words, words + 1]),
        });
        ops.push(Op::WriteReg {
            reg: "STATE_DATA".into(),
            value: self.r.next_u64() as u32,
        });
        ops.push(Op::ReadReg {
            reg: "STATE_IDX".into(),
        });
        // ERR_CODE out of range and an in-flight descriptor whose status is
        // out of range (CUR_FLAGS: valid, status 0xff).
        ops.push(Op::RestoreMutated {
            word: sw::ERR_CODE,
            xor: 0,
            more: Vec::new(),
            set: vec![
                (sw::ERR_CODE, self.r.pick(&[0x20u32, 0xff])),
                (sw::CUR_FLAGS, 0x00ff_0001),
            ],
        });
        ops.push(Op::Resume);
        // Each ring-index check (§9.3 step 4) with a later check failing
        // too (ERR_CODE out of range, step 5): the index is the one named,
        // so a check that found its fault must stop the later ones.
        // 0xfff: the largest index the word's bits hold (no reserved bit
        // set, which step 2 would name first).
        // The words of a refused restore stay in the device, so the other
        // indices are set back to 0 each time, and both ring sizes to 16
        // (valid, and below the index tried).
        let index = [sw::SQ_HEAD, sw::SQ_TAIL, sw::CQ_HEAD, sw::CQ_TAIL];
        for w in index {
            let mut set: Vec<(usize, u32)> = index.iter().map(|&i| (i, 0)).collect();
            set.extend([(sw::SQ_SIZE, 16), (sw::CQ_SIZE, 16)]);
            set.extend([(w, 0xfff), (sw::ERR_CODE, 0xff)]);
            // A restore needs a quiesced device (the RESUME before may
            // have let it run).
            ops.push(Op::Quiesce);
            ops.push(Op::RestoreMutated {
                word: w,
                xor: 0,
                more: Vec::new(),
                set,
            });
            ops.push(Op::Resume);
        }
    }

    /// Both bitmaps left non-zero (DMA-logged work, a device-memory write),
    /// then a hardware reset followed at once by bitmap accesses: each
    /// would return stale bits if it overtook the post-reset sweep.
    fn reset_then_bitmaps(&mut self, ops: &mut Vec<Op>) {
        ops.push(self.setup_rings());
        // Guest memory is window pages 32..48: the work marks the log's
        // second word, which only the reset's sweep clears (a read of it
        // after the reset needs no logging enabled, which would clear it).
        ops.push(Op::DmaLogStart {
            base: GUEST_BASE - 32 * u64::from(consts::PAGE_SIZE),
            pages: 64,
        });
        let k = 1 + self.r.below(3);
        let descs = (0..k).map(|_| self.desc()).collect();
        ops.push(Op::Submit { descs });
        ops.push(Op::Run);
        let last = self.devmem - u64::from(consts::PAGE_SIZE);
        ops.push(Op::DevmemWrite {
            offset: last + self.r.below(4000),
            len: 1 + self.r.below(64) as u32,
            seed: self.r.next_u64(),
        });
        let gap = |r: &mut Rng| r.pick(&[0u32, 0, 0, 1, 3]);
        let pages = self.devmem / u64::from(consts::PAGE_SIZE);
        let mut v = vec![
            (reg_access("DMALOG_PAGES", 4, Some(64)), gap(&mut self.r)),
            (reg_access("DMALOG_SEL", 4, Some(1)), gap(&mut self.r)),
            (reg_access("DMALOG_BITS", 4, None), gap(&mut self.r)),
        ];
        for _ in 0..1 + self.r.below(4) {
            let a = match self.r.below(6) {
                0 => reg_access("DMALOG_SEL", 4, Some(0)),
                1 | 2 => reg_access("DMALOG_BITS", 4, None),
                3 => reg_access("DIRTY_SEL", 4, Some((pages - 1) / 32)),
                4 => reg_access("DIRTY_BITS", 4, None),
                _ => reg_access("DMALOG_CTRL", 4, None),
            };
            v.push((a, gap(&mut self.r)));
        }
        ops.push(Op::ResetThen { accesses: v });
        ops.push(self.setup_rings());
    }

    /// Raw port requests the `Device` seam cannot express, each often
    /// followed by an ordinary read of the same word (a write that must be
    /// ignored): BAR0 byte enables other than `0x0f`/`0xf0`/`0xff`, BAR0
    /// offsets past the register page, BAR2 past device memory, and empty
    /// or non-contiguous BAR2 byte enables (on the last page: never a DMA
    /// target).
    fn raw_port(&mut self) -> Op {
        let last = (self.devmem - u64::from(consts::PAGE_SIZE)) as u32;
        let devmem = self.devmem as u32;
        let scratch = reg_offset("SCRATCH").unwrap_or(0);
        let mut v = Vec::new();
        for _ in 0..2 + self.r.below(5) {
            let write = self.r.pct(35).then(|| self.r.next_u64());
            let (bar2, addr, be) = match self.r.below(6) {
                0 => {
                    // BAR0, a width the registers do not take.
                    let be = self
                        .r
                        .pick(&[0x00u8, 0x01, 0x03, 0x0c, 0x3c, 0x7f, 0xfe, 0x80, 0x18]);
                    let addr = if self.r.pct(50) {
                        scratch
                    } else {
                        self.r.below(0x200) as u32 * 8
                    };
                    (false, addr, be)
                }
                1 => {
                    // BAR0 past the register page.
                    let addr =
                        self.r
                            .pick(&[0x1000u32, 0x1ff8, 0x2000, 0x3ff8, 0x1_0000, 0xffff_fff8]);
                    (
                        false,
                        addr | (scratch & 0xff8),
                        self.r.pick(&[0x0fu8, 0xf0, 0xff]),
                    )
                }
                2 => {
                    // BAR2 past device memory (contiguous byte enables).
                    let addr =
                        self.r
                            .pick(&[devmem, devmem + 8, devmem.wrapping_mul(2), 0xffff_fff8]);
                    (true, addr, self.r.pick(&[0xffu8, 0x01, 0x0f, 0xf0, 0x3c]))
                }
                3 => (true, last + 8 * self.r.below(512) as u32, 0x00),
                4 => {
                    // BAR2, non-contiguous byte enables.
                    let be = self.r.pick(&[0x05u8, 0x81, 0xa0, 0x11, 0x7d, 0xbf, 0x42]);
                    (true, last + 8 * self.r.below(512) as u32, be)
                }
                _ => {
                    // An ordinary access through the same port.
                    if self.r.pct(50) {
                        (false, scratch, 0x0f)
                    } else {
                        let be = self.r.pick(&[0xffu8, 0x0f, 0x3c, 0x80]);
                        (true, last + 8 * self.r.below(512) as u32, be)
                    }
                }
            };
            let a = RawAccess {
                bar2,
                addr,
                be,
                write,
            };
            let check = a.write.is_some() && self.r.pct(70);
            v.push(a);
            if check {
                // Read back what an ignored write must have left.
                let (addr, be) = if bar2 {
                    ((addr & !7).min(devmem - 8), 0xff)
                } else {
                    (scratch, 0x0f)
                };
                v.push(RawAccess {
                    bar2,
                    addr,
                    be,
                    write: None,
                });
            }
        }
        Op::RawPort { accesses: v }
    }

    /// A `DMA_THROTTLE` value a whole scenario can run under (the gap is
    /// paid after every burst: it slows both sides, the RTL by cycles).
    fn small_throttle(&mut self) -> u32 {
        self.r.pick(&[0u32, 0, 1, 2, 3, 8, 17, 32])
    }

    /// Programs the DMA rate limit. A large value (up to the field and
    /// beyond it: the upper bits read 0) is read back, runs the checked
    /// side a little (into a gap), quiesces there (a quiesce ends the gap)
    /// and is then replaced by a value a scenario can run under.
    fn throttle(&mut self, ops: &mut Vec<Op>) {
        let reg = || "DMA_THROTTLE".to_string();
        if self.r.pct(30) {
            let big = self
                .r
                .pick(&[0xffffu32, 0xffff_ffff, 0x1_0000, 0x8000, 1000])
                ^ (self.r.below(2) as u32);
            ops.push(Op::WriteReg {
                reg: reg(),
                value: big,
            });
            ops.push(Op::ReadReg { reg: reg() });
            ops.push(Op::RunChecked {
                units: self.r.below(300),
            });
            ops.push(Op::Quiesce);
            if self.r.pct(50) {
                ops.push(Op::WriteReg {
                    reg: reg(),
                    value: self.r.below(1 << 16) as u32,
                });
            }
            // Written while quiesced (host machinery), before the engine runs.
            let value = self.small_throttle();
            ops.push(Op::WriteReg { reg: reg(), value });
            ops.push(Op::Resume);
            return;
        }
        let value = self.small_throttle();
        ops.push(Op::WriteReg { reg: reg(), value });
    }

    fn one(&mut self, ops: &mut Vec<Op>) {
        if self.slow.is_none() && self.r.pct(8) {
            self.racing_burst(ops);
            return;
        }
        if self.r.pct(2) {
            self.reset_then_log(ops);
            return;
        }
        if self.r.pct(6) {
            let op = self.back_to_back();
            ops.push(op);
            return;
        }
        if self.r.pct(5) {
            // Hardware reset in the middle of work.
            let at = match self.r.below(4) {
                0 => ResetPoint::Settled,
                1 | 2 if self.slow.is_some() => {
                    let k = 1 + self.r.below(4);
                    let descs = (0..k).map(|_| self.desc()).collect();
                    ops.push(Op::Submit { descs });
                    ResetPoint::DmaWait {
                        nth: 1 + self.r.below(4),
                    }
                }
                _ => {
                    let k = 1 + self.r.below(4);
                    let descs = (0..k).map(|_| self.desc()).collect();
                    ops.push(Op::Submit { descs });
                    ops.push(Op::RunChecked {
                        units: self.r.below(400),
                    });
                    ops.push(Op::Quiesce);
                    ResetPoint::Here
                }
            };
            ops.push(Op::HwReset { at });
            ops.push(self.setup_rings());
            ops.push(Op::WriteReg {
                reg: "IRQ_MASK".into(),
                value: 0,
            });
            return;
        }
        if self.slow.is_some() && self.r.pct(15) {
            if self.r.pct(50) {
                let k = 1 + self.r.below(4);
                let descs = (0..k).map(|_| self.desc()).collect();
                ops.push(Op::Submit { descs });
            }
            let nth = 1 + self.r.below(6);
            let accesses = self.wait_accesses();
            ops.push(Op::DmaWait { nth, accesses });
            return;
        }
        match self.r.below(100) {
            0..=27 => {
                let k = 1 + self.r.below(6);
                let descs = (0..k).map(|_| self.desc()).collect();
                ops.push(Op::Submit { descs });
            }
            28..=41 => ops.push(Op::Run),
            42..=51 => ops.push(Op::RunChecked {
                units: 1 + self.r.below(600),
            }),
            52..=61 => ops.push(Op::Consume),
            62..=71 => {
                ops.push(Op::RunChecked {
                    units: self.r.below(300),
                });
                ops.push(Op::Quiesce);
                match self.r.below(6) {
                    0 | 1 => ops.push(Op::Save),
                    2 => ops.push(Op::Transplant {
                        direction: Transplant::ReferenceToChecked,
                    }),
                    3 => ops.push(Op::Transplant {
                        direction: Transplant::CheckedToReference,
                    }),
                    4 => ops.push(Op::RestoreMutated {
                        word: self.r.below(vfpga_regs::state::WORDS as u64) as usize,
                        xor: 1 << self.r.below(32),
                        more: Vec::new(),
                        set: Vec::new(),
                    }),
                    _ => ops.push(Op::DevmemWrite {
                        offset: self.r.below(self.devmem - 64),
                        len: 1 + self.r.below(64) as u32,
                        seed: self.r.next_u64(),
                    }),
                }
                ops.push(Op::Resume);
            }
            72..=73 if self.r.pct(50) => self.throttle(ops),
            72..=79 => {
                let (reg, value) = match self.r.below(7) {
                    0 => ("IRQ_MASK", self.r.below(4) as u32),
                    1 => ("IRQ_STATUS", self.r.below(4) as u32),
                    2 => ("ERR_CODE", 0),
                    3 => ("SCRATCH", self.r.next_u64() as u32),
                    4 => ("CTRL", self.r.pick(&[0u32, 1, 1])),
                    5 => ("DIRTY_SEL", self.r.below(4) as u32),
                    _ => ("STATE_CTRL", 1),
                };
                ops.push(Op::WriteReg {
                    reg: reg.into(),
                    value,
                });
            }
            80..=83 => {
                let reg = self.r.pick(&[
                    "STATUS",
                    "SQ_HEAD",
                    "CQ_TAIL",
                    "CNT_BYTES_LO",
                    "ERR_ADDR_LO",
                    "IRQ_STATUS",
                    "IRQ_PENDING",
                    "STATE_ERR",
                    "DIRTY_BITS",
                    "DMALOG_BITS",
                ]);
                ops.push(Op::ReadReg { reg: reg.into() });
            }
            84..=87 => {
                // The last page: never a DMA target.
                let page = self.devmem - u64::from(consts::PAGE_SIZE);
                let len = 1 + self.r.below(300) as u32;
                ops.push(Op::DevmemWrite {
                    offset: page + self.r.below(4096 - u64::from(len) + 1),
                    len,
                    seed: self.r.next_u64(),
                });
            }
            88 => ops.push(Op::DevmemRead {
                offset: self.r.below(self.devmem - 256),
                len: 1 + self.r.below(256) as u32,
            }),
            89..=90 => {
                let len = 1 + self.r.below(2000) as u32;
                ops.push(Op::HostWrite {
                    offset: DATA_AREA + self.r.below(GUEST_LEN - DATA_AREA - u64::from(len)),
                    len,
                    seed: self.r.next_u64(),
                });
            }
            91..=93 => ops.push(Op::TakeDirty),
            94..=95 => ops.push(Op::DmaLogTake),
            96 => ops.push(if self.r.pct(50) {
                self.dma_log_start()
            } else {
                Op::DmaLogStop
            }),
            97 => {
                ops.push(Op::SoftReset);
                ops.push(self.setup_rings());
                ops.push(Op::WriteReg {
                    reg: "IRQ_MASK".into(),
                    value: 0,
                });
            }
            _ => ops.push(self.setup_rings()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_during_a_wait_write_the_drivers_values() {
        let acc = vec![
            reg_access("SQ_TAIL", 4, Some(0)),
            reg_access("STATUS", 4, None),
            reg_access("CQ_HEAD", 4, Some(9)),
            reg_access("SQ_TAIL", 4, None),
        ];
        let mut drv = Driver::default();
        let none = doorbells_now(&drv, &acc);
        assert_eq!(none, vec![acc[1].clone(), acc[3].clone()]);
        drv.rings = Some(Rings {
            sq_base: GUEST_BASE,
            sq_size: 8,
            cq_base: GUEST_BASE + CQ_AREA,
            cq_size: 8,
            sq_tail: 5,
            cq_head: 3,
            phase: true,
        });
        let got = doorbells_now(&drv, &acc);
        assert_eq!(got.len(), 4);
        assert_eq!((got[0].write, got[2].write), (Some(5), Some(3)));
        assert_eq!((&got[1], &got[3]), (&acc[1], &acc[3]));
    }

    #[test]
    fn generated_scenarios_hold_doorbells_in_waits_and_raw_port_requests() {
        let (mut bells, mut raw) = (0, 0);
        for seed in 0..200 {
            for op in generate(seed, 64).ops {
                match op {
                    Op::DmaWait { accesses, .. } => {
                        bells += accesses
                            .iter()
                            .filter(|a| a.write.is_some() && a.served_during_wait())
                            .filter(|a| {
                                a.offset == u64::from(offsets::SQ_TAIL)
                                    || a.offset == u64::from(offsets::CQ_HEAD)
                            })
                            .count();
                    }
                    Op::RawPort { accesses } => raw += accesses.len(),
                    _ => {}
                }
            }
        }
        assert!(bells > 20, "{bells} doorbells during DMA waits");
        assert!(raw > 400, "{raw} raw port requests");
    }

    #[test]
    fn generation_is_deterministic_and_round_trips_through_json() {
        let a = generate(42, 16);
        assert_eq!(a, generate(42, 16));
        assert_ne!(a, generate(43, 16));
        let j = serde_json::to_string(&a).expect("json");
        let b: Scenario = serde_json::from_str(&j).expect("parse");
        assert_eq!(a, b);
    }

    /// A submit op as scenario files wrote it before descriptors were
    /// stored as `ring::Desc` (every field raw, by name): still read the
    /// same and written back unchanged.
    #[test]
    fn saved_descriptor_format_is_stable() {
        let j = r#"{"op":"submit","descs":[{"opcode":255,"irq":true,"rsvd":1,"tag":7,"src":4294967296,"dst":18446744073709551615,"len":4096,"pattern":3735928559}]}"#;
        let op: Op = serde_json::from_str(j).expect("parse");
        let want = Desc {
            opcode: 0xff,
            irq: true,
            rsvd: 1,
            tag: 7,
            src: GUEST_BASE,
            dst: u64::MAX,
            len: 4096,
            pattern: 0xdead_beef,
        };
        assert_eq!(op, Op::Submit { descs: vec![want] });
        assert_eq!(serde_json::to_string(&op).expect("json"), j);
    }

    /// The DMA rate limit is written like every other register: 0, values
    /// scenarios run under, and large ones (also beyond its field).
    #[test]
    fn generator_writes_the_dma_throttle_small_and_large() {
        let mut seen = std::collections::BTreeSet::new();
        let mut during_wait = 0;
        for seed in 0..300 {
            for op in &generate(seed, 16).ops {
                match op {
                    Op::WriteReg { reg, value } if reg == "DMA_THROTTLE" => {
                        seen.insert(*value);
                    }
                    Op::DmaWait { accesses, .. } => {
                        let o = u64::from(offsets::DMA_THROTTLE);
                        during_wait += accesses.iter().filter(|a| a.offset == o).count();
                    }
                    _ => {}
                }
            }
        }
        assert!(seen.contains(&0), "{seen:?}");
        assert!(seen.iter().any(|&v| (1..=32).contains(&v)), "{seen:?}");
        assert!(seen.iter().any(|&v| v >= 0xffff), "{seen:?}");
        assert!(seen.iter().any(|&v| v > 0xffff), "{seen:?}");
        assert!(during_wait > 0);
    }

    #[test]
    fn generated_dma_stays_off_the_host_written_page_unless_run_at_once() {
        for seed in 0..200 {
            let sc = generate(seed, 16);
            let last = 15 * 4096;
            for (i, op) in sc.ops.iter().enumerate() {
                // A submission run at once may end at the end of device
                // memory (nothing races it there).
                let run_at_once = sc.ops.get(i + 1) == Some(&Op::Run);
                if let Op::Submit { descs } = op
                    && !run_at_once
                {
                    for d in descs {
                        let (dev, len) = match d.opcode {
                            1 | 5 => (d.dst, u64::from(d.len)),
                            2 => (d.src, u64::from(d.len)),
                            _ => continue,
                        };
                        let in_range = dev.checked_add(len).is_some_and(|e| e <= 16 * 4096);
                        if in_range && d.len <= consts::MAX_DESC_LEN && len > 0 {
                            assert!(dev + len <= last, "seed {seed}: {d:?}");
                        }
                    }
                }
            }
        }
    }
}

//! The submission and completion rings in guest memory (datasheet §5.1), as
//! seen from the driver: fill SQ slots, ring the `SQ_TAIL` doorbell, consume
//! completions by phase, write `CQ_HEAD`.

use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use vfpga_device::ring::{Completion, Desc};
use vfpga_regs::{CplStatus, Ctrl, Status, consts, cpl, desc, fields, offsets};

use crate::dma::DmaBuf;
use crate::mmio::Regs;

/// How long to wait for a completion before declaring the device stuck. This
/// only stops a hung guest; a pass never depends on it.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// Where the rings live in a [`DmaBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Byte offset of the SQ (32-byte aligned).
    pub sq_off: usize,
    /// Byte offset of the CQ (16-byte aligned).
    pub cq_off: usize,
    /// Entries in each ring (a power of two, 2..=MAX_RING_ENTRIES).
    pub entries: u32,
}

impl RingLayout {
    /// Checks alignment, size and that the rings fit in `len` bytes without
    /// overlapping.
    pub fn check(&self, len: usize) -> Result<(), String> {
        let e = self.entries;
        if !(2..=consts::MAX_RING_ENTRIES).contains(&e) || !e.is_power_of_two() {
            return Err(format!(
                "ring size {e} is not a power of two in 2..={}",
                consts::MAX_RING_ENTRIES
            ));
        }
        let sq_end = self.sq_off + e as usize * desc::SIZE;
        let cq_end = self.cq_off + e as usize * cpl::SIZE;
        if !self.sq_off.is_multiple_of(desc::SIZE) || !self.cq_off.is_multiple_of(cpl::SIZE) {
            return Err("ring base misaligned".into());
        }
        if sq_end > len || cq_end > len {
            return Err("rings do not fit in the buffer".into());
        }
        if self.sq_off < cq_end && self.cq_off < sq_end {
            return Err("rings overlap".into());
        }
        Ok(())
    }
}

/// The driver side of one SQ/CQ pair.
#[derive(Debug)]
pub struct Rings<'a, R: Regs> {
    regs: &'a R,
    mem: &'a DmaBuf,
    layout: RingLayout,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
    /// Descriptors submitted so far.
    pub submitted: u32,
}

impl<'a, R: Regs> Rings<'a, R> {
    /// Programs the ring registers (engine disabled), checks they read back,
    /// and leaves the engine disabled.
    pub fn setup(regs: &'a R, mem: &'a DmaBuf, layout: RingLayout) -> Result<Self, String> {
        layout.check(mem.len())?;
        regs.write32(offsets::CTRL, 0);
        let sq = mem.iova(layout.sq_off);
        let cq = mem.iova(layout.cq_off);
        for (off, v) in [
            (offsets::SQ_BASE_LO, sq as u32),
            (offsets::SQ_BASE_HI, (sq >> 32) as u32),
            (offsets::SQ_SIZE, layout.entries),
            (offsets::CQ_BASE_LO, cq as u32),
            (offsets::CQ_BASE_HI, (cq >> 32) as u32),
            (offsets::CQ_SIZE, layout.entries),
        ] {
            regs.write32(off, v);
            let back = regs.read32(off);
            if back != v {
                return Err(format!(
                    "ring register {off:#x}: wrote {v:#x}, read {back:#x}"
                ));
            }
        }
        let tail = regs.read32(offsets::CQ_TAIL);
        if fields::cq_tail::INDEX.get(tail) != 0 || fields::cq_tail::PHASE.get(tail) != 1 {
            return Err(format!(
                "CQ_TAIL after CQ_SIZE write is {tail:#x}, want index 0 phase 1"
            ));
        }
        for off in [offsets::SQ_HEAD, offsets::SQ_TAIL, offsets::CQ_HEAD] {
            let v = regs.read32(off);
            if v != 0 {
                return Err(format!("ring index {off:#x} is {v} after the size write"));
            }
        }
        Ok(Rings {
            regs,
            mem,
            layout,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            submitted: 0,
        })
    }

    /// Sets `CTRL.ENABLE`.
    pub fn enable(&self) {
        self.regs.write32(offsets::CTRL, Ctrl::ENABLE.bits());
    }

    /// Submits `descs` with one doorbell write and waits for their
    /// completions, which are returned in order. At most `entries - 1`
    /// descriptors per call (the host keeps one slot free).
    pub fn run(&mut self, descs: &[Desc]) -> Result<Vec<Completion>, String> {
        let n = self.layout.entries;
        if descs.is_empty() || descs.len() >= n as usize {
            return Err(format!(
                "batch of {} descriptors for a {n}-entry ring",
                descs.len()
            ));
        }
        let mut slots = Vec::with_capacity(descs.len());
        for d in descs {
            let off = self.layout.sq_off + self.sq_tail as usize * desc::SIZE;
            self.mem.write(off, &d.to_bytes());
            slots.push(self.sq_tail);
            self.sq_tail = (self.sq_tail + 1) % n;
        }
        // The descriptors must be visible before the doorbell.
        fence(Ordering::SeqCst);
        self.regs.write32(offsets::SQ_TAIL, self.sq_tail);
        self.submitted += descs.len() as u32;

        let start = Instant::now();
        let mut polls = 0u64;
        let mut out = Vec::with_capacity(descs.len());
        while out.len() < descs.len() {
            let off = self.layout.cq_off + self.cq_head as usize * cpl::SIZE;
            let info = self.mem.read_u32(off + cpl::INFO * 4);
            if (fields_phase(info) == 1) != self.phase {
                polls += 1;
                // A ring fault halts the engine: no completion will come.
                let halted = polls.is_multiple_of(64)
                    && Status::from_bits_retain(self.regs.read32(offsets::STATUS))
                        .contains(Status::HALTED);
                if halted || start.elapsed() > HANG_GUARD {
                    let status = self.regs.read32(offsets::STATUS);
                    let err = self.regs.read32(offsets::ERR_CODE);
                    return Err(format!(
                        "no completion {} of {} ({}): SQ_HEAD {}, CQ_TAIL {:#x}, STATUS {status:#x}, ERR_CODE {err} ({}), ERR_ADDR {:#x}",
                        out.len() + 1,
                        descs.len(),
                        if halted {
                            "the engine halted".to_string()
                        } else {
                            format!("after {HANG_GUARD:?}")
                        },
                        self.regs.read32(offsets::SQ_HEAD),
                        self.regs.read32(offsets::CQ_TAIL),
                        CplStatus::from_raw(err).map_or("?", |s| s.name()),
                        u64::from(self.regs.read32(offsets::ERR_ADDR_LO))
                            | u64::from(self.regs.read32(offsets::ERR_ADDR_HI)) << 32,
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            // The rest of the entry was written before the phase word was.
            fence(Ordering::SeqCst);
            let mut b = [0u8; cpl::SIZE];
            self.mem.read(off, &mut b);
            let c = Completion::from_bytes(&b);
            let want_slot = slots[out.len()];
            if u32::from(c.slot) != want_slot {
                return Err(format!(
                    "completion from slot {}, expected slot {want_slot}: {c:?}",
                    c.slot
                ));
            }
            out.push(c);
            self.cq_head = (self.cq_head + 1) % n;
            if self.cq_head == 0 {
                self.phase = !self.phase;
            }
        }
        self.regs.write32(offsets::CQ_HEAD, self.cq_head);
        Ok(out)
    }
}

fn fields_phase(info: u32) -> u32 {
    cpl::info::PHASE.get(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_checked() {
        let ok = RingLayout {
            sq_off: 0,
            cq_off: 4096,
            entries: 8,
        };
        assert_eq!(ok.check(8192), Ok(()));
        assert!(RingLayout { entries: 6, ..ok }.check(8192).is_err());
        assert!(RingLayout { entries: 1, ..ok }.check(8192).is_err());
        assert!(RingLayout { sq_off: 16, ..ok }.check(8192).is_err());
        assert!(
            RingLayout { cq_off: 128, ..ok }.check(8192).is_err(),
            "overlap"
        );
        assert!(ok.check(4096).is_err(), "does not fit");
    }
}

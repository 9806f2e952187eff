//! Driver-side helpers for the DMA engine's rings (datasheet §5): descriptor
//! and completion encoding, and a [`RingDriver`] that owns an SQ and a CQ in
//! guest memory, submits descriptors and collects completions.
//!
//! This is what a guest driver does, written once for the tests, the
//! cross-check, the VMM's workload and the conformance suite. Guest memory is
//! accessed through [`DmaPort::host_read`]/[`DmaPort::host_write`] (VMM-side
//! accesses, not logged as device writes).

use vfpga_regs::{CplStatus, Ctrl, Opcode, consts, cpl, desc, fields, offsets};

use crate::{Device, DeviceError, DmaFault, DmaPort};

/// A submission descriptor (datasheet §5.2). Plain data, serde-able with
/// every field raw (so invalid descriptors can be expressed too): the
/// cross-check's scenario files store it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Desc {
    /// Raw opcode (may be invalid on purpose).
    pub opcode: u8,
    /// Raise the completion interrupt cause.
    pub irq: bool,
    /// Reserved CTL bits 31:9 (must be 0; set only to test BAD_DESC).
    pub rsvd: u32,
    /// Tag copied into the completion.
    pub tag: u32,
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Length in bytes.
    pub len: u32,
    /// Fill pattern or CRC seed.
    pub pattern: u32,
}

impl Desc {
    /// A descriptor for `op`.
    pub fn new(op: Opcode, tag: u32, src: u64, dst: u64, len: u32, pattern: u32) -> Self {
        Desc {
            opcode: op.raw() as u8,
            irq: false,
            rsvd: 0,
            tag,
            src,
            dst,
            len,
            pattern,
        }
    }

    /// The same descriptor with the IRQ flag set.
    pub fn with_irq(mut self) -> Self {
        self.irq = true;
        self
    }

    /// The CTL word.
    pub fn ctl(&self) -> u32 {
        let c = desc::ctl::OPCODE.set(0, u32::from(self.opcode));
        let c = desc::ctl::IRQ.set(c, u32::from(self.irq));
        desc::ctl::RSVD.set(c, self.rsvd)
    }

    /// Encodes to the 32 bytes the device fetches.
    pub fn to_bytes(&self) -> [u8; desc::SIZE] {
        let mut w = [0u32; desc::SIZE / 4];
        w[desc::CTL] = self.ctl();
        w[desc::TAG] = self.tag;
        w[desc::SRC_LO] = self.src as u32;
        w[desc::SRC_HI] = (self.src >> 32) as u32;
        w[desc::DST_LO] = self.dst as u32;
        w[desc::DST_HI] = (self.dst >> 32) as u32;
        w[desc::LEN] = self.len;
        w[desc::PATTERN] = self.pattern;
        let mut b = [0u8; desc::SIZE];
        for (i, x) in w.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    /// Decodes 32 fetched bytes.
    pub fn from_bytes(b: &[u8; desc::SIZE]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let ctl = w(desc::CTL);
        Desc {
            opcode: desc::ctl::OPCODE.get(ctl) as u8,
            irq: desc::ctl::IRQ.get(ctl) != 0,
            rsvd: desc::ctl::RSVD.get(ctl),
            tag: w(desc::TAG),
            src: u64::from(w(desc::SRC_LO)) | (u64::from(w(desc::SRC_HI)) << 32),
            dst: u64::from(w(desc::DST_LO)) | (u64::from(w(desc::DST_HI)) << 32),
            len: w(desc::LEN),
            pattern: w(desc::PATTERN),
        }
    }
}

/// A completion entry (datasheet §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Completion {
    /// Tag of the descriptor.
    pub tag: u32,
    /// Raw `CplStatus`.
    pub status: u8,
    /// SQ slot the descriptor came from.
    pub slot: u16,
    /// Phase bit.
    pub phase: bool,
    /// CRC32C result, else 0.
    pub result: u32,
    /// Bytes transferred.
    pub bytes: u32,
}

impl Completion {
    /// Decodes 16 bytes written by the device.
    pub fn from_bytes(b: &[u8; cpl::SIZE]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let info = w(cpl::INFO);
        Completion {
            tag: w(cpl::TAG),
            status: cpl::info::STATUS.get(info) as u8,
            slot: cpl::info::SLOT.get(info) as u16,
            phase: cpl::info::PHASE.get(info) != 0,
            result: w(cpl::RESULT),
            bytes: w(cpl::BYTES),
        }
    }

    /// Encodes to 16 bytes (what a device writes).
    pub fn to_bytes(&self) -> [u8; cpl::SIZE] {
        let info = cpl::info::STATUS.set(0, u32::from(self.status));
        let info = cpl::info::SLOT.set(info, u32::from(self.slot));
        let info = cpl::info::PHASE.set(info, u32::from(self.phase));
        let mut b = [0u8; cpl::SIZE];
        for (i, x) in [self.tag, info, self.result, self.bytes].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    /// The decoded status, if it is a known one.
    pub fn status(&self) -> Option<CplStatus> {
        CplStatus::from_raw(u32::from(self.status))
    }
}

/// Errors of the ring driver.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Guest memory for a ring is not mapped.
    #[error("ring memory: {0}")]
    Memory(#[from] DmaFault),
    /// Ring geometry not allowed by the datasheet.
    #[error("ring size {0} is not a power of two in 2..={max}", max = consts::MAX_RING_ENTRIES)]
    BadSize(u32),
    /// The SQ has no free slot.
    #[error("submission ring full")]
    Full,
    /// The device did not produce the expected completions in time.
    #[error("{missing} completions still missing after {units} units")]
    Timeout {
        /// How many were not seen.
        missing: usize,
        /// Units spent.
        units: u64,
    },
}

/// Driver state for one SQ/CQ pair in guest memory.
#[derive(Debug, Clone)]
pub struct RingDriver {
    dma: DmaPort,
    sq_base: u64,
    sq_size: u32,
    cq_base: u64,
    cq_size: u32,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
    in_flight: usize,
}

impl RingDriver {
    /// Programs the rings (CTRL.ENABLE cleared first, then set) with the SQ at
    /// `sq_base` (`sq_size` entries) and the CQ at `cq_base`, zeroing the CQ.
    pub fn setup<D: Device + ?Sized>(
        dev: &mut D,
        dma: &DmaPort,
        sq_base: u64,
        sq_size: u32,
        cq_base: u64,
        cq_size: u32,
    ) -> Result<Self, RingError> {
        for s in [sq_size, cq_size] {
            if !s.is_power_of_two() || !(2..=consts::MAX_RING_ENTRIES).contains(&s) {
                return Err(RingError::BadSize(s));
            }
        }
        dma.host_write(cq_base, &vec![0u8; cq_size as usize * cpl::SIZE])?;
        dev.write_reg(offsets::CTRL, 0)?;
        dev.write_reg(offsets::SQ_BASE_LO, sq_base as u32)?;
        dev.write_reg(offsets::SQ_BASE_HI, (sq_base >> 32) as u32)?;
        dev.write_reg(offsets::SQ_SIZE, sq_size)?;
        dev.write_reg(offsets::CQ_BASE_LO, cq_base as u32)?;
        dev.write_reg(offsets::CQ_BASE_HI, (cq_base >> 32) as u32)?;
        dev.write_reg(offsets::CQ_SIZE, cq_size)?;
        dev.write_reg(offsets::CTRL, Ctrl::ENABLE.bits())?;
        Ok(RingDriver {
            dma: dma.clone(),
            sq_base,
            sq_size,
            cq_base,
            cq_size,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            in_flight: 0,
        })
    }

    /// Rebuilds the driver's view from the device's registers (after a
    /// migration: the driver's ring state lives in the guest). `in_flight` is
    /// the number of descriptors the guest submitted and has not collected
    /// yet, which only the guest knows exactly.
    pub fn attach_counted<D: Device + ?Sized>(
        dev: &mut D,
        dma: &DmaPort,
        in_flight: usize,
    ) -> Result<Self, RingError> {
        let sq_base = u64::from(dev.read_reg(offsets::SQ_BASE_LO)?)
            | (u64::from(dev.read_reg(offsets::SQ_BASE_HI)?) << 32);
        let cq_base = u64::from(dev.read_reg(offsets::CQ_BASE_LO)?)
            | (u64::from(dev.read_reg(offsets::CQ_BASE_HI)?) << 32);
        let sq_size = dev.read_reg(offsets::SQ_SIZE)?;
        let cq_size = dev.read_reg(offsets::CQ_SIZE)?;
        for s in [sq_size, cq_size] {
            if !s.is_power_of_two() || !(2..=consts::MAX_RING_ENTRIES).contains(&s) {
                return Err(RingError::BadSize(s));
            }
        }
        let sq_tail = dev.read_reg(offsets::SQ_TAIL)?;
        let cq_head = dev.read_reg(offsets::CQ_HEAD)?;
        // The phase expected at cq_head: entries from cq_head up to the
        // device's tail carry the device's current phase when the tail has
        // not wrapped past cq_head, else the previous one.
        let tail = dev.read_reg(offsets::CQ_TAIL)?;
        let dev_phase = fields::cq_tail::PHASE.get(tail) != 0;
        let dev_idx = fields::cq_tail::INDEX.get(tail);
        let phase = if dev_idx >= cq_head {
            dev_phase
        } else {
            !dev_phase
        };
        Ok(RingDriver {
            dma: dma.clone(),
            sq_base,
            sq_size,
            cq_base,
            cq_size,
            sq_tail,
            cq_head,
            phase,
            in_flight,
        })
    }

    /// Like [`RingDriver::attach_counted`], estimating the descriptors in
    /// flight from the device's registers (SQ entries not yet fetched, CQ
    /// entries not yet consumed, and one more if the device is busy with an
    /// empty SQ). The estimate can be one too high or too low around a
    /// completion; a driver that knows its count should use `attach_counted`.
    pub fn attach<D: Device + ?Sized>(dev: &mut D, dma: &DmaPort) -> Result<Self, RingError> {
        let mut r = Self::attach_counted(dev, dma, 0)?;
        let sq_head = dev.read_reg(offsets::SQ_HEAD)?;
        let dev_idx = fields::cq_tail::INDEX.get(dev.read_reg(offsets::CQ_TAIL)?);
        let pending_sq = (r.sq_tail + r.sq_size - sq_head) % r.sq_size;
        let pending_cq = (dev_idx + r.cq_size - r.cq_head) % r.cq_size;
        let busy = dev.read_reg(offsets::STATUS)? & vfpga_regs::Status::BUSY.bits() != 0;
        r.in_flight =
            pending_sq as usize + pending_cq as usize + usize::from(busy && pending_sq == 0);
        Ok(r)
    }

    /// Free SQ slots.
    pub fn free_slots(&self) -> u32 {
        self.sq_size - 1 - self.outstanding_sq()
    }

    fn outstanding_sq(&self) -> u32 {
        (self.in_flight as u32).min(self.sq_size - 1)
    }

    /// Descriptors submitted whose completion has not been collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Writes `d` into the next SQ slot and rings the doorbell.
    pub fn submit<D: Device + ?Sized>(&mut self, dev: &mut D, d: &Desc) -> Result<u32, RingError> {
        if self.in_flight as u32 >= self.sq_size - 1 {
            return Err(RingError::Full);
        }
        let slot = self.sq_tail;
        self.dma.host_write(
            self.sq_base + u64::from(slot) * desc::SIZE as u64,
            &d.to_bytes(),
        )?;
        self.sq_tail = (slot + 1) % self.sq_size;
        self.in_flight += 1;
        dev.write_reg(offsets::SQ_TAIL, self.sq_tail)?;
        Ok(slot)
    }

    /// Collects every new completion and hands the slots back to the device.
    pub fn poll<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<Vec<Completion>, RingError> {
        let mut out = Vec::new();
        loop {
            let mut b = [0u8; cpl::SIZE];
            self.dma.host_read(
                self.cq_base + u64::from(self.cq_head) * cpl::SIZE as u64,
                &mut b,
            )?;
            let c = Completion::from_bytes(&b);
            if c.phase != self.phase {
                break;
            }
            out.push(c);
            self.cq_head = (self.cq_head + 1) % self.cq_size;
            if self.cq_head == 0 {
                self.phase = !self.phase;
            }
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if !out.is_empty() {
            dev.write_reg(offsets::CQ_HEAD, self.cq_head)?;
        }
        Ok(out)
    }

    /// Advances the device until every submitted descriptor has completed,
    /// spending at most `max_units`.
    pub fn wait_all<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        max_units: u64,
    ) -> Result<Vec<Completion>, RingError> {
        let mut out = self.poll(dev)?;
        let mut used = 0u64;
        while self.in_flight > 0 {
            if used >= max_units {
                return Err(RingError::Timeout {
                    missing: self.in_flight,
                    units: used,
                });
            }
            let p = dev.advance(256.min(max_units - used))?;
            used += p.used.max(1);
            if dev.info().self_running && p.used == 0 {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
            out.extend(self.poll(dev)?);
        }
        Ok(out)
    }

    /// Submits all of `descs` (waiting for room as needed) and returns their
    /// completions in completion order.
    pub fn run<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        descs: &[Desc],
        max_units: u64,
    ) -> Result<Vec<Completion>, RingError> {
        let mut out = Vec::new();
        let mut used = 0u64;
        for d in descs {
            while self.in_flight as u32 >= self.sq_size - 1 {
                if used >= max_units {
                    return Err(RingError::Timeout {
                        missing: self.in_flight,
                        units: used,
                    });
                }
                let p = dev.advance(64)?;
                used += p.used.max(1);
                out.extend(self.poll(dev)?);
            }
            self.submit(dev, d)?;
        }
        out.extend(self.wait_all(dev, max_units.saturating_sub(used))?);
        Ok(out)
    }

    /// SQ base IOVA.
    pub fn sq_base(&self) -> u64 {
        self.sq_base
    }

    /// CQ base IOVA.
    pub fn cq_base(&self) -> u64 {
        self.cq_base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_and_completion_round_trip() {
        let d = Desc::new(Opcode::Crc32c, 7, 0x1_0000_0010, 0xdead_beef_0000, 1000, 5).with_irq();
        assert_eq!(Desc::from_bytes(&d.to_bytes()), d);
        let c = Completion {
            tag: 9,
            status: 4,
            slot: 4095,
            phase: true,
            result: 0xabcd,
            bytes: 12,
        };
        assert_eq!(Completion::from_bytes(&c.to_bytes()), c);
        assert_eq!(c.status(), Some(CplStatus::DmaReadFault));
    }
}

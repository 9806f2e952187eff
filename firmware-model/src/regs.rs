//! BAR0: the register file (datasheet §1-§9), on top of the state words.

use tracing::trace;
use vfpga_device::{Bar, DeviceError};
use vfpga_regs::{
    Ctrl, DmalogCtrl, STATE_LAYOUT, StateCtrl, Status, consts, fields, offsets, state as sw,
};

use crate::model::{Model, PAGE};

/// End of the register page; the rest of BAR0 (MSI-X table and PBA) belongs
/// to the PCIe bridge or the host emulation and reads 0 here.
const REG_PAGE_END: u64 = consts::MSIX_TABLE_OFFSET as u64;

impl Model {
    pub(crate) fn bar0_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        check_bar0(offset, data.len())?;
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                let v = self.reg_read(offset);
                data.copy_from_slice(&v.to_le_bytes());
            }
            8 if offset.is_multiple_of(4) => {
                let lo = self.reg_read(offset);
                let hi = self.reg_read(offset + 4);
                data[..4].copy_from_slice(&lo.to_le_bytes());
                data[4..].copy_from_slice(&hi.to_le_bytes());
            }
            _ => data.fill(0xff),
        }
        Ok(())
    }

    pub(crate) fn bar0_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        check_bar0(offset, data.len())?;
        if !offset.is_multiple_of(4) {
            return Ok(());
        }
        let w = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        match data.len() {
            4 => self.reg_write(offset, w(0)),
            8 => {
                self.reg_write(offset, w(0));
                self.reg_write(offset + 4, w(4));
            }
            _ => {}
        }
        Ok(())
    }

    fn status_bits(&self) -> u32 {
        let mut s = Status::empty();
        s.set(Status::BUSY, self.cur_valid() || self.can_fetch());
        s.set(Status::QUIESCING, self.quiesce_req);
        s.set(Status::QUIESCED, self.quiesced);
        s.set(Status::HALTED, self.halted());
        s.set(Status::STATE_INVALID, self.state_invalid);
        s.bits()
    }

    /// A 32-bit register read at `off` (aligned), with its side effects.
    pub(crate) fn reg_read(&mut self, off: u64) -> u32 {
        if self.dma_waiting && !served_during_wait(off, false) {
            self.finish_waiting_step();
        }
        if off >= REG_PAGE_END {
            return 0;
        }
        let a = &self.arch;
        match off as u32 {
            offsets::ID => consts::DEVICE_MAGIC,
            offsets::RTL_VERSION => self.identity.rtl_version,
            offsets::FEATURES => self.identity.features,
            offsets::PCI_ID => consts::PCI_ID_VALUE,
            offsets::DEVMEM_PAGES => self.identity.devmem_pages,
            offsets::DMALOG_MAX_PAGES => self.identity.dmalog_max_pages,
            offsets::STATE_INFO => consts::STATE_INFO_VALUE,
            offsets::SCRATCH => a.scratch,
            offsets::CTRL => a.ctrl & m(sw::CTRL),
            offsets::STATUS => self.status_bits(),
            offsets::ERR_CODE => a.err_code & m(sw::ERR_CODE),
            offsets::ERR_ADDR_LO => a.err_addr_lo,
            offsets::ERR_ADDR_HI => a.err_addr_hi,
            offsets::TIMER_LO => {
                self.timer_hi_latch = a.timer_hi;
                a.timer_lo
            }
            offsets::TIMER_HI => self.timer_hi_latch,
            offsets::IRQ_STATUS => a.irq_status & m(sw::IRQ_STATUS),
            offsets::IRQ_MASK => a.irq_mask & m(sw::IRQ_MASK),
            offsets::IRQ_PENDING => a.irq_pending & m(sw::IRQ_PENDING),
            offsets::SQ_BASE_LO => a.sq_base_lo & m(sw::SQ_BASE_LO),
            offsets::SQ_BASE_HI => a.sq_base_hi,
            offsets::SQ_SIZE => a.sq_size & m(sw::SQ_SIZE),
            offsets::SQ_TAIL => a.sq_tail & m(sw::SQ_TAIL),
            offsets::SQ_HEAD => a.sq_head & m(sw::SQ_HEAD),
            offsets::CQ_BASE_LO => a.cq_base_lo & m(sw::CQ_BASE_LO),
            offsets::CQ_BASE_HI => a.cq_base_hi,
            offsets::CQ_SIZE => a.cq_size & m(sw::CQ_SIZE),
            offsets::CQ_HEAD => a.cq_head & m(sw::CQ_HEAD),
            offsets::CQ_TAIL => a.cq_tail & m(sw::CQ_TAIL),
            offsets::CNT_DESC => a.cnt_desc,
            offsets::CNT_ERR => a.cnt_err,
            offsets::CNT_BYTES_LO => a.cnt_bytes_lo,
            offsets::CNT_BYTES_HI => a.cnt_bytes_hi,
            offsets::DIRTY_SEL => self.dirty_sel,
            offsets::DIRTY_BITS => {
                let groups = self.dirty.len();
                let g = self.dirty_sel as usize % groups;
                self.dirty_sel = ((g + 1) % groups) as u32;
                std::mem::take(&mut self.dirty[g])
            }
            offsets::DMALOG_CTRL => {
                let mut c = DmalogCtrl::empty();
                c.set(DmalogCtrl::ENABLE, self.dmalog.enable);
                c.set(DmalogCtrl::OVERFLOW, self.dmalog.overflow);
                c.bits()
            }
            offsets::DMALOG_BASE_LO => self.dmalog.base as u32,
            offsets::DMALOG_BASE_HI => (self.dmalog.base >> 32) as u32,
            offsets::DMALOG_PAGES => self.dmalog.pages,
            offsets::DMALOG_SEL => self.dmalog.sel,
            offsets::DMA_THROTTLE => self.throttle,
            offsets::DMALOG_BITS => {
                // DMALOG_SEL is stored as written; a read at or past the last
                // group returns 0 and starts over at group 0.
                let groups = self.dmalog.groups();
                let g = self.dmalog.sel;
                if g >= groups {
                    self.dmalog.sel = 0;
                    return 0;
                }
                self.dmalog.sel = if g + 1 == groups { 0 } else { g + 1 };
                self.dmalog
                    .bits
                    .get_mut(g as usize)
                    .map(std::mem::take)
                    .unwrap_or(0)
            }
            offsets::STATE_IDX => self.state_idx,
            offsets::STATE_DATA => {
                if !self.quiesced {
                    return 0;
                }
                let i = self.state_idx as usize;
                match self.arch.to_words().get(i) {
                    Some(&w) => {
                        self.state_idx += 1;
                        if self.fault == Some(crate::model::Fault::StateWordNotSaved)
                            && i == sw::CUR_CRC
                        {
                            return 0;
                        }
                        w
                    }
                    None => 0,
                }
            }
            offsets::STATE_ERR => self.state_err,
            _ => 0,
        }
    }

    /// A 32-bit register write at `off` (aligned), with its side effects.
    pub(crate) fn reg_write(&mut self, off: u64, v: u32) {
        if self.dma_waiting && !served_during_wait(off, true) {
            self.finish_waiting_step();
        }
        if off >= REG_PAGE_END {
            return;
        }
        let off = off as u32;
        trace!(off, v, "register write");
        // Host-side machinery and the state port work whether or not the
        // device is quiesced (datasheet §8).
        match off {
            offsets::CTRL => return self.write_ctrl(v),
            offsets::STATE_IDX => {
                self.state_idx = v;
                return;
            }
            offsets::STATE_DATA => {
                let mut w = self.arch.to_words();
                if self.quiesced
                    && let Some(x) = w.get_mut(self.state_idx as usize)
                {
                    *x = v;
                    self.arch = vfpga_regs::ArchState::from_words(&w);
                    self.state_idx += 1;
                }
                return;
            }
            offsets::STATE_CTRL => {
                if v & StateCtrl::VALIDATE.bits() != 0 {
                    // The verdict lands in STATE_ERR.
                    let _ = self.validate();
                }
                return;
            }
            offsets::DIRTY_SEL => {
                self.dirty_sel = v % self.dirty.len() as u32;
                return;
            }
            offsets::DMALOG_CTRL => return self.write_dmalog_ctrl(v),
            offsets::DMALOG_BASE_LO | offsets::DMALOG_BASE_HI | offsets::DMALOG_PAGES => {
                if !self.dmalog.enable {
                    let b = &mut self.dmalog.base;
                    match off {
                        offsets::DMALOG_BASE_LO => {
                            *b = (*b & !0xffff_ffff) | u64::from(v) & !(PAGE - 1);
                        }
                        offsets::DMALOG_BASE_HI => {
                            *b = (*b & 0xffff_ffff) | (u64::from(v) << 32);
                        }
                        _ => self.dmalog.pages = v.min(self.identity.dmalog_max_pages),
                    }
                }
                return;
            }
            offsets::DMALOG_SEL => {
                self.dmalog.sel = v;
                return;
            }
            offsets::DMA_THROTTLE => {
                self.throttle = fields::dma_throttle::IDLE.get(v);
                return;
            }
            _ => {}
        }
        if self.quiesced {
            // Everything else is frozen while quiesced.
            return;
        }
        let enabled = self.arch.ctrl & Ctrl::ENABLE.bits() != 0;
        // Ring geometry: only while disabled and no descriptor in flight.
        let ring_writable = !enabled && !self.cur_valid();
        match off {
            offsets::IRQ_STATUS => {
                let clear = v & STATE_LAYOUT[sw::IRQ_STATUS].mask;
                self.arch.irq_status &= !clear;
                self.arch.irq_pending &= !clear;
                return self.deliver_irqs();
            }
            offsets::IRQ_MASK => {
                self.arch.irq_mask = v & STATE_LAYOUT[sw::IRQ_MASK].mask;
                return self.deliver_irqs();
            }
            _ => {}
        }
        let a = &mut self.arch;
        match off {
            offsets::SCRATCH => a.scratch = v,
            offsets::ERR_CODE => a.err_code = 0,
            offsets::SQ_BASE_LO if ring_writable => {
                a.sq_base_lo = v & STATE_LAYOUT[sw::SQ_BASE_LO].mask
            }
            offsets::SQ_BASE_HI if ring_writable => a.sq_base_hi = v,
            offsets::SQ_SIZE if ring_writable && ring_size_ok(v) => {
                a.sq_size = v;
                a.sq_head = 0;
                a.sq_tail = 0;
            }
            offsets::SQ_TAIL => a.sq_tail = v % a.sq_size.max(1),
            offsets::CQ_BASE_LO if ring_writable => {
                a.cq_base_lo = v & STATE_LAYOUT[sw::CQ_BASE_LO].mask
            }
            offsets::CQ_BASE_HI if ring_writable => a.cq_base_hi = v,
            offsets::CQ_SIZE if ring_writable && ring_size_ok(v) => {
                a.cq_size = v;
                a.cq_head = 0;
                a.cq_tail = fields::cq_tail::PHASE.set(0, 1);
            }
            offsets::CQ_HEAD => a.cq_head = v % a.cq_size.max(1),
            _ => {}
        }
    }

    fn write_ctrl(&mut self, v: u32) {
        let c = Ctrl::from_bits_retain(v);
        if c.contains(Ctrl::SOFT_RESET) {
            self.soft_reset();
            return;
        }
        if self.quiesced {
            if c.contains(Ctrl::RESUME) {
                self.resume();
            }
        } else {
            self.arch.ctrl = v & Ctrl::ENABLE.bits();
            if c.contains(Ctrl::QUIESCE) {
                // Steps are atomic in the model: the device is between steps
                // whenever a register is written (a CTRL write first lets a
                // step that waits for DMA end, §5.3), so QUIESCED is
                // immediate, unless that step is still waiting after
                // `finish_waiting_step` gave up: then it is QUIESCING until
                // the step completes.
                if self.dma_waiting {
                    tracing::debug!("quiescing: a step waits for DMA");
                    self.quiesce_req = true;
                } else {
                    tracing::debug!("quiesced");
                    self.quiesced = true;
                    // The idle gap after a burst is timing, not state.
                    self.throttle_debt = 0;
                }
            }
        }
        self.deliver_irqs();
    }

    fn write_dmalog_ctrl(&mut self, v: u32) {
        let c = DmalogCtrl::from_bits_retain(v);
        let enable = c.contains(DmalogCtrl::ENABLE);
        if c.contains(DmalogCtrl::OVERFLOW) {
            self.dmalog.overflow = false;
        }
        if enable && !self.dmalog.enable {
            // Logging starts: a fresh bitmap and no overflow (datasheet §7).
            self.dmalog.bits.fill(0);
            self.dmalog.overflow = false;
        }
        self.dmalog.enable = enable;
    }
}

/// Whether a 32-bit access to `off` is served while a step waits for DMA
/// (datasheet §5.3): reads of every register but `DIRTY_BITS`,
/// `DMALOG_BITS` and `STATE_DATA`; writes of `SQ_TAIL`, `CQ_HEAD`,
/// `IRQ_STATUS`, `IRQ_MASK` and `SCRATCH`. Any other access waits for the
/// step to end.
pub(crate) fn served_during_wait(off: u64, write: bool) -> bool {
    if off >= REG_PAGE_END {
        return false;
    }
    let off = off as u32;
    if write {
        matches!(
            off,
            offsets::SQ_TAIL
                | offsets::CQ_HEAD
                | offsets::IRQ_STATUS
                | offsets::IRQ_MASK
                | offsets::SCRATCH
        )
    } else {
        !matches!(
            off,
            offsets::DIRTY_BITS | offsets::DMALOG_BITS | offsets::STATE_DATA
        )
    }
}

/// The bits of state word `i` a register read shows (reserved bits read 0).
fn m(i: usize) -> u32 {
    STATE_LAYOUT[i].mask
}

fn ring_size_ok(s: u32) -> bool {
    s == 0 || (s.is_power_of_two() && (2..=consts::MAX_RING_ENTRIES).contains(&s))
}

fn check_bar0(offset: u64, len: usize) -> Result<(), DeviceError> {
    match offset.checked_add(len as u64) {
        Some(e) if e <= u64::from(consts::BAR0_SIZE) && len > 0 => Ok(()),
        _ => Err(DeviceError::BadAccess {
            bar: Bar::Regs,
            offset,
            len,
        }),
    }
}

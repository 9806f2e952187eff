//! A tiny fake device for the seam's own tests.
//!
//! It implements the identity registers, `SCRATCH`, the quiesce handshake, the
//! state port with the datasheet's validation, BAR2 with its dirty bitmap, and
//! nothing else: no DMA engine, no interrupts, no DMA log (those registers read
//! 0). It exists to test the provided methods of [`Device`]; the real
//! implementations are the model (`vfpga-model`) and the RTL (`vfpga-sim`).

use vfpga_regs::{ArchState, Ctrl, Status, consts, fields, offsets, state as sw};

use crate::{Bar, Device, DeviceError, DeviceInfo, Identity, Progress, validate_arch};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    identity: Identity,
    words: [u32; sw::WORDS],
    quiesced: bool,
    state_invalid: bool,
    state_idx: u32,
    state_err: u32,
    dirty_sel: u32,
    dirty: Vec<u32>,
    mem: Vec<u8>,
}

impl FakeDevice {
    /// A fake with `devmem_pages` pages of device memory.
    pub fn new(devmem_pages: u32) -> Self {
        let pages = devmem_pages.max(1);
        FakeDevice {
            identity: Identity::this_build(pages, 0),
            words: ArchState::RESET.to_words(),
            quiesced: false,
            state_invalid: false,
            state_idx: 0,
            state_err: 0,
            dirty_sel: 0,
            dirty: vec![0; (pages as usize / 32).max(1)],
            mem: vec![0; pages as usize * consts::PAGE_SIZE as usize],
        }
    }

    fn validate(&mut self) -> bool {
        let arch = ArchState::from_words(&self.words);
        match validate_arch(&arch, self.identity.devmem_bytes()) {
            Ok(()) => {
                self.state_err = 0;
                true
            }
            Err(v) => {
                self.state_err = fields::state_err::WORD
                    .set(fields::state_err::CODE.set(0, v.code.raw()), v.word as u32);
                false
            }
        }
    }

    fn reg_read(&mut self, off: u32) -> u32 {
        let w = &self.words;
        match off {
            offsets::ID => consts::DEVICE_MAGIC,
            offsets::RTL_VERSION => self.identity.rtl_version,
            offsets::FEATURES => self.identity.features,
            offsets::PCI_ID => consts::PCI_ID_VALUE,
            offsets::DEVMEM_PAGES => self.identity.devmem_pages,
            offsets::STATE_INFO => consts::STATE_INFO_VALUE,
            offsets::SCRATCH => w[sw::SCRATCH],
            offsets::CTRL => w[sw::CTRL],
            offsets::STATUS => {
                let mut s = Status::empty();
                s.set(Status::QUIESCED, self.quiesced);
                s.set(Status::STATE_INVALID, self.state_invalid);
                s.bits()
            }
            offsets::STATE_IDX => self.state_idx,
            offsets::STATE_DATA => {
                let i = self.state_idx as usize;
                if !self.quiesced || i >= sw::WORDS {
                    return 0;
                }
                self.state_idx += 1;
                self.words[i]
            }
            offsets::STATE_ERR => self.state_err,
            offsets::DIRTY_SEL => self.dirty_sel,
            offsets::DIRTY_BITS => {
                let g = self.dirty_sel as usize % self.dirty.len();
                self.dirty_sel = ((g + 1) % self.dirty.len()) as u32;
                std::mem::take(&mut self.dirty[g])
            }
            _ => 0,
        }
    }

    fn reg_write(&mut self, off: u32, v: u32) {
        match off {
            offsets::CTRL => {
                let c = Ctrl::from_bits_retain(v);
                if c.contains(Ctrl::SOFT_RESET) {
                    *self = FakeDevice {
                        mem: std::mem::take(&mut self.mem),
                        ..FakeDevice::new(self.identity.devmem_pages)
                    };
                    return;
                }
                if self.quiesced {
                    if c.contains(Ctrl::RESUME) {
                        let ok = self.validate();
                        self.state_invalid = !ok;
                        self.quiesced = !ok;
                    }
                    return;
                }
                self.words[sw::CTRL] = v & Ctrl::ENABLE.bits();
                if c.contains(Ctrl::QUIESCE) {
                    self.quiesced = true;
                }
            }
            offsets::SCRATCH if !self.quiesced => self.words[sw::SCRATCH] = v,
            offsets::STATE_IDX => self.state_idx = v,
            offsets::STATE_DATA => {
                let i = self.state_idx as usize;
                if self.quiesced && i < sw::WORDS {
                    self.words[i] = v;
                    self.state_idx += 1;
                }
            }
            offsets::STATE_CTRL if v & 1 != 0 => {
                self.validate();
            }
            offsets::DIRTY_SEL => self.dirty_sel = v % self.dirty.len() as u32,
            _ => {}
        }
    }
}

impl Device for FakeDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            identity: self.identity,
            bar0_size: consts::BAR0_SIZE.into(),
            bar2_size: self.mem.len() as u64,
            self_running: false,
        }
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let bad = DeviceError::BadAccess {
            bar,
            offset,
            len: data.len(),
        };
        match bar {
            Bar::Regs => {
                if offset >= u64::from(consts::BAR0_SIZE)
                    || data.len() != 4
                    || !offset.is_multiple_of(4)
                {
                    return Err(bad);
                }
                let v = self.reg_read(offset as u32);
                data.copy_from_slice(&v.to_le_bytes());
            }
            Bar::DevMem => {
                let o = offset as usize;
                let src = self.mem.get(o..o + data.len()).ok_or(bad)?;
                data.copy_from_slice(src);
            }
        }
        Ok(())
    }

    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let bad = DeviceError::BadAccess {
            bar,
            offset,
            len: data.len(),
        };
        match bar {
            Bar::Regs => {
                let Ok(b) = <[u8; 4]>::try_from(data) else {
                    return Err(bad);
                };
                if offset >= u64::from(consts::BAR0_SIZE) || !offset.is_multiple_of(4) {
                    return Err(bad);
                }
                self.reg_write(offset as u32, u32::from_le_bytes(b));
            }
            Bar::DevMem => {
                let o = offset as usize;
                let dst = self.mem.get_mut(o..o + data.len()).ok_or(bad)?;
                dst.copy_from_slice(data);
                if !data.is_empty() {
                    let ps = consts::PAGE_SIZE as usize;
                    for p in o / ps..=(o + data.len() - 1) / ps {
                        self.dirty[p / 32] |= 1 << (p % 32);
                    }
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, _budget: u64) -> Result<Progress, DeviceError> {
        Ok(Progress {
            used: 0,
            idle: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfpga_regs::StateErr;

    #[test]
    fn save_requires_quiesce_and_round_trips() {
        let mut d = FakeDevice::new(64);
        d.check_identity().unwrap();
        d.write_reg(offsets::SCRATCH, 0x1234_5678).unwrap();
        assert!(matches!(d.save_state(), Err(DeviceError::NotQuiesced(_))));
        d.quiesce().unwrap();
        let s = d.save_state().unwrap();
        assert_eq!(s.arch.scratch, 0x1234_5678);
        // Frozen: writes ignored while quiesced.
        d.write_reg(offsets::SCRATCH, 1).unwrap();
        assert_eq!(d.save_state().unwrap(), s);
        let mut fresh = FakeDevice::new(64);
        fresh.quiesce().unwrap();
        fresh.restore_state(&s).unwrap();
        fresh.resume().unwrap();
        assert_eq!(fresh.read_reg(offsets::SCRATCH).unwrap(), 0x1234_5678);
    }

    #[test]
    fn a_bad_state_is_refused_with_its_word_and_resume_stays_quiesced() {
        let mut d = FakeDevice::new(64);
        d.quiesce().unwrap();
        let mut s = d.save_state().unwrap();
        s.arch.cq_size = 3;
        let e = d.restore_state(&s).unwrap_err();
        assert!(
            matches!(e, DeviceError::StateRejected(v) if v.code == StateErr::RingSize && v.word == sw::CQ_SIZE),
            "{e}"
        );
        assert!(d.resume().is_err());
        assert!(d.is_quiesced().unwrap());
        assert!(d.status().unwrap().contains(Status::STATE_INVALID));
    }

    #[test]
    fn state_for_another_device_is_refused() {
        let mut a = FakeDevice::new(64);
        a.quiesce().unwrap();
        let s = a.save_state().unwrap();
        let mut b = FakeDevice::new(128);
        b.quiesce().unwrap();
        assert!(matches!(
            b.restore_state(&s),
            Err(DeviceError::IdentityMismatch { .. })
        ));
    }

    #[test]
    fn dirty_bitmap_reads_clear_and_devmem_round_trips() {
        let mut d = FakeDevice::new(64);
        d.devmem_write(4096 * 3 + 5, &[9; 20]).unwrap();
        d.devmem_write(4096 * 40, &[1]).unwrap();
        let bm = d.take_dirty_pages().unwrap();
        assert_eq!(bm, vec![(1 << 3) | (1 << 40)]);
        assert_eq!(d.take_dirty_pages().unwrap(), vec![0]);
        let mut b = [0u8; 20];
        d.devmem_read(4096 * 3 + 5, &mut b).unwrap();
        assert_eq!(b, [9; 20]);
    }
}

//! PCI configuration space of the device, emulated by the server.
//!
//! A type-0 header with the IDs and class from `vfpga-regs`, BAR0 (32-bit
//! memory, `BAR0_SIZE`), BAR2 (64-bit prefetchable memory, the device-memory
//! size) with the usual sizing writes, the command register (memory space,
//! bus master, INTx disable), the status register's Interrupt Status bit
//! (refreshed from the device's INTx line on each read), INTx pin A and an
//! MSI-X capability whose table and PBA live in BAR0 at `MSIX_TABLE_OFFSET` /
//! `MSIX_PBA_OFFSET` (the server serves them, see [`crate::irq`]). 256 bytes,
//! no extended space.
//!
//! Bus mastering gates DMA: while the command register's bus-master bit is
//! clear, every device access to guest memory is refused (see
//! [`crate::server`]).

use vfpga_regs::consts;

/// Size of the emulated configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: usize = 0x40;
/// Command register bit: memory space enable.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command register bit: bus master enable.
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command register bit: INTx disable.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// MSI-X message control: enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Offset of the status register.
pub const STATUS_OFFSET: usize = 0x06;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status register bit: Interrupt Status (the function's INTx line is high,
/// whatever the command register's INTx disable bit says).
pub const STATUS_INTX: u16 = 1 << 3;
const CMD_WRITABLE: u16 = CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;

/// The emulated configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    bar0_size: u32,
    bar2_size: u64,
}

impl ConfigSpace {
    /// Configuration space for a device with the given IDs and BAR sizes
    /// (both powers of two).
    pub fn new(vendor: u16, device: u16, bar0_size: u32, bar2_size: u64) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            bar0_size: bar0_size.next_power_of_two().max(16),
            bar2_size: bar2_size.next_power_of_two().max(16),
        };
        c.put16(0x00, vendor);
        c.put16(0x02, device);
        c.put16(STATUS_OFFSET, STATUS_CAP_LIST);
        c.bytes[0x08] = consts::PCI_REVISION as u8;
        c.put_bytes(0x09, &consts::PCI_CLASS_CODE.to_le_bytes()[..3]);
        c.put32(0x10, 0); // BAR0: 32-bit memory, non-prefetchable
        c.put32(0x18, 0b1100); // BAR2: 64-bit, prefetchable
        c.put16(0x2c, vendor);
        c.put16(0x2e, device);
        c.bytes[0x34] = MSIX_CAP as u8;
        c.bytes[0x3d] = 1; // INTx pin A
        c.bytes[MSIX_CAP] = 0x11;
        c.bytes[MSIX_CAP + 1] = 0;
        c.put16(MSIX_CAP + 2, (consts::NUM_VECTORS - 1) as u16);
        c.put32(MSIX_CAP + 4, consts::MSIX_TABLE_OFFSET); // BIR 0
        c.put32(MSIX_CAP + 8, consts::MSIX_PBA_OFFSET); // BIR 0
        c
    }

    fn put16(&mut self, o: usize, v: u16) {
        self.bytes[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, o: usize, v: u32) {
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&mut self, o: usize, v: &[u8]) {
        self.bytes[o..o + v.len()].copy_from_slice(v);
    }
    fn get16(&self, o: usize) -> u16 {
        u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]])
    }
    fn get32(&self, o: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[o],
            self.bytes[o + 1],
            self.bytes[o + 2],
            self.bytes[o + 3],
        ])
    }

    /// Reads `buf.len()` bytes at `offset`; `None` if out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Option<()> {
        let o = usize::try_from(offset).ok()?;
        let src = self.bytes.get(o..o.checked_add(buf.len())?)?;
        buf.copy_from_slice(src);
        Some(())
    }

    /// Writes `data` at `offset` with the registers' write masks; `None` if
    /// out of range. Read-only bytes ignore writes, as on real hardware.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<()> {
        let o = usize::try_from(offset).ok()?;
        let end = o.checked_add(data.len())?;
        if end > CONFIG_SIZE {
            return None;
        }
        // Apply dword by dword so BARs see whole values.
        let mut d = o & !3;
        while d < end {
            let old = self.get32(d);
            let mut bytes = old.to_le_bytes();
            for (i, b) in bytes.iter_mut().enumerate() {
                let a = d + i;
                if a >= o && a < end {
                    *b = data[a - o];
                }
            }
            self.write_dword(d, old, u32::from_le_bytes(bytes));
            d += 4;
        }
        Some(())
    }

    fn write_dword(&mut self, d: usize, old: u32, new: u32) {
        match d {
            0x04 => {
                let cmd = (new as u16) & CMD_WRITABLE;
                self.put16(0x04, cmd);
            }
            0x0c => self.bytes[0x0c] = new as u8, // cache line size
            0x10 => self.put32(0x10, new & !(self.bar0_size - 1) & !0xf),
            0x18 => {
                let mask = !(self.bar2_size - 1) & !0xf;
                self.put32(0x18, (new & mask as u32) | 0b1100);
            }
            0x1c => {
                let mask = !(self.bar2_size - 1);
                self.put32(0x1c, new & (mask >> 32) as u32);
            }
            0x3c => self.bytes[0x3c] = new as u8, // interrupt line
            MSIX_CAP => {
                let ctl = (old >> 16) as u16;
                let w = (new >> 16) as u16 & (MSIX_ENABLE | MSIX_FUNCTION_MASK);
                let ctl = (ctl & !(MSIX_ENABLE | MSIX_FUNCTION_MASK)) | w;
                self.put16(MSIX_CAP + 2, ctl);
            }
            _ => {}
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get16(0x04)
    }

    /// Whether bus mastering is enabled.
    pub fn bus_master(&self) -> bool {
        self.command() & CMD_BUS_MASTER != 0
    }

    /// Whether INTx is disabled by the command register.
    pub fn intx_disabled(&self) -> bool {
        self.command() & CMD_INTX_DISABLE != 0
    }

    /// MSI-X message control.
    pub fn msix_control(&self) -> u16 {
        self.get16(MSIX_CAP + 2)
    }

    /// Sets the status register's Interrupt Status bit (the device's INTx
    /// line is high). The server refreshes it before each read of the
    /// status register.
    pub fn set_intx_status(&mut self, on: bool) {
        let s = self.get16(STATUS_OFFSET);
        self.put16(
            STATUS_OFFSET,
            if on {
                s | STATUS_INTX
            } else {
                s & !STATUS_INTX
            },
        );
    }

    /// Device reset: command register and MSI-X control cleared, BARs keep
    /// their addresses (a function-level reset in vfio keeps BAR programming
    /// to the VMM, which restores config space itself).
    pub fn reset(&mut self) {
        self.put16(0x04, 0);
        let ctl = self.msix_control() & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        self.put16(MSIX_CAP + 2, ctl);
        self.set_intx_status(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs() -> ConfigSpace {
        ConfigSpace::new(
            consts::PCI_VENDOR_ID as u16,
            consts::PCI_DEVICE_ID as u16,
            consts::BAR0_SIZE,
            1 << 20,
        )
    }

    fn rd32(c: &ConfigSpace, o: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(o, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_class_and_capability_come_from_the_regmap() {
        let c = cs();
        assert_eq!(
            rd32(&c, 0),
            (consts::PCI_DEVICE_ID << 16) | consts::PCI_VENDOR_ID
        );
        assert_eq!(rd32(&c, 8) >> 8, consts::PCI_CLASS_CODE);
        assert_eq!(rd32(&c, 0x34) & 0xff, MSIX_CAP as u32);
        let cap = rd32(&c, MSIX_CAP as u64);
        assert_eq!(cap & 0xff, 0x11);
        assert_eq!((cap >> 16) & 0x7ff, consts::NUM_VECTORS - 1);
        assert_eq!(rd32(&c, MSIX_CAP as u64 + 4), consts::MSIX_TABLE_OFFSET);
        assert_eq!(rd32(&c, MSIX_CAP as u64 + 8), consts::MSIX_PBA_OFFSET);
        assert_eq!(rd32(&c, 0x3c) >> 8 & 0xff, 1);
    }

    #[test]
    fn bars_size_like_hardware() {
        let mut c = cs();
        c.write(0x10, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x10), !(consts::BAR0_SIZE - 1));
        c.write(0x18, &u32::MAX.to_le_bytes()).unwrap();
        c.write(0x1c, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x18), !((1u32 << 20) - 1) | 0b1100);
        assert_eq!(rd32(&c, 0x1c), u32::MAX);
        c.write(0x14, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x14), 0, "BAR1 is unimplemented");
        c.write(0x10, &0xfebf_0000u32.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x10), 0xfebf_0000 & !(consts::BAR0_SIZE - 1));
    }

    #[test]
    fn command_register_and_msix_control_masks() {
        let mut c = cs();
        c.write(4, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(c.command(), CMD_WRITABLE);
        assert!(c.bus_master());
        c.write(MSIX_CAP as u64 + 2, &0xffffu16.to_le_bytes())
            .unwrap();
        assert_eq!(
            c.msix_control(),
            MSIX_ENABLE | MSIX_FUNCTION_MASK | (consts::NUM_VECTORS - 1) as u16
        );
        // IDs are read-only.
        c.write(0, &[0xff; 4]).unwrap();
        assert_eq!(rd32(&c, 0) & 0xffff, consts::PCI_VENDOR_ID);
        assert!(c.write(254, &[0; 4]).is_none());
        assert!(c.read(u64::MAX, &mut [0; 1]).is_none());
    }
}

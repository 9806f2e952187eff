//! Shared set-up of the vfpga-sim tests: a simulated device with guest memory
//! mapped at a 64-bit IOVA, an IRQ log, and small register helpers.

#![allow(dead_code)]

use std::sync::Arc;

use vfpga_device::{Device, DmaPort, IrqLog, Perm, VecMemory};
use vfpga_regs::offsets;
use vfpga_sim::{Clocking, SimDevice, SimOptions};

/// IOVA of the guest memory (above 4 GiB, so the high address words matter).
pub const GUEST: u64 = 0x1_2340_0000;
/// Size of the guest memory.
pub const GUEST_LEN: usize = 4 << 20;
/// Device memory of the test devices, in pages.
pub const PAGES: u32 = 64;

/// A simulated device and what it is connected to.
pub struct Rig {
    pub dev: SimDevice,
    pub dma: DmaPort,
    pub mem: Arc<VecMemory>,
    pub irq: Arc<IrqLog>,
}

pub fn rig_with(pages: u32, clocking: Clocking) -> Rig {
    let dma = DmaPort::new();
    let mem = Arc::new(VecMemory::new(GUEST_LEN));
    dma.map(GUEST, mem.clone(), Perm::RW)
        .expect("map guest memory");
    let irq = Arc::new(IrqLog::new());
    let dev = SimDevice::new(
        SimOptions {
            devmem_pages: pages,
            clocking,
            ..SimOptions::default()
        },
        dma.clone(),
        irq.clone(),
    )
    .expect("simulator");
    Rig { dev, dma, mem, irq }
}

pub fn rig() -> Rig {
    rig_with(PAGES, Clocking::Explicit)
}

impl Rig {
    pub fn rd(&mut self, off: u32) -> u32 {
        self.dev.read_reg(off).expect("register read")
    }
    pub fn wr(&mut self, off: u32, v: u32) {
        self.dev.write_reg(off, v).expect("register write")
    }
    pub fn guest_write(&self, iova: u64, data: &[u8]) {
        self.dma.host_write(iova, data).expect("guest write");
    }
    pub fn guest_read(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.dma.host_read(iova, &mut b).expect("guest read");
        b
    }
    pub fn err_code(&mut self) -> u32 {
        self.rd(offsets::ERR_CODE)
    }
    pub fn err_addr(&mut self) -> u64 {
        u64::from(self.rd(offsets::ERR_ADDR_LO)) | (u64::from(self.rd(offsets::ERR_ADDR_HI)) << 32)
    }
}

#[allow(unused_imports)] // not every test binary uses it
pub use vfpga_device::testkit::pattern as pattern_bytes;

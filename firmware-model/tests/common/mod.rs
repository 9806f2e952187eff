//! Shared fixtures for the model's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use vfpga_device::ring::{Completion, Desc, RingDriver};
use vfpga_device::{Device, DmaPort, IrqLog, Perm, VecMemory};
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::offsets;

/// IOVA of guest memory (above 4 GiB so the *_HI words matter).
pub const GUEST: u64 = 0x1_0000_0000;
/// Guest memory size.
pub const GUEST_LEN: usize = 256 * 1024;
/// SQ at the start of guest memory.
pub const SQ: u64 = GUEST;
/// CQ after it.
pub const CQ: u64 = GUEST + 0x4000;
/// Data buffers from here.
pub const DATA: u64 = GUEST + 0x8000;
/// Device memory pages of the test models.
pub const PAGES: u32 = 64;

pub struct Rig {
    pub dev: Model,
    pub dma: DmaPort,
    pub mem: Arc<VecMemory>,
    pub irq: Arc<IrqLog>,
}

impl Rig {
    pub fn new() -> Self {
        Self::with_config(ModelConfig::with_pages(PAGES))
    }

    pub fn with_config(cfg: ModelConfig) -> Self {
        let dma = DmaPort::new();
        let mem = Arc::new(VecMemory::new(GUEST_LEN));
        dma.map(GUEST, mem.clone(), Perm::RW).unwrap();
        let irq = Arc::new(IrqLog::new());
        let dev = Model::new(cfg, dma.clone(), irq.clone()).unwrap();
        Rig { dev, dma, mem, irq }
    }

    /// Rings of `n` entries each, engine enabled, all interrupts unmasked.
    pub fn rings(&mut self, n: u32) -> RingDriver {
        let r = RingDriver::setup(&mut self.dev, &self.dma, SQ, n, CQ, n).unwrap();
        self.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
        r
    }

    pub fn put(&self, iova: u64, data: &[u8]) {
        self.dma.host_write(iova, data).unwrap();
    }

    pub fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.dma.host_read(iova, &mut b).unwrap();
        b
    }

    pub fn run(&mut self, r: &mut RingDriver, descs: &[Desc]) -> Vec<Completion> {
        r.run(&mut self.dev, descs, 10_000_000).unwrap()
    }
}

/// The shared test pattern, in this suite's argument order.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    vfpga_device::testkit::pattern(seed, len)
}

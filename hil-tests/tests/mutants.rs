//! The suite can fail: broken devices are caught by the scenario that covers
//! what they break.

use std::sync::Arc;

use vfpga_device::fake::FakeDevice;
use vfpga_device::{Bar, Device, DeviceError, DeviceInfo, DeviceState, DmaPort, IrqLog, Progress};
use vfpga_hil::{HilError, Scenario, run_scenario};
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::offsets;

#[derive(Debug, Clone, Copy)]
enum Break {
    /// Writes to IRQ_MASK are dropped.
    IrqMask,
    /// Restores are acknowledged but not performed.
    Restore,
    /// Device-memory reads return the first byte flipped.
    DevmemRead,
}

struct Mutant {
    m: Model,
    b: Break,
}

impl Device for Mutant {
    fn info(&self) -> DeviceInfo {
        self.m.info()
    }
    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.m.mmio_read(bar, offset, data)
    }
    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if matches!(self.b, Break::IrqMask)
            && bar == Bar::Regs
            && offset == u64::from(offsets::IRQ_MASK)
        {
            return Ok(());
        }
        self.m.mmio_write(bar, offset, data)
    }
    fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError> {
        self.m.advance(budget)
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        if matches!(self.b, Break::Restore) {
            return Ok(());
        }
        self.m.restore_state(state)
    }
    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.m.devmem_read(offset, buf)?;
        if matches!(self.b, Break::DevmemRead)
            && let Some(x) = buf.first_mut()
        {
            *x ^= 1;
        }
        Ok(())
    }
}

fn mutant(
    b: Break,
) -> impl FnOnce(DmaPort, Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    move |dma, irq| {
        let m = Model::new(ModelConfig::with_pages(64), dma, irq).map_err(|e| HilError::Setup {
            what: "model".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(Some(Box::new(Mutant { m, b })))
    }
}

fn fails(s: Scenario, b: Break) -> bool {
    run_scenario(s, mutant(b)).is_err()
}

#[test]
fn each_breakage_is_caught_by_its_scenario() {
    assert!(fails(vfpga_hil::interrupt_mask_and_pending, Break::IrqMask));
    assert!(fails(
        vfpga_hil::inflight_quiesce_save_restore,
        Break::Restore
    ));
    assert!(fails(vfpga_hil::dma_opcodes, Break::DevmemRead));
    // And the unbroken parts still pass on the same mutants.
    assert!(!fails(vfpga_hil::ring_wrap_around, Break::IrqMask));
    assert!(!fails(vfpga_hil::dma_write_log, Break::Restore));
}

#[test]
fn a_device_without_interrupt_registers_fails_identity() {
    let fake = |_: DmaPort, _: Arc<IrqLog>| -> Result<Option<Box<dyn Device>>, HilError> {
        Ok(Some(Box::new(FakeDevice::new(64))))
    };
    assert!(
        run_scenario(vfpga_hil::identity, fake).is_err(),
        "fake has no IRQ_MASK"
    );
}

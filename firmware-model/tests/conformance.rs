//! The shared save/restore conformance suite (`vfpga_device::conformance`),
//! on the model driven step by step and on the free-running runner.

use vfpga_model::{Model, ModelConfig, ModelRunner};

mod stepped {
    use super::*;
    vfpga_device::conformance_tests!(
        |dma, irq| Model::new(ModelConfig::with_pages(16), dma, irq).map_err(Into::into)
    );
}

mod stepped_unbatched {
    use super::*;
    vfpga_device::conformance_tests!(|dma, irq| {
        let cfg = ModelConfig {
            batch_bursts: false,
            ..ModelConfig::with_pages(16)
        };
        Model::new(cfg, dma, irq).map_err(Into::into)
    });
}

mod free_running {
    use super::*;
    vfpga_device::conformance_tests!(|dma, irq| {
        let m = Model::new(ModelConfig::with_pages(16), dma, irq)?;
        ModelRunner::spawn(m).map_err(Into::into)
    });
}

/// Broken devices the suite must catch, so that it can fail.
mod mutants {
    use std::sync::Arc;

    use vfpga_device::conformance::{
        pending_interrupt_migrates, restore_continues_inflight, snapshot_mutate_restore,
    };
    use vfpga_device::{Bar, Device, DeviceError, DeviceInfo, DmaPort, IrqLog, Progress};
    use vfpga_model::{Model, ModelConfig};
    use vfpga_regs::{offsets, state as sw};

    /// Drops writes of one state word through the state port.
    struct DropsWord {
        inner: Model,
        word: u32,
        idx: u32,
    }

    impl Device for DropsWord {
        fn info(&self) -> DeviceInfo {
            self.inner.info()
        }
        fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
            self.inner.mmio_read(bar, offset, data)
        }
        fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
            if bar == Bar::Regs && offset == u64::from(offsets::STATE_IDX) && data.len() == 4 {
                self.idx = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            if bar == Bar::Regs && offset == u64::from(offsets::STATE_DATA) {
                self.idx += 1;
                if self.idx - 1 == self.word {
                    // Skip the word: keep the index moving like the device.
                    let i = self.idx;
                    return self.inner.write_reg(offsets::STATE_IDX, i);
                }
            }
            self.inner.mmio_write(bar, offset, data)
        }
        fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError> {
            self.inner.advance(budget)
        }
    }

    fn drops(word: usize) -> impl FnMut(DmaPort, Arc<IrqLog>) -> Result<DropsWord, DeviceError> {
        move |dma, irq| {
            Ok(DropsWord {
                inner: Model::new(ModelConfig::with_pages(16), dma, irq)?,
                word: word as u32,
                idx: 0,
            })
        }
    }

    #[test]
    fn a_device_that_loses_a_word_fails() {
        assert!(snapshot_mutate_restore(drops(sw::SCRATCH)).is_err());
        assert!(pending_interrupt_migrates(drops(sw::IRQ_PENDING)).is_err());
        assert!(restore_continues_inflight(drops(sw::CUR_DONE)).is_err());
        assert!(restore_continues_inflight(drops(sw::CUR_LEN)).is_err());
    }

    #[test]
    fn the_unbroken_wrapper_passes() {
        // Word index past the end: nothing dropped.
        assert!(restore_continues_inflight(drops(sw::WORDS + 5)).is_ok());
    }
}

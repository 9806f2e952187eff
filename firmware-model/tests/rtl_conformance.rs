//! The shared save/restore conformance suite on the Verilated RTL
//! (`vfpga-sim`, explicit clocking), next to the model's run of it.
//! Built only with `--features rtl` (needs Verilator):
//! `cargo test --release -p vfpga-model --features rtl --test rtl_conformance`.
#![cfg(feature = "rtl")]

use vfpga_sim::{SimDevice, SimOptions};

vfpga_device::conformance_tests!(|dma, irq| {
    let o = SimOptions {
        devmem_pages: 16,
        ..SimOptions::default()
    };
    SimDevice::new(o, dma, irq).map_err(Into::into)
});

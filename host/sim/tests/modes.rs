//! Option checks and the build without Verilator (these run either way).

use vfpga_device::{DmaPort, NoIrq};
use vfpga_sim::{SimDevice, SimError, SimOptions};

#[test]
fn bad_options_are_refused() {
    for pages in [0, 3, vfpga_regs::consts::MAX_DEVMEM_PAGES * 2] {
        let e = SimDevice::new(
            SimOptions {
                devmem_pages: pages,
                ..SimOptions::default()
            },
            DmaPort::new(),
            std::sync::Arc::new(NoIrq),
        )
        .unwrap_err();
        assert!(
            matches!(e, SimError::Options(_) | SimError::Unavailable),
            "{e}"
        );
    }
}

#[test]
fn the_unavailable_error_says_what_to_install() {
    let msg = SimError::Unavailable.to_string();
    assert!(
        msg.contains("apt-get install verilator") && msg.contains("scripts/setup"),
        "{msg}"
    );
    if !vfpga_sim::AVAILABLE {
        let e = SimDevice::new(
            SimOptions::default(),
            DmaPort::new(),
            std::sync::Arc::new(NoIrq),
        )
        .unwrap_err();
        assert!(matches!(e, SimError::Unavailable));
    }
}

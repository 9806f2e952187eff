//! Hardware reset in the middle of work (datasheet §8 "Hardware reset") and
//! randomized pre-reset state (`SimOptions::x_seed`).

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use std::sync::Arc;

use vfpga_device::{Device, DmaPort, IrqLog};
use vfpga_regs::{REGISTERS, offsets};
use vfpga_sim::{SimDevice, SimOptions};

/// Every register without a read side effect (the timer aside).
fn quiet_registers(dev: &mut SimDevice) -> Vec<(u32, u32)> {
    REGISTERS
        .iter()
        .filter(|r| {
            ![
                offsets::DIRTY_BITS,
                offsets::DMALOG_BITS,
                offsets::STATE_DATA,
                offsets::TIMER_LO,
                offsets::TIMER_HI,
            ]
            .contains(&r.offset)
        })
        .map(|r| (r.offset, dev.read_reg(r.offset).expect("register read")))
        .collect()
}

#[test]
fn hardware_reset_restores_power_on_state_and_keeps_device_memory() {
    let mut r = common::rig();
    let fresh = quiet_registers(&mut r.dev);
    r.wr(offsets::SCRATCH, 0x1234_5678);
    r.wr(offsets::IRQ_MASK, 0);
    r.wr(offsets::DMALOG_PAGES, 8);
    r.dev
        .devmem_write(4096 + 5, &[0xab; 40])
        .expect("devmem write");
    r.dev.quiesce().expect("quiesce");
    r.dev.hw_reset(3).expect("hardware reset");
    assert_eq!(quiet_registers(&mut r.dev), fresh, "power-on registers");
    assert!(
        r.dev
            .take_dirty_pages()
            .expect("bitmap")
            .iter()
            .all(|&w| w == 0),
        "the dirty bitmap is cleared by reset"
    );
    let mut b = [0u8; 40];
    r.dev.devmem_read(4096 + 5, &mut b).expect("devmem read");
    assert_eq!(b, [0xab; 40], "device memory survives a hardware reset");
}

#[test]
fn random_pre_reset_state_does_not_show_after_reset() {
    let regs = |x_seed: u32| {
        let mut dev = SimDevice::new(
            SimOptions {
                devmem_pages: common::PAGES,
                x_seed,
                ..SimOptions::default()
            },
            DmaPort::new(),
            Arc::new(IrqLog::new()),
        )
        .expect("simulator");
        let v = quiet_registers(&mut dev);
        let dirty = dev.take_dirty_pages().expect("bitmap");
        (v, dirty)
    };
    let zero = regs(0);
    for seed in [1, 0x5eed, 0x7fff_fff1] {
        assert_eq!(regs(seed), zero, "x_seed {seed:#x}");
    }
}

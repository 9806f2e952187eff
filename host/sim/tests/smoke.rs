//! The model comes up and answers its identity registers.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use vfpga_device::Device;
use vfpga_regs::{consts, offsets};

#[test]
fn identity_and_scratch() {
    let mut r = common::rig();
    assert_eq!(r.rd(offsets::ID), consts::DEVICE_MAGIC);
    assert_eq!(r.rd(offsets::DEVMEM_PAGES), common::PAGES);
    r.dev.check_identity().expect("identity");
    r.wr(offsets::SCRATCH, 0xdead_beef);
    assert_eq!(r.rd(offsets::SCRATCH), 0xdead_beef);
}

//! Back-pressure (`SimDevice::set_stall`): with the DMA request, device-memory
//! request and MMIO response ports stalling at random, the device still does
//! exactly what it does without stalls, only in more cycles; the same seed
//! gives the same cycle count.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use common::{GUEST, Rig, pattern_bytes};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Bar, Device};
use vfpga_regs::{CplStatus, Opcode};

const SQ: u64 = GUEST;
const CQ: u64 = GUEST + 0x2000;
const SRC: u64 = GUEST + 0x10000;
const DST: u64 = GUEST + 0x80000;

/// A host-to-device copy, BAR2 accesses, a device-to-host copy and a
/// host-to-host copy; returns the cycles used and what arrived in guest
/// memory.
fn workload(stall: Option<(u64, u8)>) -> (u64, Vec<u8>) {
    let mut r: Rig = common::rig();
    if let Some((seed, pct)) = stall {
        r.dev.set_stall(seed, pct).expect("set_stall");
    }
    let mut drv = RingDriver::setup(&mut r.dev, &r.dma, SQ, 8, CQ, 8).expect("rings");
    let data = pattern_bytes(77, 9000);
    r.guest_write(SRC, &data);
    let descs = [
        Desc::new(Opcode::CopyH2d, 1, SRC + 3, 4096 + 5, 9000 - 3, 0),
        Desc::new(Opcode::CopyD2h, 2, 4096, DST, 9100, 0),
        Desc::new(Opcode::CopyH2h, 3, SRC, DST + 0x4000, 5000, 0),
    ];
    let c = drv.run(&mut r.dev, &descs, 50_000_000).expect("run");
    assert_eq!(c.len(), 3);
    for (i, c) in c.iter().enumerate() {
        assert_eq!((c.tag, c.status()), (i as u32 + 1, Some(CplStatus::Ok)));
    }
    // BAR2 read and write through the (stalling) device-memory port.
    r.dev
        .mmio_write(Bar::DevMem, 8 * 4096 + 3, &[1, 2, 3, 4])
        .expect("BAR2 write");
    let mut b = [0u8; 8];
    r.dev
        .mmio_read(Bar::DevMem, 8 * 4096, &mut b)
        .expect("BAR2 read");
    assert_eq!(b, [0, 0, 0, 1, 2, 3, 4, 0]);
    let cycles = r.dev.stats().expect("stats").cycles;
    (cycles, r.guest_read(DST, 0x6000))
}

#[test]
fn stalled_ports_change_timing_only_and_deterministically() {
    let (c0, m0) = workload(None);
    let (c1, m1) = workload(Some((12345, 50)));
    let (c2, m2) = workload(Some((12345, 50)));
    let data = pattern_bytes(77, 9000);
    assert_eq!(&m0[5..9000 - 3 + 5], &data[3..]);
    assert_eq!(&m0[0x4000..0x4000 + 5000], &data[..5000]);
    assert_eq!(m1, m0, "stalls changed what the device did");
    assert_eq!(m2, m1);
    assert!(c1 > c0, "stalls cost no cycles ({c1} vs {c0})");
    assert_eq!(c1, c2, "the same stall seed gave another run");
}

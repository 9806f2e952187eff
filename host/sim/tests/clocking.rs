//! Free-running clocking and VCD tracing.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use std::time::Duration;

use common::{GUEST, pattern_bytes};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DmaPort, NoIrq};
use vfpga_regs::{CplStatus, Opcode, offsets};
use vfpga_sim::{Clocking, SimDevice, SimOptions};

#[test]
fn free_running_device_works_by_itself_and_sleeps_when_idle() {
    let mut r = common::rig_with(64, Clocking::FreeRunning);
    assert!(r.dev.info().self_running);
    let data = pattern_bytes(1, 0x10000);
    r.guest_write(GUEST + 0x10000, &data);
    let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).unwrap();
    drv.submit(
        &mut r.dev,
        &Desc::new(
            Opcode::CopyH2h,
            1,
            GUEST + 0x10000,
            GUEST + 0x40000,
            0x10000,
            0,
        ),
    )
    .unwrap();
    // Nobody calls advance: the thread clocks the device while it is busy.
    let t = std::time::Instant::now();
    while r.rd(offsets::CNT_DESC) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the device did not run by itself"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(r.guest_read(GUEST + 0x40000, 0x10000), data);
    let c = drv.poll(&mut r.dev).unwrap();
    assert_eq!((c[0].status(), c[0].bytes), (Some(CplStatus::Ok), 0x10000));
    // Idle: no cycles pass while nobody talks to it.
    let before = r.dev.stats().unwrap().cycles;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        r.dev.stats().unwrap().cycles,
        before,
        "an idle device is not clocked"
    );
    // The provided quiesce/resume and run helpers work in wall time.
    drv.submit(
        &mut r.dev,
        &Desc::new(Opcode::FillHost, 2, 0, GUEST + 0x80000, 0x40000, 7),
    )
    .unwrap();
    r.dev.quiesce().unwrap();
    let s1 = r.dev.save_state().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.dev.save_state().unwrap(), s1);
    r.dev.resume().unwrap();
    let c = drv.wait_all(&mut r.dev, 10_000_000).unwrap();
    assert_eq!((c[0].tag, c[0].bytes), (2, 0x40000));
}

#[test]
fn vcd_trace_is_written_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.vcd");
    {
        let mut dev = SimDevice::new(
            SimOptions {
                devmem_pages: 4,
                vcd: Some(path.clone()),
                ..SimOptions::default()
            },
            DmaPort::new(),
            std::sync::Arc::new(NoIrq),
        )
        .unwrap();
        dev.write_reg(offsets::SCRATCH, 0x1234_5678).unwrap();
        dev.advance(100).unwrap();
    }
    let vcd = std::fs::read_to_string(&path).unwrap();
    assert!(vcd.contains("$enddefinitions"), "a VCD header");
    assert!(vcd.contains(" r_scratch "), "internal signals are traced");
    assert!(
        vcd.contains("b00010010001101000101011001111000 "),
        "the SCRATCH value changes"
    );
}

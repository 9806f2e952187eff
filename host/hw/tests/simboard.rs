//! The board layer on the simulated board (the shell and the core at the TLP
//! level, `rtl/shell/usp/tb/board.py`): open, MMIO, DMA into shared guest
//! memory, MSI-X through eventfds, device memory in bulk, and the events a
//! lab meets (FLR or hot reset behind the driver's back, link down, surprise
//! removal), each reported as "device lost" without a hang.
//!
//! Needs `scripts/setup` (cocotb, cocotbext-pcie, Icarus in `.venv/`); a
//! missing prerequisite fails with the launcher's one-line reason.

use std::sync::Arc;
use std::time::Instant;

use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DeviceError, DmaPort, IrqLog, MmapMemory, Perm};
use vfpga_hw::{BoardDevice, SimBoardOptions, SimEvent};
use vfpga_regs::{CplStatus, Opcode, consts, offsets};

const BASE: u64 = 0x1_0000_0000;
const LEN: u64 = 1 << 20;
const PAGES: u32 = 4;

fn guest() -> DmaPort {
    let f = tempfile::tempfile().expect("tempfile");
    f.set_len(LEN).expect("size");
    let m = MmapMemory::map_file_shared(&f, 0, LEN as usize).expect("map");
    let dma = DmaPort::new();
    dma.map(BASE, Arc::new(m), Perm::RW).expect("DMA map");
    dma
}

fn open(dma: &DmaPort, irq: &Arc<IrqLog>) -> BoardDevice {
    let o = SimBoardOptions::new(PAGES, 1024);
    match BoardDevice::simulated(&o, &vfpga_hw::this_build_ids(), dma.clone(), irq.clone()) {
        Ok(b) => b,
        Err(e) => panic!("{}", vfpga_device::error_chain(&e)),
    }
}

#[test]
fn a_descriptor_runs_through_tlps_into_shared_guest_memory() {
    let dma = guest();
    let irq = Arc::new(IrqLog::new());
    let mut b = open(&dma, &irq);
    assert_eq!(b.read_reg(offsets::ID).expect("ID"), consts::DEVICE_MAGIC);
    b.write_reg(offsets::SCRATCH, 0x5eed).expect("write");
    assert_eq!(b.read_reg(offsets::SCRATCH).expect("read"), 0x5eed);
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    dma.host_write(BASE + 0x10000, &data).expect("host write");
    let mut r = RingDriver::setup(&mut b, &dma, BASE, 8, BASE + 0x1000, 8).expect("rings");
    b.write_reg(offsets::IRQ_MASK, 0).expect("unmask");
    let descs = [
        Desc::new(
            Opcode::CopyH2h,
            1,
            BASE + 0x10000,
            BASE + 0x20000 + 1,
            3000,
            0,
        )
        .with_irq(),
        Desc::new(Opcode::CopyH2d, 2, BASE + 0x10000, 0x100, 3000, 0),
        Desc::new(Opcode::CopyH2h, 3, 0x7000_0000, BASE + 0x30000, 64, 0),
    ];
    let c = r.run(&mut b, &descs, 10_000_000).expect("run");
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].status(), Some(CplStatus::Ok), "{c:?}");
    assert_eq!(c[1].status(), Some(CplStatus::Ok), "{c:?}");
    assert_eq!(
        c[2].status(),
        Some(CplStatus::DmaReadFault),
        "an IOVA nobody mapped gets UR: {c:?}"
    );
    let mut back = vec![0u8; 3000];
    dma.host_read(BASE + 0x20000 + 1, &mut back).expect("read");
    assert_eq!(back, data, "the device's writes are in guest memory");
    let mut dm = vec![0u8; 3000];
    b.devmem_read(0x100, &mut dm).expect("devmem");
    assert_eq!(dm, data);
    // The completion interrupt arrived through MSI-X, the eventfd and the
    // forwarding thread.
    let t0 = Instant::now();
    while irq.count(consts::VECTOR_CPL as u16) == 0 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(irq.count(consts::VECTOR_CPL as u16), 1);
    let s = b.sim_stats().expect("stats");
    assert!(s.msix >= 1 && s.tlps_rx > 0 && s.cycles > 0, "{s:?}");
}

#[test]
fn device_memory_moves_in_bulk_and_its_rate_is_measured() {
    let dma = guest();
    let irq = Arc::new(IrqLog::new());
    let mut b = open(&dma, &irq);
    let n = (PAGES * consts::PAGE_SIZE) as usize;
    let data: Vec<u8> = (0..n).map(|i| (i * 31 + 1) as u8).collect();
    b.devmem_write(0, &data).expect("write");
    let before = b.sim_stats().expect("stats");
    let t0 = Instant::now();
    let mut back = vec![0u8; n];
    b.devmem_read(0, &mut back).expect("read");
    let wall = t0.elapsed().as_secs_f64();
    let after = b.sim_stats().expect("stats");
    assert_eq!(back, data);
    let cycles = after.cycles - before.cycles;
    let tlps = after.tlps_tx - before.tlps_tx;
    // 250 MHz user clock (Gen3 x8): simulated-time bandwidth of the path.
    let sim_mb_s = n as f64 / (cycles as f64 * 4e-9) / 1e6;
    println!(
        "simulated board: BAR2 save of {n} bytes: {tlps} read requests, {cycles} cycles \
         = {sim_mb_s:.0} MB/s at 250 MHz; {:.1} kB/s wall",
        n as f64 / wall / 1e3
    );
    assert!(
        tlps < (n / 64) as u64,
        "bulk reads use wide requests, not one per word: {tlps} for {n} bytes"
    );
}

#[test]
fn a_reset_behind_the_drivers_back_is_device_lost_and_a_reset_recovers() {
    let dma = guest();
    let irq = Arc::new(IrqLog::new());
    let mut b = open(&dma, &irq);
    b.write_reg(offsets::SCRATCH, 1).expect("write");
    for ev in [SimEvent::Flr, SimEvent::HotReset] {
        b.sim_event(ev).expect("event");
        let e = b.quiesce().expect_err("lost");
        assert!(matches!(e, DeviceError::Lost(_)), "{ev:?}: {e:?}");
        assert!(e.to_string().contains("reset behind vfpga's back"), "{e}");
        b.function_reset().expect("a reset of our own recovers");
        b.quiesce().expect("quiesce");
        b.resume().expect("resume");
    }
}

#[test]
fn link_down_and_surprise_removal_are_device_lost_never_a_hang() {
    let dma = guest();
    let irq = Arc::new(IrqLog::new());
    let mut b = open(&dma, &irq);
    b.sim_event(SimEvent::LinkDown).expect("link down");
    let e = b.quiesce().expect_err("lost");
    assert!(matches!(e, DeviceError::Lost(_)), "{e:?}");
    let e = b.read_reg(offsets::STATUS).expect_err("still lost");
    assert!(e.to_string().contains("device lost"), "{e}");
    b.sim_event(SimEvent::LinkUp).expect("link up");
    b.function_reset().expect("reset after the link is back");
    assert_eq!(b.read_reg(offsets::ID).expect("ID"), consts::DEVICE_MAGIC);
    // Saving device memory when the board disappears: lost, with how much
    // had been read.
    b.sim_event(SimEvent::SurpriseRemoval).expect("remove");
    let mut buf = vec![0u8; (PAGES * consts::PAGE_SIZE) as usize];
    let e = b.devmem_read(0, &mut buf).expect_err("lost");
    assert!(
        e.to_string().contains("had been read before it was seen"),
        "{e}"
    );
    assert!(b.advance(100).is_err());
}

//! The free-running mode behind the same Device interface.

mod common;

use common::*;
use vfpga_device::Device;
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_model::ModelRunner;
use vfpga_regs::{Opcode, offsets};

#[test]
fn runner_runs_by_itself_and_hands_the_model_back() {
    let r = Rig::new();
    let (dma, mem, irq) = (r.dma.clone(), r.mem.clone(), r.irq.clone());
    let mut dev = ModelRunner::spawn(r.dev).unwrap();
    assert!(dev.info().self_running);
    dev.check_identity().unwrap();
    let mut ring = RingDriver::setup(&mut dev, &dma, SQ, 16, CQ, 16).unwrap();
    dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    let data = pattern(50_000, 7);
    dma.host_write(DATA, &data).unwrap();
    let descs: Vec<_> = (0..40)
        .map(|i| {
            Desc::new(
                Opcode::CopyH2h,
                i,
                DATA,
                DATA + 0x10000 + u64::from(i) * 8,
                50_000 - 400,
                0,
            )
            .with_irq()
        })
        .collect();
    let cs = ring.run(&mut dev, &descs, 1_000_000).unwrap();
    assert_eq!(cs.len(), 40);
    assert!(
        cs.iter()
            .all(|c| c.status() == Some(vfpga_regs::CplStatus::Ok))
    );
    let snap = mem.snapshot();
    let off = (DATA + 0x10000 + 39 * 8 - GUEST) as usize;
    assert_eq!(&snap[off..off + 50_000 - 400], &data[..50_000 - 400]);
    assert_eq!(irq.count(0), 40);
    // Quiesce freezes it, the state saves, and the model comes back intact.
    dev.quiesce().unwrap();
    let s = dev.save_state().unwrap();
    assert_eq!(s.arch.cnt_desc, 40);
    let t0 = dev.read_reg(offsets::TIMER_LO).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(
        dev.read_reg(offsets::TIMER_LO).unwrap(),
        t0,
        "frozen while quiesced"
    );
    let mut m = dev.into_model().unwrap();
    assert_eq!(m.save_state().unwrap(), s);
}

#[test]
fn idle_runner_timer_keeps_counting() {
    let r = Rig::new();
    let mut dev = ModelRunner::spawn(r.dev).unwrap();
    let t0 = dev.read_reg(offsets::TIMER_LO).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let t1 = dev.read_reg(offsets::TIMER_LO).unwrap();
    assert!(t1 > t0, "{t0} -> {t1}");
    assert!(dev.advance(1).unwrap().idle);
}

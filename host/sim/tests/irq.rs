//! Interrupts (datasheet §4): mask, status, pending, order, and messages that
//! wait across a quiesce.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use common::GUEST;
use vfpga_device::Device;
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_regs::{Opcode, consts, offsets, state};

const CPL: u16 = consts::VECTOR_CPL as u16;
const ERR: u16 = consts::VECTOR_ERR as u16;

fn setup() -> (common::Rig, RingDriver) {
    let mut r = common::rig();
    let drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).expect("rings");
    (r, drv)
}

#[test]
fn masked_cause_stays_pending_until_unmasked() {
    let (mut r, mut drv) = setup();
    assert_eq!(r.rd(offsets::IRQ_MASK), 3, "all masked at reset");
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq()],
        100_000,
    )
    .unwrap();
    assert_eq!(r.rd(offsets::IRQ_STATUS), 1);
    assert_eq!(r.rd(offsets::IRQ_PENDING), 1);
    assert!(r.irq.raised().is_empty(), "masked: no message");
    r.dev.advance(1000).unwrap();
    assert!(r.irq.raised().is_empty());
    r.wr(offsets::IRQ_MASK, 2); // unmask CPL
    r.dev.advance(10).unwrap();
    assert_eq!(r.irq.take(), vec![CPL], "sent once when unmasked");
    assert_eq!(r.rd(offsets::IRQ_PENDING), 0, "sending clears PENDING");
    assert_eq!(r.rd(offsets::IRQ_STATUS), 1, "but not STATUS");
    r.dev.advance(1000).unwrap();
    assert!(r.irq.raised().is_empty(), "never twice");
    r.wr(offsets::IRQ_STATUS, 1);
    assert_eq!(r.rd(offsets::IRQ_STATUS), 0);
    // Unmasked: a completion with IRQ sends at once; one without does not.
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::Nop, 2, 0, 0, 0, 0)],
        100_000,
    )
    .unwrap();
    assert!(r.irq.take().is_empty());
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::Nop, 3, 0, 0, 0, 0).with_irq()],
        100_000,
    )
    .unwrap();
    assert_eq!(r.irq.take(), vec![CPL]);
}

#[test]
fn w1c_clears_the_pending_message_with_the_cause() {
    let (mut r, mut drv) = setup();
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq()],
        100_000,
    )
    .unwrap();
    assert_eq!(r.rd(offsets::IRQ_PENDING), 1);
    r.wr(offsets::IRQ_STATUS, 1);
    assert_eq!(
        (r.rd(offsets::IRQ_STATUS), r.rd(offsets::IRQ_PENDING)),
        (0, 0)
    );
    r.wr(offsets::IRQ_MASK, 0);
    r.dev.advance(100).unwrap();
    assert!(r.irq.raised().is_empty(), "a cleared cause sends nothing");
}

#[test]
fn vector_zero_goes_first() {
    let (mut r, mut drv) = setup();
    // An error (bad opcode) with the IRQ flag: both causes fire.
    let mut d = Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq();
    d.opcode = 0x55;
    drv.run(&mut r.dev, &[d], 100_000).unwrap();
    assert_eq!(r.rd(offsets::IRQ_PENDING), 3);
    r.wr(offsets::IRQ_MASK, 0);
    r.dev.advance(10).unwrap();
    assert_eq!(r.irq.take(), vec![CPL, ERR]);
    assert_eq!(r.rd(offsets::IRQ_STATUS), 3);
}

#[test]
fn a_pending_message_waits_across_quiesce_and_migrates() {
    let (mut r, mut drv) = setup();
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq()],
        100_000,
    )
    .unwrap();
    r.dev.quiesce().unwrap();
    // IRQ_MASK cannot change while quiesced.
    r.wr(offsets::IRQ_MASK, 0);
    assert_eq!(r.rd(offsets::IRQ_MASK), 3);
    let mut s = r.dev.save_state().unwrap();
    assert_eq!(s.arch.irq_pending, 1);
    // Restore it unmasked into another device: nothing while quiesced, one
    // message after RESUME.
    s.arch.irq_mask = 0;
    let mut other = common::rig();
    other.dev.quiesce().unwrap();
    other.dev.restore_state(&s).unwrap();
    other.dev.advance(10_000).unwrap();
    assert!(other.irq.raised().is_empty(), "quiesced: no message");
    other.dev.resume().unwrap();
    other.dev.advance(10).unwrap();
    assert_eq!(other.irq.take(), vec![CPL]);
    assert_eq!(other.rd(offsets::IRQ_PENDING), 0);
    // The source, resumed, still owes it (masked there).
    r.dev.resume().unwrap();
    r.dev.advance(100).unwrap();
    assert!(r.irq.raised().is_empty());
    assert_eq!(state::IRQ_PENDING, 9);
}

//! Quiesce at 1,000+ random points during long transfers: no DMA and no
//! interrupt afterwards, the timer frozen, the state words stable across
//! 10,000 idle cycles and across BAR reads; and every transfer still finishes
//! with the right data.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use common::{GUEST, pattern_bytes};
use rand::{Rng, SeedableRng, rngs::StdRng};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Bar, Device};
use vfpga_regs::{CplStatus, Opcode, REGISTERS, Status, offsets};
use vfpga_sim::RegOp;

const SRC: u64 = GUEST + 0x10_0000;
const DST: u64 = GUEST + 0x20_0000;
const CHUNK: u32 = 0x8000;
const POINTS: usize = 1000;

/// Registers a host may read while quiesced without any side effect on state.
fn readable() -> Vec<u32> {
    REGISTERS
        .iter()
        .map(|r| r.offset)
        .filter(|&o| o != offsets::STATE_DATA)
        .collect()
}

#[test]
fn quiesce_at_random_points_freezes_everything() {
    let mut r = common::rig_with(64, vfpga_sim::Clocking::Explicit);
    let data = pattern_bytes(3, 8 * CHUNK as usize);
    r.guest_write(SRC, &data);
    let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).unwrap();
    r.wr(offsets::IRQ_MASK, 0);
    let regs = readable();
    let mut rng = StdRng::seed_from_u64(0x0123_4567);
    let mut submitted = 0u32;
    let mut completed = Vec::new();
    let mut points = 0;
    let mut mid_descriptor = 0;
    while points < POINTS {
        // Keep the engine busy with a mix of long descriptors.
        while drv.free_slots() > 0 {
            let i = submitted % 8;
            let off = u64::from(i) * u64::from(CHUNK);
            let d = match submitted % 4 {
                0 => Desc::new(Opcode::CopyH2h, submitted, SRC + off, DST + off, CHUNK, 0),
                1 => Desc::new(Opcode::Crc32c, submitted, SRC + off, 0, CHUNK, 0),
                2 => Desc::new(
                    Opcode::CopyH2d,
                    submitted,
                    SRC + off,
                    off % 0x30000,
                    CHUNK,
                    0,
                ),
                _ => Desc::new(Opcode::FillHost, submitted, 0, DST + off, CHUNK, submitted),
            };
            drv.submit(&mut r.dev, &d.with_irq()).unwrap();
            submitted += 1;
        }
        r.dev.advance(rng.random_range(1..400)).unwrap();
        r.dev.quiesce().unwrap();
        points += 1;
        let s1 = r.dev.save_state().unwrap();
        if s1.arch.cur_flags & 1 != 0 && s1.arch.cur_done > 0 && s1.arch.cur_done < s1.arch.cur_len
        {
            mid_descriptor += 1;
        }
        let st1 = r.dev.stats().unwrap();
        let irqs = r.irq.raised().len();
        // Idle cycles, then reads of every register and some device memory.
        r.dev.advance(10_000).unwrap();
        let ops: Vec<RegOp> = regs.iter().map(|&o| RegOp::Read(o)).collect();
        r.dev.reg_batch(&ops).unwrap();
        r.rd(offsets::TIMER_LO);
        let mut b = [0u8; 8];
        r.dev
            .mmio_read(Bar::DevMem, rng.random_range(0..0x3_0000) & !7, &mut b)
            .unwrap();
        let s2 = r.dev.save_state().unwrap();
        assert_eq!(s1, s2, "point {points}: state words changed while quiesced");
        let st2 = r.dev.stats().unwrap();
        assert_eq!(
            (st1.dma_reads, st1.dma_writes, st1.irqs),
            (st2.dma_reads, st2.dma_writes, st2.irqs),
            "point {points}: bus request or interrupt while quiesced"
        );
        assert_eq!(r.irq.raised().len(), irqs);
        assert!(r.dev.status().unwrap().contains(Status::QUIESCED));
        r.dev.resume().unwrap();
        completed.extend(drv.poll(&mut r.dev).unwrap());
    }
    completed.extend(drv.wait_all(&mut r.dev, 50_000_000).unwrap());
    assert_eq!(completed.len() as u32, submitted);
    for c in &completed {
        assert_eq!(
            (c.status(), c.bytes),
            (Some(CplStatus::Ok), CHUNK),
            "descriptor {}",
            c.tag
        );
        if c.tag % 4 == 1 {
            let i = (c.tag % 8) as usize * CHUNK as usize;
            assert_eq!(c.result, crc32c::crc32c(&data[i..i + CHUNK as usize]));
        }
    }
    // Every message was sent exactly once: one CPL per descriptor.
    assert_eq!(r.irq.count(0), submitted as usize);
    // Last copies of each buffer are right.
    let last_copy = (0..submitted).filter(|t| t % 4 == 0).max().unwrap();
    let off = (last_copy % 8) as usize * CHUNK as usize;
    let last_fill = (0..submitted)
        .filter(|t| t % 4 == 3 && t % 8 == last_copy % 8)
        .max();
    if last_fill.is_none_or(|f| f < last_copy) {
        assert_eq!(
            r.guest_read(DST + off as u64, CHUNK as usize),
            data[off..off + CHUNK as usize]
        );
    }
    assert!(
        mid_descriptor > POINTS / 2,
        "most points fell inside a descriptor ({mid_descriptor})"
    );
    eprintln!(
        "quiesce points: {points} ({mid_descriptor} inside a descriptor), {} descriptors completed",
        completed.len()
    );
}

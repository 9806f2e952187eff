//! The state port (§9): save → reset → restore → resume finishes an
//! interrupted descriptor; validation matches `vfpga_device::validate_arch`
//! bit for bit; hostile BAR writes while quiesced change nothing they may not
//! and cannot make the device reach memory it was not given.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use std::sync::Arc;

use common::{GUEST, GUEST_LEN, pattern_bytes};
use rand::{Rng, SeedableRng, rngs::StdRng};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Bar, Device, DeviceError, Perm, VecMemory, validate_arch};
use vfpga_regs::{ArchState, CplStatus, Opcode, StateErr, Status, consts, offsets, state};

const SRC: u64 = GUEST + 0x10_0000;
const DST: u64 = GUEST + 0x20_0000;
const LEN: u32 = 0x4_0000;

#[test]
fn save_reset_restore_resume_finishes_an_interrupted_descriptor() {
    for (k, op) in [
        Opcode::CopyH2h,
        Opcode::Crc32c,
        Opcode::CopyH2d,
        Opcode::FillHost,
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = common::rig_with(128, vfpga_sim::Clocking::Explicit);
        let data = pattern_bytes(k as u32 + 1, LEN as usize);
        r.guest_write(SRC, &data);
        let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 4, GUEST + 0x1000, 4).unwrap();
        let dst = if op == Opcode::CopyH2d {
            0x1003
        } else {
            DST + 1
        };
        let d = Desc::new(op, 42, SRC, dst, LEN, 0x0102_0304).with_irq();
        drv.submit(&mut r.dev, &d).unwrap();
        r.wr(offsets::IRQ_MASK, 0);
        r.dev.advance(5_000).unwrap();
        r.dev.quiesce().unwrap();
        let saved = r.dev.save_state().unwrap();
        let done = saved.arch.cur_done;
        assert_eq!(
            saved.arch.cur_flags & 1,
            1,
            "{op:?}: a descriptor is in flight"
        );
        assert!(
            done > 0 && done < LEN,
            "{op:?}: interrupted mid-way ({done})"
        );
        // Soft reset forgets it (device memory survives); restore brings it back.
        r.dev.soft_reset().unwrap();
        assert_eq!(r.dev.status().unwrap(), Status::empty());
        r.dev.quiesce().unwrap();
        assert_eq!(r.dev.save_state().unwrap().arch.cur_flags, 0);
        r.dev.restore_state(&saved).unwrap();
        assert_eq!(
            r.dev.save_state().unwrap(),
            saved,
            "the words read back as written"
        );
        r.dev.resume().unwrap();
        let c = drv.wait_all(&mut r.dev, 10_000_000).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].tag, c[0].status(), c[0].bytes),
            (42, Some(CplStatus::Ok), LEN)
        );
        match op {
            Opcode::CopyH2h => assert_eq!(r.guest_read(DST + 1, LEN as usize), data),
            Opcode::Crc32c => assert_eq!(c[0].result, crc32c::crc32c_append(0x0102_0304, &data)),
            Opcode::CopyH2d => {
                let mut b = vec![0u8; LEN as usize];
                r.dev.devmem_read(0x1003, &mut b).unwrap();
                assert_eq!(b, data);
            }
            _ => {
                let got = r.guest_read(DST + 1, LEN as usize);
                assert!(
                    got.iter()
                        .enumerate()
                        .all(|(i, &b)| b == [4, 3, 2, 1][i % 4])
                );
            }
        }
        assert_eq!(r.rd(offsets::CNT_BYTES_LO), LEN);
        assert_eq!(r.irq.take(), vec![consts::VECTOR_CPL as u16]);
    }
}

#[test]
fn state_transplants_into_a_fresh_device() {
    let mut a = common::rig();
    let data = pattern_bytes(9, LEN as usize);
    a.guest_write(SRC, &data);
    let mut drv = RingDriver::setup(&mut a.dev, &a.dma, GUEST, 4, GUEST + 0x1000, 4).unwrap();
    drv.submit(&mut a.dev, &Desc::new(Opcode::CopyH2h, 7, SRC, DST, LEN, 0))
        .unwrap();
    a.dev.advance(10_000).unwrap();
    a.dev.quiesce().unwrap();
    let s = a.dev.save_state().unwrap();
    // The destination shares the guest memory (as after a migration).
    let mut b = common::rig();
    b.dma.unmap_all();
    b.dma.map(GUEST, a.mem.clone(), Perm::RW).unwrap();
    b.dev.quiesce().unwrap();
    b.dev.restore_state(&s).unwrap();
    b.dev.resume().unwrap();
    drop(a);
    let c = drv.wait_all(&mut b.dev, 10_000_000).unwrap();
    assert_eq!((c[0].tag, c[0].bytes), (7, LEN));
    assert_eq!(b.guest_read(DST, LEN as usize), data);
}

/// A random state that is valid, then damaged in one of several ways.
fn random_state(rng: &mut StdRng) -> ArchState {
    let mut w = ArchState::RESET.to_words();
    let sizes = [0u32, 2, 4, 64, 4096];
    let sq = sizes[rng.random_range(0..sizes.len())];
    let cq = sizes[rng.random_range(0..sizes.len())];
    w[state::SQ_SIZE] = sq;
    w[state::CQ_SIZE] = cq;
    w[state::SQ_HEAD] = rng.random_range(0..sq.max(1));
    w[state::SQ_TAIL] = rng.random_range(0..sq.max(1));
    w[state::CQ_HEAD] = rng.random_range(0..cq.max(1));
    w[state::CQ_TAIL] = rng.random_range(0..cq.max(1)) | (rng.random::<u32>() & 0x8000_0000);
    w[state::SCRATCH] = rng.random();
    w[state::ERR_CODE] = rng.random_range(0..8);
    if rng.random_bool(0.6) {
        let op = rng.random_range(0..7u32);
        let len = rng.random_range(0..5000u32);
        w[state::CUR_FLAGS] = 1;
        w[state::CUR_CTL] = op | (u32::from(rng.random_bool(0.5)) << 8);
        w[state::CUR_LEN] = len;
        w[state::CUR_DONE] = rng.random_range(0..=len);
        w[state::CUR_SRC_LO] = rng.random_range(0..0x40000);
        w[state::CUR_DST_LO] = rng.random_range(0..0x40000);
        w[state::CUR_SLOT] = rng.random_range(0..sq.max(1));
        w[state::CUR_CRC] = if op == 4 { rng.random() } else { 0 };
    }
    // Damage: one to three random words get random values or single bits.
    for _ in 0..rng.random_range(0..4) {
        let i = rng.random_range(0..state::WORDS);
        w[i] = match rng.random_range(0..4) {
            0 => rng.random(),
            1 => w[i] ^ (1 << rng.random_range(0..32)),
            2 => rng.random_range(0..16),
            _ => 0,
        };
    }
    ArchState::from_words(&w)
}

#[test]
fn validation_matches_the_reference_bit_for_bit() {
    let mut r = common::rig();
    r.dev.quiesce().unwrap();
    let id = r.dev.info().identity;
    let bytes = id.devmem_bytes();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..1500 {
        let arch = random_state(&mut rng);
        let want = validate_arch(&arch, bytes);
        let got = r
            .dev
            .restore_state(&vfpga_device::DeviceState::new(id, arch));
        match (&want, &got) {
            (Ok(()), Ok(())) => {}
            (Err(w), Err(DeviceError::StateRejected(g))) => {
                assert_eq!(w, g, "state #{i}: {arch:?}")
            }
            _ => panic!("state #{i}: reference {want:?}, RTL {got:?}: {arch:?}"),
        }
        seen.insert(want.map_err(|v| v.code as u8).err());
        // RESUME gives the same verdict (and stays quiesced when refused).
        if i % 50 == 0 {
            let res = r.dev.resume();
            assert_eq!(res.is_ok(), want.is_ok());
            let st = r.dev.status().unwrap();
            assert_eq!(st.contains(Status::STATE_INVALID), want.is_err());
            r.dev.soft_reset().unwrap();
            r.dev.quiesce().unwrap();
        }
    }
    assert!(seen.len() >= 7, "every verdict was exercised: {seen:?}");
    assert!(seen.contains(&Some(StateErr::Inflight as u8)));
}

const BAR0_WORDS: u32 = consts::BAR0_SIZE / 4;

#[test]
fn hostile_writes_while_quiesced_change_nothing_they_may_not() {
    let mut r = common::rig();
    let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).unwrap();
    drv.submit(&mut r.dev, &Desc::new(Opcode::CopyH2h, 1, SRC, DST, LEN, 0))
        .unwrap();
    r.dev.advance(3000).unwrap();
    r.dev.quiesce().unwrap();
    let before = r.dev.save_state().unwrap();
    let stats = r.dev.stats().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let allowed = [
        offsets::STATE_IDX,
        offsets::STATE_DATA,
        offsets::STATE_CTRL,
        offsets::CTRL,
        offsets::DMALOG_CTRL,
    ];
    for _ in 0..3000 {
        let off = rng.random_range(0..BAR0_WORDS) * 4;
        if allowed.contains(&off) {
            continue;
        }
        r.wr(off, rng.random());
    }
    // CTRL without SOFT_RESET / RESUME: ENABLE and QUIESCE are ignored.
    r.wr(offsets::CTRL, 0xffff_fff5);
    r.wr(offsets::CTRL, 0);
    for _ in 0..200 {
        let o = rng.random_range(0..r.dev.info().bar2_size - 8);
        let mut b = [0u8; 8];
        r.dev.mmio_read(Bar::DevMem, o, &mut b).unwrap();
    }
    r.dev.advance(10_000).unwrap();
    assert_eq!(r.dev.save_state().unwrap(), before);
    let after = r.dev.stats().unwrap();
    assert_eq!(
        (after.dma_reads, after.dma_writes, after.irqs),
        (stats.dma_reads, stats.dma_writes, stats.irqs)
    );
    r.dev.resume().unwrap();
    let c = drv.wait_all(&mut r.dev, 10_000_000).unwrap();
    assert_eq!((c[0].status(), c[0].bytes), (Some(CplStatus::Ok), LEN));
}

#[test]
fn hostile_state_cannot_reach_unmapped_memory() {
    let mut rng = StdRng::seed_from_u64(99);
    // Memory the device was not given: a region right after guest memory,
    // known to the test but never mapped.
    let secret = Arc::new(VecMemory::new(0x10000));
    for round in 0..40 {
        let mut r = common::rig();
        let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).unwrap();
        r.wr(offsets::IRQ_MASK, 0);
        drv.submit(&mut r.dev, &Desc::new(Opcode::CopyH2h, 1, SRC, DST, LEN, 0))
            .unwrap();
        r.dev.advance(2000).unwrap();
        r.dev.quiesce().unwrap();
        // Any offset, any value: registers and the state port.
        r.wr(offsets::STATE_IDX, 0);
        for _ in 0..200 {
            let off = if rng.random_bool(0.5) {
                offsets::STATE_DATA
            } else {
                rng.random_range(0..BAR0_WORDS) * 4
            };
            let v = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => (GUEST + GUEST_LEN as u64 + rng.random_range(0..0x10000)) as u32,
                2 => rng.random_range(0..8),
                _ => 0,
            };
            if off == offsets::CTRL && v & 2 != 0 {
                continue; // a soft reset would just start over
            }
            r.wr(off, v);
        }
        let _ = r.dev.resume();
        let _ = r
            .dev
            .soft_reset()
            .map(|_| ())
            .and(Ok::<(), DeviceError>(()));
        r.dev.advance(50_000).unwrap();
        let s = r.dev.stats().unwrap();
        assert!(s.dma_reads + s.dma_writes > 0 || round > 0);
        // Whatever it did went through the DMA port; nothing outside the
        // mapping was touched.
        assert!(secret.snapshot().iter().all(|&b| b == 0));
        for (iova, len) in r.dma.mappings() {
            assert!(iova == GUEST && len == GUEST_LEN as u64);
        }
    }
}

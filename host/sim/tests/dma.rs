//! Every DMA operation through the rings: lengths (zero, misaligned, across
//! 4 KiB pages), ring wrap-around, descriptor errors, DMA faults.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use common::{GUEST, Rig, pattern_bytes};
use vfpga_device::Device;
use vfpga_device::ring::{Completion, Desc, RingDriver};
use vfpga_regs::{CplStatus, Opcode, Status, consts, offsets};

const SQ: u64 = GUEST;
const CQ: u64 = GUEST + 0x2000;
const SRC: u64 = GUEST + 0x10000;
const DST: u64 = GUEST + 0x80000;
const BUDGET: u64 = 5_000_000;

fn ring(r: &mut Rig, size: u32) -> RingDriver {
    RingDriver::setup(&mut r.dev, &r.dma, SQ, size, CQ, size).expect("rings")
}

fn run(r: &mut Rig, drv: &mut RingDriver, d: Desc) -> Completion {
    let c = drv.run(&mut r.dev, &[d], BUDGET).expect("run");
    assert_eq!(c.len(), 1);
    c[0]
}

const LENS: &[u32] = &[0, 1, 3, 7, 63, 64, 65, 100, 127, 4095, 4096, 4097, 9000];
const OFFS: &[u64] = &[0, 1, 5, 63, 4093];

#[test]
fn copy_host_to_host_all_lengths_and_alignments() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 16);
    let mut tag = 0;
    for &len in LENS {
        for (i, &so) in OFFS.iter().enumerate() {
            let dso = OFFS[(i + 2) % OFFS.len()];
            let data = pattern_bytes(len ^ so as u32, len as usize);
            r.guest_write(SRC + so, &data);
            r.guest_write(DST, &vec![0xee; 0x6000]);
            tag += 1;
            let c = run(
                &mut r,
                &mut drv,
                Desc::new(Opcode::CopyH2h, tag, SRC + so, DST + dso, len, 0),
            );
            assert_eq!(
                (c.tag, c.status(), c.bytes, c.result),
                (tag, Some(CplStatus::Ok), len, 0)
            );
            let got = r.guest_read(DST, 0x6000);
            let d = dso as usize;
            assert_eq!(
                &got[d..d + len as usize],
                &data[..],
                "len {len} src+{so} dst+{dso}"
            );
            assert!(
                got[..d].iter().all(|&b| b == 0xee),
                "bytes before the destination"
            );
            assert!(
                got[d + len as usize..].iter().all(|&b| b == 0xee),
                "bytes after the destination"
            );
        }
    }
    let n = u32::try_from(LENS.len() * OFFS.len()).unwrap();
    assert_eq!(r.rd(offsets::CNT_DESC), n);
    assert_eq!(r.rd(offsets::CNT_ERR), 0);
    let total: u32 = LENS.iter().sum::<u32>() * OFFS.len() as u32;
    assert_eq!(r.rd(offsets::CNT_BYTES_LO), total);
}

#[test]
fn device_memory_round_trip_and_fill() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 8);
    let devmem = u64::from(common::PAGES) * 4096;
    for &len in LENS {
        for &o in &[0u64, 3, 4094] {
            let data = pattern_bytes(len + 7, len as usize);
            r.guest_write(SRC, &data);
            let c = run(
                &mut r,
                &mut drv,
                Desc::new(Opcode::CopyH2d, 1, SRC, 0x1000 + o, len, 0),
            );
            assert_eq!((c.status(), c.bytes), (Some(CplStatus::Ok), len));
            let mut back = vec![0u8; len as usize];
            r.dev.devmem_read(0x1000 + o, &mut back).unwrap();
            assert_eq!(back, data, "H2D len {len} at +{o}");
            r.guest_write(DST, &vec![0; len as usize + 8]);
            let c = run(
                &mut r,
                &mut drv,
                Desc::new(Opcode::CopyD2h, 2, 0x1000 + o, DST + 1, len, 0),
            );
            assert_eq!((c.status(), c.bytes), (Some(CplStatus::Ok), len));
            assert_eq!(
                r.guest_read(DST + 1, len as usize),
                data,
                "D2H len {len} at +{o}"
            );
        }
    }
    // FILL_DEV and FILL_HOST: byte i is byte i%4 of PATTERN (from the descriptor start).
    for &len in &[0u32, 1, 2, 5, 66, 4099] {
        let pat = 0x4433_2211u32;
        let want: Vec<u8> = (0..len as usize)
            .map(|i| pat.to_le_bytes()[i % 4])
            .collect();
        let c = run(
            &mut r,
            &mut drv,
            Desc::new(Opcode::FillDev, 3, 0, 4093, len, pat),
        );
        assert_eq!((c.status(), c.bytes), (Some(CplStatus::Ok), len));
        let mut back = vec![0u8; len as usize];
        r.dev.devmem_read(4093, &mut back).unwrap();
        assert_eq!(back, want, "FILL_DEV {len}");
        let c = run(
            &mut r,
            &mut drv,
            Desc::new(Opcode::FillHost, 4, 0, DST + 4094, len, pat),
        );
        assert_eq!((c.status(), c.bytes), (Some(CplStatus::Ok), len));
        assert_eq!(
            r.guest_read(DST + 4094, len as usize),
            want,
            "FILL_HOST {len}"
        );
    }
    // The last byte of device memory is reachable; one past it is not.
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::FillDev, 5, 0, devmem - 1, 1, 0xab),
    );
    assert_eq!(c.status(), Some(CplStatus::Ok));
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::FillDev, 6, 0, devmem - 1, 2, 0xab),
    );
    assert_eq!((c.status(), c.bytes), (Some(CplStatus::DevmemRange), 0));
}

#[test]
fn crc32c_matches_the_reference_and_continues() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 4);
    for &len in LENS {
        let data = pattern_bytes(len * 3 + 1, len as usize);
        r.guest_write(SRC + 5, &data);
        let c = run(
            &mut r,
            &mut drv,
            Desc::new(Opcode::Crc32c, 9, SRC + 5, 0, len, 0),
        );
        assert_eq!((c.status(), c.bytes), (Some(CplStatus::Ok), len));
        assert_eq!(c.result, crc32c::crc32c(&data), "CRC of {len} bytes");
        // Split in two: the second descriptor continues from the first result.
        let cut = len / 3;
        let a = run(
            &mut r,
            &mut drv,
            Desc::new(Opcode::Crc32c, 10, SRC + 5, 0, cut, 0),
        );
        let b = run(
            &mut r,
            &mut drv,
            Desc::new(
                Opcode::Crc32c,
                11,
                SRC + 5 + u64::from(cut),
                0,
                len - cut,
                a.result,
            ),
        );
        assert_eq!(
            b.result,
            crc32c::crc32c(&data),
            "continued CRC of {len} bytes"
        );
    }
    // A CRC of nothing returns PATTERN.
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::Crc32c, 12, SRC, 0, 0, 0x1234_5678),
    );
    assert_eq!(c.result, 0x1234_5678);
}

#[test]
fn nop_moves_nothing_and_completes_with_zero_bytes() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 4);
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::Nop, 77, 0xdead_0000, 0xbeef_0000, 5000, 1),
    );
    assert_eq!(
        (c.tag, c.status(), c.bytes, c.result),
        (77, Some(CplStatus::Ok), 0, 0)
    );
}

#[test]
fn ring_wrap_around_keeps_slots_and_phases() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 4);
    let descs: Vec<Desc> = (0..23)
        .map(|i| Desc::new(Opcode::FillHost, 100 + i, 0, DST + u64::from(i) * 8, 8, i))
        .collect();
    let cpls = drv.run(&mut r.dev, &descs, BUDGET).unwrap();
    assert_eq!(cpls.len(), 23);
    for (i, c) in cpls.iter().enumerate() {
        assert_eq!(c.tag, 100 + i as u32, "completions in order");
        assert_eq!(u32::from(c.slot), i as u32 % 4, "SQ slot of descriptor {i}");
        assert_eq!(c.phase, (i / 4) % 2 == 0, "phase of completion {i}");
        assert_eq!(c.status(), Some(CplStatus::Ok));
    }
    assert_eq!(r.rd(offsets::SQ_HEAD), 23 % 4);
    assert_eq!(
        r.rd(offsets::CQ_TAIL),
        (23 % 4) | (u32::from((23 / 4) % 2 == 0) << 31)
    );
}

#[test]
fn descriptor_errors_complete_with_their_status() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 8);
    r.wr(offsets::IRQ_MASK, 0);
    let devmem = u64::from(common::PAGES) * 4096;
    let mut bad_op = Desc::new(Opcode::Nop, 1, 0, 0, 4, 0);
    bad_op.opcode = 7;
    let mut rsvd = Desc::new(Opcode::CopyH2h, 2, SRC, DST, 4, 0);
    rsvd.rsvd = 1;
    let cases = [
        (bad_op, CplStatus::BadOpcode),
        (rsvd, CplStatus::BadDesc),
        (
            Desc::new(Opcode::CopyH2h, 3, SRC, DST, consts::MAX_DESC_LEN + 1, 0),
            CplStatus::BadDesc,
        ),
        (
            Desc::new(Opcode::Nop, 4, 0, 0, consts::MAX_DESC_LEN + 1, 0),
            CplStatus::BadDesc,
        ),
        (
            Desc::new(Opcode::CopyH2d, 5, SRC, devmem - 3, 4, 0),
            CplStatus::DevmemRange,
        ),
        (
            Desc::new(Opcode::CopyD2h, 6, devmem, DST, 1, 0),
            CplStatus::DevmemRange,
        ),
        (
            Desc::new(Opcode::FillDev, 7, 0, 1 << 32, 1, 0),
            CplStatus::DevmemRange,
        ),
        (
            Desc::new(Opcode::FillDev, 8, 0, u64::MAX, 2, 0),
            CplStatus::DevmemRange,
        ),
    ];
    r.guest_write(DST, &[0x11; 16]);
    for (i, (d, st)) in cases.iter().enumerate() {
        r.irq.take();
        let slot = r.rd(offsets::SQ_HEAD);
        let c = run(&mut r, &mut drv, *d);
        assert_eq!((c.status(), c.bytes), (Some(*st), 0), "case {i}");
        assert_eq!(r.err_code(), st.raw(), "ERR_CODE of case {i}");
        assert_eq!(
            r.err_addr(),
            SQ + u64::from(slot) * 32,
            "ERR_ADDR is the descriptor's address"
        );
        assert_eq!(
            r.irq.take(),
            vec![consts::VECTOR_ERR as u16],
            "one ERR message"
        );
        r.wr(offsets::IRQ_STATUS, 3);
        r.wr(offsets::ERR_CODE, 0);
        assert_eq!(r.err_code(), 0);
    }
    assert_eq!(r.guest_read(DST, 16), vec![0x11; 16], "nothing moved");
    assert_eq!(r.rd(offsets::CNT_ERR), cases.len() as u32);
    assert!(!r.dev.status().unwrap().contains(Status::HALTED));
}

#[test]
fn dma_outside_mapped_memory_faults_and_touches_nothing() {
    let mut r = common::rig();
    // A canary region mapped right after a hole.
    let canary = std::sync::Arc::new(vfpga_device::VecMemory::new(0x2000));
    let hole = GUEST + common::GUEST_LEN as u64;
    r.dma
        .map(hole + 0x1000, canary.clone(), vfpga_device::Perm::RW)
        .unwrap();
    let mut drv = ring(&mut r, 8);
    r.wr(offsets::IRQ_MASK, 0);
    // Read crossing the end of guest memory: bursts before the hole are copied.
    let src = hole - 100;
    let data = pattern_bytes(5, 100);
    r.guest_write(src, &data);
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::CopyH2h, 1, src, DST, 300, 0),
    );
    assert_eq!(c.status(), Some(CplStatus::DmaReadFault));
    // Bursts of 64 and 36 bytes (to the page end) were inside; the third faults.
    assert_eq!(c.bytes, 100, "bytes before the failing burst");
    assert_eq!(r.guest_read(DST, 100), data);
    assert_eq!(r.err_code(), CplStatus::DmaReadFault.raw());
    assert_eq!(
        r.err_addr(),
        hole,
        "ERR_ADDR is the faulting burst's address"
    );
    // Write into the hole: refused, nothing written anywhere.
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::FillHost, 2, 0, hole + 8, 0x1800, 0xffff_ffff),
    );
    assert_eq!((c.status(), c.bytes), (Some(CplStatus::DmaWriteFault), 0));
    assert_eq!(r.err_addr(), hole + 8);
    let c = run(
        &mut r,
        &mut drv,
        Desc::new(Opcode::CopyD2h, 3, 0, u64::MAX - 3, 64, 0),
    );
    assert_eq!(c.status(), Some(CplStatus::DmaWriteFault));
    assert!(
        canary.snapshot().iter().all(|&b| b == 0),
        "the canary was not touched"
    );
    assert_eq!(r.irq.count(consts::VECTOR_ERR as u16), 3);
    let st = r.dev.status().unwrap();
    assert!(!st.contains(Status::HALTED), "burst faults do not halt");
}

#[test]
fn ring_faults_halt_the_engine() {
    // SQ outside mapped memory.
    let mut r = common::rig();
    let bad = GUEST + common::GUEST_LEN as u64 + 0x1000;
    r.wr(offsets::SQ_BASE_LO, bad as u32);
    r.wr(offsets::SQ_BASE_HI, (bad >> 32) as u32);
    r.wr(offsets::SQ_SIZE, 4);
    r.wr(offsets::CQ_BASE_LO, CQ as u32);
    r.wr(offsets::CQ_BASE_HI, (CQ >> 32) as u32);
    r.wr(offsets::CQ_SIZE, 4);
    r.wr(offsets::CTRL, 1);
    r.wr(offsets::SQ_TAIL, 1);
    r.dev.run_until_idle(10_000).unwrap();
    let st = r.dev.status().unwrap();
    assert!(
        st.contains(Status::HALTED) && !st.contains(Status::BUSY),
        "{st:?}"
    );
    assert_eq!(r.err_code(), CplStatus::SqFetchFault.raw());
    assert_eq!(r.err_addr(), bad);
    assert_eq!(r.rd(offsets::SQ_HEAD), 0, "SQ_HEAD unchanged");
    assert_eq!(r.rd(offsets::IRQ_STATUS), 2);
    // Only SOFT_RESET clears HALTED.
    r.wr(offsets::CTRL, 0);
    assert!(r.dev.status().unwrap().contains(Status::HALTED));
    r.dev.soft_reset().unwrap();
    assert!(!r.dev.status().unwrap().contains(Status::HALTED));

    // CQ outside mapped memory: the descriptor stays in flight.
    let mut r = common::rig();
    r.guest_write(SQ, &Desc::new(Opcode::FillHost, 5, 0, DST, 4, 1).to_bytes());
    r.wr(offsets::SQ_BASE_LO, SQ as u32);
    r.wr(offsets::SQ_BASE_HI, (SQ >> 32) as u32);
    r.wr(offsets::SQ_SIZE, 4);
    r.wr(offsets::CQ_BASE_LO, bad as u32);
    r.wr(offsets::CQ_BASE_HI, (bad >> 32) as u32);
    r.wr(offsets::CQ_SIZE, 4);
    r.wr(offsets::CTRL, 1);
    r.wr(offsets::SQ_TAIL, 1);
    r.dev.run_until_idle(10_000).unwrap();
    assert!(r.dev.status().unwrap().contains(Status::HALTED));
    assert_eq!(r.err_code(), CplStatus::CqWriteFault.raw());
    assert_eq!(r.err_addr(), bad);
    assert_eq!(r.rd(offsets::CNT_DESC), 0);
    assert!(
        r.dev.status().unwrap().contains(Status::BUSY),
        "still in flight"
    );
}

#[test]
fn full_completion_ring_makes_the_engine_wait() {
    let mut r = common::rig();
    let mut drv = ring(&mut r, 2);
    // CQ of 2 holds one completion; the second descriptor waits until CQ_HEAD moves.
    drv.submit(&mut r.dev, &Desc::new(Opcode::Nop, 1, 0, 0, 0, 0))
        .unwrap();
    r.dev.run_until_idle(10_000).unwrap();
    assert_eq!(r.rd(offsets::CNT_DESC), 1);
    // Not polled yet: CQ_HEAD is still 0, so the CQ is full.
    r.guest_write(SQ + 32, &Desc::new(Opcode::Nop, 2, 0, 0, 0, 0).to_bytes());
    r.wr(offsets::SQ_TAIL, 0);
    r.dev.run_until_idle(10_000).unwrap();
    assert_eq!(r.rd(offsets::CNT_DESC), 1, "waits for a free CQ slot");
    assert!(r.dev.status().unwrap().contains(Status::BUSY));
    let mut tags: Vec<u32> = drv
        .poll(&mut r.dev)
        .unwrap()
        .iter()
        .map(|c| c.tag)
        .collect();
    r.dev.run_until_idle(10_000).unwrap();
    assert_eq!(
        r.rd(offsets::CNT_DESC),
        2,
        "CQ_HEAD moved: the completion is written"
    );
    let mut b = [0u8; 16];
    r.dma.host_read(CQ + 16, &mut b).unwrap();
    tags.push(Completion::from_bytes(&b).tag);
    assert_eq!(tags, vec![1, 2]);
}

#[test]
fn steps_follow_the_datasheet_order() {
    use vfpga_sim::StepKind::{Burst, Complete, Fetch};
    let mut r = common::rig();
    let mut drv = ring(&mut r, 4);
    r.wr(offsets::CTRL, 0);
    // 130 bytes from SRC+4000: bursts of 64, 32 (to the page end), 34.
    drv.submit(
        &mut r.dev,
        &Desc::new(Opcode::CopyH2h, 1, SRC + 4000, DST, 130, 0),
    )
    .unwrap();
    drv.submit(&mut r.dev, &Desc::new(Opcode::Nop, 2, 0, 0, 0, 0))
        .unwrap();
    r.wr(offsets::CTRL, 1);
    let (kinds, _) = r.dev.run_steps(100, 100_000).unwrap();
    assert_eq!(
        kinds,
        vec![Fetch, Burst, Burst, Burst, Complete, Fetch, Complete]
    );
    assert_eq!(r.dev.stats().unwrap().steps, 7);
    let (kinds, _) = r.dev.run_steps(1, 10_000).unwrap();
    assert!(kinds.is_empty(), "idle: no step");
}

/// Datasheet §5.5: `DMA_THROTTLE` adds IDLE cycles after every burst and
/// changes nothing else (same completion, same device memory); it reads
/// back only its field, and a soft reset clears it.
#[test]
fn dma_throttle_adds_idle_cycles_after_each_burst() {
    let cycles_for = |throttle: u32| {
        let mut r = common::rig();
        let mut drv = ring(&mut r, 8);
        r.guest_write(SRC, &pattern_bytes(3, 4096));
        r.wr(offsets::DMA_THROTTLE, throttle);
        drv.submit(&mut r.dev, &Desc::new(Opcode::CopyH2d, 1, SRC, 0, 4096, 0))
            .expect("submit");
        let used = r.dev.run_until_idle(BUDGET).expect("run");
        let c = drv.poll(&mut r.dev).expect("poll");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status(), Some(CplStatus::Ok));
        let mut dm = vec![0; 4096];
        r.dev.devmem_read(0, &mut dm).expect("devmem");
        assert!(dm == pattern_bytes(3, 4096), "device memory differs");
        used
    };
    let c0 = cycles_for(0);
    let c20 = cycles_for(20);
    // 64 bursts, each followed by 20 idle cycles.
    assert!(
        c20 >= c0 + 64 * 20,
        "throttled {c20} cycles, unthrottled {c0}"
    );
    assert!(
        c20 <= c0 + 64 * 20 + 64,
        "throttled {c20} cycles, unthrottled {c0}"
    );
    let mut r = common::rig();
    r.wr(offsets::DMA_THROTTLE, 0xffff_ffff);
    assert_eq!(r.rd(offsets::DMA_THROTTLE), 0xffff);
    r.wr(offsets::CTRL, vfpga_regs::Ctrl::SOFT_RESET.bits());
    assert_eq!(r.rd(offsets::DMA_THROTTLE), 0);
}

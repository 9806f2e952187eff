//! Register, engine, fault, interrupt, bitmap and state-port behaviour of the
//! model against the datasheet.

mod common;

use common::*;
use vfpga_device::ring::Desc;
use vfpga_device::{Bar, Device, DeviceError, DeviceState, Identity};
use vfpga_model::{Model, ModelConfig, ModelError, Step, StepKind};
use vfpga_regs::{
    ArchState, CplStatus, Ctrl, IrqStatus, Opcode, StateErr, Status, consts, fields, offsets,
    state as sw,
};

fn cpl_status(c: &vfpga_device::ring::Completion) -> CplStatus {
    c.status().expect("known status")
}

#[test]
fn identity_registers_and_odd_accesses() {
    let mut r = Rig::new();
    r.dev.check_identity().unwrap();
    assert_eq!(r.dev.read_reg(offsets::DEVMEM_PAGES).unwrap(), PAGES);
    assert_eq!(r.dev.read_reg(offsets::IRQ_MASK).unwrap(), 3);
    assert_eq!(r.dev.read_reg(offsets::CQ_TAIL).unwrap(), 0x8000_0000);
    // Other widths read all ones and writes are ignored.
    let mut b = [0u8; 2];
    r.dev
        .mmio_read(Bar::Regs, u64::from(offsets::ID), &mut b)
        .unwrap();
    assert_eq!(b, [0xff; 2]);
    r.dev
        .mmio_write(Bar::Regs, u64::from(offsets::SCRATCH), &[1, 2])
        .unwrap();
    assert_eq!(r.dev.read_reg(offsets::SCRATCH).unwrap(), 0);
    // A 64-bit access is two 32-bit ones, low half first.
    r.dev
        .mmio_write(
            Bar::Regs,
            u64::from(offsets::SQ_BASE_LO),
            &0x0000_0002_0000_1040u64.to_le_bytes(),
        )
        .unwrap();
    let mut q = [0u8; 8];
    r.dev
        .mmio_read(Bar::Regs, u64::from(offsets::SQ_BASE_LO), &mut q)
        .unwrap();
    assert_eq!(u64::from_le_bytes(q), 0x0000_0002_0000_1040);
    // Beyond the BAR is an error; unassigned offsets read 0.
    assert!(matches!(
        r.dev
            .mmio_read(Bar::Regs, u64::from(consts::BAR0_SIZE), &mut [0; 4]),
        Err(DeviceError::BadAccess { .. })
    ));
    assert_eq!(r.dev.read_reg(0xffc).unwrap(), 0);
    assert!(
        r.dev
            .devmem_read(u64::from(PAGES) * 4096 - 1, &mut [0; 2])
            .is_err()
    );
}

#[test]
fn config_is_checked_and_256_mib_works() {
    let bad = ModelConfig::with_pages(3);
    assert!(matches!(
        Model::new(
            bad,
            Default::default(),
            std::sync::Arc::new(vfpga_device::NoIrq)
        ),
        Err(ModelError::Config {
            name: "devmem_pages",
            ..
        })
    ));
    let mut big = Rig::with_config(ModelConfig::with_pages(consts::MAX_DEVMEM_PAGES));
    let top = u64::from(consts::MAX_DEVMEM_PAGES) * 4096 - 8;
    big.dev.devmem_write(top, &[7; 8]).unwrap();
    let mut b = [0; 8];
    big.dev.devmem_read(top, &mut b).unwrap();
    assert_eq!(b, [7; 8]);
    let bm = big.dev.take_dirty_pages().unwrap();
    assert_eq!(bm.len(), consts::MAX_DEVMEM_PAGES as usize / 64);
    assert_eq!(bm[bm.len() - 1], 1 << 63);
    assert!(bm[..bm.len() - 1].iter().all(|w| *w == 0));
}

#[test]
fn step_sequence_of_a_multi_burst_copy() {
    let mut r = Rig::new();
    let mut ring = r.rings(8);
    let src = DATA + 0xfd0; // 48 bytes to the next 4 KiB boundary
    let dst = DATA + 0x3000 + 0x10; // 4080 bytes to the next boundary
    let data = pattern(200, 1);
    r.put(src, &data);
    ring.submit(&mut r.dev, &Desc::new(Opcode::CopyH2h, 5, src, dst, 200, 0))
        .unwrap();
    let mut steps = Vec::new();
    loop {
        let s = r.dev.step();
        if s == Step::Idle {
            break;
        }
        steps.push(s);
    }
    // Burst sizes: min(64, left, to the 4K boundary of src and dst).
    assert_eq!(
        steps,
        vec![
            Step::Fetch {
                slot: 0,
                status: CplStatus::Ok
            },
            Step::Burst { bytes: 48 },
            Step::Burst { bytes: 64 },
            Step::Burst { bytes: 64 },
            Step::Burst { bytes: 24 },
            Step::Complete {
                slot: 0,
                status: CplStatus::Ok,
                bytes: 200
            },
        ]
    );
    assert_eq!(r.get(dst, 200), data);
    // CUR_* cleared at completion; counters moved.
    let a = *r.dev.arch();
    assert_eq!(
        a.cur_flags | a.cur_len | a.cur_done | a.cur_tag | a.cur_src_lo,
        0
    );
    assert_eq!((a.cnt_desc, a.cnt_err, a.cnt_bytes_lo), (1, 0, 200));
    let c = ring.poll(&mut r.dev).unwrap();
    assert_eq!(
        (c[0].tag, c[0].bytes, c[0].slot, c[0].phase),
        (5, 200, 0, true)
    );
    // The timer counted one unit per step (and one per idle tick).
    assert_eq!(r.dev.read_reg(offsets::TIMER_LO).unwrap(), 7);
}

#[test]
fn every_opcode_against_plain_rust() {
    let mut r = Rig::new();
    let mut ring = r.rings(16);
    let a = pattern(5000, 2);
    r.put(DATA, &a);
    let descs = [
        Desc::new(Opcode::CopyH2d, 1, DATA + 3, 100, 4000, 0),
        Desc::new(Opcode::CopyD2h, 2, 100, DATA + 0x8000 + 1, 4000, 0),
        Desc::new(Opcode::CopyH2h, 3, DATA, DATA + 0x10000, 5000, 0),
        Desc::new(Opcode::Crc32c, 4, DATA + 7, 0, 4321, 0),
        Desc::new(Opcode::Crc32c, 5, DATA, 0, 0, 0x1234_5678),
        Desc::new(Opcode::FillDev, 6, 0, 9000, 37, 0xa1b2_c3d4),
        Desc::new(
            Opcode::FillHost,
            7,
            0,
            DATA + 0x18000 + 2,
            4099,
            0x0102_0304,
        ),
        Desc::new(Opcode::Nop, 8, 0, 0, 12345, 0),
    ];
    let cs = r.run(&mut ring, &descs);
    assert_eq!(cs.len(), descs.len());
    for (c, d) in cs.iter().zip(&descs) {
        assert_eq!(c.tag, d.tag);
        assert_eq!(cpl_status(c), CplStatus::Ok);
        let expect = if d.opcode == Opcode::Nop.raw() as u8 {
            0
        } else {
            d.len
        };
        assert_eq!(c.bytes, expect, "tag {}", d.tag);
    }
    let mut dm = vec![0; 4000];
    r.dev.devmem_read(100, &mut dm).unwrap();
    assert_eq!(dm, a[3..4003]);
    assert_eq!(r.get(DATA + 0x8000 + 1, 4000), a[3..4003]);
    assert_eq!(r.get(DATA + 0x10000, 5000), a);
    assert_eq!(cs[3].result, crc32c::crc32c(&a[7..7 + 4321]));
    assert_eq!(
        cs[4].result, 0x1234_5678,
        "a CRC of nothing returns PATTERN"
    );
    let mut f = vec![0; 37];
    r.dev.devmem_read(9000, &mut f).unwrap();
    let p = 0xa1b2_c3d4u32.to_le_bytes();
    assert!(f.iter().enumerate().all(|(i, b)| *b == p[i % 4]));
    let h = r.get(DATA + 0x18000 + 2, 4099);
    let p = 0x0102_0304u32.to_le_bytes();
    assert!(h.iter().enumerate().all(|(i, b)| *b == p[i % 4]));
    assert_eq!(r.get(DATA + 0x18000, 2), [0, 0]);
    assert_eq!(r.dev.read_reg(offsets::CNT_DESC).unwrap(), 8);
}

#[test]
fn crc_continues_over_a_split_buffer() {
    let mut r = Rig::new();
    let mut ring = r.rings(4);
    let a = pattern(3000, 3);
    r.put(DATA, &a);
    let c1 = r.run(&mut ring, &[Desc::new(Opcode::Crc32c, 1, DATA, 0, 1234, 0)]);
    let c2 = r.run(
        &mut ring,
        &[Desc::new(
            Opcode::Crc32c,
            2,
            DATA + 1234,
            0,
            3000 - 1234,
            c1[0].result,
        )],
    );
    assert_eq!(c2[0].result, crc32c::crc32c(&a));
}

#[test]
fn descriptor_errors_complete_without_moving_data() {
    let mut r = Rig::new();
    let mut ring = r.rings(8);
    let dev_bytes = u64::from(PAGES) * 4096;
    let mut bad_rsvd = Desc::new(Opcode::CopyH2h, 2, DATA, DATA + 0x1000, 16, 0);
    bad_rsvd.rsvd = 1;
    let descs = [
        Desc {
            opcode: 0x77,
            ..Desc::new(Opcode::Nop, 1, 0, 0, 16, 0)
        }
        .with_irq(),
        bad_rsvd,
        Desc::new(Opcode::CopyH2h, 3, DATA, DATA, consts::MAX_DESC_LEN + 1, 0),
        Desc::new(Opcode::CopyH2d, 4, DATA, dev_bytes - 15, 16, 0),
        Desc::new(Opcode::CopyD2h, 5, u64::MAX - 4, DATA, 16, 0),
        Desc::new(Opcode::FillDev, 6, 0, dev_bytes - 16, 16, 0),
    ];
    let cs = r.run(&mut ring, &descs);
    let st: Vec<_> = cs.iter().map(cpl_status).collect();
    use CplStatus::*;
    assert_eq!(
        st,
        [BadOpcode, BadDesc, BadDesc, DevmemRange, DevmemRange, Ok]
    );
    assert!(cs[..5].iter().all(|c| c.bytes == 0));
    assert_eq!(r.dev.read_reg(offsets::CNT_ERR).unwrap(), 5);
    // ERR_ADDR is the address of the last bad descriptor (slot 4).
    assert_eq!(
        r.dev.read_reg(offsets::ERR_CODE).unwrap(),
        DevmemRange.raw()
    );
    assert_eq!(
        r.dev.read_reg(offsets::ERR_ADDR_LO).unwrap(),
        (SQ + 4 * 32) as u32
    );
    assert_eq!(
        r.dev.read_reg(offsets::ERR_ADDR_HI).unwrap(),
        (SQ >> 32) as u32
    );
    // Any write clears ERR_CODE, not the address.
    r.dev.write_reg(offsets::ERR_CODE, 0x1234).unwrap();
    assert_eq!(r.dev.read_reg(offsets::ERR_CODE).unwrap(), 0);
    assert_ne!(r.dev.read_reg(offsets::ERR_ADDR_LO).unwrap(), 0);
    // Interrupts: one CPL (descriptor 0 had IRQ) and ERR messages, unmasked.
    let v = r.irq.take();
    assert_eq!(v.iter().filter(|x| **x == 0).count(), 1);
    assert_eq!(v.iter().filter(|x| **x == 1).count(), 5);
}

#[test]
fn dma_faults_set_status_err_and_keep_going() {
    let mut r = Rig::new();
    let mut ring = r.rings(8);
    let end = GUEST + GUEST_LEN as u64;
    // Reads cross the end of guest memory after 2 bursts of 64.
    let descs = [
        Desc::new(Opcode::CopyH2h, 1, end - 128, DATA, 300, 0),
        Desc::new(Opcode::CopyD2h, 2, 0, end - 100, 300, 0),
        Desc::new(Opcode::Crc32c, 3, 0x10, 0, 4, 0),
        Desc::new(Opcode::CopyH2h, 4, DATA, DATA + 0x100, 64, 0),
    ];
    let cs = r.run(&mut ring, &descs);
    assert_eq!(cpl_status(&cs[0]), CplStatus::DmaReadFault);
    assert_eq!(cs[0].bytes, 128);
    assert_eq!(cpl_status(&cs[1]), CplStatus::DmaWriteFault);
    assert_eq!(
        cs[1].bytes, 100,
        "bursts of 64 and 36 (to the end), then refused"
    );
    assert_eq!(cpl_status(&cs[2]), CplStatus::DmaReadFault);
    assert_eq!(cs[2].result, 0);
    assert_eq!(cpl_status(&cs[3]), CplStatus::Ok);
    assert_eq!(
        r.dev.read_reg(offsets::ERR_CODE).unwrap(),
        CplStatus::DmaReadFault.raw()
    );
    assert_eq!(r.dev.read_reg(offsets::ERR_ADDR_LO).unwrap(), 0x10);
    assert_eq!(r.dev.read_reg(offsets::CNT_ERR).unwrap(), 3);
    assert_eq!(
        r.dev.read_reg(offsets::CNT_BYTES_LO).unwrap(),
        128 + 100 + 64
    );
    assert_eq!(r.irq.count(1), 3);
}

#[test]
fn ring_faults_halt_until_soft_reset() {
    // SQ fetch fault.
    let mut r = Rig::new();
    r.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    r.dev.write_reg(offsets::SQ_BASE_LO, 0x1000).unwrap();
    r.dev.write_reg(offsets::SQ_SIZE, 4).unwrap();
    r.dev.write_reg(offsets::CTRL, Ctrl::ENABLE.bits()).unwrap();
    r.dev.write_reg(offsets::SQ_TAIL, 1).unwrap();
    assert_eq!(r.dev.step(), Step::FetchFault { addr: 0x1000 });
    let st = r.dev.status().unwrap();
    assert!(st.contains(Status::HALTED) && !st.contains(Status::BUSY));
    assert_eq!(r.dev.read_reg(offsets::SQ_HEAD).unwrap(), 0);
    assert_eq!(
        r.dev.read_reg(offsets::ERR_CODE).unwrap(),
        CplStatus::SqFetchFault.raw()
    );
    assert_eq!(r.irq.take(), vec![1]);
    assert_eq!(r.dev.step(), Step::Halted);
    assert!(r.dev.advance(100).unwrap().idle);
    r.dev.soft_reset().unwrap();
    assert_eq!(r.dev.status().unwrap(), Status::empty());
    assert_eq!(r.dev.arch(), &ArchState::RESET);

    // CQ write fault: the descriptor stays in flight.
    let mut r = Rig::new();
    r.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    let mut ring = r.rings(4);
    r.dev.write_reg(offsets::CTRL, 0).unwrap();
    r.dev.write_reg(offsets::CQ_BASE_LO, 0x40).unwrap();
    r.dev.write_reg(offsets::CQ_BASE_HI, 0).unwrap();
    r.dev.write_reg(offsets::CTRL, Ctrl::ENABLE.bits()).unwrap();
    ring.submit(&mut r.dev, &Desc::new(Opcode::Nop, 9, 0, 0, 0, 0))
        .unwrap();
    assert_eq!(r.dev.step().kind(), StepKind::Fetch);
    assert_eq!(r.dev.step(), Step::CompleteFault { addr: 0x40 });
    assert!(
        r.dev
            .status()
            .unwrap()
            .contains(Status::HALTED | Status::BUSY)
    );
    assert_eq!(r.dev.arch().cur_tag, 9);
    assert_eq!(r.dev.read_reg(offsets::ERR_ADDR_LO).unwrap(), 0x40);
    assert_eq!(r.dev.step(), Step::Halted);
}

#[test]
fn full_completion_ring_stalls_until_the_host_consumes() {
    let mut r = Rig::new();
    let mut ring = r.rings(2);
    // SQ of 2 takes one descriptor at a time; CQ of 2 holds one completion.
    ring.submit(&mut r.dev, &Desc::new(Opcode::Nop, 1, 0, 0, 0, 0))
        .unwrap();
    assert_eq!(r.dev.step().kind(), StepKind::Fetch);
    assert_eq!(r.dev.step().kind(), StepKind::Complete);
    // Host does not consume; next descriptor via raw doorbell.
    r.put(SQ + 32, &Desc::new(Opcode::Nop, 2, 0, 0, 0, 0).to_bytes());
    r.dev.write_reg(offsets::SQ_TAIL, 0).unwrap();
    assert_eq!(r.dev.step().kind(), StepKind::Fetch);
    assert_eq!(r.dev.step(), Step::Stalled);
    let p = r.dev.advance(10).unwrap();
    assert!(p.idle);
    assert_eq!(p.used, 1);
    let c = ring.poll(&mut r.dev).unwrap();
    assert_eq!(c.len(), 1);
    assert!(matches!(r.dev.step(), Step::Complete { slot: 1, .. }));
    let c = ring.poll(&mut r.dev).unwrap();
    assert_eq!((c[0].tag, c[0].phase), (2, true));
    let t = r.dev.read_reg(offsets::CQ_TAIL).unwrap();
    assert_eq!(t, 0, "index wrapped to 0 and the phase flipped");
}

#[test]
fn ring_registers_follow_the_write_rules() {
    let mut r = Rig::new();
    let d = &mut r.dev;
    d.write_reg(offsets::SQ_BASE_LO, 0x1234_5678).unwrap();
    assert_eq!(d.read_reg(offsets::SQ_BASE_LO).unwrap(), 0x1234_5660);
    d.write_reg(offsets::CQ_BASE_LO, 0x1234_5678).unwrap();
    assert_eq!(d.read_reg(offsets::CQ_BASE_LO).unwrap(), 0x1234_5670);
    for bad in [1, 3, 6, 8192] {
        d.write_reg(offsets::SQ_SIZE, bad).unwrap();
        assert_eq!(d.read_reg(offsets::SQ_SIZE).unwrap(), 0);
    }
    d.write_reg(offsets::SQ_SIZE, 8).unwrap();
    d.write_reg(offsets::SQ_TAIL, 13).unwrap();
    assert_eq!(d.read_reg(offsets::SQ_TAIL).unwrap(), 5);
    d.write_reg(offsets::CTRL, Ctrl::ENABLE.bits()).unwrap();
    d.write_reg(offsets::SQ_SIZE, 16).unwrap();
    d.write_reg(offsets::SQ_BASE_HI, 7).unwrap();
    assert_eq!(
        d.read_reg(offsets::SQ_SIZE).unwrap(),
        8,
        "ignored while enabled"
    );
    assert_eq!(d.read_reg(offsets::SQ_BASE_HI).unwrap(), 0);
    d.write_reg(offsets::CQ_HEAD, 9).unwrap();
    assert_eq!(d.read_reg(offsets::CQ_HEAD).unwrap(), 0, "modulo CQ_SIZE 0");
}

#[test]
fn ring_geometry_is_frozen_while_a_descriptor_is_in_flight() {
    let mut r = Rig::new();
    let mut ring = r.rings(8);
    for _ in 0..3 {
        ring.submit(&mut r.dev, &Desc::new(Opcode::Nop, 0, 0, 0, 0, 0))
            .unwrap();
    }
    for _ in 0..5 {
        r.dev.step();
    }
    ring.submit(
        &mut r.dev,
        &Desc::new(Opcode::CopyH2h, 1, DATA, DATA + 0x1000, 256, 0),
    )
    .unwrap();
    r.dev.step();
    r.dev.step();
    assert_eq!(r.dev.arch().cur_slot, 3);
    r.dev.write_reg(offsets::CTRL, 0).unwrap();
    r.dev.write_reg(offsets::SQ_SIZE, 2).unwrap();
    assert_eq!(r.dev.read_reg(offsets::SQ_SIZE).unwrap(), 8);
    // The descriptor in flight still finishes with ENABLE clear.
    r.dev.run_until_idle(1000).unwrap();
    assert_eq!(r.dev.read_reg(offsets::CNT_DESC).unwrap(), 4);
    r.dev.write_reg(offsets::SQ_SIZE, 2).unwrap();
    assert_eq!(r.dev.read_reg(offsets::SQ_SIZE).unwrap(), 2);
    r.dev.quiesce().unwrap();
    let s = r.dev.save_state().unwrap();
    assert!(vfpga_device::validate_arch(&s.arch, 4096 * u64::from(PAGES)).is_ok());
}

#[test]
fn interrupts_pend_while_masked_and_quiesced_and_migrate() {
    let mut r = Rig::new();
    let mut ring = r.rings(4);
    r.dev.write_reg(offsets::IRQ_MASK, 3).unwrap();
    r.run(
        &mut ring,
        &[Desc::new(Opcode::Nop, 1, 0, 0, 0, 0).with_irq()],
    );
    assert!(r.irq.raised().is_empty());
    assert_eq!(
        r.dev.read_reg(offsets::IRQ_STATUS).unwrap(),
        IrqStatus::CPL.bits()
    );
    assert_eq!(r.dev.read_reg(offsets::IRQ_PENDING).unwrap(), 1);
    // W1C clears cause and pending message.
    r.dev.write_reg(offsets::IRQ_STATUS, 1).unwrap();
    assert_eq!(r.dev.read_reg(offsets::IRQ_PENDING).unwrap(), 0);
    r.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    assert!(r.irq.raised().is_empty());

    // Both causes pending, masked, then quiesce: unmasking is ignored while
    // quiesced, nothing is sent.
    r.dev.write_reg(offsets::IRQ_MASK, 3).unwrap();
    r.run(
        &mut ring,
        &[
            Desc::new(Opcode::Nop, 2, 0, 0, 0, 0).with_irq(),
            Desc {
                opcode: 99,
                ..Default::default()
            },
        ],
    );
    assert_eq!(r.dev.read_reg(offsets::IRQ_PENDING).unwrap(), 3);
    r.dev.quiesce().unwrap();
    r.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    r.dev.advance(100).unwrap();
    assert!(r.irq.raised().is_empty());
    let saved = r.dev.save_state().unwrap();
    assert_eq!(saved.arch.irq_pending, 3);
    assert_eq!(saved.arch.irq_mask, 3);

    // Migrate: the destination sends them after RESUME once unmasked, vector 0 first.
    let mut dst = Rig::new();
    dst.dev.quiesce().unwrap();
    dst.dev.restore_state(&saved).unwrap();
    dst.dev.resume().unwrap();
    assert!(dst.irq.raised().is_empty(), "still masked");
    dst.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    assert_eq!(dst.irq.take(), vec![0, 1]);
    assert_eq!(dst.dev.read_reg(offsets::IRQ_PENDING).unwrap(), 0);
    // Nothing sent twice.
    dst.dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    dst.dev.advance(10).unwrap();
    assert!(dst.irq.raised().is_empty());

    // Pending and unmasked when quiesced (quiesce came first): sent on resume.
    let mut s2 = saved;
    s2.arch.irq_mask = 0;
    let mut d3 = Rig::new();
    d3.dev.quiesce().unwrap();
    d3.dev.restore_state(&s2).unwrap();
    assert!(d3.irq.raised().is_empty());
    d3.dev.resume().unwrap();
    assert_eq!(d3.irq.take(), vec![0, 1]);
}

#[test]
fn quiesced_device_is_frozen() {
    let mut r = Rig::new();
    let mut ring = r.rings(8);
    r.put(DATA, &pattern(4096, 4));
    ring.submit(&mut r.dev, &Desc::new(Opcode::CopyH2d, 1, DATA, 0, 4096, 0))
        .unwrap();
    r.dev.advance(5).unwrap();
    r.dev
        .write_reg(offsets::CTRL, Ctrl::ENABLE.bits() | Ctrl::QUIESCE.bits())
        .unwrap();
    assert_eq!(
        r.dev.status().unwrap(),
        Status::QUIESCED | Status::BUSY,
        "quiesce is immediate in the model"
    );
    let before = *r.dev.arch();
    for (off, v) in [
        (offsets::SCRATCH, 5),
        (offsets::CTRL, 0),
        (offsets::IRQ_MASK, 0),
        (offsets::IRQ_STATUS, 3),
        (offsets::ERR_CODE, 0),
        (offsets::SQ_TAIL, 3),
        (offsets::CQ_HEAD, 1),
    ] {
        r.dev.write_reg(off, v).unwrap();
    }
    assert_eq!(r.dev.advance(1000).unwrap().used, 0);
    assert_eq!(r.dev.step(), Step::Quiesced);
    for off in (0..0x200).step_by(4) {
        r.dev.read_reg(off).unwrap();
    }
    let mut b = vec![0; 4096];
    r.dev.devmem_read(0, &mut b).unwrap();
    assert_eq!(*r.dev.arch(), before);
    assert!(r.dev.arch().cur_done > 0 && r.dev.arch().cur_done < 4096);
    // STATE_DATA works only while quiesced.
    r.dev.resume().unwrap();
    r.dev.write_reg(offsets::STATE_IDX, 0).unwrap();
    assert_eq!(r.dev.read_reg(offsets::STATE_DATA).unwrap(), 0);
    assert_eq!(r.dev.read_reg(offsets::STATE_IDX).unwrap(), 0);
}

#[test]
fn state_port_stores_words_raw_and_validation_names_the_word() {
    let mut r = Rig::new();
    r.dev.quiesce().unwrap();
    r.dev
        .write_reg(offsets::STATE_IDX, sw::IRQ_MASK as u32)
        .unwrap();
    r.dev.write_reg(offsets::STATE_DATA, 0xffff_fff0).unwrap();
    r.dev
        .write_reg(offsets::STATE_IDX, sw::IRQ_MASK as u32)
        .unwrap();
    assert_eq!(r.dev.read_reg(offsets::STATE_DATA).unwrap(), 0xffff_fff0);
    assert_eq!(
        r.dev.read_reg(offsets::STATE_IDX).unwrap(),
        sw::IRQ_MASK as u32 + 1
    );
    // Past the last word: reads 0, writes ignored.
    r.dev
        .write_reg(offsets::STATE_IDX, sw::WORDS as u32)
        .unwrap();
    r.dev.write_reg(offsets::STATE_DATA, 1).unwrap();
    assert_eq!(r.dev.read_reg(offsets::STATE_DATA).unwrap(), 0);
    assert_eq!(
        r.dev.read_reg(offsets::STATE_IDX).unwrap(),
        sw::WORDS as u32,
        "STATE_IDX stops at STATE_WORDS"
    );
    r.dev.write_reg(offsets::STATE_CTRL, 1).unwrap();
    let v = r.dev.state_error().unwrap().unwrap();
    assert_eq!((v.code, v.word), (StateErr::ReservedBits, sw::IRQ_MASK));
    assert!(r.dev.resume().is_err());
    assert_eq!(
        r.dev.status().unwrap(),
        Status::QUIESCED | Status::STATE_INVALID
    );
    // SOFT_RESET recovers.
    r.dev.soft_reset().unwrap();
    assert_eq!(r.dev.status().unwrap(), Status::empty());
    assert_eq!(r.dev.read_reg(offsets::STATE_ERR).unwrap(), 0);
}

#[test]
fn reserved_bits_of_a_refused_state_never_read_back_as_pulses() {
    let mut r = Rig::new();
    r.dev.quiesce().unwrap();
    let mut s = r.dev.save_state().unwrap();
    s.arch.ctrl = 0xffff_fffe; // SOFT_RESET, QUIESCE, RESUME bits and more
    assert!(r.dev.restore_state(&s).is_err());
    assert_eq!(r.dev.read_reg(offsets::CTRL).unwrap(), 0);
    // The provided resume() does a read-modify-write of CTRL: no reset.
    assert!(r.dev.resume().is_err());
    assert!(r.dev.is_quiesced().unwrap());
    r.dev
        .write_reg(offsets::STATE_IDX, sw::CTRL as u32)
        .unwrap();
    assert_eq!(r.dev.read_reg(offsets::STATE_DATA).unwrap(), 0xffff_fffe);
}

#[test]
fn hostile_states_are_refused_by_word() {
    let mut base = ArchState::RESET;
    base.sq_size = 8;
    base.cq_size = 8;
    let dev_bytes = u64::from(PAGES) * 4096;
    type Case = (fn(&mut ArchState), StateErr, usize);
    let cases: Vec<Case> = vec![
        (|a| a.header = 0, StateErr::Header, sw::HEADER),
        (|a| a.flags = 2, StateErr::ReservedBits, sw::FLAGS),
        (
            |a| a.cur_slot = 0x1000,
            StateErr::ReservedBits,
            sw::CUR_SLOT,
        ),
        (|a| a.cq_size = 12, StateErr::RingSize, sw::CQ_SIZE),
        (|a| a.sq_size = 1, StateErr::RingSize, sw::SQ_SIZE),
        (|a| a.sq_tail = 8, StateErr::RingIndex, sw::SQ_TAIL),
        (
            |a| a.cq_tail = 0x8000_0009,
            StateErr::RingIndex,
            sw::CQ_TAIL,
        ),
        (|a| a.err_code = 8, StateErr::Value, sw::ERR_CODE),
        (|a| a.cur_done = 1, StateErr::Inflight, sw::CUR_DONE),
        (
            |a| {
                a.cur_flags = 1 | (6 << 16);
            },
            StateErr::Inflight,
            sw::CUR_FLAGS,
        ),
        (
            |a| {
                a.cur_flags = 1;
                a.cur_ctl = 0x44;
            },
            StateErr::Inflight,
            sw::CUR_CTL,
        ),
        (
            |a| {
                a.cur_flags = 1;
                a.cur_ctl = Opcode::CopyD2h.raw();
                a.cur_src_lo = 0xffff_fff0;
                a.cur_len = 0x20;
            },
            StateErr::Inflight,
            sw::CUR_SRC_LO,
        ),
        (
            |a| {
                a.cur_flags = 1;
                a.cur_ctl = Opcode::CopyH2h.raw();
                a.cur_len = 2;
                a.cur_done = 3;
            },
            StateErr::Inflight,
            sw::CUR_DONE,
        ),
        (
            |a| {
                a.cur_flags = 1;
                a.cur_ctl = Opcode::CopyH2h.raw();
                a.cur_crc = 1;
            },
            StateErr::Inflight,
            sw::CUR_CRC,
        ),
        (
            |a| {
                a.cur_flags = 1;
                a.cur_slot = 8;
            },
            StateErr::Inflight,
            sw::CUR_SLOT,
        ),
    ];
    for (mutate, code, word) in cases {
        let mut a = base;
        mutate(&mut a);
        let st = DeviceState::new(Identity::this_build(PAGES, consts::MAX_DMALOG_PAGES), a);
        // Through the state port.
        let mut r = Rig::new();
        r.dev.quiesce().unwrap();
        match r.dev.restore_state(&st) {
            Err(DeviceError::StateRejected(v)) => {
                assert_eq!((v.code, v.word), (code, word), "{v}")
            }
            other => panic!("expected a rejection for word {word}, got {other:?}"),
        }
        assert!(r.dev.resume().is_err());
        assert!(r.dev.is_quiesced().unwrap());
        assert_eq!(r.dev.advance(10).unwrap().used, 0);
        // Through the host-facing constructor.
        let e = Model::from_state(
            ModelConfig::with_pages(PAGES),
            &st,
            r.dma.clone(),
            r.irq.clone(),
        )
        .unwrap_err();
        assert!(
            matches!(e, ModelError::State(v) if v.code == code && v.word == word),
            "{e:?}"
        );
        let _ = dev_bytes;
    }
}

#[test]
fn from_state_checks_identity_and_loads_quiesced() {
    let mut r = Rig::new();
    r.dev.write_reg(offsets::SCRATCH, 77).unwrap();
    r.dev.quiesce().unwrap();
    let s = r.dev.save_state().unwrap();
    let other = Model::from_state(
        ModelConfig::with_pages(PAGES * 2),
        &s,
        r.dma.clone(),
        r.irq.clone(),
    );
    assert!(matches!(
        other,
        Err(ModelError::Incompatible(DeviceError::IdentityMismatch {
            what: "device-memory pages",
            ..
        }))
    ));
    let mut v = s;
    v.version = 99;
    assert!(matches!(
        Model::from_state(
            ModelConfig::with_pages(PAGES),
            &v,
            r.dma.clone(),
            r.irq.clone()
        ),
        Err(ModelError::StateVersion { found: 99, .. })
    ));
    let mut m = Model::from_state(
        ModelConfig::with_pages(PAGES),
        &s,
        r.dma.clone(),
        r.irq.clone(),
    )
    .unwrap();
    assert!(m.is_quiesced().unwrap());
    assert_eq!(m.save_state().unwrap(), s);
    m.resume().unwrap();
    assert_eq!(m.read_reg(offsets::SCRATCH).unwrap(), 77);
}

#[test]
fn dirty_bitmap_tracks_dma_and_bar2_writes() {
    let mut r = Rig::new();
    let mut ring = r.rings(4);
    r.run(
        &mut ring,
        &[
            Desc::new(Opcode::CopyH2d, 1, DATA, 4096 * 3 - 10, 20, 0),
            Desc::new(Opcode::FillDev, 2, 0, 4096 * 40, 1, 0),
            Desc::new(Opcode::CopyD2h, 3, 4096 * 50, DATA, 100, 0),
        ],
    );
    let mut one = [0u8; 1];
    r.dev.mmio_write(Bar::DevMem, 4096 * 63, &[1]).unwrap();
    r.dev.mmio_read(Bar::DevMem, 4096 * 62, &mut one).unwrap();
    let bm = r.dev.take_dirty_pages().unwrap();
    assert_eq!(bm, vec![(1 << 2) | (1 << 3) | (1 << 40) | (1 << 63)]);
    assert_eq!(r.dev.take_dirty_pages().unwrap(), vec![0]);
    // DIRTY_BITS advances DIRTY_SEL and wraps after the last group.
    r.dev.devmem_write(0, &[1]).unwrap();
    r.dev.write_reg(offsets::DIRTY_SEL, 1).unwrap();
    assert_eq!(r.dev.read_reg(offsets::DIRTY_BITS).unwrap(), 0);
    assert_eq!(r.dev.read_reg(offsets::DIRTY_SEL).unwrap(), 0);
    assert_eq!(r.dev.read_reg(offsets::DIRTY_BITS).unwrap(), 1);
}

#[test]
fn dma_log_records_device_writes_in_its_window() {
    let mut r = Rig::new();
    let mut ring = r.rings(4);
    // Window: the 16 pages from DATA (the rings are outside it).
    r.dev.dma_log_start(DATA, 16).unwrap();
    r.dev.write_reg(offsets::DMALOG_PAGES, 3).unwrap();
    assert_eq!(
        r.dev.read_reg(offsets::DMALOG_PAGES).unwrap(),
        16,
        "ignored while enabled"
    );
    r.run(
        &mut ring,
        &[
            Desc::new(Opcode::CopyH2h, 1, DATA, DATA + 4096 * 2 - 1, 2, 0),
            Desc::new(Opcode::Crc32c, 2, DATA + 4096 * 9, 0, 4096, 0),
        ],
    );
    let (bits, overflow) = r.dev.dma_log_take().unwrap();
    assert_eq!(bits, vec![0b110]);
    assert!(overflow, "completions were written outside the window");
    let (bits, overflow) = r.dev.dma_log_take().unwrap();
    assert_eq!((bits, overflow), (vec![0], false));
    // DMALOG_SEL is stored as written; a read past the last group returns 0
    // and starts over.
    r.dev.write_reg(offsets::DMALOG_SEL, 5).unwrap();
    assert_eq!(r.dev.read_reg(offsets::DMALOG_SEL).unwrap(), 5);
    assert_eq!(r.dev.read_reg(offsets::DMALOG_BITS).unwrap(), 0);
    assert_eq!(r.dev.read_reg(offsets::DMALOG_SEL).unwrap(), 0);
    // Restarting clears; reads of the device do not log.
    r.dev.dma_log_stop().unwrap();
    r.dev.dma_log_start(GUEST, 64).unwrap();
    r.run(
        &mut ring,
        &[Desc::new(
            Opcode::FillHost,
            3,
            0,
            GUEST + 4096 * 33,
            4096,
            1,
        )],
    );
    let (bits, overflow) = r.dev.dma_log_take().unwrap();
    assert!(!overflow);
    let cq_page = (CQ - GUEST) / 4096;
    assert_eq!(bits, vec![1 << cq_page | 1 << 33]);
    r.dev.soft_reset().unwrap();
    assert_eq!(r.dev.read_reg(offsets::DMALOG_CTRL).unwrap(), 0);
}

#[test]
fn timer_counts_units_latches_and_freezes() {
    let mut r = Rig::new();
    r.dev.advance(1).unwrap();
    r.dev.advance(1).unwrap();
    assert_eq!(r.dev.read_reg(offsets::TIMER_LO).unwrap(), 2);
    r.dev.quiesce().unwrap();
    r.dev.advance(50).unwrap();
    assert_eq!(r.dev.read_reg(offsets::TIMER_LO).unwrap(), 2);
    let s = r.dev.save_state().unwrap();
    let mut s2 = s;
    s2.arch.timer_lo = u32::MAX;
    r.dev.restore_state(&s2).unwrap();
    r.dev.resume().unwrap();
    r.dev.advance(1).unwrap();
    assert_eq!(r.dev.read_reg(offsets::TIMER_LO).unwrap(), 0);
    assert_eq!(r.dev.read_reg(offsets::TIMER_HI).unwrap(), 1);
    let _ = fields::cq_tail::INDEX;
}

#[test]
fn batching_is_invisible() {
    // The same stream with and without batching, compared word by word and
    // byte by byte, including a fault in the middle of a long descriptor.
    let run = |batch: bool| {
        let mut cfg = ModelConfig::with_pages(PAGES);
        cfg.batch_bursts = batch;
        let mut r = Rig::with_config(cfg);
        let mut ring = r.rings(8);
        r.put(DATA, &pattern(0x20000, 9));
        r.dev.dma_log_start(GUEST, 64).unwrap();
        let end = GUEST + GUEST_LEN as u64;
        let cs = r.run(
            &mut ring,
            &[
                Desc::new(Opcode::CopyH2d, 1, DATA + 5, 7, 70000, 0),
                Desc::new(Opcode::CopyD2h, 2, 3, DATA + 0x20000, 60000, 0),
                Desc::new(Opcode::CopyH2h, 3, DATA, DATA + 0x11, 9000, 0),
                Desc::new(Opcode::CopyH2h, 4, end - 5000, DATA, 9000, 0),
                Desc::new(Opcode::Crc32c, 5, DATA + 1, 0, 66666, 3),
                Desc::new(Opcode::FillHost, 6, 0, DATA + 0x30001, 20000, 0x1234_5678),
            ],
        );
        r.dev.quiesce().unwrap();
        let s = r.dev.save_state().unwrap();
        (
            cs,
            s,
            r.dev.take_dirty_pages().unwrap(),
            r.dev.dma_log_take().unwrap(),
            r.mem.snapshot(),
            r.dev.devmem().to_vec(),
        )
    };
    let a = run(true);
    let b = run(false);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
    assert_eq!(a.3, b.3);
    assert!(a.4 == b.4 && a.5 == b.5);
    assert_eq!(a.0[3].status(), Some(CplStatus::DmaReadFault));
}

/// Datasheet §5.5: `DMA_THROTTLE` slows the engine (each burst costs
/// 1 + IDLE units) without changing anything it does; it is not state,
/// reads back only its IDLE field, works while quiesced and any reset
/// clears it.
#[test]
fn dma_throttle_slows_bursts_and_changes_nothing_else() {
    let units_for = |throttle: u32| {
        let mut r = Rig::new();
        let mut ring = r.rings(8);
        r.put(DATA, &pattern(4096, 9));
        r.dev.write_reg(offsets::DMA_THROTTLE, throttle).unwrap();
        ring.submit(&mut r.dev, &Desc::new(Opcode::CopyH2d, 1, DATA, 0, 4096, 0))
            .unwrap();
        let mut used = 0;
        loop {
            let p = r.dev.advance(1000).unwrap();
            used += p.used;
            if p.idle {
                break;
            }
        }
        let cs = ring.poll(&mut r.dev).unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].bytes, 4096);
        let mut dm = vec![0; 4096];
        r.dev.devmem_read(0, &mut dm).unwrap();
        assert_eq!(dm, pattern(4096, 9));
        let mut state = r.dev.arch().to_words();
        state[sw::TIMER_LO] = 0;
        state[sw::TIMER_HI] = 0;
        (used, state)
    };
    let (u0, s0) = units_for(0);
    let (u3, s3) = units_for(3);
    assert_eq!(s0, s3, "the throttle changes no state word but the timer");
    // 64 bursts of 64 bytes: each costs 4 units instead of 1.
    assert!(u3 >= u0 + 3 * 64, "throttled {u3} units, unthrottled {u0}");

    let mut r = Rig::new();
    assert_eq!(r.dev.read_reg(offsets::DMA_THROTTLE).unwrap(), 0);
    assert!(
        vfpga_regs::Features::from_bits_retain(r.dev.read_reg(offsets::FEATURES).unwrap())
            .contains(vfpga_regs::Features::DMA_THROTTLE)
    );
    r.dev.write_reg(offsets::DMA_THROTTLE, 0xdead_beef).unwrap();
    assert_eq!(r.dev.read_reg(offsets::DMA_THROTTLE).unwrap(), 0xbeef);
    r.dev.quiesce().unwrap();
    r.dev.write_reg(offsets::DMA_THROTTLE, 7).unwrap();
    assert_eq!(r.dev.read_reg(offsets::DMA_THROTTLE).unwrap(), 7);
    let st = r.dev.save_state().unwrap();
    assert!(!st.arch.to_words().contains(&7), "not in the state");
    r.dev.resume().unwrap();
    r.dev
        .write_reg(offsets::CTRL, Ctrl::SOFT_RESET.bits())
        .unwrap();
    assert_eq!(r.dev.read_reg(offsets::DMA_THROTTLE).unwrap(), 0);
}

//! The device-memory dirty bitmap (§6) and the DMA write log (§7).

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use common::GUEST;
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Bar, Device};
use vfpga_regs::{Opcode, consts, offsets};

fn pages_of(bits: &[u64]) -> Vec<u64> {
    let mut v = Vec::new();
    for (w, x) in bits.iter().enumerate() {
        for b in 0..64 {
            if x >> b & 1 != 0 {
                v.push(w as u64 * 64 + b);
            }
        }
    }
    v
}

#[test]
fn dirty_bitmap_records_bar2_dma_and_backdoor_writes() {
    let mut r = common::rig_with(128, vfpga_sim::Clocking::Explicit);
    assert!(pages_of(&r.dev.take_dirty_pages().unwrap()).is_empty());
    // BAR2 writes of every width.
    r.dev.mmio_write(Bar::DevMem, 5 * 4096 + 3, &[1]).unwrap();
    r.dev
        .mmio_write(Bar::DevMem, 33 * 4096 + 6, &[1, 2, 3, 4])
        .unwrap(); // crosses an 8-byte word
    r.dev
        .mmio_write(Bar::DevMem, 127 * 4096 + 4088, &7u64.to_le_bytes())
        .unwrap();
    let mut b = [0u8; 4];
    r.dev.mmio_read(Bar::DevMem, 33 * 4096 + 6, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    assert_eq!(
        pages_of(&r.dev.take_dirty_pages().unwrap()),
        vec![5, 33, 127]
    );
    assert!(
        pages_of(&r.dev.take_dirty_pages().unwrap()).is_empty(),
        "reading clears"
    );
    // Reads do not dirty.
    let mut big = vec![0u8; 8192];
    r.dev.devmem_read(0, &mut big).unwrap();
    r.dev.mmio_read(Bar::DevMem, 64, &mut b).unwrap();
    assert!(pages_of(&r.dev.take_dirty_pages().unwrap()).is_empty());
    // The backdoor write marks every page it touches.
    r.dev
        .devmem_write(2 * 4096 - 1, &vec![9u8; 4096 * 2 + 2])
        .unwrap();
    assert_eq!(
        pages_of(&r.dev.take_dirty_pages().unwrap()),
        vec![1, 2, 3, 4]
    );
    let mut back = vec![0u8; 4096 * 2 + 2];
    r.dev.devmem_read(2 * 4096 - 1, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 9));
    // DMA writes to device memory (H2D, FILL_DEV) mark; D2H does not.
    let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).unwrap();
    let descs = [
        Desc::new(Opcode::CopyH2d, 1, GUEST + 0x10000, 40 * 4096 - 10, 20, 0),
        Desc::new(Opcode::FillDev, 2, 0, 100 * 4096, 4096, 1),
        Desc::new(Opcode::CopyD2h, 3, 0, GUEST + 0x20000, 8192, 0),
    ];
    drv.run(&mut r.dev, &descs, 1_000_000).unwrap();
    assert_eq!(
        pages_of(&r.dev.take_dirty_pages().unwrap()),
        vec![39, 40, 100]
    );
}

#[test]
fn dirty_sel_advances_and_wraps() {
    let mut r = common::rig_with(128, vfpga_sim::Clocking::Explicit);
    for p in [1u64, 40, 70, 127] {
        r.dev.mmio_write(Bar::DevMem, p * 4096, &[1]).unwrap();
    }
    r.wr(offsets::DIRTY_SEL, 2 + 4); // taken modulo the 4 groups
    assert_eq!(r.rd(offsets::DIRTY_SEL), 2);
    assert_eq!(r.rd(offsets::DIRTY_BITS), 1 << (70 - 64));
    assert_eq!(r.rd(offsets::DIRTY_SEL), 3);
    assert_eq!(r.rd(offsets::DIRTY_BITS), 1 << 31);
    assert_eq!(r.rd(offsets::DIRTY_SEL), 0, "wraps after the last group");
    assert_eq!(r.rd(offsets::DIRTY_BITS), 1 << 1);
    assert_eq!(r.rd(offsets::DIRTY_BITS), 1 << (40 - 32));
    assert_eq!(r.rd(offsets::DIRTY_BITS), 0);
    // A device with one page has one group.
    let mut small = common::rig_with(1, vfpga_sim::Clocking::Explicit);
    small.dev.mmio_write(Bar::DevMem, 4095, &[1]).unwrap();
    assert_eq!(small.rd(offsets::DIRTY_BITS), 1);
    assert_eq!(small.rd(offsets::DIRTY_SEL), 0);
}

#[test]
fn soft_reset_clears_the_bitmaps_but_not_device_memory() {
    let mut r = common::rig();
    r.dev.mmio_write(Bar::DevMem, 8, &[0x5a]).unwrap();
    r.dev.soft_reset().unwrap();
    assert!(pages_of(&r.dev.take_dirty_pages().unwrap()).is_empty());
    let mut b = [0u8; 1];
    r.dev.mmio_read(Bar::DevMem, 8, &mut b).unwrap();
    assert_eq!(b, [0x5a]);
}

#[test]
fn dma_write_log_records_device_writes_in_its_window() {
    let mut r = common::rig();
    let mut drv = RingDriver::setup(&mut r.dev, &r.dma, GUEST, 8, GUEST + 0x1000, 8).unwrap();
    r.dev.dma_log_start(GUEST, 100).unwrap();
    // Writes ignored while enabled.
    r.wr(offsets::DMALOG_PAGES, 7);
    r.wr(offsets::DMALOG_BASE_LO, 0);
    assert_eq!(r.rd(offsets::DMALOG_PAGES), 100);
    assert_eq!(r.rd(offsets::DMALOG_BASE_LO), GUEST as u32);
    let descs = [
        // Reads of pages 0x10 are not logged; the write spans pages 0x20 and 0x21.
        Desc::new(
            Opcode::CopyH2h,
            1,
            GUEST + 0x10000,
            GUEST + 0x20ff0,
            0x20,
            0,
        ),
        Desc::new(Opcode::FillHost, 2, 0, GUEST + 99 * 4096, 1, 0),
        Desc::new(Opcode::Crc32c, 3, GUEST + 0x30000, 0, 4096, 0),
    ];
    drv.run(&mut r.dev, &descs, 1_000_000).unwrap();
    let (bits, overflow) = r.dev.dma_log_take().unwrap();
    // Page 1 holds the completion ring.
    assert_eq!(pages_of(&bits), vec![1, 0x20, 0x21, 99]);
    assert!(!overflow);
    let (bits, _) = r.dev.dma_log_take().unwrap();
    assert!(pages_of(&bits).is_empty(), "reading clears");
    // A write past the window sets OVERFLOW (sticky, W1C).
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::FillHost, 4, 0, GUEST + 100 * 4096, 1, 0)],
        1_000_000,
    )
    .unwrap();
    let (bits, overflow) = r.dev.dma_log_take().unwrap();
    assert!(overflow);
    assert_eq!(pages_of(&bits), vec![1]);
    assert_eq!(
        r.rd(offsets::DMALOG_CTRL),
        1,
        "OVERFLOW cleared by the take"
    );
    // DMALOG_SEL wraps after ceil(100/32) = 4 groups.
    r.wr(offsets::DMALOG_SEL, 3);
    r.rd(offsets::DMALOG_BITS);
    assert_eq!(r.rd(offsets::DMALOG_SEL), 0);
    // Stopping keeps the bits; restarting clears them.
    drv.run(
        &mut r.dev,
        &[Desc::new(Opcode::FillHost, 5, 0, GUEST + 50 * 4096, 1, 0)],
        1_000_000,
    )
    .unwrap();
    r.dev.dma_log_stop().unwrap();
    r.wr(offsets::DMALOG_PAGES, u32::MAX);
    assert_eq!(
        r.rd(offsets::DMALOG_PAGES),
        consts::MAX_DMALOG_PAGES,
        "clamped"
    );
    r.wr(offsets::DMALOG_PAGES, 100);
    r.wr(offsets::DMALOG_CTRL, 1);
    let (bits, overflow) = r.dev.dma_log_take().unwrap();
    assert!(pages_of(&bits).is_empty() && !overflow);
}

//! DMA logging (reference/vfio-migration.md §6 group F, engine part).

use std::sync::Arc;

use vfpga_device::fake::FakeDevice;
use vfpga_device::{DmaPort, Perm, VecMemory};
use vfpga_migration::dirty::{DirtyError, DmaLogging, LOG_PAGE, LogSource, MAX_RANGES};

fn port() -> DmaPort {
    let p = DmaPort::new();
    p.map(0x10_0000, Arc::new(VecMemory::new(64 * 4096)), Perm::RW)
        .expect("map");
    p
}

/// Cases 49-51: START validation, kernel rules (num_ranges 0 is EINVAL; a
/// second START is refused).
#[test]
fn start_rejects_bad_requests() {
    let mut d = FakeDevice::new(4);
    let p = port();
    let mut l = DmaLogging::new();
    let src = || LogSource::Port(p.clone());
    let r = [(0x10_0000u64, 0x4_0000u64)];
    assert!(matches!(
        l.start(&mut d, src(), 0, &r),
        Err(DirtyError::BadPageSize(0))
    ));
    assert!(matches!(
        l.start(&mut d, src(), 3000, &r),
        Err(DirtyError::BadPageSize(_))
    ));
    assert!(matches!(
        l.start(&mut d, src(), 4096, &[]),
        Err(DirtyError::NoRanges)
    ));
    let many: Vec<_> = (0..=MAX_RANGES as u64).map(|i| (i * 8192, 4096)).collect();
    assert!(matches!(
        l.start(&mut d, src(), 4096, &many),
        Err(DirtyError::TooManyRanges(_))
    ));
    assert!(matches!(
        l.start(&mut d, src(), 4096, &[(0x10_0001, 4096)]),
        Err(DirtyError::Unaligned { .. })
    ));
    assert!(matches!(
        l.start(&mut d, src(), 4096, &[(u64::MAX - 4095, 8192)]),
        Err(DirtyError::Overflow { .. })
    ));
    assert!(matches!(
        l.start(&mut d, src(), 4096, &[(0, 8192), (4096, 4096)]),
        Err(DirtyError::Overlap(4096))
    ));
    assert!(!l.is_active() && !p.dirty_logging());
    assert_eq!(l.start(&mut d, src(), 4096, &r).expect("start"), LOG_PAGE);
    assert!(matches!(
        l.start(&mut d, src(), 4096, &r),
        Err(DirtyError::AlreadyStarted)
    ));
    assert_eq!(DirtyError::AlreadyStarted.errno(), 16);
}

/// Cases 52, 53 and 55: REPORT validation, exact read-and-clear bitmap,
/// STOP ends logging, unmap while logging is harmless.
#[test]
fn report_is_exact_and_read_and_clear() {
    let mut d = FakeDevice::new(4);
    let p = port();
    let mut l = DmaLogging::new();
    let mut bm = [0u64; 1];
    assert!(matches!(
        l.report(&mut d, 0x10_0000, 0x4_0000, 4096, &mut bm),
        Err(DirtyError::NotStarted)
    ));
    l.start(
        &mut d,
        LogSource::Port(p.clone()),
        4096,
        &[(0x10_0000, 0x4_0000)],
    )
    .expect("start");
    assert!(matches!(
        l.report(&mut d, 0x10_0000, 0x4_0000, 2048, &mut bm),
        Err(DirtyError::BadPageSize(2048))
    ));
    assert!(matches!(
        l.report(&mut d, 0x10_0000, 0x4_0000 * 2, 4096, &mut bm),
        Err(DirtyError::BitmapTooSmall { have: 1, need: 2 })
    ));
    // The device writes pages 1, 2 (one write across the boundary) and 40.
    p.write(0x10_1ffe, &[1, 2, 3, 4]).expect("dma write");
    p.write(0x10_0000 + 40 * 4096, &[1]).expect("dma write");
    let mut r = [0u64; 1];
    l.report(&mut d, 0x10_0000, 32 * 4096, 4096, &mut r)
        .expect("report");
    assert_eq!(r, [0b110], "pages 1 and 2 only; page 40 is outside");
    let mut r = [0u64; 1];
    l.report(&mut d, 0x10_0000, 32 * 4096, 4096, &mut r)
        .expect("again");
    assert_eq!(r, [0], "read and clear");
    let mut r = [0u64; 1];
    l.report(&mut d, 0x10_0000, 64 * 4096, 8192, &mut r)
        .expect("8K pages");
    assert_eq!(r, [1 << 20], "page 40 at 8 KiB granularity is bit 20");
    p.unmap(0x10_0000, 64 * 4096).expect("unmap while logging");
    l.stop(&mut d).expect("stop");
    assert!(!p.dirty_logging());
    assert!(matches!(
        l.report(&mut d, 0x10_0000, 4096, 4096, &mut r),
        Err(DirtyError::NotStarted)
    ));
}

/// Case 24 (dirty log part): a device reset stops DMA logging.
#[test]
fn reset_stops_dma_logging() {
    let mut d = FakeDevice::new(4);
    let p = port();
    let mut e = vfpga_migration::MigrationEngine::default();
    e.dma_logging()
        .start(
            &mut d,
            LogSource::Port(p.clone()),
            4096,
            &[(0x10_0000, 4096)],
        )
        .expect("start");
    assert!(p.dirty_logging());
    e.reset(&mut d).expect("reset");
    assert!(!p.dirty_logging() && !e.dma_logging().is_active());
}

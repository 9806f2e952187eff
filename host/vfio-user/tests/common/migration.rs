//! Live-migration test pieces shared by this crate's migration tests and the
//! CLI's two-process tests (`host/cli/tests/serve_migration.rs` includes this
//! file by path): a guest workload driven over the wire, pre-copy rounds
//! that overlap it, dirty-page sync from the DMA log, the v1 region
//! iteration, and the checks that the destination equals the source.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DmaPort};
use vfpga_regs::{CplStatus, Opcode};
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::{Client, ClientError, WireDevice};

/// Guest memory the migration tests map: IOVA and length.
pub const BASE: u64 = 0x100_0000;
/// See [`BASE`].
pub const LEN: u64 = 0x4_0000;
/// `VFIO_DEVICE_STATE_*` values (v2).
pub const STOP: u32 = 1;
/// See [`STOP`].
pub const RUNNING: u32 = 2;
/// See [`STOP`].
pub const STOP_COPY: u32 = 3;
/// See [`STOP`].
pub const RESUMING: u32 = 4;
/// See [`STOP`].
pub const PRE_COPY: u32 = 6;

/// How long a wait may go without progress before the test fails: a hang
/// guard, far above any real wait.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// The device behind a client, failing a ring wait after [`HANG_GUARD`]
/// without a register write (the server advances the device by itself).
pub fn wire_device(c: &Arc<Client>) -> WireDevice {
    let mut d = WireDevice::new(c.clone()).unwrap();
    d.set_hang_guard(Some(HANG_GUARD));
    d
}

/// Sets the flag when dropped: a panic in the migration steps also ends the
/// workload thread (a scope joins its threads before a panic propagates).
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Host fills, host-to-device and host-to-host copies through the rings at
/// [`BASE`] until `stop`, counting completed rounds in `rounds`; returns the
/// count.
pub fn workload(c: &Arc<Client>, mem: &DmaPort, stop: &AtomicBool, rounds: &AtomicU32) -> u32 {
    let mut dev = wire_device(c);
    let pages = dev.info().identity.devmem_pages;
    let mut rd = RingDriver::setup(&mut dev, mem, BASE, 16, BASE + 0x1000, 16).unwrap();
    let mut n = 0u32;
    while !stop.load(Ordering::Acquire) {
        let i = u64::from(n % 16);
        let src = BASE + 0x1_0000 + i * 0x1000;
        let descs = [
            Desc::new(Opcode::FillHost, n, 0, src, 4096, n),
            Desc::new(
                Opcode::CopyH2d,
                n,
                src,
                (i * 7 % u64::from(pages)) * 4096,
                4096,
                0,
            ),
            Desc::new(
                Opcode::CopyH2h,
                n,
                src,
                BASE + 0x2_0000 + i * 0x1000,
                4096,
                0,
            ),
        ];
        // No unit budget: the device's hang guard fails a wait that stalls.
        for c in rd.run(&mut dev, &descs, u64::MAX).unwrap() {
            assert_eq!(c.status(), Some(CplStatus::Ok));
        }
        n += 1;
        rounds.store(n, Ordering::Release);
    }
    n
}

/// Runs pre-copy rounds (`round(i)`) until at least `min` ran and the
/// workload completed 3 more rounds since pre-copy began, so that the two
/// overlap whatever the machine's load.
pub fn precopy_rounds(rounds: &AtomicU32, min: u32, mut round: impl FnMut(u32)) {
    let start = rounds.load(Ordering::Acquire);
    let t0 = Instant::now();
    let mut i = 0;
    while i < min || rounds.load(Ordering::Acquire) < start + 3 {
        round(i);
        i += 1;
        assert!(
            t0.elapsed() < HANG_GUARD,
            "hang guard: the workload made no progress during pre-copy in {HANG_GUARD:?}"
        );
    }
}

/// Copies the guest pages the source's DMA log names (or all) from `src` to
/// `dst`; returns how many. The SQ page is the driver's (CPU) write, which a
/// VMM tracks itself; every other change to guest memory is the device's and
/// must be in the report.
pub fn sync_pages(c: &Client, src: &DmaPort, dst: &DmaPort, all: bool) -> usize {
    let bm = c.dma_logging_report(BASE, LEN, 4096).unwrap();
    let mut page = vec![0u8; 4096];
    let mut n = 0;
    for p in 0..LEN / 4096 {
        if all || p == 0 || bm[(p / 64) as usize] & (1 << (p % 64)) != 0 {
            let a = BASE + p * 4096;
            src.host_read(a, &mut page).unwrap();
            dst.host_write(a, &page).unwrap();
            n += 1;
        }
    }
    n
}

/// Architectural state words and device memory, read over the wire from a
/// stopped device.
pub fn device_image(c: &Arc<Client>) -> (Vec<u32>, Vec<u8>) {
    let mut dev = wire_device(c);
    let st = dev.save_state().unwrap();
    let mut mem = vec![0u8; dev.info().bar2_size as usize];
    dev.devmem_read(0, &mut mem).unwrap();
    (st.arch.to_words().to_vec(), mem)
}

/// Both stopped devices hold the same state and device memory, and both
/// guests the same memory (pages named on failure).
pub fn check_identical(src: (&Arc<Client>, &DmaPort), dst: (&Arc<Client>, &DmaPort)) {
    let (a, am) = device_image(src.0);
    let (b, bm) = device_image(dst.0);
    assert_eq!(a, b, "architectural state differs");
    let differ: Vec<usize> = (0..am.len() / 4096)
        .filter(|p| am[p * 4096..(p + 1) * 4096] != bm[p * 4096..(p + 1) * 4096])
        .collect();
    assert!(
        differ.is_empty(),
        "device memory differs in pages {differ:?}"
    );
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    let differ: Vec<u64> = (0..LEN / 4096)
        .filter(|p| {
            src.1.host_read(BASE + p * 4096, &mut x).unwrap();
            dst.1.host_read(BASE + p * 4096, &mut y).unwrap();
            x != y
        })
        .collect();
    assert!(
        differ.is_empty(),
        "guest memory differs in pages {differ:?}"
    );
}

/// After the migration the destination runs and its engine still works.
pub fn destination_runs(c: &Arc<Client>, mem: &DmaPort) {
    assert_eq!(c.mig_state().unwrap(), RUNNING);
    let mut dev = wire_device(c);
    let mut rd = RingDriver::attach(&mut dev, mem).unwrap();
    let d = Desc::new(Opcode::FillHost, 7, 0, BASE + 0x3_0000, 4096, 0xfeed);
    let cpl = rd.run(&mut dev, &[d], u64::MAX).unwrap();
    assert_eq!(cpl[0].status(), Some(CplStatus::Ok));
    let mut got = [0u8; 4];
    mem.host_read(BASE + 0x3_0000, &mut got).unwrap();
    assert_eq!(got, 0xfeedu32.to_le_bytes());
}

/// A 64-bit field of the v1 migration region's register block.
pub fn v1_read64(c: &Client, off: u64) -> u64 {
    let d = c.region_read(region::MIGRATION, off, 8).unwrap();
    u64::from_le_bytes(d.try_into().unwrap())
}

/// Writes the v1 `device_state`.
pub fn v1_state(c: &Client, v: u32) -> Result<(), ClientError> {
    c.region_write(region::MIGRATION, 0, &v.to_le_bytes())
}

/// One v1 save iteration (pending_bytes, data_offset, data_size, data):
/// `None` when nothing is pending. Checks that data_offset is invariant
/// within the iteration.
pub fn v1_iteration(c: &Client) -> Option<Vec<u8>> {
    if v1_read64(c, 8) == 0 {
        return None;
    }
    let off = v1_read64(c, 16);
    let size = v1_read64(c, 24);
    assert_eq!(
        v1_read64(c, 16),
        off,
        "data_offset invariant in an iteration"
    );
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let n = (size - out.len() as u64).min(65536) as u32;
        let d = c
            .region_read(region::MIGRATION, off + out.len() as u64, n)
            .unwrap();
        out.extend_from_slice(&d);
    }
    Some(out)
}

/// Runs [`workload`] on the source while pre-copy goes on, the way a VMM
/// migrates: DMA logging started and every guest page copied to `dst`,
/// then `enter` (the state change into pre-copy and any checks), then
/// `round(i)` in [`precopy_rounds`], each followed by a sync of the pages
/// the DMA log names. Returns how many workload rounds completed.
pub fn precopy_under_workload(
    c: &Arc<Client>,
    src: &DmaPort,
    dst: &DmaPort,
    min_rounds: u32,
    enter: impl FnOnce(),
    mut round: impl FnMut(u32),
) -> u32 {
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    std::thread::scope(|sc| {
        let w = sc.spawn(|| workload(c, src, &stop, &rounds));
        let _stop_on_panic = StopOnDrop(&stop);
        c.dma_logging_start(4096, &[(BASE, LEN)]).unwrap();
        sync_pages(c, src, dst, true);
        enter();
        precopy_rounds(&rounds, min_rounds, |i| {
            round(i);
            sync_pages(c, src, dst, false);
        });
        stop.store(true, Ordering::Release);
        w.join().unwrap()
    })
}

/// v1 stop-and-copy: iterations until pending_bytes reads 0, each with data
/// (a bounded number, or the test fails as not converging).
pub fn v1_drain(c: &Client) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while let Some(d) = v1_iteration(c) {
        assert!(
            !d.is_empty() && chunks.len() < 100_000,
            "stop-and-copy does not converge (iteration {}, {} bytes)",
            chunks.len() + 1,
            d.len()
        );
        chunks.push(d);
    }
    chunks
}

/// v1 resume: each saved iteration written through the data window, in
/// pieces no larger than the window, each piece consumed by a data_size
/// write. The device is in RESUMING.
pub fn v1_resume(c: &Client, chunks: &[Vec<u8>]) {
    let window = c.region_info(region::MIGRATION).unwrap().0.size - v1_read64(c, 16);
    for d in chunks {
        let off = v1_read64(c, 16);
        for part in d.chunks(window.min(65536) as usize) {
            c.region_write(region::MIGRATION, off, part).unwrap();
            c.region_write(region::MIGRATION, 24, &(part.len() as u64).to_le_bytes())
                .unwrap();
        }
    }
}

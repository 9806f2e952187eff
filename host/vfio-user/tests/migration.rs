//! Live migration over the wire between two servers on the model, with a
//! DMA workload running during pre-copy: through MIG_DATA_READ/WRITE (v2,
//! §6 C/D/E/I) and through the v1 region (§6 H). Guest memory follows the
//! device's DMA log (DMA_LOGGING_REPORT), so a page the log missed would
//! show up as a difference at the end.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use common::*;
use nix::errno::Errno;
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_regs::{CplStatus, Opcode, offsets};
use vfpga_vfio_user::Client;
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::wire::{self, cmd};

const BASE: u64 = 0x100_0000;
const LEN: u64 = 0x4_0000;
const RUNNING: u32 = 2;
const STOP: u32 = 1;
const STOP_COPY: u32 = 3;
const RESUMING: u32 = 4;
const PRE_COPY: u32 = 6;

fn errno(r: Result<impl std::fmt::Debug, vfpga_vfio_user::ClientError>) -> Errno {
    match r {
        Err(e) => e
            .errno()
            .unwrap_or_else(|| panic!("not a remote error: {e}")),
        Ok(v) => panic!("expected an error reply, got {v:?}"),
    }
}

/// Source side: a server, a client, guest memory with rings set up.
struct Side {
    h: Harness,
    c: Client,
    g: GuestMem,
}

fn side(b: Backend) -> Side {
    let h = start(b);
    let c = h.client();
    let g = GuestMem::new(BASE, LEN);
    g.map_into(&c);
    c.enable_bus_master().unwrap();
    Side { h, c, g }
}

/// Sets `stop` when dropped, so that a panic in the migration steps stops
/// the workload thread too (a scoped thread is joined before the panic
/// propagates, so without this a failed assertion would leave the test
/// waiting forever for a workload that never ends).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs descriptors (host fills, host-to-device and host-to-host copies)
/// until `stop` is set, counting completed rounds in `rounds`; returns the
/// count.
fn workload(s: &Side, stop: &AtomicBool, rounds: &AtomicU32) -> u32 {
    let mut dev = WireDevice::new(&s.c, PAGES);
    let mut rd = RingDriver::setup(&mut dev, &s.g.port, BASE, 16, BASE + 0x1000, 16).unwrap();
    let mut n = 0u32;
    while !stop.load(Ordering::Acquire) {
        let i = u64::from(n % 16);
        let descs = [
            Desc::new(
                Opcode::FillHost,
                n,
                0,
                BASE + 0x1_0000 + i * 0x1000,
                4096,
                n,
            ),
            Desc::new(
                Opcode::CopyH2d,
                n,
                BASE + 0x1_0000 + i * 0x1000,
                (i * 3 % 64) * 4096,
                4096,
                0,
            ),
            Desc::new(
                Opcode::CopyH2h,
                n,
                BASE + 0x1_0000 + i * 0x1000,
                BASE + 0x2_0000 + i * 0x1000,
                4096,
                0,
            ),
        ];
        // No unit budget: `WireDevice` fails the wait after RING_HANG_GUARD.
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
/// overlap whatever the machine's load (a fixed number of rounds could end
/// before the workload's first descriptor completes).
fn precopy_rounds(rounds: &AtomicU32, min: u32, mut round: impl FnMut(u32)) {
    let start = rounds.load(Ordering::Acquire);
    let t0 = std::time::Instant::now();
    let mut i = 0;
    while i < min || rounds.load(Ordering::Acquire) < start + 3 {
        round(i);
        i += 1;
        assert!(
            t0.elapsed() < RING_HANG_GUARD,
            "hang guard: the workload made no progress during pre-copy in {RING_HANG_GUARD:?}"
        );
    }
}

/// Copies the pages the report names (or all) from `src` to `dst`. The SQ
/// page is the driver's (CPU) write, which a VMM tracks itself; every other
/// change to guest memory is the device's and must be in the report.
fn sync_pages(src: &Side, dst: &GuestMem, all: bool) -> usize {
    let bm = src.c.dma_logging_report(BASE, LEN, 4096).unwrap();
    let mut n = 0;
    for p in 0..LEN / 4096 {
        if all || p == 0 || bm[(p / 64) as usize] & (1 << (p % 64)) != 0 {
            let a = BASE + p * 4096;
            dst.write(a, &src.g.read(a, 4096));
            n += 1;
        }
    }
    n
}

fn device_image(h: &Harness) -> (Vec<u32>, Vec<u8>) {
    h.server.with_core(|core| {
        let st = core.dev.save_state().unwrap();
        let mut mem = vec![0u8; PAGES as usize * 4096];
        core.dev.devmem_read(0, &mut mem).unwrap();
        (st.arch.to_words().to_vec(), mem)
    })
}

fn check_identical(src: &Side, dst: &Side) {
    let (a, am) = device_image(&src.h);
    let (b, bm) = device_image(&dst.h);
    assert_eq!(a, b, "architectural state differs");
    assert!(am == bm, "device memory differs");
    let differ: Vec<u64> = (0..LEN / 4096)
        .filter(|p| src.g.read(BASE + p * 4096, 4096) != dst.g.read(BASE + p * 4096, 4096))
        .collect();
    assert!(
        differ.is_empty(),
        "guest memory differs in pages {differ:?}"
    );
}

/// After the migration the destination runs and its engine still works.
fn destination_runs(dst: &Side) {
    assert_eq!(dst.c.mig_state().unwrap(), RUNNING);
    let mut dev = WireDevice::new(&dst.c, PAGES);
    let mut rd = RingDriver::attach(&mut dev, &dst.g.port).unwrap();
    let d = Desc::new(Opcode::FillHost, 7, 0, BASE + 0x3_0000, 4096, 0xfeed);
    let c = rd.run(&mut dev, &[d], u64::MAX).unwrap();
    assert_eq!(c[0].status(), Some(CplStatus::Ok));
    assert_eq!(dst.g.read(BASE + 0x3_0000, 4), 0xfeedu32.to_le_bytes());
}

fn v2_precopy_migration_with_a_running_workload(b: Backend) {
    let src = side(b);
    let dst = side(b);
    src.c.write32(offsets::SCRATCH.into(), 0x5eed).unwrap();
    assert_eq!(
        src.c.migration_flags().unwrap(),
        1 | 4,
        "STOP_COPY | PRE_COPY"
    );
    assert!(src.c.mig_data_size().unwrap() > 0, "nonzero estimate");
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    let mut stream = Vec::new();
    std::thread::scope(|sc| {
        let w = sc.spawn(|| workload(&src, &stop, &rounds));
        let _stop_on_panic = StopOnDrop(&stop);
        src.c.dma_logging_start(4096, &[(BASE, LEN)]).unwrap();
        sync_pages(&src, &dst.g, true);
        src.c.set_mig_state(PRE_COPY).unwrap();
        // Pre-copy rounds while the workload runs; odd chunk sizes.
        precopy_rounds(&rounds, 4, |round| {
            let size = 4096 + 7 * (round % 8);
            loop {
                let d = src.c.mig_data_read(size).unwrap();
                stream.extend_from_slice(&d);
                if d.len() < size as usize {
                    break;
                }
            }
            sync_pages(&src, &dst.g, false);
        });
        stop.store(true, Ordering::Release);
        let done = w.join().unwrap();
        assert!(done >= 3, "the workload ran during pre-copy");
    });
    // STOP_COPY continues the same stream; then the last dirty pages.
    src.c.set_mig_state(STOP_COPY).unwrap();
    assert_eq!(
        errno(src.c.set_mig_state(PRE_COPY)),
        Errno::EINVAL,
        "STOP_COPY -> PRE_COPY"
    );
    assert_eq!(src.c.mig_state().unwrap(), STOP_COPY);
    stream.extend_from_slice(&src.c.mig_read_all(65536).unwrap());
    assert!(
        src.c.mig_data_read(4096).unwrap().is_empty(),
        "end of stream is permanent"
    );
    // Case 36: MIG_DATA_SIZE stays nonzero even with the stream drained
    // (QEMU's save_setup allocates that many bytes and fails on 0).
    assert!(src.c.mig_data_size().unwrap() > 0, "nonzero when drained");
    sync_pages(&src, &dst.g, false);
    src.c.set_mig_state(STOP).unwrap();
    src.c.dma_logging_stop().unwrap();

    // Destination: RESUMING, the stream in other segments, STOP, compare.
    assert_eq!(
        errno(dst.c.mig_data_write(&stream[..16])),
        Errno::EINVAL,
        "not RESUMING"
    );
    dst.c.set_mig_state(RESUMING).unwrap();
    for c in stream.chunks(1000) {
        dst.c.mig_data_write(c).unwrap();
    }
    dst.c.set_mig_state(STOP).unwrap();
    check_identical(&src, &dst);
    dst.c.set_mig_state(RUNNING).unwrap();
    assert_eq!(dst.c.read32(offsets::SCRATCH.into()).unwrap(), 0x5eed);
    destination_runs(&dst);
    // The source resumes too (a cancelled migration leaves it running).
    src.c.set_mig_state(RUNNING).unwrap();
    assert_eq!(src.c.read32(offsets::SCRATCH.into()).unwrap(), 0x5eed);
}

fn v2_fsm_and_stream_errors_over_the_wire(b: Backend) {
    let s = side(b);
    let c = &s.c;
    // B: generic DEVICE_FEATURE checks.
    let f = |argsz: u32, fl: u32, d: &[u8]| c.feature(argsz, fl, d);
    assert_eq!(errno(f(8, (1 << 19) | 1, &[])), Errno::EINVAL);
    assert_eq!(
        errno(f(16, wire::FEATURE_GET | wire::FEATURE_SET | 2, &[0; 8])),
        Errno::EINVAL
    );
    assert_eq!(errno(f(16, 1, &[])), Errno::EINVAL, "neither GET nor SET");
    let probe = wire::Feature::encode(8, wire::FEATURE_PROBE | wire::FEATURE_GET | 1, &[]);
    assert_eq!(c.request(cmd::DEVICE_FEATURE, &probe, &[]).unwrap(), probe);
    assert_eq!(
        errno(f(
            8,
            wire::FEATURE_PROBE | wire::FEATURE_SET | wire::FEATURE_GET | 1,
            &[]
        )),
        Errno::EINVAL
    );
    for idx in [0u32, 3, 5, 10, 0xffff] {
        assert_eq!(
            errno(f(16, wire::FEATURE_GET | idx, &[])),
            Errno::ENOTTY,
            "feature {idx}"
        );
    }
    assert_eq!(
        errno(f(8, wire::FEATURE_GET | 1, &[])),
        Errno::EINVAL,
        "argsz too small"
    );
    assert_eq!(
        errno(f(8, wire::FEATURE_SET | 2, &[])),
        Errno::EINVAL,
        "SET state without data"
    );
    assert_eq!(
        errno(f(16, wire::FEATURE_SET | 2, &[1, 0, 0, 0])),
        Errno::EINVAL,
        "short SET"
    );
    // C: targets.
    for bad in [0u32, 5, 7, 8, 0xabcd, u32::MAX] {
        assert_eq!(errno(c.set_mig_state(bad)), Errno::EINVAL, "target {bad}");
        assert_eq!(c.mig_state().unwrap(), RUNNING);
    }
    c.set_mig_state(RUNNING).unwrap();
    // D: MIG_DATA_READ outside a saving state, and sizes.
    assert_eq!(errno(c.mig_data_read(16)), Errno::EINVAL);
    c.set_mig_state(STOP_COPY).unwrap();
    assert_eq!(c.mig_data_read(0).unwrap().len(), 0);
    let big = wire::MigData {
        argsz: 8 + (2 << 20),
        size: 2 << 20,
    };
    assert_eq!(
        errno(c.request(cmd::MIG_DATA_READ, &big.encode(&[]), &[])),
        Errno::EINVAL
    );
    let tight = wire::MigData {
        argsz: 8 + 15,
        size: 16,
    };
    assert_eq!(
        errno(c.request(cmd::MIG_DATA_READ, &tight.encode(&[]), &[])),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.request(cmd::MIG_DATA_READ, &[0; 7], &[])),
        Errno::EINVAL
    );
    // Segmentation independence.
    let whole = c.mig_read_all(1 << 20).unwrap();
    c.set_mig_state(STOP).unwrap();
    c.set_mig_state(STOP_COPY).unwrap();
    // 7-byte reads across the envelope and the first chunks (a PAGE chunk
    // is 4120 bytes), then odd 4093-byte reads to the end (7-byte reads of
    // the whole stream would be ~40,000 round trips).
    let mut pieces = Vec::new();
    loop {
        let size = if pieces.len() < 3 * 4120 { 7 } else { 4093 };
        let d = c.mig_data_read(size).unwrap();
        pieces.extend_from_slice(&d);
        if d.len() < size as usize {
            break;
        }
    }
    assert!(whole == pieces, "segmentation changed the stream");
    c.set_mig_state(STOP).unwrap();
    // E: a truncated stream never runs; a corrupted one is rejected; reset aborts.
    c.set_mig_state(RESUMING).unwrap();
    c.mig_data_write(&whole[..whole.len() - 10]).unwrap();
    assert!(
        c.set_mig_state(RUNNING).is_err(),
        "truncated stream must not run"
    );
    assert_ne!(c.mig_state().unwrap(), RUNNING);
    c.reset().unwrap();
    assert_eq!(c.mig_state().unwrap(), RUNNING, "reset returns to RUNNING");
    let mut bad = whole.clone();
    bad[whole.len() / 2] ^= 0x10;
    c.set_mig_state(RESUMING).unwrap();
    let r = c.mig_data_write(&bad).and_then(|()| c.set_mig_state(STOP));
    assert!(r.is_err(), "corrupted stream accepted");
    c.reset().unwrap();
    // MIG_DATA_WRITE payload shorter than its size.
    c.set_mig_state(RESUMING).unwrap();
    let short = wire::MigData {
        argsz: 8 + 16,
        size: 16,
    };
    assert_eq!(
        errno(c.request(cmd::MIG_DATA_WRITE, &short.encode(&[1; 8]), &[])),
        Errno::EINVAL
    );
    c.reset().unwrap();
}

fn v1_read64(c: &Client, off: u64) -> u64 {
    let d = c.region_read(region::MIGRATION, off, 8).unwrap();
    u64::from_le_bytes(d.try_into().unwrap())
}

fn v1_state(c: &Client, v: u32) -> Result<(), vfpga_vfio_user::ClientError> {
    c.region_write(region::MIGRATION, 0, &v.to_le_bytes())
}

/// One v1 save iteration: returns the data, or `None` when pending is 0.
fn v1_iteration(c: &Client) -> Option<Vec<u8>> {
    let pending = v1_read64(c, 8);
    if pending == 0 {
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
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(65536) as u32;
        out.extend_from_slice(&c.region_read(region::MIGRATION, off + pos, n).unwrap());
        pos += u64::from(n);
    }
    Some(out)
}

fn v1_region_migration_with_a_running_workload(b: Backend) {
    let src = side(b);
    let dst = side(b);
    src.c.write32(offsets::SCRATCH.into(), 0xabc1).unwrap();
    // H: bad accesses change nothing.
    assert_eq!(
        errno(src.c.region_write(region::MIGRATION, 0, &[1, 0, 0])),
        Errno::EINVAL
    );
    assert_eq!(
        errno(src.c.region_read(region::MIGRATION, 8, 4)),
        Errno::EINVAL
    );
    assert_eq!(errno(v1_state(&src.c, 0b101)), Errno::EINVAL);
    assert_eq!(errno(v1_state(&src.c, 0b110)), Errno::EINVAL);
    assert_eq!(
        errno(src.c.region_read(region::MIGRATION, 24, 8)),
        Errno::EINVAL,
        "data_size before an iteration"
    );
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    std::thread::scope(|sc| {
        let w = sc.spawn(|| workload(&src, &stop, &rounds));
        let _stop_on_panic = StopOnDrop(&stop);
        src.c.dma_logging_start(4096, &[(BASE, LEN)]).unwrap();
        sync_pages(&src, &dst.g, true);
        v1_state(&src.c, 0b011).unwrap(); // pre-copy
        // Polling pending_bytes has no side effect (§6 62): it prepares
        // nothing. Its value is volatile while the device runs (the
        // workload dirties pages), so only "nonzero" is checked here; the
        // exact repeat is checked once the device is stopped.
        for _ in 0..3 {
            assert!(v1_read64(&src.c, 8) > 0, "initial data pending");
        }
        assert_eq!(
            errno(src.c.region_read(region::MIGRATION, 24, 8)),
            Errno::EINVAL,
            "pending_bytes polls started no iteration"
        );
        precopy_rounds(&rounds, 6, |_| {
            if let Some(d) = v1_iteration(&src.c) {
                chunks.push(d);
            }
            sync_pages(&src, &dst.g, false);
        });
        stop.store(true, Ordering::Release);
        assert!(w.join().unwrap() >= 3, "the workload ran during pre-copy");
    });
    v1_state(&src.c, 0b010).unwrap(); // stop-and-copy
    let p = v1_read64(&src.c, 8);
    assert!(p > 0, "stop-and-copy has data");
    for _ in 0..3 {
        assert_eq!(
            v1_read64(&src.c, 8),
            p,
            "pending_bytes of a stopped device repeats exactly"
        );
    }
    let mut iterations = 0;
    while let Some(d) = v1_iteration(&src.c) {
        iterations += 1;
        assert!(
            !d.is_empty() && iterations < 100_000,
            "stop-and-copy does not converge: iteration {iterations} gave {} bytes, pending {}",
            d.len(),
            v1_read64(&src.c, 8)
        );
        chunks.push(d);
    }
    sync_pages(&src, &dst.g, false);
    v1_state(&src.c, 0).unwrap();
    src.c.dma_logging_stop().unwrap();

    v1_state(&dst.c, 0b100).unwrap(); // resuming
    for d in &chunks {
        let off = v1_read64(&dst.c, 16);
        let window = dst.c.region_info(region::MIGRATION).unwrap().0.size - off;
        for part in d.chunks(window.min(65536) as usize) {
            dst.c.region_write(region::MIGRATION, off, part).unwrap();
            dst.c
                .region_write(region::MIGRATION, 24, &(part.len() as u64).to_le_bytes())
                .unwrap();
        }
    }
    v1_state(&dst.c, 0).unwrap(); // stopped: validated here
    check_identical(&src, &dst);
    v1_state(&dst.c, 0b001).unwrap();
    assert_eq!(dst.c.read32(offsets::SCRATCH.into()).unwrap(), 0xabc1);
    destination_runs(&dst);
}

// These once hung (busy, not deadlocked): a failed assertion inside the
// thread scope left the workload thread running forever, since a scope
// joins its threads before the panic propagates. `StopOnDrop` ends the
// workload on any exit, and `WireDevice` fails a ring wait that makes no
// progress (RING_HANG_GUARD), so a failure now reports itself.
backend_tests!(
    v2_precopy_migration_with_a_running_workload,
    v2_fsm_and_stream_errors_over_the_wire,
    v1_region_migration_with_a_running_workload,
);

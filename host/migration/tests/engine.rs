//! Engine-level conformance (reference/vfio-migration.md §6 groups C, D, E,
//! I) on the fake device: save, pre-copy, stop-and-copy, resume, cancel.

mod common;

use common::*;
use vfpga_device::fake::FakeDevice;
use vfpga_device::{
    Bar, Device, DeviceError, DeviceInfo, DeviceState, DmaPort, Perm, Progress, VecMemory,
};
use vfpga_migration::engine::{EngineConfig, EngineError};
use vfpga_migration::fsm::FsmError;
use vfpga_migration::load::LoadError;
use vfpga_migration::save::{Advice, ConvergencePolicy, StopReason};
use vfpga_migration::stream::{MAGIC, PAGE_CHUNK_BYTES, StreamError, image_bytes};
use vfpga_migration::{ArcError, MigState, MigrationEngine};
use vfpga_regs::offsets;

const PAGES: u32 = 64;

fn dirty_device(seed: u64) -> FakeDevice {
    let mut d = FakeDevice::new(PAGES);
    let mut r = Rng(seed);
    for _ in 0..20 {
        workload_step(&mut d, &mut r);
    }
    d
}

/// A full live migration with pre-copy: reads interleaved with the workload,
/// returns the stream and the source's snapshot at the end.
fn live_migrate(src: &mut FakeDevice, rng: &mut Rng, seg: usize) -> (Vec<u8>, (Vec<u32>, Vec<u8>)) {
    let mut e = MigrationEngine::default();
    e.set_state(src, MigState::PreCopy.raw()).expect("pre-copy");
    let mut stream = Vec::new();
    let mut buf = vec![0u8; seg];
    for round in 0..40 {
        let n = e.read_data(src, &mut buf).expect("pre-copy read");
        stream.extend_from_slice(&buf[..n]);
        if round % 3 == 0 {
            workload_step(src, rng);
        }
    }
    e.set_state(src, MigState::StopCopy.raw())
        .expect("stop-copy");
    stream.extend(drain(&mut e, src, seg));
    let snap = snapshot(src);
    e.set_state(src, MigState::Stop.raw()).expect("stop");
    (stream, snap)
}

/// Cases 33, 39, 70 and the "continue" requirement: save with pre-copy
/// under a workload, restore on a fresh device, continue the workload; the
/// result equals an unmigrated run of the same workload.
#[test]
fn migrated_device_continues_identically_to_an_unmigrated_run() {
    for seg in [1usize, 7, 4096, 1 << 20] {
        let mut src = dirty_device(1);
        let mut reference = src.clone();
        let mut rng = Rng(99);
        let mut ref_rng = Rng(99);
        let (stream, at_switch) = live_migrate(&mut src, &mut rng, seg);
        // The reference runs the same workload without migrating.
        for round in 0..40 {
            if round % 3 == 0 {
                workload_step(&mut reference, &mut ref_rng);
            }
        }
        assert_eq!(snapshot(&mut reference), at_switch);

        let mut dst = FakeDevice::new(PAGES);
        let (e, r) = load(&mut dst, &stream, seg.max(3) - 2, MigState::Running);
        r.expect("resume");
        assert_eq!(e.state(), MigState::Running);
        assert_eq!(snapshot(&mut dst), at_switch, "segment size {seg}");
        for _ in 0..10 {
            workload_step(&mut dst, &mut rng);
            workload_step(&mut reference, &mut ref_rng);
        }
        assert_eq!(snapshot(&mut dst), snapshot(&mut reference));
    }
}

/// Case 71: a paused-VM save (RUNNING -> STOP_COPY directly) restores the
/// same device as a save with pre-copy.
#[test]
fn save_without_pre_copy_gives_the_same_device() {
    let mut a = dirty_device(2);
    let want = snapshot(&mut a);
    let stream = save_stopped(&mut a.clone());
    assert_eq!(stream.len() as u64, image_bytes(2, u64::from(PAGES)));
    let mut dst = FakeDevice::new(PAGES);
    load(&mut dst, &stream, 333, MigState::Running)
        .1
        .expect("resume");
    assert_eq!(snapshot(&mut dst), want);

    let mut rng = Rng(5);
    let (pre, _) = live_migrate(&mut a.clone(), &mut Rng(5), 4096);
    let mut b = a.clone();
    for round in 0..40 {
        if round % 3 == 0 {
            workload_step(&mut b, &mut rng);
        }
    }
    let mut dst2 = FakeDevice::new(PAGES);
    load(&mut dst2, &pre, 4096, MigState::Running)
        .1
        .expect("resume");
    assert_eq!(snapshot(&mut dst2), snapshot(&mut b));
}

/// Case 28: MIG_DATA_READ outside PRE_COPY/STOP_COPY is refused.
#[test]
fn read_data_outside_saving_states_is_rejected() {
    let mut d = dirty_device(3);
    let mut e = MigrationEngine::default();
    let mut buf = [0u8; 64];
    for s in [MigState::Running, MigState::Stop, MigState::Resuming] {
        e.set_state(&mut d, s.raw()).expect("state");
        assert!(matches!(
            e.read_data(&mut d, &mut buf),
            Err(EngineError::WrongState { .. })
        ));
    }
    e.reset(&mut d).expect("reset");
}

/// Case 30: a 0-byte read returns 0 and consumes nothing.
#[test]
fn zero_size_read_consumes_nothing() {
    let mut d = dirty_device(4);
    let want = save_stopped(&mut d.clone());
    let mut e = MigrationEngine::default();
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    assert_eq!(e.read_data(&mut d, &mut []).expect("read 0"), 0);
    let mut first = [0u8; 5];
    e.read_data(&mut d, &mut first).expect("read");
    assert_eq!(e.read_data(&mut d, &mut []).expect("read 0"), 0);
    let rest = drain(&mut e, &mut d, 4096);
    assert_eq!([&first[..], &rest[..]].concat(), want);
}

/// Case 31: in STOP_COPY a short read is the end; every later read is 0.
#[test]
fn short_read_in_stop_copy_is_permanent_end() {
    let mut d = dirty_device(5);
    let mut e = MigrationEngine::default();
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    let s = drain(&mut e, &mut d, 1000);
    assert_eq!(s.len() as u64, image_bytes(2, u64::from(PAGES)));
    let mut buf = [0u8; 1000];
    for _ in 0..3 {
        assert_eq!(e.read_data(&mut d, &mut buf).expect("read"), 0);
    }
    assert!(e.save_session().is_some_and(|s| s.is_complete()));
}

/// Case 32: in PRE_COPY a short read is a temporary end; more data comes
/// after the device dirties pages, and the estimates follow.
#[test]
fn pre_copy_short_read_is_temporary() {
    let mut d = dirty_device(6);
    let mut e = MigrationEngine::default();
    e.set_state(&mut d, MigState::PreCopy.raw())
        .expect("pre-copy");
    let info = e.precopy_info(&mut d).expect("info");
    assert!(info.initial_bytes >= u64::from(PAGES) * PAGE_CHUNK_BYTES);
    assert_eq!(info.dirty_bytes, 0);
    let mut buf = vec![0u8; 1 << 20];
    let n = e.read_data(&mut d, &mut buf).expect("read");
    assert!(n < buf.len(), "the initial image is shorter than 1 MiB");
    assert_eq!(e.read_data(&mut d, &mut buf).expect("read"), 0);
    let info = e.precopy_info(&mut d).expect("info");
    assert_eq!((info.initial_bytes, info.dirty_bytes), (0, 0));
    d.devmem_write(4096 * 7 + 1, &[1, 2, 3]).expect("dirty");
    let info = e.precopy_info(&mut d).expect("info");
    assert_eq!(info.initial_bytes, 0);
    assert!(info.dirty_bytes >= PAGE_CHUNK_BYTES);
    let n = e.read_data(&mut d, &mut buf).expect("read");
    assert_eq!(n as u64, info.dirty_bytes, "exactly the dirty pass");
    assert_eq!(
        e.save_session().map(|s| s.dirty_passes().to_vec()),
        Some(vec![1])
    );
}

/// Case 34: leaving the saving group ends the session; a new PRE_COPY starts
/// a fresh, complete stream.
#[test]
fn leaving_the_saving_group_ends_the_stream_and_a_new_one_starts_fresh() {
    let mut d = dirty_device(7);
    let mut e = MigrationEngine::default();
    let mut buf = vec![0u8; 10_000];
    e.set_state(&mut d, MigState::PreCopy.raw())
        .expect("pre-copy");
    e.read_data(&mut d, &mut buf).expect("read");
    e.set_state(&mut d, MigState::Running.raw())
        .expect("cancel");
    assert!(e.save_session().is_none());
    e.set_state(&mut d, MigState::PreCopy.raw())
        .expect("pre-copy again");
    let n = e.read_data(&mut d, &mut buf[..8]).expect("read");
    assert_eq!((n, &buf[..8]), (8, &MAGIC[..]));
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    let rest = drain(&mut e, &mut d, 4096);
    let stream = [&buf[..8], &rest[..]].concat();
    let want = snapshot(&mut d);
    let mut dst = FakeDevice::new(PAGES);
    load(&mut dst, &stream, 100, MigState::Stop)
        .1
        .expect("complete image");
    assert_eq!(snapshot(&mut dst), want);
}

/// Case 35: the same device state read with segment sizes 1, 7, 4096 and
/// 1 MiB gives byte-identical streams; and two identical devices give
/// identical streams (case 73: nothing host-specific is inside).
#[test]
fn segmentation_independence_and_determinism() {
    let base = dirty_device(8);
    let mut streams = Vec::new();
    for seg in [1usize, 7, 4096, 1 << 20] {
        let mut d = base.clone();
        let mut e = MigrationEngine::default();
        e.set_state(&mut d, MigState::StopCopy.raw())
            .expect("stop-copy");
        streams.push(drain(&mut e, &mut d, seg));
    }
    for s in &streams[1..] {
        assert_eq!(s, &streams[0]);
    }
}

/// Case 36 (the engine's share): the stop-copy size is nonzero outside a
/// drained stop-copy and exact once stopped, so 0 after the drain. The
/// vfio-user server answers MIG_DATA_SIZE with at least 1 (QEMU fails on 0);
/// `host/vfio-user/tests/migration.rs` checks that on the wire.
#[test]
fn stop_copy_size_is_nonzero_and_exact() {
    let mut d = dirty_device(9);
    let mut e = MigrationEngine::default();
    for s in [MigState::Running, MigState::Stop, MigState::Resuming] {
        e.set_state(&mut d, s.raw()).expect("state");
        assert_eq!(
            e.stop_copy_size(&mut d).expect("size"),
            image_bytes(2, u64::from(PAGES))
        );
    }
    e.reset(&mut d).expect("reset");
    e.set_state(&mut d, MigState::PreCopy.raw())
        .expect("pre-copy");
    let mut buf = vec![0u8; 50_000];
    e.read_data(&mut d, &mut buf).expect("read");
    d.devmem_write(0, &[9; 9000]).expect("dirty 3 pages");
    let est = e.stop_copy_size(&mut d).expect("size");
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    assert_eq!(e.stop_copy_size(&mut d).expect("size"), est);
    let rest = drain(&mut e, &mut d, 3000);
    assert_eq!(rest.len() as u64, est);
    assert_eq!(e.stop_copy_size(&mut d).expect("size"), 0);
}

/// Case 37: MIG_DATA_WRITE outside RESUMING is refused; the device is
/// untouched.
#[test]
fn write_data_outside_resuming_is_rejected() {
    let stream = save_stopped(&mut dirty_device(10));
    let mut d = FakeDevice::new(PAGES);
    let before = snapshot(&mut d);
    let mut e = MigrationEngine::default();
    for s in [
        MigState::Running,
        MigState::Stop,
        MigState::StopCopy,
        MigState::PreCopy,
    ] {
        e.reset(&mut d).expect("reset");
        e.set_state(&mut d, s.raw()).expect("state");
        assert!(matches!(
            e.write_data(&mut d, &stream),
            Err(EngineError::WrongState { .. })
        ));
    }
    e.reset(&mut d).expect("reset");
    assert_eq!(snapshot(&mut d), before);
}

/// Case 40 at every offset: every proper prefix (including empty) fails
/// RESUMING -> RUNNING, and the device never runs. (Case 41, a corrupted
/// byte anywhere, is the bit-flip campaign in `hostile.rs`.)
#[test]
fn truncated_stream_at_every_offset_never_runs() {
    let stream = save_stopped(&mut dirty_device_small(11));
    for cut in 0..stream.len() {
        let mut dst = FakeDevice::new(2);
        let (e, r) = load(&mut dst, &stream[..cut], 4096, MigState::Running);
        assert!(r.is_err(), "prefix of {cut} bytes accepted");
        assert_eq!(e.state(), MigState::Resuming, "cut {cut}");
        assert!(dst.is_quiesced().expect("status"), "cut {cut}: device runs");
    }
}

fn dirty_device_small(seed: u64) -> FakeDevice {
    let mut d = FakeDevice::new(2);
    let mut r = Rng(seed);
    workload_step(&mut d, &mut r);
    d
}

/// Case 42: trailing data after a complete image is rejected at once.
#[test]
fn trailing_data_is_rejected() {
    let mut s = save_stopped(&mut dirty_device(12));
    s.push(0);
    let mut dst = FakeDevice::new(PAGES);
    let mut e = MigrationEngine::default();
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming");
    let err = e.write_data(&mut dst, &s).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Stream(StreamError::TrailingData { extra: 1 })
        ),
        "{err:?}"
    );
    assert!(e.set_state(&mut dst, MigState::Running.raw()).is_err());
    assert!(dst.is_quiesced().expect("status"));
}

fn load_err(stream: &[u8], dst: &mut FakeDevice) -> StreamError {
    let mut e = MigrationEngine::default();
    e.set_state(dst, MigState::Resuming.raw())
        .expect("resuming");
    let err = match e.write_data(dst, stream) {
        Err(EngineError::Stream(s)) => s,
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => match e.set_state(dst, MigState::Stop.raw()) {
            Err(EngineError::Transition(FsmError::Arc {
                source: ArcError::Load(LoadError::Stream(s)),
                now,
                ..
            })) => {
                assert_eq!(now, MigState::Resuming);
                s
            }
            other => panic!("stream accepted: {other:?}"),
        },
    };
    assert!(dst.is_quiesced().expect("status"));
    err
}

/// Case 43: another device (memory size), another RTL version, another
/// format version: each with its own error.
#[test]
fn wrong_device_version_or_format_is_rejected() {
    let s = save_stopped(&mut dirty_device(13));
    let e = load_err(&s, &mut FakeDevice::new(PAGES * 2));
    assert!(
        matches!(
            e,
            StreamError::Identity {
                what: "device-memory pages",
                ..
            }
        ),
        "{e}"
    );
    let mut v = s.clone();
    v[21] ^= 1; // RTL minor version (byte 1 of RTL_VERSION at 20)
    reseal_header(&mut v);
    let e = load_err(&v, &mut FakeDevice::new(PAGES));
    assert!(matches!(e, StreamError::Identity { .. }), "{e}");
    let mut v = s.clone();
    v[20] ^= 1; // patch level: compatible by policy
    reseal_header(&mut v);
    let mut dst = FakeDevice::new(PAGES);
    load(&mut dst, &v, 4096, MigState::Stop)
        .1
        .expect("patch level may differ");
    for (at, val, want) in [(10usize, 1u16, "minor"), (8, 2, "major")] {
        let mut v = s.clone();
        v[at..at + 2].copy_from_slice(&val.to_le_bytes());
        reseal_header(&mut v);
        let e = load_err(&v, &mut FakeDevice::new(PAGES));
        assert!(
            matches!(e, StreamError::UnsupportedVersion { .. }),
            "{want}: {e}"
        );
    }
    let mut v = s.clone();
    v[0] = b'X';
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::BadMagic { .. }
    ));
    let mut v = s.clone();
    v[24] |= 0x80; // a feature the destination lacks
    reseal_header(&mut v);
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::Identity { .. }
    ));
}

/// Case 44: length fields at the limits are rejected before any large
/// allocation; a length beyond the data is a truncation.
#[test]
fn length_fields_near_the_limits_are_rejected() {
    let s = save_stopped(&mut dirty_device(14));
    let spans = chunk_spans(&s);
    let (p, _) = spans[1]; // first PAGE chunk
    for len in [u32::MAX, 0x8000_0000, 4101, 1 << 20] {
        let mut v = s.clone();
        v[p + 8..p + 12].copy_from_slice(&len.to_le_bytes());
        reseal_chunk(&mut v, p);
        let e = load_err(&v[..p + 16], &mut FakeDevice::new(PAGES));
        assert!(matches!(e, StreamError::ChunkTooLong { .. }), "{len}: {e}");
    }
    let mut v = s.clone();
    v[p + 8..p + 12].copy_from_slice(&100u32.to_le_bytes());
    reseal_chunk(&mut v, p);
    assert!(matches!(
        load_err(&v[..p + 16], &mut FakeDevice::new(PAGES)),
        StreamError::BadChunkLength { .. }
    ));
    assert!(matches!(
        load_err(&s[..p + 100], &mut FakeDevice::new(PAGES)),
        StreamError::Truncated { .. }
    ));
}

/// Case 45: well-formed but invalid state is rejected (datasheet §9.3), and
/// rings outside the destination's mapped memory are rejected by the host
/// check before the device may run.
#[test]
fn semantically_invalid_state_and_unmapped_rings_are_rejected() {
    let s = save_stopped(&mut dirty_device(15));
    let spans = chunk_spans(&s);
    let (st, _) = spans[spans.len() - 2];
    let word = |i: usize| st + 16 + 4 + 4 * i;
    let mut v = s.clone();
    v[word(vfpga_regs::state::CQ_SIZE)..][..4].copy_from_slice(&3u32.to_le_bytes());
    reseal_chunk(&mut v, st);
    let e = load_err(&v, &mut FakeDevice::new(PAGES));
    assert!(matches!(e, StreamError::InvalidState(_)), "{e}");

    // A state with an 8-entry SQ at 0x10000 (256 bytes).
    let mut v = s.clone();
    v[word(vfpga_regs::state::SQ_BASE_LO)..][..4].copy_from_slice(&0x10000u32.to_le_bytes());
    v[word(vfpga_regs::state::SQ_SIZE)..][..4].copy_from_slice(&8u32.to_le_bytes());
    reseal_chunk(&mut v, st);
    let port = DmaPort::new();
    port.map(0x10000, std::sync::Arc::new(VecMemory::new(128)), Perm::RW)
        .expect("map");
    let mut dst = FakeDevice::new(PAGES);
    let mut e = MigrationEngine::new(EngineConfig {
        dma: Some(port.clone()),
    });
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming");
    e.write_data(&mut dst, &v).expect("well-formed");
    let err = e.set_state(&mut dst, MigState::Running.raw()).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Transition(FsmError::Arc {
                source: ArcError::Load(LoadError::RingUnmapped { .. }),
                now: MigState::Resuming,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(dst.is_quiesced().expect("status"));
    // With the ring mapped, the same stream runs.
    let mut dst = FakeDevice::new(PAGES);
    port.unmap_all();
    port.map(0x10000, std::sync::Arc::new(VecMemory::new(4096)), Perm::RW)
        .expect("map");
    let mut e = MigrationEngine::new(EngineConfig { dma: Some(port) });
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming");
    e.write_data(&mut dst, &v).expect("well-formed");
    e.set_state(&mut dst, MigState::Running.raw())
        .expect("ring is mapped");
}

/// Case 48: a chunk reordered, duplicated or missing fails validation, each
/// with its own error; a structurally misplaced chunk too.
#[test]
fn reordered_duplicated_and_missing_chunks_are_rejected() {
    let s = save_stopped(&mut dirty_device(16));
    let sp = chunk_spans(&s);
    let bytes = |r: (usize, usize)| s[r.0..r.1].to_vec();
    // Missing: drop chunk 3.
    let v = [&s[..sp[3].0], &s[sp[3].1..]].concat();
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::MissingChunk {
            expected: 3,
            found: 4
        }
    ));
    // Duplicate: chunk 3 twice.
    let v = [&s[..sp[3].1], &bytes(sp[3])[..], &s[sp[3].1..]].concat();
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::DuplicateChunk {
            expected: 4,
            found: 3
        }
    ));
    // Reordered: chunks 3 and 4 swapped.
    let v = [
        &s[..sp[3].0],
        &bytes(sp[4])[..],
        &bytes(sp[3])[..],
        &s[sp[4].1..],
    ]
    .concat();
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::MissingChunk {
            expected: 3,
            found: 4
        }
    ));
    // Reordered and renumbered: the page order catches it.
    let mut v = [
        &s[..sp[3].0],
        &bytes(sp[4])[..],
        &bytes(sp[3])[..],
        &s[sp[4].1..],
    ]
    .concat();
    set_seq(&mut v, sp[3].0, 3);
    set_seq(&mut v, sp[4].0, 4);
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::PageOrder { .. }
    ));
    // END moved before STATE (renumbered): misplaced.
    let n = sp.len();
    let mut v = [
        &s[..sp[n - 2].0],
        &bytes(sp[n - 1])[..],
        &bytes(sp[n - 2])[..],
    ]
    .concat();
    set_seq(&mut v, sp[n - 2].0, (n - 2) as u32);
    assert!(matches!(
        load_err(&v, &mut FakeDevice::new(PAGES)),
        StreamError::Misplaced { .. }
    ));
}

/// Case 46: DEVICE_RESET in RESUMING discards the partial state: RUNNING,
/// device in its reset state.
#[test]
fn reset_in_resuming_aborts_to_a_reset_running_device() {
    let s = save_stopped(&mut dirty_device(17));
    let mut dst = FakeDevice::new(PAGES);
    let mut e = MigrationEngine::default();
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming");
    e.write_data(&mut dst, &s[..s.len() - 10]).expect("partial");
    e.reset(&mut dst).expect("reset");
    assert_eq!(e.state(), MigState::Running);
    assert!(e.load_session().is_none());
    assert!(!dst.is_quiesced().expect("status"));
    assert_eq!(dst.read_reg(offsets::SCRATCH).expect("scratch"), 0);
}

/// Case 72 (destination side): a resume aborted half-way by DEVICE_RESET
/// leaves the same destination ready for a second attempt, which restores
/// the source exactly.
#[test]
fn aborted_resume_then_a_second_attempt_into_the_same_destination() {
    let mut src = dirty_device(21);
    let want = snapshot(&mut src);
    let s = save_stopped(&mut src);
    let mut dst = FakeDevice::new(PAGES);
    let mut e = MigrationEngine::default();
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming");
    e.write_data(&mut dst, &s[..s.len() / 2]).expect("half");
    e.reset(&mut dst).expect("abort");
    assert_eq!(e.state(), MigState::Running);
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming again");
    for part in s.chunks(4096) {
        e.write_data(&mut dst, part).expect("second attempt");
    }
    e.set_state(&mut dst, MigState::Running.raw()).expect("run");
    assert_eq!(snapshot(&mut dst), want);
}

/// A fake device whose quiesce handshake times out while `broken` is set.
struct BrokenQuiesce {
    inner: FakeDevice,
    broken: bool,
}

impl Device for BrokenQuiesce {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.mmio_read(bar, offset, data)
    }
    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.inner.mmio_write(bar, offset, data)
    }
    fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError> {
        self.inner.advance(budget)
    }
    fn quiesce(&mut self) -> Result<(), DeviceError> {
        if self.broken {
            return Err(DeviceError::QuiesceTimeout(std::time::Duration::ZERO));
        }
        self.inner.quiesce()
    }
    fn resume(&mut self) -> Result<(), DeviceError> {
        self.inner.resume()
    }
    fn is_quiesced(&mut self) -> Result<bool, DeviceError> {
        self.inner.is_quiesced()
    }
    fn soft_reset(&mut self) -> Result<(), DeviceError> {
        self.inner.soft_reset()
    }
    fn save_state(&mut self) -> Result<DeviceState, DeviceError> {
        self.inner.save_state()
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        self.inner.restore_state(state)
    }
    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.devmem_read(offset, buf)
    }
    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.inner.devmem_write(offset, data)
    }
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, DeviceError> {
        self.inner.take_dirty_pages()
    }
}

/// Case 23 (the engine's share): a device that cannot be stopped moves the
/// engine to ERROR, from RUNNING and from PRE_COPY with a stream open. In
/// ERROR every SET is refused and no data moves; DEVICE_RESET returns to
/// RUNNING, ends the data session, and a migration then succeeds.
#[test]
fn unstoppable_device_enters_error_which_only_reset_leaves() {
    for via_pre_copy in [false, true] {
        let mut d = BrokenQuiesce {
            inner: dirty_device(22),
            broken: true,
        };
        let mut e = MigrationEngine::default();
        let target = if via_pre_copy {
            e.set_state(&mut d, MigState::PreCopy.raw())
                .expect("pre-copy");
            e.read_data(&mut d, &mut [0u8; 10_000]).expect("read");
            MigState::StopCopy
        } else {
            MigState::Stop
        };
        let err = e
            .set_state(&mut d, target.raw())
            .expect_err("quiesce fails");
        assert!(
            matches!(
                err,
                EngineError::Transition(FsmError::Arc {
                    now: MigState::Error,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(e.state(), MigState::Error);
        for t in [
            MigState::Running,
            MigState::Stop,
            MigState::StopCopy,
            MigState::Resuming,
            MigState::PreCopy,
            MigState::Error,
        ] {
            assert!(e.set_state(&mut d, t.raw()).is_err(), "SET {t:?} in ERROR");
            assert_eq!(e.state(), MigState::Error);
        }
        assert!(e.read_data(&mut d, &mut [0u8; 64]).is_err());
        assert!(e.write_data(&mut d, &[0u8; 64]).is_err());

        d.broken = false;
        e.reset(&mut d).expect("reset");
        assert_eq!(e.state(), MigState::Running);
        assert!(e.save_session().is_none() && e.load_session().is_none());
        assert!(!d.is_quiesced().expect("status"));
        let want = snapshot(&mut d);
        e.set_state(&mut d, MigState::StopCopy.raw())
            .expect("stop-copy after reset");
        let stream = drain(&mut e, &mut d, 1 << 16);
        let mut dst = FakeDevice::new(PAGES);
        load(&mut dst, &stream, 4096, MigState::Running)
            .1
            .expect("resume");
        assert_eq!(snapshot(&mut dst), want, "via pre-copy: {via_pre_copy}");
    }
}

/// Case 47: RESUMING -> STOP -> RESUMING starts a new, empty session.
#[test]
fn re_entering_resuming_starts_an_empty_session() {
    let s = save_stopped(&mut dirty_device(18));
    let mut dst = FakeDevice::new(PAGES);
    let mut e = MigrationEngine::default();
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming");
    e.write_data(&mut dst, &s).expect("stream");
    e.set_state(&mut dst, MigState::Stop.raw()).expect("stop");
    e.set_state(&mut dst, MigState::Resuming.raw())
        .expect("resuming again");
    assert_eq!(e.load_session().map(|l| l.bytes()), Some(0));
    e.write_data(&mut dst, &s).expect("the whole stream again");
    e.set_state(&mut dst, MigState::Running.raw()).expect("run");
}

/// Cases 24 and 72: reset from every state gives RUNNING and ends the
/// session; cancel at each phase leaves the source running with its state
/// intact, and a second migration then succeeds.
#[test]
fn cancel_at_every_phase_leaves_the_source_running_and_intact() {
    for cancel_after in 0..6 {
        let mut src = dirty_device(19);
        let want = snapshot(&mut src);
        let mut e = MigrationEngine::default();
        let mut buf = vec![0u8; 100_000];
        e.set_state(&mut src, MigState::PreCopy.raw())
            .expect("pre-copy");
        if cancel_after >= 1 {
            e.read_data(&mut src, &mut buf).expect("read");
        }
        if cancel_after >= 2 {
            e.set_state(&mut src, MigState::StopCopy.raw())
                .expect("stop-copy");
        }
        if cancel_after >= 3 {
            e.read_data(&mut src, &mut buf[..5000])
                .expect("mid stop-copy");
        }
        if cancel_after >= 4 {
            drain(&mut e, &mut src, 4096);
        }
        if cancel_after >= 5 {
            e.set_state(&mut src, MigState::Stop.raw()).expect("stop");
        }
        e.set_state(&mut src, MigState::Running.raw())
            .expect("cancel");
        assert!(e.save_session().is_none());
        assert!(!src.is_quiesced().expect("status"), "phase {cancel_after}");
        assert_eq!(snapshot(&mut src), want, "phase {cancel_after}");
        // A second attempt succeeds.
        e.set_state(&mut src, MigState::StopCopy.raw())
            .expect("again");
        let s = drain(&mut e, &mut src, 1 << 16);
        let mut dst = FakeDevice::new(PAGES);
        load(&mut dst, &s, 4096, MigState::Running)
            .1
            .expect("resume");
        assert_eq!(snapshot(&mut dst), want);
    }
    // Reset from every state.
    for s in [
        MigState::Stop,
        MigState::StopCopy,
        MigState::Resuming,
        MigState::PreCopy,
        MigState::Running,
    ] {
        let mut d = dirty_device(20);
        let mut e = MigrationEngine::default();
        e.set_state(&mut d, s.raw()).expect("state");
        let g = e.generation();
        e.reset(&mut d).expect("reset");
        assert_eq!(e.state(), MigState::Running);
        assert!(e.generation() > g);
        assert!(e.save_session().is_none() && e.load_session().is_none());
        assert!(e.read_data(&mut d, &mut [0u8; 8]).is_err());
        assert!(!d.is_quiesced().expect("status"));
    }
}

/// Case 25 (the engine's share): in STOP and STOP_COPY the device does not
/// advance and ignores state-changing BAR writes; its state is unchanged.
#[test]
fn stopped_device_does_not_advance() {
    for s in [MigState::Stop, MigState::StopCopy] {
        let mut d = dirty_device(21);
        let mut e = MigrationEngine::default();
        e.set_state(&mut d, s.raw()).expect("stop");
        let before = d.save_state().expect("quiesced");
        d.advance(1_000_000).expect("advance");
        d.write_reg(offsets::SCRATCH, 0x1234).expect("write");
        d.write_reg(offsets::CTRL, 1).expect("write");
        let mut r = [0u8; 4];
        d.mmio_read(vfpga_device::Bar::Regs, 0x24, &mut r)
            .expect("read");
        assert_eq!(d.save_state().expect("quiesced"), before);
    }
}

/// Case 27: the saved stream is unaffected by BAR accesses in STOP_COPY.
#[test]
fn bar_writes_in_stop_copy_do_not_change_the_stream() {
    let base = dirty_device(22);
    let want = save_stopped(&mut base.clone());
    let mut d = base.clone();
    let mut e = MigrationEngine::default();
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    let mut out = vec![0u8; 3000];
    e.read_data(&mut d, &mut out).expect("read");
    d.write_reg(offsets::SCRATCH, 0x5555)
        .expect("ignored while quiesced");
    out.extend(drain(&mut e, &mut d, 4096));
    assert_eq!(out, want);
}

/// The convergence policy: a workload that keeps dirtying the same number
/// of pages is declared not converging; a quiet device converges.
#[test]
fn convergence_policy() {
    let mut d = dirty_device(23);
    let mut e = MigrationEngine::default();
    e.set_state(&mut d, MigState::PreCopy.raw())
        .expect("pre-copy");
    let policy = ConvergencePolicy {
        downtime_bytes: 4 * PAGE_CHUNK_BYTES,
        max_dirty_passes: 10,
        stall_passes: 3,
    };
    assert_eq!(e.advice(&mut d, &policy).expect("advice"), Advice::Iterate);
    let mut buf = vec![0u8; 1 << 20];
    e.read_data(&mut d, &mut buf).expect("initial image");
    assert_eq!(
        e.advice(&mut d, &policy).expect("advice"),
        Advice::StopAndCopy(StopReason::Converged)
    );
    let mut verdict = Advice::Iterate;
    for pass in 0..10u32 {
        for p in 0..8u64 {
            d.devmem_write(p * 4096 + u64::from(pass), &[1])
                .expect("dirty");
        }
        verdict = e.advice(&mut d, &policy).expect("advice");
        if verdict != Advice::Iterate {
            break;
        }
        e.read_data(&mut d, &mut buf).expect("dirty pass");
    }
    assert_eq!(verdict, Advice::StopAndCopy(StopReason::NotConverging));
}

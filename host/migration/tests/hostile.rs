//! Hostile streams: a bit-flip campaign over every bit of every byte of a
//! real stream, and random garbage (catalogue cases 40, 41, 44).

mod common;

use common::*;
use proptest::prelude::*;
use vfpga_device::Device;
use vfpga_device::fake::FakeDevice;
use vfpga_migration::stream::{Decoder, NullSink};
use vfpga_migration::{MigState, MigrationEngine};

/// A real stream with every chunk kind: pre-copy (FULL pass, a DIRTY pass),
/// then stop-and-copy (FINAL pass, state, end), from a 2-page device.
fn real_stream() -> (Vec<u8>, (Vec<u32>, Vec<u8>)) {
    let mut d = FakeDevice::new(2);
    let mut rng = Rng(77);
    workload_step(&mut d, &mut rng);
    let mut e = MigrationEngine::default();
    e.set_state(&mut d, MigState::PreCopy.raw())
        .expect("pre-copy");
    let mut s = vec![0u8; 1 << 16];
    let mut n = e.read_data(&mut d, &mut s).expect("initial");
    d.devmem_write(100, &[1, 2, 3]).expect("dirty page 0");
    n += e.read_data(&mut d, &mut s[n..]).expect("dirty pass");
    d.devmem_write(5000, &[4, 5, 6]).expect("dirty page 1");
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    n += e.read_data(&mut d, &mut s[n..]).expect("final");
    s.truncate(n);
    (s, snapshot(&mut d))
}

/// Every single-bit flip of every byte of a real stream is rejected by the
/// decoder, without a panic.
#[test]
fn every_bit_flip_of_a_real_stream_is_rejected() {
    let (s, _) = real_stream();
    assert!(
        s.len() > 3 * 4096,
        "the stream has a dirty pass and a final pass"
    );
    let id = vfpga_device::Identity::this_build(2, 0);
    let mut clean = Decoder::new(id);
    clean.feed(&s, &mut NullSink).expect("clean stream");
    clean.finish().expect("clean stream");
    let mut flipped = s.clone();
    let mut rejected = 0usize;
    for i in 0..s.len() {
        for bit in 0..8 {
            flipped[i] ^= 1 << bit;
            let mut d = Decoder::new(id);
            let r = d
                .feed(&flipped, &mut NullSink)
                .and_then(|()| d.finish().map(|_| ()));
            assert!(r.is_err(), "flip of bit {bit} at byte {i} accepted");
            flipped[i] ^= 1 << bit;
            rejected += 1;
        }
    }
    assert_eq!(rejected, s.len() * 8);
}

/// The same campaign through the engine into a real (fake) device, one bit
/// per byte: every flip is refused and the destination never runs; the
/// unflipped stream loads exactly.
#[test]
fn every_byte_flip_through_the_engine_never_runs_the_device() {
    let (s, want) = real_stream();
    let mut dst = FakeDevice::new(2);
    load(&mut dst, &s, 4096, MigState::Running)
        .1
        .expect("clean stream");
    assert_eq!(snapshot(&mut dst), want);
    let mut flipped = s.clone();
    for i in 0..s.len() {
        let bit = i % 8;
        flipped[i] ^= 1 << bit;
        let mut dst = FakeDevice::new(2);
        let (e, r) = load(&mut dst, &flipped, 4096, MigState::Running);
        assert!(r.is_err(), "flip of bit {bit} at byte {i} accepted");
        assert_ne!(e.state(), MigState::Running);
        assert!(dst.is_quiesced().expect("status"), "byte {i} bit {bit}");
        flipped[i] ^= 1 << bit;
    }
}

/// A cut at every offset is rejected by the decoder as truncation (the
/// engine-level version is in engine.rs).
#[test]
fn a_cut_at_every_offset_is_a_truncation() {
    let (s, _) = real_stream();
    for cut in 0..s.len() {
        let mut d = Decoder::new(vfpga_device::Identity::this_build(2, 0));
        d.feed(&s[..cut], &mut NullSink)
            .expect("a prefix is fine so far");
        let e = d.finish().unwrap_err();
        assert!(
            matches!(e, vfpga_migration::StreamError::Truncated { .. }),
            "cut {cut}: {e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Garbage, or a real stream with random bytes overwritten, never
    /// panics and is never accepted as a different stream.
    #[test]
    fn random_damage_never_panics_or_passes(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
        seg in 1usize..5000,
    ) {
        let (s, _) = real_stream();
        let mut v = s.clone();
        for (at, b) in edits {
            let i = at as usize % v.len();
            v[i] = b;
        }
        let mut d = Decoder::new(vfpga_device::Identity::this_build(2, 0));
        let mut ok = true;
        for part in v.chunks(seg) {
            if d.feed(part, &mut NullSink).is_err() {
                ok = false;
                break;
            }
        }
        let accepted = ok && d.finish().is_ok();
        prop_assert_eq!(accepted, v == s);
    }

    /// Pure garbage of any length.
    #[test]
    fn garbage_is_rejected(data in proptest::collection::vec(any::<u8>(), 0..9000)) {
        let mut d = Decoder::new(vfpga_device::Identity::this_build(2, 0));
        let r = d.feed(&data, &mut NullSink).and_then(|()| d.finish().map(|_| ()));
        prop_assert!(r.is_err());
    }
}

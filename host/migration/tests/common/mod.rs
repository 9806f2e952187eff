//! Shared helpers of the engine-level tests.
#![allow(dead_code)]

use vfpga_device::Device;
use vfpga_device::fake::FakeDevice;
use vfpga_migration::stream::{CHUNK_HEADER_LEN, CHUNK_TRAILER_LEN, HEADER_LEN};
use vfpga_migration::{MigState, MigrationEngine};
use vfpga_regs::offsets;

/// A deterministic pseudo-random generator (xorshift), so failures replay.
pub use vfpga_device::testkit::Rng;

/// One step of the workload a guest driver would run on the fake device:
/// writes to device memory (which dirty pages) and to `SCRATCH`.
pub fn workload_step<D: Device + ?Sized>(dev: &mut D, rng: &mut Rng) {
    let bytes = dev.info().bar2_size;
    for _ in 0..4 {
        let len = 1 + rng.below(300) as usize;
        let off = rng.below(bytes - len as u64);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        dev.devmem_write(off, &data).expect("devmem write");
    }
    let s = dev.read_reg(offsets::SCRATCH).expect("scratch");
    dev.write_reg(
        offsets::SCRATCH,
        s.wrapping_mul(31).wrapping_add(rng.next() as u32),
    )
    .expect("scratch");
}

/// Everything observable about a device: its state words and memory.
pub fn snapshot<D: Device + ?Sized>(dev: &mut D) -> (Vec<u32>, Vec<u8>) {
    let was_quiesced = dev.is_quiesced().expect("status");
    dev.quiesce().expect("quiesce");
    let words = dev.save_state().expect("save").arch.to_words().to_vec();
    let mut mem = vec![0u8; dev.info().bar2_size as usize];
    dev.devmem_read(0, &mut mem).expect("devmem");
    if !was_quiesced {
        dev.resume().expect("resume");
    }
    (words, mem)
}

/// Reads the whole stream (STOP_COPY) in `seg`-byte reads.
pub fn drain<D: Device + ?Sized>(e: &mut MigrationEngine, dev: &mut D, seg: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; seg];
    loop {
        let n = e.read_data(dev, &mut buf).expect("read_data");
        out.extend_from_slice(&buf[..n]);
        if n < seg {
            return out;
        }
    }
}

/// A complete stream from `dev` without pre-copy; leaves the engine in STOP
/// and the device quiesced.
pub fn save_stopped(dev: &mut FakeDevice) -> Vec<u8> {
    let mut e = MigrationEngine::default();
    e.set_state(dev, MigState::StopCopy.raw())
        .expect("stop-copy");
    let s = drain(&mut e, dev, 1 << 20);
    e.set_state(dev, MigState::Stop.raw()).expect("stop");
    s
}

/// Loads `stream` in `seg`-byte writes into a fresh engine for `dev` and
/// asks for `target`; returns the engine and the first error.
pub fn load(
    dev: &mut FakeDevice,
    stream: &[u8],
    seg: usize,
    target: MigState,
) -> (MigrationEngine, Result<(), String>) {
    let mut e = MigrationEngine::default();
    e.set_state(dev, MigState::Resuming.raw())
        .expect("resuming");
    for part in stream.chunks(seg.max(1)) {
        if let Err(err) = e.write_data(dev, part) {
            return (e, Err(format!("write: {err:?}")));
        }
    }
    let r = e
        .set_state(dev, target.raw())
        .map(|_| ())
        .map_err(|err| format!("set_state: {err:?}"));
    (e, r)
}

/// `(start, end)` of every chunk of a well-formed stream.
pub fn chunk_spans(s: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = HEADER_LEN;
    while at + CHUNK_HEADER_LEN <= s.len() {
        let len = u32::from_le_bytes(s[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let end = at + CHUNK_HEADER_LEN + len + CHUNK_TRAILER_LEN;
        v.push((at, end));
        at = end;
    }
    v
}

/// Recomputes both CRCs of the chunk at `start` (after a deliberate edit).
pub fn reseal_chunk(s: &mut [u8], start: usize) {
    let hc = crc32c::crc32c(&s[start..start + 12]);
    s[start + 12..start + 16].copy_from_slice(&hc.to_le_bytes());
    let len = u32::from_le_bytes(s[start + 8..start + 12].try_into().expect("4 bytes")) as usize;
    let body = start + CHUNK_HEADER_LEN + len;
    if body + 4 <= s.len() {
        let c = crc32c::crc32c(&s[start..body]);
        s[body..body + 4].copy_from_slice(&c.to_le_bytes());
    }
}

/// Recomputes the envelope CRC.
pub fn reseal_header(s: &mut [u8]) {
    let c = crc32c::crc32c(&s[..44]);
    s[44..48].copy_from_slice(&c.to_le_bytes());
}

/// Sets the sequence number of the chunk at `start` and reseals it.
pub fn set_seq(s: &mut [u8], start: usize, seq: u32) {
    s[start + 4..start + 8].copy_from_slice(&seq.to_le_bytes());
    reseal_chunk(s, start);
}

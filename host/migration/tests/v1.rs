//! The v1 migration region. Each rule-stating sentence of the founding
//! email (reference/founding-email.txt) has a test named after it; then the
//! conformance catalogue §6 group H (cases 59-69).

mod common;

use common::*;
use vfpga_device::Device;
use vfpga_device::fake::FakeDevice;
use vfpga_migration::v1::{
    DATA_OFFSET, DATA_OFFSET_REG, DATA_SIZE, DEVICE_STATE, INFO_LEN, PENDING_BYTES, RESERVED,
    V1Error, V1Region, bits,
};
use vfpga_migration::{MigState, MigrationEngine};
use vfpga_regs::offsets;

const PAGES: u32 = 16;

struct V1 {
    r: V1Region,
    e: MigrationEngine,
    d: FakeDevice,
}

impl V1 {
    fn new(seed: u64) -> Self {
        let mut d = FakeDevice::new(PAGES);
        let mut rng = Rng(seed);
        for _ in 0..10 {
            workload_step(&mut d, &mut rng);
        }
        V1 {
            r: V1Region::new(16 * 1024),
            e: MigrationEngine::default(),
            d,
        }
    }
    fn rd(&mut self, off: u64, len: usize) -> Result<Vec<u8>, V1Error> {
        let mut b = vec![0u8; len];
        self.r.read(&mut self.e, &mut self.d, off, &mut b)?;
        Ok(b)
    }
    fn rd64(&mut self, off: u64) -> Result<u64, V1Error> {
        self.rd(off, 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    fn rd32(&mut self, off: u64) -> Result<u32, V1Error> {
        self.rd(off, 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn wr(&mut self, off: u64, data: &[u8]) -> Result<(), V1Error> {
        self.r.write(&mut self.e, &mut self.d, off, data)
    }
    fn set(&mut self, v: u32) -> Result<(), V1Error> {
        self.wr(DEVICE_STATE, &v.to_le_bytes())
    }
    /// Reads the prepared data as QEMU does: 8/4/2/1-byte aligned pieces.
    fn read_window(&mut self, size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0u64;
        while at < size {
            let left = size - at;
            let w = [8u64, 4, 2, 1]
                .into_iter()
                .find(|&w| w <= left && (DATA_OFFSET + at).is_multiple_of(w))
                .expect("1 always fits");
            out.extend(self.rd(DATA_OFFSET + at, w as usize).expect("data read"));
            at += w;
        }
        out
    }
    /// One save iteration: data_offset, data_size, data, (pending ends it).
    fn iteration(&mut self) -> Vec<u8> {
        assert_eq!(
            self.rd64(DATA_OFFSET_REG).expect("data_offset"),
            DATA_OFFSET
        );
        let size = self.rd64(DATA_SIZE).expect("data_size");
        self.read_window(size)
    }
    /// The v1 save loop of QEMU 5.2 until pending_bytes is 0.
    fn save_until_empty(&mut self) -> Vec<u8> {
        let mut s = Vec::new();
        while self.rd64(PENDING_BYTES).expect("pending") > 0 {
            s.extend(self.iteration());
        }
        s
    }
}

/// The v1 resume loop (data_offset, data, data_size per piece).
fn v1_load(v: &mut V1, stream: &[u8], piece: usize) -> Result<(), V1Error> {
    for part in stream.chunks(piece) {
        let off = v.rd64(DATA_OFFSET_REG)?;
        v.wr(off, part)?;
        v.wr(DATA_SIZE, &(part.len() as u64).to_le_bytes())?;
    }
    Ok(())
}

fn dest() -> V1 {
    V1 {
        r: V1Region::new(16 * 1024),
        e: MigrationEngine::default(),
        d: FakeDevice::new(PAGES),
    }
}

// ---------------------------------------------- founding-email sentences --

/// "When the device is !_RUNNING it should perform no DMA, not process
/// interrupts, the internal state machine should not automatically advance".
#[test]
fn when_the_device_is_not_running_it_performs_no_dma_processes_no_interrupts_and_does_not_advance()
{
    for state in [bits::STOP, bits::SAVING, bits::RESUMING] {
        let mut v = V1::new(1);
        v.set(state).expect("stop");
        assert!(v.d.is_quiesced().expect("status"), "quiesced in {state:#b}");
        let before = v.d.save_state().expect("state");
        v.d.advance(1 << 20).expect("advance");
        assert_eq!(v.d.save_state().expect("state"), before);
        assert_eq!(
            v.d.read_reg(offsets::STATUS).expect("status") & 1,
            0,
            "not busy"
        );
    }
}

/// "as long as the user cannot inject bogus state while stopped that could
/// allow them to break out of the device": a bogus stream written through
/// the region never reaches a running device.
#[test]
fn the_user_cannot_inject_bogus_state_while_stopped() {
    let mut src = V1::new(2);
    src.set(bits::SAVING).expect("stop-and-copy");
    let mut s = src.save_until_empty();
    let n = s.len();
    s[n - 100] ^= 0x40; // inside the state chunk
    let mut d = dest();
    d.set(bits::RESUMING).expect("resuming");
    let e = v1_load(&mut d, &s, 4096).unwrap_err();
    assert!(matches!(e, V1Error::Engine(_)), "{e}");
    assert!(d.set(bits::RUNNING).is_err());
    assert_eq!(d.rd32(DEVICE_STATE).expect("state"), bits::RESUMING);
    assert!(d.d.is_quiesced().expect("status"));
}

/// "If data_offset is not read, pending_bytes can be repeatedly polled with
/// no breach in protocol."
#[test]
fn if_data_offset_is_not_read_pending_bytes_can_be_repeatedly_polled() {
    let mut v = V1::new(3);
    let want = save_stopped(&mut v.d.clone());
    v.set(bits::SAVING).expect("stop-and-copy");
    let p = v.rd64(PENDING_BYTES).expect("pending");
    for _ in 0..100 {
        assert_eq!(v.rd64(PENDING_BYTES).expect("pending"), p);
    }
    assert!(!v.r.in_iteration());
    assert_eq!(v.e.save_session().map(|s| s.bytes_read()), Some(0));
    assert_eq!(v.save_until_empty(), want);
}

/// "It's only once data_offset is read that we initiate an iteration where
/// re-reading pending_bytes indicates the data prepared by the vendor driver
/// has been consumed."
#[test]
fn data_offset_read_initiates_an_iteration_and_pending_bytes_reread_means_consumed() {
    let mut v = V1::new(4);
    v.set(bits::SAVING).expect("stop-and-copy");
    let p0 = v.rd64(PENDING_BYTES).expect("pending");
    v.rd64(DATA_OFFSET_REG).expect("data_offset");
    assert!(v.r.in_iteration());
    let size = v.rd64(DATA_SIZE).expect("size");
    assert_eq!(size, 16 * 1024);
    let p1 = v.rd64(PENDING_BYTES).expect("pending");
    assert!(!v.r.in_iteration());
    assert_eq!(p1, p0 - size, "the prepared data counts as consumed");
}

/// "once data_offset is read, it's the user's responsibility to determine
/// the size of the available data via data_size and consume it from the
/// migration region."
#[test]
fn after_data_offset_the_user_reads_data_size_and_consumes_the_data() {
    let mut v = V1::new(5);
    let want = save_stopped(&mut v.d.clone());
    v.set(bits::SAVING).expect("stop-and-copy");
    let got = v.save_until_empty();
    assert_eq!(got, want);
    let mut d = dest();
    d.set(bits::RESUMING).expect("resuming");
    v1_load(&mut d, &got, 16 * 1024).expect("load");
    d.set(bits::RUNNING).expect("run");
    assert_eq!(snapshot(&mut d.d), snapshot(&mut v.d));
}

/// "If pending_bytes is re-evaluated before either of these it would be a
/// breach of protocol and the results are undefined. Ideally sequencing at
/// the target will detect this": an iteration ended without consuming its
/// data leaves a gap the destination rejects.
#[test]
fn pending_bytes_reread_before_consuming_is_detected_by_sequencing_at_the_target() {
    for skipped in 1..4 {
        let mut v = V1::new(6);
        v.set(bits::SAVING).expect("stop-and-copy");
        let mut s = Vec::new();
        let mut k = 0;
        while v.rd64(PENDING_BYTES).expect("pending") > 0 {
            if k == skipped {
                v.rd64(DATA_OFFSET_REG).expect("data_offset"); // then pending again
            } else {
                s.extend(v.iteration());
            }
            k += 1;
        }
        let mut d = dest();
        d.set(bits::RESUMING).expect("resuming");
        let r = v1_load(&mut d, &s, 4096).and_then(|()| d.set(bits::RUNNING));
        assert!(r.is_err(), "a gap after iteration {skipped} was accepted");
        assert!(d.d.is_quiesced().expect("status"));
    }
}

/// "It's considered volatile, I believe the only protocol expectations are
/// around whether the value is zero or non-zero.": in pre-copy it grows when
/// the device dirties pages, and zero means no data now.
#[test]
fn pending_bytes_is_volatile_only_zero_or_nonzero_matters() {
    let mut v = V1::new(7);
    v.set(bits::SAVING | bits::RUNNING).expect("pre-copy");
    let first = v.save_until_empty();
    assert!(!first.is_empty());
    assert_eq!(v.rd64(PENDING_BYTES).expect("pending"), 0);
    v.rd64(DATA_OFFSET_REG)
        .expect("data_offset with nothing pending");
    assert_eq!(v.rd64(DATA_SIZE).expect("size"), 0, "zero pending: no data");
    v.rd64(PENDING_BYTES).expect("end the empty iteration");
    v.d.devmem_write(0, &[1; 10_000]).expect("dirty 3 pages");
    let grown = v.rd64(PENDING_BYTES).expect("pending");
    assert!(grown > 0, "pending grows again in pre-copy");
    let more = v.save_until_empty();
    assert!(!more.is_empty());
    v.set(bits::SAVING).expect("stop-and-copy");
    let rest = v.save_until_empty();
    let mut d = dest();
    d.set(bits::RESUMING).expect("resuming");
    v1_load(&mut d, &[first, more, rest].concat(), 5000).expect("load");
    d.set(bits::RUNNING).expect("run");
    assert_eq!(snapshot(&mut d.d), snapshot(&mut v.d));
}

/// "The user having never read pending bytes seems like a corner case ...
/// I'd tend to expect data_offset to work like it's supposed to, preparing
/// data to be read."
#[test]
fn data_offset_without_a_prior_pending_bytes_read_prepares_data() {
    let mut v = V1::new(8);
    let want = save_stopped(&mut v.d.clone());
    v.set(bits::SAVING).expect("stop-and-copy");
    let first = v.iteration();
    assert_eq!(&first[..], &want[..first.len()]);
}

/// "Reading data_size out of sequence seems undefined to me.": we make it a
/// clear error that changes nothing.
#[test]
fn reading_data_size_out_of_sequence_is_a_clear_error() {
    let mut v = V1::new(9);
    let want = save_stopped(&mut v.d.clone());
    v.set(bits::SAVING).expect("stop-and-copy");
    assert!(matches!(v.rd64(DATA_SIZE), Err(V1Error::OutOfSequence(_))));
    v.rd64(PENDING_BYTES).expect("pending");
    assert!(matches!(v.rd64(DATA_SIZE), Err(V1Error::OutOfSequence(_))));
    assert!(!v.r.in_iteration());
    assert_eq!(v.e.save_session().map(|s| s.bytes_read()), Some(0));
    assert_eq!(v.save_until_empty(), want);
}

/// "If the user doesn't read pending bytes to terminate the iteration,
/// they'll continue to be presented with the same data".
#[test]
fn without_a_pending_bytes_read_the_same_data_is_presented_again() {
    let mut v = V1::new(10);
    v.set(bits::SAVING).expect("stop-and-copy");
    let a = v.iteration();
    let b = v.iteration();
    let c = v.iteration();
    assert_eq!(a, b);
    assert_eq!(b, c);
    v.rd64(PENDING_BYTES).expect("pending");
    assert_ne!(v.iteration(), a, "the next iteration has the next data");
}

/// "I understand them to be invariant within the iteration, only the first
/// read of data_offset will induce the vendor driver to prepare data, that
/// data and the registers describing it can be re-read until the iteration
/// is concluded by reading pending_bytes."
#[test]
fn data_offset_and_data_size_are_invariant_within_the_iteration_however_the_data_is_read() {
    let mut v = V1::new(11);
    v.set(bits::SAVING).expect("stop-and-copy");
    v.rd64(PENDING_BYTES).expect("pending");
    let off = v.rd64(DATA_OFFSET_REG).expect("data_offset");
    let size = v.rd64(DATA_SIZE).expect("size");
    let whole = v.rd(DATA_OFFSET, size as usize).expect("one read");
    for _ in 0..3 {
        assert_eq!(v.rd64(DATA_OFFSET_REG).expect("data_offset"), off);
        assert_eq!(v.rd64(DATA_SIZE).expect("size"), size);
    }
    assert_eq!(v.read_window(size), whole, "many small reads");
    let mut odd = Vec::new();
    let mut at = 0;
    while at < size {
        let n = 7.min(size - at);
        odd.extend(v.rd(DATA_OFFSET + at, n as usize).expect("odd reads"));
        at += n;
    }
    assert_eq!(odd, whole);
    assert_eq!(v.rd64(DATA_SIZE).expect("size"), size);
}

/// "I would think that a well behaved user should not access the device at
/// this point other than via the migration region, but ... I don't see it
/// as necessary to block access": BAR access while stopped is answered and
/// cannot change the state being migrated.
#[test]
fn device_access_while_stopped_is_answered_but_cannot_change_state() {
    let mut v = V1::new(12);
    let want = save_stopped(&mut v.d.clone());
    v.set(bits::SAVING).expect("stop-and-copy");
    let a = v.iteration();
    v.d.write_reg(offsets::SCRATCH, 0xabcd).expect("answered");
    v.d.write_reg(offsets::CTRL, 1).expect("answered");
    assert!(v.d.read_reg(offsets::ID).is_ok());
    v.rd64(PENDING_BYTES).expect("pending");
    let rest = v.save_until_empty();
    assert_eq!([a, rest].concat(), want);
}

// ------------------------------------------------ catalogue group H cases --

/// Case 59: the data section follows the 32-byte header, page aligned.
#[test]
fn region_layout() {
    let mut v = V1::new(13);
    assert_eq!(v.r.size(), DATA_OFFSET + 16 * 1024);
    v.set(bits::SAVING).expect("stop-and-copy");
    let off = v.rd64(DATA_OFFSET_REG).expect("data_offset");
    assert!(off >= INFO_LEN && off.is_multiple_of(4096), "{off}");
    assert_eq!(off + v.r.window_len() as u64, v.r.size());
}

/// Case 60: wrong widths and offsets are rejected with no state change.
#[test]
fn bad_register_accesses_are_rejected_without_effect() {
    let mut v = V1::new(14);
    v.set(bits::SAVING).expect("stop-and-copy");
    let cases: &[(u64, usize)] = &[
        (DEVICE_STATE, 3),
        (DEVICE_STATE, 8),
        (DEVICE_STATE, 2),
        (PENDING_BYTES, 4),
        (DATA_OFFSET_REG, 4),
        (DATA_SIZE, 2),
        (2, 4),
        (12, 8),
        (INFO_LEN, 4),
        (DATA_OFFSET - 8, 8),
        (DATA_OFFSET + 16 * 1024, 1),
        (DATA_OFFSET + 16 * 1024 - 4, 8),
        (u64::MAX - 3, 8),
    ];
    for &(off, len) in cases {
        assert!(
            matches!(v.rd(off, len), Err(V1Error::BadAccess { .. })),
            "read {len}@{off:#x}"
        );
        assert!(
            matches!(v.wr(off, &vec![0xff; len]), Err(V1Error::BadAccess { .. })),
            "write {len}@{off:#x}"
        );
    }
    assert_eq!(v.rd32(DEVICE_STATE).expect("state"), bits::SAVING);
    assert_eq!(v.rd32(RESERVED).expect("reserved"), 0);
    v.wr(RESERVED, &7u32.to_le_bytes()).expect("ignored");
    assert_eq!(v.rd32(RESERVED).expect("reserved"), 0);
    assert!(!v.r.in_iteration());
    assert_eq!(v.e.save_session().map(|s| s.bytes_read()), Some(0));
}

/// Case 61: 101b, 111b and 110b are rejected; reserved bits survive a
/// read-modify-write; large values never index anything out of range.
#[test]
fn invalid_device_state_values_are_rejected() {
    let mut v = V1::new(15);
    for bad in [0b101u32, 0b111, 0b110, u32::MAX, 0xffff_fffd, 0x8000_0006] {
        assert!(
            matches!(v.set(bad), Err(V1Error::InvalidDeviceState(_))),
            "{bad:#x}"
        );
        assert_eq!(v.rd32(DEVICE_STATE).expect("state"), bits::RUNNING);
    }
    v.set(0xdead_0000 | bits::RUNNING)
        .expect("reserved bits kept");
    let s = v.rd32(DEVICE_STATE).expect("state");
    assert_eq!(s, 0xdead_0000 | bits::RUNNING);
    v.set((s & !bits::MASK) | bits::SAVING | bits::RUNNING)
        .expect("read-modify-write");
    assert_eq!(
        v.rd32(DEVICE_STATE).expect("state"),
        0xdead_0000 | bits::SAVING | bits::RUNNING
    );
    assert_eq!(v.e.state(), MigState::PreCopy);
}

/// Case 65: data_size before data_offset and data reads outside the
/// prepared bytes are errors; data_offset after pending_bytes returned 0
/// prepares an empty buffer (data_size 0), as the founding email expects
/// data_offset to always "work like it's supposed to".
#[test]
fn out_of_sequence_reads_give_a_clear_error_and_change_nothing() {
    let mut v = V1::new(16);
    v.r = V1Region::new(1 << 20); // the whole stream fits one iteration
    v.set(bits::SAVING).expect("stop-and-copy");
    assert!(matches!(
        v.rd(DATA_OFFSET, 8),
        Err(V1Error::OutOfSequence(_))
    ));
    v.rd64(DATA_OFFSET_REG).expect("prepare");
    let size = v.rd64(DATA_SIZE).expect("size") as usize;
    assert!(matches!(
        v.rd(DATA_OFFSET + size as u64 - 4, 8),
        Err(V1Error::OutOfSequence(_))
    ));
    v.save_until_empty();
    assert_eq!(v.rd64(PENDING_BYTES).expect("pending"), 0);
    v.rd64(DATA_OFFSET_REG).expect("data_offset");
    assert_eq!(v.rd64(DATA_SIZE).expect("size"), 0);
    assert!(matches!(
        v.rd(DATA_OFFSET, 1),
        Err(V1Error::OutOfSequence(_))
    ));
    // Not saving: pending_bytes and data_offset mean nothing.
    let mut w = V1::new(16);
    assert!(matches!(
        w.rd64(PENDING_BYTES),
        Err(V1Error::WrongState { .. })
    ));
    assert!(matches!(
        w.rd64(DATA_OFFSET_REG),
        Err(V1Error::WrongState { .. })
    ));
}

/// Case 66: writes to pending_bytes and data_offset, and to data_size or
/// the window while saving, are rejected.
#[test]
fn read_only_fields_reject_writes() {
    let mut v = V1::new(17);
    v.set(bits::SAVING).expect("stop-and-copy");
    v.rd64(DATA_OFFSET_REG).expect("prepare");
    let before = v.rd(DATA_OFFSET, 64).expect("data");
    assert!(matches!(
        v.wr(PENDING_BYTES, &[0; 8]),
        Err(V1Error::ReadOnly(_))
    ));
    assert!(matches!(
        v.wr(DATA_OFFSET_REG, &[0; 8]),
        Err(V1Error::ReadOnly(_))
    ));
    assert!(matches!(
        v.wr(DATA_SIZE, &[0; 8]),
        Err(V1Error::ReadOnly(_))
    ));
    assert!(matches!(
        v.wr(DATA_OFFSET, &[0; 8]),
        Err(V1Error::WrongState { .. })
    ));
    assert_eq!(v.rd(DATA_OFFSET, 64).expect("data"), before);
}

/// Case 67: pre-copy -> stop-and-copy with pending_bytes > 0 is allowed;
/// stop-and-copy iterates until pending_bytes is 0 and the result restores.
#[test]
fn pre_copy_to_stop_and_copy_with_data_pending() {
    let mut v = V1::new(18);
    v.set(bits::SAVING | bits::RUNNING).expect("pre-copy");
    assert!(v.rd64(PENDING_BYTES).expect("pending") > 0);
    let a = v.iteration();
    assert!(v.rd64(PENDING_BYTES).expect("pending") > 0);
    v.set(bits::SAVING)
        .expect("stop-and-copy with data pending");
    let b = v.save_until_empty();
    let mut d = dest();
    d.set(bits::RESUMING).expect("resuming");
    v1_load(&mut d, &[a, b].concat(), 3000).expect("load");
    d.set(bits::STOP).expect("stop");
    d.set(bits::RUNNING).expect("run");
    assert_eq!(snapshot(&mut d.d), snapshot(&mut v.d));
    // Stop-and-copy -> pre-copy is refused (v2's STOP_COPY -> PRE_COPY).
    assert!(matches!(
        v.set(bits::SAVING | bits::RUNNING),
        Err(V1Error::Engine(_))
    ));
}

/// Case 68: each data_size write consumes exactly the written window before
/// returning; any chunking works (QEMU splits when the region is small).
#[test]
fn resume_consumes_exactly_the_written_window() {
    let mut v = V1::new(19);
    v.set(bits::SAVING).expect("stop-and-copy");
    let s = v.save_until_empty();
    for piece in [1usize, 13, 4096, 16 * 1024] {
        let mut d = dest();
        d.set(bits::RESUMING).expect("resuming");
        let mut consumed = 0u64;
        for part in s.chunks(piece) {
            d.wr(DATA_OFFSET, part).expect("window");
            d.wr(DATA_SIZE, &(part.len() as u64).to_le_bytes())
                .expect("consume");
            consumed += part.len() as u64;
            assert_eq!(d.e.load_session().map(|l| l.bytes()), Some(consumed));
        }
        d.set(bits::RUNNING).expect("run");
        assert_eq!(snapshot(&mut d.d), snapshot(&mut v.d), "piece {piece}");
    }
    let mut d = dest();
    d.set(bits::RESUMING).expect("resuming");
    assert!(matches!(
        d.wr(DATA_SIZE, &(16u64 * 1024 + 1).to_le_bytes()),
        Err(V1Error::WindowOverflow { .. })
    ));
    assert_eq!(d.e.load_session().map(|l| l.bytes()), Some(0));
}

/// Case 69: any state change ends the iteration (also a change made through
/// the engine directly, e.g. by a reset).
#[test]
fn any_state_change_resets_the_iteration() {
    let mut v = V1::new(20);
    v.set(bits::SAVING | bits::RUNNING).expect("pre-copy");
    v.rd64(DATA_OFFSET_REG).expect("prepare");
    assert!(v.r.in_iteration());
    v.set(bits::SAVING).expect("stop-and-copy");
    assert!(!v.r.in_iteration());
    v.rd64(DATA_OFFSET_REG).expect("prepare");
    v.e.reset(&mut v.d).expect("reset");
    assert!(matches!(v.rd64(DATA_SIZE), Err(V1Error::OutOfSequence(_))));
    assert_eq!(
        v.rd32(DEVICE_STATE).expect("state") & bits::MASK,
        bits::RUNNING
    );
}

//! The migration stream: format constants, a streaming [`Encoder`] and a
//! streaming, validating [`Decoder`].
//!
//! The byte-level specification and the compatibility policy are in
//! `bitstream-docs/migration-stream.md`; this module is its implementation and
//! the constants below are the numbers it names.
//!
//! Layout in short (all integers little-endian):
//!
//! ```text
//! envelope (48 bytes): magic "VFPGAMIG", format major u16, minor u16, header length u32,
//!                      identity (24 bytes), page size u32, CRC32C of bytes 0..44
//! chunk*:              kind u16, flags u16, seq u32, len u32, CRC32C of bytes 0..12,
//!                      payload (len bytes), CRC32C of (chunk header ++ payload)
//! chunk order:         PASS(FULL, all pages) PAGE*  { PASS(DIRTY) PAGE* }*
//!                      PASS(FINAL) PAGE*  STATE  END
//! ```
//!
//! The decoder holds at most one chunk (≤ [`MAX_CHUNK_BYTES`]) at a time, so a
//! stream of any size is decoded in constant memory, and it accepts the bytes
//! in segments of any size: segmentation never changes the outcome.

use vfpga_device::{DeviceError, DeviceState, Identity, StateViolation, validate_arch};
use vfpga_regs::{ArchState, consts, state as sw};

/// The 8-byte magic at the start of every stream.
pub const MAGIC: [u8; 8] = *b"VFPGAMIG";
/// Major format version written by this build.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version written by this build (and the newest it reads).
pub const FORMAT_MINOR: u16 = 0;
/// Length of the envelope.
pub const HEADER_LEN: usize = 48;
/// Length of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 16;
/// Length of a chunk trailer (the chunk CRC).
pub const CHUNK_TRAILER_LEN: usize = 4;
/// Device-memory page size carried by the stream.
pub const PAGE_SIZE: usize = consts::PAGE_SIZE as usize;
/// Payload of a PASS chunk: pass number, kind, page count.
pub const PASS_PAYLOAD: usize = 12;
/// Payload of a PAGE chunk: page index and the page.
pub const PAGE_PAYLOAD: usize = 4 + PAGE_SIZE;
/// Payload of a STATE chunk: word count and the state words.
pub const STATE_PAYLOAD: usize = 4 + sw::WORDS * 4;
/// Payload of an END chunk: chunk count, pass count, page-record count.
pub const END_PAYLOAD: usize = 16;
/// The largest payload of any chunk kind; a longer length field is rejected
/// before anything is buffered.
pub const MAX_PAYLOAD: usize = PAGE_PAYLOAD;
/// The largest chunk on the wire.
pub const MAX_CHUNK_BYTES: usize = CHUNK_HEADER_LEN + MAX_PAYLOAD + CHUNK_TRAILER_LEN;
/// Bytes of one PAGE chunk on the wire.
pub const PAGE_CHUNK_BYTES: u64 = (CHUNK_HEADER_LEN + PAGE_PAYLOAD + CHUNK_TRAILER_LEN) as u64;
/// [`PAGE_CHUNK_BYTES`] as a length.
pub const PAGE_CHUNK_LEN: usize = PAGE_CHUNK_BYTES as usize;
/// Bytes of one PASS chunk on the wire.
pub const PASS_CHUNK_BYTES: u64 = (CHUNK_HEADER_LEN + PASS_PAYLOAD + CHUNK_TRAILER_LEN) as u64;
/// Bytes of the STATE chunk on the wire.
pub const STATE_CHUNK_BYTES: u64 = (CHUNK_HEADER_LEN + STATE_PAYLOAD + CHUNK_TRAILER_LEN) as u64;
/// Bytes of the END chunk on the wire.
pub const END_CHUNK_BYTES: u64 = (CHUNK_HEADER_LEN + END_PAYLOAD + CHUNK_TRAILER_LEN) as u64;

/// Bytes of a whole chunk of `kind`: header, payload and trailer.
pub fn chunk_bytes(kind: ChunkKind) -> usize {
    CHUNK_HEADER_LEN + kind.payload_len() + CHUNK_TRAILER_LEN
}

/// Chunk kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ChunkKind {
    /// Start of a pass over device memory.
    Pass = 1,
    /// One device-memory page.
    Page = 2,
    /// The architectural state words.
    State = 3,
    /// End of the stream.
    End = 4,
}

impl ChunkKind {
    /// Decodes a kind field.
    pub fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            1 => ChunkKind::Pass,
            2 => ChunkKind::Page,
            3 => ChunkKind::State,
            4 => ChunkKind::End,
            _ => return None,
        })
    }

    /// The exact payload length of this kind.
    pub fn payload_len(self) -> usize {
        match self {
            ChunkKind::Pass => PASS_PAYLOAD,
            ChunkKind::Page => PAGE_PAYLOAD,
            ChunkKind::State => STATE_PAYLOAD,
            ChunkKind::End => END_PAYLOAD,
        }
    }
}

/// What a pass carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PassKind {
    /// Every page, in index order (always pass 0, and only pass 0).
    Full = 0,
    /// Pages dirtied since the previous pass, sent while the device runs.
    Dirty = 1,
    /// The pages dirtied since the previous pass, sent with the device
    /// stopped: the last pass, followed by the state.
    Final = 2,
}

impl PassKind {
    /// Decodes a pass-kind field.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => PassKind::Full,
            1 => PassKind::Dirty,
            2 => PassKind::Final,
            _ => return None,
        })
    }
}

/// Everything the destination can reject in a stream, each with its own
/// variant. Every one of them is detected before the device may run.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream does not start with [`MAGIC`].
    #[error("not a vfpga migration stream (magic {found:02x?})")]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// A format version this build does not read.
    #[error(
        "stream format {major}.{minor} is not supported (this build reads {FORMAT_MAJOR}.0..={FORMAT_MAJOR}.{FORMAT_MINOR})"
    )]
    UnsupportedVersion {
        /// Major version in the stream.
        major: u16,
        /// Minor version in the stream.
        minor: u16,
    },
    /// The envelope's length field is not [`HEADER_LEN`].
    #[error("envelope length {found} is not {HEADER_LEN}")]
    HeaderLength {
        /// The length field.
        found: u32,
    },
    /// The envelope's CRC does not match.
    #[error("envelope checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum {
        /// CRC in the stream.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A page size other than 4 KiB.
    #[error("page size {found} is not {PAGE_SIZE}")]
    PageSize {
        /// The page-size field.
        found: u32,
    },
    /// The stream was saved from a device this one cannot take state from.
    #[error("stream is for another device: {what} is {found:#x} in the stream, {expected:#x} here")]
    Identity {
        /// Which identity field.
        what: &'static str,
        /// This device's value.
        expected: u64,
        /// The stream's value.
        found: u64,
    },
    /// A chunk header's CRC does not match (its length cannot be trusted).
    #[error("chunk header checksum mismatch at chunk {seq}")]
    ChunkHeaderChecksum {
        /// The sequence number expected there.
        seq: u32,
    },
    /// A chunk's CRC does not match.
    #[error("chunk {seq} ({kind:?}) checksum mismatch")]
    ChunkChecksum {
        /// Sequence number.
        seq: u32,
        /// Kind.
        kind: ChunkKind,
    },
    /// An unknown chunk kind.
    #[error("unknown chunk kind {kind} at chunk {seq}")]
    UnknownChunk {
        /// The kind field.
        kind: u16,
        /// Sequence number.
        seq: u32,
    },
    /// Non-zero reserved flags in a chunk header.
    #[error("chunk {seq} has reserved flags {flags:#x}")]
    ReservedFlags {
        /// Sequence number.
        seq: u32,
        /// The flags field.
        flags: u16,
    },
    /// A chunk length above [`MAX_PAYLOAD`].
    #[error("chunk {seq} claims {len} payload bytes, more than the limit {MAX_PAYLOAD}")]
    ChunkTooLong {
        /// Sequence number.
        seq: u32,
        /// The length field.
        len: u32,
    },
    /// A chunk length that is not its kind's.
    #[error("chunk {seq} ({kind:?}) has {len} payload bytes, expected {expected}")]
    BadChunkLength {
        /// Sequence number.
        seq: u32,
        /// Kind.
        kind: ChunkKind,
        /// The length field.
        len: u32,
        /// The kind's length.
        expected: usize,
    },
    /// A chunk already seen (its sequence number is behind).
    #[error("duplicate chunk: sequence {found} again, expected {expected}")]
    DuplicateChunk {
        /// The next sequence number expected.
        expected: u32,
        /// The sequence number found.
        found: u32,
    },
    /// A chunk is missing here (dropped, or moved later in the stream).
    #[error("missing chunk {expected} (found {found})")]
    MissingChunk {
        /// The sequence number expected.
        expected: u32,
        /// The sequence number found.
        found: u32,
    },
    /// A well-numbered chunk in a place the format does not allow it.
    #[error("chunk {seq} ({kind:?}) out of place: {why}")]
    Misplaced {
        /// Sequence number.
        seq: u32,
        /// Kind.
        kind: ChunkKind,
        /// What was expected instead.
        why: &'static str,
    },
    /// A PASS chunk with a wrong number, kind or page count.
    #[error("bad pass {pass}: {why}")]
    BadPass {
        /// Pass number in the chunk.
        pass: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// A page index beyond device memory.
    #[error("page index {index} is beyond the device's {pages} pages")]
    PageOutOfRange {
        /// Index in the stream.
        index: u32,
        /// Pages of the device.
        pages: u32,
    },
    /// Page indices not strictly increasing within a pass (or a gap in the
    /// full pass).
    #[error("page {index} out of order in pass {pass} (expected {expected})")]
    PageOrder {
        /// Pass number.
        pass: u32,
        /// Index found.
        index: u32,
        /// Smallest index allowed there.
        expected: u32,
    },
    /// The STATE chunk's word count is not the layout's.
    #[error("state has {found} words, the layout has {expected}")]
    StateWords {
        /// Count in the chunk.
        found: u32,
        /// Count of the layout.
        expected: usize,
    },
    /// Semantically invalid state (datasheet §9.3).
    #[error("invalid architectural state")]
    InvalidState(#[source] StateViolation),
    /// The END chunk's totals disagree with the stream.
    #[error("END totals disagree: {what} is {found} in END, {counted} counted")]
    EndMismatch {
        /// Which total.
        what: &'static str,
        /// Value in END.
        found: u64,
        /// Value counted.
        counted: u64,
    },
    /// Bytes after the END chunk.
    #[error("{extra} bytes of trailing data after the end of the stream")]
    TrailingData {
        /// Bytes found after END.
        extra: u64,
    },
    /// The stream stopped before its END chunk.
    #[error("stream truncated after {offset} bytes (inside {inside})")]
    Truncated {
        /// Bytes received.
        offset: u64,
        /// Where it stopped.
        inside: &'static str,
    },
    /// The destination device refused a page or the state.
    #[error("the destination device refused the stream")]
    Device(#[source] DeviceError),
    /// The stream was already rejected; nothing more is accepted.
    #[error("stream already rejected at byte {offset}")]
    AlreadyFailed {
        /// Where it was rejected.
        offset: u64,
    },
}

// ---------------------------------------------------------------- helpers --

fn le16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Encodes the 24-byte identity block.
fn put_identity(out: &mut Vec<u8>, id: &Identity) {
    out.extend_from_slice(&id.vendor_id.to_le_bytes());
    out.extend_from_slice(&id.device_id.to_le_bytes());
    out.extend_from_slice(&id.rtl_version.to_le_bytes());
    out.extend_from_slice(&id.features.to_le_bytes());
    out.extend_from_slice(&id.devmem_pages.to_le_bytes());
    out.extend_from_slice(&id.dmalog_max_pages.to_le_bytes());
    out.extend_from_slice(&id.state_layout.to_le_bytes());
    out.extend_from_slice(&id.state_words.to_le_bytes());
}

fn get_identity(b: &[u8]) -> Identity {
    Identity {
        vendor_id: le16(b, 0),
        device_id: le16(b, 2),
        rtl_version: le32(b, 4),
        features: le32(b, 8),
        devmem_pages: le32(b, 12),
        dmalog_max_pages: le32(b, 16),
        state_layout: le16(b, 20),
        state_words: le16(b, 22),
    }
}

/// Bytes of a complete stream whose passes carry `page_records` pages in
/// `passes` passes.
pub fn image_bytes(passes: u64, page_records: u64) -> u64 {
    HEADER_LEN as u64
        + passes * PASS_CHUNK_BYTES
        + page_records * PAGE_CHUNK_BYTES
        + STATE_CHUNK_BYTES
        + END_CHUNK_BYTES
}

// ---------------------------------------------------------------- encoder --

/// Writes a stream chunk by chunk into caller-owned buffers.
///
/// The encoder numbers chunks and checksums them; it does not enforce the
/// chunk order (the save session does, and the decoder checks it).
#[derive(Debug, Clone)]
pub struct Encoder {
    identity: Identity,
    seq: u32,
    passes: u32,
    page_records: u64,
}

impl Encoder {
    /// An encoder for a stream saved from a device with `identity`.
    pub fn new(identity: Identity) -> Self {
        Encoder {
            identity,
            seq: 0,
            passes: 0,
            page_records: 0,
        }
    }

    /// Number of chunks written so far.
    pub fn chunks(&self) -> u32 {
        self.seq
    }

    /// Appends the envelope.
    pub fn header(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        put_identity(out, &self.identity);
        out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        let crc = crate::crc::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Appends a chunk of `kind` whose payload (exactly `kind.payload_len()`
    /// bytes) is written by `fill` in place, so page data is copied once.
    pub fn chunk_with<E>(
        &mut self,
        kind: ChunkKind,
        out: &mut Vec<u8>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = out.len();
        out.resize(start + chunk_bytes(kind), 0);
        let r = self.chunk_into(kind, &mut out[start..], fill);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// Writes a chunk of `kind` into `dst`, exactly [`chunk_bytes`]`(kind)`
    /// long (both callers size it so); `fill` writes the payload in place.
    /// The chunk's sequence number is used only when `fill` succeeds.
    fn chunk_into<E>(
        &mut self,
        kind: ChunkKind,
        dst: &mut [u8],
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let len = kind.payload_len();
        let (head, rest) = dst.split_at_mut(CHUNK_HEADER_LEN);
        let (payload, trailer) = rest.split_at_mut(len);
        head[0..2].copy_from_slice(&(kind as u16).to_le_bytes());
        head[2..4].copy_from_slice(&0u16.to_le_bytes());
        head[4..8].copy_from_slice(&self.seq.to_le_bytes());
        head[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        let hcrc = crate::crc::crc32c(&head[..12]);
        head[12..16].copy_from_slice(&hcrc.to_le_bytes());
        fill(payload)?;
        // The chunk checksum covers the header too: continue from the
        // header's own checksum state rather than hashing it again.
        let crc =
            crate::crc::crc32c_append(crate::crc::crc32c_append(hcrc, &head[12..16]), payload);
        trailer.copy_from_slice(&crc.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Appends a PASS chunk announcing `pages` page records.
    pub fn pass(&mut self, kind: PassKind, pages: u32, out: &mut Vec<u8>) {
        let n = self.passes;
        self.passes = self.passes.wrapping_add(1);
        let _ = self.chunk_with::<()>(ChunkKind::Pass, out, |p| {
            p[0..4].copy_from_slice(&n.to_le_bytes());
            p[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
            p[8..12].copy_from_slice(&pages.to_le_bytes());
            Ok(())
        });
    }

    /// Appends a PAGE chunk; `fill` writes the 4 KiB page in place.
    pub fn page_with<E>(
        &mut self,
        index: u32,
        out: &mut Vec<u8>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.chunk_with(ChunkKind::Page, out, page_payload(index, fill))?;
        self.page_records += 1;
        Ok(())
    }

    /// Writes a PAGE chunk into `dst`; `fill` writes the 4 KiB page in
    /// place. The save session uses it to encode straight into a reader's
    /// buffer, with no staging copy.
    pub fn page_into<E>(
        &mut self,
        index: u32,
        dst: &mut [u8; PAGE_CHUNK_LEN],
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.chunk_into(ChunkKind::Page, dst, page_payload(index, fill))?;
        self.page_records += 1;
        Ok(())
    }

    /// Appends a PAGE chunk with a copy of `data` (a whole page).
    pub fn page(&mut self, index: u32, data: &[u8; PAGE_SIZE], out: &mut Vec<u8>) {
        let _ = self.page_with::<()>(index, out, |p| {
            p.copy_from_slice(data);
            Ok(())
        });
    }

    /// Appends the STATE chunk.
    pub fn state(&mut self, arch: &ArchState, out: &mut Vec<u8>) {
        let _ = self.chunk_with::<()>(ChunkKind::State, out, |p| {
            p[0..4].copy_from_slice(&(sw::WORDS as u32).to_le_bytes());
            for (i, w) in arch.to_words().iter().enumerate() {
                p[4 + 4 * i..8 + 4 * i].copy_from_slice(&w.to_le_bytes());
            }
            Ok(())
        });
    }

    /// Appends the END chunk.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        let (seq, passes, recs) = (self.seq, self.passes, self.page_records);
        let _ = self.chunk_with::<()>(ChunkKind::End, out, |p| {
            p[0..4].copy_from_slice(&seq.to_le_bytes());
            p[4..8].copy_from_slice(&passes.to_le_bytes());
            p[8..16].copy_from_slice(&recs.to_le_bytes());
            Ok(())
        });
    }
}

/// A PAGE payload writer: the page index, then the page from `fill`.
fn page_payload<E>(
    index: u32,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> impl FnOnce(&mut [u8]) -> Result<(), E> {
    move |p| {
        p[0..4].copy_from_slice(&index.to_le_bytes());
        fill(&mut p[4..])
    }
}

// ---------------------------------------------------------------- decoder --

/// Where decoded content goes: the destination device, or a test buffer.
pub trait Sink {
    /// Page `index` of device memory has the given 4 KiB contents.
    fn page(&mut self, index: u32, data: &[u8]) -> Result<(), DeviceError>;
    /// The architectural state (already validated against datasheet §9.3).
    fn state(&mut self, state: &DeviceState) -> Result<(), DeviceError>;
}

/// A sink that discards everything (validation only).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl Sink for NullSink {
    fn page(&mut self, _index: u32, _data: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }
    fn state(&mut self, _state: &DeviceState) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    /// Waiting for a PASS chunk (`first`: pass 0 must come).
    ExpectPass,
    InPass {
        kind: PassKind,
        pass: u32,
        remaining: u32,
        next_min: u32,
    },
    ExpectState,
    ExpectEnd,
    Done,
    Failed,
}

/// What a complete stream held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The source device.
    pub identity: Identity,
    /// The architectural state.
    pub state: DeviceState,
    /// Number of passes.
    pub passes: u32,
    /// Number of page records (a page sent twice counts twice).
    pub page_records: u64,
    /// Bytes of the stream.
    pub bytes: u64,
}

/// Decodes and validates a stream fed in segments of any size.
///
/// Errors are final: after the first one, every call returns
/// [`StreamError::AlreadyFailed`].
#[derive(Debug, Clone)]
pub struct Decoder {
    expected: Identity,
    identity: Option<Identity>,
    phase: Phase,
    /// Partial header or chunk.
    buf: Vec<u8>,
    offset: u64,
    seq: u32,
    passes: u32,
    page_records: u64,
    state: Option<DeviceState>,
    failed_at: u64,
}

impl Decoder {
    /// A decoder for a destination device with identity `expected`.
    pub fn new(expected: Identity) -> Self {
        Decoder {
            expected,
            identity: None,
            phase: Phase::Header,
            buf: Vec::with_capacity(MAX_CHUNK_BYTES),
            offset: 0,
            seq: 0,
            passes: 0,
            page_records: 0,
            state: None,
            failed_at: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the END chunk has been accepted.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the decoder has rejected the stream.
    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// The source identity, once the envelope is accepted.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// Bytes still needed to complete the header or chunk being received.
    fn need(&self) -> usize {
        match self.phase {
            Phase::Header => HEADER_LEN,
            _ if self.buf.len() < CHUNK_HEADER_LEN => CHUNK_HEADER_LEN,
            _ => {
                CHUNK_HEADER_LEN
                    + le32(&self.buf, 8) as usize // bounded by check_chunk_header
                    + CHUNK_TRAILER_LEN
            }
        }
    }

    /// Feeds the next segment of the stream. Content goes to `sink` as soon
    /// as its chunk is complete and valid.
    pub fn feed(&mut self, mut data: &[u8], sink: &mut dyn Sink) -> Result<(), StreamError> {
        if self.phase == Phase::Failed {
            return Err(StreamError::AlreadyFailed {
                offset: self.failed_at,
            });
        }
        while !data.is_empty() {
            if self.phase == Phase::Done {
                return Err(self.fail(StreamError::TrailingData {
                    extra: data.len() as u64,
                }));
            }
            // Fast path: a whole chunk in the input, nothing buffered.
            if self.buf.is_empty() && self.phase != Phase::Header && data.len() >= CHUNK_HEADER_LEN
            {
                let len = self.check_chunk_header(&data[..CHUNK_HEADER_LEN])?;
                let total = CHUNK_HEADER_LEN + len + CHUNK_TRAILER_LEN;
                if data.len() >= total {
                    let (chunk, rest) = data.split_at(total);
                    self.chunk(chunk, sink)?;
                    self.offset += total as u64;
                    data = rest;
                    continue;
                }
            }
            let need = self.need();
            let take = (need - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.phase != Phase::Header && self.buf.len() == CHUNK_HEADER_LEN {
                // Validate the header (and so the length) before buffering more.
                let hdr: [u8; CHUNK_HEADER_LEN] = {
                    let mut h = [0u8; CHUNK_HEADER_LEN];
                    h.copy_from_slice(&self.buf);
                    h
                };
                self.check_chunk_header(&hdr)?;
            }
            if self.buf.len() == self.need() {
                let unit = std::mem::take(&mut self.buf);
                let r = if self.phase == Phase::Header {
                    self.header(&unit)
                } else {
                    self.chunk(&unit, sink)
                };
                self.offset += unit.len() as u64;
                self.buf = unit;
                self.buf.clear();
                r?;
            }
        }
        Ok(())
    }

    /// Declares the end of the input: fails unless a complete stream was
    /// received, and returns what it held.
    pub fn finish(&mut self) -> Result<Summary, StreamError> {
        let inside = match self.phase {
            Phase::Failed => {
                return Err(StreamError::AlreadyFailed {
                    offset: self.failed_at,
                });
            }
            Phase::Done => {
                return match (self.identity, self.state) {
                    (Some(identity), Some(state)) => Ok(Summary {
                        identity,
                        state,
                        passes: self.passes,
                        page_records: self.page_records,
                        bytes: self.offset,
                    }),
                    _ => Err(self.fail(StreamError::Truncated {
                        offset: self.offset,
                        inside: "a stream without state",
                    })),
                };
            }
            Phase::Header => "the envelope",
            _ if !self.buf.is_empty() => "a chunk",
            Phase::ExpectPass | Phase::InPass { .. } => "device memory",
            Phase::ExpectState => "the state",
            Phase::ExpectEnd => "the end marker",
        };
        let offset = self.offset + self.buf.len() as u64;
        Err(self.fail(StreamError::Truncated { offset, inside }))
    }

    fn fail(&mut self, e: StreamError) -> StreamError {
        if self.phase != Phase::Failed {
            self.failed_at = self.offset + self.buf.len() as u64;
            self.phase = Phase::Failed;
        }
        tracing::debug!(offset = self.failed_at, error = %e, "migration stream rejected");
        e
    }

    fn header(&mut self, h: &[u8]) -> Result<(), StreamError> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&h[..8]);
        if magic != MAGIC {
            return Err(self.fail(StreamError::BadMagic { found: magic }));
        }
        let stored = le32(h, 44);
        let computed = crate::crc::crc32c(&h[..44]);
        if stored != computed {
            return Err(self.fail(StreamError::HeaderChecksum { stored, computed }));
        }
        let (major, minor) = (le16(h, 8), le16(h, 10));
        if major != FORMAT_MAJOR || minor > FORMAT_MINOR {
            return Err(self.fail(StreamError::UnsupportedVersion { major, minor }));
        }
        let hl = le32(h, 12);
        if hl as usize != HEADER_LEN {
            return Err(self.fail(StreamError::HeaderLength { found: hl }));
        }
        let ps = le32(h, 40);
        if ps as usize != PAGE_SIZE {
            return Err(self.fail(StreamError::PageSize { found: ps }));
        }
        let id = get_identity(&h[16..40]);
        if let Err(e) = check_identity(&self.expected, &id) {
            return Err(self.fail(e));
        }
        self.identity = Some(id);
        self.phase = Phase::ExpectPass;
        Ok(())
    }

    /// Checks a chunk header; returns the payload length.
    fn check_chunk_header(&mut self, h: &[u8]) -> Result<usize, StreamError> {
        let seq = self.seq;
        if le32(h, 12) != crate::crc::crc32c(&h[..12]) {
            return Err(self.fail(StreamError::ChunkHeaderChecksum { seq }));
        }
        let (kind_raw, flags, found, len) = (le16(h, 0), le16(h, 2), le32(h, 4), le32(h, 8));
        if found != seq {
            return Err(self.fail(if found < seq {
                StreamError::DuplicateChunk {
                    expected: seq,
                    found,
                }
            } else {
                StreamError::MissingChunk {
                    expected: seq,
                    found,
                }
            }));
        }
        let Some(kind) = ChunkKind::from_raw(kind_raw) else {
            return Err(self.fail(StreamError::UnknownChunk {
                kind: kind_raw,
                seq,
            }));
        };
        if flags != 0 {
            return Err(self.fail(StreamError::ReservedFlags { seq, flags }));
        }
        if len as usize > MAX_PAYLOAD {
            return Err(self.fail(StreamError::ChunkTooLong { seq, len }));
        }
        if len as usize != kind.payload_len() {
            return Err(self.fail(StreamError::BadChunkLength {
                seq,
                kind,
                len,
                expected: kind.payload_len(),
            }));
        }
        Ok(len as usize)
    }

    /// Handles one complete chunk (header already checked).
    fn chunk(&mut self, c: &[u8], sink: &mut dyn Sink) -> Result<(), StreamError> {
        let seq = self.seq;
        let kind = ChunkKind::from_raw(le16(c, 0)).unwrap_or(ChunkKind::End);
        let body = c.len() - CHUNK_TRAILER_LEN;
        if le32(c, body) != crate::crc::crc32c(&c[..body]) {
            return Err(self.fail(StreamError::ChunkChecksum { seq, kind }));
        }
        let p = &c[CHUNK_HEADER_LEN..body];
        let r = self.content(seq, kind, p, sink);
        if r.is_ok() {
            self.seq = self.seq.wrapping_add(1);
        }
        r
    }

    fn content(
        &mut self,
        seq: u32,
        kind: ChunkKind,
        p: &[u8],
        sink: &mut dyn Sink,
    ) -> Result<(), StreamError> {
        let pages = self.identity.map_or(0, |i| i.devmem_pages);
        let misplaced = |why| StreamError::Misplaced { seq, kind, why };
        match (kind, self.phase) {
            (ChunkKind::Pass, Phase::ExpectPass) => {
                let (n, k, count) = (le32(p, 0), le32(p, 4), le32(p, 8));
                let bad = |why| StreamError::BadPass { pass: n, why };
                if n != self.passes {
                    return Err(self.fail(bad("pass number out of sequence")));
                }
                let Some(k) = PassKind::from_raw(k) else {
                    return Err(self.fail(bad("unknown pass kind")));
                };
                match (n, k) {
                    (0, PassKind::Full) if count != pages => {
                        return Err(self.fail(bad("the full pass must carry every page")));
                    }
                    (0, PassKind::Full) => {}
                    (0, _) => return Err(self.fail(bad("pass 0 must be the full pass"))),
                    (_, PassKind::Full) => {
                        return Err(self.fail(bad("only pass 0 may be a full pass")));
                    }
                    _ if count > pages => {
                        return Err(self.fail(bad("more pages than the device has")));
                    }
                    _ => {}
                }
                self.passes += 1;
                self.phase = if count == 0 {
                    self.after_pass(k)
                } else {
                    Phase::InPass {
                        kind: k,
                        pass: n,
                        remaining: count,
                        next_min: 0,
                    }
                };
                Ok(())
            }
            (
                ChunkKind::Page,
                Phase::InPass {
                    kind: k,
                    pass,
                    remaining,
                    next_min,
                },
            ) => {
                let index = le32(p, 0);
                if index >= pages {
                    return Err(self.fail(StreamError::PageOutOfRange { index, pages }));
                }
                let in_order = if k == PassKind::Full {
                    index == next_min
                } else {
                    index >= next_min
                };
                if !in_order {
                    return Err(self.fail(StreamError::PageOrder {
                        pass,
                        index,
                        expected: next_min,
                    }));
                }
                if let Err(e) = sink.page(index, &p[4..]) {
                    return Err(self.fail(StreamError::Device(e)));
                }
                self.page_records += 1;
                self.phase = if remaining == 1 {
                    self.after_pass(k)
                } else {
                    Phase::InPass {
                        kind: k,
                        pass,
                        remaining: remaining - 1,
                        next_min: index + 1,
                    }
                };
                Ok(())
            }
            (ChunkKind::State, Phase::ExpectState) => {
                let n = le32(p, 0);
                if n as usize != sw::WORDS {
                    return Err(self.fail(StreamError::StateWords {
                        found: n,
                        expected: sw::WORDS,
                    }));
                }
                let mut w = [0u32; sw::WORDS];
                for (i, x) in w.iter_mut().enumerate() {
                    *x = le32(p, 4 + 4 * i);
                }
                let arch = ArchState::from_words(&w);
                let Some(id) = self.identity else {
                    return Err(self.fail(misplaced("state before the envelope")));
                };
                if let Err(v) = validate_arch(&arch, id.devmem_bytes()) {
                    return Err(self.fail(StreamError::InvalidState(v)));
                }
                let st = DeviceState::new(id, arch);
                if let Err(e) = sink.state(&st) {
                    return Err(self.fail(StreamError::Device(e)));
                }
                self.state = Some(st);
                self.phase = Phase::ExpectEnd;
                Ok(())
            }
            (ChunkKind::End, Phase::ExpectEnd) => {
                let checks = [
                    ("chunk count", u64::from(le32(p, 0)), u64::from(seq)),
                    ("pass count", u64::from(le32(p, 4)), u64::from(self.passes)),
                    ("page records", le64(p, 8), self.page_records),
                ];
                for (what, found, counted) in checks {
                    if found != counted {
                        return Err(self.fail(StreamError::EndMismatch {
                            what,
                            found,
                            counted,
                        }));
                    }
                }
                self.phase = Phase::Done;
                Ok(())
            }
            (_, Phase::ExpectPass) => Err(self.fail(misplaced("expected a PASS chunk"))),
            (_, Phase::InPass { .. }) => Err(self.fail(misplaced(
                "expected a PAGE chunk (the pass is not complete)",
            ))),
            (_, Phase::ExpectState) => {
                Err(self.fail(misplaced("expected the STATE chunk after the final pass")))
            }
            (_, Phase::ExpectEnd) => Err(self.fail(misplaced("expected the END chunk"))),
            (_, Phase::Header | Phase::Done | Phase::Failed) => {
                Err(self.fail(misplaced("no chunk expected here")))
            }
        }
    }

    fn after_pass(&self, k: PassKind) -> Phase {
        if k == PassKind::Final {
            Phase::ExpectState
        } else {
            Phase::ExpectPass
        }
    }
}

/// Whether a stream saved from `theirs` loads into `ours` (the compatibility
/// policy of `bitstream-docs/migration-stream.md`): same vendor and device
/// IDs, RTL major and minor version, state layout, state-word count and
/// device-memory size; the source's features must all be present here.
pub fn check_identity(ours: &Identity, theirs: &Identity) -> Result<(), StreamError> {
    if let Err(DeviceError::IdentityMismatch {
        what,
        expected,
        found,
    }) = vfpga_device::check_compatible(ours, theirs)
    {
        return Err(StreamError::Identity {
            what,
            expected,
            found,
        });
    }
    if theirs.features & !ours.features != 0 {
        return Err(StreamError::Identity {
            what: "features (the source's must be a subset)",
            expected: ours.features.into(),
            found: theirs.features.into(),
        });
    }
    if usize::from(theirs.state_words) != sw::WORDS {
        return Err(StreamError::Identity {
            what: "state words of this build",
            expected: sw::WORDS as u64,
            found: theirs.state_words.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pages: u32) -> Identity {
        Identity::this_build(pages, 0)
    }

    fn page(i: u32) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        for (k, b) in p.iter_mut().enumerate() {
            *b = (k as u32 ^ i.wrapping_mul(131)) as u8;
        }
        p
    }

    /// A small valid stream: full pass of 4 pages, a dirty pass, final pass.
    pub(crate) fn sample() -> Vec<u8> {
        let mut e = Encoder::new(id(4));
        let mut out = Vec::new();
        e.header(&mut out);
        e.pass(PassKind::Full, 4, &mut out);
        for i in 0..4 {
            e.page(i, &page(i), &mut out);
        }
        e.pass(PassKind::Dirty, 2, &mut out);
        e.page(1, &page(11), &mut out);
        e.page(3, &page(13), &mut out);
        e.pass(PassKind::Final, 1, &mut out);
        e.page(3, &page(23), &mut out);
        let mut a = ArchState::RESET;
        a.scratch = 0xdead_beef;
        e.state(&a, &mut out);
        e.end(&mut out);
        out
    }

    #[derive(Default)]
    struct Collect {
        pages: Vec<(u32, u8)>,
        state: Option<DeviceState>,
    }
    impl Sink for Collect {
        fn page(&mut self, index: u32, data: &[u8]) -> Result<(), DeviceError> {
            self.pages.push((index, data[7]));
            Ok(())
        }
        fn state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
            self.state = Some(*state);
            Ok(())
        }
    }

    #[test]
    fn sample_round_trips_in_every_segment_size() {
        let s = sample();
        assert_eq!(s.len() as u64, image_bytes(3, 7));
        let mut reference = None;
        for seg in [1usize, 2, 3, 7, 16, 17, 4095, 4124, 4125, 65536, 1 << 20] {
            let mut d = Decoder::new(id(4));
            let mut c = Collect::default();
            for part in s.chunks(seg) {
                d.feed(part, &mut c).unwrap();
            }
            let sum = d.finish().unwrap();
            assert_eq!(sum.passes, 3);
            assert_eq!(sum.page_records, 7);
            assert_eq!(sum.state.arch.scratch, 0xdead_beef);
            let got = (c.pages.clone(), c.state);
            if let Some(r) = &reference {
                assert_eq!(&got, r, "segment size {seg}");
            }
            reference = Some(got);
        }
    }

    #[test]
    fn oversize_length_is_rejected_before_buffering() {
        let mut s = sample();
        let at = HEADER_LEN; // first chunk header
        s[at + 8..at + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crate::crc::crc32c(&s[at..at + 12]);
        s[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
        let mut d = Decoder::new(id(4));
        let e = d.feed(&s[..at + 16], &mut NullSink).unwrap_err();
        assert!(
            matches!(e, StreamError::ChunkTooLong { len: u32::MAX, .. }),
            "{e}"
        );
        assert!(d.buf.capacity() <= MAX_CHUNK_BYTES);
    }
}

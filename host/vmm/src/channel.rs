//! The VMM's migration channel: framed, checksummed records between a source
//! and a destination VMM (over TCP between hosts, or any byte stream).
//!
//! ```text
//! hello:  "VFVM" | version u32
//! record: kind u8 | len u32 | crc32c(kind, len, payload) u32 | payload[len]   (little-endian)
//! ```
//!
//! Records: guest pages of a pass, device migration-stream bytes (opaque here:
//! `vfpga-migration` frames and checks them), the workload snapshot (the
//! guest driver's state), and the end marker with the source's stop time.
//! The destination answers with one record: `Done` or `Failed`. Everything
//! read is hostile: lengths are bounded before allocating, checksums and
//! kinds are checked, and nothing is applied before it is verified.

use std::io::{Read, Write};

/// Channel magic.
pub const MAGIC: [u8; 4] = *b"VFVM";
/// Channel version (2: the switchover acknowledgement, [`Record::Sync`]).
pub const VERSION: u32 = 2;
/// Largest record payload.
pub const MAX_RECORD: usize = 2 << 20;
/// Guest page size.
pub const PAGE: usize = 4096;
/// Most pages in one record.
pub const MAX_PAGES_PER_RECORD: usize = 256;

/// A channel record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Guest pages of pre-copy pass `pass` (`u32::MAX` = the final pass):
    /// `(iova, 4096 bytes)` each.
    GuestPages {
        /// Pass number.
        pass: u32,
        /// Pages.
        pages: Vec<(u64, Vec<u8>)>,
    },
    /// Bytes of the device's migration stream, in order.
    DeviceData(Vec<u8>),
    /// The workload snapshot (JSON).
    Workload(Vec<u8>),
    /// End of the source's data: microseconds since the epoch when the source
    /// device stopped (for the downtime figure; same-clock hosts).
    End {
        /// Source stop time.
        stopped_at_us: u64,
    },
    /// Destination verdict: running.
    Done {
        /// Microseconds since the epoch when the destination device resumed.
        resumed_at_us: u64,
    },
    /// Destination verdict: refused (the source must resume).
    Failed(String),
    /// Source to destination, before the source stops its device: answer
    /// with [`Record::SyncAck`] once everything before this record has been
    /// applied (as QEMU's `switchover-ack`: the destination's catch-up with
    /// the pre-copy data then happens while the guest still runs, not in
    /// the downtime).
    Sync,
    /// Destination to source: everything before the [`Record::Sync`] is
    /// applied.
    SyncAck,
}

/// Channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The transport failed or closed.
    #[error("migration channel I/O")]
    Io(#[from] std::io::Error),
    /// Not a vfpga VMM channel, or another version.
    #[error("bad channel hello (magic {magic:02x?}, version {version})")]
    Hello {
        /// Magic read.
        magic: [u8; 4],
        /// Version read.
        version: u32,
    },
    /// A record is malformed.
    #[error("bad record: {0}")]
    Record(String),
}

fn bad(msg: impl Into<String>) -> ChannelError {
    ChannelError::Record(msg.into())
}

/// Writes the hello.
pub fn write_hello(w: &mut impl Write) -> Result<(), ChannelError> {
    w.write_all(&MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    Ok(())
}

/// Reads and checks the hello.
pub fn read_hello(r: &mut impl Read) -> Result<(), ChannelError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    let magic = [b[0], b[1], b[2], b[3]];
    let version = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if magic != MAGIC || version != VERSION {
        return Err(ChannelError::Hello { magic, version });
    }
    Ok(())
}

fn encode(rec: &Record) -> (u8, Vec<u8>) {
    match rec {
        Record::GuestPages { pass, pages } => {
            let mut p = Vec::with_capacity(8 + pages.len() * (8 + PAGE));
            p.extend_from_slice(&pass.to_le_bytes());
            p.extend_from_slice(&(pages.len() as u32).to_le_bytes());
            for (iova, data) in pages {
                p.extend_from_slice(&iova.to_le_bytes());
                p.extend_from_slice(data);
            }
            (1, p)
        }
        Record::DeviceData(d) => (2, d.clone()),
        Record::Workload(d) => (3, d.clone()),
        Record::End { stopped_at_us } => (4, stopped_at_us.to_le_bytes().to_vec()),
        Record::Done { resumed_at_us } => (5, resumed_at_us.to_le_bytes().to_vec()),
        Record::Failed(s) => (6, s.as_bytes().to_vec()),
        Record::Sync => (7, Vec::new()),
        Record::SyncAck => (8, Vec::new()),
    }
}

/// Writes one record.
pub fn write_record(w: &mut impl Write, rec: &Record) -> Result<(), ChannelError> {
    let (kind, payload) = encode(rec);
    if payload.len() > MAX_RECORD {
        return Err(bad(format!(
            "record of {} bytes is too large",
            payload.len()
        )));
    }
    let mut h = [0u8; 9];
    h[0] = kind;
    h[1..5].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..5]), &payload);
    h[5..9].copy_from_slice(&crc.to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&payload)?;
    Ok(())
}

fn u64_of(p: &[u8]) -> Result<u64, ChannelError> {
    <[u8; 8]>::try_from(p)
        .map(u64::from_le_bytes)
        .map_err(|_| bad("expected 8 bytes"))
}

/// Decodes one record payload (hostile input).
pub fn decode(kind: u8, p: &[u8]) -> Result<Record, ChannelError> {
    Ok(match kind {
        1 => {
            if p.len() < 8 {
                return Err(bad("short guest-pages record"));
            }
            let pass = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
            let n = u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as usize;
            if n > MAX_PAGES_PER_RECORD || p.len() != 8 + n * (8 + PAGE) {
                return Err(bad(format!(
                    "guest-pages record: {n} pages in {} bytes",
                    p.len()
                )));
            }
            let pages = p[8..]
                .chunks_exact(8 + PAGE)
                .map(|c| {
                    let iova = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    (iova, c[8..].to_vec())
                })
                .collect();
            Record::GuestPages { pass, pages }
        }
        2 => Record::DeviceData(p.to_vec()),
        3 => Record::Workload(p.to_vec()),
        4 => Record::End {
            stopped_at_us: u64_of(p)?,
        },
        5 => Record::Done {
            resumed_at_us: u64_of(p)?,
        },
        6 => Record::Failed(String::from_utf8_lossy(p).into_owned()),
        7 | 8 if !p.is_empty() => return Err(bad("a sync record carries no payload")),
        7 => Record::Sync,
        8 => Record::SyncAck,
        k => return Err(bad(format!("unknown record kind {k}"))),
    })
}

/// Reads one record.
pub fn read_record(r: &mut impl Read) -> Result<Record, ChannelError> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let crc = u32::from_le_bytes([h[5], h[6], h[7], h[8]]);
    if len > MAX_RECORD {
        return Err(bad(format!(
            "record length {len} above the {MAX_RECORD}-byte limit"
        )));
    }
    let mut p = vec![0u8; len];
    r.read_exact(&mut p)?;
    if crc32c::crc32c_append(crc32c::crc32c(&h[..5]), &p) != crc {
        return Err(bad("record checksum mismatch"));
    }
    decode(h[0], &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Record> {
        vec![
            Record::GuestPages {
                pass: 3,
                pages: vec![(0x1000, vec![7; PAGE]), (0x9000, vec![1; PAGE])],
            },
            Record::DeviceData(vec![1, 2, 3]),
            Record::Workload(b"{}".to_vec()),
            Record::End { stopped_at_us: 42 },
            Record::Sync,
            Record::SyncAck,
            Record::Done { resumed_at_us: 43 },
            Record::Failed("no".into()),
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        write_hello(&mut buf).unwrap();
        for r in all() {
            write_record(&mut buf, &r).unwrap();
        }
        let mut rd = &buf[..];
        read_hello(&mut rd).unwrap();
        for r in all() {
            assert_eq!(read_record(&mut rd).unwrap(), r);
        }
        assert!(read_record(&mut rd).is_err());
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_rejected() {
        let mut buf = Vec::new();
        for r in all() {
            write_record(&mut buf, &r).unwrap();
        }
        let n = all().len();
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            let mut rd = &b[..];
            let ok = (0..n).filter(|_| read_record(&mut rd).is_ok()).count();
            // A flip inside a payload or header breaks that record (length
            // flips may also desynchronise the rest); never all pass.
            assert!(ok < n, "flip of bit {i} went unnoticed");
        }
        for cut in 0..buf.len() {
            let mut rd = &buf[..cut];
            let ok = (0..n).filter(|_| read_record(&mut rd).is_ok()).count();
            assert!(ok < n, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut h = vec![2u8];
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            read_record(&mut &h[..]),
            Err(ChannelError::Record(_))
        ));
        assert!(decode(1, &[0; 8 + 3]).is_err());
        assert!(decode(9, &[]).is_err());
    }
}

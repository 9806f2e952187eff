//! vfio-user wire format: the 16-byte header, command numbers, payload
//! layouts and their validation.
//!
//! Everything here is pure: bytes in, typed values out (or a [`WireError`]
//! carrying the errno the server replies with). Nothing allocates more than
//! the message it was given, and every length is checked before it is used.
//! Layouts follow the vfio-user specification (QEMU `docs/interop/vfio-user.rst`)
//! and, where QEMU's `vfio-user-pci` client differs, what that client sends
//! (see [`DmaLayout`]). All integers are little-endian (the host order of
//! every platform we run on).

use nix::errno::Errno;

/// Size of the message header.
pub const HEADER_LEN: usize = 16;

/// Command numbers.
pub mod cmd {
    /// Version negotiation.
    pub const VERSION: u16 = 1;
    /// Map guest memory for DMA.
    pub const DMA_MAP: u16 = 2;
    /// Unmap guest memory.
    pub const DMA_UNMAP: u16 = 3;
    /// Device information.
    pub const DEVICE_GET_INFO: u16 = 4;
    /// Region information.
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    /// Region I/O fds (not supported by this server).
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    /// IRQ information.
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    /// Configure interrupts.
    pub const DEVICE_SET_IRQS: u16 = 8;
    /// Read a region.
    pub const REGION_READ: u16 = 9;
    /// Write a region.
    pub const REGION_WRITE: u16 = 10;
    /// Server-initiated read of guest memory.
    pub const DMA_READ: u16 = 11;
    /// Server-initiated write of guest memory.
    pub const DMA_WRITE: u16 = 12;
    /// Reset the device.
    pub const DEVICE_RESET: u16 = 13;
    /// v1-era dirty page command (removed from the protocol).
    pub const DIRTY_PAGES: u16 = 14;
    /// Several small region writes.
    pub const REGION_WRITE_MULTI: u16 = 15;
    /// VFIO device feature (migration v2, DMA logging).
    pub const DEVICE_FEATURE: u16 = 16;
    /// Read migration data.
    pub const MIG_DATA_READ: u16 = 17;
    /// Write migration data.
    pub const MIG_DATA_WRITE: u16 = 18;

    /// The command's name in the specification, for logs.
    pub fn name(c: u16) -> &'static str {
        match c {
            VERSION => "VERSION",
            DMA_MAP => "DMA_MAP",
            DMA_UNMAP => "DMA_UNMAP",
            DEVICE_GET_INFO => "DEVICE_GET_INFO",
            DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
            DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
            DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
            DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
            REGION_READ => "REGION_READ",
            REGION_WRITE => "REGION_WRITE",
            DMA_READ => "DMA_READ",
            DMA_WRITE => "DMA_WRITE",
            DEVICE_RESET => "DEVICE_RESET",
            DIRTY_PAGES => "DIRTY_PAGES",
            REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
            DEVICE_FEATURE => "DEVICE_FEATURE",
            MIG_DATA_READ => "MIG_DATA_READ",
            MIG_DATA_WRITE => "MIG_DATA_WRITE",
            _ => "UNKNOWN",
        }
    }
}

/// Header flag bits.
pub mod flags {
    /// Mask of the message type field.
    pub const TYPE_MASK: u32 = 0xf;
    /// Type: command.
    pub const TYPE_COMMAND: u32 = 0;
    /// Type: reply.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender expects no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error (errno in the `error` field).
    pub const ERROR: u32 = 1 << 5;
    /// Every defined bit.
    pub const ALL: u32 = TYPE_MASK | NO_REPLY | ERROR;
}

/// Why a message (or its payload) was refused. Each maps to the errno sent
/// back in the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field has a value the protocol or this server does not allow.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The payload is shorter than its fixed part or than what it announces.
    #[error("{what}: payload is {got} bytes, needs {need}")]
    Short {
        /// Which message.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The payload is longer than the command defines.
    #[error("{what}: payload is {got} bytes, the command defines {want}")]
    Long {
        /// Which message.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes defined.
        want: usize,
    },
    /// A size exceeds the negotiated limits.
    #[error("{what} of {got} bytes exceeds the limit of {max}")]
    TooBig {
        /// What was too big.
        what: &'static str,
        /// Requested.
        got: u64,
        /// Allowed.
        max: u64,
    },
    /// An explicit errno with a reason.
    #[error("{reason}")]
    Errno {
        /// errno to reply.
        errno: Errno,
        /// Why.
        reason: &'static str,
    },
}

impl WireError {
    /// The errno the server replies with.
    pub fn errno(&self) -> Errno {
        match self {
            WireError::Invalid(_) | WireError::Short { .. } | WireError::Long { .. } => {
                Errno::EINVAL
            }
            WireError::TooBig { .. } => Errno::E2BIG,
            WireError::Errno { errno, .. } => *errno,
        }
    }

    /// Shorthand for [`WireError::Errno`].
    pub fn errno_with(errno: Errno, reason: &'static str) -> Self {
        WireError::Errno { errno, reason }
    }
}

/// Result of decoding.
pub type WireResult<T> = Result<T, WireError>;

/// The 16-byte message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message id, echoed in the reply.
    pub msg_id: u16,
    /// Command number.
    pub command: u16,
    /// Size of the whole message, header included.
    pub msg_size: u32,
    /// Flag bits ([`flags`]).
    pub flags: u32,
    /// errno in error replies.
    pub error: u32,
}

impl Header {
    /// Decodes a header (no validation).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            msg_id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            msg_size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.msg_id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.msg_size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// Message type (the low 4 flag bits).
    pub fn msg_type(&self) -> u32 {
        self.flags & flags::TYPE_MASK
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.msg_type() == flags::TYPE_REPLY
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// Payload length (`msg_size - 16`), once [`Header::validate`] passed.
    pub fn payload_len(&self) -> usize {
        (self.msg_size as usize).saturating_sub(HEADER_LEN)
    }

    /// Checks the header before anything else is read: size within
    /// `[16, max_msg_size]`, a known type, no unknown flag bits.
    pub fn validate(&self, max_msg_size: u32) -> WireResult<()> {
        if (self.msg_size as usize) < HEADER_LEN {
            return Err(WireError::Invalid("msg_size below the header size"));
        }
        if self.msg_size > max_msg_size {
            return Err(WireError::TooBig {
                what: "message",
                got: self.msg_size.into(),
                max: max_msg_size.into(),
            });
        }
        if self.flags & !flags::ALL != 0 {
            return Err(WireError::Invalid("header flags"));
        }
        let t = self.msg_type();
        if t != flags::TYPE_COMMAND && t != flags::TYPE_REPLY {
            return Err(WireError::Invalid("message type"));
        }
        Ok(())
    }

    /// A reply header for `req` with `payload` bytes.
    pub fn reply_to(req: &Header, payload: usize) -> Header {
        Header {
            msg_id: req.msg_id,
            command: req.command,
            msg_size: (HEADER_LEN + payload) as u32,
            flags: flags::TYPE_REPLY,
            error: 0,
        }
    }

    /// An error reply header for `req`.
    pub fn error_to(req: &Header, errno: Errno) -> Header {
        Header {
            msg_id: req.msg_id,
            command: req.command,
            msg_size: HEADER_LEN as u32,
            flags: flags::TYPE_REPLY | flags::ERROR,
            error: errno as u32,
        }
    }
}

/// Little-endian field reader over a payload, with bounds checks.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `b`, naming it `what` in errors.
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }

    /// Fails unless at least `need` bytes are present.
    pub fn need(&self, need: usize) -> WireResult<()> {
        if self.b.len() < need {
            return Err(WireError::Short {
                what: self.what,
                got: self.b.len(),
                need,
            });
        }
        Ok(())
    }

    /// Fails unless exactly `len` bytes are present.
    pub fn exact(&self, len: usize) -> WireResult<()> {
        self.need(len)?;
        if self.b.len() > len {
            return Err(WireError::Long {
                what: self.what,
                got: self.b.len(),
                want: len,
            });
        }
        Ok(())
    }

    /// `u16` at `off`.
    pub fn u16(&self, off: usize) -> WireResult<u16> {
        self.need(off + 2)?;
        Ok(u16::from_le_bytes([self.b[off], self.b[off + 1]]))
    }

    /// `u32` at `off`.
    pub fn u32(&self, off: usize) -> WireResult<u32> {
        self.need(off + 4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.b[off..off + 4]);
        Ok(u32::from_le_bytes(a))
    }

    /// `u64` at `off`.
    pub fn u64(&self, off: usize) -> WireResult<u64> {
        self.need(off + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.b[off..off + 8]);
        Ok(u64::from_le_bytes(a))
    }

    /// `len` bytes at `off`.
    pub fn bytes(&self, off: usize, len: usize) -> WireResult<&'a [u8]> {
        let end = off.checked_add(len).ok_or(WireError::Invalid(self.what))?;
        self.need(end)?;
        Ok(&self.b[off..end])
    }

    /// Everything from `off` on.
    pub fn rest(&self, off: usize) -> WireResult<&'a [u8]> {
        self.need(off)?;
        Ok(&self.b[off..])
    }
}

/// Little-endian payload builder.
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// An empty builder with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Writer(Vec::with_capacity(cap))
    }
    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// The payload.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

// ---------------------------------------------------------------- VERSION

/// Our protocol major version.
pub const VERSION_MAJOR: u16 = 0;
/// Our protocol minor version (the newest we speak).
pub const VERSION_MINOR: u16 = 2;
/// Largest JSON capability document accepted.
pub const MAX_JSON: usize = 4096;

bitflags::bitflags! {
    /// The capability keys a VERSION document names. A reply names only keys
    /// the request named (the specification: "a subset of those proposed").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct CapKeys: u8 {
        /// `max_msg_fds`.
        const MAX_MSG_FDS = 1 << 0;
        /// `max_data_xfer_size`.
        const MAX_DATA_XFER_SIZE = 1 << 1;
        /// `pgsizes`.
        const PGSIZES = 1 << 2;
        /// `max_dma_maps`.
        const MAX_DMA_MAPS = 1 << 3;
        /// `migration.max_bitmap_size` (the `migration` object itself is
        /// [`Caps::migration`]).
        const MIGRATION_MAX_BITMAP = 1 << 4;
    }
}

/// Capabilities exchanged in VERSION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Most fds per message the sender accepts.
    pub max_msg_fds: u32,
    /// Largest data transfer the sender accepts.
    pub max_data_xfer_size: u64,
    /// Supported DMA page sizes (bitmap).
    pub pgsizes: u64,
    /// Most DMA mappings.
    pub max_dma_maps: u32,
    /// `migration` object: page size and largest dirty bitmap, if present.
    pub migration: Option<(u64, u64)>,
    /// The sender can send/receive REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// Which of the keys above the document names: decoding records them;
    /// encoding writes only these (plus `migration` when set and
    /// `write_multiple` when true).
    pub named: CapKeys,
}

impl Default for Caps {
    /// The specification's defaults for absent capabilities (none named).
    fn default() -> Self {
        Caps {
            max_msg_fds: 1,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 65535,
            migration: None,
            write_multiple: false,
            named: CapKeys::empty(),
        }
    }
}

/// A VERSION message (request or reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
    /// Capabilities (defaults where absent).
    pub caps: Caps,
    /// Whether a JSON document was present.
    pub has_json: bool,
}

fn json_u64(v: &serde_json::Value, what: &'static str) -> WireResult<u64> {
    v.as_u64().ok_or(WireError::Invalid(what))
}

impl Version {
    /// A whole VERSION command message (header included) proposing this
    /// library's version with the default capabilities.
    pub fn command(msg_id: u16) -> Vec<u8> {
        let p = Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            caps: Caps::default(),
            has_json: true,
        }
        .encode();
        let mut m = Header {
            msg_id,
            command: cmd::VERSION,
            msg_size: (HEADER_LEN + p.len()) as u32,
            flags: flags::TYPE_COMMAND,
            error: 0,
        }
        .encode()
        .to_vec();
        m.extend_from_slice(&p);
        m
    }

    /// Decodes and validates a VERSION payload.
    pub fn decode(p: &[u8]) -> WireResult<Version> {
        let r = Reader::new(p, "VERSION");
        let major = r.u16(0)?;
        let minor = r.u16(2)?;
        let json = r.rest(4)?;
        let mut caps = Caps::default();
        let has_json = !json.is_empty();
        if has_json {
            if json.len() > MAX_JSON {
                return Err(WireError::TooBig {
                    what: "VERSION JSON",
                    got: json.len() as u64,
                    max: MAX_JSON as u64,
                });
            }
            let Some((&0, text)) = json.split_last() else {
                return Err(WireError::Invalid("VERSION JSON is not NUL-terminated"));
            };
            let v: serde_json::Value = serde_json::from_slice(text)
                .map_err(|_| WireError::Invalid("VERSION JSON is malformed"))?;
            let obj = v
                .as_object()
                .ok_or(WireError::Invalid("VERSION JSON is not an object"))?;
            if let Some(c) = obj.get("capabilities") {
                let c = c
                    .as_object()
                    .ok_or(WireError::Invalid("capabilities is not an object"))?;
                for (k, val) in c {
                    match k.as_str() {
                        "max_msg_fds" => {
                            let n = json_u64(val, "max_msg_fds")?;
                            caps.max_msg_fds = u32::try_from(n)
                                .ok()
                                .filter(|n| *n <= 1024)
                                .ok_or(WireError::Invalid("max_msg_fds"))?;
                            caps.named |= CapKeys::MAX_MSG_FDS;
                        }
                        "max_data_xfer_size" => {
                            let n = json_u64(val, "max_data_xfer_size")?;
                            if n == 0 {
                                return Err(WireError::Invalid("max_data_xfer_size"));
                            }
                            caps.max_data_xfer_size = n;
                            caps.named |= CapKeys::MAX_DATA_XFER_SIZE;
                        }
                        "pgsizes" => {
                            let n = json_u64(val, "pgsizes")?;
                            if n & 4096 == 0 {
                                return Err(WireError::Invalid("pgsizes lacks 4 KiB"));
                            }
                            caps.pgsizes = n;
                            caps.named |= CapKeys::PGSIZES;
                        }
                        "max_dma_maps" => {
                            let n = json_u64(val, "max_dma_maps")?;
                            caps.max_dma_maps =
                                u32::try_from(n).map_err(|_| WireError::Invalid("max_dma_maps"))?;
                            caps.named |= CapKeys::MAX_DMA_MAPS;
                        }
                        "write_multiple" => {
                            caps.write_multiple =
                                val.as_bool().ok_or(WireError::Invalid("write_multiple"))?;
                        }
                        "migration" => {
                            let m = val
                                .as_object()
                                .ok_or(WireError::Invalid("migration is not an object"))?;
                            let pg = match m.get("pgsize") {
                                Some(x) => json_u64(x, "migration.pgsize")?,
                                None => 4096,
                            };
                            let bm = match m.get("max_bitmap_size") {
                                Some(x) => {
                                    caps.named |= CapKeys::MIGRATION_MAX_BITMAP;
                                    json_u64(x, "migration.max_bitmap_size")?
                                }
                                None => 256 << 20,
                            };
                            caps.migration = Some((pg, bm));
                        }
                        "twin_socket" if !val.is_object() => {
                            return Err(WireError::Invalid("twin_socket is not an object"));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Version {
            major,
            minor,
            caps,
            has_json,
        })
    }

    /// Encodes a VERSION payload with a JSON document naming the keys in
    /// `caps.named`, plus `migration` when set and `write_multiple` when true.
    pub fn encode(&self) -> Vec<u8> {
        let (c0, n) = (&self.caps, self.caps.named);
        let mut c = serde_json::Map::new();
        if n.contains(CapKeys::MAX_MSG_FDS) {
            c.insert("max_msg_fds".into(), c0.max_msg_fds.into());
        }
        if n.contains(CapKeys::MAX_DATA_XFER_SIZE) {
            c.insert("max_data_xfer_size".into(), c0.max_data_xfer_size.into());
        }
        if n.contains(CapKeys::PGSIZES) {
            c.insert("pgsizes".into(), c0.pgsizes.into());
        }
        if n.contains(CapKeys::MAX_DMA_MAPS) {
            c.insert("max_dma_maps".into(), c0.max_dma_maps.into());
        }
        if let Some((pg, bm)) = c0.migration {
            let mut m = serde_json::Map::new();
            m.insert("pgsize".into(), pg.into());
            if n.contains(CapKeys::MIGRATION_MAX_BITMAP) {
                m.insert("max_bitmap_size".into(), bm.into());
            }
            c.insert("migration".into(), m.into());
        }
        if self.caps.write_multiple {
            c.insert("write_multiple".into(), true.into());
        }
        let mut root = serde_json::Map::new();
        root.insert("capabilities".into(), c.into());
        let text = serde_json::Value::Object(root).to_string();
        let mut w = Writer::with_capacity(5 + text.len());
        w.u16(self.major).u16(self.minor).bytes(text.as_bytes());
        w.0.push(0);
        w.finish()
    }
}

// ---------------------------------------------------------------- DMA_MAP / UNMAP

/// DMA_MAP flag: readable.
pub const DMA_FLAG_READ: u32 = 1 << 0;
/// DMA_MAP flag: writeable.
pub const DMA_FLAG_WRITE: u32 = 1 << 1;
/// DMA_UNMAP flag: unmap everything (QEMU sends it; address and size 0).
pub const DMA_UNMAP_ALL: u32 = 1 << 1;

/// DMA_MAP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// argsz.
    pub argsz: u32,
    /// READ/WRITE.
    pub flags: u32,
    /// Offset into the fd.
    pub offset: u64,
    /// IOVA.
    pub address: u64,
    /// Length.
    pub size: u64,
}

impl DmaMap {
    /// Payload length.
    pub const LEN: usize = 32;
    /// Decodes and validates.
    pub fn decode(p: &[u8]) -> WireResult<DmaMap> {
        let r = Reader::new(p, "DMA_MAP");
        r.exact(Self::LEN)?;
        let m = DmaMap {
            argsz: r.u32(0)?,
            flags: r.u32(4)?,
            offset: r.u64(8)?,
            address: r.u64(16)?,
            size: r.u64(24)?,
        };
        if (m.argsz as usize) < Self::LEN {
            return Err(WireError::Invalid("DMA_MAP argsz"));
        }
        if m.flags & !(DMA_FLAG_READ | DMA_FLAG_WRITE) != 0 {
            return Err(WireError::Invalid("DMA_MAP flags"));
        }
        if m.size == 0 || m.address.checked_add(m.size).is_none() {
            return Err(WireError::Invalid("DMA_MAP range"));
        }
        if m.offset.checked_add(m.size).is_none() {
            return Err(WireError::Invalid("DMA_MAP fd offset"));
        }
        Ok(m)
    }
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u32(self.argsz)
            .u32(self.flags)
            .u64(self.offset)
            .u64(self.address)
            .u64(self.size);
        w.finish()
    }
}

/// DMA_UNMAP request (and reply: the entry is echoed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    /// argsz.
    pub argsz: u32,
    /// 0 or [`DMA_UNMAP_ALL`].
    pub flags: u32,
    /// IOVA.
    pub address: u64,
    /// Length.
    pub size: u64,
}

impl DmaUnmap {
    /// Payload length.
    pub const LEN: usize = 24;
    /// Decodes and validates.
    pub fn decode(p: &[u8]) -> WireResult<DmaUnmap> {
        let r = Reader::new(p, "DMA_UNMAP");
        r.exact(Self::LEN)?;
        let m = DmaUnmap {
            argsz: r.u32(0)?,
            flags: r.u32(4)?,
            address: r.u64(8)?,
            size: r.u64(16)?,
        };
        if (m.argsz as usize) < Self::LEN {
            return Err(WireError::Invalid("DMA_UNMAP argsz"));
        }
        match m.flags {
            0 => {
                if m.size == 0 || m.address.checked_add(m.size).is_none() {
                    return Err(WireError::Invalid("DMA_UNMAP range"));
                }
            }
            DMA_UNMAP_ALL => {
                if m.address != 0 || m.size != 0 {
                    return Err(WireError::Invalid("DMA_UNMAP ALL with a range"));
                }
            }
            _ => return Err(WireError::Invalid("DMA_UNMAP flags")),
        }
        Ok(m)
    }
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u32(self.argsz)
            .u32(self.flags)
            .u64(self.address)
            .u64(self.size);
        w.finish()
    }
}

// ---------------------------------------------------------------- device / region / irq info

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// DEVICE_GET_INFO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfoReply {
    /// argsz.
    pub argsz: u32,
    /// Flags.
    pub flags: u32,
    /// Regions.
    pub num_regions: u32,
    /// IRQ indexes.
    pub num_irqs: u32,
}

impl DeviceInfoReply {
    /// Payload length.
    pub const LEN: usize = 16;
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.num_regions)
            .u32(self.num_irqs);
        w.finish()
    }
    /// Decodes.
    pub fn decode(p: &[u8]) -> WireResult<Self> {
        let r = Reader::new(p, "DEVICE_GET_INFO reply");
        Ok(DeviceInfoReply {
            argsz: r.u32(0)?,
            flags: r.u32(4)?,
            num_regions: r.u32(8)?,
            num_irqs: r.u32(12)?,
        })
    }
}

/// Reads the `argsz` (and index at `idx_off`) of an info request.
pub fn decode_argsz_index(
    p: &[u8],
    what: &'static str,
    min: usize,
    idx_off: Option<usize>,
) -> WireResult<(u32, u32)> {
    let r = Reader::new(p, what);
    r.exact(min)?;
    let argsz = r.u32(0)?;
    if (argsz as usize) < min {
        return Err(WireError::Invalid("argsz"));
    }
    let index = match idx_off {
        Some(o) => r.u32(o)?,
        None => 0,
    };
    Ok((argsz, index))
}

/// Region flag: readable.
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// Region flag: writeable.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: mmap-able (an fd accompanies the reply).
pub const REGION_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: a capability chain follows.
pub const REGION_FLAG_CAPS: u32 = 1 << 3;
/// Region capability id: type/subtype.
pub const REGION_CAP_TYPE: u16 = 2;
/// v1 migration region type.
pub const REGION_TYPE_MIGRATION: u32 = 3;
/// v1 migration region subtype.
pub const REGION_SUBTYPE_MIGRATION: u32 = 1;

/// `struct vfio_region_info` (fixed part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// argsz (in a reply: size needed).
    pub argsz: u32,
    /// Flags.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability (0 if none in this reply).
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// mmap offset.
    pub offset: u64,
}

impl RegionInfo {
    /// Payload length of the fixed part.
    pub const LEN: usize = 32;
    /// Encodes the fixed part.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.cap_offset)
            .u64(self.size)
            .u64(self.offset);
        w.finish()
    }
    /// Decodes the fixed part.
    pub fn decode(p: &[u8]) -> WireResult<Self> {
        let r = Reader::new(p, "region info");
        r.need(Self::LEN)?;
        Ok(RegionInfo {
            argsz: r.u32(0)?,
            flags: r.u32(4)?,
            index: r.u32(8)?,
            cap_offset: r.u32(12)?,
            size: r.u64(16)?,
            offset: r.u64(24)?,
        })
    }
}

/// IRQ info flag: eventfd signalling.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info flag: maskable.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info flag: automasked (level-triggered).
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// IRQ info flag: cannot be resized without a disable.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `struct vfio_irq_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// argsz.
    pub argsz: u32,
    /// Flags.
    pub flags: u32,
    /// Index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

impl IrqInfo {
    /// Payload length.
    pub const LEN: usize = 16;
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.count);
        w.finish()
    }
    /// Decodes.
    pub fn decode(p: &[u8]) -> WireResult<Self> {
        let r = Reader::new(p, "irq info");
        r.need(Self::LEN)?;
        Ok(IrqInfo {
            argsz: r.u32(0)?,
            flags: r.u32(4)?,
            index: r.u32(8)?,
            count: r.u32(12)?,
        })
    }
}

// ---------------------------------------------------------------- SET_IRQS

/// SET_IRQS: no data.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS: one bool byte per vector.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS: eventfds in SCM_RIGHTS.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS: trigger / assign the trigger eventfd.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const IRQ_SET_DATA_MASK: u32 = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
const IRQ_SET_ACTION_MASK_ALL: u32 =
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// Data kind of a SET_IRQS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqData {
    /// No data.
    None,
    /// One bool per vector.
    Bool(Vec<bool>),
    /// Eventfds (in the message's fds).
    Eventfd,
}

/// Action of a SET_IRQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask.
    Mask,
    /// Unmask.
    Unmask,
    /// Trigger.
    Trigger,
}

/// A validated SET_IRQS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIrqs {
    /// argsz.
    pub argsz: u32,
    /// Raw flags.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// Data kind.
    pub data: IrqData,
    /// Action.
    pub action: IrqAction,
}

impl SetIrqs {
    /// Fixed payload length.
    pub const LEN: usize = 20;
    /// Decodes and validates the fixed part (range checks against the
    /// device's IRQ counts are the server's).
    pub fn decode(p: &[u8]) -> WireResult<SetIrqs> {
        let r = Reader::new(p, "SET_IRQS");
        r.need(Self::LEN)?;
        let argsz = r.u32(0)?;
        let fl = r.u32(4)?;
        let index = r.u32(8)?;
        let start = r.u32(12)?;
        let count = r.u32(16)?;
        if (argsz as usize) < Self::LEN {
            return Err(WireError::Invalid("SET_IRQS argsz"));
        }
        if fl & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0 {
            return Err(WireError::Invalid("SET_IRQS flags"));
        }
        let action = match fl & IRQ_SET_ACTION_MASK_ALL {
            IRQ_SET_ACTION_MASK => IrqAction::Mask,
            IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => return Err(WireError::Invalid("SET_IRQS action")),
        };
        if start.checked_add(count).is_none() {
            return Err(WireError::Invalid("SET_IRQS range"));
        }
        let data = match fl & IRQ_SET_DATA_MASK {
            IRQ_SET_DATA_NONE => IrqData::None,
            IRQ_SET_DATA_EVENTFD => IrqData::Eventfd,
            IRQ_SET_DATA_BOOL => {
                // Bounded by the payload actually present, never by `count` alone.
                let b = r.bytes(Self::LEN, count as usize)?;
                r.exact(Self::LEN + count as usize)?;
                IrqData::Bool(b.iter().map(|x| *x != 0).collect())
            }
            _ => return Err(WireError::Invalid("SET_IRQS data type")),
        };
        if !matches!(data, IrqData::Bool(_)) {
            r.exact(Self::LEN)?;
        }
        if data == IrqData::Eventfd && action == IrqAction::Mask {
            return Err(WireError::Invalid("SET_IRQS mask with eventfds"));
        }
        Ok(SetIrqs {
            argsz,
            flags: fl,
            index,
            start,
            count,
            data,
            action,
        })
    }

    /// Encodes a request (`bools` for DATA_BOOL).
    pub fn encode(flags: u32, index: u32, start: u32, count: u32, bools: &[bool]) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN + bools.len());
        w.u32((Self::LEN + bools.len()) as u32)
            .u32(flags)
            .u32(index)
            .u32(start)
            .u32(count);
        for b in bools {
            w.0.push(u8::from(*b));
        }
        w.finish()
    }
}

// ---------------------------------------------------------------- REGION_READ/WRITE

/// REGION_READ / REGION_WRITE request (and reply) fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
}

impl RegionAccess {
    /// Fixed payload length.
    pub const LEN: usize = 16;
    /// Decodes a REGION_READ request (no data).
    pub fn decode_read(p: &[u8], max_xfer: u64) -> WireResult<RegionAccess> {
        let a = Self::decode_fixed(p, "REGION_READ")?;
        Reader::new(p, "REGION_READ").exact(Self::LEN)?;
        if u64::from(a.count) > max_xfer {
            return Err(WireError::TooBig {
                what: "REGION_READ count",
                got: a.count.into(),
                max: max_xfer,
            });
        }
        Ok(a)
    }
    /// Decodes a REGION_WRITE request and its data (exactly `count` bytes).
    pub fn decode_write(p: &[u8], max_xfer: u64) -> WireResult<(RegionAccess, &[u8])> {
        let a = Self::decode_fixed(p, "REGION_WRITE")?;
        if u64::from(a.count) > max_xfer {
            return Err(WireError::TooBig {
                what: "REGION_WRITE count",
                got: a.count.into(),
                max: max_xfer,
            });
        }
        let data = Reader::new(p, "REGION_WRITE").bytes(Self::LEN, a.count as usize)?;
        if p.len() != Self::LEN + a.count as usize {
            return Err(WireError::Invalid("REGION_WRITE trailing bytes"));
        }
        Ok((a, data))
    }
    fn decode_fixed(p: &[u8], what: &'static str) -> WireResult<RegionAccess> {
        let r = Reader::new(p, what);
        r.need(Self::LEN)?;
        Ok(RegionAccess {
            offset: r.u64(0)?,
            region: r.u32(8)?,
            count: r.u32(12)?,
        })
    }
    /// Writes the fixed part into `out` (exactly [`Self::LEN`] bytes).
    pub fn encode_fixed(&self, out: &mut [u8; Self::LEN]) {
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.region.to_le_bytes());
        out[12..].copy_from_slice(&self.count.to_le_bytes());
    }

    /// Encodes the fixed part followed by `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN + data.len());
        w.u64(self.offset)
            .u32(self.region)
            .u32(self.count)
            .bytes(data);
        w.finish()
    }
}

/// One REGION_WRITE_MULTI entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiEntry {
    /// Offset.
    pub offset: u64,
    /// Region.
    pub region: u32,
    /// Bytes used of `data` (1..=8).
    pub count: u32,
    /// Data.
    pub data: [u8; 8],
}

/// Most entries of a REGION_WRITE_MULTI (QEMU sends at most 200).
pub const MAX_WRITE_MULTI: u64 = 256;
/// Size of one REGION_WRITE_MULTI entry.
pub const MULTI_ENTRY_LEN: usize = 24;

/// Decodes a REGION_WRITE_MULTI request.
pub fn decode_write_multi(p: &[u8]) -> WireResult<Vec<MultiEntry>> {
    let r = Reader::new(p, "REGION_WRITE_MULTI");
    let n = r.u64(0)?;
    if n == 0 || n > MAX_WRITE_MULTI {
        return Err(WireError::Invalid("REGION_WRITE_MULTI count"));
    }
    let n = n as usize;
    if p.len() != 8 + n * MULTI_ENTRY_LEN {
        return Err(WireError::Short {
            what: "REGION_WRITE_MULTI",
            got: p.len(),
            need: 8 + n * MULTI_ENTRY_LEN,
        });
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let o = 8 + i * MULTI_ENTRY_LEN;
        let count = r.u32(o + 12)?;
        if count == 0 || count > 8 {
            return Err(WireError::Invalid("REGION_WRITE_MULTI entry count"));
        }
        let mut data = [0u8; 8];
        data.copy_from_slice(r.bytes(o + 16, 8)?);
        out.push(MultiEntry {
            offset: r.u64(o)?,
            region: r.u32(o + 8)?,
            count,
            data,
        });
    }
    Ok(out)
}

/// Encodes a REGION_WRITE_MULTI request.
pub fn encode_write_multi(entries: &[MultiEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + entries.len() * MULTI_ENTRY_LEN);
    w.u64(entries.len() as u64);
    for e in entries {
        w.u64(e.offset).u32(e.region).u32(e.count).bytes(&e.data);
    }
    w.finish()
}

// ---------------------------------------------------------------- DMA_READ/WRITE (server -> client)

/// Layout of server-initiated DMA_READ/DMA_WRITE messages.
///
/// The specification (and libvfio-user) use `{u64 address; u64 count; data}`
/// with data at payload offset 16, and so does QEMU 11.1.3's `vfio-user-pci`
/// client: measured with a real guest whose RAM was not shared
/// (`scripts/qemu-test`), the u32-count layout below made QEMU read the count
/// as 16 plus data bytes and refuse the write (E2BIG), and shifted DMA_READ
/// replies by 4 bytes; the specification layout passes. The server and client
/// therefore always use [`DmaLayout::Spec`]; [`DmaLayout::Qemu`] stays only to
/// decode what an older peer built on the u32 struct might send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaLayout {
    /// `{u64 address; u64 count; data @16}`.
    Spec,
    /// `{u64 address; u32 count; data @12}`, message size `32 + count`.
    Qemu,
}

impl DmaLayout {
    /// Payload offset of the data.
    pub fn data_offset(self) -> usize {
        match self {
            DmaLayout::Spec => 16,
            DmaLayout::Qemu => 12,
        }
    }

    /// Payload length for `count` data bytes.
    pub fn payload_len(self, count: usize) -> usize {
        match self {
            DmaLayout::Spec => 16 + count,
            DmaLayout::Qemu => 16 + count,
        }
    }

    /// Encodes a request (`data` empty for DMA_READ).
    pub fn encode(self, address: u64, count: u64, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.payload_len(data.len()));
        w.u64(address);
        match self {
            DmaLayout::Spec => {
                w.u64(count).bytes(data);
            }
            DmaLayout::Qemu => {
                w.u32(count as u32).bytes(data).bytes(&[0; 4]);
            }
        }
        w.finish()
    }

    /// Decodes a request: `(address, count, data)`; `data` is empty for a
    /// DMA_READ and exactly `count` bytes for a DMA_WRITE (`with_data`).
    pub fn decode(self, p: &[u8], with_data: bool, max_xfer: u64) -> WireResult<(u64, u64, &[u8])> {
        let r = Reader::new(p, "DMA_READ/WRITE");
        let address = r.u64(0)?;
        let count = match self {
            DmaLayout::Spec => r.u64(8)?,
            DmaLayout::Qemu => u64::from(r.u32(8)?),
        };
        if count > max_xfer {
            return Err(WireError::TooBig {
                what: "DMA count",
                got: count,
                max: max_xfer,
            });
        }
        if address.checked_add(count).is_none() {
            return Err(WireError::Invalid("DMA range"));
        }
        let data = if with_data {
            r.bytes(self.data_offset(), count as usize)?
        } else {
            &[]
        };
        Ok((address, count, data))
    }
}

// ---------------------------------------------------------------- DEVICE_FEATURE

/// Feature index mask.
pub const FEATURE_MASK: u32 = 0xffff;
/// GET.
pub const FEATURE_GET: u32 = 1 << 16;
/// SET.
pub const FEATURE_SET: u32 = 1 << 17;
/// PROBE.
pub const FEATURE_PROBE: u32 = 1 << 18;
/// `VFIO_DEVICE_FEATURE_MIGRATION`.
pub const FEATURE_MIGRATION: u32 = 1;
/// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`.
pub const FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`.
pub const FEATURE_DMA_LOGGING_START: u32 = 6;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`.
pub const FEATURE_DMA_LOGGING_STOP: u32 = 7;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`.
pub const FEATURE_DMA_LOGGING_REPORT: u32 = 8;
/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
pub const FEATURE_MIG_DATA_SIZE: u32 = 9;

/// A DEVICE_FEATURE request after the generic checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature<'a> {
    /// argsz (largest reply payload).
    pub argsz: u32,
    /// Raw flags.
    pub flags: u32,
    /// Feature index.
    pub index: u32,
    /// Feature data.
    pub data: &'a [u8],
}

impl<'a> Feature<'a> {
    /// Decodes and applies the kernel's generic checks (`argsz >= 8`, no
    /// unknown flag bits, GET and SET only together with PROBE).
    pub fn decode(p: &'a [u8]) -> WireResult<Feature<'a>> {
        let r = Reader::new(p, "DEVICE_FEATURE");
        r.need(8)?;
        let argsz = r.u32(0)?;
        let fl = r.u32(4)?;
        if argsz < 8 {
            return Err(WireError::Invalid("DEVICE_FEATURE argsz"));
        }
        // argsz covers what is sent (a GET may send less: room for the reply).
        if p.len() > argsz as usize {
            return Err(WireError::Long {
                what: "DEVICE_FEATURE (payload beyond argsz)",
                got: p.len(),
                want: argsz as usize,
            });
        }
        if fl & !(FEATURE_MASK | FEATURE_GET | FEATURE_SET | FEATURE_PROBE) != 0 {
            return Err(WireError::Invalid("DEVICE_FEATURE flags"));
        }
        if fl & (FEATURE_GET | FEATURE_SET) == (FEATURE_GET | FEATURE_SET)
            && fl & FEATURE_PROBE == 0
        {
            return Err(WireError::Invalid("DEVICE_FEATURE GET|SET"));
        }
        Ok(Feature {
            argsz,
            flags: fl,
            index: fl & FEATURE_MASK,
            data: r.rest(8)?,
        })
    }

    /// Whether PROBE is set.
    pub fn probe(&self) -> bool {
        self.flags & FEATURE_PROBE != 0
    }
    /// Whether GET is set.
    pub fn get(&self) -> bool {
        self.flags & FEATURE_GET != 0
    }
    /// Whether SET is set.
    pub fn set(&self) -> bool {
        self.flags & FEATURE_SET != 0
    }

    /// The kernel's `vfio_check_feature`: `Ok(false)` for a PROBE that
    /// succeeded (reply with the request), `Ok(true)` to perform the
    /// operation, `Err` otherwise. `ops` is the set of supported GET/SET bits
    /// and `minsz` the data size the operation needs (checked against both
    /// `argsz` and the payload actually present).
    pub fn check(&self, ops: u32, minsz: usize) -> WireResult<bool> {
        if self.flags & (FEATURE_GET | FEATURE_SET) & !ops != 0 {
            return Err(WireError::Invalid("DEVICE_FEATURE operation not supported"));
        }
        if self.probe() {
            return Ok(false);
        }
        if !self.get() && !self.set() {
            return Err(WireError::Invalid("DEVICE_FEATURE without GET or SET"));
        }
        if (self.argsz as usize) < 8 + minsz {
            return Err(WireError::Invalid("DEVICE_FEATURE argsz too small"));
        }
        Ok(true)
    }

    /// Encodes a request.
    pub fn encode(argsz: u32, flags: u32, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(8 + data.len());
        w.u32(argsz).u32(flags).bytes(data);
        w.finish()
    }
}

/// Most ranges a DMA_LOGGING_START may carry (the kernel's PAGE_SIZE/16).
pub const MAX_LOG_RANGES: usize = 256;

/// DMA_LOGGING_START data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingStart {
    /// Page size hint.
    pub page_size: u64,
    /// `(iova, length)` ranges; empty means "log all writes".
    pub ranges: Vec<(u64, u64)>,
}

impl LoggingStart {
    /// Decodes and validates (power-of-two page size of at least 4 KiB;
    /// ranges aligned, non-empty, non-overflowing and non-overlapping).
    pub fn decode(d: &[u8]) -> WireResult<LoggingStart> {
        let r = Reader::new(d, "DMA_LOGGING_START");
        r.need(16)?;
        let page_size = r.u64(0)?;
        let n = r.u32(8)? as usize;
        if page_size < 4096 || !page_size.is_power_of_two() {
            return Err(WireError::Invalid("DMA logging page size"));
        }
        if n > MAX_LOG_RANGES {
            return Err(WireError::TooBig {
                what: "DMA logging ranges",
                got: n as u64,
                max: MAX_LOG_RANGES as u64,
            });
        }
        r.exact(16 + n * 16)?;
        let mut ranges = Vec::with_capacity(n);
        for i in 0..n {
            let iova = r.u64(16 + i * 16)?;
            let len = r.u64(24 + i * 16)?;
            if len == 0 || !iova.is_multiple_of(page_size) || !len.is_multiple_of(page_size) {
                return Err(WireError::Invalid("DMA logging range alignment"));
            }
            if iova.checked_add(len).is_none() {
                return Err(WireError::errno_with(
                    Errno::EOVERFLOW,
                    "DMA logging range overflows",
                ));
            }
            ranges.push((iova, len));
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(WireError::Invalid("DMA logging ranges overlap"));
            }
        }
        Ok(LoggingStart { page_size, ranges })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + self.ranges.len() * 16);
        w.u64(self.page_size).u32(self.ranges.len() as u32).u32(0);
        for (i, l) in &self.ranges {
            w.u64(*i).u64(*l);
        }
        w.finish()
    }
}

/// DMA_LOGGING_REPORT data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggingReport {
    /// Start IOVA.
    pub iova: u64,
    /// Length.
    pub length: u64,
    /// Bitmap page size.
    pub page_size: u64,
}

impl LoggingReport {
    /// Data length.
    pub const LEN: usize = 24;
    /// Decodes and validates; returns the bitmap size in bytes too.
    pub fn decode(d: &[u8]) -> WireResult<(LoggingReport, usize)> {
        let r = Reader::new(d, "DMA_LOGGING_REPORT");
        r.need(Self::LEN)?;
        let rep = LoggingReport {
            iova: r.u64(0)?,
            length: r.u64(8)?,
            page_size: r.u64(16)?,
        };
        if rep.page_size < 4096 || !rep.page_size.is_power_of_two() {
            return Err(WireError::Invalid("DMA logging report page size"));
        }
        if rep.length == 0
            || !rep.iova.is_multiple_of(rep.page_size)
            || !rep.length.is_multiple_of(rep.page_size)
        {
            return Err(WireError::Invalid("DMA logging report range"));
        }
        if rep.iova.checked_add(rep.length).is_none() {
            return Err(WireError::errno_with(
                Errno::EOVERFLOW,
                "DMA logging report range overflows",
            ));
        }
        let pages = rep.length / rep.page_size;
        let bytes = pages.div_ceil(64) * 8;
        Ok((rep, usize::try_from(bytes).unwrap_or(usize::MAX)))
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u64(self.iova).u64(self.length).u64(self.page_size);
        w.finish()
    }
}

// ---------------------------------------------------------------- MIG_DATA_READ/WRITE

/// MIG_DATA_READ/WRITE fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigData {
    /// argsz.
    pub argsz: u32,
    /// Size.
    pub size: u32,
}

impl MigData {
    /// Fixed length.
    pub const LEN: usize = 8;
    /// Decodes a MIG_DATA_READ request.
    pub fn decode_read(p: &[u8], max_xfer: u64) -> WireResult<MigData> {
        let r = Reader::new(p, "MIG_DATA_READ");
        r.exact(Self::LEN)?;
        let m = MigData {
            argsz: r.u32(0)?,
            size: r.u32(4)?,
        };
        if u64::from(m.size) > max_xfer {
            return Err(WireError::Invalid(
                "MIG_DATA_READ size above max_data_xfer_size",
            ));
        }
        if (m.argsz as u64) < Self::LEN as u64 + u64::from(m.size) {
            return Err(WireError::Invalid("MIG_DATA_READ argsz"));
        }
        Ok(m)
    }
    /// Decodes a MIG_DATA_WRITE request and its data.
    pub fn decode_write(p: &[u8], max_xfer: u64) -> WireResult<(MigData, &[u8])> {
        let r = Reader::new(p, "MIG_DATA_WRITE");
        r.need(Self::LEN)?;
        let m = MigData {
            argsz: r.u32(0)?,
            size: r.u32(4)?,
        };
        if u64::from(m.size) > max_xfer {
            return Err(WireError::Invalid(
                "MIG_DATA_WRITE size above max_data_xfer_size",
            ));
        }
        if (m.argsz as u64) < Self::LEN as u64 + u64::from(m.size) {
            return Err(WireError::Invalid("MIG_DATA_WRITE argsz"));
        }
        let data = r.bytes(Self::LEN, m.size as usize)?;
        r.exact(Self::LEN + m.size as usize)?;
        Ok((m, data))
    }
    /// Encodes with data.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN + data.len());
        w.u32(self.argsz).u32(self.size).bytes(data);
        w.finish()
    }
}

/// Decodes a command payload the way the server would, for fuzzing the
/// decoders: returns `Ok(())` when the payload is well-formed.
pub fn decode_any(command: u16, p: &[u8], max_xfer: u64) -> WireResult<()> {
    match command {
        cmd::VERSION => Version::decode(p).map(drop),
        cmd::DMA_MAP => DmaMap::decode(p).map(drop),
        cmd::DMA_UNMAP => DmaUnmap::decode(p).map(drop),
        cmd::DEVICE_GET_INFO => decode_argsz_index(p, "GET_INFO", 16, None).map(drop),
        cmd::DEVICE_GET_REGION_INFO => {
            decode_argsz_index(p, "GET_REGION_INFO", RegionInfo::LEN, Some(8)).map(drop)
        }
        cmd::DEVICE_GET_IRQ_INFO => {
            decode_argsz_index(p, "GET_IRQ_INFO", IrqInfo::LEN, Some(8)).map(drop)
        }
        cmd::DEVICE_SET_IRQS => SetIrqs::decode(p).map(drop),
        cmd::REGION_READ => RegionAccess::decode_read(p, max_xfer).map(drop),
        cmd::REGION_WRITE => RegionAccess::decode_write(p, max_xfer).map(drop),
        cmd::REGION_WRITE_MULTI => decode_write_multi(p).map(drop),
        cmd::DEVICE_FEATURE => {
            let f = Feature::decode(p)?;
            match f.index {
                FEATURE_DMA_LOGGING_START => LoggingStart::decode(f.data).map(drop),
                FEATURE_DMA_LOGGING_REPORT => LoggingReport::decode(f.data).map(drop),
                _ => Ok(()),
            }
        }
        cmd::MIG_DATA_READ => MigData::decode_read(p, max_xfer).map(drop),
        cmd::MIG_DATA_WRITE => MigData::decode_write(p, max_xfer).map(drop),
        cmd::DMA_READ => DmaLayout::Spec.decode(p, false, max_xfer).map(drop),
        cmd::DMA_WRITE => DmaLayout::Spec.decode(p, true, max_xfer).map(drop),
        cmd::DEVICE_RESET => Ok(()),
        _ => Err(WireError::errno_with(Errno::ENOSYS, "unknown command")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_validates() {
        let h = Header {
            msg_id: 7,
            command: cmd::REGION_READ,
            msg_size: 32,
            flags: flags::NO_REPLY,
            error: 0,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        assert!(h.validate(64).is_ok());
        assert!(Header { msg_size: 15, ..h }.validate(64).is_err());
        assert_eq!(
            Header { msg_size: 65, ..h }
                .validate(64)
                .unwrap_err()
                .errno(),
            Errno::E2BIG
        );
        assert!(Header { flags: 2, ..h }.validate(64).is_err());
        assert!(Header { flags: 1 << 6, ..h }.validate(64).is_err());
    }

    #[test]
    fn qemu_version_json_is_accepted() {
        let json = br#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true,"unknown":[1]}}"#;
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(json);
        p.push(0);
        let v = Version::decode(&p).unwrap();
        assert_eq!(v.caps.max_msg_fds, 16);
        assert!(v.caps.write_multiple);
        assert_eq!(v.caps.migration, Some((4096, 268435456)));
        // Round trip through our encoder.
        assert_eq!(Version::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn bad_version_json_is_rejected() {
        for bad in [
            &br#"{"capabilities":{}}"#[..],                          // no NUL
            &b"{\"capabilities\":{\0"[..],                           // malformed
            &b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0"[..],    // wrong type
            &b"{\"capabilities\":{\"migration\":4096}}\0"[..],       // not an object
            &b"[1]\0"[..],                                           // not an object
            &b"{\"capabilities\":{\"max_data_xfer_size\":0}}\0"[..], // zero
        ] {
            let mut p = vec![0, 0, 2, 0];
            p.extend_from_slice(bad);
            assert_eq!(Version::decode(&p).unwrap_err().errno(), Errno::EINVAL);
        }
        // Absent capabilities take their defaults.
        let v = Version::decode(&[0, 0, 2, 0]).unwrap();
        assert_eq!(v.caps, Caps::default());
    }

    #[test]
    fn set_irqs_bool_data_is_bounded_by_the_payload() {
        let mut p = SetIrqs::encode(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK, 2, 0, 2, &[true]);
        assert!(SetIrqs::decode(&p).is_err());
        p.push(0);
        let s = SetIrqs::decode(&p).unwrap();
        assert_eq!(s.data, IrqData::Bool(vec![true, false]));
        let huge = SetIrqs::encode(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK, 2, 0, u32::MAX, &[]);
        assert!(SetIrqs::decode(&huge).is_err());
        let two_actions = SetIrqs::encode(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK,
            0,
            0,
            1,
            &[],
        );
        assert!(SetIrqs::decode(&two_actions).is_err());
    }

    #[test]
    fn dma_layouts_differ_exactly_as_qemu_expects() {
        let q = DmaLayout::Qemu.encode(0x1000, 4, &[1, 2, 3, 4]);
        // QEMU: u32 count at payload 8, data at 12, total payload 16 + count.
        assert_eq!(q.len(), 20);
        assert_eq!(&q[8..12], &4u32.to_le_bytes());
        assert_eq!(&q[12..16], &[1, 2, 3, 4]);
        let s = DmaLayout::Spec.encode(0x1000, 4, &[1, 2, 3, 4]);
        assert_eq!(&s[8..16], &4u64.to_le_bytes());
        assert_eq!(&s[16..20], &[1, 2, 3, 4]);
        assert_eq!(
            DmaLayout::Qemu.decode(&q, true, 1 << 20).unwrap(),
            (0x1000, 4, &[1u8, 2, 3, 4][..])
        );
    }

    #[test]
    fn feature_generic_checks_follow_the_kernel() {
        let enc = |argsz: u32, flags: u32| Feature::encode(argsz, flags, &[]);
        assert!(Feature::decode(&enc(7, FEATURE_GET | 1)).is_err());
        assert!(Feature::decode(&enc(8, (1 << 19) | 1)).is_err());
        assert!(Feature::decode(&enc(8, FEATURE_GET | FEATURE_SET | 1)).is_err());
        assert!(Feature::decode(&enc(8, FEATURE_GET | FEATURE_SET | FEATURE_PROBE | 1)).is_ok());
        let b = enc(8, FEATURE_GET | 1);
        let g = Feature::decode(&b).unwrap();
        assert!(g.check(FEATURE_GET, 8).is_err()); // argsz too small
        let b = enc(8, 1);
        let none = Feature::decode(&b).unwrap();
        assert!(none.check(FEATURE_GET, 0).is_err());
        let b = enc(8, FEATURE_PROBE | FEATURE_SET | 1);
        let probe = Feature::decode(&b).unwrap();
        assert!(probe.check(FEATURE_GET, 0).is_err()); // SET unsupported
        assert_eq!(probe.check(FEATURE_GET | FEATURE_SET, 0), Ok(false));
        assert!(Feature::decode(&[8, 0, 0, 0]).is_err());
    }

    #[test]
    fn logging_start_rejects_bad_ranges() {
        let mk = |ps: u64, r: Vec<(u64, u64)>| {
            LoggingStart::decode(
                &LoggingStart {
                    page_size: ps,
                    ranges: r,
                }
                .encode(),
            )
        };
        assert!(mk(0, vec![]).is_err());
        assert!(mk(4096 + 1, vec![]).is_err());
        assert!(mk(4096, vec![]).is_ok());
        assert!(mk(4096, vec![(1, 4096)]).is_err());
        assert!(mk(4096, vec![(0, 8192), (4096, 4096)]).is_err());
        assert_eq!(
            mk(4096, vec![(u64::MAX - 4095, 8192)]).unwrap_err().errno(),
            Errno::EOVERFLOW
        );
        // The count claims more ranges than the payload holds.
        let mut p = LoggingStart {
            page_size: 4096,
            ranges: vec![(0, 4096)],
        }
        .encode();
        p[8] = 2;
        assert!(LoggingStart::decode(&p).is_err());
    }

    #[test]
    fn region_write_and_mig_data_need_every_byte() {
        let a = RegionAccess {
            offset: 0,
            region: 0,
            count: 8,
        };
        let mut p = a.encode(&[0; 7]);
        assert!(RegionAccess::decode_write(&p, 1 << 20).is_err());
        p.push(0);
        assert!(RegionAccess::decode_write(&p, 1 << 20).is_ok());
        assert!(RegionAccess::decode_write(&p, 4).is_err());
        let m = MigData { argsz: 12, size: 4 };
        assert!(MigData::decode_write(&m.encode(&[]), 1 << 20).is_err());
        assert!(MigData::decode_write(&m.encode(&[1, 2, 3, 4]), 1 << 20).is_ok());
        assert!(
            MigData::decode_read(&MigData { argsz: 11, size: 4 }.encode(&[]), 1 << 20).is_err()
        );
        assert!(MigData::decode_read(&[0; 7], 1 << 20).is_err());
    }
}

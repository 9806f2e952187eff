//! A vfio-user client with a typed call for every command, for the VMM and
//! the tests.
//!
//! Blocking: each call sends its request and waits for the reply with the
//! same message id. A reader thread receives replies and serves the
//! server's DMA_READ/DMA_WRITE requests from memory registered with
//! [`Client::dma_map_message`] (regions mapped without an fd), in the layout the
//! negotiated version implies (minor 0: QEMU's, otherwise the
//! specification's; see [`DmaLayout`]).

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tracing::debug;

use crate::session::{irq_index, region};
use crate::wire::{self, CapKeys, Caps, DmaLayout, HEADER_LEN, Header, Version, cmd, flags};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O failed.
    #[error("socket I/O failed")]
    Io(
        #[from]
        #[source]
        io::Error,
    ),
    /// The server answered with an error.
    #[error("server refused command {command} with {errno}")]
    Remote {
        /// Command.
        command: u16,
        /// errno of the reply.
        errno: Errno,
    },
    /// The reply is malformed.
    #[error("bad reply: {0}")]
    Protocol(String),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

impl ClientError {
    /// The errno of a [`ClientError::Remote`].
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Remote { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Result of client calls.
pub type ClientResult<T> = Result<T, ClientError>;

/// A reply as received.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Header.
    pub hdr: Header,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Client-side memory served to the server by DMA_READ/DMA_WRITE.
pub type SharedMemory = Arc<Mutex<Vec<u8>>>;

#[derive(Debug, Default)]
struct Inner {
    pending: Mutex<HashMap<u16, mpsc::SyncSender<Reply>>>,
    memory: Mutex<Vec<(u64, SharedMemory)>>,
    layout: Mutex<Option<DmaLayout>>,
    dma_requests: AtomicU16,
    /// See [`Client::emulate_qemu_lock`].
    qemu_lock_on: AtomicBool,
    qemu_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    writer: Arc<Mutex<UnixStream>>,
    inner: Arc<Inner>,
    next_id: AtomicU16,
    reader: Option<JoinHandle<()>>,
    timeout: Duration,
    version: Option<Version>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn write_message(s: &mut UnixStream, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut pos = 0;
    if !fds.is_empty() {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [IoSlice::new(msg)];
        pos = sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(io::Error::from)?;
    }
    s.write_all(&msg[pos..])
}

fn read_one(s: &mut UnixStream) -> io::Result<(Header, Vec<u8>)> {
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb)?;
    let h = Header::parse(&hb);
    h.validate(u32::MAX)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let len = h.payload_len();
    if len > (64 << 20) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too large",
        ));
    }
    // Read into spare capacity: a large payload (MIG_DATA_READ) is not
    // zeroed first only to be overwritten.
    let mut p = Vec::with_capacity(len);
    s.take(len as u64).read_to_end(&mut p)?;
    if p.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a message",
        ));
    }
    Ok((h, p))
}

fn serve_dma(inner: &Inner, h: &Header, p: &[u8]) -> Vec<u8> {
    inner.dma_requests.fetch_add(1, Ordering::Relaxed);
    let layout = lock(&inner.layout).unwrap_or(DmaLayout::Spec);
    let write = h.command == cmd::DMA_WRITE;
    let err = |e: Errno| Header::error_to(h, e).encode().to_vec();
    let Ok((addr, count, data)) = layout.decode(p, write, 64 << 20) else {
        return err(Errno::EINVAL);
    };
    let mem = lock(&inner.memory);
    let Some((base, m)) = mem
        .iter()
        .find(|(b, m)| addr >= *b && addr + count <= *b + lock(m).len() as u64)
    else {
        return err(Errno::EFAULT);
    };
    let o = (addr - base) as usize;
    let n = count as usize;
    let mut m = lock(m);
    let payload = if write {
        m[o..o + n].copy_from_slice(data);
        Vec::new()
    } else {
        layout.encode(addr, count, &m[o..o + n])
    };
    let mut out = Header::reply_to(h, payload.len()).encode().to_vec();
    out.extend_from_slice(&payload);
    out
}

impl Client {
    /// Connects to the server at `path` (no negotiation yet).
    pub fn connect(path: &Path) -> ClientResult<Client> {
        Self::from_stream(UnixStream::connect(path)?)
    }

    /// Wraps a connected stream.
    pub fn from_stream(s: UnixStream) -> ClientResult<Client> {
        let mut rd = s.try_clone()?;
        let writer = Arc::new(Mutex::new(s));
        let inner = Arc::new(Inner::default());
        let i2 = inner.clone();
        // The server's requests are served in order on their own thread, so
        // the reader always routes replies (as QEMU's I/O thread does).
        let (req_tx, req_rx) = mpsc::channel::<(Header, Vec<u8>)>();
        let (w3, i3) = (writer.clone(), inner.clone());
        std::thread::Builder::new()
            .name("vfio-user-client-dma".into())
            .spawn(move || {
                while let Ok((h, p)) = req_rx.recv() {
                    let r = {
                        let _big = i3
                            .qemu_lock_on
                            .load(Ordering::Acquire)
                            .then(|| lock(&i3.qemu_lock));
                        match h.command {
                            cmd::DMA_READ | cmd::DMA_WRITE => serve_dma(&i3, &h, &p),
                            _ => Header::error_to(&h, Errno::ENOSYS).encode().to_vec(),
                        }
                    };
                    if !h.no_reply() && write_message(&mut lock(&w3), &r, &[]).is_err() {
                        break;
                    }
                }
            })?;
        let reader = std::thread::Builder::new()
            .name("vfio-user-client".into())
            .spawn(move || {
                while let Ok((h, p)) = read_one(&mut rd) {
                    if h.is_reply() {
                        if let Some(tx) = lock(&i2.pending).remove(&h.msg_id) {
                            let _ = tx.send(Reply { hdr: h, payload: p });
                        } else {
                            debug!(msg_id = h.msg_id, "unexpected reply");
                        }
                    } else if req_tx.send((h, p)).is_err() {
                        break;
                    }
                }
                lock(&i2.pending).clear();
            })?;
        Ok(Client {
            writer,
            inner,
            next_id: AtomicU16::new(1),
            reader: Some(reader),
            timeout: Duration::from_secs(30),
            version: None,
        })
    }

    /// Sets the reply timeout.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Behaves like QEMU's client towards server-initiated DMA: a
    /// REGION_READ/REGION_WRITE holds one "big lock" until its reply comes
    /// (a vCPU holding the BQL), and the server's DMA_READ/DMA_WRITE
    /// requests are served only under that lock (QEMU's main-loop bottom
    /// half). A server that answers MMIO only after its own DMA is answered
    /// then stalls until the timeout, as it would with QEMU.
    pub fn emulate_qemu_lock(&self, on: bool) {
        self.inner.qemu_lock_on.store(on, Ordering::Release);
    }

    /// The negotiated version, after [`Client::negotiate`].
    pub fn version(&self) -> Option<&Version> {
        self.version.as_ref()
    }

    /// Number of DMA_READ/DMA_WRITE requests the server sent us so far.
    pub fn dma_requests(&self) -> u16 {
        self.inner.dma_requests.load(Ordering::Relaxed)
    }

    /// Sends raw bytes (for hostile-input tests).
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> ClientResult<()> {
        Ok(write_message(&mut lock(&self.writer), bytes, fds)?)
    }

    /// Sends a message with an explicit header and waits for the reply with
    /// its id, whatever it says.
    pub fn transact(
        &self,
        command: u16,
        hflags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> ClientResult<Option<Reply>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let h = Header {
            msg_id: id,
            command,
            msg_size: (HEADER_LEN + payload.len()) as u32,
            flags: hflags,
            error: 0,
        };
        let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
        m.extend_from_slice(&h.encode());
        m.extend_from_slice(payload);
        if hflags & flags::NO_REPLY != 0 {
            self.send_raw(&m, fds)?;
            return Ok(None);
        }
        let _big = (self.inner.qemu_lock_on.load(Ordering::Acquire)
            && matches!(command, cmd::REGION_READ | cmd::REGION_WRITE))
        .then(|| lock(&self.inner.qemu_lock));
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&self.inner.pending).insert(id, tx);
        if let Err(e) = self.send_raw(&m, fds) {
            lock(&self.inner.pending).remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(self.timeout) {
            Ok(r) => {
                if r.hdr.command != command {
                    return Err(ClientError::Protocol(format!(
                        "reply to {} carries command {}",
                        command, r.hdr.command
                    )));
                }
                Ok(Some(r))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.inner.pending).remove(&id);
                Err(ClientError::Timeout(self.timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Closed),
        }
    }

    /// Sends a command and returns the reply payload, or the server's errno.
    pub fn request(
        &self,
        command: u16,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> ClientResult<Vec<u8>> {
        let r = self
            .transact(command, flags::TYPE_COMMAND, payload, fds)?
            .ok_or(ClientError::Closed)?;
        if r.hdr.flags & flags::ERROR != 0 {
            return Err(ClientError::Remote {
                command,
                errno: Errno::from_raw(r.hdr.error as i32),
            });
        }
        Ok(r.payload)
    }

    /// Sends a command with NO_REPLY (a posted write).
    pub fn post(&self, command: u16, payload: &[u8]) -> ClientResult<()> {
        self.transact(command, flags::NO_REPLY, payload, &[])
            .map(drop)
    }

    /// VERSION with `minor` and `caps`; returns the server's answer.
    pub fn negotiate(&mut self, minor: u16, caps: Caps) -> ClientResult<Version> {
        let req = Version {
            major: wire::VERSION_MAJOR,
            minor,
            caps,
            has_json: true,
        };
        let p = self.request(cmd::VERSION, &req.encode(), &[])?;
        let v = Version::decode(&p).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if v.major != 0 || v.minor > minor {
            return Err(ClientError::Protocol(format!(
                "server answered version {}.{}",
                v.major, v.minor
            )));
        }
        *lock(&self.inner.layout) = Some(DmaLayout::Spec);
        self.version = Some(v.clone());
        Ok(v)
    }

    /// VERSION 0.2 with the capabilities QEMU offers.
    pub fn negotiate_default(&mut self) -> ClientResult<Version> {
        self.negotiate(
            2,
            Caps {
                max_msg_fds: 16,
                migration: Some((4096, 256 << 20)),
                write_multiple: true,
                named: CapKeys::all(),
                ..Caps::default()
            },
        )
    }

    fn max_xfer(&self) -> u64 {
        self.version
            .as_ref()
            .map_or(1 << 20, |v| v.caps.max_data_xfer_size)
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&self) -> ClientResult<wire::DeviceInfoReply> {
        let p = self.request(
            cmd::DEVICE_GET_INFO,
            &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
        )?;
        wire::DeviceInfoReply::decode(&p).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// DEVICE_GET_REGION_INFO with `argsz`; returns the info and the
    /// capability bytes (offsets relative to the info start).
    pub fn region_info_argsz(
        &self,
        index: u32,
        argsz: u32,
    ) -> ClientResult<(wire::RegionInfo, Vec<u8>)> {
        let req = wire::RegionInfo {
            argsz,
            index,
            ..Default::default()
        };
        let p = self.request(cmd::DEVICE_GET_REGION_INFO, &req.encode(), &[])?;
        if p.len() > argsz as usize {
            return Err(ClientError::Protocol(
                "region info larger than argsz".into(),
            ));
        }
        let info =
            wire::RegionInfo::decode(&p).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((info, p))
    }

    /// DEVICE_GET_REGION_INFO, retrying with the size the server asks for.
    pub fn region_info(&self, index: u32) -> ClientResult<(wire::RegionInfo, Vec<u8>)> {
        let (info, p) = self.region_info_argsz(index, wire::RegionInfo::LEN as u32)?;
        if info.argsz as usize > wire::RegionInfo::LEN {
            return self.region_info_argsz(index, info.argsz.min(4096));
        }
        Ok((info, p))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&self, index: u32) -> ClientResult<wire::IrqInfo> {
        let req = wire::IrqInfo {
            argsz: wire::IrqInfo::LEN as u32,
            flags: 0,
            index,
            count: 0,
        };
        let p = self.request(cmd::DEVICE_GET_IRQ_INFO, &req.encode(), &[])?;
        wire::IrqInfo::decode(&p).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// DEVICE_SET_IRQS.
    pub fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        bools: &[bool],
        fds: &[BorrowedFd<'_>],
    ) -> ClientResult<()> {
        let p = wire::SetIrqs::encode(flags, index, start, count, bools);
        self.request(cmd::DEVICE_SET_IRQS, &p, fds).map(drop)
    }

    /// Assigns eventfds to MSI-X vectors `start..`.
    pub fn msix_eventfds(&self, start: u32, fds: &[BorrowedFd<'_>]) -> ClientResult<()> {
        self.set_irqs(
            wire::IRQ_SET_DATA_EVENTFD | wire::IRQ_SET_ACTION_TRIGGER,
            irq_index::MSIX,
            start,
            fds.len() as u32,
            &[],
            fds,
        )
    }

    /// REGION_READ.
    pub fn region_read(&self, region: u32, offset: u64, count: u32) -> ClientResult<Vec<u8>> {
        let a = wire::RegionAccess {
            offset,
            region,
            count,
        };
        let p = self.request(cmd::REGION_READ, &a.encode(&[]), &[])?;
        let data = p.get(16..).unwrap_or_default();
        if data.len() != count as usize {
            return Err(ClientError::Protocol(format!(
                "REGION_READ returned {} bytes for {count}",
                data.len()
            )));
        }
        Ok(data.to_vec())
    }

    /// REGION_WRITE (waits for the reply).
    pub fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> ClientResult<()> {
        let a = wire::RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        };
        self.request(cmd::REGION_WRITE, &a.encode(data), &[])
            .map(drop)
    }

    /// REGION_WRITE with NO_REPLY (QEMU's posted MMIO write).
    pub fn region_write_posted(&self, region: u32, offset: u64, data: &[u8]) -> ClientResult<()> {
        let a = wire::RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        };
        self.post(cmd::REGION_WRITE, &a.encode(data))
    }

    /// REGION_WRITE_MULTI (posted, as QEMU sends it).
    pub fn region_write_multi(&self, entries: &[wire::MultiEntry]) -> ClientResult<()> {
        self.post(cmd::REGION_WRITE_MULTI, &wire::encode_write_multi(entries))
    }

    /// Reads a 32-bit register of BAR0.
    pub fn read32(&self, offset: u64) -> ClientResult<u32> {
        let d = self.region_read(region::BAR0, offset, 4)?;
        let mut b = [0u8; 4];
        b.copy_from_slice(&d);
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a 32-bit register of BAR0 (synchronously).
    pub fn write32(&self, offset: u64, v: u32) -> ClientResult<()> {
        self.region_write(region::BAR0, offset, &v.to_le_bytes())
    }

    /// Reads config space.
    pub fn config_read(&self, offset: u64, count: u32) -> ClientResult<Vec<u8>> {
        self.region_read(region::CONFIG, offset, count)
    }

    /// Writes config space.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> ClientResult<()> {
        self.region_write(region::CONFIG, offset, data)
    }

    /// Sets memory-space and bus-master enable in the command register.
    pub fn enable_bus_master(&self) -> ClientResult<()> {
        let c = self.config_read(4, 2)?;
        let v =
            u16::from_le_bytes([c[0], c[1]]) | crate::pci::CMD_MEMORY | crate::pci::CMD_BUS_MASTER;
        self.config_write(4, &v.to_le_bytes())
    }

    /// DMA_MAP of `size` bytes of `fd` at `offset` to `address`.
    pub fn dma_map_fd(
        &self,
        fd: BorrowedFd<'_>,
        offset: u64,
        address: u64,
        size: u64,
    ) -> ClientResult<()> {
        let m = wire::DmaMap {
            argsz: wire::DmaMap::LEN as u32,
            flags: wire::DMA_FLAG_READ | wire::DMA_FLAG_WRITE,
            offset,
            address,
            size,
        };
        self.request(cmd::DMA_MAP, &m.encode(), &[fd]).map(drop)
    }

    /// Registers `len` bytes of client memory at `address` and maps them
    /// without an fd: the server reaches them with DMA_READ/DMA_WRITE.
    pub fn dma_map_message(&self, address: u64, len: usize) -> ClientResult<SharedMemory> {
        let mem: SharedMemory = Arc::new(Mutex::new(vec![0u8; len]));
        lock(&self.inner.memory).push((address, mem.clone()));
        let m = wire::DmaMap {
            argsz: wire::DmaMap::LEN as u32,
            flags: wire::DMA_FLAG_READ | wire::DMA_FLAG_WRITE,
            offset: 0,
            address,
            size: len as u64,
        };
        self.request(cmd::DMA_MAP, &m.encode(), &[])?;
        Ok(mem)
    }

    /// DMA_UNMAP of one mapping.
    pub fn dma_unmap(&self, address: u64, size: u64) -> ClientResult<()> {
        let m = wire::DmaUnmap {
            argsz: wire::DmaUnmap::LEN as u32,
            flags: 0,
            address,
            size,
        };
        self.request(cmd::DMA_UNMAP, &m.encode(), &[])?;
        lock(&self.inner.memory).retain(|(b, _)| *b != address);
        Ok(())
    }

    /// DMA_UNMAP with the ALL flag, as QEMU sends it.
    pub fn dma_unmap_all(&self) -> ClientResult<()> {
        let m = wire::DmaUnmap {
            argsz: wire::DmaUnmap::LEN as u32,
            flags: wire::DMA_UNMAP_ALL,
            address: 0,
            size: 0,
        };
        self.request(cmd::DMA_UNMAP, &m.encode(), &[])?;
        lock(&self.inner.memory).clear();
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&self) -> ClientResult<()> {
        self.request(cmd::DEVICE_RESET, &[], &[]).map(drop)
    }

    /// DEVICE_FEATURE with raw flags and data; returns the reply payload.
    pub fn feature(&self, argsz: u32, fflags: u32, data: &[u8]) -> ClientResult<Vec<u8>> {
        self.request(
            cmd::DEVICE_FEATURE,
            &wire::Feature::encode(argsz, fflags, data),
            &[],
        )
    }

    /// GET MIGRATION: the advertised flags.
    pub fn migration_flags(&self) -> ClientResult<u64> {
        let p = self.feature(16, wire::FEATURE_GET | wire::FEATURE_MIGRATION, &[])?;
        wire::Reader::new(&p, "MIGRATION")
            .u64(8)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// GET MIG_DEVICE_STATE.
    pub fn mig_state(&self) -> ClientResult<u32> {
        let p = self.feature(
            16,
            wire::FEATURE_GET | wire::FEATURE_MIG_DEVICE_STATE,
            &[0; 8],
        )?;
        let r = wire::Reader::new(&p, "MIG_DEVICE_STATE");
        let state = r.u32(8).map_err(|e| ClientError::Protocol(e.to_string()))?;
        // vfio-user passes no data fd: the field must read -1.
        let fd = r
            .u32(12)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if fd != u32::MAX {
            return Err(ClientError::Protocol(format!(
                "MIG_DEVICE_STATE reply: data_fd {fd:#x}, expected 0xffffffff"
            )));
        }
        Ok(state)
    }

    /// SET MIG_DEVICE_STATE.
    pub fn set_mig_state(&self, state: u32) -> ClientResult<()> {
        let mut d = state.to_le_bytes().to_vec();
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        self.feature(16, wire::FEATURE_SET | wire::FEATURE_MIG_DEVICE_STATE, &d)
            .map(drop)
    }

    /// GET MIG_DATA_SIZE.
    pub fn mig_data_size(&self) -> ClientResult<u64> {
        let p = self.feature(16, wire::FEATURE_GET | wire::FEATURE_MIG_DATA_SIZE, &[])?;
        wire::Reader::new(&p, "MIG_DATA_SIZE")
            .u64(8)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// SET DMA_LOGGING_START.
    pub fn dma_logging_start(&self, page_size: u64, ranges: &[(u64, u64)]) -> ClientResult<()> {
        let d = wire::LoggingStart {
            page_size,
            ranges: ranges.to_vec(),
        }
        .encode();
        self.feature(
            8 + d.len() as u32,
            wire::FEATURE_SET | wire::FEATURE_DMA_LOGGING_START,
            &d,
        )
        .map(drop)
    }

    /// SET DMA_LOGGING_STOP.
    pub fn dma_logging_stop(&self) -> ClientResult<()> {
        self.feature(8, wire::FEATURE_SET | wire::FEATURE_DMA_LOGGING_STOP, &[])
            .map(drop)
    }

    /// GET DMA_LOGGING_REPORT: the bitmap (u64 words) of pages written.
    pub fn dma_logging_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> ClientResult<Vec<u64>> {
        let d = wire::LoggingReport {
            iova,
            length,
            page_size,
        }
        .encode();
        let words = (length / page_size).div_ceil(64) as usize;
        let argsz = (8 + 24 + words * 8) as u32;
        let p = self.feature(
            argsz,
            wire::FEATURE_GET | wire::FEATURE_DMA_LOGGING_REPORT,
            &d,
        )?;
        let bm = p
            .get(32..)
            .ok_or_else(|| ClientError::Protocol("short REPORT".into()))?;
        Ok(bm
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect())
    }

    /// MIG_DATA_READ of at most `size` bytes (fewer: end of data).
    pub fn mig_data_read(&self, size: u32) -> ClientResult<Vec<u8>> {
        let m = wire::MigData {
            argsz: 8 + size,
            size,
        };
        let p = self.request(cmd::MIG_DATA_READ, &m.encode(&[]), &[])?;
        let r = wire::Reader::new(&p, "MIG_DATA_READ reply");
        let n = r.u32(4).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if n > size {
            return Err(ClientError::Protocol(
                "MIG_DATA_READ returned more than asked".into(),
            ));
        }
        r.bytes(8, n as usize)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut p = p;
        p.truncate(8 + n as usize);
        p.drain(..8);
        Ok(p)
    }

    /// MIG_DATA_WRITE of `data` (split at the negotiated transfer size).
    pub fn mig_data_write(&self, data: &[u8]) -> ClientResult<()> {
        for c in data.chunks(self.max_xfer() as usize) {
            let m = wire::MigData {
                argsz: 8 + c.len() as u32,
                size: c.len() as u32,
            };
            self.request(cmd::MIG_DATA_WRITE, &m.encode(c), &[])?;
        }
        Ok(())
    }

    /// Reads the whole save stream in `chunk`-byte reads until a short read.
    pub fn mig_read_all(&self, chunk: u32) -> ClientResult<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let d = self.mig_data_read(chunk)?;
            let short = d.len() < chunk as usize;
            out.extend_from_slice(&d);
            if short {
                return Ok(out);
            }
        }
    }
}

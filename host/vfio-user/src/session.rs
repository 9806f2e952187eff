//! The command handler of one client session: a synchronous state machine
//! from (header, payload, fds) to a reply, with every payload validated
//! before use. The async transport ([`crate::server`]) and the session
//! fuzz target both drive it.
//!
//! The device and everything that changes with it (migration engine, v1
//! region) sit in one [`DevCore`] behind a mutex shared with the runner
//! thread that lets the device make progress; [`Session::handle`] receives
//! that lock already taken, so the caller decides where it may block.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use tracing::{debug, warn};
use vfpga_device::{Bar, Device, DeviceError, DeviceInfo, DmaFault, DmaPort, GuestMemory, Perm};
use vfpga_migration::dirty::{DirtyError, LogSource};
use vfpga_migration::fsm::FsmError;
use vfpga_migration::v1::{V1Error, V1Region};
use vfpga_migration::{ArcError, EngineConfig, EngineError, MigrationEngine};
use vfpga_regs::{consts, offsets};

use crate::irq::{self, IrqHub};
use crate::pci::{self, ConfigSpace};
use crate::remote::{DmaLink, RemoteMemory};
use crate::wire::{self, HEADER_LEN, Header, WireError, cmd};

/// Largest data transfer this server accepts or sends (REGION_READ/WRITE
/// count, MIG_DATA size, DMA message data).
pub const SERVER_MAX_XFER: u64 = 1 << 20;
/// Largest message this server accepts.
pub const SERVER_MAX_MSG: u32 = (SERVER_MAX_XFER as u32) + 4096 + 64;
/// Most fds per message this server accepts.
pub const SERVER_MAX_FDS: u32 = 8;
/// Most DMA mappings at once, whatever the host allows (the protocol's
/// default `max_dma_maps`).
pub const SERVER_MAX_DMA_MAPS: usize = 65535;
/// How long a message may take to arrive once its first byte has.
pub const SERVER_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What one client may use of the server. Exceeding a limit is an error
/// reply (or, for a message that cannot be framed or that stalls, the end of
/// that connection), never a dead server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, header included ([`SERVER_MAX_MSG`]).
    pub max_msg: u32,
    /// Most fds one message may carry ([`SERVER_MAX_FDS`]).
    pub max_fds: usize,
    /// Most DMA mappings at once (each is one memory mapping of the
    /// process, so it derives from the kernel's `vm.max_map_count`).
    pub max_dma_maps: usize,
    /// A message whose first byte arrived must be complete within this.
    pub message_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_msg: SERVER_MAX_MSG,
            max_fds: SERVER_MAX_FDS as usize,
            max_dma_maps: SERVER_MAX_DMA_MAPS,
            message_timeout: SERVER_MESSAGE_TIMEOUT,
        }
    }
}

impl Limits {
    /// The defaults, with `max_dma_maps` cut to what the host can map: half
    /// of the memory mappings `vm.max_map_count` leaves after those this
    /// process already has and 4,096 of headroom (threads, allocator,
    /// libraries). A mapping whose file later shrinks may split into three.
    pub fn from_host() -> Self {
        let mut l = Limits::default();
        let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        let used = std::fs::read_to_string("/proc/self/maps")
            .map(|s| s.lines().count())
            .ok();
        if let (Some(max), Some(used)) = (max, used) {
            l.max_dma_maps = l
                .max_dma_maps
                .min(max.saturating_sub(used + 4096) / 2)
                .max(1);
        }
        l
    }
}

/// vfio-pci region indexes.
pub mod region {
    /// BAR0: registers, MSI-X table and PBA.
    pub const BAR0: u32 = 0;
    /// BAR2: device memory.
    pub const BAR2: u32 = 2;
    /// Expansion ROM (absent).
    pub const ROM: u32 = 6;
    /// Configuration space.
    pub const CONFIG: u32 = 7;
    /// VGA (absent).
    pub const VGA: u32 = 8;
    /// The v1 migration region (device specific, as libvfio-user numbers it).
    pub const MIGRATION: u32 = 9;
    /// Number of regions.
    pub const COUNT: u32 = 10;
}

/// vfio-pci IRQ indexes.
pub mod irq_index {
    /// INTx.
    pub const INTX: u32 = 0;
    /// MSI (not offered: count 0).
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// Error notification (count 0).
    pub const ERR: u32 = 3;
    /// Device request (count 0).
    pub const REQ: u32 = 4;
    /// Number of IRQ indexes.
    pub const COUNT: u32 = 5;
}

/// The device and its migration machinery, behind one lock.
pub struct DevCore {
    /// The device.
    pub dev: Box<dyn Device>,
    /// The v2 engine (also behind v1 and DMA logging).
    pub engine: MigrationEngine,
    /// The v1 migration region.
    pub v1: V1Region,
}

impl std::fmt::Debug for DevCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCore")
            .field("info", &self.dev.info())
            .field("engine", &self.engine)
            .field("v1", &self.v1)
            .finish()
    }
}

/// What survives a client: config space, IRQ hub, DMA port. (The device
/// state lives in [`DevCore`].)
#[derive(Debug)]
pub struct Shared {
    /// Emulated config space.
    pub config: std::sync::Mutex<ConfigSpace>,
    /// Interrupt delivery.
    pub irq: Arc<IrqHub>,
    /// Guest memory as the device sees it.
    pub dma: DmaPort,
    /// Bus-master gate (command register bit 2).
    pub gate: Arc<AtomicBool>,
    /// Device geometry.
    pub info: DeviceInfo,
    /// What a client may use.
    pub limits: Limits,
    /// The device reaches guest memory beside the port (a board, through
    /// its IOMMU): DMA_MAP keeps each mapping's file open so the board can
    /// map it too ([`vfpga_device::MmapMemory::map_file_shared`]).
    pub share_files: bool,
}

impl Shared {
    fn config(&self) -> std::sync::MutexGuard<'_, ConfigSpace> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds the [`DevCore`] and [`Shared`] halves for `dev`, which must have
/// been created with `dma` as its DMA port and `irq` as its IRQ sink.
pub fn build(
    dev: Box<dyn Device>,
    dma: DmaPort,
    irq: Arc<IrqHub>,
    limits: Limits,
) -> (DevCore, Shared) {
    let info = dev.info();
    let share_files = !dev.dma_through_port();
    let config = ConfigSpace::new(
        info.identity.vendor_id,
        info.identity.device_id,
        u32::try_from(info.bar0_size).unwrap_or(consts::BAR0_SIZE),
        info.bar2_size,
    );
    let engine = MigrationEngine::new(EngineConfig {
        dma: Some(dma.clone()),
    });
    (
        DevCore {
            dev,
            engine,
            v1: V1Region::default(),
        },
        Shared {
            config: std::sync::Mutex::new(config),
            irq,
            dma,
            gate: Arc::new(AtomicBool::new(false)),
            info,
            limits,
            share_files,
        },
    )
}

/// Guest memory behind the bus-master gate: refused while the command
/// register's bus-master bit is clear.
#[derive(Debug)]
pub struct Gated {
    inner: Arc<dyn GuestMemory>,
    gate: Arc<AtomicBool>,
}

impl Gated {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn GuestMemory>, gate: Arc<AtomicBool>) -> Self {
        Gated { inner, gate }
    }
    fn check(&self, offset: u64) -> Result<(), DmaFault> {
        if self.gate.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(DmaFault::Backing {
                iova: offset,
                reason: "bus mastering is disabled in the command register".into(),
            })
        }
    }
}

impl GuestMemory for Gated {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        self.check(offset)?;
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.check(offset)?;
        self.inner.write(offset, data)
    }
    fn may_pend(&self) -> bool {
        self.inner.may_pend()
    }
    fn wait_pending(&self, timeout: std::time::Duration) {
        self.inner.wait_pending(timeout);
    }
    /// Shared memory stays reachable for a board, which maps it into its
    /// IOMMU (the gate applies to accesses through this wrapper only).
    fn host_addr(&self) -> Option<std::ptr::NonNull<u8>> {
        self.inner.host_addr()
    }
    fn shared_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        self.inner.shared_file()
    }
}

/// The session's answer to one message.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The whole reply message (header included), unless the command asked
    /// for none.
    pub reply: Option<Vec<u8>>,
    /// The device may have work now: wake the runner.
    pub wake: bool,
    /// A new INTx resample eventfd to watch (`Some(None)`: stop watching).
    pub resample: Option<Option<OwnedFd>>,
}

/// Whether a command may run device steps (state changes, migration data,
/// reset, the v1 region's `device_state`), so that it must not run on an
/// I/O thread: a device step can wait on a DMA_READ/WRITE reply that only
/// the I/O thread can receive.
pub fn may_block(command: u16, payload: &[u8]) -> bool {
    match command {
        cmd::DEVICE_FEATURE | cmd::MIG_DATA_READ | cmd::MIG_DATA_WRITE | cmd::DEVICE_RESET => true,
        cmd::REGION_READ | cmd::REGION_WRITE => {
            wire::Reader::new(payload, "region access").u32(8).ok() == Some(region::MIGRATION)
        }
        cmd::REGION_WRITE_MULTI => true,
        _ => false,
    }
}

/// Negotiated parameters of a session.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// Largest data transfer in either direction.
    pub max_xfer: u64,
    /// Layout of DMA_READ/DMA_WRITE for this peer.
    pub layout: wire::DmaLayout,
}

/// Smallest sent reply a session keeps for reuse ([`Session::recycle`]).
pub const RECYCLE_MIN: usize = 64 << 10;
/// Largest small reply a session keeps for reuse ([`Session::recycle`]).
pub const SMALL_MAX: usize = 4096;

/// One client session.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    link: Option<Arc<DmaLink>>,
    neg: Option<Negotiated>,
    /// The command being handled built its reply after HEADER_LEN spare
    /// bytes (large replies, so they are not copied once more).
    head_room: bool,
    /// A sent MIG_DATA_READ reply, kept to build the next one in (a
    /// megabyte is not allocated and zeroed again for every read).
    spare: Vec<u8>,
    /// A sent small reply, kept to build the next region access's reply in
    /// (a register access then costs no allocation).
    small: Vec<u8>,
}

fn errno_of_engine(e: &EngineError) -> Errno {
    match e {
        EngineError::Transition(FsmError::Arc {
            source: ArcError::Device(_),
            ..
        }) => Errno::EIO,
        EngineError::Device(_) => Errno::EIO,
        _ => Errno::EINVAL,
    }
}

fn errno_of_v1(e: &V1Error) -> Errno {
    match e {
        V1Error::Engine(e) => errno_of_engine(e),
        _ => Errno::EINVAL,
    }
}

fn errno_of_dirty(e: &DirtyError) -> Errno {
    Errno::from_raw(e.errno())
}

fn errno_of_device(e: &DeviceError) -> Errno {
    match e {
        DeviceError::BadAccess { .. } => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

type HResult = Result<Vec<u8>, (Errno, String)>;

fn fail<T>(errno: Errno, why: impl Into<String>) -> Result<T, (Errno, String)> {
    Err((errno, why.into()))
}

impl From<WireError> for (Errno, String) {
    fn from(e: WireError) -> Self {
        (e.errno(), e.to_string())
    }
}

impl Session {
    /// A new session; `link` carries DMA_READ/WRITE to the client for
    /// regions mapped without an fd (`None`: such maps are refused).
    pub fn new(shared: Arc<Shared>, link: Option<Arc<DmaLink>>) -> Self {
        Session {
            shared,
            link,
            neg: None,
            head_room: false,
            spare: Vec::new(),
            small: Vec::new(),
        }
    }

    /// Takes back a reply once it is sent, to build the next one in: one of
    /// at least [`RECYCLE_MIN`] bytes for MIG_DATA_READ, one of at most
    /// [`SMALL_MAX`] bytes for region accesses; others are freed.
    pub fn recycle(&mut self, reply: Vec<u8>) {
        if reply.capacity() >= RECYCLE_MIN && reply.capacity() > self.spare.capacity() {
            self.spare = reply;
        } else if reply.capacity() <= SMALL_MAX {
            self.small = reply;
        }
    }

    /// A buffer of `HEADER_LEN + RegionAccess::LEN + count` bytes with the
    /// access's fixed part written after the header's room (the reply to a
    /// region access, built without another copy).
    fn region_reply(&mut self, a: &wire::RegionAccess, count: usize) -> Vec<u8> {
        let mut buf = if HEADER_LEN + wire::RegionAccess::LEN + count <= SMALL_MAX {
            std::mem::take(&mut self.small)
        } else {
            Vec::new()
        };
        buf.clear();
        buf.resize(HEADER_LEN + wire::RegionAccess::LEN + count, 0);
        let mut fixed = [0u8; wire::RegionAccess::LEN];
        a.encode_fixed(&mut fixed);
        buf[HEADER_LEN..HEADER_LEN + wire::RegionAccess::LEN].copy_from_slice(&fixed);
        self.head_room = true;
        buf
    }

    /// The negotiated parameters, once VERSION succeeded.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.neg
    }

    /// Handles one command. `fds` are the descriptors that came with it;
    /// those a command does not take are closed here.
    pub fn handle(
        &mut self,
        core: &mut DevCore,
        hdr: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Outcome {
        let mut out = Outcome::default();
        self.head_room = false;
        let res = self.dispatch(core, hdr, payload, fds, &mut out);
        let no_reply = hdr.no_reply();
        match res {
            Ok(mut p) => {
                if !no_reply && self.head_room {
                    // The payload was built after HEADER_LEN spare bytes.
                    let h = Header::reply_to(hdr, p.len() - HEADER_LEN);
                    p[..HEADER_LEN].copy_from_slice(&h.encode());
                    out.reply = Some(p);
                } else if !no_reply {
                    let h = Header::reply_to(hdr, p.len());
                    let mut m = Vec::with_capacity(HEADER_LEN + p.len());
                    m.extend_from_slice(&h.encode());
                    m.extend_from_slice(&p);
                    out.reply = Some(m);
                }
            }
            Err((errno, why)) => {
                debug!(command = hdr.command, msg_id = hdr.msg_id, %errno, "{why}");
                if no_reply {
                    warn!(command = hdr.command, %errno, "posted command failed: {why}");
                } else {
                    out.reply = Some(Header::error_to(hdr, errno).encode().to_vec());
                }
            }
        }
        out
    }

    /// An error reply for a message that could not be read whole.
    pub fn reject(hdr: &Header, e: &WireError) -> Vec<u8> {
        debug!(command = hdr.command, "rejected: {e}");
        Header::error_to(hdr, e.errno()).encode().to_vec()
    }

    fn dispatch(
        &mut self,
        core: &mut DevCore,
        hdr: &Header,
        p: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Outcome,
    ) -> HResult {
        let takes_fds = matches!(hdr.command, cmd::DMA_MAP | cmd::DEVICE_SET_IRQS);
        if !takes_fds && !fds.is_empty() {
            drop(fds);
            return fail(
                Errno::EINVAL,
                "file descriptors sent with a command that takes none",
            );
        }
        if hdr.command == cmd::VERSION {
            return self.version(p);
        }
        let Some(neg) = self.neg else {
            return fail(Errno::EINVAL, "VERSION must come first");
        };
        match hdr.command {
            cmd::DMA_MAP => self.dma_map(p, fds),
            cmd::DMA_UNMAP => self.dma_unmap(p),
            cmd::DEVICE_GET_INFO => {
                wire::decode_argsz_index(p, "GET_INFO", wire::DeviceInfoReply::LEN, None)?;
                Ok(wire::DeviceInfoReply {
                    argsz: wire::DeviceInfoReply::LEN as u32,
                    flags: wire::DEVICE_FLAGS_RESET | wire::DEVICE_FLAGS_PCI,
                    num_regions: region::COUNT,
                    num_irqs: irq_index::COUNT,
                }
                .encode())
            }
            cmd::DEVICE_GET_REGION_INFO => self.region_info(core, p),
            cmd::DEVICE_GET_IRQ_INFO => {
                let (_, index) =
                    wire::decode_argsz_index(p, "GET_IRQ_INFO", wire::IrqInfo::LEN, Some(8))?;
                let (flags, count) =
                    irq_geometry(index).ok_or((Errno::EINVAL, format!("no IRQ index {index}")))?;
                Ok(wire::IrqInfo {
                    argsz: wire::IrqInfo::LEN as u32,
                    flags,
                    index,
                    count,
                }
                .encode())
            }
            cmd::DEVICE_SET_IRQS => self.set_irqs(core, p, fds, out),
            cmd::REGION_READ => {
                let a = wire::RegionAccess::decode_read(p, neg.max_xfer)?;
                let mut buf = self.region_reply(&a, a.count as usize);
                let at = HEADER_LEN + wire::RegionAccess::LEN;
                let r = self.region_read(core, a.region, a.offset, &mut buf[at..]);
                if let Err(e) = r {
                    self.head_room = false;
                    self.small = buf;
                    return Err(e);
                }
                Ok(buf)
            }
            cmd::REGION_WRITE => {
                let (a, data) = wire::RegionAccess::decode_write(p, neg.max_xfer)?;
                self.region_write(core, a.region, a.offset, data, out)?;
                Ok(self.region_reply(&a, 0))
            }
            cmd::REGION_WRITE_MULTI => {
                let entries = wire::decode_write_multi(p)?;
                for e in &entries {
                    let d = &e.data[..e.count as usize];
                    self.region_write(core, e.region, e.offset, d, out)?;
                }
                let mut w = wire::Writer::with_capacity(8);
                w.u64(entries.len() as u64);
                Ok(w.finish())
            }
            cmd::DEVICE_RESET => {
                self.reset(core)?;
                out.wake = true;
                Ok(Vec::new())
            }
            cmd::DEVICE_FEATURE => self.feature(core, p, out),
            cmd::MIG_DATA_READ => {
                let m = wire::MigData::decode_read(p, neg.max_xfer)?;
                // The stream is encoded straight into the reply message:
                // room for the header and the fixed part, then the data.
                let at = HEADER_LEN + wire::MigData::LEN;
                let want = at + m.size as usize;
                // A recycled reply needs no zeroing: every byte that goes
                // out is written below, and the rest is cut off.
                let mut buf = std::mem::take(&mut self.spare);
                if buf.len() >= want {
                    buf.truncate(want);
                } else {
                    buf.resize(want, 0);
                }
                let DevCore { dev, engine, .. } = core;
                let n = engine
                    .read_data(dev, &mut buf[at..])
                    .map_err(|e| (errno_of_engine(&e), e.to_string()))?;
                buf.truncate(at + n);
                let fixed = wire::MigData {
                    argsz: (wire::MigData::LEN + n) as u32,
                    size: n as u32,
                }
                .encode(&[]);
                buf[HEADER_LEN..at].copy_from_slice(&fixed);
                self.head_room = true;
                Ok(buf)
            }
            cmd::MIG_DATA_WRITE => {
                let (m, data) = wire::MigData::decode_write(p, neg.max_xfer)?;
                let DevCore { dev, engine, .. } = core;
                engine
                    .write_data(dev, data)
                    .map_err(|e| (errno_of_engine(&e), e.to_string()))?;
                Ok(wire::MigData {
                    argsz: wire::MigData::LEN as u32,
                    size: m.size,
                }
                .encode(&[]))
            }
            cmd::DEVICE_GET_REGION_IO_FDS => {
                fail(Errno::ENOTSUP, "region I/O fds are not supported")
            }
            cmd::DMA_READ | cmd::DMA_WRITE => fail(
                Errno::EINVAL,
                "DMA_READ/DMA_WRITE are server-to-client only",
            ),
            c => fail(Errno::ENOSYS, format!("unknown command {c}")),
        }
    }

    fn version(&mut self, p: &[u8]) -> HResult {
        if self.neg.is_some() {
            return fail(Errno::EINVAL, "VERSION already negotiated");
        }
        let v = wire::Version::decode(p)?;
        if v.major != wire::VERSION_MAJOR {
            return fail(
                Errno::EINVAL,
                format!("major version {} unsupported", v.major),
            );
        }
        let minor = v.minor.min(wire::VERSION_MINOR);
        let max_xfer = v.caps.max_data_xfer_size.min(SERVER_MAX_XFER);
        // QEMU 11.1.3 (minor 0) reads server-initiated DMA_READ/DMA_WRITE in
        // the specification's layout, as libvfio-user does: measured with a
        // real guest (see `wire::DmaLayout`).
        let layout = wire::DmaLayout::Spec;
        // The reply names only capabilities the client proposed (a subset,
        // as the specification requires); absent ones take their defaults on
        // both sides.
        let reply = wire::Version {
            major: wire::VERSION_MAJOR,
            minor,
            caps: wire::Caps {
                max_msg_fds: self.shared.limits.max_fds as u32,
                max_data_xfer_size: max_xfer,
                pgsizes: 4096,
                max_dma_maps: self.shared.limits.max_dma_maps as u32,
                migration: v
                    .caps
                    .migration
                    .map(|(_, bm)| (4096, bm.min(SERVER_MAX_XFER))),
                write_multiple: v.caps.write_multiple,
                named: v.caps.named,
            },
            has_json: true,
        };
        let mut bytes = reply.encode();
        if v.has_json && bytes.len() > p.len() {
            // The reply must fit the buffer the client sized from its own
            // request (QEMU): drop the optional capabilities.
            let mut short = reply.clone();
            short.caps.migration = None;
            short.caps.named.remove(wire::CapKeys::MAX_DMA_MAPS);
            bytes = short.encode();
        }
        if let Some(link) = &self.link {
            link.configure(layout, max_xfer);
        }
        self.neg = Some(Negotiated { max_xfer, layout });
        debug!(minor, max_xfer, ?layout, "negotiated");
        Ok(bytes)
    }

    fn dma_map(&mut self, p: &[u8], mut fds: Vec<OwnedFd>) -> HResult {
        let m = wire::DmaMap::decode(p)?;
        if fds.len() > 1 {
            return fail(Errno::EINVAL, "DMA_MAP with more than one fd");
        }
        if self.shared.dma.len() >= self.shared.limits.max_dma_maps {
            return fail(
                Errno::ENOSPC,
                format!(
                    "too many DMA mappings (this host allows {})",
                    self.shared.limits.max_dma_maps
                ),
            );
        }
        let perm = Perm {
            read: m.flags & wire::DMA_FLAG_READ != 0,
            write: m.flags & wire::DMA_FLAG_WRITE != 0,
        };
        let len =
            usize::try_from(m.size).map_err(|_| (Errno::EINVAL, "DMA_MAP size".to_string()))?;
        let mem: Arc<dyn GuestMemory> = match fds.pop() {
            Some(fd) => {
                let file = std::fs::File::from(fd);
                let mm = match self.shared.share_files {
                    true => vfpga_device::MmapMemory::map_file_shared(&file, m.offset, len),
                    false => vfpga_device::MmapMemory::map_file(&file, m.offset, len),
                }
                .map_err(|e| (Errno::EINVAL, format!("cannot map the DMA fd: {e}")))?;
                Arc::new(mm)
            }
            None => {
                let Some(link) = &self.link else {
                    return fail(Errno::ENOTSUP, "DMA without an fd needs a message channel");
                };
                Arc::new(RemoteMemory::new(link.clone(), m.address, m.size))
            }
        };
        let gated = Arc::new(Gated::new(mem, self.shared.gate.clone()));
        self.shared
            .dma
            .map(m.address, gated, perm)
            .map_err(|e| (Errno::EEXIST, e.to_string()))?;
        Ok(Vec::new())
    }

    fn dma_unmap(&mut self, p: &[u8]) -> HResult {
        let m = wire::DmaUnmap::decode(p)?;
        if m.flags & wire::DMA_UNMAP_ALL != 0 {
            self.shared.dma.unmap_all();
        } else {
            self.shared
                .dma
                .unmap(m.address, m.size)
                .map_err(|e| (Errno::ENOENT, e.to_string()))?;
        }
        Ok(m.encode())
    }

    fn region_info(&mut self, core: &mut DevCore, p: &[u8]) -> HResult {
        let (argsz, index) =
            wire::decode_argsz_index(p, "GET_REGION_INFO", wire::RegionInfo::LEN, Some(8))?;
        let rw = wire::REGION_FLAG_READ | wire::REGION_FLAG_WRITE;
        let (size, flags) = match index {
            region::BAR0 => (self.shared.info.bar0_size, rw),
            region::BAR2 => (self.shared.info.bar2_size, rw),
            region::CONFIG => (pci::CONFIG_SIZE as u64, rw),
            region::MIGRATION => (core.v1.size(), rw | wire::REGION_FLAG_CAPS),
            i if i < region::COUNT => (0, 0),
            i => return fail(Errno::EINVAL, format!("no region {i}")),
        };
        let mut info = wire::RegionInfo {
            argsz: wire::RegionInfo::LEN as u32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: u64::from(index) << 40,
        };
        let mut caps = Vec::new();
        if index == region::MIGRATION {
            let mut w = wire::Writer::with_capacity(16);
            w.u16(wire::REGION_CAP_TYPE)
                .u16(1)
                .u32(0)
                .u32(wire::REGION_TYPE_MIGRATION)
                .u32(wire::REGION_SUBTYPE_MIGRATION);
            caps = w.finish();
            let need = (wire::RegionInfo::LEN + caps.len()) as u32;
            info.argsz = need;
            if argsz >= need {
                info.cap_offset = wire::RegionInfo::LEN as u32;
            } else {
                caps.clear();
            }
        }
        let mut r = info.encode();
        r.extend_from_slice(&caps);
        Ok(r)
    }

    fn set_irqs(
        &mut self,
        core: &mut DevCore,
        p: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Outcome,
    ) -> HResult {
        let s = wire::SetIrqs::decode(p)?;
        let (_, max) =
            irq_geometry(s.index).ok_or((Errno::EINVAL, format!("no IRQ index {}", s.index)))?;
        let end = s.start + s.count; // checked in decode
        let disable = s.count == 0 && s.data == wire::IrqData::None;
        if !disable && (s.count == 0 || end > max) {
            return fail(Errno::EINVAL, "SET_IRQS range outside the index");
        }
        let fds_expected = s.data == wire::IrqData::Eventfd;
        if !fds_expected && !fds.is_empty() {
            return fail(Errno::EINVAL, "fds without DATA_EVENTFD");
        }
        if fds_expected && !fds.is_empty() && fds.len() != s.count as usize {
            return fail(Errno::EINVAL, "SET_IRQS fd count differs from count");
        }
        let hub = &self.shared.irq;
        let selected = |s: &wire::SetIrqs| -> Vec<usize> {
            let all = (s.start..end).map(|v| v as usize);
            match &s.data {
                wire::IrqData::Bool(b) => {
                    all.zip(b).filter(|(_, on)| **on).map(|(v, _)| v).collect()
                }
                _ => all.collect(),
            }
        };
        match (s.index, s.action) {
            (irq_index::MSIX, wire::IrqAction::Trigger) => {
                if disable {
                    hub.msix_disable();
                } else if fds_expected {
                    let mut v: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
                    v.resize_with(s.count as usize, || None);
                    hub.msix_assign(s.start as usize, v);
                } else {
                    hub.msix_fire(&selected(&s));
                }
            }
            (irq_index::MSIX, a) => {
                hub.msix_mask(&selected(&s), a == wire::IrqAction::Mask);
            }
            (irq_index::INTX, wire::IrqAction::Trigger) => {
                if disable {
                    hub.intx_assign(None);
                    out.resample = Some(None);
                } else if fds_expected {
                    hub.intx_assign(fds.into_iter().next());
                } else if !selected(&s).is_empty() {
                    hub.intx_level(true);
                }
            }
            (irq_index::INTX, wire::IrqAction::Mask) => {
                if !selected(&s).is_empty() {
                    hub.intx_mask(true);
                }
            }
            (irq_index::INTX, wire::IrqAction::Unmask) => {
                if fds_expected {
                    out.resample = Some(fds.into_iter().next());
                } else if !selected(&s).is_empty() {
                    self.intx_unmask(core);
                }
            }
            (i, _) => {
                if !disable {
                    return fail(Errno::EINVAL, format!("IRQ index {i} has no vectors"));
                }
            }
        }
        Ok(Vec::new())
    }

    /// INTx unmask (SET_IRQS or the resample eventfd): unmask, then
    /// re-assert if the device's line is still high.
    pub fn intx_unmask(&self, core: &mut DevCore) {
        self.shared.irq.intx_mask(false);
        self.intx_recheck(core);
    }

    /// Reads the device's INTx line and hands it to the hub, which asserts
    /// INTx if the line is high and INTx deliverable (assigned, unmasked,
    /// not disabled in the command register).
    fn intx_recheck(&self, core: &mut DevCore) {
        let high = self.intx_line(core);
        self.shared.irq.intx_level(high);
    }

    /// The device's INTx line: with MSI-X off (a function with MSI-X enabled
    /// does not use INTx), a running device with a cause latched in
    /// IRQ_STATUS and not masked in IRQ_MASK. The command register's INTx
    /// disable bit does not lower it (it only gates delivery). A device that
    /// cannot be read counts as low.
    fn intx_line(&self, core: &mut DevCore) -> bool {
        if !self.shared.irq.intx_mode() {
            return false;
        }
        (|| -> Result<bool, DeviceError> {
            let st = core.dev.read_reg(offsets::IRQ_STATUS)?;
            let mask = core.dev.read_reg(offsets::IRQ_MASK)?;
            Ok(st & !mask != 0 && !core.dev.is_quiesced()?)
        })()
        .unwrap_or(false)
    }

    fn region_read(
        &self,
        core: &mut DevCore,
        region: u32,
        off: u64,
        buf: &mut [u8],
    ) -> Result<(), (Errno, String)> {
        let len = buf.len() as u64;
        let bad = |what: &str| {
            (
                Errno::EINVAL,
                format!("{what} read of {len} bytes at {off:#x}"),
            )
        };
        match region {
            region::CONFIG => {
                // The status register's Interrupt Status bit follows the
                // device's line at the time of the read.
                let status = pci::STATUS_OFFSET as u64;
                let line = (off <= status && off.saturating_add(len) > status)
                    .then(|| self.intx_line(core));
                let mut cfg = self.shared.config();
                if let Some(line) = line {
                    cfg.set_intx_status(line);
                }
                cfg.read(off, buf).ok_or_else(|| bad("config"))
            }
            region::BAR0 => {
                let end = off.checked_add(len).ok_or_else(|| bad("BAR0"))?;
                let (t, tl) = (u64::from(consts::MSIX_TABLE_OFFSET), irq::TABLE_BYTES);
                let (pb, pl) = (u64::from(consts::MSIX_PBA_OFFSET), irq::PBA_BYTES);
                if off >= t && end <= t + tl {
                    return self
                        .shared
                        .irq
                        .table_read(off - t, buf)
                        .ok_or_else(|| bad("MSI-X table"));
                }
                if off >= pb && end <= pb + pl {
                    return self
                        .shared
                        .irq
                        .pba_read(off - pb, buf)
                        .ok_or_else(|| bad("PBA"));
                }
                bar0_access(off, len, self.shared.info.bar0_size).ok_or_else(|| bad("BAR0"))?;
                for (i, c) in buf.chunks_mut(chunk_of(len)).enumerate() {
                    core.dev
                        .mmio_read(Bar::Regs, off + (i * c.len()) as u64, c)
                        .map_err(|e| (errno_of_device(&e), e.to_string()))?;
                }
                Ok(())
            }
            region::BAR2 => {
                check_range(off, len, self.shared.info.bar2_size).ok_or_else(|| bad("BAR2"))?;
                core.dev
                    .devmem_read(off, buf)
                    .map_err(|e| (errno_of_device(&e), e.to_string()))
            }
            region::MIGRATION => {
                let DevCore { dev, engine, v1 } = core;
                v1.read(engine, dev, off, buf)
                    .map_err(|e| (errno_of_v1(&e), e.to_string()))
            }
            _ => Err(bad("region")),
        }
    }

    fn region_write(
        &self,
        core: &mut DevCore,
        region: u32,
        off: u64,
        data: &[u8],
        out: &mut Outcome,
    ) -> Result<(), (Errno, String)> {
        let len = data.len() as u64;
        let bad = |what: &str| {
            (
                Errno::EINVAL,
                format!("{what} write of {len} bytes at {off:#x}"),
            )
        };
        match region {
            region::CONFIG => {
                let mut cfg = self.shared.config();
                let was_off = cfg.intx_disabled();
                cfg.write(off, data).ok_or_else(|| bad("config"))?;
                self.shared.gate.store(cfg.bus_master(), Ordering::Release);
                let ctl = cfg.msix_control();
                let intx_off = cfg.intx_disabled();
                drop(cfg);
                self.shared.irq.set_config(
                    ctl & pci::MSIX_ENABLE != 0,
                    ctl & pci::MSIX_FUNCTION_MASK != 0,
                    intx_off,
                );
                if was_off && !intx_off {
                    // INTx enabled again: a line that stayed high while it
                    // was disabled is asserted now.
                    self.intx_recheck(core);
                }
                out.wake = true;
                Ok(())
            }
            region::BAR0 => {
                let end = off.checked_add(len).ok_or_else(|| bad("BAR0"))?;
                let (t, tl) = (u64::from(consts::MSIX_TABLE_OFFSET), irq::TABLE_BYTES);
                let (pb, pl) = (u64::from(consts::MSIX_PBA_OFFSET), irq::PBA_BYTES);
                if off >= t && end <= t + tl {
                    return self
                        .shared
                        .irq
                        .table_write(off - t, data)
                        .ok_or_else(|| bad("MSI-X table"));
                }
                if off >= pb && end <= pb + pl {
                    return Ok(()); // the PBA is read-only; writes are dropped
                }
                bar0_access(off, len, self.shared.info.bar0_size).ok_or_else(|| bad("BAR0"))?;
                for (i, c) in data.chunks(chunk_of(len)).enumerate() {
                    core.dev
                        .mmio_write(Bar::Regs, off + (i * c.len()) as u64, c)
                        .map_err(|e| (errno_of_device(&e), e.to_string()))?;
                }
                // Only a write that can give the engine work wakes the
                // runner (which also looks on its own every few ms): waking
                // it for every write costs each MMIO a context switch.
                out.wake = gives_work(off, len);
                Ok(())
            }
            region::BAR2 => {
                check_range(off, len, self.shared.info.bar2_size).ok_or_else(|| bad("BAR2"))?;
                core.dev
                    .devmem_write(off, data)
                    .map_err(|e| (errno_of_device(&e), e.to_string()))?;
                Ok(())
            }
            region::MIGRATION => {
                let DevCore { dev, engine, v1 } = core;
                v1.write(engine, dev, off, data)
                    .map_err(|e| (errno_of_v1(&e), e.to_string()))?;
                out.wake = true;
                Ok(())
            }
            _ => Err(bad("region")),
        }
    }

    fn reset(&mut self, core: &mut DevCore) -> Result<(), (Errno, String)> {
        let DevCore { dev, engine, v1 } = core;
        v1.reset();
        let r = engine.reset(dev);
        self.shared.config().reset();
        self.shared.gate.store(false, Ordering::Release);
        self.shared.irq.reset();
        r.map_err(|e| (errno_of_engine(&e), e.to_string()))
    }

    fn feature(&mut self, core: &mut DevCore, p: &[u8], out: &mut Outcome) -> HResult {
        use wire::{FEATURE_GET as GET, FEATURE_SET as SET};
        let f = wire::Feature::decode(p)?;
        let echo = || p.to_vec();
        let reply = |data: &[u8]| {
            let mut w = wire::Writer::with_capacity(8 + data.len());
            w.u32((8 + data.len()) as u32).u32(f.flags).bytes(data);
            w.finish()
        };
        let DevCore { dev, engine, v1 } = core;
        match f.index {
            wire::FEATURE_MIGRATION => {
                if !f.check(GET, 8)? {
                    return Ok(echo());
                }
                Ok(reply(&engine.flags().0.to_le_bytes()))
            }
            wire::FEATURE_MIG_DEVICE_STATE => {
                if !f.check(GET | SET, 8)? {
                    return Ok(echo());
                }
                if f.set() {
                    let d = wire::Reader::new(f.data, "MIG_DEVICE_STATE");
                    let target = d.u32(0)?;
                    d.exact(8)?;
                    let r = engine.set_state(dev, target);
                    v1.reset();
                    out.wake = true;
                    r.map_err(|e| (errno_of_engine(&e), e.to_string()))?;
                    let mut w = wire::Writer::with_capacity(8);
                    w.u32(engine.state().raw()).u32(u32::MAX);
                    Ok(reply(&w.finish()))
                } else {
                    let mut w = wire::Writer::with_capacity(8);
                    w.u32(engine.state().raw()).u32(u32::MAX);
                    Ok(reply(&w.finish()))
                }
            }
            wire::FEATURE_MIG_DATA_SIZE => {
                if !f.check(GET, 8)? {
                    return Ok(echo());
                }
                let n = engine
                    .stop_copy_size(dev)
                    .map_err(|e| (errno_of_engine(&e), e.to_string()))?;
                Ok(reply(&n.max(1).to_le_bytes()))
            }
            wire::FEATURE_DMA_LOGGING_START => {
                if !f.check(SET, 16)? {
                    return Ok(echo());
                }
                let s = wire::LoggingStart::decode(f.data)?;
                // A board's writes bypass the port: its own DMA log is the truth.
                let source = match dev.dma_through_port() {
                    true => LogSource::Port(self.shared.dma.clone()),
                    false => LogSource::Device,
                };
                engine
                    .dma_logging()
                    .start(dev, source, s.page_size, &s.ranges)
                    .map_err(|e| (errno_of_dirty(&e), e.to_string()))?;
                Ok(echo())
            }
            wire::FEATURE_DMA_LOGGING_STOP => {
                if !f.check(SET, 0)? {
                    return Ok(echo());
                }
                wire::Reader::new(f.data, "DMA_LOGGING_STOP").exact(0)?;
                engine
                    .dma_logging()
                    .stop(dev)
                    .map_err(|e| (errno_of_dirty(&e), e.to_string()))?;
                Ok(echo())
            }
            wire::FEATURE_DMA_LOGGING_REPORT => {
                if !f.check(GET, wire::LoggingReport::LEN)? {
                    return Ok(echo());
                }
                let (rep, bytes) = wire::LoggingReport::decode(f.data)?;
                let max = self.neg.map_or(SERVER_MAX_XFER, |n| n.max_xfer);
                if bytes as u64 > max {
                    return fail(Errno::E2BIG, "dirty bitmap larger than max_data_xfer_size");
                }
                let need = 8 + wire::LoggingReport::LEN + bytes;
                if (f.argsz as usize) < need {
                    return fail(Errno::EINVAL, "argsz too small for the dirty bitmap");
                }
                let mut bm = vec![0u64; bytes / 8];
                engine
                    .dma_logging()
                    .report(dev, rep.iova, rep.length, rep.page_size, &mut bm)
                    .map_err(|e| (errno_of_dirty(&e), e.to_string()))?;
                let mut w = wire::Writer::with_capacity(need);
                w.u32(need as u32).u32(f.flags).bytes(&rep.encode());
                for x in bm {
                    w.u64(x);
                }
                Ok(w.finish())
            }
            i => fail(
                Errno::ENOTTY,
                format!("device feature {i} is not supported"),
            ),
        }
    }

    /// The client is gone: unmap all DMA, close every IRQ fd, stop DMA
    /// logging. The device state (and config space) stays.
    pub fn disconnect(&mut self, core: &mut DevCore) {
        if let Some(link) = &self.link {
            link.close();
        }
        self.shared.dma.unmap_all();
        self.shared.irq.disconnect();
        core.engine.dma_logging().reset();
    }
}

pub(crate) fn irq_geometry(index: u32) -> Option<(u32, u32)> {
    use wire::{IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE};
    Some(match index {
        irq_index::INTX => (
            IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            1,
        ),
        irq_index::MSIX => (IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE, irq::VECTORS as u32),
        irq_index::MSI | irq_index::ERR | irq_index::REQ => (IRQ_INFO_EVENTFD, 0),
        _ => return None,
    })
}

/// Whether a BAR0 write to `[off, off+len)` touches a register that can
/// start engine work: `CTRL` (enable, resume, soft reset), `SQ_TAIL` (new
/// descriptors), `CQ_HEAD` (room for completions), `IRQ_MASK`/`IRQ_STATUS`
/// (a pending message may go).
fn gives_work(off: u64, len: u64) -> bool {
    [
        offsets::CTRL,
        offsets::SQ_TAIL,
        offsets::CQ_HEAD,
        offsets::IRQ_MASK,
        offsets::IRQ_STATUS,
    ]
    .iter()
    .any(|&r| off < u64::from(r) + 4 && u64::from(r) < off + len)
}

fn check_range(off: u64, len: u64, size: u64) -> Option<()> {
    (off.checked_add(len)? <= size).then_some(())
}

/// BAR0 register accesses: 1, 2, 4 or 8 bytes, or a multiple of 4 that is
/// 4-aligned (split into 32-bit accesses), inside the BAR.
fn bar0_access(off: u64, len: u64, size: u64) -> Option<()> {
    check_range(off, len, size)?;
    match len {
        1 | 2 | 4 | 8 => Some(()),
        n if n > 0 && n.is_multiple_of(4) && off.is_multiple_of(4) => Some(()),
        _ => None,
    }
}

fn chunk_of(len: u64) -> usize {
    if len <= 8 { len.max(1) as usize } else { 4 }
}

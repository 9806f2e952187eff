//! The DMA port: the device's only way to reach host (guest) memory.
//!
//! A [`DmaPort`] holds the guest memory regions the VMM mapped (by IOVA). Every
//! device access is bounds-checked against them: an access that is not fully
//! inside one mapping is refused with a [`DmaFault`] (the device turns that into
//! an error status), and never touches host memory. Every device write is
//! recorded in the dirty log while logging is on, so the VMM can migrate the
//! guest pages the device dirtied.
//!
//! The port is cheap to clone and shared between the VMM side (which maps and
//! unmaps) and the device side (which reads and writes).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Page size of the dirty log.
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// Memory behind one mapping. Implementations must be safe to call from any
/// thread; `offset + len` is always within `len()` when the port calls them.
pub trait GuestMemory: Send + Sync + std::fmt::Debug {
    /// Size of the region in bytes.
    fn len(&self) -> u64;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault>;
    /// Copies `data` to `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault>;
    /// The host address of the region's first byte, when the region is one
    /// contiguous shared host mapping that a real device may reach directly
    /// (through an IOMMU mapping made by the board backend); `None` (the
    /// default) for memory that is only reachable through `read`/`write`.
    /// An implementation returning `Some` must keep the whole region mapped
    /// for as long as it lives and access it only through raw-pointer copies.
    fn host_addr(&self) -> Option<std::ptr::NonNull<u8>> {
        None
    }
    /// The file behind the region and the file offset of its first byte,
    /// when the region is a shared mapping of a file another process can map
    /// too (a simulated board reaches guest memory this way, as a real device
    /// reaches it through the IOMMU). `None` (the default) otherwise.
    fn shared_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        None
    }
    /// Whether an access may answer [`DmaFault::Pending`] instead of
    /// completing (memory reached by messages to a peer, such as vfio-user
    /// DMA_READ/DMA_WRITE). `false` (the default): every access completes
    /// before `read`/`write` return.
    fn may_pend(&self) -> bool {
        false
    }
    /// Waits up to `timeout` for the answer to an access that returned
    /// [`DmaFault::Pending`]; returns at once when none is outstanding. The
    /// default has nothing outstanding.
    fn wait_pending(&self, timeout: std::time::Duration) {
        let _ = timeout;
    }
}

/// Why a DMA access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// No mapping covers the whole access.
    #[error("DMA {kind} of {len} bytes at IOVA {iova:#x} is outside mapped memory")]
    Unmapped {
        /// "read" or "write".
        kind: &'static str,
        /// Start address.
        iova: u64,
        /// Length in bytes.
        len: usize,
    },
    /// The mapping does not allow this direction.
    #[error("DMA {kind} at IOVA {iova:#x} is not permitted by the mapping")]
    Permission {
        /// "read" or "write".
        kind: &'static str,
        /// Start address.
        iova: u64,
    },
    /// The access was sent to memory that answers later (see
    /// [`GuestMemory::may_pend`]); nothing is known yet. The device must not
    /// act on the access: it waits, and repeats the *same* access later, which
    /// then completes with the answer. A device implementation treats this as
    /// back-pressure on its DMA port, never as an error.
    #[error("DMA at IOVA {iova:#x} is waiting for its answer")]
    Pending {
        /// Start address.
        iova: u64,
    },
    /// The backing memory failed (for example a remote DMA message got no answer).
    #[error("DMA backing failed at IOVA {iova:#x}: {reason}")]
    Backing {
        /// Start address.
        iova: u64,
        /// What failed.
        reason: String,
    },
}

/// Errors of map and unmap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The new mapping overlaps an existing one.
    #[error("mapping [{iova:#x}, +{len:#x}) overlaps an existing mapping")]
    Overlap {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Zero length, or the range wraps the address space.
    #[error("mapping [{iova:#x}, +{len:#x}) is empty or wraps")]
    BadRange {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Unmap of a range that is not exactly one or more whole mappings.
    #[error("no mapping matches [{iova:#x}, +{len:#x})")]
    NotMapped {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
}

/// Access the device has to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Perm {
    /// Read and write.
    pub const RW: Perm = Perm {
        read: true,
        write: true,
    };
}

#[derive(Debug)]
struct Mapping {
    len: u64,
    perm: Perm,
    mem: Arc<dyn GuestMemory>,
    /// One bit per page while logging, else empty.
    dirty: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by start IOVA.
    maps: BTreeMap<u64, Mapping>,
    logging: bool,
    /// How many mappings may answer [`DmaFault::Pending`].
    pending_maps: usize,
}

/// The bounds-checked, dirty-logged view of guest memory given to a device.
#[derive(Debug, Clone, Default)]
pub struct DmaPort {
    inner: Arc<RwLock<Inner>>,
}

fn pages(len: u64) -> usize {
    len.div_ceil(DIRTY_PAGE_SIZE) as usize
}

impl DmaPort {
    /// A port with no mappings.
    pub fn new() -> Self {
        Self::default()
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it;
        // the mapping table itself is always consistent between operations.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps `mem` at `iova`. Overlapping mappings are refused.
    pub fn map(&self, iova: u64, mem: Arc<dyn GuestMemory>, perm: Perm) -> Result<(), MapError> {
        let len = mem.len();
        let end = iova
            .checked_add(len)
            .ok_or(MapError::BadRange { iova, len })?;
        if len == 0 {
            return Err(MapError::BadRange { iova, len });
        }
        let mut g = self.write_lock();
        if let Some((s, m)) = g.maps.range(..end).next_back()
            && s + m.len > iova
        {
            return Err(MapError::Overlap { iova, len });
        }
        if mem.may_pend() {
            g.pending_maps += 1;
        }
        let dirty = if g.logging {
            vec![0; pages(len).div_ceil(64)]
        } else {
            Vec::new()
        };
        g.maps.insert(
            iova,
            Mapping {
                len,
                perm,
                mem,
                dirty,
            },
        );
        Ok(())
    }

    /// Removes every mapping that lies entirely inside `[iova, iova+len)`;
    /// fails (changing nothing) if none does or if one straddles the range.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<usize, MapError> {
        let end = iova
            .checked_add(len)
            .ok_or(MapError::BadRange { iova, len })?;
        let mut g = self.write_lock();
        let mut hit = Vec::new();
        for (s, m) in g.maps.range(..end) {
            let e = s + m.len;
            if e <= iova {
                continue;
            }
            if *s < iova || e > end {
                return Err(MapError::NotMapped { iova, len });
            }
            hit.push(*s);
        }
        if hit.is_empty() {
            return Err(MapError::NotMapped { iova, len });
        }
        for s in &hit {
            if g.maps.remove(s).is_some_and(|m| m.mem.may_pend()) {
                g.pending_maps -= 1;
            }
        }
        Ok(hit.len())
    }

    /// Removes every mapping.
    pub fn unmap_all(&self) {
        let mut g = self.write_lock();
        g.maps.clear();
        g.pending_maps = 0;
    }

    /// How many mappings there are.
    pub fn len(&self) -> usize {
        self.read_lock().maps.len()
    }

    /// Whether there is no mapping.
    pub fn is_empty(&self) -> bool {
        self.read_lock().maps.is_empty()
    }

    /// `(iova, len)` of every mapping, in address order.
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.read_lock()
            .maps
            .iter()
            .map(|(s, m)| (*s, m.len))
            .collect()
    }

    /// Every mapping with its memory and permissions, in address order (for
    /// a backend that maps guest memory into an IOMMU).
    pub fn regions(&self) -> Vec<(u64, Arc<dyn GuestMemory>, Perm)> {
        self.read_lock()
            .maps
            .iter()
            .map(|(s, m)| (*s, m.mem.clone(), m.perm))
            .collect()
    }

    /// Whether `[iova, iova+len)` lies inside one mapping.
    pub fn is_mapped(&self, iova: u64, len: u64) -> bool {
        let g = self.read_lock();
        Self::find(&g, iova, len).is_some()
    }

    fn find(g: &Inner, iova: u64, len: u64) -> Option<(u64, &Mapping)> {
        let end = iova.checked_add(len)?;
        let (s, m) = g.maps.range(..=iova).next_back()?;
        (end <= s + m.len).then_some((*s, m))
    }

    /// VMM-side read of guest memory (bounds-checked like a device access,
    /// ignoring the device permissions, never logged).
    pub fn host_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let g = self.read_lock();
        let (s, m) = Self::find(&g, iova, buf.len() as u64).ok_or(DmaFault::Unmapped {
            kind: "read",
            iova,
            len: buf.len(),
        })?;
        m.mem.read(iova - s, buf)
    }

    /// VMM-side write of guest memory (bounds-checked, never logged: the dirty
    /// log records what the *device* wrote).
    pub fn host_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let g = self.read_lock();
        let (s, m) = Self::find(&g, iova, data.len() as u64).ok_or(DmaFault::Unmapped {
            kind: "write",
            iova,
            len: data.len(),
        })?;
        m.mem.write(iova - s, data)
    }

    /// Whether a device access at `iova` may answer [`DmaFault::Pending`]
    /// (the mapping there is memory reached by messages).
    pub fn may_pend(&self, iova: u64) -> bool {
        let g = self.read_lock();
        Self::find(&g, iova, 1).is_some_and(|(_, m)| m.mem.may_pend())
    }

    /// Whether any mapping may answer [`DmaFault::Pending`]: a device access
    /// may then wait for a peer, so whoever drives the device must not do it
    /// on a thread that the peer's answers need.
    pub fn any_may_pend(&self) -> bool {
        self.read_lock().pending_maps > 0
    }

    /// Waits up to `timeout` for the answer to an outstanding
    /// [`DmaFault::Pending`] access, without holding anything the device
    /// needs; returns at once when nothing is outstanding.
    pub fn wait_pending(&self, timeout: std::time::Duration) {
        // Regions reached through one peer share one outstanding access, so
        // waiting on the first is waiting on all.
        let first = self
            .read_lock()
            .maps
            .values()
            .find(|m| m.mem.may_pend())
            .map(|m| m.mem.clone());
        if let Some(m) = first {
            m.wait_pending(timeout);
        }
    }

    /// Device read of `buf.len()` bytes at `iova`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let g = self.read_lock();
        let (s, m) = Self::find(&g, iova, buf.len() as u64).ok_or(DmaFault::Unmapped {
            kind: "read",
            iova,
            len: buf.len(),
        })?;
        if !m.perm.read {
            return Err(DmaFault::Permission { kind: "read", iova });
        }
        m.mem.read(iova - s, buf)
    }

    /// Device write of `data` at `iova`; logged when dirty logging is on.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let len = data.len() as u64;
        let logging;
        {
            let g = self.read_lock();
            let (s, m) = Self::find(&g, iova, len).ok_or(DmaFault::Unmapped {
                kind: "write",
                iova,
                len: data.len(),
            })?;
            if !m.perm.write {
                return Err(DmaFault::Permission {
                    kind: "write",
                    iova,
                });
            }
            m.mem.write(iova - s, data)?;
            logging = g.logging;
        }
        if logging && !data.is_empty() {
            let mut g = self.write_lock();
            if let Some((&s, _)) = g.maps.range(..=iova).next_back()
                && let Some(m) = g.maps.get_mut(&s)
                && !m.dirty.is_empty()
            {
                let first = (iova - s) / DIRTY_PAGE_SIZE;
                let last = (iova - s + len - 1) / DIRTY_PAGE_SIZE;
                for p in first..=last {
                    m.dirty[(p / 64) as usize] |= 1 << (p % 64);
                }
            }
        }
        Ok(())
    }

    /// Starts dirty logging of device writes (clears any previous log).
    pub fn dirty_log_start(&self) {
        let mut g = self.write_lock();
        g.logging = true;
        for m in g.maps.values_mut() {
            m.dirty = vec![0; pages(m.len).div_ceil(64)];
        }
    }

    /// Stops dirty logging and drops the log.
    pub fn dirty_log_stop(&self) {
        let mut g = self.write_lock();
        g.logging = false;
        for m in g.maps.values_mut() {
            m.dirty = Vec::new();
        }
    }

    /// Whether dirty logging is on.
    pub fn dirty_logging(&self) -> bool {
        self.read_lock().logging
    }

    /// Returns and clears the IOVAs of pages written by the device since the
    /// last call (or since logging started), in address order.
    pub fn dirty_log_take(&self) -> Vec<u64> {
        let mut g = self.write_lock();
        let mut out = Vec::new();
        for (s, m) in g.maps.iter_mut() {
            for (wi, w) in m.dirty.iter_mut().enumerate() {
                let mut bits = std::mem::take(w);
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    out.push(s + (wi as u64 * 64 + b) * DIRTY_PAGE_SIZE);
                }
            }
        }
        out
    }
}

/// Guest memory held in a plain vector: for tests, the model's own users and
/// anything that does not share memory with another process.
#[derive(Debug)]
pub struct VecMemory {
    data: RwLock<Vec<u8>>,
}

impl VecMemory {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        VecMemory {
            data: RwLock::new(vec![0; len]),
        }
    }

    /// A copy of the contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl GuestMemory for VecMemory {
    fn len(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let o = offset as usize;
        let src = d.get(o..o + buf.len()).ok_or(DmaFault::Unmapped {
            kind: "read",
            iova: offset,
            len: buf.len(),
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let o = offset as usize;
        let dst = d.get_mut(o..o + data.len()).ok_or(DmaFault::Unmapped {
            kind: "write",
            iova: offset,
            len: data.len(),
        })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// Guest memory backed by a shared mapping of a file (for example a memfd the
/// VMM passed with DMA_MAP).
///
/// The memory is shared with another process that may write it, or shrink
/// the file under it, at any time:
///
/// - it is only ever accessed through volatile word copies, never through
///   Rust references (a concurrent write by the other process is then not a
///   data race of this program's Rust code);
/// - the mapping is checked against the file's size when it is made, and a
///   later shrink of the file cannot kill the process: every copy runs under
///   [`crate::shared_mem`]'s SIGBUS guard, a copy that touches a page the
///   file no longer backs fails with [`DmaFault::Backing`], and from then on
///   every access at or past that page fails the same way (a file shrinks
///   from its end; the page that faulted now reads as zeros). The pages
///   before it keep working.
#[derive(Debug)]
pub struct MmapMemory {
    map: memmap2::MmapRaw,
    /// The mapped file and the offset of the mapping in it (see
    /// [`GuestMemory::shared_file`]).
    file: Option<(std::os::fd::OwnedFd, u64)>,
    /// Offset of the first page found missing (`usize::MAX`: none).
    lost_from: std::sync::atomic::AtomicUsize,
}

impl MmapMemory {
    /// Maps `len` bytes of `file` at `offset`, read/write and shared. A
    /// regular file (memfd, tmpfs, hugetlbfs) must hold the whole range.
    pub fn map_file(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Self> {
        let md = file.metadata()?;
        if md.is_file() {
            let end = offset.checked_add(len as u64).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset + size overflows")
            })?;
            if end > md.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the mapping ends at byte {end} of a file of {} bytes",
                        md.len()
                    ),
                ));
            }
        }
        crate::shared_mem::install_guard()?;
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(file)?;
        let file = match md.is_file() {
            true => Some((std::os::fd::AsFd::as_fd(file).try_clone_to_owned()?, offset)),
            false => None,
        };
        Ok(MmapMemory {
            map,
            file,
            lost_from: std::sync::atomic::AtomicUsize::new(usize::MAX),
        })
    }

    fn check(&self, offset: u64, len: usize, kind: &'static str) -> Result<usize, DmaFault> {
        let o = usize::try_from(offset).map_err(|_| DmaFault::Unmapped {
            kind,
            iova: offset,
            len,
        })?;
        match o.checked_add(len) {
            Some(e) if e <= self.map.len() => {
                if e > self.lost_from.load(std::sync::atomic::Ordering::Acquire) && len > 0 {
                    return Err(Self::vanished(offset));
                }
                Ok(o)
            }
            _ => Err(DmaFault::Unmapped {
                kind,
                iova: offset,
                len,
            }),
        }
    }

    fn vanished(offset: u64) -> DmaFault {
        DmaFault::Backing {
            iova: offset,
            reason: "the memory behind this mapping is gone (its file was shrunk)".into(),
        }
    }

    /// A copy hit a vanished page at host address `addr`.
    fn lost(&self, offset: u64, addr: usize) -> DmaFault {
        let page = addr.saturating_sub(self.map.as_ptr() as usize) & !4095;
        let was = self
            .lost_from
            .fetch_min(page, std::sync::atomic::Ordering::AcqRel);
        if page < was {
            tracing::warn!(
                offset = page,
                "guest memory vanished under a DMA mapping (file shrunk): \
                 accesses from this offset on fail"
            );
        }
        Self::vanished(offset)
    }
}

#[allow(unsafe_code)]
impl GuestMemory for MmapMemory {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }

    fn host_addr(&self) -> Option<std::ptr::NonNull<u8>> {
        std::ptr::NonNull::new(self.map.as_mut_ptr())
    }

    fn shared_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        use std::os::fd::AsFd;
        self.file.as_ref().map(|(f, o)| (f.as_fd(), *o))
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let o = self.check(offset, buf.len(), "read")?;
        // SAFETY: `check` proved [o, o+len) lies inside the mapping, which
        // `self.map` keeps mapped for our lifetime; `buf` is a distinct Rust
        // allocation, so the ranges cannot overlap.
        unsafe { crate::shared_mem::copy_from(self.map.as_ptr().add(o), buf) }
            .map_err(|a| self.lost(offset, a))
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        let o = self.check(offset, data.len(), "write")?;
        // SAFETY: as in `read`: the range is inside the writable shared
        // mapping owned by `self.map`, and `data` does not overlap it.
        unsafe { crate::shared_mem::copy_to(data, self.map.as_mut_ptr().add(o)) }
            .map_err(|a| self.lost(offset, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(len: u64) -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "vfpga-dma-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        let _ = std::fs::remove_file(&path);
        f.set_len(len).expect("size");
        f
    }

    #[test]
    fn mapping_larger_than_its_file_is_refused() {
        let f = temp_file(4096);
        let e = MmapMemory::map_file(&f, 0, 1 << 20).expect_err("short file");
        assert!(e.to_string().contains("file of 4096 bytes"), "{e}");
        assert!(MmapMemory::map_file(&f, 4096, 4096).is_err());
        assert!(MmapMemory::map_file(&f, 0, 4096).is_ok());
    }

    #[test]
    fn file_shrunk_under_a_mapping_is_a_fault_not_a_crash() {
        let f = temp_file(1 << 20);
        let m = MmapMemory::map_file(&f, 0, 1 << 20).expect("map");
        m.write(0x8_0000, &[0xa5; 64]).expect("write");
        let mut b = [0u8; 64];
        m.read(0x8_0000, &mut b).expect("read");
        assert_eq!(b, [0xa5; 64]);
        f.set_len(4096).expect("shrink");
        // Still backed: fine.
        m.read(0, &mut b[..8]).expect("first page");
        // Gone: a fault, and the mapping is dead from now on.
        let e = m.read(0x8_0000, &mut b).expect_err("vanished page");
        assert!(matches!(e, DmaFault::Backing { .. }), "{e:?}");
        assert!(m.write(0x9_0000, &[1; 8]).is_err());
        // The pages the file still backs keep working.
        m.write(0x10, &[3; 8]).expect("backed page");
        m.read(0x10, &mut b[..8]).expect("backed page");
        assert_eq!(b[..8], [3; 8]);
        // A fresh mapping of a file shrunk after a write also survives.
        let g = temp_file(1 << 16);
        let n = MmapMemory::map_file(&g, 0, 1 << 16).expect("map");
        g.set_len(0).expect("shrink");
        assert!(n.write(0x100, &[7; 100]).is_err());
    }

    fn port() -> (DmaPort, Arc<VecMemory>) {
        let p = DmaPort::new();
        let m = Arc::new(VecMemory::new(3 * 4096));
        p.map(0x10000, m.clone(), Perm::RW).unwrap();
        (p, m)
    }

    #[test]
    fn accesses_outside_mappings_fault_and_touch_nothing() {
        let (p, m) = port();
        let mut b = [0u8; 8];
        assert!(p.read(0xfff8, &mut b).is_err());
        assert!(p.read(0x10000 + 3 * 4096 - 4, &mut b).is_err());
        assert!(p.write(u64::MAX - 2, &b).is_err());
        assert!(p.write(0x10000 + 3 * 4096 - 7, &[1; 8]).is_err());
        assert!(m.snapshot().iter().all(|&x| x == 0));
        p.write(0x10004, &[7; 8]).unwrap();
        p.read(0x10004, &mut b).unwrap();
        assert_eq!(b, [7; 8]);
    }

    #[test]
    fn overlapping_maps_are_refused_and_unmap_is_exact() {
        let (p, _) = port();
        let m2 = Arc::new(VecMemory::new(4096));
        assert!(matches!(
            p.map(0x12000, m2.clone(), Perm::RW),
            Err(MapError::Overlap { .. })
        ));
        p.map(0x13000, m2, Perm::RW).unwrap();
        assert!(p.unmap(0x10000, 0x1000).is_err());
        assert_eq!(p.unmap(0x10000, 0x4000).unwrap(), 2);
        assert!(p.mappings().is_empty());
    }

    #[test]
    fn writes_are_logged_per_page_only_while_logging() {
        let (p, _) = port();
        p.write(0x10000, &[1]).unwrap();
        p.dirty_log_start();
        p.write(0x10ffe, &[1, 2, 3, 4]).unwrap();
        p.write(0x12000, &[1]).unwrap();
        assert_eq!(p.dirty_log_take(), vec![0x10000, 0x11000, 0x12000]);
        assert!(p.dirty_log_take().is_empty());
        let mut b = [0u8; 4];
        p.read(0x12000, &mut b).unwrap();
        assert!(p.dirty_log_take().is_empty());
        p.dirty_log_stop();
        p.write(0x10000, &[1]).unwrap();
        assert!(p.dirty_log_take().is_empty());
    }

    #[test]
    fn read_only_mapping_refuses_writes() {
        let p = DmaPort::new();
        p.map(
            0,
            Arc::new(VecMemory::new(4096)),
            Perm {
                read: true,
                write: false,
            },
        )
        .unwrap();
        assert!(matches!(p.write(0, &[1]), Err(DmaFault::Permission { .. })));
    }
}

//! Pinned, physically contiguous guest memory the device can reach.
//!
//! There is no vIOMMU in the test guest, so the IOVA the device uses for a
//! guest page is its guest-physical address, which `/proc/self/pagemap` tells
//! a root process. One 2 MiB huge page gives a contiguous, locked block for
//! the rings and the data buffers.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Size of the block [`DmaBuf::alloc_huge`] allocates (one x86-64 huge page).
pub const HUGE_PAGE: usize = 2 << 20;

/// The page frame number in a `/proc/<pid>/pagemap` entry, if the page is
/// present (bit 63) and the PFN is visible (bits 0-54; 0 without
/// CAP_SYS_ADMIN).
pub fn pagemap_pfn(entry: u64) -> Option<u64> {
    let present = entry >> 63 & 1 == 1;
    let pfn = entry & ((1u64 << 55) - 1);
    (present && pfn != 0).then_some(pfn)
}

/// The first PFN when `pfns` are consecutive frames, else the index of the
/// first page that breaks the run.
pub fn contiguous(pfns: &[u64]) -> Result<u64, usize> {
    let first = *pfns.first().ok_or(0usize)?;
    match pfns
        .iter()
        .enumerate()
        .find(|&(i, &p)| Some(p) != first.checked_add(i as u64))
    {
        Some((i, _)) => Err(i),
        None => Ok(first),
    }
}

/// A block of memory the device reaches at `iova`.
#[derive(Debug)]
pub struct DmaBuf {
    ptr: *mut u8,
    len: usize,
    iova: u64,
    owned: bool,
}

impl DmaBuf {
    /// Allocates, populates and locks one huge page, and finds its
    /// guest-physical address. Reserves a huge page first if none is free.
    pub fn alloc_huge() -> Result<Self, String> {
        ensure_free_huge_pages(1)?;
        // SAFETY: a fresh private anonymous mapping chosen by the kernel; it
        // aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of a 2 MiB huge page: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut b = DmaBuf {
            ptr: p.cast(),
            len: HUGE_PAGE,
            iova: 0,
            owned: true,
        };
        // SAFETY: locks exactly the mapping made above.
        if unsafe { libc::mlock(p, HUGE_PAGE) } != 0 {
            return Err(format!("mlock: {}", std::io::Error::last_os_error()));
        }
        b.fill(0, HUGE_PAGE, 0);
        b.iova = physical_base(p as usize, HUGE_PAGE)?;
        Ok(b)
    }

    /// Wraps memory the caller owns, reachable by the device at `iova`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must stay valid for reads and writes for the life of
    /// the returned value, and nothing else may hold a Rust reference into it.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize, iova: u64) -> Self {
        DmaBuf {
            ptr,
            len,
            iova,
            owned: false,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The IOVA of byte `off`.
    pub fn iova(&self, off: usize) -> u64 {
        assert!(off <= self.len, "offset {off:#x} outside the DMA buffer");
        self.iova + off as u64
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|e| e <= self.len),
            "access {off:#x}+{n} outside the {:#x}-byte DMA buffer",
            self.len
        );
    }

    /// Copies bytes out (volatile: the device writes this memory).
    pub fn read(&self, off: usize, buf: &mut [u8]) {
        self.check(off, buf.len());
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds (checked); the memory is valid per the constructor.
            *b = unsafe { std::ptr::read_volatile(self.ptr.add(off + i)) };
        }
    }

    /// Copies bytes in.
    pub fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in read.
            unsafe { std::ptr::write_volatile(self.ptr.add(off + i), b) };
        }
    }

    /// Sets `n` bytes at `off` to `byte`.
    pub fn fill(&self, off: usize, n: usize, byte: u8) {
        self.check(off, n);
        for i in 0..n {
            // SAFETY: as in read.
            unsafe { std::ptr::write_volatile(self.ptr.add(off + i), byte) };
        }
    }

    /// Reads a little-endian 32-bit word (volatile, whole-word) at a 4-byte
    /// aligned offset: used for the completion phase word the device writes.
    pub fn read_u32(&self, off: usize) -> u32 {
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "unaligned word offset {off:#x}");
        // SAFETY: in bounds and aligned (the base is page aligned).
        u32::from_le(unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) })
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: the mapping made in alloc_huge, unmapped once.
            unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            }
        }
    }
}

/// Makes sure `n` huge pages are free, growing the pool if needed.
fn ensure_free_huge_pages(n: u64) -> Result<(), String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("meminfo: {e}"))?;
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (total, free) = (field("HugePages_Total:"), field("HugePages_Free:"));
    if free >= n {
        return Ok(());
    }
    std::fs::write("/proc/sys/vm/nr_hugepages", format!("{}", total + n - free))
        .map_err(|e| format!("reserving a huge page: {e}"))
}

/// The guest-physical address of `addr..addr+len` (page aligned), which must
/// be present and physically contiguous.
fn physical_base(addr: usize, len: usize) -> Result<u64, String> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pm = File::open("/proc/self/pagemap").map_err(|e| format!("open pagemap: {e}"))?;
    let n = len / page;
    let mut raw = vec![0u8; n * 8];
    pm.read_exact_at(&mut raw, (addr / page * 8) as u64)
        .map_err(|e| format!("read pagemap: {e}"))?;
    let pfns = raw
        .chunks_exact(8)
        .enumerate()
        .map(|(i, c)| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            pagemap_pfn(u64::from_le_bytes(w))
                .ok_or_else(|| format!("pagemap: page {i} not present or PFN hidden (not root?)"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    let first =
        contiguous(&pfns).map_err(|i| format!("huge page not contiguous at 4 KiB page {i}"))?;
    Ok(first * page as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries_decode() {
        assert_eq!(pagemap_pfn(1 << 63 | 0x1234), Some(0x1234));
        // soft-dirty (55) and exclusive (56) bits are not part of the PFN
        assert_eq!(pagemap_pfn(1 << 63 | 1 << 55 | 1 << 56 | 0x42), Some(0x42));
        assert_eq!(pagemap_pfn(0x1234), None, "not present");
        assert_eq!(pagemap_pfn(1 << 63), None, "PFN hidden");
    }

    #[test]
    fn contiguity() {
        assert_eq!(contiguous(&[7, 8, 9, 10]), Ok(7));
        assert_eq!(contiguous(&[7, 8, 10]), Err(2));
        assert_eq!(contiguous(&[]), Err(0));
        assert_eq!(contiguous(&[u64::MAX, 0]), Err(1));
    }

    #[test]
    fn a_raw_buffer_reads_writes_and_gives_iovas() {
        let mut v = vec![0u8; 4096];
        // SAFETY: v outlives b and is only touched through b.
        let b = unsafe { DmaBuf::from_raw(v.as_mut_ptr(), v.len(), 0x1_0000_0000) };
        b.write(10, &[1, 2, 3, 4]);
        b.fill(14, 2, 9);
        let mut r = [0u8; 6];
        b.read(10, &mut r);
        assert_eq!(r, [1, 2, 3, 4, 9, 9]);
        assert_eq!(b.read_u32(12), u32::from_le_bytes([3, 4, 9, 9]));
        assert_eq!(b.iova(0x80), 0x1_0000_0080);
        drop(b);
    }
}

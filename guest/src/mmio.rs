//! BAR access: the [`Regs`] and [`DevMem`] traits the workload is written
//! against, and [`Mapping`], their implementation over a sysfs resource file
//! mapped into the process.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

/// 32-bit register access to BAR0 (datasheet §1: registers are 32-bit wide).
pub trait Regs {
    /// Reads the register at byte offset `off`.
    fn read32(&self, off: u32) -> u32;
    /// Writes the register at byte offset `off`.
    fn write32(&self, off: u32, v: u32);
}

/// Byte access to device memory (BAR2).
pub trait DevMem {
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the window is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `buf.len()` bytes at `off`.
    fn read(&self, off: usize, buf: &mut [u8]);
    /// Writes `data` at `off`.
    fn write(&self, off: usize, data: &[u8]);
}

/// A shared mapping of a sysfs `resourceN` file (or any file).
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `path` read/write and shared.
    pub fn map(path: &Path, len: usize) -> Result<Self, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        if len == 0 {
            return Err(format!("{}: nothing to map", path.display()));
        }
        // SAFETY: a fresh shared mapping chosen by the kernel (addr = null) of an
        // fd we own; it aliases no Rust object. The fd may close afterwards: the
        // mapping keeps its own reference.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {} ({len} bytes): {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|e| e <= self.len),
            "access {off:#x}+{n} outside the {:#x}-byte mapping",
            self.len
        );
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

impl Regs for Mapping {
    fn read32(&self, off: u32) -> u32 {
        let off = off as usize;
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "unaligned register offset {off:#x}");
        // SAFETY: in bounds and 4-byte aligned (checked above) inside a live
        // mapping; volatile because this is device memory.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    fn write32(&self, off: u32, v: u32) {
        let off = off as usize;
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "unaligned register offset {off:#x}");
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }
}

impl DevMem for Mapping {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, off: usize, buf: &mut [u8]) {
        self.check(off, buf.len());
        let mut i = 0;
        while i < buf.len() {
            let a = off + i;
            if a.is_multiple_of(8) && buf.len() - i >= 8 {
                // SAFETY: in bounds (checked for the whole range) and 8-byte
                // aligned; BAR2 takes 64-bit accesses (datasheet §6).
                let v = unsafe { std::ptr::read_volatile(self.ptr.add(a).cast::<u64>()) };
                buf[i..i + 8].copy_from_slice(&v.to_le_bytes());
                i += 8;
            } else {
                // SAFETY: in bounds; BAR2 takes byte accesses.
                buf[i] = unsafe { std::ptr::read_volatile(self.ptr.add(a)) };
                i += 1;
            }
        }
    }

    fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        let mut i = 0;
        while i < data.len() {
            let a = off + i;
            if a.is_multiple_of(8) && data.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&data[i..i + 8]);
                // SAFETY: as in read.
                unsafe {
                    std::ptr::write_volatile(self.ptr.add(a).cast::<u64>(), u64::from_le_bytes(w))
                };
                i += 8;
            } else {
                // SAFETY: as in read.
                unsafe { std::ptr::write_volatile(self.ptr.add(a), data[i]) };
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_and_writes_like_a_bar() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("resource");
        std::fs::write(&p, vec![0u8; 8192]).expect("write");
        let m = Mapping::map(&p, 8192).expect("map");
        m.write32(0x10, 0xdead_beef);
        assert_eq!(m.read32(0x10), 0xdead_beef);
        let data: Vec<u8> = (0..100u8).collect();
        m.write(4093, &data);
        let mut back = vec![0u8; 100];
        m.read(4093, &mut back);
        assert_eq!(back, data);
        drop(m);
        let f = std::fs::read(&p).expect("read");
        assert_eq!(&f[0x10..0x14], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&f[4093..4193], &data[..]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("resource");
        std::fs::write(&p, vec![0u8; 4096]).expect("write");
        let m = Mapping::map(&p, 4096).expect("map");
        m.read32(4096);
    }
}

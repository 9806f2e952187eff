//! The board-only bottom: `pci-driver`'s VFIO backend. Everything here needs
//! a real device bound to `vfio-pci`; it is kept to opening, BAR mapping,
//! 32-bit (and narrower / wider BAR2) volatile accesses, IOMMU map/unmap,
//! MSI-X eventfds and reset.
//!
//! What `pci-driver` 0.1.4 lacks, and what we do instead:
//! - **No `VFIO_DEVICE_FEATURE`, no migration, no fd access** (`VfioPciDevice`
//!   has no `AsRawFd`; the trait is sealed). A plain `vfio-pci` function has
//!   no kernel migration driver anyway: the device's state is saved and
//!   restored through its own BAR0 state port (the provided `Device`
//!   methods), and the DMA write log replaces kernel DMA logging.
//! - **Interrupts are all-or-nothing**: `enable` routes vectors `0..n`,
//!   there is no per-vector set and no mask/unmask. We route both vectors
//!   once at open and mask in the device (`IRQ_MASK`, datasheet §4), which is
//!   also what migrates.
//! - **Only the legacy container/group API with Type1v2 IOMMU**: no
//!   no-IOMMU mode and no iommufd/cdev; `vfpga doctor` checks the IOMMU.
//! - **Function reset only** (`VFIO_DEVICE_RESET`): no hot reset of the
//!   slot; a device without FLR support reports the kernel's error.
//! - **Region capabilities are ignored** (sparse mmap): we map only the
//!   register window of BAR0 (the MSI-X table and PBA behind it belong to the
//!   kernel) and fall back to `pread`/`pwrite` on the device fd for anything
//!   not mapped.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::sys::eventfd::EventFd;
use pci_driver::backends::vfio::VfioPciDevice;
use pci_driver::device::PciDevice;
use pci_driver::regions::{MappedOwningPciRegion, OwningPciRegion, PciRegion, Permissions};
use vfpga_config::BoardConfig;
use vfpga_device::{Bar, Perm};
use volatile::VolatilePtr;

use crate::board::{Bottom, REG_WINDOW};
use crate::doctor::Host;
use crate::error::HwError;

/// Checks what `VfioPciDevice::open` needs, so that a missing piece gives one
/// precise error instead of the kernel's `ENOENT`. Returns the sysfs path and
/// the IOMMU group.
pub fn preflight(host: &Host, cfg: &BoardConfig) -> Result<(PathBuf, u32), HwError> {
    let Some(addr) = cfg.pci_address.as_ref().map(|a| a.value.clone()) else {
        return Err(HwError::NotBuilt(
            "VFIO preflight of a board without board.pci_address",
        ));
    };
    let rel = format!("/sys/bus/pci/devices/{addr}");
    let sysfs = host.path(&rel);
    if !sysfs.exists() {
        return Err(HwError::NoDevice {
            addr,
            path: PathBuf::from(rel),
        });
    }
    let name = |p: &Path| {
        std::fs::read_link(p)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    match name(&sysfs.join("driver")) {
        Some(d) if d == "vfio-pci" => {}
        other => {
            return Err(HwError::NotVfio {
                addr,
                driver: other.unwrap_or_else(|| "none".into()),
            });
        }
    }
    let Some(group) = name(&sysfs.join("iommu_group")).and_then(|g| g.parse::<u32>().ok()) else {
        return Err(HwError::NoIommuGroup { addr });
    };
    if let Some(configured) = cfg.iommu_group
        && configured != group
    {
        return Err(HwError::GroupMismatch {
            addr,
            found: group,
            configured,
        });
    }
    let node = format!("/dev/vfio/{group}");
    if !host.path(&node).exists() {
        return Err(HwError::NoGroupNode {
            addr,
            path: PathBuf::from(node),
        });
    }
    Ok((sysfs, group))
}

/// One BAR: the region (for `pread`/`pwrite`) and the part that is mapped.
#[derive(Debug)]
struct BarAccess {
    /// Dropped before `region` (munmap first).
    map: Option<MappedOwningPciRegion>,
    region: OwningPciRegion,
}

impl BarAccess {
    fn open(
        dev: &VfioPciDevice,
        addr: &str,
        index: usize,
        map_len: Option<u64>,
    ) -> Result<Self, HwError> {
        let region = dev.bar(index).ok_or_else(|| HwError::Bar {
            addr: addr.to_string(),
            what: format!("BAR{index} is missing (is the vfpga bitstream loaded?)"),
        })?;
        let want = map_len.unwrap_or(region.len()).min(region.len());
        let map = if region.is_mappable() {
            match region.map(0..want, Permissions::ReadWrite) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(addr, "BAR{index} mmap failed ({e}); using pread/pwrite");
                    None
                }
            }
        } else {
            tracing::info!(addr, "BAR{index} is not mappable; using pread/pwrite");
            None
        };
        Ok(BarAccess { map, region })
    }

    /// The mapped pointer for an access of `width` bytes at `offset`, if
    /// that lies inside the mapping.
    fn mapped(&self, offset: u64, width: usize) -> Option<*mut u8> {
        let m = self.map.as_ref()?;
        let end = offset.checked_add(width as u64)?;
        if end > m.len() as u64 {
            return None;
        }
        // In range (checked above), so the offset fits in usize and the
        // pointer stays inside the mapping.
        Some(m.as_mut_ptr().wrapping_add(offset as usize))
    }
}

/// `pci-driver`'s `VfioPciDevice` with BAR0 and BAR2 mapped.
#[derive(Debug)]
pub(crate) struct VfioBottom {
    addr: String,
    /// BAR accesses are dropped (unmapped) before the device.
    bar0: BarAccess,
    bar2: BarAccess,
    dev: VfioPciDevice,
}

impl VfioBottom {
    /// Opens the device at `sysfs`, enables memory decoding (bus mastering
    /// is the board layer's, once the function is reset and ready), maps the
    /// register window of BAR0 and all of BAR2.
    pub(crate) fn open(sysfs: &Path, addr: &str) -> Result<Self, HwError> {
        let vfio = |what: &str| {
            let what = what.to_string();
            let addr = addr.to_string();
            move |source| HwError::Vfio { addr, what, source }
        };
        let dev = VfioPciDevice::open(sysfs).map_err(vfio("opening through VFIO"))?;
        let config = dev.config();
        let cmd = config.command();
        cmd.memory_space_enable()
            .write(true)
            .map_err(vfio("enabling memory decoding"))?;
        vfpga_device::shared_mem::install_guard().map_err(vfio("installing the SIGBUS guard"))?;
        let bar0 = BarAccess::open(&dev, addr, 0, Some(REG_WINDOW))?;
        let bar2 = BarAccess::open(&dev, addr, 2, None)?;
        Ok(VfioBottom {
            addr: addr.to_string(),
            bar0,
            bar2,
            dev,
        })
    }

    fn bar(&self, bar: Bar) -> &BarAccess {
        match bar {
            Bar::Regs => &self.bar0,
            Bar::DevMem => &self.bar2,
        }
    }

    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> HwError {
        let addr = self.addr.clone();
        move |source| HwError::Vfio { addr, what, source }
    }
}

impl Bottom for VfioBottom {
    fn bar_len(&self, bar: Bar) -> u64 {
        self.bar(bar).region.len()
    }

    fn read(&mut self, bar: Bar, offset: u64, width: usize) -> Result<u64, HwError> {
        let b = self.bar(bar);
        if let Some(p) = b.mapped(offset, width) {
            // SAFETY: `mapped` checked that [p, p+width) lies inside the live
            // BAR mapping owned by `b.map`; the caller guarantees `offset` is
            // a multiple of `width`, and the mapping is page-aligned, so `p`
            // is aligned for the type read. MMIO is only ever touched through
            // volatile accesses of the device's natural widths.
            let v = unsafe {
                match width {
                    1 => VolatilePtr::new(NonNull::new_unchecked(p)).read().into(),
                    2 => VolatilePtr::new(NonNull::new_unchecked(p.cast::<u16>()))
                        .read()
                        .into(),
                    4 => VolatilePtr::new(NonNull::new_unchecked(p.cast::<u32>()))
                        .read()
                        .into(),
                    _ => VolatilePtr::new(NonNull::new_unchecked(p.cast::<u64>())).read(),
                }
            };
            return Ok(v);
        }
        let r = &b.region;
        let what = || format!("reading BAR{} at {offset:#x}", bar_index(bar));
        Ok(match width {
            1 => r.read_u8(offset).map_err(self.io(what()))?.into(),
            2 => r.read_le_u16(offset).map_err(self.io(what()))?.into(),
            4 => r.read_le_u32(offset).map_err(self.io(what()))?.into(),
            _ => {
                let lo = r.read_le_u32(offset).map_err(self.io(what()))?;
                let hi = r.read_le_u32(offset + 4).map_err(self.io(what()))?;
                u64::from(lo) | (u64::from(hi) << 32)
            }
        })
    }

    fn write(&mut self, bar: Bar, offset: u64, width: usize, value: u64) -> Result<(), HwError> {
        let b = self.bar(bar);
        if let Some(p) = b.mapped(offset, width) {
            // SAFETY: as in `read`: in range, aligned, volatile, and the
            // mapping is writable (mapped ReadWrite).
            unsafe {
                match width {
                    1 => VolatilePtr::new(NonNull::new_unchecked(p)).write(value as u8),
                    2 => VolatilePtr::new(NonNull::new_unchecked(p.cast::<u16>()))
                        .write(value as u16),
                    4 => VolatilePtr::new(NonNull::new_unchecked(p.cast::<u32>()))
                        .write(value as u32),
                    _ => VolatilePtr::new(NonNull::new_unchecked(p.cast::<u64>())).write(value),
                }
            }
            return Ok(());
        }
        let r = &b.region;
        let what = || format!("writing BAR{} at {offset:#x}", bar_index(bar));
        match width {
            1 => r.write_u8(offset, value as u8).map_err(self.io(what()))?,
            2 => r
                .write_le_u16(offset, value as u16)
                .map_err(self.io(what()))?,
            4 => r
                .write_le_u32(offset, value as u32)
                .map_err(self.io(what()))?,
            _ => {
                r.write_le_u32(offset, value as u32)
                    .map_err(self.io(what()))?;
                r.write_le_u32(offset + 4, (value >> 32) as u32)
                    .map_err(self.io(what()))?;
            }
        }
        Ok(())
    }

    /// Wide copies through the mapped BAR2: 16-byte loads and stores where
    /// aligned (one 16-byte TLP each on an uncached mapping, instead of two
    /// 8-byte ones), 8-byte pieces at the ragged ends.
    fn read_bulk(&mut self, bar: Bar, offset: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let Some(p) = self.bar(bar).mapped(offset, buf.len()) else {
            return crate::board::read_by_pieces(self, bar, offset, buf);
        };
        // SAFETY: `mapped` checked that [p, p+len) lies inside the live BAR
        // mapping; `buf` is a distinct allocation; `open` installed the
        // guard. Device memory is plain memory behind the BAR (no read side
        // effects), so wide reads are allowed; `copy_from` uses only
        // volatile accesses.
        unsafe { vfpga_device::shared_mem::copy_from(p, buf) }.map_err(|_| HwError::Bar {
            addr: self.addr.clone(),
            what: format!("BAR{} read at {offset:#x} faulted", bar_index(bar)),
        })
    }

    fn write_bulk(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), HwError> {
        let Some(p) = self.bar(bar).mapped(offset, data.len()) else {
            return crate::board::write_by_pieces(self, bar, offset, data);
        };
        // SAFETY: as in `read_bulk`; the mapping is writable.
        unsafe { vfpga_device::shared_mem::copy_to(data, p) }.map_err(|_| HwError::Bar {
            addr: self.addr.clone(),
            what: format!("BAR{} write at {offset:#x} faulted", bar_index(bar)),
        })
    }

    fn config_read(&mut self, offset: u16, width: usize) -> Result<u32, HwError> {
        let c = self.dev.config();
        let o = u64::from(offset);
        let what = || format!("reading configuration space at {offset:#x}");
        Ok(match width {
            1 => c.read_u8(o).map_err(self.io(what()))?.into(),
            2 => c.read_le_u16(o).map_err(self.io(what()))?.into(),
            _ => c.read_le_u32(o).map_err(self.io(what()))?,
        })
    }

    fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<(), HwError> {
        let c = self.dev.config();
        let o = u64::from(offset);
        let what = || format!("writing configuration space at {offset:#x}");
        match width {
            1 => c.write_u8(o, value as u8).map_err(self.io(what())),
            2 => c.write_le_u16(o, value as u16).map_err(self.io(what())),
            _ => c.write_le_u32(o, value).map_err(self.io(what())),
        }
    }

    fn iommu_alignment(&self) -> u64 {
        self.dev.iommu().alignment() as u64
    }

    unsafe fn dma_map(
        &mut self,
        iova: u64,
        len: u64,
        addr: NonNull<u8>,
        perm: Perm,
        _file: Option<(std::os::fd::BorrowedFd<'_>, u64)>,
    ) -> Result<(), HwError> {
        let dma = |what: String| HwError::Dma {
            addr: self.addr.clone(),
            iova,
            len,
            what,
        };
        let size = usize::try_from(len).map_err(|_| dma("too large for this host".into()))?;
        let perms = Permissions::new(perm.read, perm.write)
            .ok_or_else(|| dma("mapping allows neither reads nor writes".into()))?;
        let iommu = self.dev.iommu();
        let end = iova.saturating_add(len);
        if !iommu
            .valid_iova_ranges()
            .iter()
            .any(|r| r.start <= iova && end <= r.end)
        {
            return Err(dma("outside the IOMMU's valid IOVA ranges".into()));
        }
        // SAFETY: forwarded contract of `Bottom::dma_map`: the range is one
        // live mapping that stays mapped until unmapped here or the container
        // closes, and is accessed by the host only through raw copies.
        unsafe { iommu.map(iova, size, addr.as_ptr(), perms) }
            .map_err(self.io(format!("IOMMU map of [{iova:#x}, +{len:#x})")))
    }

    fn dma_unmap(&mut self, iova: u64, len: u64) -> Result<(), HwError> {
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        self.dev
            .iommu()
            .unmap(iova, size)
            .map_err(self.io(format!("IOMMU unmap of [{iova:#x}, +{len:#x})")))
    }

    fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), HwError> {
        use std::os::fd::AsRawFd;
        let interrupts = self.dev.interrupts();
        let msix = interrupts.msi_x();
        if msix.max() < fds.len() {
            return Err(HwError::Irq {
                addr: self.addr.clone(),
                what: format!(
                    "the device has {} MSI-X vectors, vfpga needs {}",
                    msix.max(),
                    fds.len()
                ),
                source: std::io::Error::from(std::io::ErrorKind::Unsupported),
            });
        }
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        msix.enable(&raw).map_err(|source| HwError::Irq {
            addr: self.addr.clone(),
            what: "enabling MSI-X".into(),
            source,
        })
    }

    fn disable_msix(&mut self) -> Result<(), HwError> {
        self.dev
            .interrupts()
            .msi_x()
            .disable()
            .map_err(|source| HwError::Irq {
                addr: self.addr.clone(),
                what: "disabling MSI-X".into(),
                source,
            })
    }

    fn reset(&mut self) -> Result<(), HwError> {
        self.dev
            .reset()
            .map_err(self.io("function reset (VFIO_DEVICE_RESET)".into()))
    }
}

fn bar_index(bar: Bar) -> u8 {
    match bar {
        Bar::Regs => 0,
        Bar::DevMem => 2,
    }
}

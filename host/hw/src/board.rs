//! The board layer above the thin VFIO bottom: access rules, the open-time
//! identity and version checks, IOMMU mappings kept in step with the
//! [`DmaPort`], and MSI-X forwarding. Everything register-level beyond this
//! (quiesce, state port, dirty bitmap, DMA log) is the provided part of
//! [`Device`], the same code the model and the RTL run in CI.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::Arc;

use nix::sys::eventfd::EventFd;
use vfpga_config::ExpectedIds;
use vfpga_device::{
    Bar, Device, DeviceError, DeviceInfo, DmaPort, GuestMemory, Identity, IrqSink, Perm, Progress,
};
use vfpga_regs::{Status, consts, fields, offsets};

use crate::error::{HwError, version_string};
use crate::irq::IrqForwarder;
use crate::simboard::{SimEvent, SimStats};

/// Size of the register window at the start of BAR0 (the rest is the MSI-X
/// table and PBA, which belong to the kernel).
pub(crate) const REG_WINDOW: u64 = consts::MSIX_TABLE_OFFSET as u64;

/// The board-only bottom: BAR access, IOMMU, MSI-X eventfds, reset. The VFIO
/// implementation is [`crate::vfio::VfioBottom`]; tests put a device model
/// behind it.
pub(crate) trait Bottom: Send + fmt::Debug {
    /// Length of `bar` in bytes.
    fn bar_len(&self, bar: Bar) -> u64;

    /// Reads `width` (1, 2, 4 or 8) bytes at `offset`, naturally aligned and
    /// inside the BAR (the caller checked), as a little-endian value.
    fn read(&mut self, bar: Bar, offset: u64, width: usize) -> Result<u64, HwError>;

    /// Writes the low `width` bytes of `value` at `offset` (same rules as `read`).
    fn write(&mut self, bar: Bar, offset: u64, width: usize, value: u64) -> Result<(), HwError>;

    /// Reads `buf.len()` bytes of `bar` at `offset` (inside the BAR; the
    /// caller checked) in as few bus transactions as this bottom can issue.
    /// The default splits the range into naturally aligned reads of at most
    /// 8 bytes.
    fn read_bulk(&mut self, bar: Bar, offset: u64, buf: &mut [u8]) -> Result<(), HwError> {
        read_by_pieces(self, bar, offset, buf)
    }

    /// Writes `data` to `bar` at `offset`, as `read_bulk` reads.
    fn write_bulk(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), HwError> {
        write_by_pieces(self, bar, offset, data)
    }

    /// Reads `width` (1, 2 or 4) bytes of PCI configuration space at
    /// `offset` (naturally aligned). A function that does not answer reads
    /// all ones, as on a PCI bus.
    fn config_read(&mut self, offset: u16, width: usize) -> Result<u32, HwError>;

    /// Writes the low `width` bytes of `value` to configuration space.
    fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<(), HwError>;

    /// Alignment the IOMMU needs for IOVAs, lengths and host addresses
    /// (the 4 KiB page unless the bottom knows its IOMMU's).
    fn iommu_alignment(&self) -> u64 {
        4096
    }

    /// Maps `[addr, addr+len)` of this process at `iova` for the device.
    /// `file`, when the memory is a shared mapping of a file, is that file
    /// and the offset of `addr` in it (a bottom in another process maps the
    /// same pages through it).
    ///
    /// # Safety
    ///
    /// `[addr, addr+len)` must be one live mapping of this process that stays
    /// mapped (not unmapped, remapped or freed) until [`Bottom::dma_unmap`] of
    /// exactly this range has returned `Ok` or the bottom is dropped. From the
    /// call on, the device may read it (and write it when `perm.write`) at any
    /// moment, so the process must access it only through raw-pointer copies,
    /// never through Rust references.
    unsafe fn dma_map(
        &mut self,
        iova: u64,
        len: u64,
        addr: NonNull<u8>,
        perm: Perm,
        file: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), HwError>;

    /// Removes the mapping made at `iova` with `len`.
    fn dma_unmap(&mut self, iova: u64, len: u64) -> Result<(), HwError>;

    /// Routes MSI-X vector `i` to `fds[i]` (all vectors at once).
    fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), HwError>;

    /// Stops MSI-X delivery.
    fn disable_msix(&mut self) -> Result<(), HwError>;

    /// Function-level reset of the PCI function.
    fn reset(&mut self) -> Result<(), HwError>;

    /// Whether the device behind runs by itself (a board does).
    fn self_running(&self) -> bool {
        true
    }

    /// Whether the device reaches guest memory through the board layer's
    /// `DmaPort` (a stand-in) rather than through the IOMMU (a board, the
    /// simulated board).
    fn dma_through_port(&self) -> bool {
        false
    }

    /// Lets a device that does not run by itself progress (a stand-in);
    /// `None` for a self-running one.
    fn advance(&mut self, _budget: u64) -> Result<Option<Progress>, HwError> {
        Ok(None)
    }

    /// Injects an event from outside the driver (the simulated board only).
    fn sim_event(&mut self, _ev: SimEvent) -> Result<(), HwError> {
        Err(HwError::NotBuilt(
            "events are injected only into the simulated board",
        ))
    }

    /// The simulator's counters (the simulated board only).
    fn sim_stats(&mut self) -> Result<SimStats, HwError> {
        Err(HwError::NotBuilt(
            "counters exist only on the simulated board",
        ))
    }
}

impl<T: Bottom + ?Sized> Bottom for Box<T> {
    fn bar_len(&self, bar: Bar) -> u64 {
        (**self).bar_len(bar)
    }
    fn read(&mut self, bar: Bar, offset: u64, width: usize) -> Result<u64, HwError> {
        (**self).read(bar, offset, width)
    }
    fn write(&mut self, bar: Bar, offset: u64, width: usize, value: u64) -> Result<(), HwError> {
        (**self).write(bar, offset, width, value)
    }
    fn read_bulk(&mut self, bar: Bar, offset: u64, buf: &mut [u8]) -> Result<(), HwError> {
        (**self).read_bulk(bar, offset, buf)
    }
    fn write_bulk(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), HwError> {
        (**self).write_bulk(bar, offset, data)
    }
    fn config_read(&mut self, offset: u16, width: usize) -> Result<u32, HwError> {
        (**self).config_read(offset, width)
    }
    fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<(), HwError> {
        (**self).config_write(offset, width, value)
    }
    fn iommu_alignment(&self) -> u64 {
        (**self).iommu_alignment()
    }
    unsafe fn dma_map(
        &mut self,
        iova: u64,
        len: u64,
        addr: NonNull<u8>,
        perm: Perm,
        file: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), HwError> {
        // SAFETY: the caller upholds `Bottom::dma_map`'s contract, which is
        // forwarded unchanged.
        unsafe { (**self).dma_map(iova, len, addr, perm, file) }
    }
    fn dma_unmap(&mut self, iova: u64, len: u64) -> Result<(), HwError> {
        (**self).dma_unmap(iova, len)
    }
    fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), HwError> {
        (**self).enable_msix(fds)
    }
    fn disable_msix(&mut self) -> Result<(), HwError> {
        (**self).disable_msix()
    }
    fn reset(&mut self) -> Result<(), HwError> {
        (**self).reset()
    }
    fn self_running(&self) -> bool {
        (**self).self_running()
    }
    fn dma_through_port(&self) -> bool {
        (**self).dma_through_port()
    }
    fn advance(&mut self, budget: u64) -> Result<Option<Progress>, HwError> {
        (**self).advance(budget)
    }
    fn sim_event(&mut self, ev: SimEvent) -> Result<(), HwError> {
        (**self).sim_event(ev)
    }
    fn sim_stats(&mut self) -> Result<SimStats, HwError> {
        (**self).sim_stats()
    }
}

#[derive(Debug)]
struct IommuMap {
    len: u64,
    /// Keeps the memory alive while the IOMMU mapping exists.
    mem: Arc<dyn GuestMemory>,
}

/// Splits `[offset, offset+len)` into naturally aligned accesses of at most
/// `max` bytes (the bus needs aligned accesses; the seam does not).
pub(crate) fn pieces(offset: u64, len: usize, max: usize) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut o = offset;
    let end = offset + len as u64;
    while o < end {
        let mut w = max;
        while w > 1 && (!o.is_multiple_of(w as u64) || o + w as u64 > end) {
            w /= 2;
        }
        out.push((o, w));
        o += w as u64;
    }
    out
}

/// `buf.len()` bytes of `bar` at `offset` as naturally aligned reads of at
/// most 8 bytes (the default bulk path).
pub(crate) fn read_by_pieces<B: Bottom + ?Sized>(
    b: &mut B,
    bar: Bar,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), HwError> {
    let mut at = 0;
    for (o, w) in pieces(offset, buf.len(), 8) {
        let v = b.read(bar, o, w)?;
        buf[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
        at += w;
    }
    Ok(())
}

/// `data` to `bar` at `offset` as naturally aligned writes of at most 8 bytes.
pub(crate) fn write_by_pieces<B: Bottom + ?Sized>(
    b: &mut B,
    bar: Bar,
    offset: u64,
    data: &[u8],
) -> Result<(), HwError> {
    let mut at = 0;
    for (o, w) in pieces(offset, data.len(), 8) {
        let mut x = [0u8; 8];
        x[..w].copy_from_slice(&data[at..at + w]);
        b.write(bar, o, w, u64::from_le_bytes(x))?;
        at += w;
    }
    Ok(())
}

/// A board above some bottom. `BoardDevice` is `Board<Box<dyn Bottom>>`.
#[derive(Debug)]
pub(crate) struct Board<B: Bottom> {
    /// Dropped first: closing the VFIO container removes every IOMMU mapping
    /// before `iommu` releases the memory behind them.
    bottom: B,
    addr: String,
    info: DeviceInfo,
    dma: DmaPort,
    iommu: BTreeMap<u64, IommuMap>,
    irq: Option<IrqForwarder>,
    /// The eventfds MSI-X is routed to (shared with the forwarding thread),
    /// routed again after a function reset.
    irq_fds: Option<Arc<Vec<EventFd>>>,
    /// Set once the device is found lost; every later access fails with it.
    lost: Option<String>,
    /// `advance` calls since the last liveness check.
    since_check: u32,
}

/// PCI command register bits vfpga sets: memory decoding and bus mastering.
const CMD_MEMORY: u32 = 1 << 1;
const CMD_MASTER: u32 = 1 << 2;
/// Configuration space offsets and the MSI-X capability ID (PCI Local Bus 3.0, §6).
const CFG_COMMAND: u16 = 0x04;
const CFG_STATUS: u16 = 0x06;
const CFG_CAP_PTR: u16 = 0x34;
const STATUS_CAP_LIST: u32 = 1 << 4;
const CAP_ID_MSIX: u32 = 0x11;
/// How long a reset device may take to read its identity again.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Units a device that does not run by itself (a stand-in, the simulated
/// board) is advanced per readiness poll.
const READY_STEP: u64 = 4096;
/// `advance` calls between two liveness checks of a device that runs.
const CHECK_EVERY: u32 = 256;

impl<B: Bottom> Board<B> {
    /// Checks identity and version, maps the DMA port's memory, routes MSI-X.
    pub(crate) fn new(
        bottom: B,
        addr: &str,
        expected: &ExpectedIds,
        devmem_size: u64,
        dma: DmaPort,
        irq: Arc<dyn IrqSink>,
    ) -> Result<Self, HwError> {
        let self_running = bottom.self_running();
        let mut b = Board {
            bottom,
            addr: addr.to_string(),
            info: DeviceInfo {
                identity: Identity::this_build(0, 0),
                bar0_size: consts::BAR0_SIZE.into(),
                bar2_size: 0,
                self_running,
            },
            dma,
            iommu: BTreeMap::new(),
            irq: None,
            irq_fds: None,
            lost: None,
            since_check: 0,
        };
        b.check_config_space(expected)?;
        // Bus mastering only once the function is reset and ready: a device
        // a previous owner left running must not reach this owner's memory.
        b.set_command(CMD_MEMORY)?;
        if let Err(e) = b.bottom.reset() {
            tracing::warn!(addr = %b.addr, "function reset at open failed ({e}); using CTRL.SOFT_RESET");
            b.bottom.write(
                Bar::Regs,
                offsets::CTRL.into(),
                4,
                fields::ctrl::SOFT_RESET.set(0, 1).into(),
            )?;
        }
        b.wait_ready()?;
        b.identify(expected, devmem_size)?;
        b.set_command(CMD_MEMORY | CMD_MASTER)?;
        b.sync_dma()?;
        b.route_irqs(irq)?;
        Ok(b)
    }

    fn cfg(&mut self, offset: u16, width: usize) -> Result<u32, HwError> {
        self.bottom.config_read(offset, width)
    }

    /// Sets the command register's memory and bus-master bits to `bits`
    /// (other bits kept).
    fn set_command(&mut self, bits: u32) -> Result<(), HwError> {
        let cmd = self.cfg(CFG_COMMAND, 2)?;
        if cmd == 0xffff {
            return Err(self.mark_lost("configuration space reads all ones".into()));
        }
        let v = (cmd & !(CMD_MEMORY | CMD_MASTER)) | bits;
        self.bottom.config_write(CFG_COMMAND, 2, v)
    }

    /// The configuration space checks: vendor and device ID as
    /// `board.expected` says, and an MSI-X capability with the datasheet's
    /// vector count, table and PBA (both in BAR0 at `MSIX_TABLE_OFFSET` and
    /// `MSIX_PBA_OFFSET`, behind the register window).
    fn check_config_space(&mut self, expected: &ExpectedIds) -> Result<(), HwError> {
        let bad = |addr: &str, what: String| HwError::ConfigSpace {
            addr: addr.to_string(),
            what,
        };
        let (vendor, device) = (self.cfg(0x00, 2)?, self.cfg(0x02, 2)?);
        if vendor == 0xffff {
            return Err(self.mark_lost(
                "configuration space reads all ones: the function does not answer".into(),
            ));
        }
        if (vendor, device) != (expected.vendor_id.into(), expected.device_id.into()) {
            return Err(bad(
                &self.addr,
                format!(
                    "vendor:device is {vendor:04x}:{device:04x}, board.expected says {:04x}:{:04x}",
                    expected.vendor_id, expected.device_id
                ),
            ));
        }
        if self.cfg(CFG_STATUS, 2)? & STATUS_CAP_LIST == 0 {
            return Err(bad(
                &self.addr,
                "no capability list, so no MSI-X capability".into(),
            ));
        }
        let mut at = self.cfg(CFG_CAP_PTR, 1)? & 0xfc;
        let mut msix = None;
        // A list longer than configuration space can hold is corrupt.
        for _ in 0..48 {
            if at < 0x40 {
                break;
            }
            let head = self.cfg(at as u16, 2)?;
            if head & 0xff == CAP_ID_MSIX {
                msix = Some(at as u16);
                break;
            }
            at = (head >> 8) & 0xfc;
        }
        let Some(cap) = msix else {
            return Err(bad(
                &self.addr,
                "no MSI-X capability in the capability list".into(),
            ));
        };
        let vectors = (self.cfg(cap + 2, 2)? & 0x7ff) + 1;
        if vectors < consts::NUM_VECTORS {
            return Err(bad(
                &self.addr,
                format!(
                    "MSI-X has {vectors} vectors, the datasheet needs {}",
                    consts::NUM_VECTORS
                ),
            ));
        }
        for (what, off, want) in [
            ("table", cap + 4, consts::MSIX_TABLE_OFFSET),
            ("PBA", cap + 8, consts::MSIX_PBA_OFFSET),
        ] {
            let v = self.cfg(off, 4)?;
            let (bir, offset) = (v & 7, v & !7);
            if (bir, offset) != (0, want) {
                return Err(bad(
                    &self.addr,
                    format!(
                        "the MSI-X {what} is in BAR{bir} at {offset:#x}; the datasheet puts it in BAR0 at {want:#x} (check the PCIe IP's MSI-X settings against the shell's documentation)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Waits until a reset function answers and is idle.
    fn wait_ready(&mut self) -> Result<(), HwError> {
        let t0 = std::time::Instant::now();
        loop {
            let id = self.bottom.read(Bar::Regs, offsets::ID.into(), 4)? as u32;
            // Anything but all ones answers (what it says is `identify`'s).
            if id != u32::MAX {
                let idle = match self.bottom.advance(READY_STEP)? {
                    Some(p) => p.idle,
                    None => {
                        let st = self.bottom.read(Bar::Regs, offsets::STATUS.into(), 4)? as u32;
                        !Status::from_bits_retain(st).contains(Status::BUSY)
                    }
                };
                if idle {
                    return Ok(());
                }
            }
            if t0.elapsed() > READY_TIMEOUT {
                return Err(self.mark_lost(format!(
                    "not ready {READY_TIMEOUT:?} after reset (ID reads {id:#010x})"
                )));
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// Records that the device is lost and returns the error saying so.
    fn mark_lost(&mut self, what: String) -> HwError {
        if self.lost.is_none() {
            tracing::error!(addr = %self.addr, "device lost: {what}");
            self.lost = Some(what);
        }
        self.lost_error()
    }

    fn lost_error(&self) -> HwError {
        HwError::Lost {
            addr: self.addr.clone(),
            what: self.lost.clone().unwrap_or_default(),
        }
    }

    /// Whether the function still answers and still has the command bits
    /// vfpga set: all ones means link down or removal; memory decoding or bus
    /// mastering off means a reset (FLR, hot reset) nobody here asked for.
    fn check_alive(&mut self) -> Result<(), HwError> {
        if self.lost.is_some() {
            return Err(self.lost_error());
        }
        let cmd = self.cfg(CFG_COMMAND, 2)?;
        if cmd == 0xffff {
            return Err(self.mark_lost(
                "configuration space reads all ones (link down or surprise removal)".into(),
            ));
        }
        if cmd & (CMD_MEMORY | CMD_MASTER) != (CMD_MEMORY | CMD_MASTER) {
            return Err(self.mark_lost(format!(
                "the function was reset behind vfpga's back (command register {cmd:#06x}: memory decoding or bus mastering off); its registers and rings are back at reset values"
            )));
        }
        Ok(())
    }

    /// A BAR0 value of all ones is either a register's value or a function
    /// that no longer answers; the ID register tells which.
    fn check_all_ones(&mut self, v: u32) -> Result<(), HwError> {
        if v != u32::MAX {
            return Ok(());
        }
        let id = self.bottom.read(Bar::Regs, offsets::ID.into(), 4)? as u32;
        if id != consts::DEVICE_MAGIC {
            return Err(self.mark_lost(format!(
                "BAR0 reads all ones and ID reads {id:#010x} (link down or surprise removal)"
            )));
        }
        Ok(())
    }

    fn err(&self, source: DeviceError) -> HwError {
        HwError::Device {
            addr: self.addr.clone(),
            source,
        }
    }

    fn reg(&mut self, off: u32) -> Result<u32, HwError> {
        self.read_reg(off).map_err(|e| self.err(e))
    }

    /// The open-time checks: a vfpga device, an RTL version this host and the
    /// config accept, then every identity register (`check_identity`).
    fn identify(&mut self, expected: &ExpectedIds, devmem_size: u64) -> Result<(), HwError> {
        let bar0 = self.bottom.bar_len(Bar::Regs);
        if bar0 < u64::from(consts::BAR0_SIZE) {
            return Err(HwError::Bar {
                addr: self.addr.clone(),
                what: format!(
                    "BAR0 is {bar0:#x} bytes, the vfpga device has {:#x}",
                    consts::BAR0_SIZE
                ),
            });
        }
        let bar2 = self.bottom.bar_len(Bar::DevMem);
        if bar2 != devmem_size {
            return Err(HwError::Bar {
                addr: self.addr.clone(),
                what: format!(
                    "BAR2 is {bar2:#x} bytes, but device.devmem_size is {devmem_size:#x}"
                ),
            });
        }
        self.info.bar2_size = bar2;
        let id = self.reg(offsets::ID)?;
        if id != consts::DEVICE_MAGIC {
            return Err(HwError::NotVfpga {
                addr: self.addr.clone(),
                found: id,
                expected: consts::DEVICE_MAGIC,
            });
        }
        let rtl = self.reg(offsets::RTL_VERSION)?;
        let major_minor = |v: u32| {
            (
                fields::rtl_version::MAJOR.get(v),
                fields::rtl_version::MINOR.get(v),
            )
        };
        for (whose, wanted) in [
            ("this host understands", consts::RTL_VERSION),
            ("the config expects", expected.rtl_version),
        ] {
            if major_minor(rtl) != major_minor(wanted) {
                return Err(HwError::RtlVersion {
                    addr: self.addr.clone(),
                    found: version_string(rtl),
                    whose,
                    wanted: version_string(wanted),
                });
            }
        }
        if rtl != expected.rtl_version {
            tracing::warn!(
                addr = %self.addr,
                "bitstream RTL {} differs from the configured {} in the patch level only",
                version_string(rtl),
                version_string(expected.rtl_version)
            );
        }
        let features = self.reg(offsets::FEATURES)?;
        let dmalog_max_pages = self.reg(offsets::DMALOG_MAX_PAGES)?;
        self.info.identity = Identity {
            vendor_id: expected.vendor_id,
            device_id: expected.device_id,
            rtl_version: rtl,
            features,
            devmem_pages: (devmem_size / u64::from(consts::PAGE_SIZE)) as u32,
            dmalog_max_pages,
            ..Identity::this_build(0, 0)
        };
        self.check_identity().map_err(|source| HwError::Identity {
            addr: self.addr.clone(),
            source,
        })?;
        tracing::info!(addr = %self.addr, rtl = %version_string(rtl), "vfpga board identified");
        Ok(())
    }

    /// Makes the IOMMU map exactly the DMA port's memory: unmaps what the
    /// port no longer has, maps what is new. Call after every change to the
    /// port's mappings (the vfio-user server's DMA_MAP / DMA_UNMAP).
    pub(crate) fn sync_dma(&mut self) -> Result<(), HwError> {
        let want = self.dma.regions();
        let stale: Vec<(u64, u64)> = self
            .iommu
            .iter()
            .filter(|(iova, m)| {
                !want.iter().any(|(w, mem, _)| {
                    *w == **iova && mem.len() == m.len && Arc::ptr_eq(mem, &m.mem)
                })
            })
            .map(|(iova, m)| (*iova, m.len))
            .collect();
        for (iova, len) in stale {
            self.bottom.dma_unmap(iova, len)?;
            self.iommu.remove(&iova);
            tracing::debug!(addr = %self.addr, iova, len, "IOMMU unmapped");
        }
        let align = self.bottom.iommu_alignment().max(1);
        for (iova, mem, perm) in want {
            if self.iommu.contains_key(&iova) {
                continue;
            }
            let len = mem.len();
            let bad = |what: String| HwError::Dma {
                addr: self.addr.clone(),
                iova,
                len,
                what,
            };
            let Some(host) = mem.host_addr() else {
                return Err(bad(
                    "not shared host memory (a board needs fd-backed guest memory, e.g. MmapMemory)"
                        .into(),
                ));
            };
            if !iova.is_multiple_of(align)
                || !len.is_multiple_of(align)
                || !(host.as_ptr() as u64).is_multiple_of(align)
            {
                return Err(bad(format!(
                    "IOVA, length and host address must be {align:#x}-aligned for the IOMMU"
                )));
            }
            // SAFETY: `host_addr` promises [host, host+len) is one live shared
            // mapping, kept mapped as long as `mem` lives and accessed only by
            // raw-pointer copies; we keep `mem` alive in `self.iommu` until
            // `dma_unmap` of this exact range succeeded, and `bottom` (whose
            // drop closes the container and so removes every mapping) is
            // dropped before `iommu`.
            unsafe {
                self.bottom
                    .dma_map(iova, len, host, perm, mem.shared_file())?
            };
            self.iommu.insert(iova, IommuMap { len, mem });
            tracing::debug!(addr = %self.addr, iova, len, "IOMMU mapped");
        }
        Ok(())
    }

    fn route_irqs(&mut self, sink: Arc<dyn IrqSink>) -> Result<(), HwError> {
        let irq_err = |what: &str, source| HwError::Irq {
            addr: self.addr.clone(),
            what: what.to_string(),
            source,
        };
        let fds = (0..consts::NUM_VECTORS)
            .map(|_| {
                EventFd::from_flags(
                    nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                        | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| irq_err("eventfd", e.into()))?;
        let refs: Vec<&EventFd> = fds.iter().collect();
        self.bottom.enable_msix(&refs)?;
        let fds = Arc::new(fds);
        let fwd = IrqForwarder::start(fds.clone(), sink)
            .map_err(|e| irq_err("starting the forwarding thread", e))?;
        self.irq = Some(fwd);
        self.irq_fds = Some(fds);
        Ok(())
    }

    /// Function-level reset, then: wait until ready, identity read again,
    /// bus mastering and MSI-X back on. Ends a "lost" condition the reset
    /// recovered from.
    pub(crate) fn reset(&mut self) -> Result<(), HwError> {
        self.set_command(CMD_MEMORY)?;
        self.bottom.reset()?;
        self.lost = None;
        self.wait_ready()?;
        self.check_identity().map_err(|source| HwError::Identity {
            addr: self.addr.clone(),
            source,
        })?;
        self.set_command(CMD_MEMORY | CMD_MASTER)?;
        if let Some(fds) = self.irq_fds.clone() {
            let refs: Vec<&EventFd> = fds.iter().collect();
            self.bottom.enable_msix(&refs)?;
        }
        Ok(())
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn bottom_mut(&mut self) -> &mut B {
        &mut self.bottom
    }

    pub(crate) fn iommu_mappings(&self) -> Vec<(u64, u64)> {
        self.iommu.iter().map(|(i, m)| (*i, m.len)).collect()
    }

    fn check(&self, bar: Bar, offset: u64, len: usize) -> Result<(), DeviceError> {
        let size = match bar {
            Bar::Regs => self.info.bar0_size,
            Bar::DevMem => self.info.bar2_size,
        };
        match offset.checked_add(len as u64) {
            Some(e) if e <= size && len > 0 => Ok(()),
            _ => Err(DeviceError::BadAccess { bar, offset, len }),
        }
    }

    /// BAR0 rule (datasheet §1): 32-bit aligned accesses; 64 bits is two
    /// 32-bit accesses, low half first; anything else reads all ones.
    fn regs_ok(offset: u64, len: usize) -> bool {
        offset.is_multiple_of(4) && (len == 4 || len == 8)
    }
}

impl<B: Bottom> Drop for Board<B> {
    fn drop(&mut self) {
        if let Some(mut f) = self.irq.take() {
            if let Err(e) = self.bottom.disable_msix() {
                tracing::warn!(addr = %self.addr, "disabling MSI-X: {e}");
            }
            f.stop();
        }
        let maps: Vec<(u64, u64)> = self.iommu.iter().map(|(i, m)| (*i, m.len)).collect();
        for (iova, len) in maps {
            match self.bottom.dma_unmap(iova, len) {
                Ok(()) => {
                    self.iommu.remove(&iova);
                }
                // Kept: the container closes when `bottom` drops, before `iommu`.
                Err(e) => tracing::warn!(addr = %self.addr, iova, "IOMMU unmap: {e}"),
            }
        }
    }
}

fn to_dev(e: HwError) -> DeviceError {
    e.into()
}

impl<B: Bottom> Device for Board<B> {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn dma_through_port(&self) -> bool {
        self.bottom.dma_through_port()
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.check(bar, offset, data.len())?;
        if self.lost.is_some() {
            return Err(self.lost_error().into());
        }
        match bar {
            Bar::Regs if !Self::regs_ok(offset, data.len()) => data.fill(0xff),
            Bar::Regs => {
                for (i, chunk) in data.chunks_mut(4).enumerate() {
                    let v = self
                        .bottom
                        .read(bar, offset + 4 * i as u64, 4)
                        .map_err(to_dev)? as u32;
                    self.check_all_ones(v).map_err(to_dev)?;
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
            Bar::DevMem => self.bulk(offset, BulkBuf::Read(data)).map_err(to_dev)?,
        }
        Ok(())
    }

    /// Before every BAR0 write (a doorbell, CTRL, a ring base: whatever can
    /// make the device use new guest memory) the IOMMU is brought in step
    /// with the DMA port, so a VMM's DMA_MAP is in the IOMMU before the
    /// device is told about the memory. A removed mapping stays alive (its
    /// memory is held) until that sync unmaps it. Before a `CTRL` write
    /// (quiesce, resume, reset, enable) the function is checked alive, so a
    /// quiesce never "succeeds" on a device that reads all ones or was reset.
    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check(bar, offset, data.len())?;
        if self.lost.is_some() {
            return Err(self.lost_error().into());
        }
        if bar == Bar::Regs {
            self.sync_dma().map_err(to_dev)?;
            if offset == u64::from(offsets::CTRL) {
                self.check_alive().map_err(to_dev)?;
            }
        }
        match bar {
            Bar::Regs if !Self::regs_ok(offset, data.len()) => {}
            Bar::Regs => {
                for (i, chunk) in data.chunks(4).enumerate() {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(chunk);
                    self.bottom
                        .write(bar, offset + 4 * i as u64, 4, u32::from_le_bytes(b).into())
                        .map_err(to_dev)?;
                }
            }
            Bar::DevMem => self.bulk(offset, BulkBuf::Write(data)).map_err(to_dev)?,
        }
        Ok(())
    }

    /// A board runs by itself: this only yields, and reports whether the
    /// device is idle (not busy, or quiesced, or halted). A stand-in or the
    /// simulated board is advanced by `budget`. Every `CHECK_EVERY` calls the
    /// function is checked alive.
    fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError> {
        if self.lost.is_some() {
            return Err(self.lost_error().into());
        }
        self.since_check += 1;
        if self.since_check >= CHECK_EVERY {
            self.since_check = 0;
            self.check_alive().map_err(to_dev)?;
        }
        match self.bottom.advance(budget) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(HwError::Lost { what, .. }) => return Err(self.mark_lost(what).into()),
            Err(e) => return Err(e.into()),
        }
        std::thread::yield_now();
        let st = self.status()?;
        let idle = !st.contains(Status::BUSY) || st.intersects(Status::QUIESCED | Status::HALTED);
        Ok(Progress { used: 0, idle })
    }

    /// In bulk (the bottom's widest transfers), never one word per access.
    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.mmio_read(Bar::DevMem, offset, buf)
    }

    /// As `devmem_read`.
    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if data.is_empty() {
            return Ok(());
        }
        self.mmio_write(Bar::DevMem, offset, data)
    }
}

/// A device-memory transfer's buffer.
enum BulkBuf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// Device memory moves in pieces of this size, so that a device lost in the
/// middle of a large transfer is reported with how much had moved.
const BULK_PIECE: usize = 1 << 20;

impl<B: Bottom> Board<B> {
    fn bulk(&mut self, offset: u64, buf: BulkBuf<'_>) -> Result<(), HwError> {
        let (len, kind) = match &buf {
            BulkBuf::Read(b) => (b.len(), "read"),
            BulkBuf::Write(b) => (b.len(), "written"),
        };
        if len > BULK_PIECE {
            self.check_alive()?;
        }
        let mut done = 0;
        let mut buf = buf;
        while done < len {
            let n = BULK_PIECE.min(len - done);
            let at = offset + done as u64;
            let r = match &mut buf {
                BulkBuf::Read(b) => self
                    .bottom
                    .read_bulk(Bar::DevMem, at, &mut b[done..done + n]),
                BulkBuf::Write(b) => self.bottom.write_bulk(Bar::DevMem, at, &b[done..done + n]),
            };
            r?;
            // All ones is what a function that stopped answering reads as.
            let suspect = match &buf {
                BulkBuf::Read(b) => b[done..done + n].iter().all(|&x| x == 0xff),
                BulkBuf::Write(_) => false,
            };
            if (len > BULK_PIECE || suspect)
                && let Err(e) = self.check_alive()
            {
                let what = format!(
                    "{}; {done} of {len} bytes of device memory at {offset:#x} had been {kind} before it was seen",
                    self.lost.clone().unwrap_or_else(|| e.to_string())
                );
                self.lost = Some(what);
                return Err(self.lost_error());
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::Mutex;
    use std::sync::mpsc;
    use std::time::Duration;

    use vfpga_device::fake::FakeDevice;
    use vfpga_device::{MmapMemory, NoIrq, VecMemory};

    use super::*;

    type Log<T> = Arc<Mutex<Vec<T>>>;

    /// A bottom with a `FakeDevice` behind it, recording what the layer
    /// above asks of the board.
    #[derive(Debug)]
    struct FakeBottom {
        dev: FakeDevice,
        config: crate::standin::ConfigSpace,
        /// Configuration-space bytes replaced after the fact (offset, value).
        config_overrides: HashMap<u16, u32>,
        /// What happened, in order: `reset`, `cmd=<value>`.
        events: Log<String>,
        /// Set: the function stops answering (reads all ones, writes dropped).
        gone: Arc<std::sync::atomic::AtomicBool>,
        overrides: HashMap<u32, u32>,
        accesses: Log<(Bar, u64, usize)>,
        maps: Log<(u64, u64, usize)>,
        msix: Log<OwnedFd>,
    }

    fn lock<T>(l: &Log<T>) -> std::sync::MutexGuard<'_, Vec<T>> {
        l.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl FakeBottom {
        fn new(pages: u32) -> Self {
            FakeBottom {
                dev: FakeDevice::new(pages),
                config: crate::standin::ConfigSpace::new(
                    consts::PCI_VENDOR_ID as u16,
                    consts::PCI_DEVICE_ID as u16,
                ),
                config_overrides: HashMap::new(),
                events: Log::default(),
                gone: Arc::default(),
                overrides: HashMap::new(),
                accesses: Log::default(),
                maps: Log::default(),
                msix: Log::default(),
            }
        }
    }

    impl Bottom for FakeBottom {
        fn bar_len(&self, bar: Bar) -> u64 {
            match bar {
                Bar::Regs => consts::BAR0_SIZE.into(),
                Bar::DevMem => self.dev.info().bar2_size,
            }
        }
        fn read(&mut self, bar: Bar, offset: u64, width: usize) -> Result<u64, HwError> {
            assert!(
                offset.is_multiple_of(width as u64),
                "unaligned {offset:#x}/{width}"
            );
            lock(&self.accesses).push((bar, offset, width));
            if self.gone.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(u64::MAX >> (64 - 8 * width));
            }
            if bar == Bar::Regs
                && let Some(v) = self.overrides.get(&(offset as u32))
            {
                return Ok((*v).into());
            }
            let mut b = [0u8; 8];
            self.dev
                .mmio_read(bar, offset, &mut b[..width])
                .map_err(|source| HwError::Device {
                    addr: "fake".into(),
                    source,
                })?;
            Ok(u64::from_le_bytes(b))
        }
        fn write(
            &mut self,
            bar: Bar,
            offset: u64,
            width: usize,
            value: u64,
        ) -> Result<(), HwError> {
            assert!(
                offset.is_multiple_of(width as u64),
                "unaligned {offset:#x}/{width}"
            );
            lock(&self.accesses).push((bar, offset, width));
            self.dev
                .mmio_write(bar, offset, &value.to_le_bytes()[..width])
                .map_err(|source| HwError::Device {
                    addr: "fake".into(),
                    source,
                })
        }
        fn config_read(&mut self, offset: u16, width: usize) -> Result<u32, HwError> {
            if self.gone.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(u32::MAX >> (32 - 8 * width));
            }
            if let Some(v) = self.config_overrides.get(&offset) {
                return Ok(*v);
            }
            Ok(self.config.read(offset, width))
        }
        fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<(), HwError> {
            if offset == 0x04 {
                lock(&self.events).push(format!("cmd={value:#x}"));
            }
            self.config.write(offset, width, value);
            Ok(())
        }
        unsafe fn dma_map(
            &mut self,
            iova: u64,
            len: u64,
            addr: NonNull<u8>,
            _perm: Perm,
            _file: Option<(std::os::fd::BorrowedFd<'_>, u64)>,
        ) -> Result<(), HwError> {
            lock(&self.maps).push((iova, len, addr.as_ptr() as usize));
            Ok(())
        }
        fn dma_unmap(&mut self, iova: u64, len: u64) -> Result<(), HwError> {
            lock(&self.maps).retain(|m| (m.0, m.1) != (iova, len));
            Ok(())
        }
        fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), HwError> {
            let mut l = lock(&self.msix);
            for f in fds {
                l.push(f.as_fd().try_clone_to_owned().expect("dup eventfd"));
            }
            Ok(())
        }
        fn disable_msix(&mut self) -> Result<(), HwError> {
            lock(&self.msix).clear();
            Ok(())
        }
        fn reset(&mut self) -> Result<(), HwError> {
            lock(&self.events).push("reset".into());
            self.config.reset();
            self.dev = FakeDevice::new(self.dev.info().identity.devmem_pages);
            Ok(())
        }
    }

    const PAGES: u32 = 64;

    fn expected() -> ExpectedIds {
        ExpectedIds {
            vendor_id: consts::PCI_VENDOR_ID as u16,
            device_id: consts::PCI_DEVICE_ID as u16,
            rtl_version: consts::RTL_VERSION,
        }
    }

    fn open(bottom: FakeBottom, exp: &ExpectedIds) -> Result<Board<FakeBottom>, HwError> {
        Board::new(
            bottom,
            "0000:01:00.0",
            exp,
            u64::from(PAGES) * 4096,
            DmaPort::new(),
            Arc::new(NoIrq),
        )
    }

    #[test]
    fn provided_driver_logic_runs_through_the_board_layer() {
        let fb = FakeBottom::new(PAGES);
        let acc = fb.accesses.clone();
        let mut b = open(fb, &expected()).expect("opens");
        assert!(b.info().self_running);
        b.write_reg(offsets::SCRATCH, 0xfeed).expect("write");
        b.quiesce().expect("quiesce");
        let s = b.save_state().expect("save");
        assert_eq!(s.arch.scratch, 0xfeed);
        b.restore_state(&s).expect("restore");
        b.resume().expect("resume");
        // Unaligned device-memory access: one pass of aligned pieces.
        lock(&acc).clear();
        let data: Vec<u8> = (0..29u8).collect();
        b.devmem_write(4096 * 3 + 5, &data).expect("write");
        let widths: Vec<usize> = lock(&acc).iter().map(|a| a.2).collect();
        assert_eq!(widths, vec![1, 2, 8, 8, 8, 2]);
        let mut back = vec![0u8; data.len()];
        b.devmem_read(4096 * 3 + 5, &mut back).expect("read");
        assert_eq!(back, data);
        assert_eq!(b.take_dirty_pages().expect("dirty"), vec![1 << 3]);
    }

    #[test]
    fn bar0_is_32_bit_with_64_bit_as_two_halves_low_first() {
        let fb = FakeBottom::new(PAGES);
        let acc = fb.accesses.clone();
        let mut b = open(fb, &expected()).expect("opens");
        lock(&acc).clear();
        let mut v = [0u8; 8];
        b.mmio_read(Bar::Regs, u64::from(offsets::ID), &mut v)
            .expect("read");
        assert_eq!(
            *lock(&acc),
            vec![(Bar::Regs, 0, 4), (Bar::Regs, 4, 4)],
            "two 32-bit reads, low half first"
        );
        assert_eq!(
            u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            consts::DEVICE_MAGIC
        );
        let mut h = [0u8; 2];
        b.mmio_read(Bar::Regs, 0, &mut h).expect("read");
        assert_eq!(h, [0xff, 0xff], "other widths read all ones");
        assert!(matches!(
            b.mmio_read(Bar::DevMem, u64::from(PAGES) * 4096 - 4, &mut v),
            Err(DeviceError::BadAccess { .. })
        ));
    }

    #[test]
    fn a_bitstream_of_another_major_minor_is_refused_naming_both_versions() {
        let mut fb = FakeBottom::new(PAGES);
        fb.overrides.insert(offsets::RTL_VERSION, 0x0002_0100);
        let e = open(fb, &expected()).expect_err("refused");
        let this = |v: u32| {
            use vfpga_regs::fields::rtl_version::{MAJOR, MINOR, PATCH};
            format!("{}.{}.{}", MAJOR.get(v), MINOR.get(v), PATCH.get(v))
        };
        assert_eq!(
            e.to_string(),
            format!(
                "VFIO device 0000:01:00.0: bitstream RTL version 2.1.0 refused: this host understands {} (major.minor must match)",
                this(consts::RTL_VERSION)
            )
        );
        let mut exp = expected();
        exp.rtl_version = consts::RTL_VERSION + 0x100;
        let e = open(FakeBottom::new(PAGES), &exp).expect_err("refused");
        assert!(
            e.to_string().contains(&format!(
                "RTL version {} refused: the config expects {}",
                this(consts::RTL_VERSION),
                this(exp.rtl_version)
            )),
            "{e}"
        );
        // A patch-level difference is accepted.
        let mut fb = FakeBottom::new(PAGES);
        fb.overrides
            .insert(offsets::RTL_VERSION, consts::RTL_VERSION | 7);
        assert!(open(fb, &expected()).is_ok());
    }

    #[test]
    fn wrong_identity_and_wrong_sizes_are_refused() {
        let mut fb = FakeBottom::new(PAGES);
        fb.overrides.insert(offsets::ID, 0xdead_beef);
        assert!(matches!(
            open(fb, &expected()),
            Err(HwError::NotVfpga {
                found: 0xdead_beef,
                ..
            })
        ));
        let mut exp = expected();
        exp.device_id = 0x9999;
        let e = open(FakeBottom::new(PAGES), &exp).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "VFIO device 0000:01:00.0: configuration space: vendor:device is 1234:4650, board.expected says 1234:9999"
        );
        // Configuration space as expected, the core's PCI_ID register not.
        let mut fb = FakeBottom::new(PAGES);
        fb.overrides.insert(offsets::PCI_ID, 0x9999_1234);
        let e = open(fb, &expected()).expect_err("refused");
        assert!(matches!(e, HwError::Identity { .. }), "{e}");
        let e = Board::new(
            FakeBottom::new(PAGES),
            "0000:01:00.0",
            &expected(),
            1 << 20,
            DmaPort::new(),
            Arc::new(NoIrq),
        )
        .expect_err("refused");
        assert!(
            e.to_string().contains("but device.devmem_size is 0x100000"),
            "{e}"
        );
    }

    #[test]
    fn the_iommu_follows_the_dma_port_and_is_emptied_on_drop() {
        let fb = FakeBottom::new(PAGES);
        let maps = fb.maps.clone();
        let dma = DmaPort::new();
        let file = tempfile::tempfile().expect("tempfile");
        file.set_len(8 * 4096).expect("set_len");
        let m1 = Arc::new(MmapMemory::map_file(&file, 0, 4 * 4096).expect("map"));
        let m2 = Arc::new(MmapMemory::map_file(&file, 4 * 4096, 4 * 4096).expect("map"));
        let p1 = m1.host_addr().expect("host memory").as_ptr() as usize;
        dma.map(0x10000, m1, Perm::RW).expect("map");
        let mut b = Board::new(
            fb,
            "0000:01:00.0",
            &expected(),
            u64::from(PAGES) * 4096,
            dma.clone(),
            Arc::new(NoIrq),
        )
        .expect("opens");
        assert_eq!(*lock(&maps), vec![(0x10000, 0x4000, p1)]);
        dma.map(0x40000, m2, Perm::RW).expect("map");
        // A register write (here a doorbell) syncs the IOMMU first.
        b.write_reg(offsets::SQ_TAIL, 0).expect("doorbell");
        assert_eq!(
            b.iommu_mappings(),
            vec![(0x10000, 0x4000), (0x40000, 0x4000)]
        );
        dma.unmap(0x10000, 0x4000).expect("unmap");
        b.sync_dma().expect("sync");
        assert_eq!(
            lock(&maps).iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![0x40000]
        );
        // Memory the device cannot reach directly is refused, by IOVA.
        dma.map(0x80000, Arc::new(VecMemory::new(4096)), Perm::RW)
            .expect("map");
        let e = b.sync_dma().expect_err("refused");
        assert!(
            e.to_string()
                .contains("[0x80000, +0x1000): not shared host memory"),
            "{e}"
        );
        drop(b);
        assert!(lock(&maps).is_empty());
    }

    #[derive(Debug)]
    struct ChanSink(Mutex<mpsc::Sender<u16>>);

    impl IrqSink for ChanSink {
        fn raise(&self, vector: u16) {
            let _ = self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(vector);
        }
    }

    #[test]
    fn msix_eventfds_are_forwarded_to_the_sink() {
        let fb = FakeBottom::new(PAGES);
        let fds = fb.msix.clone();
        let (tx, rx) = mpsc::channel();
        let b = Board::new(
            fb,
            "0000:01:00.0",
            &expected(),
            u64::from(PAGES) * 4096,
            DmaPort::new(),
            Arc::new(ChanSink(Mutex::new(tx))),
        )
        .expect("opens");
        assert_eq!(lock(&fds).len(), consts::NUM_VECTORS as usize);
        for v in [consts::VECTOR_ERR, consts::VECTOR_CPL] {
            nix::unistd::write(&lock(&fds)[v as usize], &1u64.to_ne_bytes()).expect("signal");
            // A hang guard only: the vector must arrive, however long it takes.
            assert_eq!(rx.recv_timeout(Duration::from_secs(120)), Ok(v as u16));
        }
        drop(b);
        assert!(lock(&fds).is_empty(), "MSI-X disabled on close");
    }

    #[test]
    fn the_pci_ids_checked_are_the_configs() {
        // A bitstream built with its own IDs (the core's PCI_VENDOR_ID /
        // PCI_DEVICE_ID parameters) and a config that says so: accepted.
        let ids = |fb: &mut FakeBottom| {
            fb.config = crate::standin::ConfigSpace::new(0x10ee, 0x9038);
            fb.overrides.insert(offsets::PCI_ID, 0x9038_10ee);
        };
        let mut exp = expected();
        (exp.vendor_id, exp.device_id) = (0x10ee, 0x9038);
        let mut fb = FakeBottom::new(PAGES);
        ids(&mut fb);
        let b = open(fb, &exp).expect("the configured IDs are accepted");
        assert_eq!(
            (b.info().identity.vendor_id, b.info().identity.device_id),
            (0x10ee, 0x9038)
        );
        // The same bitstream with the default config: refused, naming both.
        let mut fb = FakeBottom::new(PAGES);
        ids(&mut fb);
        let e = open(fb, &expected()).expect_err("refused");
        assert!(
            e.to_string()
                .ends_with("vendor:device is 10ee:9038, board.expected says 1234:4650"),
            "{e}"
        );
    }

    #[test]
    fn the_msix_capability_must_locate_the_datasheets_table_and_pba() {
        let cap = 0x40u16;
        for (off, value, says) in [
            (
                cap + 4,
                0x1000,
                "the MSI-X table is in BAR0 at 0x1000; the datasheet puts it in BAR0 at 0x2000",
            ),
            (
                cap + 8,
                0x3002,
                "the MSI-X PBA is in BAR2 at 0x3000; the datasheet puts it in BAR0 at 0x3000",
            ),
            (cap + 2, 0, "MSI-X has 1 vectors, the datasheet needs 2"),
            (cap, 0x05, "no MSI-X capability in the capability list"),
        ] {
            let mut fb = FakeBottom::new(PAGES);
            fb.config_overrides.insert(off, value);
            let e = open(fb, &expected()).expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert!(matches!(e, HwError::ConfigSpace { .. }), "{e}");
        }
    }

    #[test]
    fn bus_mastering_is_enabled_only_after_the_reset_and_once_ready() {
        let fb = FakeBottom::new(PAGES);
        let events = fb.events.clone();
        let acc = fb.accesses.clone();
        let mut b = open(fb, &expected()).expect("opens");
        let ev = lock(&events).clone();
        let reset = ev
            .iter()
            .position(|e| e == "reset")
            .expect("a reset at open");
        let master = ev
            .iter()
            .position(|e| e == "cmd=0x6")
            .expect("bus mastering enabled");
        assert!(reset < master, "{ev:?}");
        assert_eq!(
            ev[..reset],
            ["cmd=0x2".to_string()],
            "only memory decoding before the reset: {ev:?}"
        );
        assert!(!lock(&acc).is_empty());
        // A function reset later: off, reset, ready, on again.
        lock(&events).clear();
        b.reset().expect("reset");
        assert_eq!(*lock(&events), ["cmd=0x2", "reset", "cmd=0x6"]);
    }

    #[test]
    fn a_function_that_stops_answering_is_lost_never_quiesced() {
        let fb = FakeBottom::new(PAGES);
        let gone = fb.gone.clone();
        let mut b = open(fb, &expected()).expect("opens");
        b.write_reg(offsets::SCRATCH, 7).expect("write");
        gone.store(true, std::sync::atomic::Ordering::Relaxed);
        // All ones reads as QUIESCED: without the check this "succeeded".
        let e = b.quiesce().expect_err("lost");
        assert!(matches!(e, DeviceError::Lost(_)), "{e:?}");
        assert!(e.to_string().contains("device lost"), "{e}");
        // From then on every access says so at once.
        let e = b.read_reg(offsets::STATUS).expect_err("lost");
        assert!(matches!(e, DeviceError::Lost(_)), "{e:?}");
        let e = b.advance(100).expect_err("lost");
        assert!(matches!(e, DeviceError::Lost(_)), "{e:?}");
    }

    #[test]
    fn a_reset_behind_the_drivers_back_is_lost() {
        let fb = FakeBottom::new(PAGES);
        let mut b = open(fb, &expected()).expect("opens");
        // An FLR nobody here asked for clears the command register.
        b.bottom_mut().config.reset();
        b.bottom_mut().dev = FakeDevice::new(PAGES);
        let e = b.quiesce().expect_err("lost");
        assert!(e.to_string().contains("reset behind vfpga's back"), "{e}");
        // A function reset of our own recovers it.
        b.reset().expect("reset");
        b.quiesce().expect("quiesce");
    }

    #[test]
    fn device_memory_lost_mid_transfer_says_how_much_had_moved() {
        let fb = FakeBottom::new(PAGES);
        let gone = fb.gone.clone();
        let mut b = open(fb, &expected()).expect("opens");
        let mut buf = vec![0u8; 8192];
        b.devmem_read(0, &mut buf).expect("read");
        gone.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = b.devmem_read(0, &mut buf).expect_err("lost");
        assert!(
            e.to_string()
                .contains("0 of 8192 bytes of device memory at 0x0 had been read"),
            "{e}"
        );
    }
}

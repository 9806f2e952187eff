//! DMA logging: which guest pages the device wrote, for the VMM's own
//! memory migration (`VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT`).
//!
//! Two sources, chosen at start:
//! - [`LogSource::Port`]: the host-side [`DmaPort`] log. Every device write
//!   goes through the port (model, simulator), so the log is exact.
//! - [`LogSource::Device`]: the device's own DMA write log (datasheet §7), the
//!   only truth on a board. It covers one window; writes outside it (or a
//!   window larger than `DMALOG_MAX_PAGES`) set OVERFLOW, and then every
//!   logged page is reported dirty.
//!
//! Rules follow the kernel (vfio-migration.md §2.8): START needs at least one
//! range (no "log everything" default), at most [`MAX_RANGES`], page-aligned,
//! non-overlapping and non-wrapping; a second START while logging is refused;
//! REPORT is read-and-clear, needs logging on, a page size that is a power
//! of two ≥ 4096, and a bitmap large enough for the range.

use std::collections::BTreeSet;

use vfpga_device::{Device, DeviceError, DmaPort};

/// Page size the log tracks (the START page size written back).
pub const LOG_PAGE: u64 = 4096;
/// Most ranges in one START (the kernel's `PAGE_SIZE / 16`).
pub const MAX_RANGES: usize = 256;

/// Where dirty pages come from.
#[derive(Debug, Clone)]
pub enum LogSource {
    /// The host DMA port's log.
    Port(DmaPort),
    /// The device's DMA write log.
    Device,
}

/// DMA-logging request errors, each mapping to the kernel's errno.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// START with no range.
    #[error("DMA logging needs at least one range")]
    NoRanges,
    /// START with more than [`MAX_RANGES`] ranges (E2BIG).
    #[error("{0} ranges is more than {MAX_RANGES}")]
    TooManyRanges(usize),
    /// A page size of 0 or not a power of two (or < 4096 in REPORT).
    #[error("bad page size {0:#x}")]
    BadPageSize(u64),
    /// A range not aligned to the page size.
    #[error("range [{iova:#x}, +{len:#x}) is not page aligned or empty")]
    Unaligned {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// A range that wraps the address space (EOVERFLOW).
    #[error("range [{iova:#x}, +{len:#x}) overflows")]
    Overflow {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Two ranges overlap.
    #[error("ranges overlap at {0:#x}")]
    Overlap(u64),
    /// START while logging is on.
    #[error("DMA logging is already started")]
    AlreadyStarted,
    /// STOP or REPORT while logging is off.
    #[error("DMA logging is not started")]
    NotStarted,
    /// REPORT bitmap too small for the range.
    #[error("bitmap of {have} words, {need} needed")]
    BitmapTooSmall {
        /// Words given.
        have: usize,
        /// Words needed.
        need: usize,
    },
    /// The device log failed.
    #[error("device DMA log failed")]
    Device(#[source] DeviceError),
}

impl DirtyError {
    /// The errno a VFIO server replies with.
    pub fn errno(&self) -> i32 {
        match self {
            DirtyError::TooManyRanges(_) => 7, // E2BIG
            DirtyError::Overflow { .. } => 75, // EOVERFLOW
            DirtyError::AlreadyStarted => 16,  // EBUSY
            DirtyError::Device(_) => 5,        // EIO
            _ => 22,                           // EINVAL
        }
    }
}

#[derive(Debug)]
struct Active {
    source: LogSource,
    ranges: Vec<(u64, u64)>,
    /// Dirty pages (IOVA of the 4 KiB page) not yet reported.
    dirty: BTreeSet<u64>,
}

/// The DMA-logging state of one device.
#[derive(Debug, Default)]
pub struct DmaLogging {
    active: Option<Active>,
}

impl DmaLogging {
    /// Logging off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether logging is on.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// START over `ranges` (`(iova, length)`), with `page_size` as a hint.
    /// Returns the page size used ([`LOG_PAGE`]).
    pub fn start<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        source: LogSource,
        page_size: u64,
        ranges: &[(u64, u64)],
    ) -> Result<u64, DirtyError> {
        if self.active.is_some() {
            return Err(DirtyError::AlreadyStarted);
        }
        if page_size == 0 || !page_size.is_power_of_two() {
            return Err(DirtyError::BadPageSize(page_size));
        }
        if ranges.is_empty() {
            return Err(DirtyError::NoRanges);
        }
        if ranges.len() > MAX_RANGES {
            return Err(DirtyError::TooManyRanges(ranges.len()));
        }
        let align = page_size.max(LOG_PAGE);
        let mut sorted = Vec::with_capacity(ranges.len());
        for &(iova, len) in ranges {
            if len == 0 || !iova.is_multiple_of(align) || !len.is_multiple_of(align) {
                return Err(DirtyError::Unaligned { iova, len });
            }
            if iova.checked_add(len).is_none() {
                return Err(DirtyError::Overflow { iova, len });
            }
            sorted.push((iova, len));
        }
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(DirtyError::Overlap(w[1].0));
            }
        }
        match &source {
            LogSource::Port(p) => p.dirty_log_start(),
            LogSource::Device => {
                let (lo, hi) = (sorted[0].0, sorted[sorted.len() - 1]);
                let pages = (hi.0 + hi.1 - lo) / LOG_PAGE;
                let max = u64::from(dev.info().identity.dmalog_max_pages);
                // A window the device cannot hold makes it report OVERFLOW,
                // which reports every logged page: correct, only slower.
                let pages = u32::try_from(pages.min(max)).unwrap_or(u32::MAX);
                dev.dma_log_start(lo, pages).map_err(DirtyError::Device)?;
            }
        }
        self.active = Some(Active {
            source,
            ranges: sorted,
            dirty: BTreeSet::new(),
        });
        Ok(LOG_PAGE)
    }

    /// STOP: logging off, log dropped.
    pub fn stop<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<(), DirtyError> {
        let a = self.active.take().ok_or(DirtyError::NotStarted)?;
        match a.source {
            LogSource::Port(p) => p.dirty_log_stop(),
            LogSource::Device => dev.dma_log_stop().map_err(DirtyError::Device)?,
        }
        Ok(())
    }

    /// Forgets the log without touching the device (after a device reset,
    /// which clears the device's log itself).
    pub fn reset(&mut self) {
        if let Some(Active {
            source: LogSource::Port(p),
            ..
        }) = self.active.take()
        {
            p.dirty_log_stop();
        }
    }

    fn collect<D: Device + ?Sized>(a: &mut Active, dev: &mut D) -> Result<(), DirtyError> {
        match &a.source {
            LogSource::Port(p) => a.dirty.extend(p.dirty_log_take()),
            LogSource::Device => {
                let (bits, overflow) = dev.dma_log_take().map_err(DirtyError::Device)?;
                let base = a.ranges.first().map_or(0, |r| r.0);
                if overflow {
                    for &(iova, len) in &a.ranges {
                        a.dirty
                            .extend((0..len / LOG_PAGE).map(|p| iova + p * LOG_PAGE));
                    }
                }
                for (wi, &w) in bits.iter().enumerate() {
                    let mut b = w;
                    while b != 0 {
                        let i = u64::from(b.trailing_zeros());
                        b &= b - 1;
                        a.dirty.insert(base + (wi as u64 * 64 + i) * LOG_PAGE);
                    }
                }
            }
        }
        Ok(())
    }

    /// REPORT: sets bit `(addr - iova) / page_size` of `bitmap` (u64 words)
    /// for every page of `[iova, iova + length)` the device wrote since the
    /// last report of it, and clears those pages from the log. Never clears a
    /// bit of `bitmap`.
    pub fn report<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), DirtyError> {
        let a = self.active.as_mut().ok_or(DirtyError::NotStarted)?;
        if page_size < LOG_PAGE || !page_size.is_power_of_two() {
            return Err(DirtyError::BadPageSize(page_size));
        }
        let end = iova
            .checked_add(length)
            .ok_or(DirtyError::Overflow { iova, len: length })?;
        let need = usize::try_from(length.div_ceil(page_size).div_ceil(64)).unwrap_or(usize::MAX);
        if bitmap.len() < need {
            return Err(DirtyError::BitmapTooSmall {
                have: bitmap.len(),
                need,
            });
        }
        Self::collect(a, dev)?;
        let hit: Vec<u64> = a.dirty.range(iova..end).copied().collect();
        for page in hit {
            a.dirty.remove(&page);
            let bit = (page - iova) / page_size;
            if let Some(w) = bitmap.get_mut((bit / 64) as usize) {
                *w |= 1 << (bit % 64);
            }
        }
        Ok(())
    }
}

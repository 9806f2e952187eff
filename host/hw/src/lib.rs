//! `vfpga-hw`: the board backend. A vfpga bitstream on a PCIe FPGA board,
//! bound to `vfio-pci`, driven through the same [`vfpga_device::Device`] seam
//! as the model and the RTL; and [`doctor`], the host checks behind
//! `vfpga doctor`.
//!
//! # Layers
//!
//! ```text
//!   BoardDevice ── Device (provided part: quiesce, state port, dirty bitmap,
//!        │                  DMA log ... the code CI runs on the model and RTL)
//!   Board<B>    ── access rules (BAR0 32-bit, BAR2 aligned pieces), identity
//!        │         and RTL-version checks, IOMMU kept in step with the DmaPort,
//!        │         MSI-X eventfds forwarded to the IrqSink by a thread
//!   Bottom      ── private trait, the only board-only code:
//!   VfioBottom     pci-driver open, BAR mmap + volatile, IOMMU map, MSI-X, reset
//! ```
//!
//! On a board the device reaches guest memory through the IOMMU, not through
//! the [`vfpga_device::DmaPort`]'s bounds checks: the IOMMU is the bounds
//! check, and the device's DMA write log (datasheet §7) is the dirty log.
//! The port's memory must therefore be shared host memory
//! ([`vfpga_device::MmapMemory`]). The IOMMU follows the port's mappings:
//! at open, before every BAR0 write (so a mapping is in place before the
//! device can be told about it), and on [`BoardDevice::sync_dma`].

use std::sync::Arc;

use vfpga_config::BoardConfig;
use vfpga_device::{Device, DeviceError, DmaPort, IrqSink};

mod board;
pub mod doctor;
mod error;
mod irq;
mod simboard;
mod standin;
mod vfio;

pub use error::{HwError, version_string};
pub use simboard::{SimBoardOptions, SimEvent, SimHello, SimStats, source_tree};
pub use vfio::preflight;

use board::{Board, Bottom};

/// The identity this build expects a vfpga bitstream to report (the
/// generated `PCI_VENDOR_ID`, `PCI_DEVICE_ID` and `RTL_VERSION`): what the
/// simulated board and the stand-ins are opened against.
pub fn this_build_ids() -> vfpga_config::ExpectedIds {
    use vfpga_regs::consts;
    vfpga_config::ExpectedIds {
        vendor_id: consts::PCI_VENDOR_ID as u16,
        device_id: consts::PCI_DEVICE_ID as u16,
        rtl_version: consts::RTL_VERSION,
    }
}
use standin::StandIn;
use vfio::VfioBottom;

/// A vfpga board through VFIO (or a stand-in, see [`BoardDevice::stand_in`]).
/// See the crate docs.
#[derive(Debug)]
pub struct BoardDevice {
    inner: Board<Box<dyn Bottom>>,
}

impl BoardDevice {
    /// Opens the board `cfg` names: checks it is present, bound to vfio-pci
    /// and has its VFIO group node (each missing piece is one [`HwError`]
    /// naming the PCI address), opens it, maps BAR0 and BAR2, refuses a
    /// bitstream whose identity or RTL major.minor differ from this build and
    /// `cfg.expected`, maps `dma`'s memory into the IOMMU and routes MSI-X to
    /// `irq`.
    ///
    /// With `board.simulated` instead of `board.pci_address`, starts the
    /// simulated board ([`BoardDevice::simulated`]) with `dmalog_pages`.
    pub fn open(
        cfg: &BoardConfig,
        devmem_size: u64,
        dmalog_pages: u32,
        dma: DmaPort,
        irq: Arc<dyn IrqSink>,
    ) -> Result<BoardDevice, HwError> {
        if let Some(sim) = &cfg.simulated {
            let o = SimBoardOptions::from_config(sim, devmem_size, dmalog_pages);
            return BoardDevice::simulated(&o, &cfg.expected, dma, irq);
        }
        let addr = cfg.name();
        let (sysfs, group) = preflight(&doctor::Host::system(), cfg)?;
        tracing::info!(addr, group, "opening board");
        let bottom: Box<dyn Bottom> = Box::new(VfioBottom::open(&sysfs, addr)?);
        let inner = Board::new(bottom, addr, &cfg.expected, devmem_size, dma, irq)?;
        Ok(BoardDevice { inner })
    }

    /// The board path with another device standing in for the board (the
    /// RTL under Verilator, or the model), for CI and for the cross-check:
    /// everything but the VFIO bottom runs as on a board (access rules,
    /// identity and RTL-version checks against `expected`, IOMMU bookkeeping
    /// over `dma`, MSI-X through eventfds and the forwarding thread to
    /// `irq`). `make` builds the stand-in on the same `dma`, raising its
    /// interrupts on the sink it is given.
    pub fn stand_in<F>(
        make: F,
        expected: &vfpga_config::ExpectedIds,
        devmem_size: u64,
        dma: DmaPort,
        irq: Arc<dyn IrqSink>,
    ) -> Result<BoardDevice, HwError>
    where
        F: FnOnce(Arc<dyn IrqSink>) -> Result<Box<dyn Device>, DeviceError>,
    {
        let bottom: Box<dyn Bottom> = Box::new(StandIn::new(make)?);
        let inner = Board::new(bottom, "stand-in", expected, devmem_size, dma, irq)?;
        Ok(BoardDevice { inner })
    }

    /// The simulated board (see `simboard` in this crate's source and
    /// `bitstream-docs/usp-shell.md`): the shell and the core simulated at
    /// the TLP level, started with `opts`, under the same board layer as a
    /// real board. Guest memory must be file-backed shared memory
    /// ([`vfpga_device::MmapMemory`] on a memfd).
    pub fn simulated(
        opts: &SimBoardOptions,
        expected: &vfpga_config::ExpectedIds,
        dma: DmaPort,
        irq: Arc<dyn IrqSink>,
    ) -> Result<BoardDevice, HwError> {
        let bottom = simboard::SimBoardBottom::launch(opts)?;
        let devmem = bottom.hello().bar2_len;
        let bottom: Box<dyn Bottom> = Box::new(bottom);
        let inner = Board::new(bottom, "simulated board", expected, devmem, dma, irq)?;
        Ok(BoardDevice { inner })
    }

    /// Injects an event from outside the driver into the simulated board
    /// (FLR, hot reset, link down/up, surprise removal); an error on any
    /// other board.
    pub fn sim_event(&mut self, ev: SimEvent) -> Result<(), HwError> {
        self.inner.bottom_mut().sim_event(ev)
    }

    /// The simulated board's counters; an error on any other board.
    pub fn sim_stats(&mut self) -> Result<SimStats, HwError> {
        self.inner.bottom_mut().sim_stats()
    }

    /// Re-syncs the IOMMU with the DMA port's mappings (after the VMM mapped
    /// or unmapped guest memory).
    pub fn sync_dma(&mut self) -> Result<(), HwError> {
        self.inner.sync_dma()
    }

    /// `(iova, len)` of every IOMMU mapping.
    pub fn iommu_mappings(&self) -> Vec<(u64, u64)> {
        self.inner.iommu_mappings()
    }

    /// PCI function reset (`VFIO_DEVICE_RESET`), then the identity check
    /// again. For the device's own reset use [`Device::soft_reset`].
    pub fn function_reset(&mut self) -> Result<(), HwError> {
        self.inner.reset()
    }

    /// The board's PCI address.
    pub fn pci_address(&self) -> &str {
        self.inner.addr()
    }
}

// Every method, provided ones included (the board's faster ones survive
// behind `Box<dyn Device>`).
vfpga_device::forward_device! { impl Device for BoardDevice { |s| &s.inner, |s| &mut s.inner } }

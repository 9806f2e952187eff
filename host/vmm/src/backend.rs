//! Opens a device of the configured backend behind the Device seam.

use std::sync::Arc;

use vfpga_device::{Device, DmaPort, IrqSink};

/// Which form of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The Rust reference model.
    Model,
    /// The RTL under Verilator.
    Sim,
    /// The simulated board: the PCIe shell and the core at the TLP level
    /// under the board layer (`vfpga-hw`), guest memory shared by file.
    Board,
}

impl Kind {
    /// Parses `model`, `sim` or `board`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "model" => Some(Kind::Model),
            "sim" => Some(Kind::Sim),
            "board" => Some(Kind::Board),
            _ => None,
        }
    }

    /// Name as in config files.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Sim => "sim",
            Kind::Board => "board",
        }
    }
}

/// DMA-log pages of the simulated board the VMM opens.
pub const BOARD_DMALOG_PAGES: u32 = 1024;

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model refused the configuration.
    #[error("cannot create the model")]
    Model(#[source] vfpga_model::ModelError),
    /// The simulator could not start (for example Verilator is not installed).
    #[error("cannot start the simulator")]
    Sim(#[source] vfpga_sim::SimError),
    /// The simulated board could not start (for example cocotb is missing).
    #[error("cannot start the simulated board")]
    Board(#[source] vfpga_hw::HwError),
}

/// Opens a device with `devmem_pages` of device memory, in explicit-step mode
/// (the caller's `advance` drives it, deterministically).
pub fn open(
    kind: Kind,
    devmem_pages: u32,
    dma: DmaPort,
    irq: Arc<dyn IrqSink>,
) -> Result<Box<dyn Device>, BackendError> {
    open_with(kind, devmem_pages, dma, irq, vfpga_sim::Clocking::Explicit)
}

/// Opens a device for a vfio-user server, whose runner thread advances it:
/// the simulator clocks itself (as `vfpga serve` runs it with the default
/// configuration).
pub fn open_free_running(
    kind: Kind,
    devmem_pages: u32,
    dma: DmaPort,
    irq: Arc<dyn IrqSink>,
) -> Result<Box<dyn Device>, BackendError> {
    open_with(
        kind,
        devmem_pages,
        dma,
        irq,
        vfpga_sim::Clocking::FreeRunning,
    )
}

fn open_with(
    kind: Kind,
    devmem_pages: u32,
    dma: DmaPort,
    irq: Arc<dyn IrqSink>,
    clocking: vfpga_sim::Clocking,
) -> Result<Box<dyn Device>, BackendError> {
    match kind {
        Kind::Model => {
            let cfg = vfpga_model::ModelConfig::with_pages(devmem_pages);
            Ok(Box::new(
                vfpga_model::Model::new(cfg, dma, irq).map_err(BackendError::Model)?,
            ))
        }
        Kind::Sim => {
            let opts = vfpga_sim::SimOptions {
                devmem_pages,
                clocking,
                ..Default::default()
            };
            Ok(Box::new(
                vfpga_sim::SimDevice::new(opts, dma, irq).map_err(BackendError::Sim)?,
            ))
        }
        Kind::Board => {
            let o = vfpga_hw::SimBoardOptions::new(devmem_pages, BOARD_DMALOG_PAGES);
            Ok(Box::new(
                vfpga_hw::BoardDevice::simulated(&o, &vfpga_hw::this_build_ids(), dma, irq)
                    .map_err(BackendError::Board)?,
            ))
        }
    }
}

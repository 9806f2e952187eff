//! The hil suite on every backend available here: the model always, the
//! Verilated RTL when `vfpga-sim` was built with Verilator, and a board when
//! `VFPGA_HIL_CONFIG` (or `config/board.yaml`) names one.

use std::path::PathBuf;
use std::sync::Arc;

use vfpga_device::{Device, DmaPort, IrqLog};
use vfpga_hil::HilError;

fn setup(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> HilError {
    HilError::Setup {
        what: what.to_string(),
        source: Some(Box::new(e)),
    }
}

/// The model, stepped.
fn model(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    model_on(dma, irq)
}

/// The RTL under Verilator, explicitly clocked.
fn sim(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    sim_on(dma, irq)
}

/// The board named by `VFPGA_HIL_CONFIG`, else `config/board.yaml`; none
/// when neither exists.
fn board(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    let path = match std::env::var_os("VFPGA_HIL_CONFIG") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/board.yaml"),
    };
    if !path.exists() {
        return Ok(None);
    }
    let cfg = vfpga_config::load(&path).map_err(|e| setup("board config", e))?;
    let Some(b) = cfg.board.as_ref() else {
        return Err(HilError::Setup {
            what: format!("{}: no board: section", path.display()),
            source: None,
        });
    };
    let dev = vfpga_hw::BoardDevice::open(
        b,
        cfg.device.devmem_size.value.0,
        cfg.device.dmalog_max_pages.value,
        dma,
        irq,
    )
    .map_err(|e| setup("opening the board", e))?;
    Ok(Some(Box::new(dev)))
}

/// A device built on a given DMA port and IRQ sink (`None`: not built here).
type Maker =
    fn(DmaPort, Arc<dyn vfpga_device::IrqSink>) -> Result<Option<Box<dyn Device>>, HilError>;

/// The board path (`vfpga_hw::BoardDevice` above the bottom: access rules,
/// identity checks, IOMMU bookkeeping, MSI-X through eventfds and the
/// forwarding thread) with `make`'s device standing in for the board.
fn stand_in(
    dma: DmaPort,
    irq: Arc<IrqLog>,
    make: Maker,
) -> Result<Option<Box<dyn Device>>, HilError> {
    let pages = 64u32;
    let port = dma.clone();
    let mut made = None;
    let mut unavailable = false;
    let dev = vfpga_hw::BoardDevice::stand_in(
        |sink| match make(port, sink) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => {
                unavailable = true;
                Err(vfpga_device::DeviceError::NotImplemented(
                    "stand-in not built",
                ))
            }
            Err(e) => {
                made = Some(e);
                Err(vfpga_device::DeviceError::NotImplemented("stand-in failed"))
            }
        },
        &vfpga_hw::this_build_ids(),
        u64::from(pages) * 4096,
        dma,
        irq,
    );
    if unavailable {
        return Ok(None);
    }
    if let Some(e) = made {
        return Err(e);
    }
    Ok(Some(Box::new(dev.map_err(|e| setup("stand-in board", e))?)))
}

fn model_on(
    dma: DmaPort,
    irq: Arc<dyn vfpga_device::IrqSink>,
) -> Result<Option<Box<dyn Device>>, HilError> {
    let cfg = vfpga_model::ModelConfig::with_pages(64);
    let m = vfpga_model::Model::new(cfg, dma, irq).map_err(|e| setup("model", e))?;
    Ok(Some(Box::new(m)))
}

fn sim_on(
    dma: DmaPort,
    irq: Arc<dyn vfpga_device::IrqSink>,
) -> Result<Option<Box<dyn Device>>, HilError> {
    if !vfpga_sim::AVAILABLE {
        return Ok(None);
    }
    let opts = vfpga_sim::SimOptions {
        devmem_pages: 64,
        ..Default::default()
    };
    let s = vfpga_sim::SimDevice::new(opts, dma, irq).map_err(|e| setup("sim", e))?;
    Ok(Some(Box::new(s)))
}

fn board_path_model(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    stand_in(dma, irq, model_on)
}

fn board_path_sim(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    stand_in(dma, irq, sim_on)
}

/// The simulated board: the PCIe shell and the core at the TLP level
/// (Icarus, cocotbext-pcie's root complex) under the board layer, the code
/// a real board runs. Needs `scripts/setup`; fails with the launcher's
/// reason when cocotb or Icarus is missing.
fn simulated_board(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
    let o = vfpga_hw::SimBoardOptions::new(vfpga_hil::MIN_DEVMEM_PAGES, 1024);
    let dev = vfpga_hw::BoardDevice::simulated(&o, &vfpga_hw::this_build_ids(), dma, irq)
        .map_err(|e| setup("simulated board", e))?;
    Ok(Some(Box::new(dev)))
}

mod on_simulated_board {
    vfpga_hil::hil_suite!("simulated board", super::simulated_board);
}

mod on_board_path_with_model {
    vfpga_hil::hil_suite!("board path, model standing in", super::board_path_model);
}

mod on_board_path_with_rtl {
    vfpga_hil::hil_suite!("board path, RTL standing in", super::board_path_sim);
}

mod on_model {
    vfpga_hil::hil_suite!("model", super::model);
}

mod on_sim {
    vfpga_hil::hil_suite!("sim", super::sim);
}

mod on_board {
    vfpga_hil::hil_suite!("board", super::board);
}

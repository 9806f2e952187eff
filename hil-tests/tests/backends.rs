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
    let cfg = vfpga_model::ModelConfig::with_pages(64);
    let m = vfpga_model::Model::new(cfg, dma, irq).map_err(|e| setup("model", e))?;
    Ok(Some(Box::new(m)))
}

/// The RTL under Verilator, explicitly clocked.
fn sim(dma: DmaPort, irq: Arc<IrqLog>) -> Result<Option<Box<dyn Device>>, HilError> {
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
    let dev = vfpga_hw::BoardDevice::open(b, cfg.device.devmem_size.value.0, dma, irq)
        .map_err(|e| setup("opening the board", e))?;
    Ok(Some(Box::new(dev)))
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

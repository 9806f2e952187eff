//! vfpga-migration (work in progress).

pub mod fsm;
pub mod stream;

//! vfpga-migration (work in progress).

pub mod stream;

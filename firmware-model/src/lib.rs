//! vfpga-model: see ARCHITECTURE.md. Not built yet.

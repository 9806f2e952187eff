//! vfpga-hil: see ARCHITECTURE.md. Not built yet.

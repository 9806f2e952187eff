//! vfpga-hw: see ARCHITECTURE.md. Not built yet.

//! vfpga-sim: see ARCHITECTURE.md. Not built yet.

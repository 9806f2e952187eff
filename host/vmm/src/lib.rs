//! vfpga-vmm: see ARCHITECTURE.md. Not built yet.

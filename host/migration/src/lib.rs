//! vfpga-migration: see ARCHITECTURE.md. Not built yet.

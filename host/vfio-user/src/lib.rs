//! vfpga-vfio-user: see ARCHITECTURE.md. Not built yet.

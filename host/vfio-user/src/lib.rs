//! `vfpga-vfio-user`: a vfio-user server (tokio, fd passing) that exposes a
//! vfpga [`Device`](vfpga_device::Device) as a PCI device, and a client
//! library used by the VMM and the tests.

pub mod irq;
pub mod pci;
pub mod wire;

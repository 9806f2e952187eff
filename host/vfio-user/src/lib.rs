//! `vfpga-vfio-user`: a vfio-user server (tokio, fd passing) that exposes a
//! vfpga [`Device`](vfpga_device::Device) as a PCI device, and a client
//! library used by the VMM and the tests.
//!
//! - [`wire`]: header, command numbers, payload layouts and validation.
//! - [`session`]: the command handler (config space, regions, IRQs, DMA,
//!   DEVICE_FEATURE for migration v2 and DMA logging, MIG_DATA_READ/WRITE,
//!   the v1 migration region).
//! - [`server`]: the tokio transport and the device runner thread.
//! - [`client`]: a typed client; [`wire_device`]: a `Device` over it.
//! - [`pci`], [`irq`], [`remote`]: config space, interrupt delivery, and
//!   guest memory served by DMA_READ/DMA_WRITE messages.
//!
//! BAR2 (device memory) is offered without mmap (no sparse-mmap capability):
//! every device-memory write must go through the device so that its dirty
//! bitmap, which pre-copy relies on, stays right.

pub mod client;
pub mod irq;
pub mod pci;
pub mod remote;
pub mod server;
pub mod session;
pub mod wire;
pub mod wire_device;

pub use client::{Client, ClientError};
pub use irq::IrqHub;
pub use server::{Server, ServerError};
pub use wire_device::WireDevice;

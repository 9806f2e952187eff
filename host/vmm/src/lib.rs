//! vfpga-vmm: a small VMM that plays the VMM's part in a live migration of the
//! vfpga device: it owns guest memory (a memfd), runs a guest workload
//! against the device ([`workload`]), and migrates the device and the guest
//! pages the device dirtied the way QEMU migrates a VFIO device ([`live`]).
//!
//! - [`server`]: one vfio-user server per device (`vfpga serve` processes).
//! - [`vm`]: guest memory and the VMM's handle on a device ([`vm::VmDevice`]:
//!   over vfio-user, or in this process).
//! - [`channel`]: the framed, checksummed VMM-to-VMM stream (TCP).
//! - [`live`]: migration source and destination.
//! - [`demo`]: the verified demo.

#![forbid(unsafe_code)]

pub mod backend;
pub mod chain;
pub mod channel;
pub mod demo;
pub mod live;
pub mod server;
pub mod vm;
pub mod workload;

/// Serializes milliseconds rounded to the microsecond (three decimals), as
/// a reader of a JSON report expects them.
pub(crate) fn ms<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * 1000.0).round() / 1000.0)
}

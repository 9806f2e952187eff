//! vfpga-vmm: a small VMM that plays the VMM's part in a live migration of the
//! vfpga device: it owns guest memory, runs a guest workload against the
//! device ([`workload`]), and migrates the device and the guest pages the
//! device dirtied.
//!
//! Built so far: the verifiable workload. Not built yet: guest memory over
//! memfd shared with a vfio-user server, the migration source/destination over
//! TCP (see ARCHITECTURE.md, "Not built yet").

#![forbid(unsafe_code)]

pub mod backend;
pub mod channel;
pub mod demo;
pub mod live;
pub mod workload;

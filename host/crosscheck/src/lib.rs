//! `vfpga-crosscheck`: the reference model and the RTL (or any two forms of
//! the vfpga device) driven with the same stimulus, in the spirit of
//! processor lockstep co-simulation (Ibex cosim, XiangShan DiffTest): the
//! first divergence is reported as a structured value, not a failing end
//! result.
//!
//! - [`lockstep::Lockstep`] is itself a [`Device`](vfpga_device::Device): it
//!   drives two devices, each with its own guest memory and interrupt log,
//!   and compares every architecturally visible effect at the points where
//!   the datasheet makes them timing-independent (settled or quiesced; the
//!   reference is stepped to the checked side's quiesce point). It also
//!   transplants state between the sides ([`lockstep::Lockstep::transplant`]).
//! - [`scenario`] holds scenarios as plain serde data, a seeded generator
//!   and the host-side driver that applies one.
//! - [`mod@campaign`] runs many (seeds, shards, time limit), shrinks a failing
//!   one and writes a replay file with an RTL waveform beside it.
//! - [`backend`] pairs the model (one datasheet step per unit) and the
//!   Verilated RTL (explicit clocking).
//!
//! ```text
//!   scenario ops ──► Lockstep ──┬─► A (reference: model)  DmaPort A + guest mem A, IrqLog A
//!                               └─► B (checked: RTL)       DmaPort B + guest mem B, IrqLog B
//!                    compare at settle / quiesce points ──► first Divergence {effect, op, context}
//! ```

#![forbid(unsafe_code)]

pub mod backend;
pub mod campaign;
pub mod lockstep;
pub mod scenario;
pub mod slow;

pub use backend::{AnyDevice, Impl, ModelFault, Pair, SideDevice};
pub use campaign::{Outcome, Plan, Replay, Summary, Verdict, campaign, run_pair, run_with};
pub use lockstep::{Divergence, Effect, Lockstep, LockstepOptions, Transplant};
pub use scenario::{Op, Scenario, generate};

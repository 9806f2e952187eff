//! The C ABI of `csrc/shim.cpp`, and [`Model`], its safe owner.
//!
//! A [`Model`] is `Send` but not `Sync`: one thread at a time uses it (the
//! crate keeps it behind a mutex), whichever thread that is. The Verilated
//! model is built single-threaded (`--threads 1`, no DPI, no `$display`),
//! so it keeps no per-thread state between calls: every call starts from
//! what the previous one left in the model, and the mutex orders them.

#![allow(unsafe_code)]

use std::ffi::{CString, c_char};
use std::marker::PhantomData;
use std::path::Path;

/// Event bits of [`SimEvent::flags`].
pub(crate) const EV_DMA: u32 = 1;
pub(crate) const EV_IRQ: u32 = 2;
pub(crate) const EV_MMIO: u32 = 4;
pub(crate) const EV_STEP: u32 = 8;
/// The core broke a port rule; [`SimEvent::fault`] says which (`FAULT_*`).
pub(crate) const EV_FAULT: u32 = 16;

/// Port rules the core can break (bits of [`SimEvent::fault`], as in `shim.cpp`).
pub(crate) const FAULT_MMIO_RSP: u32 = 1;
pub(crate) const FAULT_DMA_IDLE: u32 = 2;
pub(crate) const FAULT_DMA_TWICE: u32 = 4;
pub(crate) const FAULT_DM_IDLE: u32 = 8;

/// What ended a `sim_run` call (layout shared with `shim.cpp`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimEvent {
    pub flags: u32,
    pub dma_write: u32,
    pub dma_addr: u64,
    pub dma_len: u32,
    pub irq_vector: u32,
    pub mmio_rdata: u64,
    pub cycles: u64,
    pub step_kind: u32,
    pub fault: u32,
    pub dma_data: [u8; 64],
}

impl Default for SimEvent {
    fn default() -> Self {
        SimEvent {
            flags: 0,
            dma_write: 0,
            dma_addr: 0,
            dma_len: 0,
            irq_vector: 0,
            mmio_rdata: 0,
            cycles: 0,
            step_kind: 0,
            fault: 0,
            dma_data: [0; 64],
        }
    }
}

#[repr(C)]
struct RawSim {
    _p: [u8; 0],
}

#[cfg(not(vfpga_sim_unavailable))]
unsafe extern "C" {
    fn sim_new(
        devmem_pages: u32,
        dmalog_max_pages: u32,
        vcd_path: *const c_char,
        x_seed: u32,
    ) -> *mut RawSim;
    fn sim_free(s: *mut RawSim);
    fn sim_hw_reset(s: *mut RawSim, cycles: u32);
    fn sim_set_stall(s: *mut RawSim, seed: u64, pct: u32);
    fn sim_mmio_queue(
        s: *mut RawSim,
        bar2: u32,
        write: u32,
        addr: u32,
        be: u32,
        wdata: u64,
        gap: u32,
    );
    fn sim_run(s: *mut RawSim, max_cycles: u64, mem: *mut u8, mem_len: u64, ev: *mut SimEvent);
    fn sim_dma_respond(s: *mut RawSim, ok: u32, data: *const u8, len: u32);
    fn sim_mmio(s: *mut RawSim, bar2: u32, write: u32, addr: u32, be: u32, wdata: u64);
    fn sim_idle(s: *mut RawSim) -> u32;
    fn sim_intx(s: *mut RawSim) -> u32;
    fn sim_flush_trace(s: *mut RawSim);
    fn sim_steps(s: *mut RawSim) -> u64;
    fn sim_stop_on_step(s: *mut RawSim, on: u32);
    fn sim_bench_bare(
        s: *mut RawSim,
        cycles: u64,
        host: *mut u8,
        host_len: u64,
        base: u64,
        mem: *mut u8,
        mem_len: u64,
    ) -> u64;
}

// Stand-ins when the model was not built: `Model::new` never calls them
// (it refuses first), but the crate must link.
#[cfg(vfpga_sim_unavailable)]
mod absent {
    use super::{RawSim, SimEvent, c_char};
    pub unsafe fn sim_new(_: u32, _: u32, _: *const c_char, _: u32) -> *mut RawSim {
        std::ptr::null_mut()
    }
    pub unsafe fn sim_free(_: *mut RawSim) {}
    pub unsafe fn sim_hw_reset(_: *mut RawSim, _: u32) {}
    pub unsafe fn sim_set_stall(_: *mut RawSim, _: u64, _: u32) {}
    pub unsafe fn sim_mmio_queue(_: *mut RawSim, _: u32, _: u32, _: u32, _: u32, _: u64, _: u32) {}
    pub unsafe fn sim_run(_: *mut RawSim, _: u64, _: *mut u8, _: u64, _: *mut SimEvent) {}
    pub unsafe fn sim_dma_respond(_: *mut RawSim, _: u32, _: *const u8, _: u32) {}
    pub unsafe fn sim_mmio(_: *mut RawSim, _: u32, _: u32, _: u32, _: u32, _: u64) {}
    pub unsafe fn sim_idle(_: *mut RawSim) -> u32 {
        1
    }
    pub unsafe fn sim_flush_trace(_: *mut RawSim) {}
    pub unsafe fn sim_intx(_: *mut RawSim) -> u32 {
        0
    }
    pub unsafe fn sim_steps(_: *mut RawSim) -> u64 {
        0
    }
    pub unsafe fn sim_stop_on_step(_: *mut RawSim, _: u32) {}
    pub unsafe fn sim_bench_bare(
        _: *mut RawSim,
        _: u64,
        _: *mut u8,
        _: u64,
        _: u64,
        _: *mut u8,
        _: u64,
    ) -> u64 {
        0
    }
}
#[cfg(vfpga_sim_unavailable)]
use absent::*;

/// Whether this build contains the Verilated RTL.
pub const AVAILABLE: bool = !cfg!(vfpga_sim_unavailable);

/// One Verilated `vfpga_top`, reset and ready. `Send`, not `Sync`: used by
/// one thread at a time.
pub(crate) struct Model {
    raw: *mut RawSim,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: the shim's `Sim` and the Verilated model it owns are plain heap
// data with no thread affinity: the model is single-threaded (Verilator
// `--threads 1`), its context is owned by the `Sim`, and no call leaves
// thread-local state behind that a later call depends on. `Model` is not
// `Sync` and every method takes `&mut self`, so calls never overlap; moving
// it (or the mutex guarding it) between threads orders them.
unsafe impl Send for Model {}

impl Model {
    /// Creates and resets a model; `vcd` names a waveform file to write;
    /// `x_seed` != 0 randomizes every bit before reset from that seed.
    pub(crate) fn new(
        devmem_pages: u32,
        dmalog_max_pages: u32,
        vcd: Option<&Path>,
        x_seed: u32,
    ) -> Option<Self> {
        if !AVAILABLE {
            return None;
        }
        let path = match vcd {
            Some(p) => Some(CString::new(p.as_os_str().as_encoded_bytes()).ok()?),
            None => None,
        };
        let ptr = path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
        // SAFETY: `ptr` is null or a NUL-terminated string that outlives the
        // call; sim_new copies what it needs and returns an owned model.
        let raw = unsafe { sim_new(devmem_pages, dmalog_max_pages, ptr, x_seed) };
        (!raw.is_null()).then_some(Model {
            raw,
            _not_sync: PhantomData,
        })
    }

    /// Runs at most `max` cycles, serving device memory from `mem`; stops
    /// after the first cycle with an event.
    pub(crate) fn run(&mut self, max: u64, mem: &mut [u8], ev: &mut SimEvent) {
        // SAFETY: `self.raw` is a live model owned by us and borrowed exclusively
        // for the call; `mem` is an exclusive borrow valid for the call, and the shim
        // bounds-checks every access against `mem.len()`; `ev` is a valid
        // exclusive pointer to a #[repr(C)] SimEvent.
        unsafe { sim_run(self.raw, max, mem.as_mut_ptr(), mem.len() as u64, ev) }
    }

    /// Answers the DMA request of the last event.
    pub(crate) fn dma_respond(&mut self, ok: bool, data: &[u8]) {
        let len = data.len().min(64) as u32;
        // SAFETY: live model, borrowed exclusively; `data` is valid for `len` bytes.
        unsafe { sim_dma_respond(self.raw, u32::from(ok), data.as_ptr(), len) }
    }

    /// Presents an MMIO request.
    pub(crate) fn mmio(&mut self, bar2: bool, write: bool, addr: u32, be: u8, wdata: u64) {
        // SAFETY: live model, borrowed exclusively; plain values.
        unsafe {
            sim_mmio(
                self.raw,
                u32::from(bar2),
                u32::from(write),
                addr,
                u32::from(be),
                wdata,
            )
        }
    }

    /// Holds the core's reset input low for `cycles` cycles.
    pub(crate) fn hw_reset(&mut self, cycles: u32) {
        // SAFETY: live model, borrowed exclusively; plain values.
        unsafe { sim_hw_reset(self.raw, cycles) }
    }

    /// Back-pressure: the DMA request, device-memory request and MMIO
    /// response ports drop `ready` on `pct` percent of the cycles, drawn from
    /// a generator seeded with `seed` (0 percent: always ready).
    pub(crate) fn set_stall(&mut self, seed: u64, pct: u8) {
        // SAFETY: live model, borrowed exclusively; plain values.
        unsafe { sim_set_stall(self.raw, seed, u32::from(pct)) }
    }

    /// Queues one request of a pipelined MMIO sequence (see `shim.cpp`).
    pub(crate) fn mmio_queue(&mut self, r: &crate::PipeReq) {
        // SAFETY: live model, borrowed exclusively; plain values.
        unsafe {
            sim_mmio_queue(
                self.raw,
                u32::from(r.bar2),
                u32::from(r.write),
                r.addr,
                u32::from(r.be),
                r.wdata,
                r.gap,
            )
        }
    }

    /// Nothing to do until an MMIO access.
    pub(crate) fn idle(&mut self) -> bool {
        // SAFETY: live model, borrowed exclusively.
        unsafe { sim_idle(self.raw) != 0 }
    }

    /// The INTx level the core drives now.
    pub(crate) fn intx(&mut self) -> bool {
        // SAFETY: live model, borrowed exclusively.
        unsafe { sim_intx(self.raw) != 0 }
    }

    /// Engine steps completed so far.
    pub(crate) fn steps(&mut self) -> u64 {
        // SAFETY: live model, borrowed exclusively.
        unsafe { sim_steps(self.raw) }
    }

    /// Whether `run` also stops after each engine step.
    pub(crate) fn stop_on_step(&mut self, on: bool) {
        // SAFETY: live model, borrowed exclusively.
        unsafe { sim_stop_on_step(self.raw, u32::from(on)) }
    }

    /// Flushes the waveform file, if any.
    pub(crate) fn flush_trace(&mut self) {
        // SAFETY: live model, borrowed exclusively.
        unsafe { sim_flush_trace(self.raw) }
    }

    /// The benchmark baseline loop (see `shim.cpp`).
    pub(crate) fn bench_bare(&mut self, cycles: u64, host: &mut [u8], base: u64, mem: &mut [u8]) {
        // SAFETY: live model, borrowed exclusively; both buffers are exclusive borrows
        // valid for the call and bounds-checked by the shim.
        unsafe {
            sim_bench_bare(
                self.raw,
                cycles,
                host.as_mut_ptr(),
                host.len() as u64,
                base,
                mem.as_mut_ptr(),
                mem.len() as u64,
            );
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: `raw` came from sim_new, is freed exactly once, here.
        unsafe { sim_free(self.raw) }
    }
}

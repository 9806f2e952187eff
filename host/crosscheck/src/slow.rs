//! Slow guest memory: a [`GuestMemory`] whose accesses answer
//! [`DmaFault::Pending`] for a seeded number of attempts before they
//! complete, the way memory reached by vfio-user DMA messages does.
//!
//! Both sides of a lockstep get one, seeded alike. The device makes the same
//! sequence of *distinct* DMA accesses on both sides (datasheet §5.3: the
//! sequence of steps is not timing), so the n-th access pends the same number
//! of times on both. An access repeated after `Pending` (same direction,
//! address and length) is the same access; the next different one is new.
//!
//! A [`Gate`] can also **hold** one access (by its number): it then pends
//! until released, so the lockstep can bring both sides into the same DMA
//! wait and issue MMIO during it (datasheet §5.3, "MMIO while a step waits
//! for DMA"). A held access that keeps being retried is released by itself
//! after [`HOLD_LIMIT`] attempts and the gate remembers that it timed out:
//! that is how the lockstep sees that a device did not serve an access
//! during the wait but waited for the step to end.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vfpga_device::{DmaFault, GuestMemory, MmapMemory, VecMemory};

use crate::scenario::Rng;

/// Attempts a held access survives before it is answered anyway.
pub const HOLD_LIMIT: u32 = 64;

/// How slow the memory of a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowSpec {
    /// Seed of the per-access pend counts.
    pub seed: u64,
    /// Percentage of accesses that pend at all.
    pub pct: u8,
    /// Largest number of `Pending` answers one access gets.
    pub max_pends: u32,
}

#[derive(Debug, Default)]
struct Outstanding {
    write: bool,
    offset: u64,
    len: usize,
    remaining: u32,
    held: bool,
    held_attempts: u32,
}

/// What the gate has seen (shared by the memory and the lockstep).
#[derive(Debug)]
struct GateInner {
    spec: Option<SlowSpec>,
    rng: Rng,
    /// Distinct accesses seen so far (the number of the last one).
    accesses: u64,
    outstanding: Option<Outstanding>,
    /// Hold the access with this number.
    hold_at: Option<u64>,
    /// The held access was answered after [`HOLD_LIMIT`] attempts.
    timed_out: bool,
    /// `Pending` answers given.
    pends: u64,
    /// Host (VMM) accesses are going on: they never pend and do not count.
    host: bool,
}

/// The control side of a [`SlowMemory`].
#[derive(Debug, Clone)]
pub struct Gate(Arc<Mutex<GateInner>>);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the `nth` distinct access from now (1 = the next new one).
    pub fn hold_next(&self, nth: u64) {
        let n = self.accesses() + nth.max(1);
        self.hold_at(n);
    }

    /// Holds the distinct access with number `n` (counted from 1).
    pub fn hold_at(&self, n: u64) {
        let mut g = self.lock();
        g.hold_at = Some(n);
        g.timed_out = false;
    }

    /// Whether an access is held right now (the device waits for it).
    pub fn is_held(&self) -> bool {
        self.lock().outstanding.as_ref().is_some_and(|o| o.held)
    }

    /// Releases the hold: the held access completes at its next attempt.
    /// Returns whether the held access had already been answered by itself
    /// (after [`HOLD_LIMIT`] attempts).
    pub fn release(&self) -> bool {
        let mut g = self.lock();
        g.hold_at = None;
        if let Some(o) = g.outstanding.as_mut()
            && o.held
        {
            o.held = false;
            o.remaining = 0;
        }
        std::mem::take(&mut g.timed_out)
    }

    /// Whether the held access has been answered by itself so far.
    pub fn timed_out(&self) -> bool {
        self.lock().timed_out
    }

    /// Runs `f` as the host (the VMM writing or reading guest memory, not
    /// the device): its accesses never pend and are not counted.
    pub fn as_host<T>(&self, f: impl FnOnce() -> T) -> T {
        self.lock().host = true;
        let r = f();
        self.lock().host = false;
        r
    }

    /// Forgets the outstanding access (a hardware reset abandoned it).
    pub fn abandon(&self) {
        let mut g = self.lock();
        g.outstanding = None;
        g.hold_at = None;
    }

    /// Distinct accesses seen.
    pub fn accesses(&self) -> u64 {
        self.lock().accesses
    }

    /// `Pending` answers given so far.
    pub fn pends(&self) -> u64 {
        self.lock().pends
    }

    /// One attempt of an access: `true` = answer `Pending` now.
    fn attempt(&self, write: bool, offset: u64, len: usize) -> bool {
        let mut g = self.lock();
        let Some(spec) = g.spec else {
            return false;
        };
        if g.host {
            return false;
        }
        let same = g
            .outstanding
            .as_ref()
            .is_some_and(|o| o.write == write && o.offset == offset && o.len == len);
        if !same {
            g.accesses += 1;
            let n = g.accesses;
            let remaining = if g.rng.pct(u64::from(spec.pct)) {
                1 + g.rng.below(u64::from(spec.max_pends.max(1))) as u32
            } else {
                0
            };
            let held = g.hold_at == Some(n);
            if held {
                g.hold_at = None;
            }
            g.outstanding = Some(Outstanding {
                write,
                offset,
                len,
                remaining,
                held,
                held_attempts: 0,
            });
        }
        let mut timed_out = false;
        let pend = match g.outstanding.as_mut() {
            Some(o) if o.held => {
                o.held_attempts += 1;
                if o.held_attempts > HOLD_LIMIT {
                    o.held = false;
                    timed_out = true;
                    false
                } else {
                    true
                }
            }
            Some(o) if o.remaining > 0 => {
                o.remaining -= 1;
                true
            }
            _ => false,
        };
        if timed_out {
            g.timed_out = true;
        }
        if pend {
            g.pends += 1;
        } else {
            g.outstanding = None;
        }
        pend
    }
}

/// Guest memory whose accesses may pend (see the module docs); with no
/// [`SlowSpec`] it is plain memory that never pends.
#[derive(Debug)]
pub struct SlowMemory {
    inner: Inner,
    gate: Gate,
}

/// Where the bytes are.
#[derive(Debug)]
enum Inner {
    /// Process memory.
    Vec(VecMemory),
    /// A shared mapping of an unlinked file, which another process (the
    /// simulated board) can map too.
    Shared(MmapMemory),
}

impl Inner {
    fn mem(&self) -> &dyn GuestMemory {
        match self {
            Inner::Vec(m) => m,
            Inner::Shared(m) => m,
        }
    }
}

impl SlowMemory {
    /// `len` bytes of zeroed memory, slow as `spec` says (`None`: fast).
    pub fn new(len: usize, spec: Option<SlowSpec>) -> Self {
        SlowMemory::with_inner(Inner::Vec(VecMemory::new(len)), spec)
    }

    /// `len` bytes of zeroed, fast memory in a shared mapping of an unlinked
    /// temporary file (see [`GuestMemory::shared_file`]).
    pub fn shared(len: usize) -> std::io::Result<Self> {
        let f = tempfile::tempfile()?;
        f.set_len(len as u64)?;
        let m = MmapMemory::map_file(&f, 0, len)?;
        Ok(SlowMemory::with_inner(Inner::Shared(m), None))
    }

    fn with_inner(inner: Inner, spec: Option<SlowSpec>) -> Self {
        SlowMemory {
            inner,
            gate: Gate(Arc::new(Mutex::new(GateInner {
                spec,
                rng: Rng::new(spec.map_or(0, |s| s.seed)),
                accesses: 0,
                outstanding: None,
                hold_at: None,
                timed_out: false,
                pends: 0,
                host: false,
            }))),
        }
    }

    /// The control side.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// Whether accesses may pend.
    pub fn is_slow(&self) -> bool {
        self.gate.lock().spec.is_some()
    }

    /// A copy of the contents.
    pub fn snapshot(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Vec(m) => m.snapshot(),
            Inner::Shared(m) => {
                let mut b = vec![0u8; m.len() as usize];
                if let Err(e) = m.read(0, &mut b) {
                    tracing::warn!("guest memory snapshot: {e}");
                }
                b
            }
        }
    }
}

impl GuestMemory for SlowMemory {
    fn len(&self) -> u64 {
        self.inner.mem().len()
    }

    fn host_addr(&self) -> Option<std::ptr::NonNull<u8>> {
        self.inner.mem().host_addr()
    }

    fn shared_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        self.inner.mem().shared_file()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        if self.gate.attempt(false, offset, buf.len()) {
            return Err(DmaFault::Pending { iova: offset });
        }
        self.inner.mem().read(offset, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        if self.gate.attempt(true, offset, data.len()) {
            return Err(DmaFault::Pending { iova: offset });
        }
        self.inner.mem().write(offset, data)
    }

    fn may_pend(&self) -> bool {
        self.is_slow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_pend_alike_and_holds_time_out() {
        let spec = SlowSpec {
            seed: 9,
            pct: 100,
            max_pends: 3,
        };
        let a = SlowMemory::new(4096, Some(spec));
        let b = SlowMemory::new(4096, Some(spec));
        let mut buf = [0u8; 4];
        for m in [&a, &b] {
            let mut n = 0;
            while m.read(0, &mut buf).is_err() {
                n += 1;
            }
            assert!((1..=3).contains(&n));
        }
        assert_eq!(a.gate().pends(), b.gate().pends());
        a.gate().hold_next(1);
        assert!(a.write(8, &[1]).is_err());
        assert!(a.gate().is_held());
        let mut k = 1;
        while a.write(8, &[1]).is_err() {
            k += 1;
        }
        assert_eq!(k, HOLD_LIMIT);
        assert!(a.gate().release(), "the hold ran out");
        let fast = SlowMemory::new(64, None);
        assert!(fast.read(0, &mut buf).is_ok() && !fast.may_pend());
    }
}

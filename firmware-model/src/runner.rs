//! Free-running mode: a [`Model`] on its own thread, for use behind
//! vfio-user where nobody calls [`Device::advance`].
//!
//! The thread runs the model while it has work (in chunks of
//! [`CHUNK_UNITS`] steps, releasing the lock between chunks so MMIO gets in)
//! and sleeps on a condition variable while it is idle, quiesced, halted or
//! stalled on a full completion ring: only a register or memory write can
//! give it work again, and every write through the runner wakes it.
//!
//! While the thread sleeps, the timer is brought up to date from wall time
//! (at [`IDLE_CLOCK_HZ`]) whenever the device is accessed, so `TIMER_LO/HI`
//! keeps counting while the device runs idle and stays frozen while it is
//! quiesced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;
use vfpga_device::{Bar, Device, DeviceError, DeviceInfo, Progress};

use crate::{Model, ModelError};

/// Steps the runner thread takes per lock hold.
pub const CHUNK_UNITS: u64 = 1024;

/// Nominal clock used to advance the timer while the model sleeps idle.
pub const IDLE_CLOCK_HZ: u64 = 250_000_000;

/// How long [`Device::advance`] on a runner waits for the model to go idle.
const ADVANCE_WAIT: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Inner {
    model: Option<Model>,
    stop: bool,
    /// Set while the runner thread sleeps idle: wall time already accounted
    /// for in the timer.
    idle_since: Option<Instant>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the runner thread (work may have arrived, or stop).
    wake: Condvar,
    /// Signalled when the runner goes idle.
    idle: Condvar,
    /// Threads waiting for the lock; the runner yields to them.
    waiters: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        g
    }
}

/// Catches the timer up with the wall time spent idle.
fn catch_up(g: &mut Inner) {
    let (Some(t0), Some(m)) = (g.idle_since, g.model.as_mut()) else {
        return;
    };
    let ns = t0.elapsed().as_nanos();
    let ticks = (ns * u128::from(IDLE_CLOCK_HZ) / 1_000_000_000) as u64;
    if ticks > 0 {
        m.tick(ticks);
        let spent = Duration::from_nanos(
            (u128::from(ticks) * 1_000_000_000 / u128::from(IDLE_CLOCK_HZ)) as u64,
        );
        g.idle_since = Some(t0 + spent);
    }
}

/// A [`Model`] running by itself on its own thread. Implements [`Device`]
/// (with `info().self_running == true`); [`Device::advance`] only waits a
/// little for the model to go idle. Dropping the runner stops the thread.
#[derive(Debug)]
pub struct ModelRunner {
    shared: Arc<Shared>,
    info: DeviceInfo,
    thread: Option<JoinHandle<()>>,
}

impl ModelRunner {
    /// Moves `model` onto a new thread and starts running it.
    pub fn spawn(model: Model) -> Result<Self, ModelError> {
        let mut info = model.info();
        info.self_running = true;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                model: Some(model),
                stop: false,
                idle_since: None,
            }),
            wake: Condvar::new(),
            idle: Condvar::new(),
            waiters: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vfpga-model".into())
            .spawn(move || run(&s))
            .map_err(|e| ModelError::Runner("cannot start the runner thread", e))?;
        Ok(ModelRunner {
            shared,
            info,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the model between two chunks of steps.
    pub fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> Result<R, DeviceError> {
        let mut g = self.shared.lock();
        catch_up(&mut g);
        let r = g.model.as_mut().map(f).ok_or_else(gone)?;
        drop(g);
        self.shared.wake.notify_all();
        Ok(r)
    }

    /// Stops the thread and hands the model back.
    pub fn into_model(mut self) -> Result<Model, DeviceError> {
        self.stop();
        let mut g = self.shared.lock();
        catch_up(&mut g);
        g.model.take().ok_or_else(gone)
    }

    fn stop(&mut self) {
        {
            let mut g = self.shared.lock();
            catch_up(&mut g);
            g.idle_since = None;
            g.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the model runner thread panicked");
        }
    }

    fn access<R>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Model) -> Result<R, DeviceError>,
    ) -> Result<R, DeviceError> {
        let mut g = self.shared.lock();
        catch_up(&mut g);
        let m = g.model.as_mut().ok_or_else(gone)?;
        let r = f(m);
        let work = write && m.has_work();
        drop(g);
        if work {
            self.shared.wake.notify_all();
        }
        r
    }
}

fn gone() -> DeviceError {
    DeviceError::Backend {
        msg: "the model runner has stopped".into(),
        source: None,
    }
}

fn run(s: &Shared) {
    debug!("model runner started");
    let mut g = s.lock();
    loop {
        if g.stop {
            break;
        }
        let Some(m) = g.model.as_mut() else {
            break;
        };
        if m.has_work() {
            if g.idle_since.is_some() {
                catch_up(&mut g);
                g.idle_since = None;
            }
            if let Some(m) = g.model.as_mut()
                && let Err(e) = m.advance(CHUNK_UNITS)
            {
                tracing::error!(%e, "model advance failed");
            }
            drop(g);
            // Let MMIO in between chunks (the mutex is not fair).
            while s.waiters.load(Ordering::SeqCst) > 0 {
                std::thread::yield_now();
            }
            g = s.lock();
        } else {
            if g.idle_since.is_none() {
                g.idle_since = Some(Instant::now());
            }
            s.idle.notify_all();
            g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
    s.idle.notify_all();
    debug!("model runner stopped");
}

impl Drop for ModelRunner {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

impl Device for ModelRunner {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.access(false, |m| m.mmio_read(bar, offset, data))
    }

    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.access(true, |m| m.mmio_write(bar, offset, data))
    }

    /// Waits (up to a millisecond, without spinning) for the model to go
    /// idle; never steps it itself.
    fn advance(&mut self, _budget: u64) -> Result<Progress, DeviceError> {
        let g = self.shared.lock();
        let busy = |g: &mut Inner| g.model.as_ref().is_some_and(|m| m.has_work()) && !g.stop;
        let (mut g, _) = self
            .shared
            .idle
            .wait_timeout_while(g, ADVANCE_WAIT, |g| busy(g))
            .unwrap_or_else(|e| e.into_inner());
        if g.model.is_none() {
            return Err(gone());
        }
        let idle = !busy(&mut g);
        Ok(Progress { used: 0, idle })
    }

    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.access(false, |m| m.devmem_read(offset, buf))
    }

    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.access(true, |m| m.devmem_write(offset, data))
    }
}

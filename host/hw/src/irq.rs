//! MSI-X forwarding: one eventfd per vector (VFIO signals them), one thread
//! that waits on all of them and raises the vector on the [`IrqSink`].
//!
//! An eventfd counts signals; the thread reads and resets the count and
//! raises the vector once, so interrupts that arrive while one is being
//! forwarded coalesce, as MSI-X messages to a busy vCPU do.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vfpga_device::IrqSink;

/// The forwarding thread and its stop signal.
#[derive(Debug)]
pub(crate) struct IrqForwarder {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl IrqForwarder {
    /// Starts forwarding `fds[v]` to vector `v` of `sink`.
    pub(crate) fn start(fds: Arc<Vec<EventFd>>, sink: Arc<dyn IrqSink>) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vfpga-hw-irq".into())
            .spawn(move || forward(fds.as_slice(), &stop2, sink.as_ref()))?;
        Ok(IrqForwarder {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::warn!("stopping the IRQ thread: {e}");
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the IRQ thread panicked");
        }
    }
}

impl Drop for IrqForwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn forward(fds: &[EventFd], stop: &EventFd, sink: &dyn IrqSink) {
    loop {
        let mut polls: Vec<PollFd<'_>> = std::iter::once(stop)
            .chain(fds.iter())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut polls, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("IRQ thread: poll failed: {e}; interrupts are no longer forwarded");
                return;
            }
        }
        let ready: Vec<bool> = polls
            .iter()
            .map(|p| p.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .collect();
        if ready[0] {
            return;
        }
        for (v, fd) in fds.iter().enumerate() {
            if ready[v + 1] && fd.read().is_ok() {
                tracing::trace!(vector = v, "MSI-X");
                sink.raise(v as u16);
            }
        }
    }
}

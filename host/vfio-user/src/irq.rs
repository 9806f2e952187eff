//! Interrupt delivery: the [`IrqHub`] is the device's [`IrqSink`] and turns
//! "vector N" requests of the device core into eventfd signals to the
//! client, with the MSI-X table and PBA emulated here.
//!
//! - **MSI-X** is active when the client enabled it with SET_IRQS (index 2,
//!   ACTION_TRIGGER with eventfds, as QEMU does) or through the capability's
//!   enable bit in config space. A vector is delivered on its eventfd unless
//!   it is masked: by SET_IRQS ACTION_MASK, by the capability's function
//!   mask, or by its table entry's mask bit. Table masks count only once the
//!   client has written the table: QEMU emulates the table itself and never
//!   writes ours, while a client that uses our table (the vfpga VMM) writes
//!   it before enabling. A masked or fd-less vector sets its PBA bit and is
//!   sent when it becomes deliverable.
//! - **INTx** (when MSI-X is not active and the command register does not
//!   disable it) is level-triggered and auto-masked: an assertion signals the
//!   trigger eventfd once and masks the line; an UNMASK (SET_IRQS, or a write
//!   to the resample eventfd) unmasks it, and the server then re-checks the
//!   device's line (`IRQ_STATUS & !IRQ_MASK`) and re-asserts if it is still
//!   high. Setting the command register's INTx disable bit deasserts INTx
//!   (nothing is signalled while it is set); clearing it makes the server
//!   re-check the line the same way. The hub keeps no copy of the line: the
//!   device's registers are the truth, and the config-space Interrupt Status
//!   bit is read from them too (see [`crate::session`]).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use vfpga_device::IrqSink;
use vfpga_regs::consts;

/// Number of MSI-X vectors.
pub const VECTORS: usize = consts::NUM_VECTORS as usize;
/// Bytes of the MSI-X table.
pub const TABLE_BYTES: u64 = VECTORS as u64 * 16;
/// Bytes of the PBA (one qword per 64 vectors).
pub const PBA_BYTES: u64 = (VECTORS as u64).div_ceil(64) * 8;

#[derive(Debug)]
struct State {
    msix_fds: Vec<Option<OwnedFd>>,
    msix_masked: Vec<bool>,
    msix_via_irqs: bool,
    cfg_enable: bool,
    cfg_function_mask: bool,
    table: [u8; VECTORS * 16],
    table_touched: bool,
    pba: u64,
    intx_fd: Option<OwnedFd>,
    intx_masked: bool,
    intx_disabled: bool,
    signals: u64,
}

impl State {
    fn new() -> Self {
        let mut table = [0u8; VECTORS * 16];
        for v in 0..VECTORS {
            table[v * 16 + 12] = 1; // vector control: masked at reset
        }
        State {
            msix_fds: (0..VECTORS).map(|_| None).collect(),
            msix_masked: vec![false; VECTORS],
            msix_via_irqs: false,
            cfg_enable: false,
            cfg_function_mask: false,
            table,
            table_touched: false,
            pba: 0,
            intx_fd: None,
            intx_masked: false,
            intx_disabled: false,
            signals: 0,
        }
    }

    fn msix_active(&self) -> bool {
        self.msix_via_irqs || self.cfg_enable
    }

    fn vector_masked(&self, v: usize) -> bool {
        self.msix_masked[v]
            || self.cfg_function_mask
            || (self.table_touched && self.table[v * 16 + 12] & 1 != 0)
    }

    fn signal(fd: &OwnedFd) {
        // An eventfd counter overflow (EAGAIN) or a closed peer only loses a
        // wake-up the consumer would coalesce anyway.
        let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
    }

    fn deliver(&mut self, v: usize) {
        if self.vector_masked(v) || self.msix_fds[v].is_none() {
            self.pba |= 1 << v;
            return;
        }
        if let Some(fd) = &self.msix_fds[v] {
            Self::signal(fd);
            self.signals += 1;
        }
    }

    fn flush_pending(&mut self) {
        if !self.msix_active() {
            return;
        }
        for v in 0..VECTORS {
            if self.pba & (1 << v) != 0
                && !self.vector_masked(v)
                && let Some(fd) = &self.msix_fds[v]
            {
                self.pba &= !(1 << v);
                Self::signal(fd);
                self.signals += 1;
            }
        }
    }

    fn assert_intx(&mut self) {
        if self.intx_masked || self.intx_disabled {
            return;
        }
        if let Some(fd) = &self.intx_fd {
            Self::signal(fd);
            self.signals += 1;
            self.intx_masked = true;
        }
    }
}

/// The server's interrupt controller. See the module docs.
#[derive(Debug)]
pub struct IrqHub {
    st: Mutex<State>,
}

impl Default for IrqHub {
    fn default() -> Self {
        IrqHub {
            st: Mutex::new(State::new()),
        }
    }
}

impl IrqSink for IrqHub {
    fn raise(&self, vector: u16) {
        let mut s = self.lock();
        let v = usize::from(vector);
        if s.msix_active() {
            if v < VECTORS {
                s.deliver(v);
            }
        } else {
            s.assert_intx();
        }
    }
}

impl IrqHub {
    /// A hub with nothing connected.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of eventfd signals sent so far (for tests and statistics).
    pub fn signals(&self) -> u64 {
        self.lock().signals
    }

    /// The PBA.
    pub fn pba(&self) -> u64 {
        self.lock().pba
    }

    /// Mirrors the config-space bits that affect delivery.
    pub fn set_config(&self, msix_enable: bool, function_mask: bool, intx_disabled: bool) {
        let mut s = self.lock();
        s.cfg_enable = msix_enable;
        s.cfg_function_mask = function_mask;
        s.intx_disabled = intx_disabled;
        s.flush_pending();
    }

    /// SET_IRQS TRIGGER with eventfds for MSI-X vectors `start..` (`None`
    /// de-assigns). `enable` turns MSI-X on (any assignment does).
    pub fn msix_assign(&self, start: usize, fds: Vec<Option<OwnedFd>>) {
        let mut s = self.lock();
        for (i, fd) in fds.into_iter().enumerate() {
            if let Some(slot) = s.msix_fds.get_mut(start + i) {
                *slot = fd;
            }
        }
        s.msix_via_irqs = true;
        s.flush_pending();
    }

    /// SET_IRQS TRIGGER DATA_NONE count 0: MSI-X off, its eventfds closed.
    pub fn msix_disable(&self) {
        let mut s = self.lock();
        s.msix_fds.iter_mut().for_each(|f| *f = None);
        s.msix_via_irqs = false;
    }

    /// SET_IRQS MASK/UNMASK on MSI-X vectors.
    pub fn msix_mask(&self, vectors: &[usize], masked: bool) {
        let mut s = self.lock();
        for &v in vectors {
            if let Some(m) = s.msix_masked.get_mut(v) {
                *m = masked;
            }
        }
        s.flush_pending();
    }

    /// SET_IRQS TRIGGER DATA_NONE/BOOL on MSI-X vectors: fire them.
    pub fn msix_fire(&self, vectors: &[usize]) {
        let mut s = self.lock();
        for &v in vectors {
            if v < VECTORS {
                s.deliver(v);
            }
        }
    }

    /// Reads the MSI-X table at `off` (relative to the table).
    pub fn table_read(&self, off: u64, buf: &mut [u8]) -> Option<()> {
        let s = self.lock();
        let o = usize::try_from(off).ok()?;
        buf.copy_from_slice(s.table.get(o..o.checked_add(buf.len())?)?);
        Some(())
    }

    /// Writes the MSI-X table at `off`.
    pub fn table_write(&self, off: u64, data: &[u8]) -> Option<()> {
        let mut s = self.lock();
        let o = usize::try_from(off).ok()?;
        let end = o.checked_add(data.len())?;
        s.table.get_mut(o..end)?.copy_from_slice(data);
        s.table_touched = true;
        s.flush_pending();
        Some(())
    }

    /// Reads the PBA at `off`.
    pub fn pba_read(&self, off: u64, buf: &mut [u8]) -> Option<()> {
        let s = self.lock();
        let o = usize::try_from(off).ok()?;
        let bytes = s.pba.to_le_bytes();
        buf.copy_from_slice(bytes.get(o..o.checked_add(buf.len())?)?);
        Some(())
    }

    /// SET_IRQS TRIGGER with an eventfd for INTx (`None` de-assigns).
    pub fn intx_assign(&self, fd: Option<OwnedFd>) {
        let mut s = self.lock();
        s.intx_fd = fd;
        s.intx_masked = false;
    }

    /// SET_IRQS MASK/UNMASK on INTx. Returns whether the line is unmasked
    /// now (the caller then re-checks the device's level).
    pub fn intx_mask(&self, masked: bool) -> bool {
        let mut s = self.lock();
        s.intx_masked = masked;
        !masked
    }

    /// The device's line, as just read: if high, assert INTx if
    /// deliverable (assigned, not masked, not disabled).
    pub fn intx_level(&self, high: bool) {
        if high {
            self.lock().assert_intx();
        }
    }

    /// Whether INTx is the active mechanism (MSI-X off).
    pub fn intx_mode(&self) -> bool {
        !self.lock().msix_active()
    }

    /// Device reset: masks, PBA and table back to reset values; the client's
    /// eventfds stay assigned (it re-programs what it needs).
    pub fn reset(&self) {
        let mut s = self.lock();
        let fds = std::mem::take(&mut s.msix_fds);
        let intx = s.intx_fd.take();
        let via = s.msix_via_irqs;
        let signals = s.signals;
        *s = State::new();
        s.msix_fds = fds;
        s.intx_fd = intx;
        s.msix_via_irqs = via;
        s.signals = signals;
    }

    /// Client gone: every eventfd closed, MSI-X and INTx disconnected.
    pub fn disconnect(&self) {
        let mut s = self.lock();
        s.msix_fds.iter_mut().for_each(|f| *f = None);
        s.intx_fd = None;
        s.msix_via_irqs = false;
        s.intx_masked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    fn efd() -> (OwnedFd, EventFd) {
        let e = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap();
        let dup = e.as_fd().try_clone_to_owned().unwrap();
        (dup, e)
    }

    fn count(e: &EventFd) -> u64 {
        e.read().unwrap_or(0)
    }

    #[test]
    fn msix_masked_vectors_pend_and_fire_on_unmask() {
        let h = IrqHub::new();
        let (f0, e0) = efd();
        h.msix_assign(0, vec![Some(f0)]);
        h.raise(0);
        assert_eq!(count(&e0), 1);
        h.msix_mask(&[0], true);
        h.raise(0);
        assert_eq!(count(&e0), 0);
        assert_eq!(h.pba(), 1);
        h.msix_mask(&[0], false);
        assert_eq!(count(&e0), 1);
        assert_eq!(h.pba(), 0);
        // A vector without an eventfd pends.
        h.raise(1);
        assert_eq!(h.pba(), 2);
    }

    #[test]
    fn table_masks_apply_once_the_table_is_written() {
        let h = IrqHub::new();
        let (f0, e0) = efd();
        h.set_config(true, false, false);
        h.msix_assign(0, vec![Some(f0)]);
        h.raise(0);
        assert_eq!(count(&e0), 1, "untouched table: QEMU mode");
        h.table_write(12, &1u32.to_le_bytes()).unwrap();
        h.raise(0);
        assert_eq!(count(&e0), 0);
        h.table_write(12, &0u32.to_le_bytes()).unwrap();
        assert_eq!(count(&e0), 1);
        assert!(h.table_write(TABLE_BYTES - 2, &[0; 4]).is_none());
    }

    #[test]
    fn intx_is_automasked() {
        let h = IrqHub::new();
        let (f, e) = efd();
        h.intx_assign(Some(f));
        h.raise(0);
        assert_eq!(count(&e), 1);
        h.raise(0);
        assert_eq!(count(&e), 0, "auto-masked");
        assert!(h.intx_mask(false));
        h.intx_level(true);
        assert_eq!(count(&e), 1);
        h.set_config(false, false, true);
        h.intx_mask(false);
        h.intx_level(true);
        assert_eq!(count(&e), 0, "INTx disabled in the command register");
        h.set_config(false, false, false);
        h.intx_level(true);
        assert_eq!(count(&e), 1, "re-enabled with the line high");
    }
}

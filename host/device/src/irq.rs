//! The IRQ sink: where a device delivers its MSI-X messages.

use std::sync::Mutex;

/// Receives the interrupt messages a device sends. Called from the thread that
/// runs the device; implementations must not block for long.
pub trait IrqSink: Send + Sync + std::fmt::Debug {
    /// The device sent a message on `vector`.
    fn raise(&self, vector: u16);
}

/// An IRQ sink that records every message, for tests and cross-checks.
#[derive(Debug, Default)]
pub struct IrqLog {
    raised: Mutex<Vec<u16>>,
}

impl IrqLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every vector raised so far, in order.
    pub fn raised(&self) -> Vec<u16> {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Returns the vectors raised so far and clears the log.
    pub fn take(&self) -> Vec<u16> {
        std::mem::take(&mut *self.raised.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Number of messages on `vector` so far.
    pub fn count(&self, vector: u16) -> usize {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|v| **v == vector)
            .count()
    }
}

impl IrqSink for IrqLog {
    fn raise(&self, vector: u16) {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(vector);
    }
}

/// An IRQ sink that drops every message.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIrq;

impl IrqSink for NoIrq {
    fn raise(&self, _vector: u16) {}
}

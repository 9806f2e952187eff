//! The destination side: a load session that takes one stream into a
//! quiesced device and validates it before the device may run.

use vfpga_device::{Device, DeviceError, DeviceState, DmaPort};
use vfpga_regs::consts;

use crate::stream::{Decoder, PAGE_SIZE, Sink, StreamError, Summary};

/// Why a stream could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The stream itself is bad (each cause has its own variant).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A ring of the restored state lies outside the memory the VMM mapped
    /// for the destination: the device would fault (or worse) once running.
    #[error("{ring} ring [{iova:#x}, +{len:#x}) is not inside mapped guest memory")]
    RingUnmapped {
        /// "submission" or "completion".
        ring: &'static str,
        /// Ring base.
        iova: u64,
        /// Ring bytes.
        len: u64,
    },
}

struct DevSink<'a, D: ?Sized> {
    dev: &'a mut D,
}

impl<D: Device + ?Sized> Sink for DevSink<'_, D> {
    fn page(&mut self, index: u32, data: &[u8]) -> Result<(), DeviceError> {
        self.dev
            .devmem_write(u64::from(index) * PAGE_SIZE as u64, data)
    }

    fn state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        // The device's own verdict (datasheet §9.3), with the device quiesced.
        self.dev.restore_state(state)
    }
}

/// One load stream.
#[derive(Debug, Clone)]
pub struct LoadSession {
    dec: Decoder,
    accepted: u64,
}

impl LoadSession {
    /// A session for `dev`, which must stay quiesced until [`Self::finish`].
    pub fn new<D: Device + ?Sized>(dev: &D) -> Self {
        LoadSession {
            dec: Decoder::new(dev.info().identity),
            accepted: 0,
        }
    }

    /// Bytes accepted so far (including those of a chunk not yet complete).
    pub fn bytes(&self) -> u64 {
        self.accepted
    }

    /// Takes the next segment: either all of it is accepted or the stream is
    /// rejected (and every later call fails).
    pub fn write<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        data: &[u8],
    ) -> Result<usize, StreamError> {
        self.dec.feed(data, &mut DevSink { dev })?;
        self.accepted += data.len() as u64;
        Ok(data.len())
    }

    /// Ends the stream: it must be complete and valid, and, with `dma`, its
    /// rings must lie inside the destination's mapped memory.
    pub fn finish(&mut self, dma: Option<&DmaPort>) -> Result<Summary, LoadError> {
        let sum = self.dec.finish()?;
        if let Some(port) = dma {
            check_rings(&sum.state, port)?;
        }
        Ok(sum)
    }
}

/// Host check of a restored state: every enabled ring must lie inside one
/// mapping of `port`.
pub fn check_rings(state: &DeviceState, port: &DmaPort) -> Result<(), LoadError> {
    let a = &state.arch;
    let rings = [
        (
            "submission",
            a.sq_base_lo,
            a.sq_base_hi,
            a.sq_size,
            consts::DESC_BYTES,
        ),
        (
            "completion",
            a.cq_base_lo,
            a.cq_base_hi,
            a.cq_size,
            consts::CPL_BYTES,
        ),
    ];
    for (ring, lo, hi, size, entry) in rings {
        if size == 0 {
            continue;
        }
        let iova = u64::from(lo) | (u64::from(hi) << 32);
        let len = u64::from(size) * u64::from(entry);
        if !port.is_mapped(iova, len) {
            return Err(LoadError::RingUnmapped { ring, iova, len });
        }
    }
    Ok(())
}

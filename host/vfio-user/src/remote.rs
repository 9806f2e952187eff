//! Guest memory the client mapped without an fd: every device access
//! becomes a DMA_READ or DMA_WRITE message to the client, in the layout the
//! peer expects ([`DmaLayout`]).
//!
//! Requests are sent from the thread that runs the device (never from an
//! I/O task) and wait for their reply with a timeout; the connection's
//! reader routes replies here by message id, so waiting never blocks the
//! handling of the client's own commands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use vfpga_device::{DmaFault, GuestMemory};

use crate::wire::{self, DmaLayout, HEADER_LEN, Header, cmd, flags};

/// How long a DMA request waits for the client (QEMU's own reply timeout).
pub const DMA_TIMEOUT: Duration = Duration::from_secs(5);

type Waiter = mpsc::SyncSender<Result<Vec<u8>, u32>>;

#[derive(Debug)]
struct Params {
    layout: DmaLayout,
    max_xfer: u64,
}

/// The server-to-client request channel of one connection.
#[derive(Debug)]
pub struct DmaLink {
    tx: Mutex<Option<UnboundedSender<Vec<u8>>>>,
    pending: Mutex<HashMap<u16, Waiter>>,
    next_id: AtomicU16,
    params: Mutex<Params>,
    timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DmaLink {
    /// A link that queues outgoing messages on `tx`.
    pub fn new(tx: UnboundedSender<Vec<u8>>) -> Self {
        DmaLink {
            tx: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU16::new(0x8000),
            params: Mutex::new(Params {
                layout: DmaLayout::Spec,
                max_xfer: wire::Caps::default().max_data_xfer_size,
            }),
            timeout: DMA_TIMEOUT,
        }
    }

    /// Sets the negotiated layout and transfer size.
    pub fn configure(&self, layout: DmaLayout, max_xfer: u64) {
        *lock(&self.params) = Params { layout, max_xfer };
    }

    /// The connection ended: no more requests; waiters fail at once.
    pub fn close(&self) {
        lock(&self.tx).take();
        lock(&self.pending).clear();
    }

    /// Routes a reply from the client. Returns `false` for a reply nobody
    /// waits for (unsolicited).
    pub fn deliver(&self, hdr: &Header, payload: Vec<u8>) -> bool {
        let Some(w) = lock(&self.pending).remove(&hdr.msg_id) else {
            return false;
        };
        let r = if hdr.flags & flags::ERROR != 0 {
            Err(hdr.error)
        } else {
            Ok(payload)
        };
        let _ = w.try_send(r);
        true
    }

    fn request(&self, command: u16, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = mpsc::sync_channel(1);
        let h = Header {
            msg_id: id,
            command,
            msg_size: (HEADER_LEN + payload.len()) as u32,
            flags: flags::TYPE_COMMAND,
            error: 0,
        };
        let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
        m.extend_from_slice(&h.encode());
        m.extend_from_slice(&payload);
        lock(&self.pending).insert(id, wtx);
        let sent = lock(&self.tx).as_ref().is_some_and(|tx| tx.send(m).is_ok());
        if !sent {
            lock(&self.pending).remove(&id);
            return Err("client disconnected".into());
        }
        match wrx.recv_timeout(self.timeout) {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(errno)) => Err(format!("client replied errno {errno}")),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err("no reply from the client".into())
            }
        }
    }
}

/// A guest-memory region served by DMA_READ/DMA_WRITE messages.
#[derive(Debug)]
pub struct RemoteMemory {
    link: Arc<DmaLink>,
    base: u64,
    len: u64,
}

impl RemoteMemory {
    /// `len` bytes at IOVA `base`.
    pub fn new(link: Arc<DmaLink>, base: u64, len: u64) -> Self {
        RemoteMemory { link, base, len }
    }

    fn params(&self) -> (DmaLayout, usize) {
        let p = lock(&self.link.params);
        (
            p.layout,
            usize::try_from(p.max_xfer).unwrap_or(usize::MAX).max(1),
        )
    }
}

impl GuestMemory for RemoteMemory {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let (layout, chunk) = self.params();
        let mut pos = 0usize;
        for c in buf.chunks_mut(chunk) {
            let addr = self.base + offset + pos as u64;
            let fault = |reason: String| DmaFault::Backing { iova: addr, reason };
            let reply = self
                .link
                .request(cmd::DMA_READ, layout.encode(addr, c.len() as u64, &[]))
                .map_err(fault)?;
            let (raddr, count, data) = layout
                .decode(&reply, true, c.len() as u64)
                .map_err(|e| fault(format!("bad DMA_READ reply: {e}")))?;
            if raddr != addr || count != c.len() as u64 {
                return Err(fault("DMA_READ reply for another range".into()));
            }
            c.copy_from_slice(data);
            pos += c.len();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        let (layout, chunk) = self.params();
        let mut pos = 0usize;
        for c in data.chunks(chunk) {
            let addr = self.base + offset + pos as u64;
            self.link
                .request(cmd::DMA_WRITE, layout.encode(addr, c.len() as u64, c))
                .map_err(|reason| DmaFault::Backing { iova: addr, reason })?;
            pos += c.len();
        }
        Ok(())
    }
}

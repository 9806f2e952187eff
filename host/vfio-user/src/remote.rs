//! Guest memory the client mapped without an fd: every device access
//! becomes a DMA_READ or DMA_WRITE message to the client, in the layout the
//! peer expects ([`DmaLayout`]).
//!
//! Accesses never wait for the client's answer. The first attempt sends the
//! request(s) and answers [`DmaFault::Pending`]; the device treats that as
//! back-pressure on its DMA port (it holds the burst and repeats the same
//! access later), so the device, and with it the handling of the client's
//! own MMIO commands, is never blocked on a reply. This matters with QEMU:
//! its vCPU holds the big lock while it waits for a REGION_READ reply, and
//! its DMA_READ/DMA_WRITE handler needs that lock, so a server that held an
//! MMIO reply until its own DMA was answered would stall both sides until
//! the 5-second timeout (errata E-"DMA paths").
//!
//! One access is outstanding per connection (a device has one DMA engine);
//! an access larger than the negotiated transfer size is sent as several
//! messages at once. The connection's reader routes replies here by message
//! id and wakes whoever waits in [`DmaLink::wait`].

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::sync::mpsc::Sender;
use vfpga_device::{DmaFault, GuestMemory};

use crate::wire::{self, DmaLayout, HEADER_LEN, Header, cmd, flags};

/// How long a DMA request waits for the client (QEMU's own reply timeout).
pub const DMA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Params {
    layout: DmaLayout,
    max_xfer: u64,
}

/// What an access is: repeated accesses match when all of it is equal.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    write: bool,
    addr: u64,
    len: usize,
    /// The bytes of a write (a repeated write with other bytes is another
    /// access).
    data: Vec<u8>,
}

#[derive(Debug)]
struct Part {
    id: u16,
    addr: u64,
    len: usize,
    reply: Option<Result<Vec<u8>, u32>>,
}

/// The outstanding access of the connection.
#[derive(Debug)]
struct Slot {
    key: Key,
    layout: DmaLayout,
    parts: Vec<Part>,
    since: Instant,
}

impl Slot {
    fn answered(&self) -> bool {
        self.parts.iter().all(|p| p.reply.is_some())
    }
}

#[derive(Debug)]
struct LinkState {
    tx: Option<Sender<Vec<u8>>>,
    slot: Option<Slot>,
}

/// The server-to-client request channel of one connection.
#[derive(Debug)]
pub struct DmaLink {
    state: Mutex<LinkState>,
    answered: Condvar,
    next_id: AtomicU16,
    params: Mutex<Params>,
    timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DmaLink {
    /// A link that queues outgoing messages on `tx`.
    pub fn new(tx: Sender<Vec<u8>>) -> Self {
        DmaLink {
            state: Mutex::new(LinkState {
                tx: Some(tx),
                slot: None,
            }),
            answered: Condvar::new(),
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

    /// The connection ended: no more requests; an outstanding access fails
    /// at its next attempt.
    pub fn close(&self) {
        let mut g = lock(&self.state);
        g.tx = None;
        g.slot = None;
        self.answered.notify_all();
    }

    /// Routes a reply from the client. Refuses (with the reason) a reply
    /// nobody waits for (unsolicited, or late after its access timed out) and
    /// one whose length is not exactly what its request defines.
    pub fn deliver(&self, hdr: &Header, payload: Vec<u8>) -> Result<(), String> {
        let mut g = lock(&self.state);
        let Some(slot) = g.slot.as_mut() else {
            return Err("no DMA request is outstanding".into());
        };
        let (write, layout) = (slot.key.write, slot.layout);
        let Some(part) = slot
            .parts
            .iter_mut()
            .find(|p| p.id == hdr.msg_id && p.reply.is_none())
        else {
            return Err(format!("no outstanding DMA request has id {}", hdr.msg_id));
        };
        if hdr.command != if write { cmd::DMA_WRITE } else { cmd::DMA_READ } {
            return Err(format!("reply to id {} names another command", hdr.msg_id));
        }
        let reply = if hdr.flags & flags::ERROR != 0 {
            if !payload.is_empty() {
                return Err("error reply with a payload".into());
            }
            Err(hdr.error)
        } else {
            // DMA_READ: the request's fields and exactly the data asked for.
            // DMA_WRITE: nothing (QEMU), or the request's address and count
            // (the specification; its reply table gives count 4 bytes).
            let want = layout.payload_len(if write { 0 } else { part.len });
            let ok = if write {
                matches!(payload.len(), 0 | 12) || payload.len() == want
            } else {
                payload.len() == want
            };
            if !ok {
                return Err(format!(
                    "DMA_{} reply of {} bytes, {want} expected",
                    if write { "WRITE" } else { "READ" },
                    payload.len()
                ));
            }
            Ok(payload)
        };
        part.reply = Some(reply);
        if g.slot.as_ref().is_some_and(Slot::answered) {
            self.answered.notify_all();
        }
        Ok(())
    }

    /// Whether the outstanding access has all its answers and the device
    /// has not taken them yet.
    pub fn answer_waiting(&self) -> bool {
        lock(&self.state).slot.as_ref().is_some_and(Slot::answered)
    }

    /// Waits up to `timeout` until the outstanding access (if any) has all
    /// its answers.
    pub fn wait(&self, timeout: Duration) {
        let g = lock(&self.state);
        let _ = self
            .answered
            .wait_timeout_while(g, timeout, |s| {
                s.tx.is_some() && s.slot.as_ref().is_some_and(|s| !s.answered())
            })
            .unwrap_or_else(|e| e.into_inner());
    }

    /// One attempt of an access: its result when all answers are in, else
    /// [`DmaFault::Pending`] (sending the requests on the first attempt).
    fn access(&self, key: Key) -> Result<Vec<u8>, DmaFault> {
        let iova = key.addr;
        let backing = |reason: String| DmaFault::Backing { iova, reason };
        let mut g = lock(&self.state);
        if g.tx.is_none() {
            return Err(backing("client disconnected".into()));
        }
        if let Some(s) = g.slot.as_ref() {
            let timed_out = s.since.elapsed() > self.timeout;
            if s.key == key {
                if s.answered() {
                    let s = g.slot.take().ok_or_else(|| backing("lost".into()))?;
                    return finish(s);
                }
                if timed_out {
                    g.slot = None;
                    return Err(backing(format!(
                        "no reply from the client in {} s",
                        self.timeout.as_secs()
                    )));
                }
                return Err(DmaFault::Pending { iova });
            }
            if !s.answered() && !timed_out {
                // Another access is still out: wait for it first.
                return Err(DmaFault::Pending { iova });
            }
            // The device gave up on that access (an abort, a reset, or
            // a quiesce that restored other state): drop its answer.
            g.slot = None;
        }
        let (layout, max_xfer) = {
            let p = lock(&self.params);
            (p.layout, p.max_xfer)
        };
        let chunk = usize::try_from(max_xfer).unwrap_or(usize::MAX).max(1);
        let mut parts = Vec::new();
        let mut msgs = Vec::new();
        let mut pos = 0usize;
        while pos < key.len {
            let n = chunk.min(key.len - pos);
            let addr = key.addr + pos as u64;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let data = if key.write {
                &key.data[pos..pos + n]
            } else {
                &[][..]
            };
            let payload = layout.encode(addr, n as u64, data);
            let h = Header {
                msg_id: id,
                command: if key.write {
                    cmd::DMA_WRITE
                } else {
                    cmd::DMA_READ
                },
                msg_size: (HEADER_LEN + payload.len()) as u32,
                flags: flags::TYPE_COMMAND,
                error: 0,
            };
            let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
            m.extend_from_slice(&h.encode());
            m.extend_from_slice(&payload);
            msgs.push(m);
            parts.push(Part {
                id,
                addr,
                len: n,
                reply: None,
            });
            pos += n;
        }
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let tx = g.tx.clone();
        g.slot = Some(Slot {
            key,
            layout,
            parts,
            since: Instant::now(),
        });
        drop(g);
        for m in msgs {
            if tx.as_ref().is_none_or(|tx| tx.send(m).is_err()) {
                lock(&self.state).slot = None;
                return Err(backing("client disconnected".into()));
            }
        }
        Err(DmaFault::Pending { iova })
    }
}

/// The result of an answered access: the bytes read (empty for a write).
fn finish(s: Slot) -> Result<Vec<u8>, DmaFault> {
    let mut out = Vec::with_capacity(if s.key.write { 0 } else { s.key.len });
    for p in s.parts {
        let fault = |reason: String| DmaFault::Backing {
            iova: p.addr,
            reason,
        };
        let reply = match p.reply {
            Some(Ok(r)) => r,
            Some(Err(errno)) => return Err(fault(format!("client replied errno {errno}"))),
            None => return Err(fault("no reply".into())),
        };
        if s.key.write {
            // An echo, when there is one, must name the request's range.
            let r = wire::Reader::new(&reply, "DMA_WRITE reply");
            // `deliver` admitted 0, 12 or 16 bytes only.
            let echo = match reply.len() {
                0 => None,
                12 => r.u64(0).ok().zip(r.u32(8).ok().map(u64::from)),
                _ => r.u64(0).ok().zip(r.u64(8).ok()),
            };
            if echo.is_some_and(|(a, c)| a != p.addr || c != p.len as u64) {
                return Err(fault("DMA_WRITE reply for another range".into()));
            }
            continue;
        }
        let (raddr, count, data) = s
            .layout
            .decode(&reply, true, p.len as u64)
            .map_err(|e| fault(format!("bad DMA_READ reply: {e}")))?;
        if raddr != p.addr || count != p.len as u64 || data.len() != p.len {
            return Err(fault("DMA_READ reply for another range".into()));
        }
        out.extend_from_slice(data);
    }
    Ok(out)
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
}

impl GuestMemory for RemoteMemory {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let key = Key {
            write: false,
            addr: self.base + offset,
            len: buf.len(),
            data: Vec::new(),
        };
        // `finish` checked every part's address and length.
        buf.copy_from_slice(&self.link.access(key)?);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        let key = Key {
            write: true,
            addr: self.base + offset,
            len: data.len(),
            data: data.to_vec(),
        };
        self.link.access(key).map(drop)
    }

    fn may_pend(&self) -> bool {
        true
    }

    fn wait_pending(&self, timeout: Duration) {
        self.link.wait(timeout);
    }
}

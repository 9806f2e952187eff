//! The source side: a save session that produces one stream, with pre-copy.
//!
//! While the device runs (PRE_COPY) the session sends the envelope, the FULL
//! pass (every page), then DIRTY passes of the pages the device's dirty
//! bitmap reports since the previous pass. When the device is stopped
//! (STOP_COPY) it finishes the pass in progress, sends the FINAL pass (pages
//! dirtied since the last pass), the state words and END. The session holds
//! at most one chunk of output at a time.

use vfpga_device::{Device, DeviceError};

use crate::stream::{
    END_CHUNK_BYTES, Encoder, HEADER_LEN, PAGE_CHUNK_BYTES, PAGE_CHUNK_LEN, PAGE_SIZE,
    PASS_CHUNK_BYTES, PassKind, STATE_CHUNK_BYTES,
};

/// A set of device-memory pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSet {
    words: Vec<u64>,
    pages: u32,
    count: u32,
}

impl PageSet {
    /// No page of `pages`.
    pub fn empty(pages: u32) -> Self {
        PageSet {
            words: vec![0; (pages as usize).div_ceil(64)],
            pages,
            count: 0,
        }
    }

    /// Every page of `pages`.
    pub fn full(pages: u32) -> Self {
        let mut s = Self::empty(pages);
        for i in 0..pages {
            s.insert(i);
        }
        s
    }

    /// Adds page `i` (ignored when out of range).
    pub fn insert(&mut self, i: u32) {
        if i >= self.pages {
            return;
        }
        let (w, b) = ((i / 64) as usize, i % 64);
        if let Some(x) = self.words.get_mut(w)
            && *x & (1 << b) == 0
        {
            *x |= 1 << b;
            self.count += 1;
        }
    }

    /// Adds the pages of a device bitmap (bit `p` of word `p / 64`); bits
    /// beyond the set's size are ignored.
    pub fn add_bitmap(&mut self, bitmap: &[u64]) {
        for (wi, &w) in bitmap.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                self.insert((wi as u32).saturating_mul(64).saturating_add(b));
            }
        }
    }

    /// Number of pages in the set.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether page `i` is in the set.
    pub fn contains(&self, i: u32) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The first page `>= from` in the set.
    pub fn next_from(&self, from: u32) -> Option<u32> {
        let mut wi = (from / 64) as usize;
        let mut w = *self.words.get(wi)? & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                return Some(wi as u32 * 64 + w.trailing_zeros());
            }
            wi += 1;
            w = *self.words.get(wi)?;
        }
    }

    /// Empties the set and returns what it held.
    pub fn take(&mut self) -> PageSet {
        let fresh = PageSet::empty(self.pages);
        std::mem::replace(self, fresh)
    }
}

#[derive(Debug, Clone)]
struct Pass {
    kind: PassKind,
    set: PageSet,
    cursor: u32,
    remaining: u32,
}

/// What [`SaveSession::advice`] recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// Keep iterating in PRE_COPY.
    Iterate,
    /// Move to STOP_COPY now, for the reason given.
    StopAndCopy(StopReason),
}

/// Why pre-copy should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// What is left fits in the downtime budget.
    Converged,
    /// The pass limit is reached.
    MaxPasses,
    /// The dirty set stopped shrinking: more passes will not help.
    NotConverging,
}

impl StopReason {
    /// The name reports use: `converged`, `max-passes` or `not-converging`.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Converged => "converged",
            StopReason::MaxPasses => "max-passes",
            StopReason::NotConverging => "not-converging",
        }
    }
}

/// When to stop iterating pre-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvergencePolicy {
    /// Stop once the bytes left for stop-and-copy are at most this.
    pub downtime_bytes: u64,
    /// Stop after this many DIRTY passes whatever is left.
    pub max_dirty_passes: u32,
    /// Stop when each of the last `stall_passes` DIRTY passes sent at least
    /// as many pages as the one before it.
    pub stall_passes: u32,
}

impl Default for ConvergencePolicy {
    fn default() -> Self {
        ConvergencePolicy {
            downtime_bytes: 4 << 20,
            max_dirty_passes: 30,
            stall_passes: 3,
        }
    }
}

/// The pre-copy estimates of `VFIO_MIG_GET_PRECOPY_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrecopyInfo {
    /// Bytes of the initial image (envelope and FULL pass) not yet read.
    pub initial_bytes: u64,
    /// Bytes of dirty pages known now and not yet read.
    pub dirty_bytes: u64,
}

/// One save stream.
#[derive(Debug, Clone)]
pub struct SaveSession {
    enc: Encoder,
    pages: u32,
    out: Vec<u8>,
    pos: usize,
    header_sent: bool,
    full_announced: bool,
    cur: Option<Pass>,
    next: PageSet,
    stop_copy: bool,
    final_started: bool,
    state_sent: bool,
    end_sent: bool,
    dirty_history: Vec<u32>,
    bytes_read: u64,
}

impl SaveSession {
    /// Starts a stream for `dev`: clears its dirty bitmap (everything is in
    /// the FULL pass). The device may keep running.
    pub fn start<D: Device + ?Sized>(dev: &mut D) -> Result<Self, DeviceError> {
        let id = dev.info().identity;
        dev.take_dirty_pages()?;
        Ok(SaveSession {
            enc: Encoder::new(id),
            pages: id.devmem_pages,
            out: Vec::with_capacity(crate::stream::MAX_CHUNK_BYTES),
            pos: 0,
            header_sent: false,
            full_announced: false,
            cur: None,
            next: PageSet::empty(id.devmem_pages),
            stop_copy: false,
            final_started: false,
            state_sent: false,
            end_sent: false,
            dirty_history: Vec::new(),
            bytes_read: 0,
        })
    }

    /// Switches to stop-and-copy. The caller has quiesced the device.
    pub fn enter_stop_copy(&mut self) {
        self.stop_copy = true;
    }

    /// Whether the session is in stop-and-copy.
    pub fn is_stop_copy(&self) -> bool {
        self.stop_copy
    }

    /// Whether every byte of the stream has been read (STOP_COPY only).
    pub fn is_complete(&self) -> bool {
        self.end_sent && self.pos == self.out.len()
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Pages sent by each DIRTY pass so far.
    pub fn dirty_passes(&self) -> &[u32] {
        &self.dirty_history
    }

    /// Copies the next stream bytes into `buf`. Returns fewer bytes than
    /// asked only at an end: temporary in PRE_COPY (nothing dirty now),
    /// permanent in STOP_COPY (the stream is complete).
    pub fn read<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        buf: &mut [u8],
    ) -> Result<usize, DeviceError> {
        let mut n = 0;
        while n < buf.len() {
            if self.pos == self.out.len() {
                // A page chunk goes straight into the caller's buffer when
                // it fits whole: no staging copy on the bulk path.
                if let Some(i) = self.cur_page()
                    && let Some((dst, _)) = buf[n..].split_first_chunk_mut::<PAGE_CHUNK_LEN>()
                {
                    let off = u64::from(i) * PAGE_SIZE as u64;
                    self.enc.page_into(i, dst, |b| dev.devmem_read(off, b))?;
                    self.page_sent(i);
                    n += PAGE_CHUNK_LEN;
                    continue;
                }
                self.out.clear();
                self.pos = 0;
                if !self.generate(dev)? {
                    break;
                }
                continue;
            }
            let k = (self.out.len() - self.pos).min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&self.out[self.pos..self.pos + k]);
            self.pos += k;
            n += k;
        }
        self.bytes_read += n as u64;
        Ok(n)
    }

    fn poll_dirty<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<(), DeviceError> {
        let bm = dev.take_dirty_pages()?;
        self.next.add_bitmap(&bm);
        Ok(())
    }

    fn begin_pass(&mut self, kind: PassKind, set: PageSet) {
        let n = set.len();
        self.enc.pass(kind, n, &mut self.out);
        if kind != PassKind::Full {
            self.dirty_history.push(n);
        }
        self.cur = (n > 0).then_some(Pass {
            kind,
            set,
            cursor: 0,
            remaining: n,
        });
    }

    /// The next page of the pass in progress.
    fn cur_page(&self) -> Option<u32> {
        self.cur.as_ref().and_then(|p| p.set.next_from(p.cursor))
    }

    /// Records that page `i` of the pass in progress has been encoded.
    fn page_sent(&mut self, i: u32) {
        if let Some(p) = &mut self.cur {
            p.cursor = i + 1;
            p.remaining = p.remaining.saturating_sub(1);
            if p.remaining == 0 {
                self.cur = None;
            }
        }
    }

    /// Produces the next chunk into `out`; `false` when there is none now.
    fn generate<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<bool, DeviceError> {
        if !self.header_sent {
            self.enc.header(&mut self.out);
            self.header_sent = true;
            return Ok(true);
        }
        if !self.full_announced {
            self.full_announced = true;
            self.begin_pass(PassKind::Full, PageSet::full(self.pages));
            return Ok(true);
        }
        if self.cur.is_some() {
            let Some(i) = self.cur_page() else {
                // Cannot happen (remaining counts the set); end the pass.
                self.cur = None;
                return Ok(true);
            };
            let off = u64::from(i) * PAGE_SIZE as u64;
            self.enc
                .page_with(i, &mut self.out, |b| dev.devmem_read(off, b))?;
            self.page_sent(i);
            return Ok(true);
        }
        if !self.stop_copy {
            self.poll_dirty(dev)?;
            if self.next.is_empty() {
                return Ok(false);
            }
            let set = self.next.take();
            self.begin_pass(PassKind::Dirty, set);
            return Ok(true);
        }
        if !self.final_started {
            self.poll_dirty(dev)?;
            let set = self.next.take();
            self.final_started = true;
            self.begin_pass(PassKind::Final, set);
            return Ok(true);
        }
        if !self.state_sent {
            let st = dev.save_state()?;
            self.enc.state(&st.arch, &mut self.out);
            self.state_sent = true;
            return Ok(true);
        }
        if !self.end_sent {
            self.enc.end(&mut self.out);
            self.end_sent = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn staged(&self) -> u64 {
        (self.out.len() - self.pos) as u64
    }

    fn in_initial(&self) -> bool {
        !self.full_announced || self.cur.as_ref().is_some_and(|p| p.kind == PassKind::Full)
    }

    fn unannounced_full(&self) -> u64 {
        let mut b = 0;
        if !self.header_sent {
            b += HEADER_LEN as u64;
        }
        if !self.full_announced {
            b += PASS_CHUNK_BYTES + u64::from(self.pages) * PAGE_CHUNK_BYTES;
        }
        b
    }

    fn cur_bytes(&self) -> u64 {
        self.cur
            .as_ref()
            .map_or(0, |p| u64::from(p.remaining) * PAGE_CHUNK_BYTES)
    }

    /// The PRE_COPY estimates; polls the device's dirty bitmap into the
    /// session first (nothing of the stream is consumed or produced).
    pub fn precopy_info<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
    ) -> Result<PrecopyInfo, DeviceError> {
        self.poll_dirty(dev)?;
        let now = self.staged() + self.unannounced_full() + self.cur_bytes();
        let next = if self.next.is_empty() {
            0
        } else {
            PASS_CHUNK_BYTES + u64::from(self.next.len()) * PAGE_CHUNK_BYTES
        };
        Ok(if self.in_initial() {
            PrecopyInfo {
                initial_bytes: now,
                dirty_bytes: next,
            }
        } else {
            PrecopyInfo {
                initial_bytes: 0,
                dirty_bytes: now + next,
            }
        })
    }

    /// Bytes left to read if the device stopped now (exact once the device
    /// is stopped). Polls the dirty bitmap first.
    pub fn stop_copy_bytes<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<u64, DeviceError> {
        self.poll_dirty(dev)?;
        let mut b = self.staged() + self.unannounced_full() + self.cur_bytes();
        if !self.final_started {
            b += PASS_CHUNK_BYTES + u64::from(self.next.len()) * PAGE_CHUNK_BYTES;
        }
        if !self.state_sent {
            b += STATE_CHUNK_BYTES;
        }
        if !self.end_sent {
            b += END_CHUNK_BYTES;
        }
        Ok(b)
    }

    /// The convergence advice for a VMM iterating pre-copy.
    pub fn advice<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        policy: &ConvergencePolicy,
    ) -> Result<Advice, DeviceError> {
        let info = self.precopy_info(dev)?;
        if info.initial_bytes > 0 {
            return Ok(Advice::Iterate);
        }
        if info.dirty_bytes <= policy.downtime_bytes {
            return Ok(Advice::StopAndCopy(StopReason::Converged));
        }
        let h = &self.dirty_history;
        if h.len() >= policy.max_dirty_passes as usize {
            return Ok(Advice::StopAndCopy(StopReason::MaxPasses));
        }
        let k = policy.stall_passes as usize;
        if k > 0 && h.len() > k && h[h.len() - k - 1..].windows(2).all(|w| w[1] >= w[0]) {
            return Ok(Advice::StopAndCopy(StopReason::NotConverging));
        }
        Ok(Advice::Iterate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_set_basics() {
        let mut s = PageSet::empty(130);
        s.add_bitmap(&[1 | (1 << 63), 0, 1 << 1, u64::MAX]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.next_from(0), Some(0));
        assert_eq!(s.next_from(1), Some(63));
        assert_eq!(s.next_from(64), Some(129));
        assert_eq!(s.next_from(130), None);
        assert_eq!(s.next_from(u32::MAX), None);
        let t = s.take();
        assert!(s.is_empty() && t.contains(129));
        assert_eq!(PageSet::full(65).len(), 65);
    }
}

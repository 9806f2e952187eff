//! The tokio server: accepts one client at a time on a UNIX socket, reads
//! messages with their SCM_RIGHTS fds (received close-on-exec), and runs
//! each command through a [`Session`].
//!
//! Threads and tasks:
//!
//! ```text
//!  client ──► reader task ──► replies to our DMA_READ/WRITE ──► DmaLink (wakes the device)
//!                  │ commands, in order (bounded queue)
//!                  ▼
//!            command task ──► Session::handle(&mut DevCore)   (fast path: lock free)
//!                  │          └─ spawn_blocking for commands that may run device steps
//!                  ▼
//!            replies ──► socket ◄── DMA writer task ◄── RemoteMemory (runner thread)
//!
//!  runner thread: lock DevCore, Device::advance, unlock; parks while idle,
//!                 waits unlocked while the device's DMA waits for the client
//! ```
//!
//! The device is never evaluated inside a tokio task except for short,
//! step-free accesses (MMIO, config space) taken with `try_lock`; anything
//! that may run device steps (state changes, migration data, reset, the v1
//! region, or any access while the runner holds the device) runs on the
//! blocking pool, while the reader keeps routing the client's replies to
//! server-initiated DMA. So a device waiting on DMA_READ never blocks the
//! client's commands from being read.
//!
//! On disconnect the session unmaps all DMA, closes every eventfd and stops
//! DMA logging; the device, its migration state and config space stay for
//! the next client. A second client while one is connected is refused (its
//! connection is closed at once).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use vfpga_device::{Device, DmaPort};

use crate::irq::IrqHub;
use crate::remote::DmaLink;
use crate::session::{self, DevCore, SERVER_MAX_FDS, SERVER_MAX_MSG, Session, Shared};
use crate::wire::{HEADER_LEN, Header, WireError};

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Socket I/O failed.
    #[error("socket I/O failed")]
    Io(
        #[from]
        #[source]
        io::Error,
    ),
    /// Another client owns the device.
    #[error("another client is connected; one client at a time")]
    Busy,
    /// The runner thread could not be started.
    #[error("cannot start the device runner thread")]
    Runner(#[source] io::Error),
}

/// Units per [`Device::advance`] call of the runner.
const RUN_BUDGET: u64 = 256;
/// How long the runner sleeps while the device is idle (it is woken early
/// by any access that may give it work).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long the runner sleeps while the device is busy but made no progress
/// (for example a self-running backend that advances on its own thread).
const BUSY_WAIT: Duration = Duration::from_millis(1);
/// Commands queued between the reader and the command task.
const QUEUE: usize = 32;

fn lock_core(m: &Mutex<DevCore>) -> MutexGuard<'_, DevCore> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Runner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    fn start(core: Arc<Mutex<DevCore>>, dma: DmaPort) -> io::Result<Runner> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vfpga-runner".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    let p = lock_core(&core).dev.advance(RUN_BUDGET);
                    match p {
                        // Busy: waits (with the device unlocked) only if
                        // its DMA waits for the client's answer.
                        Ok(p) if !p.idle => {
                            dma.wait_pending(IDLE_WAIT);
                            if p.used == 0 {
                                std::thread::park_timeout(BUSY_WAIT);
                            } else {
                                std::thread::yield_now();
                            }
                        }
                        Ok(_) => std::thread::park_timeout(IDLE_WAIT),
                        Err(e) => {
                            debug!("device advance failed: {e}");
                            std::thread::park_timeout(IDLE_WAIT);
                        }
                    }
                }
            })?;
        Ok(Runner {
            stop,
            thread: Some(thread),
        })
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A vfio-user server for one device.
#[derive(Debug)]
pub struct Server {
    core: Arc<Mutex<DevCore>>,
    shared: Arc<Shared>,
    runner: Runner,
    busy: AtomicBool,
}

/// A message read from the socket.
#[derive(Debug)]
struct Message {
    hdr: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

#[derive(Debug)]
enum Incoming {
    Msg(Message),
    Bad(Header, WireError),
    Resample,
    Eof,
}

impl Server {
    /// A server for `dev`, which must have been built with `dma` as its DMA
    /// port and `irq` as its IRQ sink. Starts the runner thread.
    pub fn new(
        dev: Box<dyn Device>,
        dma: DmaPort,
        irq: Arc<IrqHub>,
    ) -> Result<Server, ServerError> {
        let dma_for_runner = dma.clone();
        let (core, shared) = session::build(dev, dma, irq);
        let core = Arc::new(Mutex::new(core));
        let runner = Runner::start(core.clone(), dma_for_runner).map_err(ServerError::Runner)?;
        Ok(Server {
            core,
            shared: Arc::new(shared),
            runner,
            busy: AtomicBool::new(false),
        })
    }

    /// Runs `f` on the device core (for tests and tools: state inspection).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut DevCore) -> R) -> R {
        f(&mut lock_core(&self.core))
    }

    /// The shared (per-device, cross-client) state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Accepts clients forever, one at a time.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) -> io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let this = self.clone();
            tokio::spawn(async move {
                match this.serve_connection(stream).await {
                    Ok(()) => info!("client disconnected"),
                    Err(ServerError::Busy) => {
                        warn!("refused a second client: the device is in use")
                    }
                    Err(e) => warn!("client session ended: {e}"),
                }
            });
        }
    }

    /// Serves one client until it disconnects.
    pub async fn serve_connection(&self, stream: UnixStream) -> Result<(), ServerError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(ServerError::Busy);
        }
        let r = self.session(stream).await;
        self.busy.store(false, Ordering::Release);
        r
    }

    async fn session(&self, stream: UnixStream) -> Result<(), ServerError> {
        info!("client connected");
        let stream = Arc::new(stream);
        let wlock = Arc::new(tokio::sync::Mutex::new(()));
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let link = Arc::new(DmaLink::new(out_tx));

        let writer = {
            let (s, l) = (stream.clone(), wlock.clone());
            tokio::spawn(async move {
                while let Some(m) = out_rx.recv().await {
                    if send_all(&s, &l, &m).await.is_err() {
                        break;
                    }
                }
            })
        };
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Incoming>(QUEUE);
        let reader = {
            let (s, link, tx) = (stream.clone(), link.clone(), cmd_tx.clone());
            tokio::spawn(async move {
                loop {
                    match read_message(&s).await {
                        Ok(None) => {
                            let _ = tx.send(Incoming::Eof).await;
                            break;
                        }
                        Ok(Some(Ok(m))) if m.hdr.is_reply() => {
                            if !link.deliver(&m.hdr, m.payload) {
                                warn!(msg_id = m.hdr.msg_id, "unsolicited reply dropped");
                            }
                        }
                        Ok(Some(Ok(m))) => {
                            if tx.send(Incoming::Msg(m)).await.is_err() {
                                break;
                            }
                        }
                        Ok(Some(Err((h, e)))) => {
                            if tx.send(Incoming::Bad(h, e)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            debug!("read failed: {e}");
                            let _ = tx.send(Incoming::Eof).await;
                            break;
                        }
                    }
                }
            })
        };

        let mut session = Some(Session::new(self.shared.clone(), Some(link.clone())));
        let mut resample: Option<tokio::task::JoinHandle<()>> = None;
        let mut result = Ok(());
        while let Some(inc) = cmd_rx.recv().await {
            let (hdr, payload, fds) = match inc {
                Incoming::Bad(h, e) => {
                    if !h.no_reply()
                        && !h.is_reply()
                        && let Err(e) = send_all(&stream, &wlock, &Session::reject(&h, &e)).await
                    {
                        result = Err(e.into());
                        break;
                    }
                    continue;
                }
                Incoming::Resample => {
                    let Some(s) = session.take() else { break };
                    let core = self.core.clone();
                    let s = tokio::task::spawn_blocking(move || {
                        s.intx_unmask(&mut lock_core(&core));
                        s
                    })
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                    session = Some(s);
                    continue;
                }
                Incoming::Msg(m) => (m.hdr, m.payload, m.fds),
                Incoming::Eof => break,
            };
            let Some(mut s) = session.take() else { break };
            let mut fds = Some(fds);
            // Fast path: a step-free command while the runner does not hold
            // the device runs right here.
            // With guest memory reached by messages, even an MMIO access may
            // wait for a DMA answer that this runtime has to deliver.
            let fast =
                if session::may_block(hdr.command, &payload) || self.shared.dma.any_may_pend() {
                    None
                } else {
                    let g = match self.core.try_lock() {
                        Ok(g) => Some(g),
                        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                        Err(TryLockError::WouldBlock) => None,
                    };
                    g.map(|mut g| s.handle(&mut g, &hdr, &payload, fds.take().unwrap_or_default()))
                };
            let outcome = match fast {
                Some(o) => {
                    session = Some(s);
                    o
                }
                None => {
                    let core = self.core.clone();
                    let fds = fds.take().unwrap_or_default();
                    let (s2, o) = tokio::task::spawn_blocking(move || {
                        let o = s.handle(&mut lock_core(&core), &hdr, &payload, fds);
                        (s, o)
                    })
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                    session = Some(s2);
                    o
                }
            };
            if let Err(e) = self
                .finish(outcome, &stream, &wlock, &cmd_tx, &mut resample)
                .await
            {
                result = Err(e);
                break;
            }
        }
        reader.abort();
        link.close();
        if let Some(r) = resample.take() {
            r.abort();
        }
        if let Some(mut s) = session.take() {
            let core = self.core.clone();
            let _ = tokio::task::spawn_blocking(move || s.disconnect(&mut lock_core(&core))).await;
        }
        writer.abort();
        result
    }

    async fn finish(
        &self,
        o: session::Outcome,
        stream: &Arc<UnixStream>,
        wlock: &Arc<tokio::sync::Mutex<()>>,
        cmd_tx: &mpsc::Sender<Incoming>,
        resample: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<(), ServerError> {
        if o.wake {
            self.runner.wake();
        }
        if let Some(fd) = o.resample {
            if let Some(r) = resample.take() {
                r.abort();
            }
            if let Some(fd) = fd {
                *resample = Some(watch_resample(fd, cmd_tx.clone())?);
            }
        }
        if let Some(reply) = o.reply {
            send_all(stream, wlock, &reply).await?;
        }
        Ok(())
    }
}

fn watch_resample(
    fd: OwnedFd,
    tx: mpsc::Sender<Incoming>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(io::Error::from)?;
    // SAFETY: `fd` is an open eventfd we own; the AsyncFd takes ownership of
    // it and nothing else closes or replaces it while registered.
    let afd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut g) = afd.readable().await else {
                return;
            };
            let mut b = [0u8; 8];
            match nix::unistd::read(afd.get_ref(), &mut b) {
                Ok(_) => {
                    if tx.send(Incoming::Resample).await.is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => g.clear_ready(),
                Err(_) => return,
            }
        }
    }))
}

/// Writes a whole message (writes are serialized by `wlock`).
async fn send_all(s: &UnixStream, wlock: &tokio::sync::Mutex<()>, bytes: &[u8]) -> io::Result<()> {
    let _g = wlock.lock().await;
    let mut pos = 0;
    while pos < bytes.len() {
        s.writable().await?;
        match s.try_write(&bytes[pos..]) {
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes, collecting fds (close-on-exec).
async fn recv_some(
    s: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
) -> io::Result<usize> {
    s.async_io(Interest::READABLE, || {
        let mut iov = [io::IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; SERVER_MAX_FDS as usize]);
        let m = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        if m.flags.contains(MsgFlags::MSG_CTRUNC) {
            *truncated = true;
        }
        for c in m.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(v) = c {
                for fd in v {
                    // SAFETY: the kernel just installed `fd` in our table for
                    // this message (SCM_RIGHTS); nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Ok(m.bytes)
    })
    .await
}

type ReadResult = Option<Result<Message, (Header, WireError)>>;

/// Reads one message: the header first (validated before anything is
/// allocated), then exactly its payload. `Ok(None)` at end of stream.
async fn read_message(s: &UnixStream) -> io::Result<ReadResult> {
    let mut hb = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    let mut trunc = false;
    let mut got = 0;
    while got < HEADER_LEN {
        let n = recv_some(s, &mut hb[got..], &mut fds, &mut trunc).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let hdr = Header::parse(&hb);
    if let Err(e) = hdr.validate(SERVER_MAX_MSG) {
        // Skip the payload without allocating it, so the stream stays framed.
        let mut left = hdr.payload_len();
        let mut sink = [0u8; 4096];
        while left > 0 {
            let k = left.min(sink.len());
            let n = recv_some(s, &mut sink[..k], &mut fds, &mut trunc).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left -= n;
        }
        return Ok(Some(Err((hdr, e))));
    }
    let mut payload = vec![0u8; hdr.payload_len()];
    let mut got = 0;
    while got < payload.len() {
        let n = recv_some(s, &mut payload[got..], &mut fds, &mut trunc).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    if trunc || fds.len() > SERVER_MAX_FDS as usize {
        return Ok(Some(Err((
            hdr,
            WireError::Invalid("more file descriptors than max_msg_fds"),
        ))));
    }
    Ok(Some(Ok(Message { hdr, payload, fds })))
}

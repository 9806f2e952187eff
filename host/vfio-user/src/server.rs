//! The server: accepts one client at a time on a UNIX socket, reads its
//! messages with their SCM_RIGHTS fds, and runs each command through a
//! [`Session`].
//!
//! Threads (plain OS threads with blocking sockets: a request costs one
//! `recvmsg` and one `write`, with no task hand-off on the way):
//!
//! ```text
//!  accept thread ──► one connection thread per client
//!
//!  connection thread: recvmsg ─┬─ reply to our DMA_READ/WRITE ──► DmaLink (wakes the device)
//!                              ├─ step-free command, nothing queued ──► Session::handle ──► write
//!                              └─ anything else ──► command thread (in order) ──► write
//!  DMA writer thread: DmaLink's requests ──► write          (the device never blocks on the socket)
//!  runner thread (per device): lock DevCore, Device::advance, unlock
//! ```
//!
//! The device is never stepped on the connection thread: a command that may
//! run device steps (state changes, migration data, reset, the v1 region, or
//! any access while guest memory is reached by messages) goes to the command
//! thread, so that the connection thread keeps reading the client's replies
//! to the device's own DMA (QEMU does not answer an MMIO before its DMA
//! request is served, and vice versa).
//!
//! What a client cannot do, whatever it sends (the limits are [`Limits`]):
//! make the server allocate more than one message's worth, hold more fds
//! than one message may carry, keep a half-sent message open past the
//! message timeout, or wedge the framing: a header whose size cannot be right
//! is answered with an error and the connection is closed. Every fd the
//! kernel hands over is owned at once and closed on every path.
//!
//! On disconnect the session unmaps all DMA, closes every eventfd and stops
//! DMA logging; the device, its migration state and config space stay for
//! the next client. A second client while one is connected is refused (its
//! connection is closed at once); a client that connects while the previous
//! one is going away waits until that session has been cleaned up.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span, warn};
use vfpga_device::{Device, DmaPort};

use crate::irq::IrqHub;
use crate::remote::DmaLink;
use crate::session::{self, DevCore, Limits, Session, Shared};
use crate::wire::{HEADER_LEN, Header, WireError, cmd};

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
    /// A thread could not be started.
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] io::Error),
}

/// Units per [`Device::advance`] call of the runner.
const RUN_BUDGET: u64 = 256;
/// Most `advance` calls a command waits for the device to take a DMA answer
/// that arrived before the command (a bound, never reached in practice).
const ANSWER_STEPS: usize = 64;
/// How long the runner sleeps while the device is idle (it is woken early
/// by any access that may give it work).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long the runner sleeps while the device is busy but made no progress
/// (for example a self-running backend that advances on its own thread).
const BUSY_WAIT: Duration = Duration::from_millis(1);
/// Largest `SCM_RIGHTS` array the kernel delivers with one message
/// (`SCM_MAX_FD`): the control buffer has room for all of them, so the
/// kernel never truncates it and every fd it installs is seen and owned.
const SCM_MAX_FD: usize = 253;
/// Read buffer of a connection: small messages arrive whole in one call.
const READ_BUF: usize = 64 * 1024;
/// Largest payload or reply buffer a connection keeps for the next message
/// (a register access needs a few dozen bytes; a large transfer's buffer is
/// not kept).
const SPARE_MAX: usize = 4096;
/// How long a new client waits for the previous session's cleanup.
const CLEANUP_WAIT: Duration = Duration::from_secs(30);
/// How many new clients may wait for that cleanup at once (the rest are
/// refused, so a flood of connections cannot pile up threads).
const MAX_WAITING: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
                    let p = lock(&core).dev.advance(RUN_BUDGET);
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

/// Who holds the device.
#[derive(Debug)]
enum Holder {
    Free,
    /// A client is connected (a clone of its socket, to see whether it hung up).
    Active(UnixStream),
    /// The last client is gone; its session is being cleaned up.
    Closing,
}

/// A vfio-user server for one device.
#[derive(Debug)]
pub struct Server {
    core: Arc<Mutex<DevCore>>,
    shared: Arc<Shared>,
    runner: Runner,
    holder: Mutex<Holder>,
    holder_cv: Condvar,
    waiting: AtomicUsize,
    conn_ids: AtomicU64,
}

/// A message read from the socket.
#[derive(Debug)]
struct Message {
    hdr: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// What one read from the socket gave.
#[derive(Debug)]
enum Incoming {
    /// A whole, well-framed message.
    Msg(Message),
    /// A whole message that is refused (its fds are already closed).
    Bad(Header, WireError),
    /// The stream cannot go on: answer (if it is a command) and close.
    Fatal(Header, WireError),
    /// The client closed the connection between messages.
    Eof,
}

impl Server {
    /// A server for `dev`, which must have been built with `dma` as its DMA
    /// port and `irq` as its IRQ sink, with the host's [`Limits`]. Starts the
    /// runner thread.
    pub fn new(
        dev: Box<dyn Device>,
        dma: DmaPort,
        irq: Arc<IrqHub>,
    ) -> Result<Server, ServerError> {
        Self::with_limits(dev, dma, irq, Limits::from_host())
    }

    /// As [`Server::new`], with explicit limits.
    pub fn with_limits(
        dev: Box<dyn Device>,
        dma: DmaPort,
        irq: Arc<IrqHub>,
        limits: Limits,
    ) -> Result<Server, ServerError> {
        let dma_for_runner = dma.clone();
        let (core, shared) = session::build(dev, dma, irq, limits);
        let core = Arc::new(Mutex::new(core));
        let runner = Runner::start(core.clone(), dma_for_runner)
            .map_err(|e| ServerError::Thread("device runner", e))?;
        Ok(Server {
            core,
            shared: Arc::new(shared),
            runner,
            holder: Mutex::new(Holder::Free),
            holder_cv: Condvar::new(),
            waiting: AtomicUsize::new(0),
            conn_ids: AtomicU64::new(0),
        })
    }

    /// Runs `f` on the device core (for tests and tools: state inspection).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut DevCore) -> R) -> R {
        f(&mut lock(&self.core))
    }

    /// The shared (per-device, cross-client) state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The limits this server enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Accepts clients until the future is dropped or the listener fails
    /// for good; each connection is served on its own thread.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener) -> io::Result<()> {
        let listener = listener.into_std()?;
        listener.set_nonblocking(false)?;
        let stop = Arc::new(AtomicBool::new(false));
        // Dropping the future (shutdown) wakes the accept thread and ends it.
        let _guard = StopAccept {
            stop: stop.clone(),
            fd: listener.as_fd().try_clone_to_owned()?,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("vfpga-accept".into())
            .spawn(move || {
                let _ = tx.send(self.accept_loop(&listener, &stop));
            })?;
        rx.await.unwrap_or(Ok(()))
    }

    /// The accept loop (blocking). Transient errors (out of fds, memory, an
    /// aborted connection) are logged and retried with a back-off.
    pub fn accept_loop(
        self: &Arc<Self>,
        listener: &UnixListener,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut backoff = Duration::from_millis(10);
        loop {
            let r = listener.accept();
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            match r {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    let this = self.clone();
                    let id = self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
                    let spawned = std::thread::Builder::new()
                        .name(format!("vfpga-conn-{id}"))
                        .spawn(move || {
                            let span = info_span!("conn", id);
                            let _e = span.enter();
                            match this.serve_connection(stream) {
                                Ok(()) => info!("client disconnected"),
                                Err(ServerError::Busy) => {
                                    warn!("refused a second client: the device is in use")
                                }
                                Err(e) => warn!("client session ended: {}", error_chain(&e)),
                            }
                        });
                    if let Err(e) = spawned {
                        warn!("cannot start a connection thread ({e}); connection closed");
                        std::thread::sleep(backoff);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match e.raw_os_error() {
                    Some(
                        libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::ECONNABORTED
                        | libc::EPROTO
                        | libc::EPERM
                        | libc::EAGAIN,
                    ) => {
                        warn!(
                            "accept failed ({e}); retrying in {} ms",
                            backoff.as_millis()
                        );
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// Serves one client until it disconnects (blocking).
    pub fn serve_connection(&self, stream: UnixStream) -> Result<(), ServerError> {
        self.claim(&stream)?;
        let r = self.session(stream);
        *lock(&self.holder) = Holder::Free;
        self.holder_cv.notify_all();
        r
    }

    /// Takes the device for a new client: refused while another client is
    /// connected; waits while the previous one is going away.
    fn claim(&self, stream: &UnixStream) -> Result<(), ServerError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ServerError::Busy);
        }
        let r = self.claim_waiting(stream);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        r
    }

    fn claim_waiting(&self, stream: &UnixStream) -> Result<(), ServerError> {
        let deadline = Instant::now() + CLEANUP_WAIT;
        let mut g = lock(&self.holder);
        loop {
            match &*g {
                Holder::Free => break,
                Holder::Active(s) if !hung_up(s) => return Err(ServerError::Busy),
                Holder::Active(_) | Holder::Closing => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ServerError::Busy);
                    }
                    // A hung-up peer is noticed by its reader at once; poll
                    // in short steps in case the wake-up is missed.
                    let step = (deadline - now).min(Duration::from_millis(50));
                    g = self
                        .holder_cv
                        .wait_timeout(g, step)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        *g = Holder::Active(stream.try_clone()?);
        Ok(())
    }

    fn session(&self, stream: UnixStream) -> Result<(), ServerError> {
        info!("client connected");
        let limits = self.shared.limits.clone();
        stream.set_write_timeout(Some(limits.message_timeout))?;
        let stream = Arc::new(stream);
        let wlock = Arc::new(Mutex::new(()));
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
        let link = Arc::new(DmaLink::new(out_tx));
        let span = tracing::Span::current();

        let writer = {
            let (s, l, span) = (stream.clone(), wlock.clone(), span.clone());
            std::thread::Builder::new()
                .name("vfpga-dma-out".into())
                .spawn(move || {
                    let _e = span.enter();
                    while let Ok(m) = out_rx.recv() {
                        if let Err(e) = send_all(&s, &l, &m) {
                            debug!("DMA request not sent: {e}");
                            let _ = s.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    }
                })
                .map_err(|e| ServerError::Thread("DMA writer", e))?
        };

        let session = Arc::new(Mutex::new(Session::new(
            self.shared.clone(),
            Some(link.clone()),
        )));
        let queued = Arc::new(AtomicUsize::new(0));
        let resample: Arc<Mutex<Option<Resample>>> = Arc::new(Mutex::new(None));
        let ctx = Ctx {
            server: self,
            stream: &stream,
            wlock: &wlock,
            resample: &resample,
            session: &session,
            link: &link,
        };

        let r = std::thread::scope(|sc| {
            let (cmd_tx, cmd_rx) = mpsc::channel::<Message>();
            let worker = std::thread::Builder::new()
                .name("vfpga-cmd".into())
                .spawn_scoped(sc, {
                    let (queued, span, ctx) = (queued.clone(), span.clone(), &ctx);
                    move || {
                        let _e = span.enter();
                        while let Ok(m) = cmd_rx.recv() {
                            let ok = ctx.run(m).is_ok();
                            queued.fetch_sub(1, Ordering::AcqRel);
                            if !ok {
                                let _ = ctx.stream.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                        }
                    }
                })
                .map_err(|e| ServerError::Thread("command", e))?;
            let r = self.read_loop(&ctx, &link, &cmd_tx, &queued, &limits);
            // Let the device give up on DMA the client will never answer,
            // then let the command thread finish what it has.
            link.close();
            drop(cmd_tx);
            let _ = worker.join();
            r
        });

        *lock(&self.holder) = Holder::Closing;
        self.holder_cv.notify_all();
        link.close();
        lock(&resample).take();
        {
            let mut s = lock(&session);
            s.disconnect(&mut lock(&self.core));
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        r
    }

    fn read_loop(
        &self,
        ctx: &Ctx<'_>,
        link: &DmaLink,
        cmd_tx: &mpsc::Sender<Message>,
        queued: &AtomicUsize,
        limits: &Limits,
    ) -> Result<(), ServerError> {
        let mut rd = MsgReader::new(ctx.stream.clone(), limits.clone());
        loop {
            let inc = match rd.next() {
                Ok(i) => i,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    warn!(
                        "a message stalled for more than {} s; closing the connection",
                        limits.message_timeout.as_secs_f64()
                    );
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            match inc {
                Incoming::Eof => return Ok(()),
                Incoming::Fatal(h, e) => {
                    warn!(
                        command = cmd::name(h.command),
                        "closing the connection: {e}"
                    );
                    if !h.is_reply() && !h.no_reply() {
                        let _ = send_all(ctx.stream, ctx.wlock, &Session::reject(&h, &e));
                    }
                    return Ok(());
                }
                Incoming::Bad(h, e) => {
                    debug!(command = cmd::name(h.command), "refused: {e}");
                    if !h.is_reply() && !h.no_reply() {
                        send_all(ctx.stream, ctx.wlock, &Session::reject(&h, &e))?;
                    }
                }
                Incoming::Msg(m) if m.hdr.is_reply() => {
                    if let Err(why) = link.deliver(&m.hdr, m.payload) {
                        warn!(msg_id = m.hdr.msg_id, "reply dropped: {why}");
                    }
                }
                Incoming::Msg(m) => {
                    // In order: once a command waits on the command thread,
                    // every later one queues behind it.
                    let fast = queued.load(Ordering::Acquire) == 0
                        && !session::may_block(m.hdr.command, &m.payload)
                        && !self.shared.dma.any_may_pend();
                    if fast {
                        // Here, without a hand-off: nothing it needs can
                        // wait for this thread, and the runner holds the
                        // device for one bounded `advance` at most.
                        let payload = ctx.run_here(m)?;
                        rd.give_back(payload);
                        continue;
                    }
                    queued.fetch_add(1, Ordering::AcqRel);
                    if cmd_tx.send(m).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What the threads of one connection share.
struct Ctx<'a> {
    server: &'a Server,
    stream: &'a Arc<UnixStream>,
    wlock: &'a Arc<Mutex<()>>,
    resample: &'a Arc<Mutex<Option<Resample>>>,
    session: &'a Arc<Mutex<Session>>,
    link: &'a Arc<DmaLink>,
}

impl Ctx<'_> {
    /// Runs `m`, waiting for the device.
    fn run(&self, m: Message) -> Result<(), ServerError> {
        self.run_here(m).map(drop)
    }

    /// Runs `m`, waiting for the device; gives back its payload buffer.
    fn run_here(&self, m: Message) -> Result<Vec<u8>, ServerError> {
        let o = {
            let mut s = lock(self.session);
            let mut core = lock(&self.server.core);
            // The client answered the device's DMA before it sent this
            // command: the device takes that answer (and finishes what it
            // was waiting for) before the command sees it, as on a bus where
            // the device's write lands before the CPU reads a register.
            for _ in 0..ANSWER_STEPS {
                if !self.link.answer_waiting() {
                    break;
                }
                if core.dev.advance(RUN_BUDGET).is_err() {
                    break;
                }
            }
            s.handle(&mut core, &m.hdr, &m.payload, m.fds)
        };
        self.finish(o)?;
        Ok(m.payload)
    }

    fn finish(&self, o: session::Outcome) -> Result<(), ServerError> {
        // The reply first: the client's vCPU waits for it, the runner does not.
        if let Some(reply) = o.reply {
            send_all(self.stream, self.wlock, &reply)?;
            lock(self.session).recycle(reply);
        }
        if o.wake {
            self.server.runner.wake();
        }
        if let Some(fd) = o.resample {
            let mut g = lock(self.resample);
            g.take();
            if let Some(fd) = fd {
                *g = Some(Resample::start(
                    fd,
                    self.server.core.clone(),
                    self.session.clone(),
                )?);
            }
        }
        Ok(())
    }
}

/// Watches the INTx resample eventfd and re-checks the line when it fires.
struct Resample {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Resample {
    fn start(
        fd: OwnedFd,
        core: Arc<Mutex<DevCore>>,
        session: Arc<Mutex<Session>>,
    ) -> Result<Resample, ServerError> {
        let stop = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let stop: OwnedFd = stop.into();
        let stop2 = stop.try_clone()?;
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("vfpga-resample".into())
            .spawn(move || {
                let _e = span.enter();
                loop {
                    let mut pf = [
                        nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN),
                        nix::poll::PollFd::new(stop2.as_fd(), nix::poll::PollFlags::POLLIN),
                    ];
                    match nix::poll::poll(&mut pf, nix::poll::PollTimeout::NONE) {
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                    }
                    let ready =
                        |p: &nix::poll::PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
                    if ready(&pf[1]) {
                        return;
                    }
                    if ready(&pf[0]) {
                        let mut b = [0u8; 8];
                        if nix::unistd::read(&fd, &mut b).is_err() {
                            return;
                        }
                        lock(&session).intx_unmask(&mut lock(&core));
                    }
                }
            })
            .map_err(|e| ServerError::Thread("INTx resample", e))?;
        Ok(Resample {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Resample {
    fn drop(&mut self) {
        let _ = nix::unistd::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Ends the accept thread when the serving future is dropped.
struct StopAccept {
    stop: Arc<AtomicBool>,
    fd: OwnedFd,
}

impl Drop for StopAccept {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A shut-down listening socket makes a blocked accept return.
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// Whether the peer of `s` has hung up.
#[allow(unsafe_code)]
fn hung_up(s: &UnixStream) -> bool {
    let mut pf = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for an fd we own, zero timeout.
    let n = unsafe { libc::poll(&mut pf, 1, 0) };
    n > 0 && pf.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes a whole message (writes are serialized by `wlock`; the socket's
/// write timeout bounds how long a client that stops reading can hold us).
fn send_all(s: &UnixStream, wlock: &Mutex<()>, bytes: &[u8]) -> io::Result<()> {
    let _g = lock(wlock);
    (&*s).write_all(bytes)
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Reads messages from a connection, enforcing [`Limits`] while it reads.
struct MsgReader {
    s: Arc<UnixStream>,
    limits: Limits,
    /// Unread bytes are `buf[lo..hi]`; `buf` grows to one message at most.
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// fds received, each with the stream offset just past the data of the
    /// `recvmsg` that brought it: they belong to the message holding the
    /// byte before that offset (the kernel ends a read right after the data
    /// that carried fds).
    fds: VecDeque<(u64, OwnedFd)>,
    /// More fds arrived than a message may carry (or the kernel truncated
    /// them): they were closed at once, and the message holding the byte
    /// before this offset is refused.
    fd_overflow: Option<u64>,
    /// A handled message's payload buffer, to read the next one into.
    spare: Vec<u8>,
}

impl MsgReader {
    fn new(s: Arc<UnixStream>, limits: Limits) -> Self {
        MsgReader {
            s,
            limits,
            buf: vec![0u8; READ_BUF],
            lo: 0,
            hi: 0,
            base: 0,
            fds: VecDeque::new(),
            fd_overflow: None,
            spare: Vec::new(),
        }
    }

    /// Takes back a handled message's payload buffer (a small one only: a
    /// large message's buffer is not held for the connection's lifetime).
    fn give_back(&mut self, payload: Vec<u8>) {
        if payload.capacity() <= SPARE_MAX {
            self.spare = payload;
        }
    }

    /// Makes room for `need` bytes from `lo` (at most one message).
    fn make_room(&mut self, need: usize) {
        if self.buf.len() - self.lo < need {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.base += self.lo as u64;
            self.hi -= self.lo;
            self.lo = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
    }

    /// One `recvmsg` into the buffer; 0 at end of stream. With a deadline it
    /// waits at most until then (`TimedOut`).
    fn fill(&mut self, deadline: Option<Instant>) -> io::Result<usize> {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut pf = [nix::poll::PollFd::new(
                self.s.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut pf, nix::poll::PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut got = Vec::new();
        let mut truncated = false;
        let room = &mut self.buf[self.hi..];
        let r = recv_with_fds(
            self.s.as_raw_fd(),
            room.as_mut_ptr(),
            room.len(),
            deadline.is_some(),
            &mut got,
            &mut truncated,
        );
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::Interrupted.into());
            }
            Err(e) => return Err(e),
        };
        self.hi += n;
        let end = self.base + self.hi as u64;
        for fd in got {
            self.fds.push_back((end, fd));
        }
        if truncated || self.fds.len() > self.limits.max_fds {
            // Close them now: a client cannot make us hold more than one
            // message's worth, however it spreads them.
            self.fds.clear();
            self.fd_overflow = Some(end);
        }
        Ok(n)
    }

    /// Reads until `need` bytes are buffered from `lo`.
    fn want(&mut self, need: usize, deadline: &mut Option<Instant>) -> io::Result<bool> {
        while self.hi - self.lo < need {
            if self.hi > self.lo && deadline.is_none() {
                *deadline = Some(Instant::now() + self.limits.message_timeout);
            }
            self.make_room(need);
            match self.fill(*deadline) {
                Ok(0) => {
                    if self.hi == self.lo {
                        return Ok(false);
                    }
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The next message. `TimedOut`: a message stalled half-way.
    fn next(&mut self) -> io::Result<Incoming> {
        let mut deadline = None;
        if !self.want(HEADER_LEN, &mut deadline)? {
            return Ok(Incoming::Eof);
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.buf[self.lo..self.lo + HEADER_LEN]);
        let hdr = Header::parse(&hb);
        let size = hdr.msg_size as usize;
        if size < HEADER_LEN || hdr.msg_size > self.limits.max_msg {
            // The stream cannot be reframed: refuse and close.
            self.fds.clear();
            let e = match hdr.validate(self.limits.max_msg) {
                Err(e) => e,
                Ok(()) => WireError::Invalid("msg_size"),
            };
            return Ok(Incoming::Fatal(hdr, e));
        }
        if deadline.is_none() && self.hi - self.lo < size {
            deadline = Some(Instant::now() + self.limits.message_timeout);
        }
        if !self.want(size, &mut deadline)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let start = self.base + self.lo as u64;
        let end = start + size as u64;
        // The payload goes into the buffer the last message gave back
        // (`give_back`), so a small command costs no allocation.
        let mut payload = std::mem::take(&mut self.spare);
        payload.clear();
        payload.extend_from_slice(&self.buf[self.lo + HEADER_LEN..self.lo + size]);
        self.lo += size;
        if self.lo == self.hi && self.buf.len() > READ_BUF {
            self.buf = vec![0u8; READ_BUF];
            self.base += self.lo as u64;
            self.lo = 0;
            self.hi = 0;
        }
        let mut fds = Vec::new();
        while self.fds.front().is_some_and(|(o, _)| *o <= end) {
            if let Some((_, fd)) = self.fds.pop_front() {
                fds.push(fd);
            }
        }
        let overflow = match self.fd_overflow {
            Some(o) if o <= end => {
                self.fd_overflow = None;
                o > start
            }
            _ => false,
        };
        if let Err(e) = hdr.validate(self.limits.max_msg) {
            return Ok(Incoming::Bad(hdr, e));
        }
        if overflow || fds.len() > self.limits.max_fds {
            return Ok(Incoming::Bad(
                hdr,
                WireError::Invalid("more file descriptors than max_msg_fds"),
            ));
        }
        Ok(Incoming::Msg(Message { hdr, payload, fds }))
    }
}

/// `recvmsg` of up to `len` bytes at `ptr`, taking ownership of every fd
/// the kernel installed (close-on-exec), whatever else happens.
fn recv_with_fds(
    sock: RawFd,
    ptr: *mut u8,
    len: usize,
    nonblock: bool,
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
) -> io::Result<usize> {
    // Room for SCM_MAX_FD descriptors, aligned for cmsghdr. Not zeroed (a
    // kilobyte per read): the kernel writes the cmsgs it delivers and sets
    // `msg_controllen` to their length, and only those bytes are read.
    let mut cbuf = std::mem::MaybeUninit::<[u64; (SCM_MAX_FD * 4 + 64).div_ceil(8)]>::uninit();
    let mut iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    // SAFETY: a zeroed msghdr is valid; we point it at live buffers below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblock {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `mh` points at `iov` (describing `len` writable bytes at `ptr`,
    // which the caller guarantees) and at `cbuf` (writable, uninitialized:
    // the kernel only writes it), both alive for the call.
    let n = unsafe { libc::recvmsg(sock, &mut mh, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 {
        *truncated = true;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed cmsgs (only those bytes of `cbuf` are initialized, and
    // only they are read: CMSG_FIRSTHDR/NXTHDR stay inside that range), and
    // every SCM_RIGHTS entry is an fd the kernel just installed for us.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = data.cast::<RawFd>().add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    Ok(n as usize)
}

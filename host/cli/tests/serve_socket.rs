//! `vfpga serve` around its socket, as a lab runs it: a socket file left by
//! a dead server is replaced, a live one is never taken, SIGTERM and SIGINT
//! remove the socket and exit 0, and readiness reaches `$NOTIFY_SOCKET` once
//! the socket accepts. Each test runs the real binary on the model backend.

#![allow(clippy::unwrap_used)] // test code: a failure is a test failure

use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn model_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/model.yaml")
}

fn sock(tag: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-sock-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn serve(path: &Path, notify: Option<&Path>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfpga"));
    c.arg("serve")
        .arg("--config")
        .arg(model_config())
        .arg("--socket")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("NOTIFY_SOCKET");
    if let Some(n) = notify {
        c.env("NOTIFY_SOCKET", n);
    }
    c.spawn().unwrap()
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("vfpga serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

/// Waits until the server accepts on `path` (it replaced whatever was there).
fn wait_accepting(child: &mut Child, path: &Path) {
    let t = Instant::now();
    while UnixStream::connect(path).is_err() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("vfpga serve exited with {s}: {}", stderr_of(child));
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// A socket file whose server is gone: bound, then the listener dropped.
fn stale_socket(path: &Path) {
    drop(UnixListener::bind(path).unwrap());
    assert!(path.exists());
    let e = UnixStream::connect(path).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn stale_socket_is_replaced_and_sigterm_removes_it() {
    let path = sock("stale-term");
    stale_socket(&path);
    let mut child = serve(&path, None);
    wait_accepting(&mut child, &path);
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let err = stderr_of(&mut child);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("removed a stale socket"), "{err}");
    assert!(!path.exists(), "socket left behind after SIGTERM");
}

#[test]
fn sigint_removes_the_socket() {
    let path = sock("int");
    let mut child = serve(&path, None);
    wait_accepting(&mut child, &path);
    signal(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", stderr_of(&mut child));
    assert!(!path.exists(), "socket left behind after SIGINT");
}

#[test]
fn live_socket_is_never_taken() {
    let path = sock("live");
    let live = UnixListener::bind(&path).unwrap();
    let mut child = serve(&path, None);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("is in use"), "{err}");
    // Still the live listener's socket: a client reaches it.
    assert!(path.exists());
    let _c = UnixStream::connect(&path).unwrap();
    live.set_nonblocking(true).unwrap();
    assert!(live.accept().is_ok(), "the live listener lost its socket");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let path = sock("file");
    std::fs::write(&path, b"keep me").unwrap();
    let mut child = serve(&path, None);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn ready_is_notified_once_the_socket_accepts() {
    let path = sock("notify");
    let npath = sock("notify-systemd");
    let notify = UnixDatagram::bind(&npath).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = serve(&path, Some(&npath));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // READY=1 means accepting: connect now, without retrying.
    UnixStream::connect(&path).unwrap();
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let _ = std::fs::remove_file(&npath);
}

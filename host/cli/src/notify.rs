//! systemd readiness (`Type=notify`): one datagram to `$NOTIFY_SOCKET`, as
//! sd_notify(3) sends it. Without `NOTIFY_SOCKET` (not under systemd) this
//! does nothing.

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path, state),
        None => Ok(()),
    }
}

/// Sends `state` to the notify socket `path` (`@name` for an abstract one).
fn notify_to(path: &OsStr, state: &str) -> std::io::Result<()> {
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // An abstract socket: '@' stands for the leading NUL.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("vfpga-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        notify_to(path.as_os_str(), "READY=1").unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

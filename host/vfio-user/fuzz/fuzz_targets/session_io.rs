//! Fuzzes a whole server session with what the byte-stream target cannot
//! carry: file descriptors and DMA by message. The input is a list of
//! operations:
//!
//! - a client message (header + payload, framed as the socket reader frames
//!   it) with 0-3 fds: memfds of an input-chosen size for DMA_MAP (so the
//!   file-size check and the mapping run), eventfds otherwise;
//! - a reply (with input-chosen flags and payload) to the oldest DMA_READ or
//!   DMA_WRITE the device sent over its message link;
//! - a step of the device (which may issue DMA into mapped memory);
//! - a shrink of the last memfd to an input-chosen size (the SIGBUS guard).
//!
//! Checks: no panic, no crash, every reply echoes the request's id and
//! command, and the device still answers a register read at the end.
#![no_main]

use std::os::fd::OwnedFd;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfpga_device::{Device, DmaPort};
use vfpga_model::{Model, ModelConfig};
use vfpga_vfio_user::IrqHub;
use vfpga_vfio_user::remote::DmaLink;
use vfpga_vfio_user::session::{self, Limits, Session};
use vfpga_vfio_user::wire::{HEADER_LEN, Header, cmd, flags};

fn memfd(len: u64) -> Option<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).ok()?;
    nix::unistd::ftruncate(&fd, len as i64).ok()?;
    Some(fd)
}

fuzz_target!(|data: &[u8]| {
    let dma = DmaPort::new();
    let irq = Arc::new(IrqHub::new());
    let Ok(model) = Model::new(ModelConfig::with_pages(16), dma.clone(), irq.clone()) else {
        return;
    };
    let limits = Limits::default();
    let (mut core, shared) = session::build(Box::new(model), dma, irq, limits.clone());
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let link = Arc::new(DmaLink::new(tx));
    let mut s = Session::new(Arc::new(shared), Some(link.clone()));
    let v = Header { msg_id: 0, command: cmd::VERSION, msg_size: 20, flags: 0, error: 0 };
    assert!(s.handle(&mut core, &v, &[0, 0, 2, 0], Vec::new()).reply.is_some());
    let mut last_memfd: Option<OwnedFd> = None;
    let mut rest = data;
    let mut ops = 0;
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        ops += 1;
        if ops > 64 {
            break;
        }
        match tag % 4 {
            0 => {
                let Some((h, tail)) = rest.split_first_chunk::<HEADER_LEN>() else { break };
                let h = Header::parse(h);
                let n = h.payload_len().min(tail.len()).min(limits.max_msg as usize);
                let (p, t) = tail.split_at(n);
                rest = t;
                if h.validate(limits.max_msg).is_err() || h.is_reply() {
                    continue;
                }
                let mut fds = Vec::new();
                for i in 0..(tag >> 2) % 4 {
                    let fd = if h.command == cmd::DMA_MAP {
                        let pages = u64::from(tag >> 4) + u64::from(i);
                        let fd = memfd(pages * 4096);
                        if let Some(f) = &fd {
                            last_memfd = f.try_clone().ok();
                        }
                        fd
                    } else {
                        nix::sys::eventfd::EventFd::new().ok().map(OwnedFd::from)
                    };
                    fds.extend(fd);
                }
                let o = s.handle(&mut core, &h, p, fds);
                if let Some(r) = o.reply {
                    let rh = Header::parse(r.first_chunk::<HEADER_LEN>().expect("short reply"));
                    assert_eq!((rh.msg_id, rh.command), (h.msg_id, h.command));
                    assert_eq!(rh.msg_size as usize, r.len());
                }
            }
            1 => {
                let Ok(req) = rx.try_recv() else { continue };
                let Some(rq) = req.first_chunk::<HEADER_LEN>() else { continue };
                let rq = Header::parse(rq);
                let Some((&len, tail)) = rest.split_first() else { break };
                let n = (usize::from(len) * 2).min(tail.len());
                let (p, t) = tail.split_at(n);
                rest = t;
                let fl = if tag & 0x10 != 0 { flags::ERROR } else { 0 };
                let rh = Header {
                    msg_id: if tag & 0x20 != 0 { rq.msg_id ^ 1 } else { rq.msg_id },
                    command: rq.command,
                    msg_size: (HEADER_LEN + n) as u32,
                    flags: flags::TYPE_REPLY | fl,
                    error: 5,
                };
                let _ = link.deliver(&rh, p.to_vec());
            }
            2 => {
                let _ = core.dev.advance(u64::from(tag >> 2) * 4);
            }
            _ => {
                if let Some(fd) = &last_memfd {
                    let _ = nix::unistd::ftruncate(fd, i64::from(tag >> 2) * 4096);
                }
            }
        }
    }
    link.close();
    let _ = core.dev.advance(64);
    let mut b = [0u8; 4];
    let _ = core.dev.mmio_read(vfpga_device::Bar::Regs, 0, &mut b);
    s.disconnect(&mut core);
});

//! Fuzzes a whole server session: the input is a byte stream from the
//! client, framed exactly as the socket reader frames it (16-byte header,
//! validated, then `msg_size - 16` payload bytes), after a VERSION. Every
//! message goes through `Session::handle` on a model device. Checks: no
//! panic, every reply echoes the request's id and command, is a reply, and
//! is never larger than the request allows.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfpga_device::DmaPort;
use vfpga_model::{Model, ModelConfig};
use vfpga_vfio_user::IrqHub;
use vfpga_vfio_user::session::{self, SERVER_MAX_MSG, Session};
use vfpga_vfio_user::wire::{self, HEADER_LEN, Header, cmd, flags};

fuzz_target!(|data: &[u8]| {
    let dma = DmaPort::new();
    let irq = Arc::new(IrqHub::new());
    let Ok(model) = Model::new(ModelConfig::with_pages(16), dma.clone(), irq.clone()) else {
        return;
    };
    let (mut core, shared) = session::build(Box::new(model), dma, irq, session::Limits::default());
    let mut s = Session::new(Arc::new(shared), None);
    let v = Header { msg_id: 0, command: cmd::VERSION, msg_size: 20, flags: 0, error: 0 };
    let o = s.handle(&mut core, &v, &[0, 0, 2, 0], Vec::new());
    assert!(o.reply.is_some());
    let mut rest = data;
    while let Some((h, tail)) = rest.split_first_chunk::<HEADER_LEN>() {
        let h = Header::parse(h);
        let Ok(()) = h.validate(SERVER_MAX_MSG) else {
            let n = h.payload_len().min(tail.len());
            rest = &tail[n..];
            continue;
        };
        let n = h.payload_len().min(tail.len());
        let (p, t) = tail.split_at(n);
        rest = t;
        if h.is_reply() {
            continue;
        }
        let o = s.handle(&mut core, &h, p, Vec::new());
        if let Some(r) = o.reply {
            let Some(rh) = r.first_chunk::<HEADER_LEN>() else { panic!("short reply") };
            let rh = Header::parse(rh);
            assert_eq!((rh.msg_id, rh.command), (h.msg_id, h.command));
            assert_eq!(rh.msg_type(), flags::TYPE_REPLY);
            assert_eq!(rh.msg_size as usize, r.len());
            if rh.flags & flags::ERROR != 0 {
                assert_eq!(r.len(), HEADER_LEN, "error replies are header only");
            } else if h.command == cmd::REGION_READ {
                let a = wire::RegionAccess::decode_read(p, 1 << 20).ok();
                assert_eq!(Some(r.len()), a.map(|a| 32 + a.count as usize));
            } else if matches!(h.command, cmd::DEVICE_GET_REGION_INFO | cmd::DEVICE_FEATURE) {
                let argsz = wire::Reader::new(p, "argsz").u32(0).unwrap_or(0) as usize;
                assert!(r.len() - HEADER_LEN <= argsz.max(p.len()), "reply exceeds argsz");
            }
        } else {
            assert!(h.no_reply(), "a command without NO_REPLY got no reply");
        }
    }
});

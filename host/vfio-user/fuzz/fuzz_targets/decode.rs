//! Fuzzes the message decoder: a header followed by a payload, decoded the
//! way the server does. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfpga_vfio_user::wire::{self, HEADER_LEN, Header};

fuzz_target!(|data: &[u8]| {
    let Some((h, p)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let h = Header::parse(h);
    let _ = h.validate(1 << 21);
    let _ = wire::decode_any(h.command, p, 4096);
    let _ = wire::decode_any(h.command % 19, p, 1 << 20);
});

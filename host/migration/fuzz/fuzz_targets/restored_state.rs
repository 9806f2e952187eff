//! Fuzz target: a restored `DeviceState` (identity + the 38 state words).
//!
//! Checks, for any words: no panic; `validate_arch` (host), the device's
//! own verdict (`restore_state` + `resume`) and the stream decoder (the
//! words sealed into a well-formed stream) all agree; an accepted state
//! resumes and reads back word for word; a refused one never runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfpga_device::fake::FakeDevice;
use vfpga_device::{Device, DeviceState, Identity, validate_arch};
use vfpga_migration::stream::{Decoder, Encoder, NullSink, PassKind};
use vfpga_regs::{ArchState, Ctrl, offsets, state as sw};

fuzz_target!(|input: &[u8]| {
    let mut w = [0u32; sw::WORDS];
    for (i, x) in w.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        for (k, v) in b.iter_mut().enumerate() {
            *v = input.get(4 * i + k).copied().unwrap_or(0);
        }
        *x = u32::from_le_bytes(b);
    }
    // Bias towards plausible states: keep the header unless byte 152 says not.
    if input.get(sw::WORDS * 4).is_none_or(|b| b & 1 == 0) {
        w[sw::HEADER] = ArchState::RESET.header;
    }
    let arch = ArchState::from_words(&w);
    let id = Identity::this_build(2, 0);
    let host = validate_arch(&arch, id.devmem_bytes());

    let mut dev = FakeDevice::new(2);
    dev.quiesce().expect("quiesce");
    let st = DeviceState::new(id, arch);
    let device = dev.restore_state(&st);
    assert_eq!(
        host.is_ok(),
        device.is_ok(),
        "host {host:?} vs device {device:?}"
    );
    // Pulse RESUME alone. (`Device::resume` read-modify-writes CTRL, and
    // after a refused restore CTRL reads back the stored word, whose bogus
    // SOFT_RESET bit would then reset the device: reported on the seam.)
    dev.write_reg(offsets::CTRL, Ctrl::RESUME.bits())
        .expect("resume pulse");
    let resumed = !dev.is_quiesced().expect("status");
    assert_eq!(host.is_ok(), resumed, "host {host:?} vs RESUME");
    if host.is_ok() {
        dev.quiesce().expect("quiesce");
        let back = dev.save_state().expect("save");
        assert_eq!(
            back.arch.to_words(),
            w,
            "an accepted state reads back exactly"
        );
    } else {
        assert!(
            dev.is_quiesced().expect("status"),
            "a refused state never runs"
        );
    }

    // The same words inside a well-formed stream.
    let mut e = Encoder::new(id);
    let mut s = Vec::new();
    e.header(&mut s);
    e.pass(PassKind::Full, 2, &mut s);
    e.page(0, &[0u8; 4096], &mut s);
    e.page(1, &[0u8; 4096], &mut s);
    e.pass(PassKind::Final, 0, &mut s);
    e.state(&arch, &mut s);
    e.end(&mut s);
    let mut d = Decoder::new(id);
    let r = d
        .feed(&s, &mut NullSink)
        .and_then(|()| d.finish().map(|_| ()));
    assert_eq!(host.is_ok(), r.is_ok(), "decoder {r:?}");
});

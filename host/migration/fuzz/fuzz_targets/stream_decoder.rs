//! Fuzz target: the migration stream decoder, through the engine into a
//! fake destination device.
//!
//! Input: byte 0 picks the segment size, the rest is the stream. Checks:
//! no panic; the same bytes fed whole give the same verdict (segmentation
//! independence); an accepted stream leaves a device that resumes; a
//! rejected one never runs the device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfpga_device::Device;
use vfpga_device::fake::FakeDevice;
use vfpga_migration::{MigState, MigrationEngine};

fn load(data: &[u8], seg: usize) -> (bool, FakeDevice) {
    let mut dev = FakeDevice::new(2);
    let mut e = MigrationEngine::default();
    if e.set_state(&mut dev, MigState::Resuming.raw()).is_err() {
        panic!("RUNNING -> RESUMING failed on a fresh device");
    }
    let mut ok = true;
    for part in data.chunks(seg) {
        if e.write_data(&mut dev, part).is_err() {
            ok = false;
            break;
        }
    }
    let ok = ok && e.set_state(&mut dev, MigState::Running.raw()).is_ok();
    let quiesced = dev.is_quiesced().unwrap_or(true);
    assert_eq!(ok, !quiesced, "accepted iff the device runs");
    assert_eq!(ok, e.state() == MigState::Running);
    (ok, dev)
}

fuzz_target!(|input: &[u8]| {
    let Some((&s, data)) = input.split_first() else {
        return;
    };
    let seg = 1 + usize::from(s) * 37;
    let (a, _) = load(data, seg);
    let (b, _) = load(data, data.len().max(1));
    assert_eq!(a, b, "the verdict depends on segmentation");
});

//! Writes the seed corpus of both fuzz targets (run from this directory:
//! `cargo run --bin make_seeds`). Seeds are small real streams and states.

use std::fs;

use vfpga_device::Device;
use vfpga_device::fake::FakeDevice;
use vfpga_migration::{MigState, MigrationEngine};
use vfpga_regs::{ArchState, offsets};

fn stream(pre_copy: bool, seed: u8) -> Vec<u8> {
    let mut d = FakeDevice::new(2);
    d.devmem_write(17, &[seed; 40]).expect("devmem");
    d.write_reg(offsets::SCRATCH, u32::from(seed))
        .expect("scratch");
    let mut e = MigrationEngine::default();
    let mut s = vec![0u8; 1 << 16];
    let mut n = 0;
    if pre_copy {
        e.set_state(&mut d, MigState::PreCopy.raw())
            .expect("pre-copy");
        n += e.read_data(&mut d, &mut s).expect("read");
        d.devmem_write(4100, &[seed; 3]).expect("devmem");
        n += e.read_data(&mut d, &mut s[n..]).expect("read");
    }
    e.set_state(&mut d, MigState::StopCopy.raw())
        .expect("stop-copy");
    n += e.read_data(&mut d, &mut s[n..]).expect("read");
    s.truncate(n);
    s
}

fn main() -> std::io::Result<()> {
    fs::create_dir_all("seeds/stream_decoder")?;
    fs::create_dir_all("seeds/restored_state")?;
    for (i, (pre, seed, seg)) in [(false, 1u8, 0u8), (true, 2, 3), (true, 3, 255)]
        .into_iter()
        .enumerate()
    {
        let mut v = vec![seg];
        v.extend(stream(pre, seed));
        fs::write(format!("seeds/stream_decoder/stream-{i}"), v)?;
    }
    let mut a = ArchState::RESET;
    let words =
        |a: &ArchState| -> Vec<u8> { a.to_words().iter().flat_map(|w| w.to_le_bytes()).collect() };
    fs::write("seeds/restored_state/reset", words(&a))?;
    a.sq_size = 8;
    a.cq_size = 8;
    a.sq_base_lo = 0x1000;
    a.cq_base_lo = 0x2000;
    a.sq_tail = 3;
    fs::write("seeds/restored_state/rings", words(&a))?;
    a.cur_flags = 1;
    a.cur_ctl = 1;
    a.cur_len = 100;
    a.cur_done = 64;
    fs::write("seeds/restored_state/inflight", words(&a))?;
    Ok(())
}

//! The DMA workload and guest memory shared by the benches (`throughput`,
//! `model_vs_rtl`): 48 descriptors of 64 KiB, 16 each of `COPY_H2D`,
//! `COPY_D2H` and `COPY_H2H` (3 MiB copied), over 4 MiB of guest memory at
//! [`GUEST`] whose first MiB holds a pattern, rings above the data.

use std::sync::Arc;

use vfpga_device::ring::Desc;
use vfpga_device::{DmaPort, Perm, VecMemory};
use vfpga_regs::Opcode;

/// Bytes per descriptor.
pub const CHUNK: u32 = 64 * 1024;
/// Descriptors per opcode.
pub const PER_OP: u32 = 16;
/// IOVA of guest memory.
pub const GUEST: u64 = 0x1_0000_0000;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// IOVA of the SQ (the CQ follows 4 KiB above).
pub const RINGS: u64 = GUEST + 3 * MIB;

/// The workload: H2D from guest MiB 0, D2H to MiB 1, H2H from MiB 0 to 2.
pub fn workload() -> Vec<Desc> {
    let mut v = Vec::new();
    for i in 0..PER_OP {
        let off = u64::from(i * CHUNK);
        v.push(Desc::new(Opcode::CopyH2d, i, GUEST + off, off, CHUNK, 0));
        v.push(Desc::new(
            Opcode::CopyD2h,
            i,
            off,
            GUEST + MIB + off,
            CHUNK,
            0,
        ));
        v.push(Desc::new(
            Opcode::CopyH2h,
            i,
            GUEST + off,
            GUEST + 2 * MIB + off,
            CHUNK,
            0,
        ));
    }
    v
}

/// Bytes the workload copies per iteration.
pub fn bytes_per_iter() -> u64 {
    u64::from(3 * PER_OP * CHUNK)
}

/// A DMA port with 4 MiB of guest memory at [`GUEST`], the first MiB filled
/// with a pattern.
pub fn guest() -> DmaPort {
    let dma = DmaPort::new();
    let mem = Arc::new(VecMemory::new(4 * MIB as usize));
    dma.map(GUEST, mem, Perm::RW).expect("map guest memory");
    let src: Vec<u8> = (0..MIB).map(|i| (i * 31 + 7) as u8).collect();
    dma.host_write(GUEST, &src).expect("fill");
    dma
}

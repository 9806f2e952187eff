//! `vfpga-hw`: the board backend. A vfpga bitstream on a PCIe FPGA board,
//! bound to `vfio-pci`, driven through the same [`vfpga_device::Device`] seam
//! as the model and the RTL; and [`doctor`], the host checks behind
//! `vfpga doctor`.

pub mod doctor;

"""The UltraScale+ hard block model (cocotbext-pcie) wired to the shell's
ports, as the cocotb suite and the simulated board both use it: Gen3 x8 at
250 MHz, one function, MSI-X as the datasheet places it (table and PBA in
BAR0 at the offsets of the generated map)."""

from cocotbext.axi import AxiStreamBus
from cocotbext.pcie.xilinx.us import UltraScalePlusPcieDevice

import regmap as rm

NV = rm.const("NUM_VECTORS")


def usp_device(dut, max_payload_size, params, devmem_bytes):
    """The hard block model on `dut`'s ports, its function presenting the IDs
    of `params` (the build's parameters) and the datasheet's BARs (BAR0
    registers, BAR2 `devmem_bytes` of 64-bit prefetchable device memory);
    not yet attached to a root complex."""
    dev = UltraScalePlusPcieDevice(
        pcie_generation=3, pcie_link_width=8, user_clk_frequency=250e6,
        alignment="dword",
        cq_straddle=False, cc_straddle=False, rq_straddle=False, rc_straddle=False,
        rc_4tlp_straddle=False, pf_count=1, max_payload_size=max_payload_size,
        enable_client_tag=True, enable_extended_tag=False, enable_parity=False,
        enable_rx_msg_interface=False, enable_sriov=False,
        enable_extended_configuration=False,
        pf0_msi_enable=False,
        pf0_msix_enable=True,
        pf0_msix_table_size=NV - 1,
        pf0_msix_table_bir=0,
        pf0_msix_table_offset=rm.const("MSIX_TABLE_OFFSET"),
        pf0_msix_pba_bir=0,
        pf0_msix_pba_offset=rm.const("MSIX_PBA_OFFSET"),
        user_clk=dut.user_clk, user_reset=dut.user_reset, user_lnk_up=dut.user_lnk_up,
        rq_bus=AxiStreamBus.from_prefix(dut, "m_axis_rq"),
        rc_bus=AxiStreamBus.from_prefix(dut, "s_axis_rc"),
        cq_bus=AxiStreamBus.from_prefix(dut, "s_axis_cq"),
        pcie_cq_np_req=dut.pcie_cq_np_req,
        cc_bus=AxiStreamBus.from_prefix(dut, "m_axis_cc"),
        cfg_max_payload=dut.cfg_max_payload,
        cfg_max_read_req=dut.cfg_max_read_req,
        cfg_function_status=dut.cfg_function_status,
        cfg_interrupt_msix_enable=dut.cfg_interrupt_msix_enable,
        cfg_interrupt_msix_mask=dut.cfg_interrupt_msix_mask,
    )
    f = dev.functions[0]
    f.vendor_id = params["VENDOR_ID"]
    f.device_id = params["DEVICE_ID"]
    f.subsystem_vendor_id = params["SUBSYS_VENDOR_ID"]
    f.subsystem_id = params["SUBSYS_ID"]
    f.class_code = rm.const("PCI_CLASS_CODE")
    f.revision_id = rm.const("PCI_REVISION")
    f.configure_bar(0, rm.const("BAR0_SIZE"))
    f.configure_bar(2, devmem_bytes, ext=True, prefetch=True)
    return dev

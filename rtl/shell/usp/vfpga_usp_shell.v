// vfpga_usp_shell: the vfpga device for the Xilinx UltraScale+ PCIe4
// integrated block ("pcie4_uscale_plus"), 256-bit AXI-Stream interfaces
// (Gen3 x8, user_clk 250 MHz), DWORD-aligned, straddling off, one physical
// function. Everything runs on user_clk.
//
//   CQ -> vfpga_usp_cq -> core MMIO port        (BAR0 registers, BAR2 memory)
//                      -> vfpga_usp_msix         (BAR0 MSI-X table and PBA)
//   CC <- vfpga_usp_cq                           (read completions, UR)
//   RQ <- vfpga_usp_rq <- core DMA port, MSI-X messages
//   RC -> vfpga_usp_rq -> core DMA responses
//   vfpga_usp_devmem (block RAM) <-> core dm_* port
//
// Resets: user_reset, link down (user_lnk_up low) and a hot reset
// (cfg_hot_reset_out) reset the whole shell and the core; a Function Level
// Reset (cfg_flr_in_process[0]) does the same and then answers
// cfg_flr_done[0]. Device memory keeps its contents across all of them.
// See bitstream-docs/usp-shell.md.
`default_nettype none
/* verilator lint_off REDEFMACRO */
`include "generated/vfpga_regs.vh"
/* verilator lint_on REDEFMACRO */

module vfpga_usp_shell #(
    parameter integer DEVMEM_PAGES     = 256,     // BAR2 = DEVMEM_PAGES x 4 KiB of block RAM (power of two)
    parameter integer DMALOG_PAGES_MAX = 65536,   // DMA write-log bitmap storage
    parameter integer WRITE_CONFIRM    = 1,       // confirm each DMA write with a read (datasheet §11.2)
    parameter integer CPL_TIMEOUT      = 12500000,// completion timeout, user_clk cycles (50 ms)
    // Identity: must match the hard block's configuration (board Tcl).
    parameter [31:0]  VENDOR_ID        = `VFPGA_PCI_VENDOR_ID,
    parameter [31:0]  DEVICE_ID        = `VFPGA_PCI_DEVICE_ID,
    parameter [31:0]  SUBSYS_VENDOR_ID = `VFPGA_PCI_VENDOR_ID,
    parameter [31:0]  SUBSYS_ID        = `VFPGA_PCI_DEVICE_ID,
    parameter [31:0]  REVISION_ID      = `VFPGA_PCI_REVISION,
    parameter [31:0]  CLASS_CODE       = `VFPGA_PCI_CLASS_CODE
) (
    input  wire         user_clk,
    input  wire         user_reset,
    input  wire         user_lnk_up,

    input  wire [255:0] s_axis_cq_tdata,
    input  wire [7:0]   s_axis_cq_tkeep,
    input  wire         s_axis_cq_tlast,
    input  wire [87:0]  s_axis_cq_tuser,
    input  wire         s_axis_cq_tvalid,
    output wire         s_axis_cq_tready,
    output wire [1:0]   pcie_cq_np_req,

    output wire [255:0] m_axis_cc_tdata,
    output wire [7:0]   m_axis_cc_tkeep,
    output wire         m_axis_cc_tlast,
    output wire [32:0]  m_axis_cc_tuser,
    output wire         m_axis_cc_tvalid,
    input  wire         m_axis_cc_tready,

    output wire [255:0] m_axis_rq_tdata,
    output wire [7:0]   m_axis_rq_tkeep,
    output wire         m_axis_rq_tlast,
    output wire [61:0]  m_axis_rq_tuser,
    output wire         m_axis_rq_tvalid,
    input  wire         m_axis_rq_tready,

    input  wire [255:0] s_axis_rc_tdata,
    input  wire [7:0]   s_axis_rc_tkeep,
    input  wire         s_axis_rc_tlast,
    input  wire [74:0]  s_axis_rc_tuser,
    input  wire         s_axis_rc_tvalid,
    output wire         s_axis_rc_tready,

    // Configuration status / control (function 0 only).
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [1:0]   cfg_max_payload,          // >= 128 bytes: every TLP of the shell fits (see vfpga_usp_rq)
    input  wire [2:0]   cfg_max_read_req,         // >= 128 bytes: likewise
    input  wire [15:0]  cfg_function_status,      // [2] bus master enable, [3] INTx disable
    input  wire [3:0]   cfg_interrupt_msix_enable,
    input  wire [3:0]   cfg_interrupt_msix_mask,
    input  wire [3:0]   cfg_flr_in_process,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire         cfg_hot_reset_out,
    output reg  [3:0]   cfg_flr_done,
    output wire [3:0]   cfg_interrupt_int,
    output wire [3:0]   cfg_interrupt_pending,

    // Identity, for a block configured to take it from the fabric; else
    // the IP settings carry the same values (boards/).
    output wire [15:0]  id_vendor,
    output wire [15:0]  id_device,
    output wire [15:0]  id_subsys_vendor,
    output wire [15:0]  id_subsys,
    output wire [7:0]   id_revision,
    output wire [23:0]  id_class
);
    localparam integer DIRTY_PAGES_MAX = (DEVMEM_PAGES < 64) ? 64 : DEVMEM_PAGES;

    assign id_vendor        = VENDOR_ID[15:0];
    assign id_device        = DEVICE_ID[15:0];
    assign id_subsys_vendor = SUBSYS_VENDOR_ID[15:0];
    assign id_subsys        = SUBSYS_ID[15:0];
    assign id_revision      = REVISION_ID[7:0];
    assign id_class         = CLASS_CODE[23:0];

    // ---- resets (synchronous, registered)
    reg rst_n;
    reg flr_done_sent;
    wire flr = cfg_flr_in_process[0];
    always @(posedge user_clk) begin
        rst_n <= !user_reset && user_lnk_up && !cfg_hot_reset_out && !flr;
        cfg_flr_done <= 4'd0;
        if (user_reset) begin
            flr_done_sent <= 1'b0;
        end else if (flr && !rst_n && !flr_done_sent) begin
            // The shell is held in reset: nothing outstanding, MSI-X table
            // back to masked, core reset. Tell the block we are done.
`ifndef SHELL_BREAK_FLR
            cfg_flr_done[0] <= 1'b1;
`endif
            flr_done_sent   <= 1'b1;
        end else if (!flr) begin
            flr_done_sent <= 1'b0;
        end
    end

    wire bus_master = cfg_function_status[2];
    wire msix_en    = cfg_interrupt_msix_enable[0];
    wire msix_fmask = cfg_interrupt_msix_mask[0];
    assign pcie_cq_np_req = 2'b01;             // one more non-posted credit every cycle: CQ tready paces them

    // ---- core
    wire         mmio_req_valid, mmio_req_ready, mmio_req_write, mmio_req_bar2;
    wire [31:0]  mmio_req_addr;
    wire [7:0]   mmio_req_be;
    wire [63:0]  mmio_req_wdata, mmio_rsp_rdata;
    wire         mmio_rsp_valid, mmio_rsp_ready;
    wire         dma_req_valid, dma_req_ready, dma_req_write;
    wire [63:0]  dma_req_addr;
    wire [6:0]   dma_req_len;
    wire [511:0] dma_req_wdata, dma_rsp_rdata;
    wire         dma_rsp_valid, dma_rsp_ok;
    wire         dm_req_valid, dm_req_ready, dm_req_write, dm_rsp_valid;
    wire [31:0]  dm_req_addr;
    wire [6:0]   dm_req_len;
    wire [511:0] dm_req_wdata, dm_rsp_rdata;
    wire         irq_valid, irq_ready, intx;
    wire [7:0]   irq_vector;
    /* verilator lint_off UNUSEDSIGNAL */
    wire         core_busy, core_quiesced, core_idle, core_step_done, rq_idle;
    wire [1:0]   core_step_kind;
    /* verilator lint_on UNUSEDSIGNAL */
    localparam [31:0] DEVMEM_PAGES_W = DEVMEM_PAGES;
    localparam [31:0] DMALOG_MAX_W   = DMALOG_PAGES_MAX;

    vfpga_top #(
        .DEVMEM_PAGES_MAX (DIRTY_PAGES_MAX),
        .DMALOG_PAGES_MAX (DMALOG_PAGES_MAX),
`ifndef SHELL_BREAK_ID
        .PCI_VENDOR_ID    (VENDOR_ID),
        .PCI_DEVICE_ID    (DEVICE_ID)
`else
        .PCI_VENDOR_ID    (`VFPGA_PCI_VENDOR_ID),   // fault injection: core keeps the default IDs
        .PCI_DEVICE_ID    (`VFPGA_PCI_DEVICE_ID)
`endif
    ) u_core (
        .clk              (user_clk),
        .rst_n            (rst_n),
        .devmem_pages     (DEVMEM_PAGES_W),
        .dmalog_max_pages (DMALOG_MAX_W),
        .mmio_req_valid   (mmio_req_valid),
        .mmio_req_ready   (mmio_req_ready),
        .mmio_req_write   (mmio_req_write),
        .mmio_req_bar2    (mmio_req_bar2),
        .mmio_req_addr    (mmio_req_addr),
        .mmio_req_be      (mmio_req_be),
        .mmio_req_wdata   (mmio_req_wdata),
        .mmio_rsp_valid   (mmio_rsp_valid),
        .mmio_rsp_ready   (mmio_rsp_ready),
        .mmio_rsp_rdata   (mmio_rsp_rdata),
        .dma_req_valid    (dma_req_valid),
        .dma_req_ready    (dma_req_ready),
        .dma_req_write    (dma_req_write),
        .dma_req_addr     (dma_req_addr),
        .dma_req_len      (dma_req_len),
        .dma_req_wdata    (dma_req_wdata),
        .dma_rsp_valid    (dma_rsp_valid),
        .dma_rsp_ok       (dma_rsp_ok),
        .dma_rsp_rdata    (dma_rsp_rdata),
        .dm_req_valid     (dm_req_valid),
        .dm_req_ready     (dm_req_ready),
        .dm_req_write     (dm_req_write),
        .dm_req_addr      (dm_req_addr),
        .dm_req_len       (dm_req_len),
        .dm_req_wdata     (dm_req_wdata),
        .dm_rsp_valid     (dm_rsp_valid),
        .dm_rsp_rdata     (dm_rsp_rdata),
        .irq_valid        (irq_valid),
        .irq_ready        (irq_ready),
        .irq_vector       (irq_vector),
        .intx             (intx),
        .busy             (core_busy),
        .quiesced         (core_quiesced),
        .idle             (core_idle),
        .step_done        (core_step_done),
        .step_kind        (core_step_kind)
    );

    // ---- completer
    wire        msix_acc_valid, msix_acc_write;
    wire [13:0] msix_acc_off;
    wire [7:0]  msix_acc_be;
    wire [63:0] msix_acc_wdata, msix_acc_rdata;

    vfpga_usp_cq #(.DEVMEM_PAGES(DEVMEM_PAGES)) u_cq (
        .clk              (user_clk),
        .rst_n            (rst_n),
        .s_axis_cq_tdata  (s_axis_cq_tdata),
        .s_axis_cq_tkeep  (s_axis_cq_tkeep),
        .s_axis_cq_tlast  (s_axis_cq_tlast),
        .s_axis_cq_tuser  (s_axis_cq_tuser),
        .s_axis_cq_tvalid (s_axis_cq_tvalid),
        .s_axis_cq_tready (s_axis_cq_tready),
        .m_axis_cc_tdata  (m_axis_cc_tdata),
        .m_axis_cc_tkeep  (m_axis_cc_tkeep),
        .m_axis_cc_tlast  (m_axis_cc_tlast),
        .m_axis_cc_tuser  (m_axis_cc_tuser),
        .m_axis_cc_tvalid (m_axis_cc_tvalid),
        .m_axis_cc_tready (m_axis_cc_tready),
        .mmio_req_valid   (mmio_req_valid),
        .mmio_req_ready   (mmio_req_ready),
        .mmio_req_write   (mmio_req_write),
        .mmio_req_bar2    (mmio_req_bar2),
        .mmio_req_addr    (mmio_req_addr),
        .mmio_req_be      (mmio_req_be),
        .mmio_req_wdata   (mmio_req_wdata),
        .mmio_rsp_valid   (mmio_rsp_valid),
        .mmio_rsp_ready   (mmio_rsp_ready),
        .mmio_rsp_rdata   (mmio_rsp_rdata),
        .msix_acc_valid   (msix_acc_valid),
        .msix_acc_write   (msix_acc_write),
        .msix_acc_off     (msix_acc_off),
        .msix_acc_be      (msix_acc_be),
        .msix_acc_wdata   (msix_acc_wdata),
        .msix_acc_rdata   (msix_acc_rdata)
    );

    // ---- MSI-X
    wire        msg_valid, msg_ready;
    wire [63:0] msg_addr;
    wire [31:0] msg_data;

    vfpga_usp_msix u_msix (
        .clk         (user_clk),
        .rst_n       (rst_n),
        .msix_enable (msix_en),
        .msix_fmask  (msix_fmask),
        .bus_master  (bus_master),
        .acc_valid   (msix_acc_valid),
        .acc_write   (msix_acc_write),
        .acc_off     (msix_acc_off),
        .acc_be      (msix_acc_be),
        .acc_wdata   (msix_acc_wdata),
        .acc_rdata   (msix_acc_rdata),
        .irq_valid   (irq_valid),
        .irq_ready   (irq_ready),
        .irq_vector  (irq_vector),
        .msg_valid   (msg_valid),
        .msg_ready   (msg_ready),
        .msg_addr    (msg_addr),
        .msg_data    (msg_data)
    );

    // INTx (pin A) when MSI-X is off and INTx is not disabled.
`ifdef SHELL_BREAK_INTX
    wire intx_on = intx && !msix_en;           // fault injection: INTx disable ignored
`else
    wire intx_on = intx && !msix_en && !cfg_function_status[3];
`endif
    assign cfg_interrupt_int     = {3'd0, intx_on};
    assign cfg_interrupt_pending = {3'd0, intx_on};

    // ---- requester
    vfpga_usp_rq #(
        .WRITE_CONFIRM (WRITE_CONFIRM),
        .CPL_TIMEOUT   (CPL_TIMEOUT)
    ) u_rq (
        .clk              (user_clk),
        .rst_n            (rst_n),
        .tag_rst_n        (!user_reset),
        .bus_master       (bus_master),
        .dma_req_valid    (dma_req_valid),
        .dma_req_ready    (dma_req_ready),
        .dma_req_write    (dma_req_write),
        .dma_req_addr     (dma_req_addr),
        .dma_req_len      (dma_req_len),
        .dma_req_wdata    (dma_req_wdata),
        .dma_rsp_valid    (dma_rsp_valid),
        .dma_rsp_ok       (dma_rsp_ok),
        .dma_rsp_rdata    (dma_rsp_rdata),
        .msg_valid        (msg_valid),
        .msg_ready        (msg_ready),
        .msg_addr         (msg_addr),
        .msg_data         (msg_data),
        .m_axis_rq_tdata  (m_axis_rq_tdata),
        .m_axis_rq_tkeep  (m_axis_rq_tkeep),
        .m_axis_rq_tlast  (m_axis_rq_tlast),
        .m_axis_rq_tuser  (m_axis_rq_tuser),
        .m_axis_rq_tvalid (m_axis_rq_tvalid),
        .m_axis_rq_tready (m_axis_rq_tready),
        .s_axis_rc_tdata  (s_axis_rc_tdata),
        .s_axis_rc_tkeep  (s_axis_rc_tkeep),
        .s_axis_rc_tlast  (s_axis_rc_tlast),
        .s_axis_rc_tuser  (s_axis_rc_tuser),
        .s_axis_rc_tvalid (s_axis_rc_tvalid),
        .s_axis_rc_tready (s_axis_rc_tready),
        .idle             (rq_idle)
    );

    // ---- device memory
    vfpga_usp_devmem #(.PAGES(DEVMEM_PAGES)) u_devmem (
        .clk          (user_clk),
        .rst_n        (rst_n),
        .dm_req_valid (dm_req_valid),
        .dm_req_ready (dm_req_ready),
        .dm_req_write (dm_req_write),
        .dm_req_addr  (dm_req_addr),
        .dm_req_len   (dm_req_len),
        .dm_req_wdata (dm_req_wdata),
        .dm_rsp_valid (dm_rsp_valid),
        .dm_rsp_rdata (dm_rsp_rdata)
    );
endmodule

`default_nettype wire

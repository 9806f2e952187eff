// vfpga_usp_msix: the MSI-X table and pending-bit array of BAR0, and the
// delivery of the core's interrupt requests as MSI-X messages.
//
// Table at MSIX_TABLE_OFFSET (16 bytes a vector: address low, address high,
// data, vector control), PBA at MSIX_PBA_OFFSET, both from the generated
// include. The completer gives each 64-bit BAR0 word access at or above
// MSIX_TABLE_OFFSET to `acc_*` (one cycle, read data combinational).
//
// A core request for vector v (irq_valid/irq_vector) is taken at once when
// MSI-X is off (INTx covers that case: the message is dropped), or when the
// vector is masked (function mask, vector mask or Bus Master Enable clear):
// its PBA bit is then set. Otherwise the message (address, data) is handed
// to the requester, which sends it as a one-DW memory write on RQ, and the
// request is taken when the requester has accepted it. A pending vector is
// sent, and its PBA bit cleared, as soon as it is unmasked; vector 0 first.
`default_nettype none
/* verilator lint_off REDEFMACRO */
`include "generated/vfpga_regs.vh"
/* verilator lint_on REDEFMACRO */

module vfpga_usp_msix (
    input  wire        clk,
    input  wire        rst_n,
    // From the hard block's configuration interface.
    input  wire        msix_enable,       // cfg_interrupt_msix_enable[0]
    input  wire        msix_fmask,        // cfg_interrupt_msix_mask[0] (function mask)
    input  wire        bus_master,        // cfg_function_status[2]
    // Register access from the completer (BAR0 offset, 64-bit word).
    input  wire        acc_valid,
    input  wire        acc_write,
    input  wire [13:0] acc_off,
    input  wire [7:0]  acc_be,
    input  wire [63:0] acc_wdata,
    output reg  [63:0] acc_rdata,
    // The core's interrupt requests.
    input  wire        irq_valid,
    output reg         irq_ready,
    input  wire [7:0]  irq_vector,
    // Messages to the requester.
    output reg         msg_valid,
    input  wire        msg_ready,
    output reg  [63:0] msg_addr,
    output reg  [31:0] msg_data
);
    localparam integer NV = `VFPGA_NUM_VECTORS;
    localparam [31:0] TBL = `VFPGA_MSIX_TABLE_OFFSET;
    localparam [31:0] PBA = `VFPGA_MSIX_PBA_OFFSET;
    localparam [31:0] TBLW = TBL / 32'd8;        // 64-bit word index of the table
    localparam [31:0] PBAW = PBA / 32'd8;
    localparam [31:0] NV32 = `VFPGA_NUM_VECTORS;
    localparam [7:0]  NV8 = NV32[7:0];
    localparam integer VW = (NV > 1) ? $clog2(NV) : 1;
    /* verilator lint_off UNUSEDSIGNAL */
    wire [2:0]  acc_unused = acc_off[2:0];      // word accesses: byte lanes are in acc_be
    /* verilator lint_on UNUSEDSIGNAL */
    wire [31:0] acc_word = {21'd0, acc_off[13:3]};

    reg [31:0] t_addr_lo [0:NV-1];
    reg [31:0] t_addr_hi [0:NV-1];
    reg [31:0] t_data    [0:NV-1];
    reg        t_mask    [0:NV-1];
    reg [NV-1:0] pba;

    reg        sending;       // msg_valid is up
    reg        send_core;     // ... for the core's request (else for a PBA bit)

    // Register read (combinational).
    integer v;
    always @(*) begin
        acc_rdata = 64'd0;
        for (v = 0; v < NV; v = v + 1) begin
            if (acc_word == TBLW + 2 * v)
                acc_rdata = {t_addr_hi[v], t_addr_lo[v]};
            if (acc_word == TBLW + 2 * v + 1)
                acc_rdata = {31'd0, t_mask[v], t_data[v]};
        end
        if (acc_word == PBAW)
            acc_rdata = {{(64 - NV){1'b0}}, pba};
    end

    function automatic [31:0] merge(input [31:0] old, input [31:0] nw, input [3:0] be);
        integer i;
        begin
            merge = old;
            for (i = 0; i < 4; i = i + 1)
                if (be[i]) merge[8*i +: 8] = nw[8*i +: 8];
        end
    endfunction

    // The lowest pending vector that may be sent now.
    reg        pend_hit;
    reg [VW-1:0] pend_vec;
    always @(*) begin
        pend_hit = 1'b0;
        pend_vec = {VW{1'b0}};
        for (v = NV - 1; v >= 0; v = v - 1)
            if (pba[v] && !t_mask[v]) begin
                pend_hit = 1'b1;
                pend_vec = v[VW-1:0];
            end
    end

    wire can_send   = msix_enable && !msix_fmask && bus_master;
    wire core_vec_ok = irq_vector < NV8;
    wire core_masked = !core_vec_ok || !can_send || t_mask[irq_vector[VW-1:0]];

    always @(posedge clk) begin
        if (!rst_n) begin
            for (v = 0; v < NV; v = v + 1) begin
                t_addr_lo[v] <= 32'd0;
                t_addr_hi[v] <= 32'd0;
                t_data[v]    <= 32'd0;
                t_mask[v]    <= 1'b1;
            end
            pba       <= {NV{1'b0}};
            sending   <= 1'b0;
            send_core <= 1'b0;
            msg_valid <= 1'b0;
            msg_addr  <= 64'd0;
            msg_data  <= 32'd0;
            irq_ready <= 1'b0;
        end else begin
            irq_ready <= 1'b0;
            if (acc_valid && acc_write) begin
                for (v = 0; v < NV; v = v + 1) begin
                    if (acc_word == TBLW + 2 * v) begin
                        t_addr_lo[v] <= merge(t_addr_lo[v], acc_wdata[31:0], acc_be[3:0]);
                        t_addr_hi[v] <= merge(t_addr_hi[v], acc_wdata[63:32], acc_be[7:4]);
                    end
                    if (acc_word == TBLW + 2 * v + 1) begin
                        t_data[v] <= merge(t_data[v], acc_wdata[31:0], acc_be[3:0]);
                        if (acc_be[4]) t_mask[v] <= acc_wdata[32];
                    end
                end
            end
            if (sending) begin
                if (msg_ready) begin
                    msg_valid <= 1'b0;
                    sending   <= 1'b0;
                    if (send_core) irq_ready <= 1'b1;
                end
            end else if (irq_valid && !irq_ready) begin
                if (!core_vec_ok || !msix_enable) begin
                    irq_ready <= 1'b1;                       // dropped: INTx or no such vector
                end else if (core_masked) begin
`ifndef SHELL_BREAK_PBA
                    pba[irq_vector[VW-1:0]] <= 1'b1;   // masked: pending
`endif
                    irq_ready <= 1'b1;
                end else begin
                    sending   <= 1'b1;
                    send_core <= 1'b1;
                    msg_valid <= 1'b1;
                    msg_addr  <= {t_addr_hi[irq_vector[VW-1:0]], t_addr_lo[irq_vector[VW-1:0]][31:2], 2'b00};
                    msg_data  <= t_data[irq_vector[VW-1:0]];
                end
            end else if (can_send && pend_hit) begin
                pba[pend_vec] <= 1'b0;
                sending   <= 1'b1;
                send_core <= 1'b0;
                msg_valid <= 1'b1;
                msg_addr  <= {t_addr_hi[pend_vec], t_addr_lo[pend_vec][31:2], 2'b00};
                msg_data  <= t_data[pend_vec];
            end
        end
    end
endmodule

`default_nettype wire

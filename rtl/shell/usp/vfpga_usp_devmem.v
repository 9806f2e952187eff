// vfpga_usp_devmem: device memory (BAR2) in block RAM, on the core's dm_*
// port (bitstream-docs/rtl-integration.md, "Device memory").
//
// Storage: PAGES x 4 KiB as 64-bit rows with byte enables (one simple
// dual-port RAM, inferred as BRAM). An access of 1..64 bytes at any byte
// address touches n = 1..9 rows; the controller walks them one a cycle and
// answers: a write after n + 1 cycles, a read after n + 2 (an aligned 8-byte
// BAR2 word: 3 cycles; a 64-byte burst: 10 or 11).
`default_nettype none

module vfpga_usp_devmem #(
    parameter integer PAGES = 16          // power of two >= 1
) (
    input  wire         clk,
    input  wire         rst_n,
    input  wire         dm_req_valid,
    output wire         dm_req_ready,
    input  wire         dm_req_write,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [31:0]  dm_req_addr,       // bits above the memory size are 0 (core range checks)
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire [6:0]   dm_req_len,
    input  wire [511:0] dm_req_wdata,
    output reg          dm_rsp_valid,
    output reg  [511:0] dm_rsp_rdata
);
    localparam integer ROWS = PAGES * 512;
    localparam integer RW   = $clog2(ROWS);

    (* ram_style = "block" *)
    reg  [63:0]  mem [0:ROWS-1];
    reg  [63:0]  q;
    reg          busy;
    reg          wr;
    reg  [3:0]   nrows;       // rows the request touches (1..9)
    reg  [3:0]   step;        // rows issued so far
    reg          rd_pend;     // a read issued last cycle: q is valid now
    reg  [3:0]   rd_idx;      // ... for row rd_idx of the request
    reg  [RW-1:0] row;
    reg  [2:0]   off;
    reg  [575:0] wsh;         // write data, shifted to the row position; consumed 64 bits a row
    reg  [71:0]  wmsk;        // byte enables, same
    reg  [575:0] acc;         // read rows, row i at bits 64i+63:64i (rows past nrows are stale)

    assign dm_req_ready = !busy;

    wire         we  = busy && wr && (step < nrows);
    wire [7:0]   wbe = wmsk[7:0];

`ifndef SYNTHESIS
    // Simulation only: block RAM powers up as zeros on the FPGA; Icarus would
    // start with X.
    integer z;
    initial for (z = 0; z < ROWS; z = z + 1) mem[z] = 64'd0;
`endif

    integer b;
    always @(posedge clk) begin
        for (b = 0; b < 8; b = b + 1)
            if (we && wbe[b]) mem[row][8*b +: 8] <= wsh[8*b +: 8];
        q <= mem[row];
    end

    // The request's bytes at their place in the 9-row window.
    wire [575:0] wsh_in  = {64'd0, dm_req_wdata} << {dm_req_addr[2:0], 3'b000};
    wire [71:0]  len_msk = (72'd1 << dm_req_len) - 72'd1;
    wire [71:0]  msk_in  = len_msk << dm_req_addr[2:0];
    /* verilator lint_off UNUSEDSIGNAL */
    wire [6:0]   end_in  = {4'd0, dm_req_addr[2:0]} + dm_req_len + 7'd7;   // <= 78
    /* verilator lint_on UNUSEDSIGNAL */
    reg  [575:0] acc_nxt;
    integer r;
    always @(*) begin
        acc_nxt = acc;
        for (r = 0; r < 9; r = r + 1)
            if (rd_idx == r[3:0]) acc_nxt[64*r +: 64] = q;
    end
    /* verilator lint_off UNUSEDSIGNAL */
    wire [575:0] rd_sh   = acc_nxt >> {off, 3'b000};
    /* verilator lint_on UNUSEDSIGNAL */

    always @(posedge clk) begin
        if (!rst_n) begin
            busy         <= 1'b0;
            wr           <= 1'b0;
            nrows        <= 4'd0;
            step         <= 4'd0;
            rd_pend      <= 1'b0;
            rd_idx       <= 4'd0;
            row          <= {RW{1'b0}};
            off          <= 3'd0;
            wsh          <= 576'd0;
            wmsk         <= 72'd0;
            acc          <= 576'd0;
            dm_rsp_valid <= 1'b0;
            dm_rsp_rdata <= 512'd0;
        end else begin
            dm_rsp_valid <= 1'b0;
            rd_pend      <= 1'b0;
            if (!busy) begin
                if (dm_req_valid) begin
                    busy  <= 1'b1;
                    wr    <= dm_req_write;
                    nrows <= end_in[6:3];
                    step  <= 4'd0;
                    row   <= dm_req_addr[RW+2:3];
                    off   <= dm_req_addr[2:0];
                    wsh   <= wsh_in;
                    wmsk  <= dm_req_write ? msk_in : 72'd0;
                end
            end else begin
                if (step < nrows) begin
                    step    <= step + 4'd1;
                    row     <= row + 1'b1;
                    wsh     <= wsh >> 64;
                    wmsk    <= wmsk >> 8;
                    rd_pend <= !wr;
                    rd_idx  <= step;
                    if (wr && step == nrows - 4'd1) begin
                        busy         <= 1'b0;
                        dm_rsp_valid <= 1'b1;
                    end
                end
                if (rd_pend) begin
                    acc <= acc_nxt;
                    if (rd_idx == nrows - 4'd1) begin
                        busy         <= 1'b0;
                        dm_rsp_valid <= 1'b1;
                        dm_rsp_rdata <= rd_sh[511:0];
                    end
                end
            end
        end
    end
endmodule

`default_nettype wire

// vfpga_usp_cq: the completer of the UltraScale+ PCIe shell. Takes requests
// from the hard block's CQ interface (256 bits, DWORD-aligned, no straddle)
// and answers non-posted ones on CC.
//
// Requests are served strictly one at a time, in arrival order, so a read
// never passes an earlier write. A memory request to BAR0 or BAR2 is walked
// one 64-bit word of the BAR at a time (the core's MMIO granule):
//   - BAR0 words below MSIX_TABLE_OFFSET go to the core with the TLP's byte
//     enables (the core answers illegal widths with all ones);
//   - BAR0 words from MSIX_TABLE_OFFSET up go to the MSI-X table / PBA;
//   - BAR2 words go to the core, split into contiguous byte-enable runs.
// Read data is gathered into completions of at most 64 bytes that end on a
// 64-byte boundary (the smallest read completion boundary), so a completion
// never exceeds the smallest max payload size.
// I/O requests, atomics, locked reads and reads of any other BAR get a UR
// completion; messages and writes to any other BAR are dropped, and so is a
// write with `discontinue` set on its first beat. (Poisoned requests are
// dropped by the hard block itself: it does not forward them on CQ.)
`default_nettype none
/* verilator lint_off REDEFMACRO */
`include "generated/vfpga_regs.vh"
/* verilator lint_on REDEFMACRO */

module vfpga_usp_cq #(
    parameter integer DEVMEM_PAGES = 16       // BAR2 size in 4 KiB pages
) (
    input  wire         clk,
    input  wire         rst_n,
    // CQ (from the hard block)
    input  wire [255:0] s_axis_cq_tdata,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [7:0]   s_axis_cq_tkeep,      // implied by the dword count
    input  wire         s_axis_cq_tlast,
    input  wire [87:0]  s_axis_cq_tuser,      // first_be, last_be, discontinue used
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire         s_axis_cq_tvalid,
    output reg          s_axis_cq_tready,
    // CC (to the hard block)
    output reg  [255:0] m_axis_cc_tdata,
    output reg  [7:0]   m_axis_cc_tkeep,
    output reg          m_axis_cc_tlast,
    output wire [32:0]  m_axis_cc_tuser,
    output reg          m_axis_cc_tvalid,
    input  wire         m_axis_cc_tready,
    // Core MMIO port
    output reg          mmio_req_valid,
    input  wire         mmio_req_ready,
    output wire         mmio_req_write,
    output wire         mmio_req_bar2,
    output wire [31:0]  mmio_req_addr,
    output reg  [7:0]   mmio_req_be,
    output wire [63:0]  mmio_req_wdata,
    input  wire         mmio_rsp_valid,
    output wire         mmio_rsp_ready,
    input  wire [63:0]  mmio_rsp_rdata,
    // MSI-X table / PBA
    output reg          msix_acc_valid,
    output wire         msix_acc_write,
    output wire [13:0]  msix_acc_off,
    output wire [7:0]   msix_acc_be,
    output wire [63:0]  msix_acc_wdata,
    input  wire [63:0]  msix_acc_rdata
);
    localparam [31:0] BAR0_MASK = `VFPGA_BAR0_SIZE - 32'd1;
    localparam [31:0] BAR2_MASK = DEVMEM_PAGES * `VFPGA_PAGE_SIZE - 1;
    localparam [31:0] MSIX_BASE = `VFPGA_MSIX_TABLE_OFFSET;

    localparam [3:0] C_IDLE   = 4'd0;
    localparam [3:0] C_WORD   = 4'd1;
    localparam [3:0] C_GATHER = 4'd2;
    localparam [3:0] C_ISSUE  = 4'd3;
    localparam [3:0] C_WAIT   = 4'd4;
    localparam [3:0] C_NEXT   = 4'd5;
    localparam [3:0] C_CPL    = 4'd6;
    localparam [3:0] C_UR     = 4'd7;
    localparam [3:0] C_DRAIN  = 4'd8;     // drop the rest of a request
    localparam [3:0] C_DRAINUR = 4'd9;    // drop the payload, then answer UR

    reg [3:0]   state;
    reg [255:0] q_beat;
    reg [3:0]   q_lane;
    reg         r_write, r_bar2;
    reg [31:0]  r_off;          // byte offset in the BAR of the current dword
    reg [11:0]  r_dwcnt, r_k;
    reg [3:0]   r_fbe, r_lbe;
    reg [15:0]  r_rid;
    reg [7:0]   r_tag;
    reg [2:0]   r_tc, r_attr;
    reg [12:0]  r_bc;           // bytes still to complete (byte count field)
    reg [6:0]   r_la;           // lower address of the next completion
    reg         r_first;        // next completion is the first one
    reg [12:0]  r_ur_bc;
    reg [63:0]  w_data;
    reg [7:0]   w_be, be_left;
    reg [1:0]   w_need, w_got;
    reg [63:0]  rd_acc;
    reg [31:0]  cbuf [0:15];
    reg [4:0]   c_cnt;
    reg [1:0]   cc_beat;

    // ---- request source: the CQ, or (fault injection only) a held-back write
    wire [255:0] in_tdata;
    /* verilator lint_off UNUSEDSIGNAL */
    wire [87:0]  in_tuser;                  // first_be, last_be, discontinue used
    /* verilator lint_on UNUSEDSIGNAL */
    wire         in_tlast, in_valid;
`ifdef SHELL_BREAK_ORDER
    // Fault injection: a one-beat BAR2 write is held back and served after
    // the next request (so a read can pass it).
    reg  [255:0] st_data;
    reg  [87:0]  st_user;
    reg          st_v, st_replay;
    reg  [6:0]   st_age;
    wire         cq_wr1 = (s_axis_cq_tdata[78:75] == 4'b0001) && (s_axis_cq_tdata[114:112] == 3'd2) && s_axis_cq_tlast;
    wire         st_take = (state == C_IDLE) && s_axis_cq_tvalid && !st_v && cq_wr1 && !st_replay;
    wire         st_use  = (state == C_IDLE) && st_v && (st_replay || st_age == 7'd127);
    assign in_tdata = st_use ? st_data : s_axis_cq_tdata;
    assign in_tuser = st_use ? st_user : s_axis_cq_tuser;
    assign in_tlast = st_use ? 1'b1 : s_axis_cq_tlast;
    assign in_valid = st_use ? 1'b1 : (s_axis_cq_tvalid && !st_take);
    always @(posedge clk) begin
        if (!rst_n) begin
            st_v <= 1'b0; st_replay <= 1'b0; st_age <= 7'd0; st_data <= 256'd0; st_user <= 88'd0;
        end else begin
            st_age <= st_v ? st_age + 7'd1 : 7'd0;
            if (st_take) begin st_v <= 1'b1; st_data <= s_axis_cq_tdata; st_user <= s_axis_cq_tuser; end
            else if (st_use) begin st_v <= 1'b0; st_replay <= 1'b0; end
            else if (state == C_IDLE && in_valid && st_v) st_replay <= 1'b1;
        end
    end
`else
    assign in_tdata = s_axis_cq_tdata;
    assign in_tuser = s_axis_cq_tuser;
    assign in_tlast = s_axis_cq_tlast;
    assign in_valid = s_axis_cq_tvalid;
`endif

    // ---- request decode (first beat)
    wire [3:0]  d_type  = in_tdata[78:75];
    wire [10:0] d_dw    = in_tdata[74:64];
    wire [2:0]  d_bar   = in_tdata[114:112];
    wire [31:0] d_addr  = {in_tdata[31:2], 2'b00};    // BARs are at most 4 GiB
    wire [3:0]  d_fbe   = in_tuser[3:0];
`ifdef SHELL_BREAK_LAST_BE
    wire [3:0]  d_lbe   = in_tuser[11:8];   // fault injection: wrong last_be lanes
`else
    wire [3:0]  d_lbe   = in_tuser[7:4];
`endif
    wire        d_disc  = in_tuser[41];
    wire [11:0] d_dwcnt = (d_dw == 11'd0) ? 12'd1024 : {1'b0, d_dw};
    wire        d_barok = (d_bar == 3'd0) || (d_bar == 3'd2);

    function automatic [1:0] low_bit(input [3:0] be);
        low_bit = be[0] ? 2'd0 : be[1] ? 2'd1 : be[2] ? 2'd2 : be[3] ? 2'd3 : 2'd0;
    endfunction
    /* verilator lint_off UNUSEDSIGNAL */
    function automatic [1:0] high_bit(input [3:0] be);
        high_bit = be[3] ? 2'd3 : be[2] ? 2'd2 : {1'b0, be[1]};
    endfunction
    /* verilator lint_on UNUSEDSIGNAL */
    // Byte count of a memory read (PCIe base spec, completion byte count rules).
    function automatic [12:0] req_bytes(input [11:0] dwcnt, input [3:0] fbe, input [3:0] lbe);
        if (dwcnt == 12'd1)
            req_bytes = (fbe == 4'd0) ? 13'd1 : {11'd0, high_bit(fbe)} - {11'd0, low_bit(fbe)} + 13'd1;
        else
            req_bytes = {dwcnt[10:0], 2'b00} - {11'd0, low_bit(fbe)} - (13'd3 - {11'd0, high_bit(lbe)});   // 1024 DW: 4096 (the CC byte count field has 13 bits)
    endfunction

    // ---- the current 64-bit word
    wire [11:0] left   = r_dwcnt - r_k;
    wire        two    = !r_off[2] && (left >= 12'd2);
    function automatic [3:0] dw_be(input [11:0] kk, input [11:0] n, input [3:0] fbe, input [3:0] lbe);
        dw_be = (kk == 12'd0) ? fbe : (kk == n - 12'd1) ? lbe : 4'hf;
    endfunction
    wire [3:0]  be_k   = dw_be(r_k, r_dwcnt, r_fbe, r_lbe);
    wire [3:0]  be_k1  = dw_be(r_k + 12'd1, r_dwcnt, r_fbe, r_lbe);
    wire [7:0]  be_word = two ? {be_k1, be_k} : (r_off[2] ? {be_k, 4'h0} : {4'h0, be_k});
    wire        to_msix = !r_bar2 && (r_off >= MSIX_BASE);
    // Lowest contiguous run of byte enables (BAR2 takes contiguous runs only).
    wire [7:0]  low1    = be_left & (~be_left + 8'd1);
    wire [7:0]  sum8    = be_left + low1;         // carries through the run (wraps at the top)
    wire [7:0]  run8    = be_left & ~sum8;
    wire [7:0]  be_run  = r_bar2 ? run8 : be_left;
    wire        slot    = (w_need == 2'd2) ? w_got[0] : r_off[2];

    assign mmio_req_write = r_write;
    assign mmio_req_bar2  = r_bar2;
    assign mmio_req_addr  = {r_off[31:3], 3'b000};
    assign mmio_req_wdata = w_data;
    assign mmio_rsp_ready = 1'b1;
    assign msix_acc_write = r_write;
    assign msix_acc_off   = r_off[13:0];
    assign msix_acc_be    = w_be;
    assign msix_acc_wdata = w_data;
    assign m_axis_cc_tuser = 33'd0;

    function automatic [63:0] lane_mask(input [7:0] be);
        integer i;
        begin
            for (i = 0; i < 8; i = i + 1) lane_mask[8*i +: 8] = {8{be[i]}};
        end
    endfunction

    // ---- completion beats
    wire [2:0]  cpl_status = 3'd0;
    wire [95:0] cc_hdr = {1'b0, r_attr, r_tc, 1'b0, 16'd0, r_tag,
                          r_rid, 1'b0, 1'b0, cpl_status, 6'd0, c_cnt,
                          3'd0, r_bc, 6'd0, 2'b00, 1'b0, r_la};
    wire [95:0] ur_hdr = {1'b0, r_attr, r_tc, 1'b0, 16'd0, r_tag,
                          r_rid, 1'b0, 1'b0, 3'd1, 11'd0,
                          3'd0, r_ur_bc, 6'd0, 2'b00, 1'b0, r_la};
    wire [5:0]  cc_dws   = 6'd3 + {1'b0, c_cnt};             // dwords in the TLP
    wire [1:0]  cc_last  = (cc_dws > 6'd16) ? 2'd2 : (cc_dws > 6'd8) ? 2'd1 : 2'd0;
    function automatic [7:0] keep_of(input [5:0] n);     // n dwords left from this beat
        keep_of = (n >= 6'd8) ? 8'hff : (8'hff >> (4'd8 - n[3:0]));
    endfunction

    always @(*) begin
        m_axis_cc_tvalid = 1'b0;
        m_axis_cc_tdata  = 256'd0;
        m_axis_cc_tkeep  = 8'd0;
        m_axis_cc_tlast  = 1'b0;
        if (state == C_CPL) begin
            m_axis_cc_tvalid = 1'b1;
            case (cc_beat)
                2'd0: begin
                    m_axis_cc_tdata = {cbuf[4], cbuf[3], cbuf[2], cbuf[1], cbuf[0], cc_hdr};
                    m_axis_cc_tkeep = keep_of(cc_dws);
                end
                2'd1: begin
                    m_axis_cc_tdata = {cbuf[12], cbuf[11], cbuf[10], cbuf[9], cbuf[8], cbuf[7], cbuf[6], cbuf[5]};
                    m_axis_cc_tkeep = keep_of(cc_dws - 6'd8);
                end
                default: begin
                    m_axis_cc_tdata = {160'd0, cbuf[15], cbuf[14], cbuf[13]};
                    m_axis_cc_tkeep = keep_of(cc_dws - 6'd16);
                end
            endcase
            m_axis_cc_tlast = (cc_beat == cc_last);
        end else if (state == C_UR) begin
            m_axis_cc_tvalid = 1'b1;
            m_axis_cc_tdata  = {160'd0, ur_hdr};
            m_axis_cc_tkeep  = 8'h07;
            m_axis_cc_tlast  = 1'b1;
        end
    end

    always @(*) begin
        s_axis_cq_tready = 1'b0;
`ifdef SHELL_BREAK_ORDER
        if (state == C_IDLE && !st_use) s_axis_cq_tready = 1'b1;
        if (state == C_DRAIN || state == C_DRAINUR) s_axis_cq_tready = 1'b1;
`else
        if (state == C_IDLE || state == C_DRAIN || state == C_DRAINUR) s_axis_cq_tready = 1'b1;
`endif
        if (state == C_GATHER && q_lane == 4'd8) s_axis_cq_tready = 1'b1;
        mmio_req_valid = (state == C_ISSUE) && !to_msix && (be_left != 8'd0);
        mmio_req_be    = be_run;
        msix_acc_valid = (state == C_ISSUE) && to_msix;
    end

    integer i;
    always @(posedge clk) begin
        if (!rst_n) begin
            state   <= C_IDLE;
            q_beat  <= 256'd0;
            q_lane  <= 4'd0;
            r_write <= 1'b0;
            r_bar2  <= 1'b0;
            r_off   <= 32'd0;
            r_dwcnt <= 12'd0;
            r_k     <= 12'd0;
            r_fbe   <= 4'd0;
            r_lbe   <= 4'd0;
            r_rid   <= 16'd0;
            r_tag   <= 8'd0;
            r_tc    <= 3'd0;
            r_attr  <= 3'd0;
            r_bc    <= 13'd0;
            r_la    <= 7'd0;
            r_first <= 1'b0;
            r_ur_bc <= 13'd0;
            w_data  <= 64'd0;
            w_be    <= 8'd0;
            be_left <= 8'd0;
            w_need  <= 2'd0;
            w_got   <= 2'd0;
            rd_acc  <= 64'd0;
            c_cnt   <= 5'd0;
            cc_beat <= 2'd0;
            for (i = 0; i < 16; i = i + 1) cbuf[i] <= 32'd0;
        end else begin
            case (state)
                C_IDLE: if (in_valid) begin
                    q_beat  <= in_tdata;
                    q_lane  <= 4'd4;
                    r_dwcnt <= d_dwcnt;
                    r_k     <= 12'd0;
                    r_fbe   <= d_fbe;
                    r_lbe   <= d_lbe;
                    r_rid   <= in_tdata[95:80];
                    r_tag   <= in_tdata[103:96];
                    r_tc    <= in_tdata[123:121];
                    r_attr  <= in_tdata[126:124];
                    r_bar2  <= (d_bar == 3'd2);
                    r_off   <= (d_bar == 3'd2) ? (d_addr & BAR2_MASK) : (d_addr & BAR0_MASK);
                    r_bc    <= req_bytes(d_dwcnt, d_fbe, d_lbe);
                    r_la    <= {d_addr[6:2], low_bit(d_fbe)};
                    r_first <= 1'b1;
                    // UR completion fields: a memory read (locked or not) keeps
                    // its byte count and lower address; others use 4 and 0.
                    r_ur_bc <= (d_type == 4'b0000 || d_type == 4'b0111) ? req_bytes(d_dwcnt, d_fbe, d_lbe) : 13'd4;
                    if (d_type != 4'b0000 && d_type != 4'b0111) r_la <= 7'd0;
                    c_cnt   <= 5'd0;
                    cc_beat <= 2'd0;
                    case (d_type)
                        4'b0000: begin                                   // memory read
                            r_write <= 1'b0;
                            state   <= d_barok ? C_WORD : C_UR;
                        end
                        4'b0001: begin                                   // memory write
                            r_write <= 1'b1;
                            if (d_barok && !d_disc) state <= C_WORD;
                            else state <= in_tlast ? C_IDLE : C_DRAIN;
                        end
                        4'b0010, 4'b0111: state <= C_UR;                 // I/O read, locked read
                        4'b0011, 4'b0100, 4'b0101, 4'b0110:              // I/O write, atomics
                            state <= in_tlast ? C_UR : C_DRAINUR;
                        default: state <= in_tlast ? C_IDLE : C_DRAIN;   // messages
                    endcase
                end
                C_DRAIN:   if (s_axis_cq_tvalid && s_axis_cq_tlast) state <= C_IDLE;
                C_DRAINUR: if (s_axis_cq_tvalid && s_axis_cq_tlast) state <= C_UR;
                C_WORD: begin
                    w_be    <= be_word;
                    be_left <= be_word;
                    w_need  <= two ? 2'd2 : 2'd1;
                    w_got   <= 2'd0;
                    w_data  <= 64'd0;
                    rd_acc  <= 64'd0;
                    state   <= r_write ? C_GATHER : C_ISSUE;
                end
                C_GATHER: begin
                    if (q_lane == 4'd8) begin
                        if (s_axis_cq_tvalid) begin
                            q_beat <= s_axis_cq_tdata;
                            q_lane <= 4'd0;
                        end
                    end else begin
                        w_data[32*slot +: 32] <= q_beat[32*q_lane[2:0] +: 32];
                        q_lane <= q_lane + 4'd1;
                        w_got  <= w_got + 2'd1;
                        if (w_got + 2'd1 == w_need) state <= C_ISSUE;
                    end
                end
                C_ISSUE: begin
                    if (to_msix) begin
                        rd_acc <= msix_acc_rdata & lane_mask(w_be);
                        state  <= C_NEXT;
                    end else if (be_left == 8'd0) begin
                        state <= C_NEXT;
                    end else if (mmio_req_ready) begin
                        be_left <= be_left & ~be_run;
                        state   <= C_WAIT;
                    end
                end
                C_WAIT: if (mmio_rsp_valid) begin
                    rd_acc <= rd_acc | mmio_rsp_rdata;
                    state  <= (be_left != 8'd0) ? C_ISSUE : C_NEXT;
                end
                C_NEXT: begin
                    if (!r_write) begin
                        if (w_need == 2'd2) begin
                            cbuf[c_cnt[3:0]]         <= rd_acc[31:0];
                            cbuf[c_cnt[3:0] + 4'd1]  <= rd_acc[63:32];
                        end else begin
                            cbuf[c_cnt[3:0]] <= r_off[2] ? rd_acc[63:32] : rd_acc[31:0];
                        end
                        c_cnt <= c_cnt + {3'd0, w_need};
                    end
                    r_k   <= r_k + {10'd0, w_need};
                    r_off <= r_off + {28'd0, w_need, 2'b00};
                    if (r_k + {10'd0, w_need} == r_dwcnt)
                        state <= r_write ? C_IDLE : C_CPL;
                    else if (!r_write && ((r_off[5:0] + {2'd0, w_need, 2'b00}) == 6'd0))
                        state <= C_CPL;
                    else
                        state <= C_WORD;
                end
                C_CPL: if (m_axis_cc_tready) begin
                    if (cc_beat == cc_last) begin
                        cc_beat <= 2'd0;
                        c_cnt   <= 5'd0;
                        r_first <= 1'b0;
                        r_bc    <= r_bc - ({6'd0, c_cnt, 2'b00} - (r_first ? {11'd0, r_la[1:0]} : 13'd0));
                        r_la    <= {r_off[6:2], 2'b00};
                        state   <= (r_k == r_dwcnt) ? C_IDLE : C_WORD;
                    end else begin
                        cc_beat <= cc_beat + 2'd1;
                    end
                end
                C_UR: if (m_axis_cc_tready) state <= C_IDLE;
                default: state <= C_IDLE;
            endcase
        end
    end
endmodule

`default_nettype wire

// vfpga_usp_rq: the requester of the UltraScale+ PCIe shell. Turns the
// core's DMA requests (one outstanding, 1..64 bytes, never crossing 4 KiB)
// and the MSI-X unit's messages into TLPs on RQ (256 bits, DWORD-aligned),
// and reassembles read completions from RC.
//
// - One core request is one TLP: 64 bytes is below the smallest max payload
//   size and max read request size (128 bytes), so cfg_max_payload and
//   cfg_max_read_req never force a split (checked at elaboration against
//   BURST_BYTES).
// - Reads: byte enables give the unaligned head and tail; completions may
//   be split at the read completion boundary; each is placed by its lower
//   address. A completion with another tag (a late one for a request that
//   timed out) is dropped: every non-posted request takes a new tag.
// - Faults (dma_rsp_ok = 0): a completion with UR/CA status, poisoned data
//   or a nonzero RC error code; no completion within CPL_TIMEOUT cycles; and
//   any request while Bus Master Enable is clear (nothing is sent then).
// - WRITE_CONFIRM = 1: a write is followed by a 1-byte read of its first
//   byte (same page); the write is answered with that read's outcome.
//   WRITE_CONFIRM = 0: a write is answered as soon as it has been sent.
`default_nettype none
/* verilator lint_off REDEFMACRO */
`include "generated/vfpga_regs.vh"
/* verilator lint_on REDEFMACRO */

module vfpga_usp_rq #(
    parameter integer WRITE_CONFIRM = 1,
    parameter integer CPL_TIMEOUT   = 12500000     // cycles (50 ms at 250 MHz)
) (
    input  wire         clk,
    input  wire         rst_n,
    input  wire         tag_rst_n,                 // resets the tag counter: block reset only, not FLR
    input  wire         bus_master,                // cfg_function_status[2]
    // Core DMA port
    input  wire         dma_req_valid,
    output reg          dma_req_ready,
    input  wire         dma_req_write,
    input  wire [63:0]  dma_req_addr,
    input  wire [6:0]   dma_req_len,
    input  wire [511:0] dma_req_wdata,
    output reg          dma_rsp_valid,
    output reg          dma_rsp_ok,
    output reg  [511:0] dma_rsp_rdata,
    // MSI-X messages
    input  wire         msg_valid,
    output reg          msg_ready,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [63:0]  msg_addr,                  // dword aligned
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire [31:0]  msg_data,
    // RQ (to the hard block)
    output reg  [255:0] m_axis_rq_tdata,
    output reg  [7:0]   m_axis_rq_tkeep,
    output reg          m_axis_rq_tlast,
    output reg  [61:0]  m_axis_rq_tuser,
    output reg          m_axis_rq_tvalid,
    input  wire         m_axis_rq_tready,
    // RC (from the hard block)
    input  wire [255:0] s_axis_rc_tdata,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [7:0]   s_axis_rc_tkeep,           // implied by the dword count
    input  wire         s_axis_rc_tlast,
    input  wire [74:0]  s_axis_rc_tuser,           // is_sof_0 used
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire         s_axis_rc_tvalid,
    output wire         s_axis_rc_tready,
    output wire         idle                       // nothing outstanding (FLR handshake)
);
    generate
        if (`VFPGA_BURST_BYTES > 128) begin : g_bad_burst
            vfpga_usp_rq_needs_BURST_BYTES_at_most_128_to_fit_the_smallest_MPS_and_MRRS u_err ();
        end
    endgenerate

    localparam [2:0] R_IDLE = 3'd0;
    localparam [2:0] R_SEND = 3'd1;
    localparam [2:0] R_WAIT = 3'd2;
    localparam [2:0] R_RESP = 3'd3;

    reg [2:0]   state;
    reg [767:0] tx;               // the TLP: descriptor then payload, 3 beats
    reg [1:0]   tx_beat, tx_last;
    reg [5:0]   tx_dws;           // dwords in the TLP (descriptor included)
    reg [7:0]   tx_be;            // {last_be, first_be}
    reg         tx_msg;           // the TLP is an MSI-X message
    reg         tx_np;            // the TLP is a read (a completion is awaited)
    reg         cur_write;        // the core's request is a write
    reg         confirm_next;     // after this TLP: send the confirming read
    reg [63:0]  cur_addr;
    reg [4:0]   tag;
    reg         fault;
    reg [31:0]  timer;
    reg [31:0]  rbuf [0:17];      // read data, dword-aligned from cur_addr & ~3
    reg         rc_in;            // inside a completion for the current tag
    reg         rc_bad, rc_done;
    reg [9:0]   rc_idx;           // rbuf index of the first data dword of this beat's lane 0

    assign s_axis_rc_tready = 1'b1;
    assign idle = (state == R_IDLE) && !dma_req_valid && !msg_valid;

    // ---- TLP construction
    // Descriptor (RQ, PG213 layout): address, dword count, request type,
    // requester ID (filled in by the block), tag, TC/attr 0.
    function automatic [127:0] rq_desc(input [63:2] a, input [10:0] dws, input [3:0] typ, input [7:0] t);
        rq_desc = {1'b0, 3'd0, 3'd0, 1'b0, 16'd0, t,
                   16'd0, 1'b0, typ, dws,
                   a, 2'b00};
    endfunction

    wire [1:0]  a_lo    = dma_req_addr[1:0];
    wire [7:0]  a_end   = {6'd0, a_lo} + {1'b0, dma_req_len};          // 1..67
    wire [5:0]  a_dws   = a_end[7:2] + {5'd0, (a_end[1:0] != 2'd0)};   // 1..17
    wire [3:0]  fbe_raw = 4'hf << a_lo;
    wire [3:0]  lbe_raw = (a_end[1:0] == 2'd0) ? 4'hf : (4'hf >> (3'd4 - {1'b0, a_end[1:0]}));
    wire [3:0]  fbe     = (a_dws == 6'd1) ? (fbe_raw & lbe_raw) : fbe_raw;
    wire [3:0]  lbe     = (a_dws == 6'd1) ? 4'd0 : lbe_raw;
    wire [543:0] payload = {32'd0, dma_req_wdata} << {a_lo, 3'b000};
    wire [4:0]  tag_nxt = tag + 5'd1;

    // Confirming read: 1 byte, the first byte of the write.
    wire [3:0]  c_fbe   = 4'h1 << cur_addr[1:0];

    // ---- RQ beats
    function automatic [7:0] keep_of(input [5:0] n);
        keep_of = (n >= 6'd8) ? 8'hff : (8'hff >> (4'd8 - n[3:0]));
    endfunction
    always @(*) begin
        m_axis_rq_tvalid = (state == R_SEND);
        m_axis_rq_tdata  = tx[256*tx_beat +: 256];
        m_axis_rq_tkeep  = keep_of(tx_dws - {tx_beat, 3'd0});
        m_axis_rq_tlast  = (tx_beat == tx_last);
        m_axis_rq_tuser  = {54'd0, tx_be};
    end

    // ---- RC: completion descriptor fields (first beat)
    wire        rc_sop   = s_axis_rc_tuser[32];
    wire [11:0] rc_la    = s_axis_rc_tdata[11:0];
    wire [3:0]  rc_err   = s_axis_rc_tdata[15:12];
    wire [12:0] rc_bc    = s_axis_rc_tdata[28:16];
    wire        rc_rcomp = s_axis_rc_tdata[30];
    wire [10:0] rc_dwc   = s_axis_rc_tdata[42:32];
    wire [2:0]  rc_st    = s_axis_rc_tdata[45:43];
    wire        rc_ep    = s_axis_rc_tdata[46];
    wire [7:0]  rc_tag   = s_axis_rc_tdata[71:64];
`ifdef SHELL_BREAK_TAG
    wire        rc_mine  = (state == R_WAIT) && (rc_tag[7:5] == 3'd0);   // fault injection: tag not checked
`else
    wire        rc_mine  = (state == R_WAIT) && (rc_tag == {3'd0, tag});
`endif
    wire        rc_last  = rc_rcomp || ({1'b0, rc_bc} + {12'd0, rc_la[1:0]} <= {1'b0, rc_dwc, 2'b00});
`ifdef SHELL_BREAK_RCB
    wire [9:0]  rc_first = 10'd0 * (rc_la[11:2] - cur_addr[11:2]);   // fault injection: ignore the lower address
`else
    wire [9:0]  rc_first = rc_la[11:2] - cur_addr[11:2];      // rbuf index of the first data dword
`endif

    reg [575:0] rflat;
    integer i;
    always @(*) begin
        for (i = 0; i < 18; i = i + 1) rflat[32*i +: 32] = rbuf[i];
    end

    // The tag counter survives an FLR, so a completion that arrives after the
    // FLR for a request made before it cannot match the next request's tag.
    wire      tag_step =
        (state == R_IDLE && !(msg_valid && !msg_ready) && dma_req_valid && !dma_req_ready && !dma_req_write) ||
        (state == R_SEND && m_axis_rq_tready && tx_beat == tx_last && !tx_msg && confirm_next);
    always @(posedge clk) begin
        if (!tag_rst_n) tag <= 5'd0;
        else if (tag_step) tag <= tag_nxt;
    end

    integer l;
    reg [9:0] idx0 [0:7];     // rbuf index of each lane of this beat
    always @(*) begin
        for (l = 0; l < 8; l = l + 1)
            idx0[l] = rc_sop ? (rc_first + l[9:0] - 10'd3) : (rc_idx + l[9:0]);
    end
    always @(posedge clk) begin
        if (!rst_n) begin
            state         <= R_IDLE;
            tx            <= 768'd0;
            tx_beat       <= 2'd0;
            tx_last       <= 2'd0;
            tx_dws        <= 6'd0;
            tx_be         <= 8'd0;
            tx_msg        <= 1'b0;
            tx_np         <= 1'b0;
            cur_write     <= 1'b0;
            confirm_next  <= 1'b0;
            cur_addr      <= 64'd0;
            fault         <= 1'b0;
            timer         <= 32'd0;
            rc_in         <= 1'b0;
            rc_bad        <= 1'b0;
            rc_done       <= 1'b0;
            rc_idx        <= 10'd0;
            dma_req_ready <= 1'b0;
            dma_rsp_valid <= 1'b0;
            dma_rsp_ok    <= 1'b0;
            dma_rsp_rdata <= 512'd0;
            msg_ready     <= 1'b0;
            for (i = 0; i < 18; i = i + 1) rbuf[i] <= 32'd0;
        end else begin
            dma_req_ready <= 1'b0;
            dma_rsp_valid <= 1'b0;
            msg_ready     <= 1'b0;

            // ---- RC: always ready; only the awaited tag is used.
            if (s_axis_rc_tvalid) begin
                if (rc_sop) begin
                    rc_in <= rc_mine && !s_axis_rc_tlast;
                    if (rc_mine) begin
                        for (l = 3; l < 8; l = l + 1)
                            if (idx0[l] < 10'd18) rbuf[idx0[l][4:0]] <= s_axis_rc_tdata[32*l +: 32];
                        rc_idx  <= rc_first + 10'd5;
`ifdef SHELL_BREAK_STATUS
                        rc_bad  <= rc_bad || (rc_err == 4'hf) || rc_ep;   // fault injection: status ignored
`else
                        rc_bad  <= rc_bad || (rc_err != 4'd0) || (rc_st != 3'd0) || rc_ep;
`endif
                        rc_done <= rc_last || (rc_err != 4'd0) || (rc_st != 3'd0);
                    end
                end else if (rc_in) begin
                    for (l = 0; l < 8; l = l + 1)
                        if (idx0[l] < 10'd18) rbuf[idx0[l][4:0]] <= s_axis_rc_tdata[32*l +: 32];
                    rc_idx <= rc_idx + 10'd8;
                    if (s_axis_rc_tlast) rc_in <= 1'b0;
                end
            end

            case (state)
                R_IDLE: begin
                    tx_beat <= 2'd0;
                    if (msg_valid && !msg_ready) begin
                        // MSI-X message: 1-DW memory write (posted).
                        tx      <= {512'd0, 96'd0, msg_data, rq_desc(msg_addr[63:2], 11'd1, 4'b0001, 8'd0)};
                        tx_dws  <= 6'd5;
                        tx_last <= 2'd0;
                        tx_be   <= 8'h0f;
                        tx_msg  <= 1'b1;
                        tx_np   <= 1'b0;
                        state   <= bus_master ? R_SEND : R_IDLE;
                        if (!bus_master) msg_ready <= 1'b1;   // BME cleared after the MSI-X unit decided: dropped
                    end else if (dma_req_valid && !dma_req_ready) begin
                        dma_req_ready <= 1'b1;
                        cur_write     <= dma_req_write;
                        cur_addr      <= dma_req_addr;
                        tx_msg        <= 1'b0;
                        fault         <= 1'b0;
                        rc_done       <= 1'b0;
                        rc_bad        <= 1'b0;
                        tx_be         <= {lbe, fbe};
                        tx_dws        <= dma_req_write ? (6'd4 + a_dws) : 6'd4;
                        tx_last       <= !dma_req_write ? 2'd0 : ((6'd4 + a_dws) > 6'd16) ? 2'd2 :
                                         ((6'd4 + a_dws) > 6'd8) ? 2'd1 : 2'd0;
                        if (dma_req_write) begin
                            tx    <= {96'd0, payload,
                                      rq_desc(dma_req_addr[63:2], {5'd0, a_dws}, 4'b0001, 8'd0)};
                            tx_np <= 1'b0;
                        end else begin
                            tx    <= {640'd0, rq_desc(dma_req_addr[63:2], {5'd0, a_dws}, 4'b0000, {3'd0, tag_nxt})};
                            tx_np <= 1'b1;
                        end
                        confirm_next <= dma_req_write && (WRITE_CONFIRM != 0);
`ifdef SHELL_BREAK_BME
                        if (1'b0) begin                     // fault injection: Bus Master Enable ignored
`else
                        if (!bus_master) begin
`endif
                            fault <= 1'b1;
                            state <= R_RESP;
                        end else begin
                            state <= R_SEND;
                        end
                    end
                end
                R_SEND: if (m_axis_rq_tready) begin
                    if (tx_beat != tx_last) begin
                        tx_beat <= tx_beat + 2'd1;
                    end else begin
                        tx_beat <= 2'd0;
                        timer   <= 32'd0;
                        if (tx_msg) begin
                            msg_ready <= 1'b1;
                            state     <= R_IDLE;
                        end else if (confirm_next) begin
                            confirm_next <= 1'b0;
                            tx      <= {640'd0, rq_desc(cur_addr[63:2], 11'd1, 4'b0000, {3'd0, tag_nxt})};
                            tx_dws  <= 6'd4;
                            tx_last <= 2'd0;
                            tx_be   <= {4'd0, c_fbe};
                            tx_np   <= 1'b1;
                            rc_done <= 1'b0;
                            rc_bad  <= 1'b0;
                        end else if (tx_np) begin
                            state <= R_WAIT;
                        end else begin
                            state <= R_RESP;           // posted write, no confirmation
                        end
                    end
                end
                R_WAIT: begin
                    timer <= timer + 32'd1;
                    if (rc_done && !rc_in) begin
                        fault <= rc_bad;
                        state <= R_RESP;
`ifdef SHELL_BREAK_TIMEOUT
                    end else if (timer == 32'hffffffff) begin   // fault injection: no completion timeout
`else
                    end else if (timer >= CPL_TIMEOUT) begin
`endif
                        fault <= 1'b1;
                        state <= R_RESP;
                    end
                end
                R_RESP: begin
                    dma_rsp_valid <= 1'b1;
                    dma_rsp_ok    <= !fault;
                    dma_rsp_rdata <= (fault || cur_write) ? 512'd0 : rflat[{5'd0, cur_addr[1:0], 3'b000} +: 512];
                    state         <= R_IDLE;
                end
                default: state <= R_IDLE;
            endcase
        end
    end
endmodule

`default_nettype wire

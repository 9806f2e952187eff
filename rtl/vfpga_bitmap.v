// vfpga_bitmap: a bit-per-page bitmap in an inferred simple dual-port RAM
// (one read port, one write port, 32-bit words), with three serialized
// operations: SET one bit, TAKE a word (return it and clear it), and CLEAR
// the first `arg` words. Every operation is atomic with respect to the others,
// so a bit set while a word is being taken is never lost.
//
// Handshake: pulse `start` with `op`/`arg` while `busy` is low; `done` pulses
// for one cycle when the operation has finished, with `rdata` valid for TAKE.
// SET and TAKE take 2 cycles, CLEAR takes `arg` cycles (at least 1).
`default_nettype none

module vfpga_bitmap #(
    parameter integer WORDS = 2048   // storage in 32-bit words (power of two)
) (
    input  wire        clk,
    input  wire        rst_n,
    input  wire        start,
    input  wire [1:0]  op,            // 0: SET bit arg, 1: TAKE word arg, 2: CLEAR words [0, arg)
    input  wire [31:0] arg,
    output wire        busy,
    output reg         done,
    output reg  [31:0] rdata
);
    localparam integer AW = $clog2(WORDS);

    localparam [1:0] OP_SET   = 2'd0;
    localparam [1:0] OP_TAKE  = 2'd1;
    localparam [1:0] OP_CLEAR = 2'd2;

    localparam [1:0] ST_IDLE  = 2'd0;
    localparam [1:0] ST_RMW   = 2'd1;   // read data is on ram_q; write back
    localparam [1:0] ST_CLEAR = 2'd2;

    generate
        if (WORDS < 2 || (WORDS & (WORDS - 1)) != 0) begin : g_bad_words
            vfpga_param_error_bitmap_WORDS_must_be_a_power_of_two_ge_2 u_err ();
        end
    endgenerate

    reg [1:0]    state;
    reg [1:0]    cur_op;
    reg [4:0]    cur_bit;
    reg [AW-1:0] cur_word;
    reg [31:0]   clear_left;

    assign busy = state != ST_IDLE;

    // Read address: the word holding bit `arg` for SET, word `arg` for TAKE.
    wire [AW-1:0] raddr = (op == OP_SET) ? arg[AW-1+5:5] : arg[AW-1:0];

    // Write port, driven by the state machine in the same cycle it decides.
    wire          we    = (state == ST_RMW) || (state == ST_CLEAR);
    wire [31:0]   wdata = (state == ST_RMW && cur_op == OP_SET) ? (ram_q | (32'd1 << cur_bit)) : 32'd0;

    // Inferred RAM: one synchronous read port, one write port (read-first).
    reg [31:0] mem [0:WORDS-1];
    reg [31:0] ram_q;
    always @(posedge clk) begin
        if (we) mem[cur_word] <= wdata;
        ram_q <= mem[raddr];
    end

    always @(posedge clk) begin
        if (!rst_n) begin
            state      <= ST_IDLE;
            done       <= 1'b0;
            rdata      <= 32'd0;
            cur_op     <= OP_SET;
            cur_bit    <= 5'd0;
            cur_word   <= {AW{1'b0}};
            clear_left <= 32'd0;
        end else begin
            done <= 1'b0;
            case (state)
                ST_IDLE: if (start) begin
                    cur_op <= op;
                    if (op == OP_CLEAR) begin
                        // CLEAR of 0 words still takes one (harmless) cycle.
                        state      <= ST_CLEAR;
                        cur_word   <= {AW{1'b0}};
                        clear_left <= (arg > WORDS) ? WORDS : ((arg == 32'd0) ? 32'd1 : arg);
                    end else begin
                        state    <= ST_RMW;
                        cur_bit  <= arg[4:0];
                        cur_word <= raddr;
                    end
                end
                ST_RMW: begin
                    // ram_q holds mem[cur_word]; the write-back happens at this edge.
                    if (cur_op == OP_TAKE) rdata <= ram_q;
                    done  <= 1'b1;
                    state <= ST_IDLE;
                end
                ST_CLEAR: begin
                    cur_word   <= cur_word + 1'b1;
                    clear_left <= clear_left - 32'd1;
                    if (clear_left == 32'd1) begin
                        done  <= 1'b1;
                        state <= ST_IDLE;
                    end
                end
                default: state <= ST_IDLE;
            endcase
        end
    end
endmodule

`default_nettype wire

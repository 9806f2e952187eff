// vfpga_top: the vfpga device core (datasheet: bitstream-docs/datasheet.md;
// host interface and timing: bitstream-docs/rtl-integration.md).
//
// One state machine owns every architectural register. In S_IDLE the device
// is "between steps": it accepts one MMIO access, enters QUIESCED, or starts
// one engine step (complete > burst > fetch, datasheet §5.3). A step runs to
// its end (all of its bus transactions and bitmap updates) before anything
// else happens, so quiesce, soft reset, register accesses and state reads
// only ever see the device between steps. MMIO accesses and engine steps
// alternate when both are waiting.
//
// Offsets, reset values, masks and state-word indices come only from the
// generated include; nothing here repeats a number from the register map.
`default_nettype none
// The generated include defines DESC_BYTES/CPL_BYTES twice (as a constant and
// as a structure size, same value): silence only that warning.
/* verilator lint_off REDEFMACRO */
`include "generated/vfpga_regs.vh"
/* verilator lint_on REDEFMACRO */

module vfpga_top #(
    // Storage of the device-memory dirty bitmap, in pages (power of two >= 64,
    // at most MAX_DEVMEM_PAGES of the architecture). The instance size is the
    // `devmem_pages` input, at most this.
    parameter integer DEVMEM_PAGES_MAX = 65536,
    // Storage of the DMA write log, in pages (power of two >= 64, at most
    // MAX_DMALOG_PAGES). DMALOG_MAX_PAGES reads the `dmalog_max_pages` input
    // clamped to this.
    parameter integer DMALOG_PAGES_MAX = 65536,
    // PCI identity that PCI_ID reports: must equal what config space shows
    // (a board's shell passes its own IDs here and to the PCIe block).
    parameter [31:0] PCI_VENDOR_ID = `VFPGA_PCI_VENDOR_ID,   // low 16 bits used
    parameter [31:0] PCI_DEVICE_ID = `VFPGA_PCI_DEVICE_ID    // low 16 bits used
) (
    input  wire         clk,
    input  wire         rst_n,             // synchronous, active low

    // Instance parameters (tie to constants on a board).
    input  wire [31:0]  devmem_pages,      // power of two, 1..DEVMEM_PAGES_MAX
    input  wire [31:0]  dmalog_max_pages,  // 0..DMALOG_PAGES_MAX

    // MMIO target: one request, then exactly one response, in order.
    input  wire         mmio_req_valid,
    output wire         mmio_req_ready,
    input  wire         mmio_req_write,
    input  wire         mmio_req_bar2,     // 0: BAR0 registers, 1: BAR2 device memory
    input  wire [31:0]  mmio_req_addr,     // byte address in the BAR; bits 2:0 ignored
    input  wire [7:0]   mmio_req_be,       // byte enables of the 64-bit word
    input  wire [63:0]  mmio_req_wdata,
    output reg          mmio_rsp_valid,
    input  wire         mmio_rsp_ready,
    output reg  [63:0]  mmio_rsp_rdata,    // reads: data on the enabled lanes; writes: 0

    // DMA master to host memory (IOVAs): one outstanding request.
    output reg          dma_req_valid,
    input  wire         dma_req_ready,
    output reg          dma_req_write,
    output reg  [63:0]  dma_req_addr,
    output reg  [6:0]   dma_req_len,       // 1..64 bytes
    output reg  [511:0] dma_req_wdata,     // byte i on bits 8i+7:8i
    input  wire         dma_rsp_valid,     // one per request, after it was accepted
    input  wire         dma_rsp_ok,        // 0: the host refused the access (fault)
    input  wire [511:0] dma_rsp_rdata,

    // Device memory (DDR/HBM controller, or the simulator's host buffer).
    output reg          dm_req_valid,
    input  wire         dm_req_ready,
    output reg          dm_req_write,
    output reg  [31:0]  dm_req_addr,       // byte offset in device memory
    output reg  [6:0]   dm_req_len,        // 1..64 bytes
    output reg  [511:0] dm_req_wdata,
    input  wire         dm_rsp_valid,      // one per request (write: completion)
    input  wire [511:0] dm_rsp_rdata,

    // Interrupt requests (MSI-X vector numbers) and the INTx level.
    output reg          irq_valid,
    input  wire         irq_ready,
    output reg  [7:0]   irq_vector,
    output wire         intx,

    // Status for the integration (not needed by a bridge).
    output wire         busy,              // STATUS.BUSY
    output wire         quiesced,          // STATUS.QUIESCED
    output wire         idle,              // nothing to do until an MMIO access arrives
    output wire         step_done,         // one-cycle pulse: an engine step just ended
    output reg  [1:0]   step_kind          // of that step: 0 fetch, 1 burst, 2 complete
);
    // ------------------------------------------------------------------
    // Parameters checked at elaboration.
    generate
        if (DEVMEM_PAGES_MAX < 64 || (DEVMEM_PAGES_MAX & (DEVMEM_PAGES_MAX - 1)) != 0
            || DEVMEM_PAGES_MAX > `VFPGA_MAX_DEVMEM_PAGES) begin : g_bad_devmem
            vfpga_param_error_DEVMEM_PAGES_MAX_must_be_a_power_of_two_in_64_to_MAX_DEVMEM_PAGES u_err ();
        end
        if (DMALOG_PAGES_MAX < 64 || (DMALOG_PAGES_MAX & (DMALOG_PAGES_MAX - 1)) != 0
            || DMALOG_PAGES_MAX > `VFPGA_MAX_DMALOG_PAGES) begin : g_bad_dmalog
            vfpga_param_error_DMALOG_PAGES_MAX_must_be_a_power_of_two_in_64_to_MAX_DMALOG_PAGES u_err ();
        end
    endgenerate

    localparam integer DIRTY_WORDS = DEVMEM_PAGES_MAX / 32;
    localparam integer LOG_WORDS   = DMALOG_PAGES_MAX / 32;

    localparam [31:0] POLY      = `VFPGA_CRC32C_POLY_REFLECTED;
    localparam [7:0]  ST_CUR_FIRST = `VFPGA_ST_CUR_FLAGS;
    localparam [7:0]  ST_CUR_LAST  = `VFPGA_ST_CUR_SLOT;
    localparam [31:0] VEC_CPL   = `VFPGA_VECTOR_CPL;
    localparam [31:0] VEC_ERR   = `VFPGA_VECTOR_ERR;
    localparam [31:0] CPL_BYTES = `VFPGA_CPL_BYTES;
    localparam [31:0] DESC_BYTES = `VFPGA_DESC_BYTES;
    localparam [31:0] THR_MASK  = ((32'd1 << `VFPGA_DMA_THROTTLE_IDLE_WIDTH) - 32'd1)
                                  << `VFPGA_DMA_THROTTLE_IDLE_LSB;

    // ------------------------------------------------------------------
    // Architectural state words (datasheet §9.2), stored raw: whatever the
    // state port writes reads back unchanged, so validation can refuse it.
    reg [31:0] r_header, r_ctrl, r_flags, r_scratch;
    reg [31:0] r_err_code, r_err_addr_lo, r_err_addr_hi;
    reg [31:0] r_irq_status, r_irq_mask, r_irq_pending;
    reg [31:0] r_sq_base_lo, r_sq_base_hi, r_sq_size, r_sq_head, r_sq_tail;
    reg [31:0] r_cq_base_lo, r_cq_base_hi, r_cq_size, r_cq_head, r_cq_tail;
    reg [63:0] r_timer;
    reg [31:0] r_cnt_desc, r_cnt_err;
    reg [63:0] r_cnt_bytes;
    reg [31:0] r_cur_flags, r_cur_ctl, r_cur_tag;
    reg [31:0] r_cur_src_lo, r_cur_src_hi, r_cur_dst_lo, r_cur_dst_hi;
    reg [31:0] r_cur_len, r_cur_pattern, r_cur_done, r_cur_crc, r_cur_slot;

    // Host-side machinery and status (not architectural).
    reg        s_quiescing, s_quiesced, s_state_invalid;
    reg [31:0] r_state_idx, r_state_err, r_timer_hi_latch;
    reg [31:0] r_dirty_sel;
    reg        r_log_enable, r_log_overflow;
    reg [31:0] r_log_base_lo, r_log_base_hi, r_log_pages, r_log_sel;
    reg [31:0] r_throttle;         // DMA_THROTTLE (host machinery, not state)
    reg [15:0] thr_cnt;            // idle cycles left after the last burst

    // ------------------------------------------------------------------
    // Derived values.
    wire [7:0]  cur_op     = r_cur_ctl[7:0];
    wire        cur_valid  = r_cur_flags[0];
    wire [7:0]  cur_status = r_cur_flags[23:16];
    wire        halted     = r_flags[0];
    wire        enable     = r_ctrl[0];
    wire [11:0] sq_mask    = r_sq_size[11:0] - 12'd1;   // size 0 never indexes
    wire [11:0] cq_mask    = r_cq_size[11:0] - 12'd1;
    wire [11:0] cq_idx     = r_cq_tail[11:0];
    wire        cq_free    = (r_cq_size != 32'd0) && (((cq_idx + 12'd1) & cq_mask) != r_cq_head[11:0]);
    wire        fetch_ok   = enable && !halted && (r_sq_size != 32'd0) && (r_sq_head != r_sq_tail);
    wire        cpl_due    = cur_valid && (cur_status != `VFPGA_CPLSTATUS_OK || r_cur_done == r_cur_len
                                           || cur_op == `VFPGA_OPCODE_NOP);
    wire [1:0]  irq_deliv  = r_irq_pending[1:0] & ~r_irq_mask[1:0];
    wire        run_ok     = !s_quiesced && !s_quiescing;
    // A step is ready to start; it starts once the DMA_THROTTLE gap after
    // the last burst has run out (datasheet §5.5).
    wire        step_ready = run_ok && !halted && !irq_valid && (irq_deliv == 2'b00)
                             && (cpl_due ? cq_free : (cur_valid || fetch_ok));
    wire        step_go    = step_ready && thr_cnt == 16'd0;
    wire [32:0] devmem_bytes = {devmem_pages[20:0], 12'd0};
    wire [31:0] dirty_groups = (devmem_pages[31:5] == 27'd0) ? 32'd1 : {5'd0, devmem_pages[31:5]};
    wire [31:0] log_groups   = (r_log_pages + 32'd31) >> 5;
    wire [31:0] dmalog_max   = (dmalog_max_pages > DMALOG_PAGES_MAX) ? DMALOG_PAGES_MAX : dmalog_max_pages;

    assign busy     = cur_valid || fetch_ok;
    assign quiesced = s_quiesced;
    assign intx     = !s_quiesced && ((r_irq_status[1:0] & ~r_irq_mask[1:0]) != 2'b00);

    // ------------------------------------------------------------------
    // Bitmaps.
    localparam [1:0] BM_SET = 2'd0, BM_TAKE = 2'd1, BM_CLEAR = 2'd2;
    reg         bmd_start, bml_start;
    reg  [1:0]  bmd_op, bml_op;
    reg  [31:0] bmd_arg, bml_arg;
    wire        bmd_busy, bml_busy, bmd_done, bml_done;
    wire [31:0] bmd_rdata, bml_rdata;

    vfpga_bitmap #(.WORDS(DIRTY_WORDS)) u_dirty (
        .clk(clk), .rst_n(rst_n), .start(bmd_start), .op(bmd_op), .arg(bmd_arg),
        .busy(bmd_busy), .done(bmd_done), .rdata(bmd_rdata));
    vfpga_bitmap #(.WORDS(LOG_WORDS)) u_log (
        .clk(clk), .rst_n(rst_n), .start(bml_start), .op(bml_op), .arg(bml_arg),
        .busy(bml_busy), .done(bml_done), .rdata(bml_rdata));

    // ------------------------------------------------------------------
    // Main state machine.
    localparam [4:0]
        S_IDLE    = 5'd0,
        S_M_DW    = 5'd1,   // BAR0: one 32-bit half of the access
        S_M_BM    = 5'd2,   // BAR0: waiting for a bitmap TAKE
        S_M_SWEEP = 5'd3,   // clearing bitmaps (reset, DMALOG enable)
        S_M_DM    = 5'd4,   // BAR2: device-memory access in flight
        S_M_MARK  = 5'd5,   // BAR2 write: setting the dirty bit
        S_M_RSP   = 5'd6,   // MMIO response offered
        S_F_RSP   = 5'd7,   // fetch: descriptor read in flight
        S_B_RD    = 5'd8,   // burst: source read in flight
        S_B_CRC   = 5'd9,   // burst: CRC of the data, 8 bytes per cycle
        S_B_WR    = 5'd10,  // burst: destination write in flight
        S_B_MARK  = 5'd11,  // burst: dirty / log bit being set
        S_C_WR    = 5'd12,  // complete: completion write in flight
        S_C_MARK  = 5'd13,  // complete: log bit being set
        S_INIT    = 5'd14,  // after reset: start clearing both bitmaps
        S_M_VAL0  = 5'd15,  // STATE_CTRL.VALIDATE or CTRL.RESUME: validation computing
        S_M_VAL   = 5'd16;  // ... and its result applied

    reg [4:0]   state;
    reg         prefer_engine;     // an MMIO access just finished: let a step go first

    // MMIO access being served.
    reg         m_write, m_bar2, m_half, m_need_rsp, m_sweep_d, m_sweep_l;
    reg [31:0]  m_addr;
    reg [7:0]   m_be;
    reg [63:0]  m_wdata;
    reg [2:0]   m_lane;            // BAR2: first enabled byte lane
    reg [31:0]  m_bm_sel_next;     // BAR0: next DIRTY_SEL / DMALOG_SEL after a TAKE
    reg         m_bm_log;          // BAR0: the TAKE is on the log bitmap
    reg         m_resume;          // S_M_VAL: the validation is a RESUME

    // Step being executed.
    reg [63:0]  b_src, b_dst;      // burst addresses (SRC+DONE, DST+DONE)
    reg [6:0]   b_n;               // burst length
    reg [511:0] b_buf;             // burst data (CRC unit)
    reg [15:0]  vres_q;            // validation result {WORD, CODE}
    reg [31:0]  st_rd_q;           // state word STATE_IDX, for STATE_DATA reads
    reg [31:0]  b_crc;
    reg [6:0]   b_crc_left;
    reg [63:0]  c_addr;            // completion / descriptor address
    reg [63:0]  mmio_rd;           // BAR0 read data being assembled

    wire in_step = state == S_F_RSP || state == S_B_RD || state == S_B_CRC || state == S_B_WR
                   || state == S_B_MARK || state == S_C_WR || state == S_C_MARK;

    assign idle = (state == S_IDLE) && !irq_valid && !s_quiescing && !step_ready
                  && !(run_ok && irq_deliv != 2'b00);

    // ------------------------------------------------------------------
    // Helpers.
    function automatic is_host_src(input [7:0] op);
        is_host_src = op == `VFPGA_OPCODE_COPY_H2D || op == `VFPGA_OPCODE_COPY_H2H
                      || op == `VFPGA_OPCODE_CRC32C;
    endfunction
    function automatic is_dev_src(input [7:0] op);
        is_dev_src = op == `VFPGA_OPCODE_COPY_D2H;
    endfunction
    function automatic is_host_dst(input [7:0] op);
        is_host_dst = op == `VFPGA_OPCODE_COPY_D2H || op == `VFPGA_OPCODE_COPY_H2H
                      || op == `VFPGA_OPCODE_FILL_HOST;
    endfunction
    function automatic is_dev_dst(input [7:0] op);
        is_dev_dst = op == `VFPGA_OPCODE_COPY_H2D || op == `VFPGA_OPCODE_FILL_DEV;
    endfunction

    // a + len beyond device memory, computed without overflow.
    function automatic devmem_beyond(input [63:0] a, input [31:0] len, input [32:0] limit);
        reg [64:0] e;
        begin
            e = {1'b0, a} + {33'd0, len};
            devmem_beyond = e > {32'd0, limit};
        end
    endfunction

    // CRC-32C of up to 8 bytes (reflected, no inversion).
    function automatic [31:0] crc32c_upd(input [31:0] crc_in, input [63:0] data, input [3:0] nbytes);
        integer i, j;
        reg [31:0] c;
        begin
            c = crc_in;
            for (i = 0; i < 8; i = i + 1) begin
                if (i < nbytes) begin
                    c = c ^ {24'd0, data[8*i +: 8]};
                    for (j = 0; j < 8; j = j + 1)
                        c = c[0] ? ((c >> 1) ^ POLY) : (c >> 1);
                end
            end
            crc32c_upd = c;
        end
    endfunction

    // Descriptor check at fetch (datasheet §5.3 step 3): the CplStatus.
    function automatic [7:0] desc_status(input [7:0] op, input [22:0] rsvd, input [63:0] src,
                                         input [63:0] dst, input [31:0] len);
        begin
            if (op > `VFPGA_OPCODE_FILL_HOST)
                desc_status = `VFPGA_CPLSTATUS_BAD_OPCODE;
            else if (rsvd != 23'd0 || len > `VFPGA_MAX_DESC_LEN)
                desc_status = `VFPGA_CPLSTATUS_BAD_DESC;
            else if (is_dev_dst(op) && devmem_beyond(dst, len, devmem_bytes))
                desc_status = `VFPGA_CPLSTATUS_DEVMEM_RANGE;
            else if (is_dev_src(op) && devmem_beyond(src, len, devmem_bytes))
                desc_status = `VFPGA_CPLSTATUS_DEVMEM_RANGE;
            else
                desc_status = `VFPGA_CPLSTATUS_OK;
        end
    endfunction

    // All state words, word i at bits 32i+31:32i (positions from the
    // generated indices).
    localparam integer STW = `VFPGA_STATE_WORDS;
    function automatic [32*STW-1:0] st_vec(input [63:0] timer);
        reg [32*STW-1:0] v;
        begin
            v = {(32*STW){1'b0}};
            v[32*`VFPGA_ST_HEADER +: 32] = r_header;
            v[32*`VFPGA_ST_CTRL +: 32] = r_ctrl;
            v[32*`VFPGA_ST_FLAGS +: 32] = r_flags;
            v[32*`VFPGA_ST_SCRATCH +: 32] = r_scratch;
            v[32*`VFPGA_ST_ERR_CODE +: 32] = r_err_code;
            v[32*`VFPGA_ST_ERR_ADDR_LO +: 32] = r_err_addr_lo;
            v[32*`VFPGA_ST_ERR_ADDR_HI +: 32] = r_err_addr_hi;
            v[32*`VFPGA_ST_IRQ_STATUS +: 32] = r_irq_status;
            v[32*`VFPGA_ST_IRQ_MASK +: 32] = r_irq_mask;
            v[32*`VFPGA_ST_IRQ_PENDING +: 32] = r_irq_pending;
            v[32*`VFPGA_ST_SQ_BASE_LO +: 32] = r_sq_base_lo;
            v[32*`VFPGA_ST_SQ_BASE_HI +: 32] = r_sq_base_hi;
            v[32*`VFPGA_ST_SQ_SIZE +: 32] = r_sq_size;
            v[32*`VFPGA_ST_SQ_HEAD +: 32] = r_sq_head;
            v[32*`VFPGA_ST_SQ_TAIL +: 32] = r_sq_tail;
            v[32*`VFPGA_ST_CQ_BASE_LO +: 32] = r_cq_base_lo;
            v[32*`VFPGA_ST_CQ_BASE_HI +: 32] = r_cq_base_hi;
            v[32*`VFPGA_ST_CQ_SIZE +: 32] = r_cq_size;
            v[32*`VFPGA_ST_CQ_HEAD +: 32] = r_cq_head;
            v[32*`VFPGA_ST_CQ_TAIL +: 32] = r_cq_tail;
            v[32*`VFPGA_ST_TIMER_LO +: 32] = timer[31:0];
            v[32*`VFPGA_ST_TIMER_HI +: 32] = timer[63:32];
            v[32*`VFPGA_ST_CNT_DESC +: 32] = r_cnt_desc;
            v[32*`VFPGA_ST_CNT_ERR +: 32] = r_cnt_err;
            v[32*`VFPGA_ST_CNT_BYTES_LO +: 32] = r_cnt_bytes[31:0];
            v[32*`VFPGA_ST_CNT_BYTES_HI +: 32] = r_cnt_bytes[63:32];
            v[32*`VFPGA_ST_CUR_FLAGS +: 32] = r_cur_flags;
            v[32*`VFPGA_ST_CUR_CTL +: 32] = r_cur_ctl;
            v[32*`VFPGA_ST_CUR_TAG +: 32] = r_cur_tag;
            v[32*`VFPGA_ST_CUR_SRC_LO +: 32] = r_cur_src_lo;
            v[32*`VFPGA_ST_CUR_SRC_HI +: 32] = r_cur_src_hi;
            v[32*`VFPGA_ST_CUR_DST_LO +: 32] = r_cur_dst_lo;
            v[32*`VFPGA_ST_CUR_DST_HI +: 32] = r_cur_dst_hi;
            v[32*`VFPGA_ST_CUR_LEN +: 32] = r_cur_len;
            v[32*`VFPGA_ST_CUR_PATTERN +: 32] = r_cur_pattern;
            v[32*`VFPGA_ST_CUR_DONE +: 32] = r_cur_done;
            v[32*`VFPGA_ST_CUR_CRC +: 32] = r_cur_crc;
            v[32*`VFPGA_ST_CUR_SLOT +: 32] = r_cur_slot;
            st_vec = v;
        end
    endfunction

    // Bits each state word may have set (the others are reserved).
    function automatic [32*STW-1:0] st_masks(input unused_dummy);
        reg [32*STW-1:0] m;
        begin
            m = {(32*STW){1'b0}};
            m[32*`VFPGA_ST_HEADER +: 32] = `VFPGA_ST_HEADER_MASK;
            m[32*`VFPGA_ST_CTRL +: 32] = `VFPGA_ST_CTRL_MASK;
            m[32*`VFPGA_ST_FLAGS +: 32] = `VFPGA_ST_FLAGS_MASK;
            m[32*`VFPGA_ST_SCRATCH +: 32] = `VFPGA_ST_SCRATCH_MASK;
            m[32*`VFPGA_ST_ERR_CODE +: 32] = `VFPGA_ST_ERR_CODE_MASK;
            m[32*`VFPGA_ST_ERR_ADDR_LO +: 32] = `VFPGA_ST_ERR_ADDR_LO_MASK;
            m[32*`VFPGA_ST_ERR_ADDR_HI +: 32] = `VFPGA_ST_ERR_ADDR_HI_MASK;
            m[32*`VFPGA_ST_IRQ_STATUS +: 32] = `VFPGA_ST_IRQ_STATUS_MASK;
            m[32*`VFPGA_ST_IRQ_MASK +: 32] = `VFPGA_ST_IRQ_MASK_MASK;
            m[32*`VFPGA_ST_IRQ_PENDING +: 32] = `VFPGA_ST_IRQ_PENDING_MASK;
            m[32*`VFPGA_ST_SQ_BASE_LO +: 32] = `VFPGA_ST_SQ_BASE_LO_MASK;
            m[32*`VFPGA_ST_SQ_BASE_HI +: 32] = `VFPGA_ST_SQ_BASE_HI_MASK;
            m[32*`VFPGA_ST_SQ_SIZE +: 32] = `VFPGA_ST_SQ_SIZE_MASK;
            m[32*`VFPGA_ST_SQ_HEAD +: 32] = `VFPGA_ST_SQ_HEAD_MASK;
            m[32*`VFPGA_ST_SQ_TAIL +: 32] = `VFPGA_ST_SQ_TAIL_MASK;
            m[32*`VFPGA_ST_CQ_BASE_LO +: 32] = `VFPGA_ST_CQ_BASE_LO_MASK;
            m[32*`VFPGA_ST_CQ_BASE_HI +: 32] = `VFPGA_ST_CQ_BASE_HI_MASK;
            m[32*`VFPGA_ST_CQ_SIZE +: 32] = `VFPGA_ST_CQ_SIZE_MASK;
            m[32*`VFPGA_ST_CQ_HEAD +: 32] = `VFPGA_ST_CQ_HEAD_MASK;
            m[32*`VFPGA_ST_CQ_TAIL +: 32] = `VFPGA_ST_CQ_TAIL_MASK;
            m[32*`VFPGA_ST_TIMER_LO +: 32] = `VFPGA_ST_TIMER_LO_MASK;
            m[32*`VFPGA_ST_TIMER_HI +: 32] = `VFPGA_ST_TIMER_HI_MASK;
            m[32*`VFPGA_ST_CNT_DESC +: 32] = `VFPGA_ST_CNT_DESC_MASK;
            m[32*`VFPGA_ST_CNT_ERR +: 32] = `VFPGA_ST_CNT_ERR_MASK;
            m[32*`VFPGA_ST_CNT_BYTES_LO +: 32] = `VFPGA_ST_CNT_BYTES_LO_MASK;
            m[32*`VFPGA_ST_CNT_BYTES_HI +: 32] = `VFPGA_ST_CNT_BYTES_HI_MASK;
            m[32*`VFPGA_ST_CUR_FLAGS +: 32] = `VFPGA_ST_CUR_FLAGS_MASK;
            m[32*`VFPGA_ST_CUR_CTL +: 32] = `VFPGA_ST_CUR_CTL_MASK;
            m[32*`VFPGA_ST_CUR_TAG +: 32] = `VFPGA_ST_CUR_TAG_MASK;
            m[32*`VFPGA_ST_CUR_SRC_LO +: 32] = `VFPGA_ST_CUR_SRC_LO_MASK;
            m[32*`VFPGA_ST_CUR_SRC_HI +: 32] = `VFPGA_ST_CUR_SRC_HI_MASK;
            m[32*`VFPGA_ST_CUR_DST_LO +: 32] = `VFPGA_ST_CUR_DST_LO_MASK;
            m[32*`VFPGA_ST_CUR_DST_HI +: 32] = `VFPGA_ST_CUR_DST_HI_MASK;
            m[32*`VFPGA_ST_CUR_LEN +: 32] = `VFPGA_ST_CUR_LEN_MASK;
            m[32*`VFPGA_ST_CUR_PATTERN +: 32] = `VFPGA_ST_CUR_PATTERN_MASK;
            m[32*`VFPGA_ST_CUR_DONE +: 32] = `VFPGA_ST_CUR_DONE_MASK;
            m[32*`VFPGA_ST_CUR_CRC +: 32] = `VFPGA_ST_CUR_CRC_MASK;
            m[32*`VFPGA_ST_CUR_SLOT +: 32] = `VFPGA_ST_CUR_SLOT_MASK;
            st_masks = m;
        end
    endfunction

    // State word `idx` (0 past the last one).
    function automatic [31:0] st_word(input [7:0] idx);
        reg [32*STW-1:0] v;
        begin
            v = st_vec(r_timer);
            st_word = ({24'd0, idx} < STW) ? v[32*idx +: 32] : 32'd0;
        end
    endfunction

    function automatic ring_size_ok(input [31:0] s);
        ring_size_ok = (s == 32'd0)
                       || (s >= 32'd2 && s <= `VFPGA_MAX_RING_ENTRIES && (s & (s - 32'd1)) == 32'd0);
    endfunction

    // Validation of the state words `w` (datasheet §9.3, in its order):
    // {WORD, CODE} of the first failure, or 0.
    function automatic [15:0] validate_state(input [32*STW-1:0] w);
        integer i;
        reg        found;
        reg [15:0] r;
        reg [31:0] sq_size, cq_size, sq_lim, cq_lim, ctl, len, slot, done;
        reg [63:0] src, dst;
        reg [7:0]  vst, vop;
        reg        unused_bit;        // CTL.IRQ: any value is valid
        reg [32*STW-1:0] masks;
        begin
            masks   = st_masks(1'b0);
            sq_size = w[32*`VFPGA_ST_SQ_SIZE +: 32];
            cq_size = w[32*`VFPGA_ST_CQ_SIZE +: 32];
            sq_lim  = (sq_size == 32'd0) ? 32'd1 : sq_size;
            cq_lim  = (cq_size == 32'd0) ? 32'd1 : cq_size;
            ctl     = w[32*`VFPGA_ST_CUR_CTL +: 32];
            len     = w[32*`VFPGA_ST_CUR_LEN +: 32];
            slot    = w[32*`VFPGA_ST_CUR_SLOT +: 32];
            done    = w[32*`VFPGA_ST_CUR_DONE +: 32];
            src     = {w[32*`VFPGA_ST_CUR_SRC_HI +: 32], w[32*`VFPGA_ST_CUR_SRC_LO +: 32]};
            dst     = {w[32*`VFPGA_ST_CUR_DST_HI +: 32], w[32*`VFPGA_ST_CUR_DST_LO +: 32]};
            vst     = w[32*`VFPGA_ST_CUR_FLAGS + 16 +: 8];
            vop     = ctl[7:0];
            unused_bit = ctl[8];
            r = 16'd0;
            found = 1'b0;
            // 1. header
            if (w[32*`VFPGA_ST_HEADER +: 32] != `VFPGA_STATE_HEADER) begin
                r = {`VFPGA_ST_HEADER, `VFPGA_STATEERR_HEADER};
                found = 1'b1;
            end
            // 2. reserved bits, first by index
            for (i = 0; i < STW; i = i + 1) begin
                if (!found && (w[32*i +: 32] & ~masks[32*i +: 32]) != 32'd0) begin
                    r = {i[7:0], `VFPGA_STATEERR_RESERVED_BITS};
                    found = 1'b1;
                end
            end
            // 3. ring sizes
            if (!found && !ring_size_ok(sq_size)) begin
                r = {`VFPGA_ST_SQ_SIZE, `VFPGA_STATEERR_RING_SIZE}; found = 1'b1;
            end
            if (!found && !ring_size_ok(cq_size)) begin
                r = {`VFPGA_ST_CQ_SIZE, `VFPGA_STATEERR_RING_SIZE}; found = 1'b1;
            end
            // 4. ring indices
            if (!found && w[32*`VFPGA_ST_SQ_HEAD +: 32] >= sq_lim) begin
                r = {`VFPGA_ST_SQ_HEAD, `VFPGA_STATEERR_RING_INDEX}; found = 1'b1;
            end
            if (!found && w[32*`VFPGA_ST_SQ_TAIL +: 32] >= sq_lim) begin
                r = {`VFPGA_ST_SQ_TAIL, `VFPGA_STATEERR_RING_INDEX}; found = 1'b1;
            end
            if (!found && w[32*`VFPGA_ST_CQ_HEAD +: 32] >= cq_lim) begin
                r = {`VFPGA_ST_CQ_HEAD, `VFPGA_STATEERR_RING_INDEX}; found = 1'b1;
            end
            if (!found && {20'd0, w[32*`VFPGA_ST_CQ_TAIL +: 12]} >= cq_lim) begin
                r = {`VFPGA_ST_CQ_TAIL, `VFPGA_STATEERR_RING_INDEX}; found = 1'b1;
            end
            // 5. ERR_CODE is a CplStatus
            if (!found && w[32*`VFPGA_ST_ERR_CODE +: 32] > {24'd0, `VFPGA_CPLSTATUS_CQ_WRITE_FAULT}) begin
                r = {`VFPGA_ST_ERR_CODE, `VFPGA_STATEERR_VALUE}; found = 1'b1;
            end
            // 6. the in-flight descriptor
            if (!found && !w[32*`VFPGA_ST_CUR_FLAGS]) begin
                for (i = {24'd0, ST_CUR_FIRST}; i <= {24'd0, ST_CUR_LAST}; i = i + 1) begin
                    if (!found && w[32*i +: 32] != 32'd0) begin
                        r = {i[7:0], `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                    end
                end
            end
            if (!found && w[32*`VFPGA_ST_CUR_FLAGS]) begin
                if (vst > `VFPGA_CPLSTATUS_DMA_WRITE_FAULT) begin
                    r = {`VFPGA_ST_CUR_FLAGS, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                end else if (done > len) begin
                    r = {`VFPGA_ST_CUR_DONE, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                end else if (slot >= sq_lim) begin
                    r = {`VFPGA_ST_CUR_SLOT, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                end else if (vst == `VFPGA_CPLSTATUS_OK) begin
                    if (vop > `VFPGA_OPCODE_FILL_HOST || ctl[31:9] != 23'd0) begin
                        r = {`VFPGA_ST_CUR_CTL, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                    end else if (len > `VFPGA_MAX_DESC_LEN) begin
                        r = {`VFPGA_ST_CUR_LEN, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                    end else if (is_dev_dst(vop) && devmem_beyond(dst, len, devmem_bytes)) begin
                        r = {`VFPGA_ST_CUR_DST_LO, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                    end else if (is_dev_src(vop) && devmem_beyond(src, len, devmem_bytes)) begin
                        r = {`VFPGA_ST_CUR_SRC_LO, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                    end else if (vop != `VFPGA_OPCODE_CRC32C && w[32*`VFPGA_ST_CUR_CRC +: 32] != 32'd0) begin
                        r = {`VFPGA_ST_CUR_CRC, `VFPGA_STATEERR_INFLIGHT}; found = 1'b1;
                    end
                end
            end
            validate_state = r;
        end
    endfunction

    // Burst length (datasheet §5.3 step 2) for the in-flight descriptor.
    function automatic [6:0] burst_len(input [7:0] op, input [31:0] rem, input [11:0] src, input [11:0] dst);
        reg [12:0] n, room;
        begin
            n = (rem < 32'd64) ? rem[12:0] : 13'd64;
            if (is_host_src(op) || is_dev_src(op)) begin
                room = 13'h1000 - {1'b0, src};
                if (room < n) n = room;
            end
            if (is_host_dst(op) || is_dev_dst(op)) begin
                room = 13'h1000 - {1'b0, dst};
                if (room < n) n = room;
            end
            burst_len = n[6:0];
        end
    endfunction

    // 64 bytes of PATTERN, starting at descriptor byte `done`.
    function automatic [511:0] fill_data(input [31:0] pattern, input [1:0] rot);
        reg [31:0] p;
        begin
            case (rot)
                2'd0: p = pattern;
                2'd1: p = {pattern[7:0],  pattern[31:8]};
                2'd2: p = {pattern[15:0], pattern[31:16]};
                default: p = {pattern[23:0], pattern[31:24]};
            endcase
            fill_data = {16{p}};
        end
    endfunction

    // ------------------------------------------------------------------
    // Register access helpers (used from the state machine below).

    // Sets every state word and register to its reset value (reset, SOFT_RESET).
    task automatic reset_regs;
        begin
            r_header      <= `VFPGA_ST_HEADER_RESET;
            r_ctrl        <= `VFPGA_ST_CTRL_RESET;
            r_flags       <= `VFPGA_ST_FLAGS_RESET;
            r_scratch     <= `VFPGA_ST_SCRATCH_RESET;
            r_err_code    <= `VFPGA_ST_ERR_CODE_RESET;
            r_err_addr_lo <= `VFPGA_ST_ERR_ADDR_LO_RESET;
            r_err_addr_hi <= `VFPGA_ST_ERR_ADDR_HI_RESET;
            r_irq_status  <= `VFPGA_ST_IRQ_STATUS_RESET;
            r_irq_mask    <= `VFPGA_ST_IRQ_MASK_RESET;
            r_irq_pending <= `VFPGA_ST_IRQ_PENDING_RESET;
            r_sq_base_lo  <= `VFPGA_ST_SQ_BASE_LO_RESET;
            r_sq_base_hi  <= `VFPGA_ST_SQ_BASE_HI_RESET;
            r_sq_size     <= `VFPGA_ST_SQ_SIZE_RESET;
            r_sq_head     <= `VFPGA_ST_SQ_HEAD_RESET;
            r_sq_tail     <= `VFPGA_ST_SQ_TAIL_RESET;
            r_cq_base_lo  <= `VFPGA_ST_CQ_BASE_LO_RESET;
            r_cq_base_hi  <= `VFPGA_ST_CQ_BASE_HI_RESET;
            r_cq_size     <= `VFPGA_ST_CQ_SIZE_RESET;
            r_cq_head     <= `VFPGA_ST_CQ_HEAD_RESET;
            r_cq_tail     <= `VFPGA_ST_CQ_TAIL_RESET;
            r_timer       <= {`VFPGA_ST_TIMER_HI_RESET, `VFPGA_ST_TIMER_LO_RESET};
            r_cnt_desc    <= `VFPGA_ST_CNT_DESC_RESET;
            r_cnt_err     <= `VFPGA_ST_CNT_ERR_RESET;
            r_cnt_bytes   <= {`VFPGA_ST_CNT_BYTES_HI_RESET, `VFPGA_ST_CNT_BYTES_LO_RESET};
            r_cur_flags   <= `VFPGA_ST_CUR_FLAGS_RESET;
            r_cur_ctl     <= `VFPGA_ST_CUR_CTL_RESET;
            r_cur_tag     <= `VFPGA_ST_CUR_TAG_RESET;
            r_cur_src_lo  <= `VFPGA_ST_CUR_SRC_LO_RESET;
            r_cur_src_hi  <= `VFPGA_ST_CUR_SRC_HI_RESET;
            r_cur_dst_lo  <= `VFPGA_ST_CUR_DST_LO_RESET;
            r_cur_dst_hi  <= `VFPGA_ST_CUR_DST_HI_RESET;
            r_cur_len     <= `VFPGA_ST_CUR_LEN_RESET;
            r_cur_pattern <= `VFPGA_ST_CUR_PATTERN_RESET;
            r_cur_done    <= `VFPGA_ST_CUR_DONE_RESET;
            r_cur_crc     <= `VFPGA_ST_CUR_CRC_RESET;
            r_cur_slot    <= `VFPGA_ST_CUR_SLOT_RESET;
            s_quiescing      <= 1'b0;
            s_quiesced       <= 1'b0;
            s_state_invalid  <= 1'b0;
            r_state_idx      <= `VFPGA_REG_STATE_IDX_RESET;
            r_state_err      <= `VFPGA_REG_STATE_ERR_RESET;
            r_timer_hi_latch <= `VFPGA_REG_TIMER_HI_RESET;
            r_dirty_sel      <= `VFPGA_REG_DIRTY_SEL_RESET;
            r_log_enable     <= 1'b0;
            r_log_overflow   <= 1'b0;
            r_log_base_lo    <= `VFPGA_REG_DMALOG_BASE_LO_RESET;
            r_log_base_hi    <= `VFPGA_REG_DMALOG_BASE_HI_RESET;
            r_log_pages      <= `VFPGA_REG_DMALOG_PAGES_RESET;
            r_log_sel        <= `VFPGA_REG_DMALOG_SEL_RESET;
            r_throttle       <= `VFPGA_REG_DMA_THROTTLE_RESET;
            thr_cnt          <= 16'd0;
        end
    endtask

    // Clears the in-flight descriptor words.
    task automatic clear_cur;
        begin
            r_cur_flags <= 32'd0; r_cur_ctl <= 32'd0; r_cur_tag <= 32'd0;
            r_cur_src_lo <= 32'd0; r_cur_src_hi <= 32'd0;
            r_cur_dst_lo <= 32'd0; r_cur_dst_hi <= 32'd0;
            r_cur_len <= 32'd0; r_cur_pattern <= 32'd0; r_cur_done <= 32'd0;
            r_cur_crc <= 32'd0; r_cur_slot <= 32'd0;
        end
    endtask

    // Records an error: ERR_CODE, ERR_ADDR and the ERR cause.
    task automatic raise_err(input [7:0] code, input [63:0] addr);
        begin
            r_err_code    <= {24'd0, code};
            r_err_addr_lo <= addr[31:0];
            r_err_addr_hi <= addr[63:32];
            r_irq_status[`VFPGA_VECTOR_ERR]  <= 1'b1;
            r_irq_pending[`VFPGA_VECTOR_ERR] <= 1'b1;
        end
    endtask

    // Writes state word `idx` (state port, while quiesced).
    task automatic st_write(input [7:0] idx, input [31:0] v);
        begin
            case (idx)
                `VFPGA_ST_HEADER:       r_header <= v;
                `VFPGA_ST_CTRL:         r_ctrl <= v;
                `VFPGA_ST_FLAGS:        r_flags <= v;
                `VFPGA_ST_SCRATCH:      r_scratch <= v;
                `VFPGA_ST_ERR_CODE:     r_err_code <= v;
                `VFPGA_ST_ERR_ADDR_LO:  r_err_addr_lo <= v;
                `VFPGA_ST_ERR_ADDR_HI:  r_err_addr_hi <= v;
                `VFPGA_ST_IRQ_STATUS:   r_irq_status <= v;
                `VFPGA_ST_IRQ_MASK:     r_irq_mask <= v;
                `VFPGA_ST_IRQ_PENDING:  r_irq_pending <= v;
                `VFPGA_ST_SQ_BASE_LO:   r_sq_base_lo <= v;
                `VFPGA_ST_SQ_BASE_HI:   r_sq_base_hi <= v;
                `VFPGA_ST_SQ_SIZE:      r_sq_size <= v;
                `VFPGA_ST_SQ_HEAD:      r_sq_head <= v;
                `VFPGA_ST_SQ_TAIL:      r_sq_tail <= v;
                `VFPGA_ST_CQ_BASE_LO:   r_cq_base_lo <= v;
                `VFPGA_ST_CQ_BASE_HI:   r_cq_base_hi <= v;
                `VFPGA_ST_CQ_SIZE:      r_cq_size <= v;
                `VFPGA_ST_CQ_HEAD:      r_cq_head <= v;
                `VFPGA_ST_CQ_TAIL:      r_cq_tail <= v;
                `VFPGA_ST_TIMER_LO:     r_timer[31:0] <= v;
                `VFPGA_ST_TIMER_HI:     r_timer[63:32] <= v;
                `VFPGA_ST_CNT_DESC:     r_cnt_desc <= v;
                `VFPGA_ST_CNT_ERR:      r_cnt_err <= v;
                `VFPGA_ST_CNT_BYTES_LO: r_cnt_bytes[31:0] <= v;
                `VFPGA_ST_CNT_BYTES_HI: r_cnt_bytes[63:32] <= v;
                `VFPGA_ST_CUR_FLAGS:    r_cur_flags <= v;
                `VFPGA_ST_CUR_CTL:      r_cur_ctl <= v;
                `VFPGA_ST_CUR_TAG:      r_cur_tag <= v;
                `VFPGA_ST_CUR_SRC_LO:   r_cur_src_lo <= v;
                `VFPGA_ST_CUR_SRC_HI:   r_cur_src_hi <= v;
                `VFPGA_ST_CUR_DST_LO:   r_cur_dst_lo <= v;
                `VFPGA_ST_CUR_DST_HI:   r_cur_dst_hi <= v;
                `VFPGA_ST_CUR_LEN:      r_cur_len <= v;
                `VFPGA_ST_CUR_PATTERN:  r_cur_pattern <= v;
                `VFPGA_ST_CUR_DONE:     r_cur_done <= v;
                `VFPGA_ST_CUR_CRC:      r_cur_crc <= v;
                `VFPGA_ST_CUR_SLOT:     r_cur_slot <= v;
                default: ;
            endcase
        end
    endtask

    // Host page `p` (address bits 63:12) lies in the DMA-log window.
    function automatic log_inside(input [51:0] p);
        reg [51:0] base, off;
        begin
            base = {r_log_base_hi, r_log_base_lo[31:12]};
            off  = p - base;
            log_inside = p >= base && off < {20'd0, r_log_pages};
        end
    endfunction

    // Bit of host page `p` in the DMA-log bitmap (valid when log_inside).
    function automatic [31:0] log_offset(input [31:0] p);
        log_offset = p - {r_log_base_hi[11:0], r_log_base_lo[31:12]};
    endfunction

    // ------------------------------------------------------------------
    // Pieces of the state machine. The tasks assign the registers of the
    // always block below and are only called from it.

    reg m_dm_ok;            // the BAR2 access went to device memory

    task automatic finish_mmio(input [63:0] rdata);
        begin
            mmio_rsp_valid <= 1'b1;
            mmio_rsp_rdata <= m_write ? 64'd0 : rdata;
            state          <= S_M_RSP;
        end
    endtask

    // Records the result of a validation in STATE_ERR.
    task automatic set_state_err(input [15:0] v);
        begin
            r_state_err <= 32'd0;
            r_state_err[`VFPGA_STATE_ERR_CODE_LSB +: `VFPGA_STATE_ERR_CODE_WIDTH] <= v[7:0];
            r_state_err[`VFPGA_STATE_ERR_WORD_LSB +: `VFPGA_STATE_ERR_WORD_WIDTH] <= v[15:8];
        end
    endtask

    // SOFT_RESET (datasheet §8): reset values, both bitmaps cleared.
    task automatic soft_reset;
        begin
            reset_regs();
            bmd_start <= 1'b1; bmd_op <= BM_CLEAR; bmd_arg <= dirty_groups;
            bml_start <= 1'b1; bml_op <= BM_CLEAR; bml_arg <= LOG_WORDS;
            m_sweep_d <= 1'b1;
            m_sweep_l <= 1'b1;
            state     <= S_M_SWEEP;
        end
    endtask

    // A BAR0 register read at `off` (32 bits), with its side effects.
    task automatic reg_read(input [11:0] off, output [31:0] rd, output wait_);
        begin
            rd = 32'd0;
            wait_ = 1'b0;
            case (off)
                `VFPGA_REG_ID:               rd = `VFPGA_REG_ID_RESET;
                `VFPGA_REG_RTL_VERSION:      rd = `VFPGA_REG_RTL_VERSION_RESET;
                `VFPGA_REG_FEATURES:         rd = `VFPGA_REG_FEATURES_RESET;
                `VFPGA_REG_PCI_ID:           rd = {PCI_DEVICE_ID[15:0], PCI_VENDOR_ID[15:0]};
                `VFPGA_REG_DEVMEM_PAGES:     rd = devmem_pages;
                `VFPGA_REG_DMALOG_MAX_PAGES: rd = dmalog_max;
                `VFPGA_REG_STATE_INFO:       rd = `VFPGA_REG_STATE_INFO_RESET;
                `VFPGA_REG_SCRATCH:          rd = r_scratch & `VFPGA_ST_SCRATCH_MASK;
                `VFPGA_REG_CTRL:             rd = r_ctrl & `VFPGA_ST_CTRL_MASK;
                `VFPGA_REG_STATUS: begin
                    rd[`VFPGA_STATUS_BUSY_LSB]          = busy;
                    rd[`VFPGA_STATUS_QUIESCING_LSB]     = s_quiescing;
                    rd[`VFPGA_STATUS_QUIESCED_LSB]      = s_quiesced;
                    rd[`VFPGA_STATUS_HALTED_LSB]        = halted;
                    rd[`VFPGA_STATUS_STATE_INVALID_LSB] = s_state_invalid;
                end
                `VFPGA_REG_ERR_CODE:         rd = r_err_code & `VFPGA_ST_ERR_CODE_MASK;
                `VFPGA_REG_ERR_ADDR_LO:      rd = r_err_addr_lo & `VFPGA_ST_ERR_ADDR_LO_MASK;
                `VFPGA_REG_ERR_ADDR_HI:      rd = r_err_addr_hi & `VFPGA_ST_ERR_ADDR_HI_MASK;
                `VFPGA_REG_TIMER_LO: begin
                    rd = r_timer[31:0];
                    r_timer_hi_latch <= r_timer[63:32];
                end
                `VFPGA_REG_TIMER_HI:         rd = r_timer_hi_latch;
                `VFPGA_REG_IRQ_STATUS:       rd = r_irq_status & `VFPGA_ST_IRQ_STATUS_MASK;
                `VFPGA_REG_IRQ_MASK:         rd = r_irq_mask & `VFPGA_ST_IRQ_MASK_MASK;
                `VFPGA_REG_IRQ_PENDING:      rd = r_irq_pending & `VFPGA_ST_IRQ_PENDING_MASK;
                `VFPGA_REG_SQ_BASE_LO:       rd = r_sq_base_lo & `VFPGA_ST_SQ_BASE_LO_MASK;
                `VFPGA_REG_SQ_BASE_HI:       rd = r_sq_base_hi & `VFPGA_ST_SQ_BASE_HI_MASK;
                `VFPGA_REG_SQ_SIZE:          rd = r_sq_size & `VFPGA_ST_SQ_SIZE_MASK;
                `VFPGA_REG_SQ_TAIL:          rd = r_sq_tail & `VFPGA_ST_SQ_TAIL_MASK;
                `VFPGA_REG_SQ_HEAD:          rd = r_sq_head & `VFPGA_ST_SQ_HEAD_MASK;
                `VFPGA_REG_CQ_BASE_LO:       rd = r_cq_base_lo & `VFPGA_ST_CQ_BASE_LO_MASK;
                `VFPGA_REG_CQ_BASE_HI:       rd = r_cq_base_hi & `VFPGA_ST_CQ_BASE_HI_MASK;
                `VFPGA_REG_CQ_SIZE:          rd = r_cq_size & `VFPGA_ST_CQ_SIZE_MASK;
                `VFPGA_REG_CQ_HEAD:          rd = r_cq_head & `VFPGA_ST_CQ_HEAD_MASK;
                `VFPGA_REG_CQ_TAIL:          rd = r_cq_tail & `VFPGA_ST_CQ_TAIL_MASK;
                `VFPGA_REG_CNT_DESC:         rd = r_cnt_desc & `VFPGA_ST_CNT_DESC_MASK;
                `VFPGA_REG_CNT_ERR:          rd = r_cnt_err & `VFPGA_ST_CNT_ERR_MASK;
                `VFPGA_REG_CNT_BYTES_LO:     rd = r_cnt_bytes[31:0];
                `VFPGA_REG_CNT_BYTES_HI:     rd = r_cnt_bytes[63:32];
                `VFPGA_REG_DIRTY_SEL:        rd = r_dirty_sel;
                `VFPGA_REG_DIRTY_BITS: begin
                    bmd_start     <= 1'b1;
                    bmd_op        <= BM_TAKE;
                    bmd_arg       <= r_dirty_sel;
                    m_bm_log      <= 1'b0;
                    m_bm_sel_next <= (r_dirty_sel + 32'd1) & (dirty_groups - 32'd1);
                    state         <= S_M_BM;
                    wait_ = 1'b1;
                end
                `VFPGA_REG_DMALOG_CTRL: begin
                    rd[`VFPGA_DMALOG_CTRL_ENABLE_LSB]   = r_log_enable;
                    rd[`VFPGA_DMALOG_CTRL_OVERFLOW_LSB] = r_log_overflow;
                end
                `VFPGA_REG_DMALOG_BASE_LO:   rd = r_log_base_lo;
                `VFPGA_REG_DMALOG_BASE_HI:   rd = r_log_base_hi;
                `VFPGA_REG_DMALOG_PAGES:     rd = r_log_pages;
                `VFPGA_REG_DMALOG_SEL:       rd = r_log_sel;
                `VFPGA_REG_DMA_THROTTLE:     rd = r_throttle;
                `VFPGA_REG_DMALOG_BITS: begin
                    if (r_log_sel < log_groups) begin
                        bml_start     <= 1'b1;
                        bml_op        <= BM_TAKE;
                        bml_arg       <= r_log_sel;
                        m_bm_log      <= 1'b1;
                        m_bm_sel_next <= (r_log_sel + 32'd1 == log_groups) ? 32'd0 : r_log_sel + 32'd1;
                        state         <= S_M_BM;
                        wait_ = 1'b1;
                    end else begin
                        r_log_sel <= 32'd0;
                    end
                end
                `VFPGA_REG_STATE_IDX:        rd = r_state_idx;
                `VFPGA_REG_STATE_DATA: begin
                    if (s_quiesced && r_state_idx < `VFPGA_STATE_WORDS) begin
                        rd = st_rd_q;
                        r_state_idx <= r_state_idx + 32'd1;
                    end
                end
                `VFPGA_REG_STATE_ERR:        rd = r_state_err;
                default:                     rd = 32'd0;
            endcase
        end
    endtask

    // A BAR0 register write at `off` (32 bits). While quiesced only the
    // host-side machinery, the state port, SOFT_RESET and RESUME act (§8).
    task automatic reg_write(input [11:0] off, input [31:0] v, output wait_);
        reg        q, en;
        begin
            q  = s_quiesced;
            en = enable;
            wait_ = 1'b0;
            case (off)
                `VFPGA_REG_SCRATCH: if (!q) r_scratch <= v;
                `VFPGA_REG_CTRL: begin
                    if (v[`VFPGA_CTRL_SOFT_RESET_LSB]) begin
                        soft_reset();
                        wait_ = 1'b1;
                    end else if (q) begin
                        if (v[`VFPGA_CTRL_RESUME_LSB]) begin
                            m_resume <= 1'b1;
                            state    <= S_M_VAL0;
                            wait_ = 1'b1;
                        end
                    end else begin
                        r_ctrl <= v & `VFPGA_ST_CTRL_MASK;
                        if (v[`VFPGA_CTRL_QUIESCE_LSB]) s_quiescing <= 1'b1;
                    end
                end
                `VFPGA_REG_ERR_CODE: if (!q) r_err_code <= 32'd0;
                `VFPGA_REG_IRQ_STATUS: if (!q) begin
                    if (v[`VFPGA_IRQ_STATUS_CPL_LSB]) begin
                        r_irq_status[`VFPGA_IRQ_STATUS_CPL_LSB]  <= 1'b0;
                        r_irq_pending[`VFPGA_IRQ_STATUS_CPL_LSB] <= 1'b0;
                    end
                    if (v[`VFPGA_IRQ_STATUS_ERR_LSB]) begin
                        r_irq_status[`VFPGA_IRQ_STATUS_ERR_LSB]  <= 1'b0;
                        r_irq_pending[`VFPGA_IRQ_STATUS_ERR_LSB] <= 1'b0;
                    end
                end
                `VFPGA_REG_IRQ_MASK: if (!q) r_irq_mask <= v & `VFPGA_ST_IRQ_MASK_MASK;
                `VFPGA_REG_SQ_BASE_LO: if (!q && !en && !cur_valid) r_sq_base_lo <= v & `VFPGA_ST_SQ_BASE_LO_MASK;
                `VFPGA_REG_SQ_BASE_HI: if (!q && !en && !cur_valid) r_sq_base_hi <= v;
                `VFPGA_REG_SQ_SIZE: if (!q && !en && !cur_valid && ring_size_ok(v)) begin
                    r_sq_size <= v;
                    r_sq_head <= 32'd0;
                    r_sq_tail <= 32'd0;
                end
                `VFPGA_REG_SQ_TAIL: if (!q) r_sq_tail <= (r_sq_size == 32'd0) ? 32'd0 : {20'd0, v[11:0] & sq_mask};
                `VFPGA_REG_CQ_BASE_LO: if (!q && !en && !cur_valid) r_cq_base_lo <= v & `VFPGA_ST_CQ_BASE_LO_MASK;
                `VFPGA_REG_CQ_BASE_HI: if (!q && !en && !cur_valid) r_cq_base_hi <= v;
                `VFPGA_REG_CQ_SIZE: if (!q && !en && !cur_valid && ring_size_ok(v)) begin
                    r_cq_size <= v;
                    r_cq_head <= 32'd0;
                    r_cq_tail <= `VFPGA_REG_CQ_TAIL_RESET;
                end
                `VFPGA_REG_CQ_HEAD: if (!q) r_cq_head <= (r_cq_size == 32'd0) ? 32'd0 : {20'd0, v[11:0] & cq_mask};
                `VFPGA_REG_DIRTY_SEL: r_dirty_sel <= v & (dirty_groups - 32'd1);
                `VFPGA_REG_DMALOG_CTRL: begin
                    r_log_enable <= v[`VFPGA_DMALOG_CTRL_ENABLE_LSB];
                    if (v[`VFPGA_DMALOG_CTRL_OVERFLOW_LSB]) r_log_overflow <= 1'b0;
                    if (v[`VFPGA_DMALOG_CTRL_ENABLE_LSB] && !r_log_enable) begin
                        // Logging starts: the bitmap and OVERFLOW are cleared.
                        r_log_overflow <= 1'b0;
                        bml_start <= 1'b1; bml_op <= BM_CLEAR; bml_arg <= LOG_WORDS;
                        m_sweep_d <= 1'b0;
                        m_sweep_l <= 1'b1;
                        state     <= S_M_SWEEP;
                        wait_ = 1'b1;
                    end
                end
                `VFPGA_REG_DMALOG_BASE_LO: if (!r_log_enable) r_log_base_lo <= v & 32'hffff_f000;
                `VFPGA_REG_DMALOG_BASE_HI: if (!r_log_enable) r_log_base_hi <= v;
                `VFPGA_REG_DMALOG_PAGES:   if (!r_log_enable) r_log_pages <= (v > dmalog_max) ? dmalog_max : v;
                `VFPGA_REG_DMALOG_SEL:     r_log_sel <= v;
                `VFPGA_REG_DMA_THROTTLE:   r_throttle <= v & THR_MASK;
                `VFPGA_REG_STATE_IDX:      r_state_idx <= v;
                `VFPGA_REG_STATE_DATA: begin
                    if (q && r_state_idx < `VFPGA_STATE_WORDS) begin
                        st_write(r_state_idx[7:0], v);
                        r_state_idx <= r_state_idx + 32'd1;
                    end
                end
                `VFPGA_REG_STATE_CTRL: begin
                    if (v[`VFPGA_STATE_CTRL_VALIDATE_LSB]) begin
                        m_resume <= 1'b0;
                        state    <= S_M_VAL0;
                        wait_ = 1'b1;
                    end
                end
                default: ;
            endcase
        end
    endtask

    // BAR2: checks the byte enables and the range, then issues the
    // device-memory request (or refuses the access).
    task automatic start_bar2(input wr, input [31:0] addr, input [7:0] be, input [63:0] wdata);
        integer k;
        reg [3:0]  first, cnt;
        reg [7:0]  x;
        reg [32:0] end_off;
        begin
            first = 4'd0;
            cnt   = 4'd0;
            for (k = 7; k >= 0; k = k - 1)
                if (be[k]) first = k[3:0];
            for (k = 0; k < 8; k = k + 1)
                if (be[k]) cnt = cnt + 4'd1;
            x = be >> first[2:0];
            end_off = {1'b0, addr} + {29'd0, first} + {29'd0, cnt};
            m_lane <= first[2:0];
            if (be == 8'd0 || (x & (x + 8'd1)) != 8'd0 || end_off > devmem_bytes) begin
                m_dm_ok <= 1'b0;
            end else begin
                m_dm_ok      <= 1'b1;
                dm_req_valid <= 1'b1;
                dm_req_write <= wr;
                dm_req_addr  <= addr + {28'd0, first};
                dm_req_len   <= {3'd0, cnt};
                dm_req_wdata <= {448'd0, wdata >> {first[2:0], 3'b000}};
            end
        end
    endtask

    // Starts the first applicable step (datasheet §5.3).
    task automatic start_step;
        reg [63:0] a, s, d;
        reg [6:0]  n;
        begin
            if (cpl_due) begin
                step_kind <= 2'd2;
                a = {r_cq_base_hi, r_cq_base_lo} + {48'd0, cq_idx, 4'd0};
                c_addr        <= a;
                dma_req_valid <= 1'b1;
                dma_req_write <= 1'b1;
                dma_req_addr  <= a;
                dma_req_len   <= CPL_BYTES[6:0];
                dma_req_wdata <= {384'd0,
                                  r_cur_done,
                                  (cur_op == `VFPGA_OPCODE_CRC32C && cur_status == `VFPGA_CPLSTATUS_OK)
                                      ? ~r_cur_crc : 32'd0,
                                  r_cq_tail[31], 3'd0, r_cur_slot[11:0], 8'd0, cur_status,
                                  r_cur_tag};
                state <= S_C_WR;
            end else if (cur_valid) begin
                step_kind <= 2'd1;
                thr_cnt   <= r_throttle[15:0];   // the gap that follows this burst
                s = {r_cur_src_hi, r_cur_src_lo} + {32'd0, r_cur_done};
                d = {r_cur_dst_hi, r_cur_dst_lo} + {32'd0, r_cur_done};
                n = burst_len(cur_op, r_cur_len - r_cur_done, s[11:0], d[11:0]);
                b_src <= s;
                b_dst <= d;
                b_n   <= n;
                if (is_host_src(cur_op)) begin
                    dma_req_valid <= 1'b1;
                    dma_req_write <= 1'b0;
                    dma_req_addr  <= s;
                    dma_req_len   <= n;
                    state <= S_B_RD;
                end else if (is_dev_src(cur_op)) begin
                    dm_req_valid <= 1'b1;
                    dm_req_write <= 1'b0;
                    dm_req_addr  <= s[31:0];
                    dm_req_len   <= n;
                    state <= S_B_RD;
                end else if (is_dev_dst(cur_op)) begin
                    dm_req_valid <= 1'b1;
                    dm_req_write <= 1'b1;
                    dm_req_addr  <= d[31:0];
                    dm_req_len   <= n;
                    dm_req_wdata <= fill_data(r_cur_pattern, r_cur_done[1:0]);
                    state <= S_B_WR;
                end else begin
                    dma_req_valid <= 1'b1;
                    dma_req_write <= 1'b1;
                    dma_req_addr  <= d;
                    dma_req_len   <= n;
                    dma_req_wdata <= fill_data(r_cur_pattern, r_cur_done[1:0]);
                    state <= S_B_WR;
                end
            end else begin
                step_kind <= 2'd0;
                a = {r_sq_base_hi, r_sq_base_lo} + {47'd0, r_sq_head[11:0], 5'd0};
                c_addr        <= a;
                dma_req_valid <= 1'b1;
                dma_req_write <= 1'b0;
                dma_req_addr  <= a;
                dma_req_len   <= DESC_BYTES[6:0];
                state <= S_F_RSP;
            end
        end
    endtask

    // Burst: issues the destination write of `data`.
    task automatic start_write(input [511:0] data);
        begin
            if (is_dev_dst(cur_op)) begin
                dm_req_valid <= 1'b1;
                dm_req_write <= 1'b1;
                dm_req_addr  <= b_dst[31:0];
                dm_req_len   <= b_n;
                dm_req_wdata <= data;
            end else begin
                dma_req_valid <= 1'b1;
                dma_req_write <= 1'b1;
                dma_req_addr  <= b_dst;
                dma_req_len   <= b_n;
                dma_req_wdata <= data;
            end
            state <= S_B_WR;
        end
    endtask

    // A host write to page `p` finished: set its DMA-log bit (returns 1 when a
    // bitmap operation was started) or record OVERFLOW.
    task automatic log_write(input [51:0] p, output started);
        begin
            started = 1'b0;
            if (r_log_enable) begin
                if (log_inside(p)) begin
                    bml_start <= 1'b1;
                    bml_op    <= BM_SET;
                    bml_arg   <= log_offset(p[31:0]);
                    started = 1'b1;
                end else begin
                    r_log_overflow <= 1'b1;
                end
            end
        end
    endtask

    // Complete: the completion entry is written; account and retire.
    task automatic finish_completion;
        begin
            if (cq_idx == cq_mask) r_cq_tail <= {~r_cq_tail[31], 31'd0};
            else                   r_cq_tail <= {r_cq_tail[31], 19'd0, cq_idx + 12'd1};
            r_cnt_desc  <= r_cnt_desc + 32'd1;
            if (cur_status != `VFPGA_CPLSTATUS_OK) r_cnt_err <= r_cnt_err + 32'd1;
            r_cnt_bytes <= r_cnt_bytes + {32'd0, r_cur_done};
            if (r_cur_ctl[`VFPGA_DESC_CTL_IRQ_LSB]) begin
                r_irq_status[`VFPGA_VECTOR_CPL]  <= 1'b1;
                r_irq_pending[`VFPGA_VECTOR_CPL] <= 1'b1;
            end
            clear_cur();
            state <= S_IDLE;
        end
    endtask

    // ------------------------------------------------------------------
    // The state machine.
    // A 32-bit BAR0 access that arrives while the engine has waited
    // PEEK_AFTER cycles for a DMA response is served at once (datasheet
    // §5.3, "MMIO while a step waits for DMA"): on a host where DMA answers
    // can depend on the CPU that issued this access (a VMM serving DMA by
    // messages), waiting for the step would deadlock. Reads of every
    // register but the TAKE and state-port ones qualify, and writes of the
    // run-time registers a driver uses while DMA is in flight (doorbells,
    // interrupt acknowledge and mask, SCRATCH); everything else waits for
    // the step as before. Never in the cycle a DMA response arrives, so an
    // access is always entirely before the step's commit.
    localparam [4:0] PEEK_AFTER = 5'd16;
    reg  [4:0]  dma_wait_cnt;      // cycles spent waiting for a DMA response
    reg         pk_rsp;            // the MMIO response offered is a peek's
    wire        in_dma_wait = state == S_F_RSP || state == S_C_WR
                              || (state == S_B_RD && !is_dev_src(cur_op))
                              || (state == S_B_WR && !is_dev_dst(cur_op));
    wire [11:0] pk_off = {mmio_req_addr[11:3], mmio_req_be == 8'hf0, 2'b00};
    wire        pk_rd_ok = pk_off != `VFPGA_REG_DIRTY_BITS && pk_off != `VFPGA_REG_DMALOG_BITS
                           && pk_off != `VFPGA_REG_STATE_DATA;
    wire        pk_wr_ok = pk_off == `VFPGA_REG_SQ_TAIL || pk_off == `VFPGA_REG_CQ_HEAD
                           || pk_off == `VFPGA_REG_IRQ_STATUS || pk_off == `VFPGA_REG_IRQ_MASK
                           || pk_off == `VFPGA_REG_SCRATCH;
    wire        pk_reg_ok = mmio_req_write ? pk_wr_ok : pk_rd_ok;
    wire        peek_ok = in_dma_wait && dma_wait_cnt == PEEK_AFTER && !dma_rsp_valid
                          && !pk_rsp && !mmio_rsp_valid && mmio_req_valid && !mmio_req_bar2
                          && (mmio_req_be == 8'h0f || mmio_req_be == 8'hf0)
                          && mmio_req_addr[31:12] == 20'd0 && pk_reg_ok;
    assign mmio_req_ready = ((state == S_IDLE) && !s_quiescing && !(prefer_engine && step_go) && !pk_rsp)
                            || peek_ok;

    always @(posedge clk) begin : fsm
        reg [11:0] dw_off;
        reg [31:0] dw_wdata, dw_rdata;
        reg        dw_last, wt;
        reg [31:0] pk_rd;
        // A peek never waits (peek_ok excludes the registers that do).
        /* verilator lint_off UNUSEDSIGNAL */
        reg        pk_wt;
        /* verilator lint_on UNUSEDSIGNAL */
        reg [7:0]  st;

        if (!rst_n) begin
            reset_regs();
            state          <= S_INIT;
            prefer_engine  <= 1'b0;
            m_write        <= 1'b0;
            m_bar2         <= 1'b0;
            m_half         <= 1'b0;
            m_need_rsp     <= 1'b0;
            m_sweep_d      <= 1'b1;
            m_sweep_l      <= 1'b1;
            m_addr         <= 32'd0;
            m_be           <= 8'd0;
            m_wdata        <= 64'd0;
            m_lane         <= 3'd0;
            m_dm_ok        <= 1'b0;
            m_bm_sel_next  <= 32'd0;
            m_bm_log       <= 1'b0;
            m_resume       <= 1'b0;
            step_kind      <= 2'd0;
            dma_wait_cnt   <= 5'd0;
            pk_rsp         <= 1'b0;
            mmio_rsp_valid <= 1'b0;
            mmio_rsp_rdata <= 64'd0;
            mmio_rd        <= 64'd0;
            dma_req_valid  <= 1'b0;
            dma_req_write  <= 1'b0;
            dma_req_addr   <= 64'd0;
            dma_req_len    <= 7'd0;
            dma_req_wdata  <= 512'd0;
            dm_req_valid   <= 1'b0;
            dm_req_write   <= 1'b0;
            dm_req_addr    <= 32'd0;
            dm_req_len     <= 7'd0;
            dm_req_wdata   <= 512'd0;
            irq_valid      <= 1'b0;
            irq_vector     <= 8'd0;
            bmd_start <= 1'b0; bmd_op <= BM_CLEAR; bmd_arg <= 32'd0;
            bml_start <= 1'b0; bml_op <= BM_CLEAR; bml_arg <= 32'd0;
            b_src <= 64'd0; b_dst <= 64'd0; b_n <= 7'd0; c_addr <= 64'd0;
        end else begin
            bmd_start <= 1'b0;
            bml_start <= 1'b0;

            // Handshakes of the request ports.
            if (dma_req_valid && dma_req_ready) dma_req_valid <= 1'b0;
            if (dm_req_valid && dm_req_ready)   dm_req_valid  <= 1'b0;

            // Timer: counts device cycles while not quiesced.
            if (!s_quiesced) r_timer <= r_timer + 64'd1;

            // DMA_THROTTLE gap (loaded when a burst starts, see start_step):
            // counts down outside steps; a quiesce ends it (timing, not state).
            if (s_quiesced)                        thr_cnt <= 16'd0;
            else if (thr_cnt != 16'd0 && !in_step) thr_cnt <= thr_cnt - 16'd1;

            // MMIO reads during a long DMA wait (see peek_ok).
            if (!in_dma_wait)                     dma_wait_cnt <= 5'd0;
            else if (dma_wait_cnt != PEEK_AFTER)  dma_wait_cnt <= dma_wait_cnt + 5'd1;
            if (pk_rsp && mmio_rsp_ready) begin
                mmio_rsp_valid <= 1'b0;
                pk_rsp         <= 1'b0;
            end
            if (peek_ok) begin
                pk_rd = 32'd0;
                pk_wt = 1'b0;
                if (mmio_req_write)
                    reg_write(pk_off, mmio_req_be == 8'hf0 ? mmio_req_wdata[63:32] : mmio_req_wdata[31:0], pk_wt);
                else
                    reg_read(pk_off, pk_rd, pk_wt);
                mmio_rsp_valid <= 1'b1;
                mmio_rsp_rdata <= mmio_req_be == 8'hf0 ? {pk_rd, 32'd0} : {32'd0, pk_rd};
                pk_rsp         <= 1'b1;
            end

            // Interrupt messages (datasheet §4): vector 0 first; a message
            // offered on irq_valid stays offered until irq_ready.
            if (irq_valid) begin
                if (irq_ready) begin
                    irq_valid <= 1'b0;
                    if (irq_vector[0]) r_irq_pending[1] <= 1'b0;
                    else               r_irq_pending[0] <= 1'b0;
                end
            end else if (run_ok && irq_deliv != 2'b00) begin
                irq_valid  <= 1'b1;
                irq_vector <= irq_deliv[0] ? VEC_CPL[7:0] : VEC_ERR[7:0];
            end

            case (state)
            S_IDLE: begin
                if (s_quiescing && !irq_valid) begin
                    // Between steps: the quiesce takes effect.
                    s_quiescing <= 1'b0;
                    s_quiesced  <= 1'b1;
                end else if (mmio_req_valid && mmio_req_ready) begin
                    m_write    <= mmio_req_write;
                    m_bar2     <= mmio_req_bar2;
                    m_addr     <= {mmio_req_addr[31:3], 3'b000};
                    m_be       <= mmio_req_be;
                    m_wdata    <= mmio_req_wdata;
                    m_need_rsp <= 1'b1;
                    mmio_rd    <= 64'd0;
                    if (mmio_req_bar2) begin
                        state <= S_M_DM;
                        start_bar2(mmio_req_write, {mmio_req_addr[31:3], 3'b000}, mmio_req_be, mmio_req_wdata);
                    end else if (mmio_req_be == 8'h0f || mmio_req_be == 8'hff) begin
                        m_half <= 1'b0;
                        state  <= S_M_DW;
                    end else if (mmio_req_be == 8'hf0) begin
                        m_half <= 1'b1;
                        state  <= S_M_DW;
                    end else begin
                        // Not a 32- or 64-bit access: reads all ones, writes ignored.
                        mmio_rsp_valid <= 1'b1;
                        mmio_rsp_rdata <= mmio_req_write ? 64'd0 : {64{1'b1}};
                        state          <= S_M_RSP;
                    end
                end else if (step_go) begin
                    prefer_engine <= 1'b0;
                    start_step();
                end else begin
                    prefer_engine <= 1'b0;
                end
            end

            S_M_DW: begin
                dw_off   = {m_addr[11:3], m_half, 2'b00};
                dw_last  = m_half || m_be[7:4] != 4'hf;
                dw_wdata = m_half ? m_wdata[63:32] : m_wdata[31:0];
                dw_rdata = 32'd0;
                wt       = 1'b0;
                // Offsets past the register page (the MSI-X table and PBA are
                // the bridge's) read 0 and ignore writes.
                if (m_addr[31:12] == 20'd0) begin
                    if (m_write) reg_write(dw_off, dw_wdata, wt);
                    else         reg_read(dw_off, dw_rdata, wt);
                end
                if (!wt) begin
                    if (m_half) mmio_rd[63:32] <= dw_rdata; else mmio_rd[31:0] <= dw_rdata;
                    if (dw_last) finish_mmio(m_half ? {dw_rdata, mmio_rd[31:0]} : {32'd0, dw_rdata});
                    else         m_half <= 1'b1;
                end
            end

            S_M_BM: begin
                if (m_bm_log ? bml_done : bmd_done) begin
                    dw_rdata = m_bm_log ? bml_rdata : bmd_rdata;
                    if (m_bm_log) r_log_sel <= m_bm_sel_next; else r_dirty_sel <= m_bm_sel_next;
                    if (m_half) mmio_rd[63:32] <= dw_rdata; else mmio_rd[31:0] <= dw_rdata;
                    if (m_half || m_be[7:4] != 4'hf) begin
                        finish_mmio(m_half ? {dw_rdata, mmio_rd[31:0]} : {32'd0, dw_rdata});
                    end else begin
                        m_half <= 1'b1;
                        state  <= S_M_DW;
                    end
                end
            end

            S_M_SWEEP: begin
                if (bmd_done) m_sweep_d <= 1'b0;
                if (bml_done) m_sweep_l <= 1'b0;
                if ((!m_sweep_d || bmd_done) && (!m_sweep_l || bml_done)) begin
                    m_sweep_d <= 1'b0;
                    m_sweep_l <= 1'b0;
                    if (m_need_rsp) finish_mmio(64'd0);
                    else state <= S_IDLE;
                end
            end

            S_M_DM: begin
                if (!m_dm_ok) begin
                    // Refused access (not contiguous, or beyond device memory).
                    finish_mmio({64{1'b1}});
                end else if (dm_rsp_valid) begin
                    if (m_write) begin
                        bmd_start <= 1'b1;
                        bmd_op    <= BM_SET;
                        bmd_arg   <= {12'd0, dm_req_addr[31:12]};
                        state     <= S_M_MARK;
                    end else begin
                        finish_mmio(dm_rsp_rdata[63:0] << {m_lane, 3'b000});
                    end
                end
            end

            S_M_MARK: if (bmd_done) finish_mmio(64'd0);

            S_M_RSP: begin
                if (mmio_rsp_ready) begin
                    mmio_rsp_valid <= 1'b0;
                    m_need_rsp     <= 1'b0;
                    prefer_engine  <= 1'b1;
                    state          <= S_IDLE;
                end
            end

            S_F_RSP: if (dma_rsp_valid) begin
                if (!dma_rsp_ok) begin
                    raise_err(`VFPGA_CPLSTATUS_SQ_FETCH_FAULT, c_addr);
                    r_flags[0] <= 1'b1;                       // HALTED
                end else begin
                    st = desc_status(dma_rsp_rdata[7:0], dma_rsp_rdata[31:9], dma_rsp_rdata[127:64],
                                     dma_rsp_rdata[191:128], dma_rsp_rdata[223:192]);
                    r_cur_flags   <= {8'd0, st, 15'd0, 1'b1};
                    r_cur_ctl     <= dma_rsp_rdata[31:0];
                    r_cur_tag     <= dma_rsp_rdata[63:32];
                    r_cur_src_lo  <= dma_rsp_rdata[95:64];
                    r_cur_src_hi  <= dma_rsp_rdata[127:96];
                    r_cur_dst_lo  <= dma_rsp_rdata[159:128];
                    r_cur_dst_hi  <= dma_rsp_rdata[191:160];
                    r_cur_len     <= dma_rsp_rdata[223:192];
                    r_cur_pattern <= dma_rsp_rdata[255:224];
                    r_cur_done    <= 32'd0;
                    r_cur_crc     <= (dma_rsp_rdata[7:0] == `VFPGA_OPCODE_CRC32C) ? ~dma_rsp_rdata[255:224] : 32'd0;
                    r_cur_slot    <= r_sq_head;
                    r_sq_head     <= {20'd0, (r_sq_head[11:0] + 12'd1) & sq_mask};
                    if (st != `VFPGA_CPLSTATUS_OK) raise_err(st, c_addr);
                end
                state <= S_IDLE;
            end

            S_B_RD: if (is_dev_src(cur_op) ? dm_rsp_valid : dma_rsp_valid) begin
                if (!is_dev_src(cur_op) && !dma_rsp_ok) begin
                    r_cur_flags[23:16] <= `VFPGA_CPLSTATUS_DMA_READ_FAULT;
                    raise_err(`VFPGA_CPLSTATUS_DMA_READ_FAULT, b_src);
                    state <= S_IDLE;
                end else if (cur_op == `VFPGA_OPCODE_CRC32C) begin
                    state <= S_B_CRC;       // the CRC unit below loads the data
                end else begin
                    start_write(is_dev_src(cur_op) ? dm_rsp_rdata : dma_rsp_rdata);
                end
            end

            S_B_CRC: if (b_crc_left == 7'd0) begin
                r_cur_crc  <= b_crc;
                r_cur_done <= r_cur_done + {25'd0, b_n};
                state      <= S_IDLE;
            end

            S_B_WR: if (is_dev_dst(cur_op) ? dm_rsp_valid : dma_rsp_valid) begin
                if (is_dev_dst(cur_op)) begin
                    bmd_start <= 1'b1;
                    bmd_op    <= BM_SET;
                    bmd_arg   <= {12'd0, b_dst[31:12]};
                    state     <= S_B_MARK;
                end else if (!dma_rsp_ok) begin
                    r_cur_flags[23:16] <= `VFPGA_CPLSTATUS_DMA_WRITE_FAULT;
                    raise_err(`VFPGA_CPLSTATUS_DMA_WRITE_FAULT, b_dst);
                    state <= S_IDLE;
                end else begin
                    log_write(b_dst[63:12], wt);
                    if (wt) begin
                        state <= S_B_MARK;
                    end else begin
                        r_cur_done <= r_cur_done + {25'd0, b_n};
                        state      <= S_IDLE;
                    end
                end
            end

            S_B_MARK: if (bmd_done || bml_done) begin
                r_cur_done <= r_cur_done + {25'd0, b_n};
                state      <= S_IDLE;
            end

            S_C_WR: if (dma_rsp_valid) begin
                if (!dma_rsp_ok) begin
                    raise_err(`VFPGA_CPLSTATUS_CQ_WRITE_FAULT, c_addr);
                    r_flags[0] <= 1'b1;                       // HALTED; stays in flight
                    state <= S_IDLE;
                end else begin
                    log_write(c_addr[63:12], wt);
                    if (wt) state <= S_C_MARK;
                    else    finish_completion();
                end
            end

            S_C_MARK: if (bml_done) finish_completion();

            S_M_VAL0: state <= S_M_VAL;     // vres_q is computed below

            S_M_VAL: begin
                // The one place a validation result is applied; the access ends here.
                set_state_err(vres_q);
                if (m_resume) begin
                    if (vres_q == 16'd0) begin
                        s_quiesced      <= 1'b0;
                        s_state_invalid <= 1'b0;
                    end else begin
                        s_state_invalid <= 1'b1;
                    end
                end
                finish_mmio(64'd0);
            end

            S_INIT: begin
                // Both bitmaps are cleared right after reset.
                bmd_start <= 1'b1; bmd_op <= BM_CLEAR; bmd_arg <= DIRTY_WORDS;
                bml_start <= 1'b1; bml_op <= BM_CLEAR; bml_arg <= LOG_WORDS;
                state     <= S_M_SWEEP;
            end

            default: state <= S_IDLE;
            endcase
        end
    end

    // ------------------------------------------------------------------
    // Step boundaries, for observers (the simulator's lockstep runs step by step).
    reg  was_in_step;
    always @(posedge clk) begin
        if (!rst_n) was_in_step <= 1'b0;
        else        was_in_step <= in_step;
    end
    assign step_done = was_in_step && !in_step;

    // ------------------------------------------------------------------
    // Side units, each in its own small process and evaluated only when the
    // state machine needs it (a cheap cycle in simulation, a small process
    // tree in synthesis).

    // CRC-32C of a burst, 8 bytes per cycle: loaded when the burst's read
    // data arrives, done when b_crc_left reaches 0.
    wire crc_load = state == S_B_RD && dma_rsp_valid && dma_rsp_ok && cur_op == `VFPGA_OPCODE_CRC32C;
    always @(posedge clk) begin : crc_unit
        reg [3:0] nb;
        if (!rst_n) begin
            b_buf      <= 512'd0;
            b_crc      <= 32'd0;
            b_crc_left <= 7'd0;
        end else if (crc_load) begin
            b_buf      <= dma_rsp_rdata;
            b_crc      <= r_cur_crc;
            b_crc_left <= b_n;
        end else if (state == S_B_CRC && b_crc_left != 7'd0) begin
            nb = (b_crc_left > 7'd8) ? 4'd8 : b_crc_left[3:0];
            b_crc      <= crc32c_upd(b_crc, b_buf[63:0], nb);
            b_buf      <= b_buf >> 64;
            b_crc_left <= b_crc_left - {3'd0, nb};
        end
    end

    // Validation of the state words (S_M_VAL0 -> vres_q -> S_M_VAL).
    always @(posedge clk) begin
        if (!rst_n) vres_q <= 16'd0;
        else if (state == S_M_VAL0) vres_q <= validate_state(st_vec(r_timer));
    end

    // The state word STATE_DATA reads (only while quiesced).
    always @(posedge clk) begin
        if (!rst_n) st_rd_q <= 32'd0;
        else if (s_quiesced) st_rd_q <= st_word(r_state_idx[7:0]);
    end

    wire unused_ok = &{1'b0, mmio_req_addr[2:0], devmem_pages[31:21], dm_rsp_rdata[511:64],
                       m_bar2, bmd_busy, bml_busy, m_addr[2:0], m_be[3:0], mmio_rd[63:32],
                       r_throttle[31:16]};
endmodule

`default_nettype wire

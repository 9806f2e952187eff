// Icarus smoke test of vfpga_top: identity, a register round trip, one
// FILL_HOST and one COPY_H2D descriptor through the rings, BAR2 read-back,
// the dirty bitmap, an interrupt message, and a quiesce with a state read.
// Run by scripts/test.d/20-rtl:
//   iverilog -g2012 -Irtl -o tb.vvp rtl/tb/vfpga_tb.sv rtl/vfpga_top.v rtl/vfpga_bitmap.v && vvp -n tb.vvp
`timescale 1ns/1ps
`default_nettype none
`include "generated/vfpga_regs.vh"

module vfpga_tb;
    localparam integer HOST_BYTES = 65536;   // host memory at IOVA 0
    localparam integer DEV_PAGES  = 4;

    reg clk = 1'b0;
    reg rst_n = 1'b0;
    always #5 clk = ~clk;

    reg         mmio_req_valid = 1'b0;
    wire        mmio_req_ready;
    reg         mmio_req_write = 1'b0;
    reg         mmio_req_bar2 = 1'b0;
    reg  [31:0] mmio_req_addr = 32'd0;
    reg  [7:0]  mmio_req_be = 8'd0;
    reg  [63:0] mmio_req_wdata = 64'd0;
    wire        mmio_rsp_valid;
    wire [63:0] mmio_rsp_rdata;

    wire         dma_req_valid, dma_req_write;
    wire [63:0]  dma_req_addr;
    wire [6:0]   dma_req_len;
    wire [511:0] dma_req_wdata;
    reg          dma_rsp_valid = 1'b0;
    reg          dma_rsp_ok = 1'b0;
    reg  [511:0] dma_rsp_rdata = 512'd0;

    wire         dm_req_valid, dm_req_write;
    wire [31:0]  dm_req_addr;
    wire [6:0]   dm_req_len;
    wire [511:0] dm_req_wdata;
    reg          dm_rsp_valid = 1'b0;
    reg  [511:0] dm_rsp_rdata = 512'd0;

    wire        irq_valid;
    wire [7:0]  irq_vector;
    wire        intx, busy, quiesced, idle;

    vfpga_top #(.DEVMEM_PAGES_MAX(64), .DMALOG_PAGES_MAX(64)) dut (
        .clk(clk), .rst_n(rst_n),
        .devmem_pages(DEV_PAGES), .dmalog_max_pages(32'd64),
        .mmio_req_valid(mmio_req_valid), .mmio_req_ready(mmio_req_ready),
        .mmio_req_write(mmio_req_write), .mmio_req_bar2(mmio_req_bar2),
        .mmio_req_addr(mmio_req_addr), .mmio_req_be(mmio_req_be), .mmio_req_wdata(mmio_req_wdata),
        .mmio_rsp_valid(mmio_rsp_valid), .mmio_rsp_ready(1'b1), .mmio_rsp_rdata(mmio_rsp_rdata),
        .dma_req_valid(dma_req_valid), .dma_req_ready(1'b1), .dma_req_write(dma_req_write),
        .dma_req_addr(dma_req_addr), .dma_req_len(dma_req_len), .dma_req_wdata(dma_req_wdata),
        .dma_rsp_valid(dma_rsp_valid), .dma_rsp_ok(dma_rsp_ok), .dma_rsp_rdata(dma_rsp_rdata),
        .dm_req_valid(dm_req_valid), .dm_req_ready(1'b1), .dm_req_write(dm_req_write),
        .dm_req_addr(dm_req_addr), .dm_req_len(dm_req_len), .dm_req_wdata(dm_req_wdata),
        .dm_rsp_valid(dm_rsp_valid), .dm_rsp_rdata(dm_rsp_rdata),
        .irq_valid(irq_valid), .irq_ready(1'b1), .irq_vector(irq_vector), .intx(intx),
        .busy(busy), .quiesced(quiesced), .idle(idle),
        .step_done(step_done), .step_kind(step_kind));
    wire        step_done;
    wire [1:0]  step_kind;

    // Every output of the core, for the X check after reset (Icarus starts
    // every register at X, so a register the reset forgets shows here).
    wire [1700:0] all_outputs = {mmio_req_ready, mmio_rsp_valid, mmio_rsp_rdata,
        dma_req_valid, dma_req_write, dma_req_addr, dma_req_len, dma_req_wdata,
        dm_req_valid, dm_req_write, dm_req_addr, dm_req_len, dm_req_wdata,
        irq_valid, irq_vector, intx, busy, quiesced, idle, step_done, step_kind};

    reg [7:0] host [0:HOST_BYTES-1];
    reg [7:0] dev  [0:DEV_PAGES*4096-1];
    integer irqs0 = 0, irqs1 = 0, failures = 0, checks = 0;

    // Host memory and device memory: one-cycle responses.
    integer k;
    always @(posedge clk) begin
        dma_rsp_valid <= 1'b0;
        dm_rsp_valid  <= 1'b0;
        if (dma_req_valid) begin
            dma_rsp_valid <= 1'b1;
            dma_rsp_ok    <= dma_req_addr + dma_req_len <= HOST_BYTES;
            if (dma_req_addr + dma_req_len <= HOST_BYTES) begin
                for (k = 0; k < 64; k = k + 1) begin
                    if (k < dma_req_len) begin
                        if (dma_req_write) host[dma_req_addr + k] <= dma_req_wdata[8*k +: 8];
                        else dma_rsp_rdata[8*k +: 8] <= host[dma_req_addr + k];
                    end
                end
            end
        end
        if (dm_req_valid) begin
            dm_rsp_valid <= 1'b1;
            for (k = 0; k < 64; k = k + 1) begin
                if (k < dm_req_len) begin
                    if (dm_req_write) dev[dm_req_addr + k] <= dm_req_wdata[8*k +: 8];
                    else dm_rsp_rdata[8*k +: 8] <= dev[dm_req_addr + k];
                end
            end
        end
        if (irq_valid) begin
            if (irq_vector == 8'd0) irqs0 = irqs0 + 1; else irqs1 = irqs1 + 1;
        end
    end

    task automatic mmio(input wr, input bar2, input [31:0] addr, input [7:0] be,
                        input [63:0] wdata, output [63:0] rdata);
        begin
            @(negedge clk);
            mmio_req_valid = 1'b1;
            mmio_req_write = wr;
            mmio_req_bar2  = bar2;
            mmio_req_addr  = addr;
            mmio_req_be    = be;
            mmio_req_wdata = wdata;
            // Sampled at falling edges: accepted at the next rising edge.
            while (!mmio_req_ready) @(negedge clk);
            @(negedge clk);
            mmio_req_valid = 1'b0;
            while (!mmio_rsp_valid) @(negedge clk);
            rdata = mmio_rsp_rdata;
            @(negedge clk);
        end
    endtask

    task automatic wr32(input [11:0] off, input [31:0] v);
        reg [63:0] unused_r;
        begin
            mmio(1'b1, 1'b0, {20'd0, off[11:3], 3'b000}, off[2] ? 8'hf0 : 8'h0f,
                 off[2] ? {v, 32'd0} : {32'd0, v}, unused_r);
        end
    endtask

    task automatic rd32(input [11:0] off, output [31:0] v);
        reg [63:0] r;
        begin
            mmio(1'b0, 1'b0, {20'd0, off[11:3], 3'b000}, off[2] ? 8'hf0 : 8'h0f, 64'd0, r);
            v = off[2] ? r[63:32] : r[31:0];
        end
    endtask

    task automatic expect32(input [11:0] off, input [31:0] want, input [8*24-1:0] what);
        reg [31:0] v;
        begin
            rd32(off, v);
            checks = checks + 1;
            if (v !== want) begin
                $display("FAIL %0s: read %h, want %h", what, v, want);
                failures = failures + 1;
            end
        end
    endtask

    task automatic put32(input integer a, input [31:0] v);
        begin
            host[a] = v[7:0]; host[a+1] = v[15:8]; host[a+2] = v[23:16]; host[a+3] = v[31:24];
        end
    endtask

    function automatic [31:0] get32(input integer a);
        get32 = {host[a+3], host[a+2], host[a+1], host[a]};
    endfunction

    task automatic put_desc(input integer a, input [31:0] ctl, input [31:0] tag, input [63:0] src,
                            input [63:0] dst, input [31:0] len, input [31:0] pattern);
        begin
            put32(a, ctl); put32(a + 4, tag);
            put32(a + 8, src[31:0]); put32(a + 12, src[63:32]);
            put32(a + 16, dst[31:0]); put32(a + 20, dst[63:32]);
            put32(a + 24, len); put32(a + 28, pattern);
        end
    endtask

    integer i, t;
    reg [31:0] v;
    reg [63:0] r64;
    initial begin
        for (i = 0; i < HOST_BYTES; i = i + 1) host[i] = 8'd0;
        for (i = 0; i < DEV_PAGES * 4096; i = i + 1) dev[i] = 8'd0;
        for (i = 0; i < 200; i = i + 1) host[16'h4000 + i] = i[7:0] ^ 8'h5a;
        repeat (4) @(posedge clk);
        @(negedge clk);
        rst_n = 1'b1;
        t = 0;
        while (!idle && t < 10000) begin @(posedge clk); t = t + 1; end

        // No output is X after reset, and no register of the register page
        // reads X (every state word, the host-side machinery, the latches).
        checks = checks + 1;
        if ((^all_outputs) === 1'bx) begin
            $display("FAIL: an output is X after reset: %b", all_outputs);
            failures = failures + 1;
        end
        for (i = 0; i < 4096; i = i + 4) begin
            rd32(i[11:0], v);
            checks = checks + 1;
            if ((^v) === 1'bx) begin
                $display("FAIL: register at %h reads %b after reset", i[11:0], v);
                failures = failures + 1;
            end
        end
        checks = checks + 1;
        if ((^all_outputs) === 1'bx) begin
            $display("FAIL: an output is X after the register reads: %b", all_outputs);
            failures = failures + 1;
        end

        expect32(`VFPGA_REG_ID, `VFPGA_DEVICE_MAGIC, "ID");
        expect32(`VFPGA_REG_DEVMEM_PAGES, DEV_PAGES, "DEVMEM_PAGES");
        expect32(`VFPGA_REG_CQ_TAIL, `VFPGA_REG_CQ_TAIL_RESET, "CQ_TAIL reset");
        wr32(`VFPGA_REG_SCRATCH, 32'hcafe_f00d);
        expect32(`VFPGA_REG_SCRATCH, 32'hcafe_f00d, "SCRATCH");

        // Rings: SQ at 0x1000 (4 entries), CQ at 0x2000 (4 entries).
        put_desc(16'h1000, 32'h0000_0106, 32'd11, 64'd0, 64'h3001, 32'd100, 32'h4433_2211);  // FILL_HOST, IRQ
        put_desc(16'h1020, 32'h0000_0001, 32'd12, 64'h4000, 64'h1ffe, 32'd200, 32'd0);       // COPY_H2D
        wr32(`VFPGA_REG_SQ_BASE_LO, 32'h1000);
        wr32(`VFPGA_REG_SQ_SIZE, 32'd4);
        wr32(`VFPGA_REG_CQ_BASE_LO, 32'h2000);
        wr32(`VFPGA_REG_CQ_SIZE, 32'd4);
        wr32(`VFPGA_REG_IRQ_MASK, 32'd0);
        wr32(`VFPGA_REG_CTRL, 32'd1);
        wr32(`VFPGA_REG_SQ_TAIL, 32'd2);
        t = 0;
        v = 0;
        while (v != 2 && t < 2000) begin rd32(`VFPGA_REG_CNT_DESC, v); t = t + 1; end
        checks = checks + 1;
        if (v != 2) begin $display("FAIL: descriptors did not complete"); failures = failures + 1; end

        // Completions: tag, status OK, slot, phase 1, bytes.
        checks = checks + 4;
        if (get32(16'h2000) != 11 || get32(16'h2004) != 32'h8000_0000 || get32(16'h200c) != 100) begin
            $display("FAIL: completion 0 = %h %h %h", get32(16'h2000), get32(16'h2004), get32(16'h200c));
            failures = failures + 1;
        end
        if (get32(16'h2010) != 12 || get32(16'h2014) != 32'h8001_0000 || get32(16'h201c) != 200) begin
            $display("FAIL: completion 1 = %h %h %h", get32(16'h2010), get32(16'h2014), get32(16'h201c));
            failures = failures + 1;
        end
        for (i = 0; i < 100; i = i + 1) begin
            if (host[16'h3001 + i] != (8'h11 + 8'h11 * (i % 4))) begin
                $display("FAIL: fill byte %0d = %h", i, host[16'h3001 + i]);
                failures = failures + 1;
            end
        end
        if (host[16'h3000] != 0 || host[16'h3065] != 0) begin
            $display("FAIL: fill wrote outside its range");
            failures = failures + 1;
        end
        // BAR2 read-back of the copy (crosses page 1 -> 2) and the dirty bits.
        mmio(1'b0, 1'b1, 32'h1ff8, 8'hc0, 64'd0, r64);
        checks = checks + 1;
        if (r64[63:48] != {8'h5b, 8'h5a}) begin
            $display("FAIL: BAR2 read %h", r64);
            failures = failures + 1;
        end
        expect32(`VFPGA_REG_DIRTY_BITS, 32'h0000_0006, "DIRTY_BITS");
        expect32(`VFPGA_REG_DIRTY_BITS, 32'h0000_0000, "DIRTY_BITS cleared");
        checks = checks + 1;
        if (irqs0 != 1 || irqs1 != 0) begin
            $display("FAIL: interrupts %0d/%0d", irqs0, irqs1);
            failures = failures + 1;
        end

        // Quiesce and read the state words: HEADER and SCRATCH.
        wr32(`VFPGA_REG_CTRL, 32'h0000_0005);
        expect32(`VFPGA_REG_STATUS, 32'h0000_0004, "STATUS quiesced");
        wr32(`VFPGA_REG_STATE_IDX, 32'd0);
        expect32(`VFPGA_REG_STATE_DATA, `VFPGA_STATE_HEADER, "state HEADER");
        wr32(`VFPGA_REG_STATE_IDX, {24'd0, `VFPGA_ST_SCRATCH});
        expect32(`VFPGA_REG_STATE_DATA, 32'hcafe_f00d, "state SCRATCH");
        wr32(`VFPGA_REG_CTRL, 32'h0000_0008);
        expect32(`VFPGA_REG_STATUS, 32'h0000_0000, "STATUS resumed");

        if (failures == 0) $display("vfpga_tb: %0d checks passed", checks);
        else $display("vfpga_tb: %0d of %0d checks FAILED", failures, checks);
        $finish;
    end

    initial begin
        #2000000;
        $display("vfpga_tb: FAILED (timeout)");
        $finish;
    end
endmodule

`default_nettype wire

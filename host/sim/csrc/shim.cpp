// C ABI shim between vfpga-sim (Rust) and the Verilated vfpga_top.
//
// Calls on one model never overlap: the Rust side keeps it behind a mutex and
// any thread may hold it (the model is single-threaded and keeps no
// per-thread state between calls). The harness side of every port is simple and fixed:
//   - request ports (DMA, device memory, MMIO response, IRQ) are ready, except
//     that sim_set_stall() makes the DMA request, device-memory request and
//     MMIO response ports drop `ready` on random cycles (a seeded generator:
//     deterministic), as a vendor bridge or memory controller may stall;
//   - device-memory requests are served here from the buffer the caller passes
//     to each sim_run() call, with the response one cycle later;
//   - DMA requests, interrupt messages and MMIO responses end sim_run() with an
//     event so the Rust side can serve them (DMA through its DmaPort); the DMA
//     response is given with sim_dma_respond() before the next sim_run().
//   - the harness checks the core's side of the ports: an MMIO response with no
//     request outstanding, a DMA or device-memory request presented when no
//     step may issue one (after a reset, before the core was first idle; or
//     while it is idle), or a second DMA request before the first one's
//     response, ends sim_run() with EV_FAULT and the FAULT_* bit in
//     `fault`. Nothing is served in that cycle's events.
// One cycle is: sample handshakes, rising edge, drive inputs, falling edge.

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>

#include "Vvfpga_top.h"
#include "verilated.h"
#include "verilated_vcd_c.h"

extern "C" {

enum : uint32_t {
    EV_DMA = 1u,   // a DMA request was accepted (fields below)
    EV_IRQ = 2u,   // an interrupt message was sent (irq_vector)
    EV_MMIO = 4u,  // the MMIO response arrived (mmio_rdata)
    EV_STEP = 8u,  // an engine step ended (step_kind); only with stop_on_step
    EV_FAULT = 16u, // the core broke a port rule (SimEvent::fault says which)
};

// Port rules the core broke (SimEvent::fault).
enum : uint32_t {
    FAULT_MMIO_RSP = 1u,     // an MMIO response with no request outstanding
    FAULT_DMA_IDLE = 2u,     // a DMA request while no step may issue one
    FAULT_DMA_TWICE = 4u,    // a DMA request before the previous one's response
    FAULT_DM_IDLE = 8u,      // a device-memory request while nothing may issue one
};

struct SimEvent {
    uint32_t flags;
    uint32_t dma_write;
    uint64_t dma_addr;
    uint32_t dma_len;
    uint32_t irq_vector;
    uint64_t mmio_rdata;
    uint64_t cycles;  // cycles run by this sim_run call
    uint32_t step_kind;
    uint32_t fault;  // FAULT_* bits, with EV_FAULT
    uint8_t dma_data[64];
};

// One MMIO request of a pipelined sequence (sim_mmio_queue).
struct QueuedMmio {
    uint32_t bar2, write, addr, be;
    uint64_t wdata;
    uint32_t gap;  // idle cycles after the previous request was accepted
};

struct Sim {
    std::deque<QueuedMmio> mmio_q;
    uint32_t gap_left = 0;
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vvfpga_top> top;
    std::unique_ptr<VerilatedVcdC> vcd;
    uint64_t time = 0;
    uint64_t cycles = 0;
    uint64_t steps = 0;
    bool stop_on_step = false;
    // Port checks (see the top of this file).
    uint32_t mmio_out = 0;    // MMIO requests accepted and not yet answered
    bool dma_out = false;     // a DMA request accepted, its response not given
    bool after_reset = true;  // reset released, the core not idle since
    // Back-pressure (sim_set_stall): xorshift64 state, percent of cycles
    // each port's ready is low (0: never).
    uint64_t stall_rng = 0;
    uint32_t stall_pct = 0;
};

}  // extern "C"

namespace {

inline void half_cycle(Sim* s, uint8_t clk) {
    s->top->clk = clk;
    s->top->eval();
    if (s->vcd) s->vcd->dump(s->time);
    s->time += 5;
}

inline void copy_out(uint8_t* dst, const VlWide<16>& w, uint32_t len) {
    std::memcpy(dst, w.data(), len > 64 ? 64 : len);
}

inline void copy_in(VlWide<16>& w, const uint8_t* src, uint32_t len) {
    if (len > 64) len = 64;
    std::memcpy(w.data(), src, len);
    if (len < 64) std::memset(reinterpret_cast<uint8_t*>(w.data()) + len, 0, 64 - len);
}

// Next value of the back-pressure generator (xorshift64).
inline uint64_t stall_next(Sim* s) {
    uint64_t x = s->stall_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->stall_rng = x;
    return x;
}

// Drives the three stallable ready inputs for the next rising edge.
inline void drive_ready(Sim* s) {
    if (!s->stall_pct) return;
    Vvfpga_top* t = s->top.get();
    t->dma_req_ready = (stall_next(s) % 100) >= s->stall_pct;
    t->dm_req_ready = (stall_next(s) % 100) >= s->stall_pct;
    t->mmio_rsp_ready = (stall_next(s) % 100) >= s->stall_pct;
    t->eval();
}

// Serves a device-memory request from `mem` (bounds-checked: an access the
// RTL should never make reads zeros and writes nothing).
inline void serve_devmem(Vvfpga_top* t, bool write, uint32_t addr, uint32_t len, uint8_t* mem,
                         uint64_t mem_len) {
    bool in = len <= 64 && uint64_t(addr) + len <= mem_len;
    if (write) {
        if (in) std::memcpy(mem + addr, t->dm_req_wdata.data(), len);
    } else {
        if (in) copy_in(t->dm_rsp_rdata, mem + addr, len);
        else std::memset(t->dm_rsp_rdata.data(), 0, 64);
    }
    t->dm_rsp_valid = 1;
}

}  // namespace

extern "C" {

// Creates and resets a model. `vcd_path` may be null (no waveform).
// `x_seed` != 0: the model is built (--x-initial unique) with every
// register and memory bit random before reset, from this seed, so that state
// the reset forgets shows; 0: all zeros.
Sim* sim_new(uint32_t devmem_pages, uint32_t dmalog_max_pages, const char* vcd_path,
             uint32_t x_seed) {
    Sim* s = new Sim;
    s->ctx.reset(new VerilatedContext);
    s->ctx->threads(1);
    if (x_seed) {
        s->ctx->randReset(2);
        s->ctx->randSeed(int(x_seed & 0x7fffffffu));
    } else {
        s->ctx->randReset(0);
    }
    if (vcd_path) s->ctx->traceEverOn(true);
    s->top.reset(new Vvfpga_top(s->ctx.get(), "vfpga"));
    if (vcd_path) {
        s->vcd.reset(new VerilatedVcdC);
        s->top->trace(s->vcd.get(), 99);
        s->vcd->open(vcd_path);
    }
    Vvfpga_top* t = s->top.get();
    t->devmem_pages = devmem_pages;
    t->dmalog_max_pages = dmalog_max_pages;
    t->mmio_req_valid = 0;
    t->mmio_rsp_ready = 1;
    t->dma_req_ready = 1;
    t->dma_rsp_valid = 0;
    t->dma_rsp_ok = 0;
    t->dm_req_ready = 1;
    t->dm_rsp_valid = 0;
    t->irq_ready = 1;
    t->rst_n = 0;
    t->clk = 0;
    t->eval();
    for (int i = 0; i < 4; i++) {
        half_cycle(s, 1);
        half_cycle(s, 0);
    }
    t->rst_n = 1;
    t->eval();
    return s;
}

// Hardware reset in the middle of work: rst_n low for `cycles` cycles (at
// least 1), with every harness input idle (an outstanding DMA request is
// abandoned: its response is never given), then high again. The bitmap
// sweep that follows runs in later sim_run() calls.
void sim_hw_reset(Sim* s, uint32_t cycles) {
    Vvfpga_top* t = s->top.get();
    t->rst_n = 0;
    t->mmio_req_valid = 0;
    s->mmio_q.clear();
    t->dma_rsp_valid = 0;
    t->dma_rsp_ok = 0;
    t->dm_rsp_valid = 0;
    if (cycles == 0) cycles = 1;
    for (uint32_t i = 0; i < cycles; i++) {
        half_cycle(s, 1);
        half_cycle(s, 0);
    }
    s->cycles += cycles;
    t->rst_n = 1;
    t->eval();
    // What was in flight is abandoned: no response is owed either way.
    s->mmio_out = 0;
    s->dma_out = false;
    s->after_reset = true;
}

// Back-pressure: from now on each of dma_req_ready, dm_req_ready and
// mmio_rsp_ready is low on `pct` percent of the cycles (0: always high),
// drawn from a generator seeded with `seed`.
void sim_set_stall(Sim* s, uint64_t seed, uint32_t pct) {
    s->stall_rng = seed ? seed : 0x9e3779b97f4a7c15ull;
    s->stall_pct = pct > 95 ? 95 : pct;
    if (!s->stall_pct) {
        Vvfpga_top* t = s->top.get();
        t->dma_req_ready = 1;
        t->dm_req_ready = 1;
        t->mmio_rsp_ready = 1;
        t->eval();
    }
}

void sim_free(Sim* s) {
    if (!s) return;
    if (s->vcd) s->vcd->close();
    s->top->final();
    delete s;
}

// Runs at most `max_cycles` cycles; stops early after a cycle with an event.
// Device-memory requests are served from `mem` (`mem_len` bytes).
void sim_run(Sim* s, uint64_t max_cycles, uint8_t* mem, uint64_t mem_len, SimEvent* ev) {
    Vvfpga_top* t = s->top.get();
    ev->flags = 0;
    uint64_t n = 0;
    while (n < max_cycles) {
        // A queued request is presented once the previous one was taken and
        // its gap has passed (gap 0: the cycle right after acceptance, while
        // the previous access is still being served).
        if (!t->mmio_req_valid && !s->mmio_q.empty()) {
            if (s->gap_left == 0) {
                const QueuedMmio& q = s->mmio_q.front();
                t->mmio_req_valid = 1;
                t->mmio_req_bar2 = q.bar2 ? 1 : 0;
                t->mmio_req_write = q.write ? 1 : 0;
                t->mmio_req_addr = q.addr;
                t->mmio_req_be = q.be & 0xff;
                t->mmio_req_wdata = q.wdata;
                s->mmio_q.pop_front();
                t->eval();
            } else {
                s->gap_left--;
            }
        }
        drive_ready(s);
        // Handshakes that happen at this rising edge.
        bool dma_fire = t->dma_req_valid && t->dma_req_ready;
        bool dm_fire = t->dm_req_valid && t->dm_req_ready;
        bool irq_fire = t->irq_valid;  // irq_ready is always 1
        bool mrsp_fire = t->mmio_rsp_valid && t->mmio_rsp_ready;
        bool mreq_fire = t->mmio_req_valid && t->mmio_req_ready;
        // The core's side of the port rules.
        if (t->idle) s->after_reset = false;
        uint32_t fault = 0;
        if (mrsp_fire && s->mmio_out == 0) fault |= FAULT_MMIO_RSP;
        if (t->dma_req_valid && (s->after_reset || t->idle)) fault |= FAULT_DMA_IDLE;
        if (dma_fire && s->dma_out) fault |= FAULT_DMA_TWICE;
        if (t->dm_req_valid && (s->after_reset || t->idle)) fault |= FAULT_DM_IDLE;
        if (fault) {
            ev->flags = EV_FAULT;
            ev->fault = fault;
            break;
        }
        if (mrsp_fire) s->mmio_out--;
        if (mreq_fire) s->mmio_out++;
        if (dma_fire) s->dma_out = true;
        uint32_t flags = 0;
        bool dm_write = false;
        uint32_t dm_addr = 0, dm_len = 0;
        if (dma_fire) {
            flags |= EV_DMA;
            ev->dma_write = t->dma_req_write;
            ev->dma_addr = t->dma_req_addr;
            ev->dma_len = t->dma_req_len;
            if (t->dma_req_write) copy_out(ev->dma_data, t->dma_req_wdata, t->dma_req_len);
        }
        if (dm_fire) {
            dm_write = t->dm_req_write;
            dm_addr = t->dm_req_addr;
            dm_len = t->dm_req_len;
        }
        if (irq_fire) {
            flags |= EV_IRQ;
            ev->irq_vector = t->irq_vector;
        }
        if (mrsp_fire) {
            flags |= EV_MMIO;
            ev->mmio_rdata = t->mmio_rsp_rdata;
        }
        half_cycle(s, 1);
        n++;
        // Inputs for the next rising edge.
        t->dma_rsp_valid = 0;
        t->dm_rsp_valid = 0;
        if (mreq_fire) {
            t->mmio_req_valid = 0;
            if (!s->mmio_q.empty()) s->gap_left = s->mmio_q.front().gap;
        }
        if (dm_fire) serve_devmem(t, dm_write, dm_addr, dm_len, mem, mem_len);
        half_cycle(s, 0);
        if (t->step_done) {
            s->steps++;
            if (s->stop_on_step) {
                flags |= EV_STEP;
                ev->step_kind = t->step_kind;
            }
        }
        if (flags) {
            ev->flags = flags;
            break;
        }
    }
    s->cycles += n;
    ev->cycles = n;
}

// The response to the DMA request of the last EV_DMA event (seen at the next
// rising edge). `data` holds `len` bytes for a read, else may be null.
void sim_dma_respond(Sim* s, uint32_t ok, const uint8_t* data, uint32_t len) {
    Vvfpga_top* t = s->top.get();
    s->dma_out = false;
    t->dma_rsp_valid = 1;
    t->dma_rsp_ok = ok ? 1 : 0;
    if (data && ok) copy_in(t->dma_rsp_rdata, data, len);
    else std::memset(t->dma_rsp_rdata.data(), 0, 64);
    // Settle the combinational outputs (mmio_req_ready depends on
    // dma_rsp_valid), so the next rising edge's handshakes are sampled from
    // what the RTL will see at that edge.
    t->eval();
}

// Presents an MMIO request; it is accepted when the core is ready, and its
// response ends a later sim_run() with EV_MMIO.
void sim_mmio(Sim* s, uint32_t bar2, uint32_t write, uint32_t addr, uint32_t be, uint64_t wdata) {
    Vvfpga_top* t = s->top.get();
    t->mmio_req_valid = 1;
    t->mmio_req_bar2 = bar2 ? 1 : 0;
    t->mmio_req_write = write ? 1 : 0;
    t->mmio_req_addr = addr;
    t->mmio_req_be = be & 0xff;
    t->mmio_req_wdata = wdata;
    // mmio_req_ready depends on the request itself (a read served during a
    // DMA wait): settle it before the next edge samples the handshake, or
    // the harness and the RTL disagree on whether the request was taken.
    t->eval();
}

// Queues an MMIO request of a pipelined sequence: presented by sim_run()
// `gap` cycles after the previous one was accepted (the first one at once),
// so that a request may wait on the port while the previous is served. Each
// response ends a sim_run() with EV_MMIO, in order.
void sim_mmio_queue(Sim* s, uint32_t bar2, uint32_t write, uint32_t addr, uint32_t be,
                    uint64_t wdata, uint32_t gap) {
    if (s->mmio_q.empty() && !s->top->mmio_req_valid) s->gap_left = 0;
    s->mmio_q.push_back(QueuedMmio{bar2, write, addr, be, wdata, gap});
}

// Nothing to do until an MMIO access (no step, no message, no request).
uint32_t sim_idle(Sim* s) {
    Vvfpga_top* t = s->top.get();
    return t->idle && !t->mmio_req_valid && s->mmio_q.empty() && !t->dma_rsp_valid && !t->dm_rsp_valid
           && !t->dma_req_valid && !t->dm_req_valid;
}

uint32_t sim_quiesced(Sim* s) { return s->top->quiesced; }

// The INTx level the core drives now.
uint32_t sim_intx(Sim* s) { return s->top->intx; }

uint64_t sim_steps(Sim* s) { return s->steps; }

void sim_stop_on_step(Sim* s, uint32_t on) { s->stop_on_step = on != 0; }

void sim_flush_trace(Sim* s) {
    if (s->vcd) s->vcd->flush();
}

// Benchmark baseline: the same model clocked by a minimal C++ loop that serves
// DMA from one flat buffer at IOVA `base` (refusing anything outside it) and
// device memory from `mem`, with the same one-cycle response latency as
// sim_run. Interrupts are accepted and dropped. Returns the cycles run.
uint64_t sim_bench_bare(Sim* s, uint64_t cycles, uint8_t* host, uint64_t host_len, uint64_t base,
                        uint8_t* mem, uint64_t mem_len) {
    Vvfpga_top* t = s->top.get();
    for (uint64_t n = 0; n < cycles; n++) {
        bool dma_fire = t->dma_req_valid;
        bool dm_fire = t->dm_req_valid;
        bool dma_write = t->dma_req_write;
        uint64_t a = t->dma_req_addr;
        uint32_t len = t->dma_req_len;
        uint8_t wbuf[64];
        if (dma_fire && dma_write) copy_out(wbuf, t->dma_req_wdata, len);
        bool dm_write = t->dm_req_write;
        uint32_t dm_addr = t->dm_req_addr, dm_len = t->dm_req_len;
        half_cycle(s, 1);
        t->dma_rsp_valid = 0;
        t->dm_rsp_valid = 0;
        if (dma_fire) {
            bool in = a >= base && a - base <= host_len && len <= host_len - (a - base);
            t->dma_rsp_valid = 1;
            t->dma_rsp_ok = in;
            if (in && dma_write) std::memcpy(host + (a - base), wbuf, len);
            if (in && !dma_write) copy_in(t->dma_rsp_rdata, host + (a - base), len);
        }
        if (dm_fire) serve_devmem(t, dm_write, dm_addr, dm_len, mem, mem_len);
        half_cycle(s, 0);
    }
    s->cycles += cycles;
    return cycles;
}

}  // extern "C"

//! Baseline figures and the BENCHMARKS.md report.
//!
//! `cargo xtask baselines` measures the figures every other benchmark is set
//! beside (memcpy bandwidth over 256 MiB, a raw UNIX-socket round trip) and
//! writes them to `target/bench/`. `cargo xtask bench-report` turns every JSON
//! file there into `BENCHMARKS.md`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Version of a figure's JSON file (`schema_version`; files without one,
/// as the `scripts/bench.d/*` scripts write them, are this version).
pub const SCHEMA_VERSION: u32 = 1;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// One benchmark figure, as every `scripts/bench.d/*` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Unique name (also the file name).
    pub name: String,
    /// Measured value.
    pub value: f64,
    /// Unit of `value`.
    pub unit: String,
    /// Name of the same-run baseline.
    pub baseline_name: String,
    /// Value of the baseline.
    pub baseline_value: f64,
    /// `value / baseline_value`.
    pub ratio: f64,
    /// Free-form notes (workload, machine load).
    #[serde(default)]
    pub notes: String,
}

/// `x` to four significant digits (a measurement on a shared machine has no
/// more).
fn significant4(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

impl Figure {
    /// The figure as its JSON file holds it: `schema_version` set, values to
    /// four significant digits, the ratio to three decimals.
    fn normalized(&self) -> Figure {
        Figure {
            schema_version: SCHEMA_VERSION,
            value: significant4(self.value),
            baseline_value: significant4(self.baseline_value),
            ratio: (self.ratio * 1000.0).round() / 1000.0,
            ..self.clone()
        }
    }
}

fn write(dir: &Path, f: &Figure) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(&f.normalized()).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{}.json", f.name)), text + "\n")?;
    println!(
        "{:<40} {:>14.3} {:<8} (baseline {} = {:.3}, ratio {:.3})",
        f.name, f.value, f.unit, f.baseline_name, f.baseline_value, f.ratio
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// memcpy bandwidth in GB/s over `bytes`, best of `runs`.
pub fn memcpy_gbps(bytes: usize, runs: usize) -> f64 {
    let src: Vec<u8> = (0..bytes).map(|i| (i * 31) as u8).collect();
    let mut dst = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}

/// Round-trip times (µs, sorted) of `n` echoes of `size` bytes over a UNIX
/// socket pair with the echo on another thread.
pub fn socket_rtt_us(size: usize, n: usize) -> std::io::Result<Vec<f64>> {
    let (mut a, mut b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; size];
        for _ in 0..n {
            b.read_exact(&mut buf)?;
            b.write_all(&buf)?;
        }
        Ok(())
    });
    let msg = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.write_all(&msg)?;
        a.read_exact(&mut back)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    echo.join()
        .map_err(|_| std::io::Error::other("echo thread panicked"))??;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Measures and writes the baseline figures.
pub fn baselines(dir: &Path) -> std::io::Result<()> {
    let gbps = memcpy_gbps(256 << 20, 5);
    write(
        dir,
        &Figure {
            schema_version: SCHEMA_VERSION,
            name: "baseline_memcpy_256mib".into(),
            value: gbps,
            unit: "GB/s".into(),
            baseline_name: "baseline_memcpy_256mib".into(),
            baseline_value: gbps,
            ratio: 1.0,
            notes: "copy_from_slice of 256 MiB, best of 5".into(),
        },
    )?;
    let t = socket_rtt_us(64, 20_000)?;
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let v = percentile(&t, p);
        write(
            dir,
            &Figure {
                schema_version: SCHEMA_VERSION,
                name: format!("baseline_unix_socket_rtt_{name}"),
                value: v,
                unit: "us".into(),
                baseline_name: format!("baseline_unix_socket_rtt_{name}"),
                baseline_value: v,
                ratio: 1.0,
                notes: "64-byte echo over a UNIX stream socket pair, 20000 round trips".into(),
            },
        )?;
    }
    Ok(())
}

/// Writes `BENCHMARKS.md` from every figure in `dir`.
pub fn report(dir: &Path, out: &Path) -> std::io::Result<()> {
    let mut figs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p)?;
                match serde_json::from_str::<Figure>(&text) {
                    Ok(f) => {
                        // Every figure file leaves here versioned and rounded.
                        let n = f.normalized();
                        let t = serde_json::to_string_pretty(&n).map_err(std::io::Error::other)?;
                        std::fs::write(&p, t + "\n")?;
                        figs.push(n);
                    }
                    Err(err) => eprintln!("skipping {}: {err}", p.display()),
                }
            }
        }
    }
    figs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut s = String::from(
        "# Benchmarks\n\nGenerated by `scripts/bench` from `target/bench/*.json`. Every figure stands beside a \
         baseline measured in the same run on the same machine (2 shared cores; wall-clock figures swing \
         by tens of percent between runs, so compare ratios, not absolute values across runs).\n\n\
         | Figure | Value | Unit | Baseline | Baseline value | Ratio | Notes |\n|---|---|---|---|---|---|---|\n",
    );
    for f in &figs {
        let notes = match goal_note(f) {
            Some(g) if f.notes.is_empty() => g,
            Some(g) => format!("{}. {g}", f.notes),
            None => f.notes.clone(),
        };
        s.push_str(&format!(
            "| `{}` | {:.3} | {} | `{}` | {:.3} | {:.3} | {} |\n",
            f.name, f.value, f.unit, f.baseline_name, f.baseline_value, f.ratio, notes
        ));
    }
    std::fs::write(out, s)?;
    println!("wrote {} ({} figures)", out.display(), figs.len());
    Ok(())
}

/// A figure's goal: on its ratio (or its value), at most or at least a
/// bound, and what bounds the figure when it misses.
struct Goal {
    /// Figure name.
    name: &'static str,
    /// Compare the value (in the figure's unit) instead of the ratio.
    on_value: bool,
    /// `true`: at most `bound`; `false`: at least.
    at_most: bool,
    bound: f64,
    /// What bounds the figure where it misses its goal.
    bounded_by: &'static str,
}

/// What bounds a `vfpga serve` MMIO figure that misses.
const MMIO_BOUND: &str = "the server's own work per request (one recvmsg, the session and device locks, the register access, one send; no allocation) over the echo's; the wake-up itself is the same for both in a given placement";

/// What bounds the MIG_DATA_READ figure where it misses.
const MIGDATA_BOUND: &str = "each byte crosses memory four times on this path (the server's copy out of device memory with its CRC32C pass, the socket's copy in, the client's copy out, and the client library's move of the data past the reply's fixed part) where the floor's crosses it twice, and request and reply are serial; across CPUs, every socket-buffer refill is a cross-CPU wake-up for both";

const GOALS: &[Goal] = &[
    Goal {
        name: "serve_model_mmio_read_p50",
        on_value: false,
        at_most: true,
        bound: 1.15,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_model_mmio_read_p50_split",
        on_value: false,
        at_most: true,
        bound: 1.15,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_model_mmio_write_p50",
        on_value: false,
        at_most: true,
        bound: 1.15,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_model_mmio_write_p50_split",
        on_value: false,
        at_most: true,
        bound: 1.15,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_sim_mmio_read_p50",
        on_value: false,
        at_most: true,
        bound: 1.5,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_sim_mmio_read_p50_split",
        on_value: false,
        at_most: true,
        bound: 1.5,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_sim_mmio_write_p50",
        on_value: false,
        at_most: true,
        bound: 1.5,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_sim_mmio_write_p50_split",
        on_value: false,
        at_most: true,
        bound: 1.5,
        bounded_by: MMIO_BOUND,
    },
    Goal {
        name: "serve_model_mig_data_read",
        on_value: false,
        at_most: false,
        bound: 0.5,
        bounded_by: MIGDATA_BOUND,
    },
    Goal {
        name: "serve_model_mig_data_read_same",
        on_value: false,
        at_most: false,
        bound: 0.5,
        bounded_by: MIGDATA_BOUND,
    },
    Goal {
        name: "migration_stream_256mib",
        on_value: false,
        at_most: false,
        bound: 0.5,
        bounded_by: "each end makes one copy and one CRC32C pass per byte, with ordinary stores (the destination's lines are read before they are written, where memcpy streams), and the two threads share the 2 cores with the rest of the machine",
    },
    Goal {
        name: "migration_stream_256mib_one_thread",
        on_value: false,
        at_most: false,
        bound: 0.3,
        bounded_by: "two copies per byte (device to segment, segment to device) besides the two CRC32C passes",
    },
    Goal {
        name: "sim_busy_cycles_per_s",
        on_value: true,
        at_most: false,
        bound: 5.0,
        bounded_by: "the Verilated model's evaluation (two evals per cycle; the RTL's sequential block is most of it) and, in the harness, one more eval after each DMA answer",
    },
    Goal {
        name: "demo_downtime_model_256mib",
        on_value: true,
        at_most: true,
        bound: 1.0,
        bounded_by: "the phases swing with preemption on this loaded machine (see the five runs and the breakdown)",
    },
    Goal {
        name: "demo_downtime_sim",
        on_value: true,
        at_most: true,
        bound: 2.0,
        bounded_by: "the phases swing with preemption on this loaded machine (see the five runs and the breakdown: restore and transfer tail take milliseconds in the slow runs, tenths of a millisecond in the others)",
    },
];

/// "Goal ...: met" or "... missed by ...; bounded by ..." for a figure with
/// a goal.
fn goal_note(f: &Figure) -> Option<String> {
    let g = GOALS.iter().find(|g| g.name == f.name)?;
    let (x, what) = if g.on_value {
        (f.value, f.unit.as_str())
    } else {
        (f.ratio, "x the baseline")
    };
    let ok = if g.at_most {
        x <= g.bound
    } else {
        x >= g.bound
    };
    let cmp = if g.at_most { "<=" } else { ">=" };
    Some(if ok {
        format!("Goal {cmp} {} {what}: met", g.bound)
    } else {
        let by = (x - g.bound).abs();
        format!(
            "Goal {cmp} {} {what}: missed by {by:.3} in this run; bounded by: {}",
            g.bound, g.bounded_by
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_rtt_measures_every_round_trip() {
        let t = socket_rtt_us(16, 100).unwrap();
        assert_eq!(t.len(), 100);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert!(percentile(&t, 0.99) >= percentile(&t, 0.5));
    }

    #[test]
    fn report_reads_figures() {
        let d = std::env::temp_dir().join(format!("vfpga-bench-{}", std::process::id()));
        let f = Figure {
            schema_version: SCHEMA_VERSION,
            name: "x".into(),
            value: 2.0,
            unit: "u".into(),
            baseline_name: "b".into(),
            baseline_value: 1.0,
            ratio: 2.0,
            notes: String::new(),
        };
        write(&d, &f).unwrap();
        let out = d.join("B.md");
        report(&d, &out).unwrap();
        assert!(
            std::fs::read_to_string(&out)
                .unwrap()
                .contains("| `x` | 2.000 |")
        );
        // A script's file (no schema_version, raw precision) is normalized.
        std::fs::write(
            d.join("y.json"),
            r#"{"name":"y","value":1.23456789,"unit":"u","baseline_name":"b","baseline_value":1234567.0,"ratio":0.123456}"#,
        )
        .unwrap();
        report(&d, &out).unwrap();
        let y: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("y.json")).unwrap()).unwrap();
        assert_eq!(y["schema_version"], 1);
        assert_eq!(y["value"], 1.235);
        assert_eq!(y["baseline_value"], 1235000.0);
        assert_eq!(y["ratio"], 0.123);
        let _ = std::fs::remove_dir_all(&d);
    }
}

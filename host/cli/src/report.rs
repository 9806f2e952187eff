//! The demo report as people read it: text on the terminal and an SVG
//! timeline (`vfpga demo --plot`). The VMM library produces the data
//! ([`DemoReport`]); how it is shown belongs to the binary.

use vfpga_vmm::demo::DemoReport;

/// The human-readable report.
pub fn text(r: &DemoReport) -> String {
    let mut s = format!(
        "vfpga demo: live migration of the {} backend mid-workload\n\
         devices: {}\n\
         device memory {} KiB, workload {} descriptors ({}; {} with interrupts)\n",
        r.backend,
        r.devices,
        r.devmem_bytes >> 10,
        r.descriptors,
        if r.workload == "dirty-devmem" {
            "16-64 KiB fills and copies into device memory"
        } else {
            "copies, CRC32C, fills"
        },
        r.irqs_wanted
    );
    s.push_str(&format!(
        "pre-copy: downtime limit {:.0} ms, link {}\n",
        r.downtime_limit_ms,
        r.link_bytes_per_sec
            .map_or("unlimited".to_string(), |b| format!("{} MiB/s", b >> 20))
    ));
    for p in &r.passes {
        s.push_str(&format!("  {}\n", p.summary()));
    }
    s.push_str(&format!(
        "  stop-and-copy   : device {:>9} bytes, guest {:>5} pages (pre-copy ended: {}{})\n\
         descriptors verified: {} on the source, {} on the destination\n\
         interrupts: {} received, {} wanted\n\
         downtime {:.3} ms (device stopped on the source -> running on the destination)\n\
         migration {:.1} ms, total {:.1} ms\n",
        r.stop_copy_device_bytes,
        r.stop_copy_guest_pages,
        r.stop_detail,
        crate::migrate::throttle_text(&r.throttle_steps),
        r.verified_on_source,
        r.verified_on_destination,
        r.irqs_received,
        r.irqs_wanted,
        r.downtime_ms,
        r.migration_ms,
        r.total_ms
    ));
    let b = &r.downtime_breakdown;
    let t = &b.source;
    s.push_str(&format!(
        "  downtime ms: quiesce {:.3}, device stream {:.3}, guest pages {:.3}, handoff {:.3}, \
         transfer tail {:.3}, destination checks {:.3}, restore+resume {:.3} \
         ({} device reads, {} records, {} state changes)\n",
        t.quiesce_ms,
        t.device_stream_ms,
        t.guest_pages_ms,
        t.handoff_ms,
        b.transfer_tail_ms,
        b.destination_checks_ms,
        b.restore_resume_ms,
        t.device_reads,
        t.records,
        b.state_changes
    ));
    match &r.failure {
        None => s.push_str(
            "final guest and device memory identical to an unmigrated reference run\nPASS\n",
        ),
        Some(f) => s.push_str(&format!("FAIL: {f}\n")),
    }
    s
}

/// An SVG timeline: bytes sent per pre-copy pass and the downtime window.
pub fn svg(r: &DemoReport) -> String {
    let w = 760.0;
    let h = 360.0;
    let left = 70.0;
    let bottom = 300.0;
    let top = 50.0;
    let end_ms = (r.stopped_at_ms + r.downtime_ms).max(1e-3);
    let x = |ms: f64| left + (w - left - 20.0) * ms / end_ms;
    let bytes: Vec<f64> = r
        .passes
        .iter()
        .map(|p| p.device_bytes as f64 + p.guest_pages as f64 * 4096.0)
        .chain(std::iter::once(
            r.stop_copy_device_bytes as f64 + r.stop_copy_guest_pages as f64 * 4096.0,
        ))
        .collect();
    let max = bytes.iter().cloned().fold(1.0, f64::max);
    let y = |b: f64| bottom - (bottom - top) * b / max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"25\" font-size=\"15\">vfpga live migration ({}): bytes sent per pass, and the downtime window</text>\n\
         <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <text x=\"5\" y=\"{}\">{:.0} KiB</text><text x=\"5\" y=\"{bottom}\">0</text>\n\
         <text x=\"{}\" y=\"{}\">time since migration start (ms), {:.1} ms in all</text>\n",
        r.backend,
        w - 20.0,
        top + 4.0,
        max / 1024.0,
        left,
        bottom + 35.0,
        end_ms
    );
    let mut prev = 0.0;
    for (i, p) in r.passes.iter().enumerate() {
        let (x0, x1) = (x(prev), x(p.at_ms).max(x(prev) + 3.0));
        let b = bytes[i];
        s.push_str(&format!(
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7ebb\" stroke=\"white\"><title>pass {}: {} device bytes, {} guest pages</title></rect>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>\n",
            y(b),
            x1 - x0,
            bottom - y(b),
            p.pass,
            p.device_bytes,
            p.guest_pages,
            x0 + 2.0,
            y(b) - 3.0,
            if p.pass == 0 { "full".to_string() } else { format!("#{}", p.pass) }
        ));
        prev = p.at_ms;
    }
    let (d0, d1) = (x(r.stopped_at_ms), x(end_ms).max(x(r.stopped_at_ms) + 3.0));
    let b = bytes[bytes.len() - 1];
    s.push_str(&format!(
        "<rect x=\"{d0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4b183\" opacity=\"0.5\"/>\n\
         <rect x=\"{d0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#c0504d\"/>\n\
         <text x=\"{:.1}\" y=\"{}\" fill=\"#c0504d\" text-anchor=\"end\">downtime {:.3} ms (stop-and-copy)</text>\n\
         <text x=\"{left}\" y=\"{}\">{}</text>\n</svg>\n",
        d1 - d0,
        bottom - top,
        y(b),
        d1 - d0,
        bottom - y(b),
        d1,
        top - 5.0,
        r.downtime_ms,
        h - 10.0,
        if r.pass { "PASS: results bit-exact with an unmigrated run" } else { "FAIL" }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfpga_vmm::live::Pass;

    fn report(pass: bool) -> DemoReport {
        DemoReport {
            schema_version: vfpga_vmm::demo::SCHEMA_VERSION,
            backend: "model".into(),
            devices: "in this process".into(),
            devmem_bytes: 1 << 20,
            descriptors: 100,
            verified_on_source: 40,
            verified_on_destination: 60,
            passes: vec![
                Pass {
                    pass: 0,
                    device_bytes: 1 << 20,
                    guest_pages: 256,
                    descriptors_during: 10,
                    at_ms: 5.0,
                    pending_bytes: 4096,
                    remaining_bytes: 16384,
                    bandwidth_mib_s: 200.0,
                    estimated_downtime_ms: 0.08,
                    throttle: 0,
                },
                Pass {
                    pass: 1,
                    device_bytes: 4096,
                    guest_pages: 3,
                    descriptors_during: 2,
                    at_ms: 6.0,
                    pending_bytes: 0,
                    remaining_bytes: 4096,
                    bandwidth_mib_s: 100.0,
                    estimated_downtime_ms: 0.04,
                    throttle: 16,
                },
            ],
            stop_reason: "converged".into(),
            stop_detail: "converged (estimated downtime 0.0 ms <= limit 300 ms at 100.0 MiB/s)"
                .into(),
            downtime_limit_ms: 300.0,
            link_bytes_per_sec: None,
            throttle_steps: vec![vfpga_vmm::live::ThrottleStep {
                after_pass: 0,
                value: 16,
            }],
            workload: "mixed".into(),
            stop_copy_device_bytes: 512,
            stop_copy_guest_pages: 1,
            stopped_at_ms: 6.5,
            switchover_wait_ms: 0.2,
            downtime_ms: 0.75,
            downtime_breakdown: Default::default(),
            migration_ms: 7.0,
            total_ms: 20.0,
            reference_ms: 10.0,
            stop_copy_memcpy_ms: 0.01,
            irqs_wanted: 5,
            irqs_received: 5,
            pass,
            failure: (!pass).then(|| "memory differs".to_string()),
        }
    }

    #[test]
    fn text_names_passes_downtime_and_verdict() {
        let t = text(&report(true));
        assert!(t.contains("pre-copy pass  1"), "{t}");
        assert!(
            t.contains("pre-copy ended: converged (estimated downtime 0.0 ms <= limit 300 ms"),
            "{t}"
        );
        assert!(t.contains("DMA throttled 16 after pass 0"), "{t}");
        assert!(t.contains(", DMA throttle 16\n"), "{t}");
        assert!(t.contains("downtime 0.750 ms"), "{t}");
        assert!(t.ends_with("PASS\n"), "{t}");
        assert!(text(&report(false)).ends_with("FAIL: memory differs\n"));
    }

    #[test]
    fn svg_draws_each_pass_and_the_downtime() {
        let s = svg(&report(true));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<title>pass ").count(), 2);
        assert!(s.contains("downtime 0.750 ms"));
    }
}

//! When pre-copy ends: a downtime limit computed from the measured bandwidth
//! (the idea of QEMU's `downtime-limit`), a pass limit only as a fallback,
//! and auto-converge for a device that dirties faster than the link drains
//! (the idea of QEMU's vCPU throttling, applied to the device's DMA engine
//! through its `DMA_THROTTLE` register, datasheet §5.5).
//!
//! The source feeds [`Convergence::after_pass`] one [`PassSample`] per
//! pre-copy pass (bytes sent, how long sending took, bytes still to send)
//! and gets a [`Verdict`]: go on (perhaps with a higher throttle to program)
//! or stop now, with the [`EndReason`]. The logic is pure: no clock, no
//! device, so it is tested on numbers.

use std::time::Duration;

/// Largest `DMA_THROTTLE.IDLE` the register holds.
pub const THROTTLE_MAX: u32 = ((1u64 << vfpga_regs::fields::dma_throttle::IDLE.width) - 1) as u32;

/// Raising the device's DMA throttle when pre-copy does not shrink the dirty
/// set (auto-converge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoConverge {
    /// A pass counts as "dirtying too fast" when the bytes left after it
    /// are at least this percentage of the bytes it sent.
    pub dirty_pct: u32,
    /// Raise the throttle after this many such passes in a row (then count
    /// again from 0).
    pub high_passes: u32,
    /// First throttle value (idle cycles after each DMA burst).
    pub initial: u32,
    /// Each later step multiplies the throttle by this (at least 2), up to
    /// [`THROTTLE_MAX`].
    pub factor: u32,
}

impl Default for AutoConverge {
    /// 50 %, twice in a row, starting at 16 idle cycles per burst, ×4 a step.
    fn default() -> Self {
        AutoConverge {
            dirty_pct: 50,
            high_passes: 2,
            initial: 16,
            factor: 4,
        }
    }
}

impl AutoConverge {
    /// The throttle after `current` (0 = off): one step up, saturating at
    /// [`THROTTLE_MAX`].
    pub fn next(&self, current: u32) -> u32 {
        let v = if current == 0 {
            u64::from(self.initial.max(1))
        } else {
            u64::from(current) * u64::from(self.factor.max(2))
        };
        v.min(u64::from(THROTTLE_MAX)) as u32
    }
}

/// When pre-copy ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DowntimePolicy {
    /// Stop-and-copy starts once the bytes left, at the bandwidth the last
    /// pass measured, would take at most this long to send (QEMU's default
    /// downtime limit is 300 ms).
    pub downtime_limit: Duration,
    /// Fallback: stop after this many dirty passes (pass 0, the full copy,
    /// not counted) whatever is left.
    pub max_passes: u32,
    /// Also stop once at most this many bytes are left, whatever the
    /// bandwidth (`None`: no byte budget).
    pub byte_budget: Option<u64>,
    /// Stop when the bytes left did not shrink over this many passes in a row
    /// and the throttle cannot help any more (auto-converge off, or at its
    /// maximum); 0 = never.
    pub stall_passes: u32,
    /// Auto-converge; `None`: the device is never throttled.
    pub auto_converge: Option<AutoConverge>,
}

impl Default for DowntimePolicy {
    /// 300 ms, 30 passes, no byte budget, stall after 3 passes, auto-converge
    /// on.
    fn default() -> Self {
        DowntimePolicy {
            downtime_limit: Duration::from_millis(300),
            max_passes: 30,
            byte_budget: None,
            stall_passes: 3,
            auto_converge: Some(AutoConverge::default()),
        }
    }
}

/// What one pre-copy pass did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassSample {
    /// 0 = the full pass.
    pub pass: u32,
    /// Bytes sent in the pass (device data and guest pages).
    pub bytes_sent: u64,
    /// How long sending them took.
    pub transfer: Duration,
    /// Bytes stop-and-copy would send if pre-copy stopped now (device data
    /// pending and guest pages dirtied since they were last sent).
    pub remaining: u64,
}

/// Why pre-copy ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EndReason {
    /// The estimated downtime fits the limit.
    Converged {
        /// Bytes left / measured bandwidth, in ms.
        estimated_ms: f64,
        /// The limit, in ms.
        limit_ms: f64,
        /// Bandwidth of the last pass, bytes per second.
        bandwidth_bps: f64,
    },
    /// The bytes left fit the byte budget.
    ByteBudget {
        /// Bytes left.
        remaining: u64,
        /// The budget.
        budget: u64,
    },
    /// The pass limit was reached (fallback).
    PassLimit {
        /// Dirty passes done.
        passes: u32,
    },
    /// The bytes left stopped shrinking and the throttle cannot help.
    NotConverging {
        /// Dirty passes done.
        passes: u32,
    },
}

impl EndReason {
    /// Short name: `converged`, `byte-budget`, `pass-limit`, `not-converging`.
    pub fn name(&self) -> &'static str {
        match self {
            EndReason::Converged { .. } => "converged",
            EndReason::ByteBudget { .. } => "byte-budget",
            EndReason::PassLimit { .. } => "pass-limit",
            EndReason::NotConverging { .. } => "not-converging",
        }
    }

    /// Whether pre-copy converged (as opposed to a fallback ending it).
    pub fn converged(&self) -> bool {
        matches!(self, EndReason::Converged { .. })
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Converged {
                estimated_ms,
                limit_ms,
                bandwidth_bps,
            } => write!(
                f,
                "converged (estimated downtime {estimated_ms:.1} ms <= limit {limit_ms:.0} ms at {:.1} MiB/s)",
                bandwidth_bps / f64::from(1u32 << 20)
            ),
            EndReason::ByteBudget { remaining, budget } => {
                write!(f, "byte budget ({remaining} bytes left <= {budget})")
            }
            EndReason::PassLimit { passes } => write!(f, "pass limit ({passes} passes)"),
            EndReason::NotConverging { passes } => {
                write!(f, "not converging (after {passes} passes)")
            }
        }
    }
}

/// What to do after a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Another pass; program this throttle first when `Some`.
    Continue {
        /// New `DMA_THROTTLE` value.
        throttle: Option<u32>,
    },
    /// Stop-and-copy now.
    Stop(EndReason),
}

/// The pre-copy decision, pass after pass.
#[derive(Debug, Clone)]
pub struct Convergence {
    policy: DowntimePolicy,
    history: Vec<u64>,
    bandwidth: Option<f64>,
    high: u32,
    throttle: u32,
}

impl Convergence {
    /// A fresh decision (device not throttled).
    pub fn new(policy: DowntimePolicy) -> Self {
        Convergence {
            policy,
            history: Vec::new(),
            bandwidth: None,
            high: 0,
            throttle: 0,
        }
    }

    /// Bandwidth measured by the last pass that sent something, bytes/s.
    pub fn bandwidth(&self) -> Option<f64> {
        self.bandwidth
    }

    /// The throttle the last [`Verdict::Continue`] asked for (0 = none).
    pub fn throttle(&self) -> u32 {
        self.throttle
    }

    /// Estimated downtime for `bytes` at the measured bandwidth.
    pub fn estimate(&self, bytes: u64) -> Option<Duration> {
        let bw = self.bandwidth?;
        Some(Duration::from_secs_f64(bytes as f64 / bw))
    }

    /// After pass `s`: stop (and why), or go on (perhaps throttling). No
    /// verdict to stop after the full pass (pass 0).
    pub fn after_pass(&mut self, s: &PassSample) -> Verdict {
        let p = self.policy;
        if s.bytes_sent > 0 {
            let secs = s.transfer.as_secs_f64().max(1e-6);
            self.bandwidth = Some(s.bytes_sent as f64 / secs);
        }
        if s.pass == 0 {
            return Verdict::Continue { throttle: None };
        }
        self.history.push(s.remaining);
        let passes = self.history.len() as u32;
        if let (Some(est), Some(bw)) = (self.estimate(s.remaining), self.bandwidth)
            && est <= p.downtime_limit
        {
            return Verdict::Stop(EndReason::Converged {
                estimated_ms: est.as_secs_f64() * 1000.0,
                limit_ms: p.downtime_limit.as_secs_f64() * 1000.0,
                bandwidth_bps: bw,
            });
        }
        if let Some(budget) = p.byte_budget
            && s.remaining <= budget
        {
            return Verdict::Stop(EndReason::ByteBudget {
                remaining: s.remaining,
                budget,
            });
        }
        if passes >= p.max_passes {
            return Verdict::Stop(EndReason::PassLimit { passes });
        }
        let mut throttle = None;
        if let Some(ac) = p.auto_converge {
            let too_fast = u128::from(s.remaining) * 100
                >= u128::from(s.bytes_sent) * u128::from(ac.dirty_pct);
            self.high = if too_fast { self.high + 1 } else { 0 };
            if self.high >= ac.high_passes.max(1) && self.throttle < THROTTLE_MAX {
                self.high = 0;
                self.throttle = ac.next(self.throttle);
                throttle = Some(self.throttle);
            }
        }
        let can_throttle = p.auto_converge.is_some() && self.throttle < THROTTLE_MAX;
        let k = p.stall_passes as usize;
        let h = &self.history;
        if throttle.is_none()
            && !can_throttle
            && k > 0
            && h.len() > k
            && h[h.len() - k - 1..].windows(2).all(|w| w[1] >= w[0])
        {
            return Verdict::Stop(EndReason::NotConverging { passes });
        }
        Verdict::Continue { throttle }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pass: u32, sent: u64, ms: u64, remaining: u64) -> PassSample {
        PassSample {
            pass,
            bytes_sent: sent,
            transfer: Duration::from_millis(ms),
            remaining,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn stops_when_the_estimated_downtime_fits_the_limit() {
        let mut c = Convergence::new(DowntimePolicy::default());
        // 10 MiB in 1 s: 10 MiB/s. Never a stop after the full pass.
        assert_eq!(
            c.after_pass(&sample(0, 10 * MIB, 1000, MIB)),
            Verdict::Continue { throttle: None }
        );
        // 4 MiB left at 10 MiB/s = 400 ms > 300 ms: go on.
        assert_eq!(
            c.after_pass(&sample(1, 10 * MIB, 1000, 4 * MIB)),
            Verdict::Continue { throttle: None }
        );
        // 2 MiB left = 200 ms.
        match c.after_pass(&sample(2, 4 * MIB, 400, 2 * MIB)) {
            Verdict::Stop(r @ EndReason::Converged { estimated_ms, .. }) => {
                assert!((estimated_ms - 200.0).abs() < 1.0, "{r}");
                assert!(
                    r.to_string()
                        .starts_with("converged (estimated downtime 200.0 ms <= limit 300 ms"),
                    "{r}"
                );
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_pass_limit_is_a_fallback_and_the_byte_budget_an_option() {
        let policy = DowntimePolicy {
            max_passes: 3,
            auto_converge: None,
            stall_passes: 0,
            ..DowntimePolicy::default()
        };
        let mut c = Convergence::new(policy);
        c.after_pass(&sample(0, MIB, 1000, MIB));
        // 1 MiB/s: 1 MiB left is 1 s, never under 300 ms.
        assert!(matches!(
            c.after_pass(&sample(1, MIB, 1000, MIB)),
            Verdict::Continue { .. }
        ));
        assert!(matches!(
            c.after_pass(&sample(2, MIB, 1000, MIB)),
            Verdict::Continue { .. }
        ));
        assert_eq!(
            c.after_pass(&sample(3, MIB, 1000, MIB)),
            Verdict::Stop(EndReason::PassLimit { passes: 3 })
        );
        let mut c = Convergence::new(DowntimePolicy {
            byte_budget: Some(MIB),
            ..policy
        });
        c.after_pass(&sample(0, MIB, 1000, MIB));
        assert_eq!(
            c.after_pass(&sample(1, MIB, 1000, MIB)),
            Verdict::Stop(EndReason::ByteBudget {
                remaining: MIB,
                budget: MIB
            })
        );
    }

    #[test]
    fn auto_converge_raises_the_throttle_after_two_fast_dirtying_passes() {
        let mut c = Convergence::new(DowntimePolicy {
            max_passes: 100,
            ..DowntimePolicy::default()
        });
        c.after_pass(&sample(0, 8 * MIB, 1000, 8 * MIB));
        let mut steps = Vec::new();
        for pass in 1..=16 {
            // Everything sent is dirty again: never converges by itself.
            if let Verdict::Continue { throttle: Some(t) } =
                c.after_pass(&sample(pass, 8 * MIB, 1000, 8 * MIB))
            {
                steps.push((pass, t));
            }
        }
        assert_eq!(
            steps,
            [
                (2, 16),
                (4, 64),
                (6, 256),
                (8, 1024),
                (10, 4096),
                (12, 16384),
                (14, THROTTLE_MAX)
            ]
        );
        // At the maximum, a dirty set that does not shrink ends pre-copy.
        assert!(matches!(
            c.after_pass(&sample(17, 8 * MIB, 1000, 8 * MIB)),
            Verdict::Stop(EndReason::NotConverging { .. })
        ));
        // A pass that dirtied less than half of what it sent resets the count.
        let mut c = Convergence::new(DowntimePolicy::default());
        c.after_pass(&sample(0, 8 * MIB, 1000, 8 * MIB));
        assert_eq!(
            c.after_pass(&sample(1, 8 * MIB, 1000, 4 * MIB)),
            Verdict::Continue { throttle: None }
        );
        assert_eq!(
            c.after_pass(&sample(2, 8 * MIB, 1000, 3 * MIB)),
            Verdict::Continue { throttle: None }
        );
        assert_eq!(
            c.after_pass(&sample(3, 8 * MIB, 1000, 6 * MIB)),
            Verdict::Continue { throttle: None }
        );
        assert_eq!(
            c.after_pass(&sample(4, 8 * MIB, 1000, 6 * MIB)),
            Verdict::Continue { throttle: Some(16) }
        );
        assert_eq!(c.throttle(), 16);
    }
}

//! One place that forwards every [`Device`] method, provided ones included:
//! [`forward_device!`](crate::forward_device). A wrapper that forwarded only
//! the required four would silently replace a backend's faster provided
//! methods (the simulator's `run_until_idle`, device memory served from host
//! memory, ...) by the generic register-level ones.

use crate::Device;

/// Implements [`Device`] for a wrapper by forwarding **every** trait method,
/// the provided ones included, to the device the wrapper holds: `|s| EXPR`
/// turns `s: &Self` into a `&impl Device` (or `&dyn Device`), `|s| EXPR_MUT`
/// turns `s: &mut Self` into a `&mut` one. Generic parameters go in
/// brackets:
///
/// ```
/// use vfpga_device::{Device, fake::FakeDevice, forward_device};
///
/// struct Logged<D>(D);
/// forward_device! { impl[D: Device] Device for Logged<D> { |s| &s.0, |s| &mut s.0 } }
///
/// let mut d = Logged(FakeDevice::new(4));
/// d.quiesce().unwrap();
/// assert!(d.is_quiesced().unwrap());
/// ```
///
/// A method added to [`Device`] is added here too; the `forwards_every_method`
/// test of this module fails for a method that is not forwarded.
#[macro_export]
macro_rules! forward_device {
    (impl $([$($g:tt)*])? Device for $ty:ty { |$s:ident| $get:expr, |$m:ident| $get_mut:expr $(,)? }) => {
        impl $(<$($g)*>)? $crate::Device for $ty {
            fn info(&self) -> $crate::DeviceInfo {
                let $s = self;
                $crate::Device::info($get)
            }
            fn dma_through_port(&self) -> bool {
                let $s = self;
                $crate::Device::dma_through_port($get)
            }
            fn mmio_read(
                &mut self,
                bar: $crate::Bar,
                offset: u64,
                data: &mut [u8],
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::mmio_read($get_mut, bar, offset, data)
            }
            fn mmio_write(
                &mut self,
                bar: $crate::Bar,
                offset: u64,
                data: &[u8],
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::mmio_write($get_mut, bar, offset, data)
            }
            fn advance(
                &mut self,
                budget: u64,
            ) -> ::std::result::Result<$crate::Progress, $crate::DeviceError> {
                let $m = self;
                $crate::Device::advance($get_mut, budget)
            }
            fn read_reg(&mut self, offset: u32) -> ::std::result::Result<u32, $crate::DeviceError> {
                let $m = self;
                $crate::Device::read_reg($get_mut, offset)
            }
            fn write_reg(
                &mut self,
                offset: u32,
                value: u32,
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::write_reg($get_mut, offset, value)
            }
            fn status(
                &mut self,
            ) -> ::std::result::Result<$crate::__private::Status, $crate::DeviceError> {
                let $m = self;
                $crate::Device::status($get_mut)
            }
            fn check_identity(
                &mut self,
            ) -> ::std::result::Result<$crate::Identity, $crate::DeviceError> {
                let $m = self;
                $crate::Device::check_identity($get_mut)
            }
            fn run_until_idle(
                &mut self,
                max_units: u64,
            ) -> ::std::result::Result<u64, $crate::DeviceError> {
                let $m = self;
                $crate::Device::run_until_idle($get_mut, max_units)
            }
            fn quiesce(&mut self) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::quiesce($get_mut)
            }
            fn resume(&mut self) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::resume($get_mut)
            }
            fn is_quiesced(&mut self) -> ::std::result::Result<bool, $crate::DeviceError> {
                let $m = self;
                $crate::Device::is_quiesced($get_mut)
            }
            fn soft_reset(&mut self) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::soft_reset($get_mut)
            }
            fn state_error(
                &mut self,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::StateViolation>,
                $crate::DeviceError,
            > {
                let $m = self;
                $crate::Device::state_error($get_mut)
            }
            fn save_state(
                &mut self,
            ) -> ::std::result::Result<$crate::DeviceState, $crate::DeviceError> {
                let $m = self;
                $crate::Device::save_state($get_mut)
            }
            fn restore_state(
                &mut self,
                state: &$crate::DeviceState,
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::restore_state($get_mut, state)
            }
            fn devmem_read(
                &mut self,
                offset: u64,
                buf: &mut [u8],
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::devmem_read($get_mut, offset, buf)
            }
            fn devmem_write(
                &mut self,
                offset: u64,
                data: &[u8],
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::devmem_write($get_mut, offset, data)
            }
            fn take_dirty_pages(
                &mut self,
            ) -> ::std::result::Result<::std::vec::Vec<u64>, $crate::DeviceError> {
                let $m = self;
                $crate::Device::take_dirty_pages($get_mut)
            }
            fn dma_log_start(
                &mut self,
                base: u64,
                pages: u32,
            ) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::dma_log_start($get_mut, base, pages)
            }
            fn dma_log_take(
                &mut self,
            ) -> ::std::result::Result<(::std::vec::Vec<u64>, bool), $crate::DeviceError> {
                let $m = self;
                $crate::Device::dma_log_take($get_mut)
            }
            fn dma_log_stop(&mut self) -> ::std::result::Result<(), $crate::DeviceError> {
                let $m = self;
                $crate::Device::dma_log_stop($get_mut)
            }
        }
    };
}

forward_device! { impl[D: Device + ?Sized] Device for Box<D> { |s| &**s, |s| &mut **s } }

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::fake::FakeDevice;
    use crate::{Bar, DeviceError, DeviceInfo, DeviceState, Progress, StateViolation};

    /// A device that records which trait method was called on it, each
    /// provided one included (then does what the fake does).
    struct Spy {
        inner: FakeDevice,
        calls: Calls,
    }

    type Calls = Arc<Mutex<Vec<&'static str>>>;

    impl Spy {
        fn saw(&self, m: &'static str) {
            self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(m);
        }
    }

    macro_rules! spy {
        ($($name:ident(&mut self $(, $a:ident: $t:ty)*) -> $r:ty;)*) => {
            impl Device for Spy {
                fn info(&self) -> DeviceInfo {
                    self.saw("info");
                    self.inner.info()
                }
                fn dma_through_port(&self) -> bool {
                    self.saw("dma_through_port");
                    self.inner.dma_through_port()
                }
                $(fn $name(&mut self $(, $a: $t)*) -> $r {
                    self.saw(stringify!($name));
                    self.inner.$name($($a),*)
                })*
            }
        };
    }

    spy! {
        mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;
        mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError>;
        advance(&mut self, budget: u64) -> Result<Progress, DeviceError>;
        read_reg(&mut self, offset: u32) -> Result<u32, DeviceError>;
        write_reg(&mut self, offset: u32, value: u32) -> Result<(), DeviceError>;
        status(&mut self) -> Result<vfpga_regs::Status, DeviceError>;
        check_identity(&mut self) -> Result<crate::Identity, DeviceError>;
        run_until_idle(&mut self, max_units: u64) -> Result<u64, DeviceError>;
        quiesce(&mut self) -> Result<(), DeviceError>;
        resume(&mut self) -> Result<(), DeviceError>;
        is_quiesced(&mut self) -> Result<bool, DeviceError>;
        soft_reset(&mut self) -> Result<(), DeviceError>;
        state_error(&mut self) -> Result<Option<StateViolation>, DeviceError>;
        save_state(&mut self) -> Result<DeviceState, DeviceError>;
        restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError>;
        devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
        devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError>;
        take_dirty_pages(&mut self) -> Result<Vec<u64>, DeviceError>;
        dma_log_start(&mut self, base: u64, pages: u32) -> Result<(), DeviceError>;
        dma_log_take(&mut self) -> Result<(Vec<u64>, bool), DeviceError>;
        dma_log_stop(&mut self) -> Result<(), DeviceError>;
    }

    /// A wrapper built with the macro, as the crates' wrappers are.
    struct Wrapped<D>(D);
    forward_device! { impl[D: Device] Device for Wrapped<D> { |s| &s.0, |s| &mut s.0 } }

    /// Calls every trait method once on `d` and returns, per method, the
    /// first method the spy underneath saw.
    fn first_seen<W: Device + ?Sized>(d: &mut W, calls: &Calls) -> Vec<(&'static str, String)> {
        let log = || calls.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut probe = |name: &'static str, d: &mut W, call: &dyn Fn(&mut W)| {
            log().clear();
            call(d);
            let first = log()
                .first()
                .map_or("nothing".to_string(), |s| s.to_string());
            out.push((name, first));
        };
        probe("info", d, &|d| {
            let _ = d.info();
        });
        probe("dma_through_port", d, &|d| {
            let _ = d.dma_through_port();
        });
        probe("mmio_read", d, &|d| {
            let _ = d.mmio_read(Bar::Regs, 0, &mut [0; 4]);
        });
        probe("mmio_write", d, &|d| {
            let _ = d.mmio_write(Bar::DevMem, 0, &[0; 4]);
        });
        probe("advance", d, &|d| {
            let _ = d.advance(1);
        });
        probe("read_reg", d, &|d| {
            let _ = d.read_reg(0);
        });
        probe("write_reg", d, &|d| {
            let _ = d.write_reg(vfpga_regs::offsets::SCRATCH, 1);
        });
        probe("status", d, &|d| {
            let _ = d.status();
        });
        probe("check_identity", d, &|d| {
            let _ = d.check_identity();
        });
        probe("run_until_idle", d, &|d| {
            let _ = d.run_until_idle(10);
        });
        probe("quiesce", d, &|d| {
            let _ = d.quiesce();
        });
        probe("is_quiesced", d, &|d| {
            let _ = d.is_quiesced();
        });
        probe("state_error", d, &|d| {
            let _ = d.state_error();
        });
        probe("save_state", d, &|d| {
            let _ = d.save_state();
        });
        let saved = d.save_state();
        probe("restore_state", d, &|d| {
            if let Ok(s) = &saved {
                let _ = d.restore_state(s);
            }
        });
        probe("resume", d, &|d| {
            let _ = d.resume();
        });
        probe("devmem_read", d, &|d| {
            let _ = d.devmem_read(0, &mut [0; 16]);
        });
        probe("devmem_write", d, &|d| {
            let _ = d.devmem_write(0, &[1; 16]);
        });
        probe("take_dirty_pages", d, &|d| {
            let _ = d.take_dirty_pages();
        });
        probe("dma_log_start", d, &|d| {
            let _ = d.dma_log_start(0, 32);
        });
        probe("dma_log_take", d, &|d| {
            let _ = d.dma_log_take();
        });
        probe("dma_log_stop", d, &|d| {
            let _ = d.dma_log_stop();
        });
        probe("soft_reset", d, &|d| {
            let _ = d.soft_reset();
        });
        out
    }

    fn assert_forwards_every_method<W: Device + ?Sized>(what: &str, d: &mut W, calls: &Calls) {
        let seen = first_seen(d, calls);
        assert_eq!(seen.len(), 23, "every Device method is probed");
        let dropped: Vec<String> = seen
            .iter()
            .filter(|(m, first)| m != first)
            .map(|(m, first)| format!("{m} (the device saw {first} first)"))
            .collect();
        assert!(
            dropped.is_empty(),
            "{what} does not forward: {}",
            dropped.join(", ")
        );
    }

    fn spy() -> (Spy, Calls) {
        let calls = Calls::default();
        let s = Spy {
            inner: FakeDevice::new(4),
            calls: calls.clone(),
        };
        (s, calls)
    }

    #[test]
    fn forwards_every_method() {
        let (s, calls) = spy();
        assert_forwards_every_method("forward_device!", &mut Wrapped(s), &calls);
        let (s, calls) = spy();
        assert_forwards_every_method("Box<Spy>", &mut Box::new(s), &calls);
        let (s, calls) = spy();
        let mut d: Box<dyn Device> = Box::new(s);
        assert_forwards_every_method("Box<dyn Device>", &mut d, &calls);
        let (s, calls) = spy();
        let mut d: Box<dyn Device> = Box::new(Wrapped(Box::new(s)));
        assert_forwards_every_method("Box<dyn Device> of a wrapper", &mut d, &calls);
    }
}

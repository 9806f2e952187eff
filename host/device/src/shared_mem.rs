//! Copies to and from memory shared with another process, safe against the
//! other process shrinking the file under the mapping.
//!
//! A shared file mapping whose file is truncated raises SIGBUS on the next
//! access to a page past the new end of file. For a server that maps a
//! client's memory, that would let the client kill the server. So every copy
//! into or out of such a mapping runs with a per-thread flag set, and a
//! process-wide SIGBUS handler, installed once, recognizes a fault raised
//! while that flag is set: it replaces the faulting page with an anonymous
//! zero page (so the faulting instruction completes when it is restarted)
//! and records the fault in a second per-thread flag. The copy then reports
//! failure, and its caller declares the mapping dead. A SIGBUS raised anywhere
//! else is passed on to the handler that was installed before ours (Rust's
//! own, which handles stack guard pages), or to the default action.
//!
//! The copies are volatile word copies: the other process may write the
//! memory concurrently, which must not be a data race of this program.

#![allow(unsafe_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, compiler_fence};

thread_local! {
    // Const-initialized atomics without a destructor: plain TLS slots, safe
    // to touch from a signal handler.
    static ACTIVE: AtomicBool = const { AtomicBool::new(false) };
    /// Lowest address that faulted during the current copy (`usize::MAX`: none).
    static FAULT_AT: AtomicUsize = const { AtomicUsize::new(usize::MAX) };
}

/// The handler that was installed before ours.
static PREVIOUS: OnceLock<Result<libc::sigaction, i32>> = OnceLock::new();

/// Installs the SIGBUS guard (once per process; later calls are free).
pub fn install_guard() -> std::io::Result<()> {
    let r = PREVIOUS.get_or_init(|| {
        // SAFETY: zeroed `sigaction` structs are valid (empty mask, no flags);
        // the handler has the `SA_SIGINFO` signature and only makes
        // async-signal-safe calls (mmap, sigaction) and touches const TLS.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &sa, &mut old) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(old)
        }
    });
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::from_raw_os_error(*e)),
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if ACTIVE.with(|a| a.load(Ordering::Relaxed)) && !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        // Replace the faulting page (a huge page for hugetlbfs, where a
        // smaller fixed mapping is refused) with anonymous zero memory.
        for size in [4096usize, 2 << 20, 1 << 30] {
            let page = addr & !(size - 1);
            // SAFETY: `page` lies inside the shared mapping a guarded copy is
            // accessing (the copy set ACTIVE); replacing it with private
            // anonymous memory of the same protection is what we want, and
            // mmap is async-signal-safe.
            let r = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                FAULT_AT.with(|f| f.fetch_min(addr, Ordering::Relaxed));
                return;
            }
        }
    }
    chain(sig, info, ctx);
}

/// Passes a SIGBUS that is not ours to the previous handler, or restores the
/// default action so that the restarted instruction faults again and the
/// process ends as it would have without us.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(Ok(prev)) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with
                // SA_SIGINFO, so it has this signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a handler installed without SA_SIGINFO takes the
                // signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Runs `f` with the guard armed: `Err(address)` with the lowest address
/// whose page vanished during `f` (that page now reads as zeros).
fn guarded(f: impl FnOnce()) -> Result<(), usize> {
    FAULT_AT.with(|x| x.store(usize::MAX, Ordering::Relaxed));
    ACTIVE.with(|x| x.store(true, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    f();
    compiler_fence(Ordering::SeqCst);
    ACTIVE.with(|x| x.store(false, Ordering::Relaxed));
    match FAULT_AT.with(|x| x.load(Ordering::Relaxed)) {
        usize::MAX => Ok(()),
        a => Err(a),
    }
}

/// The widest single access: 16 bytes on x86-64 (one SSE load or store;
/// aligned, it is atomic on processors with AVX), 8 bytes elsewhere. A
/// copy uses it for every aligned chunk, so a 16-byte completion entry
/// written by the device is seen whole by a guest polling its phase bit, as
/// with the memcpy the copies replace.
#[cfg(target_arch = "x86_64")]
type Word = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Word = u64;

const W: usize = std::mem::size_of::<Word>();

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`. Fails
/// with the lowest address whose page vanished during the copy (`dst` then
/// holds unspecified bytes).
///
/// # Safety
///
/// `[src, src + dst.len())` must be mapped for reading for the whole call
/// (a page that loses its backing file is handled), and must not overlap
/// `dst`. [`install_guard`] must have succeeded.
pub unsafe fn copy_from(src: *const u8, dst: &mut [u8]) -> Result<(), usize> {
    let n = dst.len();
    let d = dst.as_mut_ptr();
    guarded(|| {
        let mut i = 0;
        // SAFETY: every offset used is below `n`, so inside both ranges (the
        // caller guarantees them mapped and disjoint); wide loads are aligned.
        unsafe {
            while i < n && !(src as usize + i).is_multiple_of(W) {
                *d.add(i) = src.add(i).read_volatile();
                i += 1;
            }
            while i + W <= n {
                let v = src.add(i).cast::<Word>().read_volatile();
                d.add(i).cast::<Word>().write_unaligned(v);
                i += W;
            }
            while i < n {
                *d.add(i) = src.add(i).read_volatile();
                i += 1;
            }
        }
    })
}

/// Copies `src` into shared memory at `dst`. Fails with the lowest address
/// whose page vanished during the copy (what landed is unspecified).
///
/// # Safety
///
/// `[dst, dst + src.len())` must be mapped for writing for the whole call
/// (a page that loses its backing file is handled), and must not overlap
/// `src`. [`install_guard`] must have succeeded.
pub unsafe fn copy_to(src: &[u8], dst: *mut u8) -> Result<(), usize> {
    let n = src.len();
    let s = src.as_ptr();
    guarded(|| {
        let mut i = 0;
        // SAFETY: every offset used is below `n`, so inside both ranges (the
        // caller guarantees them mapped and disjoint); wide stores are aligned.
        unsafe {
            while i < n && !(dst as usize + i).is_multiple_of(W) {
                dst.add(i).write_volatile(*s.add(i));
                i += 1;
            }
            while i + W <= n {
                let v = s.add(i).cast::<Word>().read_unaligned();
                dst.add(i).cast::<Word>().write_volatile(v);
                i += W;
            }
            while i < n {
                dst.add(i).write_volatile(*s.add(i));
                i += 1;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_alignment_and_length() {
        let src: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in 0..9 {
            for len in [0, 1, 7, 8, 9, 63, 64, 65, 150] {
                let mut out = vec![0u8; len];
                install_guard().expect("guard");
                // SAFETY: in-bounds, distinct allocations; the guard is armed.
                let ok = unsafe { copy_from(src.as_ptr().add(off), &mut out) };
                assert!(ok.is_ok());
                assert_eq!(out, &src[off..off + len]);
                let mut dst = vec![0u8; 200];
                // SAFETY: as above.
                let ok = unsafe { copy_to(&src[..len], dst.as_mut_ptr().add(off)) };
                assert!(ok.is_ok());
                assert_eq!(&dst[off..off + len], &src[..len]);
                assert!(dst[..off].iter().all(|b| *b == 0));
            }
        }
    }
}

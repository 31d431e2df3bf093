//! SIGINT/SIGTERM/SIGHUP handling without async signal handlers: the signals are blocked in every
//! thread and one thread collects them with `sigwait`.

use std::io;

fn shutdown_set(extra: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        // A closed terminal or SSH session must leave the party too.
        libc::sigaddset(&mut set, libc::SIGHUP);
        for signal in extra {
            libc::sigaddset(&mut set, *signal);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it spawns afterwards.
/// Call before starting any thread.
pub fn block() -> io::Result<()> {
    block_with(&[])
}

/// Like [`block`], and also the `extra` signals (e.g. SIGUSR1 for a report on request).
pub fn block_with(extra: &[i32]) -> io::Result<()> {
    let set = shutdown_set(extra);
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Starts a thread that calls `on_signal` with each SIGINT/SIGTERM/SIGHUP it receives.
pub fn spawn_waiter(on_signal: impl Fn(i32) + Send + 'static) -> io::Result<()> {
    spawn_waiter_with(&[], on_signal)
}

/// Like [`spawn_waiter`], also collecting the `extra` signals blocked with [`block_with`].
pub fn spawn_waiter_with(
    extra: &'static [i32],
    on_signal: impl Fn(i32) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let set = shutdown_set(extra);
            let mut signal = 0;
            // SAFETY: a valid set and out pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                on_signal(signal);
            }
        })
        .map(|_| ())
}

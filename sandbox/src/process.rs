//! Starting the sandbox's background processes detached, and stopping them by PID and only
//! those.

use std::time::{Duration, Instant};

pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // A zombie still answers kill(0); read its state so a reaped-later child counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and its command line contains `needle`: a recorded PID that the
/// system has since given to another program is not ours to signal.
pub fn is_ours(pid: u32, needle: &str) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
}

/// SIGTERM to the process group the sandbox made for `pid` (and `pid` itself), then SIGKILL
/// after `grace`.
pub fn stop(pid: u32, grace: Duration) {
    if pid == 0 || !alive(pid) {
        return;
    }
    let signal = |sig| unsafe {
        libc::kill(-(pid as i32), sig);
        libc::kill(pid as i32, sig);
    };
    signal(libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            reap(pid);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    reap(pid);
}

/// Collects the exit status when `pid` is our child, so it does not linger as a zombie.
fn reap(pid: u32) {
    unsafe {
        let mut status = 0;
        libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
    }
}

/// Runs the child in its own session so that the caller's terminal signals do not reach it and
/// `down` can stop its whole process group. With `die_with_parent` (sandboxes owned by a test)
/// the kernel stops it when the spawning thread is gone, so a killed test leaves no servers.
pub fn detach(cmd: &mut std::process::Command, die_with_parent: bool) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if die_with_parent {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
}

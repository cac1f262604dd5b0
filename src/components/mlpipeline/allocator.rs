//! glibc's allocator, told to give transfer buffers back. Multipart parts and small objects are
//! megabytes each and freed on whichever thread finishes them; by default glibc raises its mmap
//! threshold after the first such free, so later buffers land in per-thread arenas and stay
//! resident, and peak memory creeps up with the amount of data moved. A fixed threshold keeps
//! every buffer of 1 MiB or more in its own mapping, returned on free.

/// Call once at the start of a process that moves data (the CLI, the daemon, the charm).
pub fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

//! How the ggrok binaries that use mimalloc (the CLI and the server) take memory.

/// Turns transparent huge pages off for this process (Linux; elsewhere a no-op). mimalloc asks
/// for them, and the kernel then zeroes 2 MiB at the first touch of each, in the middle of
/// serving: a fresh server's first few hundred WebSockets had echoes delayed by milliseconds
/// (p99 4-6 ms against 0.6 ms without), and a fresh client under 200 WebSockets peaked at
/// 64-67 MiB of RSS against 19-25 MiB without (docs/benchmarks.md). Pages of 4 KiB fault more
/// often but never stall that long. Call it first thing in `main`.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

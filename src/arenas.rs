//! glibc's malloc arenas: at most [`ARENAS`] unless the environment says
//! otherwise.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight
//! per core, and each arena keeps memory it no longer uses. The poller's
//! threads (tokio's workers, the blocking pool, SQLite's thread) spread
//! their allocations over many: the 1,000,000-entry catch-up peaked at 56.1
//! MiB with glibc's default and 46.0 MiB with two arenas, for the same rate
//! (BENCHMARKS.md section 11). glibc reads `MALLOC_ARENA_MAX` once, before
//! `main`, and setting it from within (`mallopt`) would take unsafe code, so
//! a process started without it runs itself again with it: one `exec`, the
//! same process id, arguments and environment, before any thread or file
//! exists. The systemd unit and the image set it already, so they never
//! take that step. `MALLOC_ARENA_MAX` (or `arena_max` in `GLIBC_TUNABLES`)
//! set to anything is left as it is: that is how an operator chooses
//! another value.

/// The arenas a poller started without `MALLOC_ARENA_MAX` runs with.
pub const ARENAS: &str = "2";
const VAR: &str = "MALLOC_ARENA_MAX";

/// Whether the environment leaves the arenas to glibc's default.
fn unset(var: Option<std::ffi::OsString>, tunables: Option<std::ffi::OsString>) -> bool {
    let tuned = tunables.is_some_and(|t| t.to_string_lossy().contains("arena_max"));
    var.is_none() && !tuned
}

/// Runs this program again with `MALLOC_ARENA_MAX` set, unless it is set
/// already (or this is not glibc). Returns only when it does not: nothing to
/// do, or the `exec` failed (then the poller goes on with glibc's default).
pub fn limit() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    if !unset(std::env::var_os(VAR), std::env::var_os("GLIBC_TUNABLES")) {
        return;
    }
    reexec();
}

#[cfg(unix)]
fn reexec() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // Returns only on failure; the variable keeps a second try from looping.
    let _ = cmd.args(args).env(VAR, ARENAS).exec();
}

#[cfg(not(unix))]
fn reexec() {}

#[cfg(test)]
mod tests {
    use super::unset;

    #[test]
    fn only_an_environment_that_says_nothing_is_changed() {
        assert!(unset(None, None));
        assert!(unset(None, Some("glibc.malloc.tcache_count=0".into())));
        assert!(!unset(Some("2".into()), None));
        assert!(!unset(Some("8".into()), None));
        assert!(!unset(Some("".into()), None));
        assert!(!unset(None, Some("glibc.malloc.arena_max=4".into())));
    }
}

//! glibc's malloc settings: at most [`ARENAS`] arenas and a fixed mmap
//! threshold, unless the environment says otherwise.
//!
//! - **Arenas.** glibc gives each thread that allocates an arena of its own,
//!   up to eight per core, and each arena keeps memory it no longer uses.
//!   The poller's threads (tokio's workers, the blocking pool, SQLite's
//!   thread) spread their allocations over many: the 1,000,000-entry
//!   catch-up peaked at 56.1 MiB with glibc's default and 46.0 MiB with two
//!   arenas, for the same rate (BENCHMARKS.md section 11).
//! - **The mmap threshold.** glibc serves an allocation of 128 KiB or more
//!   with its own mapping, returned to the system when freed, but raises that
//!   threshold (up to 32 MiB) every time it frees one. After the first
//!   activity log pages (about 480 KiB each) were freed, later ones and the
//!   HTTP client's read buffers came from the arenas, whose freed memory
//!   stays: the same catch-up peaked at 50.2 MiB, and at 45.0 MiB with the
//!   threshold fixed at [`MMAP_THRESHOLD`], for the same rate and 4% less
//!   CPU (BENCHMARKS.md section 13).
//!
//! glibc reads these once, before `main`, and setting them from within
//! (`mallopt`) would take unsafe code, so a process started without them
//! runs itself again with them: one `exec`, the same process id, arguments
//! and environment, before any thread or file exists. The systemd unit and
//! the image set them already, so they never take that step. A variable (or
//! its name in `GLIBC_TUNABLES`) set to anything is left as it is: that is
//! how an operator chooses another value.

use std::ffi::OsString;

/// The arenas a poller started without `MALLOC_ARENA_MAX` runs with.
pub const ARENAS: &str = "2";
/// The mmap threshold (bytes) a poller started without
/// `MALLOC_MMAP_THRESHOLD_` runs with: glibc's own starting value, fixed.
pub const MMAP_THRESHOLD: &str = "131072";

/// Each setting: its variable, the poller's value, and its name in
/// `GLIBC_TUNABLES`.
const SETTINGS: [(&str, &str, &str); 2] = [
    ("MALLOC_ARENA_MAX", ARENAS, "arena_max"),
    ("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD, "mmap_threshold"),
];

/// The settings the environment (`get`) leaves to glibc's default.
fn unset(get: impl Fn(&str) -> Option<OsString>) -> Vec<(&'static str, &'static str)> {
    let tunables = get("GLIBC_TUNABLES")
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    SETTINGS
        .iter()
        .filter(|(var, _, tunable)| get(var).is_none() && !tunables.contains(tunable))
        .map(|(var, value, _)| (*var, *value))
        .collect()
}

/// Runs this program again with the settings the environment leaves out,
/// unless it leaves none (or this is not glibc). Returns only when it does
/// not: nothing to do, or the `exec` failed (then the poller goes on with
/// glibc's defaults).
pub fn limit() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let missing = unset(|v| std::env::var_os(v));
    if missing.is_empty() {
        return;
    }
    reexec(&missing);
}

#[cfg(unix)]
fn reexec(missing: &[(&str, &str)]) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // Returns only on failure; the variables keep a second try from looping.
    let _ = cmd.args(args).envs(missing.iter().copied()).exec();
}

#[cfg(not(unix))]
fn reexec(_: &[(&str, &str)]) {}

#[cfg(test)]
mod tests {
    use super::unset;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn only_what_the_environment_leaves_out_is_set() {
        let both = vec![
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ];
        assert_eq!(unset(env(&[])), both);
        assert_eq!(
            unset(env(&[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")])),
            both
        );
        assert_eq!(
            unset(env(&[("MALLOC_ARENA_MAX", "8")])),
            vec![("MALLOC_MMAP_THRESHOLD_", "131072")]
        );
        assert_eq!(
            unset(env(&[
                ("MALLOC_ARENA_MAX", ""),
                ("MALLOC_MMAP_THRESHOLD_", "1")
            ])),
            vec![]
        );
        assert_eq!(
            unset(env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")])),
            vec![("MALLOC_MMAP_THRESHOLD_", "131072")]
        );
        assert_eq!(
            unset(env(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.arena_max=4:glibc.malloc.mmap_threshold=65536"
            )])),
            vec![]
        );
    }
}

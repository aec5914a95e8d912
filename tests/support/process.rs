//! The binary under test as a process: a finished run (`Run`: exit code and
//! outputs) and a running daemon (`Daemon`: its log, signals, stop, kill).
//! Whatever a process did, the database password never shows in what it
//! printed.

use std::path::PathBuf;
use std::time::Duration;

use super::{eventually, postgres};

pub struct Run {
    pub code: Option<i32>,
    pub stderr: String,
    pub stdout: String,
}

impl Run {
    /// Asserts the exit code; a failure shows both outputs.
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts that the log (stderr) holds `needle`.
    pub fn assert_logged(&self, needle: &str) -> &Self {
        assert_holds(&self.stderr, needle, true, "in the log");
        self
    }

    /// Asserts that the log (stderr) does not hold `needle`.
    pub fn assert_not_logged(&self, needle: &str) -> &Self {
        assert_holds(&self.stderr, needle, false, "in the log");
        self
    }

    /// Asserts that the output (stdout) holds `needle`.
    pub fn assert_printed(&self, needle: &str) -> &Self {
        assert_holds(&self.stdout, needle, true, "printed");
        self
    }
}

/// Asserts that `output` holds `needle` (`wanted`) or does not; a failure
/// shows the output.
fn assert_holds(output: &str, needle: &str, wanted: bool, place: &str) {
    let not = if wanted { "not " } else { "" };
    assert_eq!(
        output.contains(needle),
        wanted,
        "{needle:?} {not}{place}:\n{output}"
    );
}

/// Asserts that `output` does not show the database password.
pub fn assert_no_db_password(output: &str) {
    assert!(
        !output.contains(postgres::DB_PASSWORD),
        "the database password was printed:\n{output}"
    );
}

pub struct Daemon {
    pub child: tokio::process::Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `times` times, for 30 s at most.
    pub async fn wait_for_log(&self, needle: &str, times: usize) {
        let what = format!("{needle:?} logged {times} time(s)");
        eventually(Duration::from_secs(30), &what, || {
            self.log().matches(needle).count() >= times
        })
        .await;
    }

    /// Sends a signal by name (TERM, HUP, ...).
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status();
        }
    }

    /// The daemon has not exited (so far).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the daemon to exit on its own, for `limit` at most; its
    /// exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the daemon did not exit within {limit:?}"))
            .expect("wait for the daemon");
        status.code()
    }

    /// SIGTERM, then waits (60 s at most) for the exit code; the log.
    pub async fn stop(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let code = self.exit_code(Duration::from_secs(60)).await;
        let log = self.log();
        assert_no_db_password(&log);
        (code, log)
    }

    /// [`Daemon::stop`], asserting that the daemon exited 0; the log.
    pub async fn stop_cleanly(self) -> String {
        let (code, log) = self.stop().await;
        assert_eq!(code, Some(0), "{log}");
        log
    }

    /// SIGKILL: no chance to clean up. The log, which holds no panic.
    pub async fn kill(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let log = self.log();
        assert!(!log.contains("panicked"), "{log}");
        log
    }
}

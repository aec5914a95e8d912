//! The environment the configuration reads (`*_env` secrets,
//! `$CREDENTIALS_DIRECTORY`), behind a trait so that tests pass a map and
//! never touch the process's own.

use std::collections::BTreeMap;

/// Where a variable comes from: the process environment, or a map in tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

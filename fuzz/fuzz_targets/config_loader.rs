//! Arbitrary UTF-8 as the text of `poller.toml`.
//!
//! `Config::parse` may reject the text, but must never panic, and its error
//! must render. With an empty environment, nothing comes from the process
//! environment or `$CREDENTIALS_DIRECTORY`; `*_file` keys may still name real
//! paths, which are only read or stat'ed.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use azure_activity_poller::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: BTreeMap<String, String> = BTreeMap::new();
    match Config::parse(text, Path::new("fuzz.toml"), &env) {
        Ok(config) => {
            let _ = config.handler_conflicts();
            for s in &config.subscriptions {
                let _ = s.label();
            }
        }
        Err(err) => {
            let _ = err.to_string();
            if let ConfigError::Invalid { problems, .. } = &err {
                // `check-config` prints these; a rejection must say why.
                assert!(!problems.is_empty(), "rejected without a problem");
                for p in problems {
                    assert!(p.line >= 1 && p.column >= 1, "bad position {p:?}");
                }
            }
        }
    }
});

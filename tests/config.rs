//! `check-config`, as a user runs it: the real binary on a file written to a
//! temporary directory. Every problem must come out as `PATH:LINE:COL: message`
//! on stderr, pointing at the offending key or value, with exit code 78; a good
//! file says "valid" and exits 0. Secrets never appear in the output.

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_azure-activity-poller");
const CONFIG_EXIT: i32 = 78;

/// A valid configuration; tests edit it.
const BASE: &str = r#"[state]
path = "state.db"

[azure]
cloud = "public"

[credentials.main]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11112222-bbbb-3333-cccc-4444dddd5555"
client_secret_file = "client-secret"   # relative: next to the config file unless $CREDENTIALS_DIRECTORY is set

[guardrails]
ingest_url = "https://example.turbot.com/api/v5/events/raw?token=abc"
format = "activity-log-alert"

[defaults]
credential = "main"
interval = "1m"
window = "15m"

[[subscription]]
id = "089bd33f-d4ec-47fe-8ba5-0753aa5c5b33"
"#;

const SUB: &str = "089bd33f-d4ec-47fe-8ba5-0753aa5c5b33";
const SECRET_FILE_LINE: &str = r#"client_secret_file = "client-secret""#;
const UNSET_VAR: &str = "AZURE_ACTIVITY_POLLER_TEST_UNSET_VARIABLE";

/// `text` with the first line starting with `old` replaced by `new`
/// (which may span several lines).
fn edit(text: &str, old: &str, new: &str) -> String {
    let start = text
        .find(&format!("\n{old}"))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{old:?} is not in the config"));
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    format!("{}{new}{}", &text[..start], &text[end..])
}

/// The base config with `lines` added after its line starting with `key`.
fn add_after(key: &str, lines: &str) -> String {
    let line = BASE
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key:?} is not in the config"));
    edit(BASE, key, &format!("{line}\n{lines}"))
}

/// The base config with `lines` appended to its (last) `[[subscription]]`.
fn with_sub(lines: &str) -> String {
    format!("{BASE}{lines}\n")
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle`.
fn locate_nth(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} occurs fewer than {} times", nth + 1))
        .0;
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn locate(text: &str, needle: &str) -> (usize, usize) {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must occur once in:\n{text}"
    );
    locate_nth(text, needle, 0)
}

/// A temporary directory holding the config file and, by default, the
/// `client-secret` file the base config names.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("client-secret", "client-secret-from-file\n");
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Runs `check-config` on `text`; `env` entries set (`Some`) or remove
    /// (`None`) variables. `CREDENTIALS_DIRECTORY` is removed unless set here.
    fn check_env(&self, text: &str, env: &[(&str, Option<&str>)]) -> Run {
        let config = self.write("poller.toml", text);
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config")
            .arg("--config")
            .arg(&config)
            .env_remove("CREDENTIALS_DIRECTORY");
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        Run::from(&mut cmd, text, config)
    }

    fn check(&self, text: &str) -> Run {
        self.check_env(text, &[])
    }
}

/// Runs `check-config` on `text` in a fresh fixture.
fn check(text: &str) -> Run {
    Fixture::new().check(text)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    text: String,
    config: PathBuf,
}

impl Run {
    fn from(cmd: &mut Command, text: &str, config: PathBuf) -> Self {
        let out = cmd.output().unwrap();
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            text: text.to_string(),
            config,
        }
    }

    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn context(&self) -> String {
        format!(
            "exit {:?}\n--- config\n{}--- stdout\n{}--- stderr\n{}",
            self.code, self.text, self.stdout, self.stderr
        )
    }

    fn problems(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("warning: "))
            .collect()
    }

    fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .collect()
    }

    fn assert_valid(&self) {
        assert_eq!(self.code, Some(0), "{}", self.context());
        assert!(self.stdout.contains("valid"), "{}", self.context());
        assert!(self.problems().is_empty(), "{}", self.context());
    }

    /// Exit 78 and a problem at `at` whose message contains every `words`.
    fn assert_problem(&self, at: (usize, usize), words: &[&str]) -> &Self {
        assert_eq!(self.code, Some(CONFIG_EXIT), "{}", self.context());
        let prefix = format!("{}:{}:{}: ", self.config.display(), at.0, at.1);
        let found = self.problems().into_iter().any(|l| {
            l.strip_prefix(&prefix)
                .is_some_and(|msg| words.iter().all(|w| msg.contains(w)))
        });
        assert!(
            found,
            "expected a problem `{prefix}...` mentioning {words:?}\n{}",
            self.context()
        );
        self
    }

    /// Like `assert_problem`, and it is the only problem.
    fn assert_only_problem(&self, at: (usize, usize), words: &[&str]) -> &Self {
        self.assert_problem(at, words);
        assert_eq!(self.problems().len(), 1, "{}", self.context());
        self
    }

    /// The only problem is at `needle` (its `nth` occurrence) in the config.
    fn assert_only_problem_at_nth(&self, needle: &str, nth: usize, words: &[&str]) -> &Self {
        self.assert_only_problem(locate_nth(&self.text, needle, nth), words)
    }

    fn assert_only_problem_at(&self, needle: &str, words: &[&str]) -> &Self {
        self.assert_only_problem(locate(&self.text, needle), words)
    }

    fn assert_never_shows(&self, secret: &str) {
        assert!(
            !self.all().contains(secret),
            "secret {secret:?} printed\n{}",
            self.context()
        );
    }
}

// ------------------------------------------------------------- valid ----

#[test]
fn the_base_config_is_valid() {
    let run = check(BASE);
    run.assert_valid();
    assert!(
        run.stdout.contains("1 subscription(s)"),
        "{}",
        run.context()
    );
}

#[test]
fn http_to_a_loopback_ingest_url_is_allowed() {
    check(&edit(
        BASE,
        "ingest_url =",
        r#"ingest_url = "http://127.0.0.1:8080/api/v5/events/raw?token=abc""#,
    ))
    .assert_valid();
}

#[test]
fn a_missing_config_file_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&missing)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(CONFIG_EXIT), "{stderr}");
    assert!(
        stderr.contains("cannot read configuration file"),
        "{stderr}"
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

// ------------------------------------------------- syntax and schema ----

#[test]
fn a_toml_syntax_error_points_at_the_bad_value() {
    check(&edit(BASE, "interval =", "interval = 1m"))
        .assert_only_problem_at("1m\n", &["must be quoted"]);
}

#[test]
fn an_unterminated_string_is_reported_on_its_line() {
    let text = edit(BASE, "format =", r#"format = "activity-log-alert"#);
    let (line, _) = locate(&text, "format =");
    let end = text.lines().nth(line - 1).unwrap().chars().count() + 1;
    check(&text).assert_only_problem((line, end), &["string"]);
}

#[test]
fn an_unknown_top_level_key_is_reported() {
    check(&format!("colour = \"blue\"\n{BASE}"))
        .assert_only_problem_at("colour", &["unknown field `colour`"]);
}

#[test]
fn an_unknown_guardrails_key_is_reported() {
    check(&add_after("format =", "fromat = \"event-data\""))
        .assert_only_problem_at("fromat", &["unknown field `fromat`", "ingest_url"]);
}

#[test]
fn an_unknown_subscription_key_is_reported() {
    check(&with_sub("region = \"westeurope\""))
        .assert_only_problem_at("region", &["unknown field `region`", "interval"]);
}

#[test]
fn a_wrong_type_is_reported_at_the_value() {
    check(&add_after("cloud =", "max_retries = \"eight\""))
        .assert_only_problem_at("\"eight\"", &["invalid type", "eight", "i64"]);
}

// ----------------------------------------------------- subscriptions ----

#[test]
fn a_duplicate_subscription_id_reports_the_second() {
    let text = with_sub(&format!("\n[[subscription]]\nid = \"{SUB}\""));
    check(&text).assert_only_problem_at_nth(&format!("\"{SUB}\""), 1, &["duplicate", SUB]);
}

#[test]
fn a_duplicate_differing_only_in_case_is_still_a_duplicate() {
    let upper = SUB.to_ascii_uppercase();
    let text = with_sub(&format!("\n[[subscription]]\nid = \"{upper}\""));
    check(&text).assert_only_problem_at(&format!("\"{upper}\""), &["duplicate", SUB]);
}

#[test]
fn a_subscription_id_must_be_a_guid() {
    let bad = "12345-5645-123a-9867-123b45a6789";
    check(&edit(BASE, "id =", &format!("id = \"{bad}\"")))
        .assert_only_problem_at(&format!("\"{bad}\""), &["not a GUID", bad]);
}

// -------------------------------------------------------- schedules ----

#[test]
fn a_subscription_window_not_longer_than_its_interval_is_reported() {
    check(&with_sub(r#"window = "60s""#)).assert_only_problem_at(
        r#""60s""#,
        &[SUB, "window (1m) must be longer than interval (1m)"],
    );
}

#[test]
fn a_defaults_window_not_longer_than_the_interval_is_reported() {
    check(&edit(BASE, "window =", r#"window = "30s""#)).assert_only_problem_at(
        r#""30s""#,
        &[SUB, "window (30s) must be longer than interval (1m)"],
    );
}

#[test]
fn an_interval_below_one_second_is_reported() {
    check(&with_sub(r#"interval = "500ms""#))
        .assert_only_problem_at(r#""500ms""#, &[SUB, "interval must be at least 1s"]);
}

#[test]
fn an_interval_below_one_second_is_reported_at_the_interval_even_with_a_window() {
    check(&with_sub("interval = \"500ms\"\nwindow = \"10m\""))
        .assert_only_problem_at(r#""500ms""#, &[SUB, "interval must be at least 1s"]);
}

#[test]
fn a_defaults_interval_below_one_second_is_reported_at_the_interval() {
    check(&edit(BASE, "interval =", r#"interval = "500ms""#))
        .assert_only_problem_at(r#""500ms""#, &[SUB, "interval must be at least 1s"]);
}

#[test]
fn an_unparseable_defaults_interval_is_reported() {
    check(&edit(BASE, "interval =", r#"interval = "soon""#)).assert_only_problem_at(
        r#""soon""#,
        &["[defaults] interval", "cannot parse \"soon\" as a duration"],
    );
}

#[test]
fn an_unparseable_subscription_window_is_reported() {
    check(&with_sub(r#"window = "15 minutes-ish""#)).assert_only_problem_at(
        r#""15 minutes-ish""#,
        &["window", "cannot parse \"15 minutes-ish\" as a duration"],
    );
}

// ------------------------------------------------------ credentials ----

#[test]
fn an_unknown_defaults_credential_is_reported() {
    check(&edit(BASE, "credential =", r#"credential = "mian""#)).assert_only_problem_at(
        r#""mian""#,
        &["unknown credential \"mian\"", "defined: main"],
    );
}

#[test]
fn an_unknown_subscription_credential_is_reported() {
    check(&with_sub(r#"credential = "other""#)).assert_only_problem_at(
        r#""other""#,
        &["unknown credential \"other\"", "defined: main"],
    );
}

#[test]
fn an_unknown_credential_kind_is_reported() {
    check(&edit(BASE, "kind =", r#"kind = "certificate""#)).assert_only_problem_at(
        r#""certificate""#,
        &["[credentials.main] kind", "unknown kind \"certificate\""],
    );
}

#[test]
fn a_client_secret_credential_needs_a_tenant_id() {
    check(&edit(BASE, "tenant_id =", "")).assert_only_problem_at(
        "[credentials.main]",
        &["missing [credentials.main] tenant_id"],
    );
}

#[test]
fn a_missing_client_secret_file_is_reported() {
    let f = Fixture::new();
    let text = edit(
        BASE,
        "client_secret_file =",
        r#"client_secret_file = "nope""#,
    );
    let missing = f.path("nope").display().to_string();
    f.check(&text).assert_only_problem_at(
        r#""nope""#,
        &["client_secret_file", "cannot read", &missing],
    );
}

/// Runs `check-config` on the base config with its line starting with
/// `old` replaced by `key = "<UNSET_VAR>"`, that variable unset: the only
/// problem is at the variable's name, and names `what` and the variable.
fn assert_unset_env_reported(old: &str, key: &str, what: &str) {
    let text = edit(BASE, old, &format!("{key} = \"{UNSET_VAR}\""));
    Fixture::new()
        .check_env(&text, &[(UNSET_VAR, None)])
        .assert_only_problem_at(&format!("\"{UNSET_VAR}\""), &[what, UNSET_VAR, "not set"]);
}

#[test]
fn an_unset_client_secret_env_is_reported() {
    assert_unset_env_reported(
        "client_secret_file =",
        "client_secret_env",
        "client_secret_env",
    );
}

#[test]
fn two_client_secret_sources_are_reported() {
    let both = add_after(
        "client_secret_file =",
        &format!("client_secret_env = \"{UNSET_VAR}\""),
    );
    check(&both).assert_only_problem_at(
        "[credentials.main]",
        &["set only one of", "client_secret_file", "client_secret_env"],
    );
}

#[test]
fn a_relative_secret_file_is_found_in_the_credentials_directory() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("client-secret")).unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("client-secret"), "from-systemd\n").unwrap();
    let creds_dir = creds.path().to_str().unwrap();
    f.check_env(BASE, &[("CREDENTIALS_DIRECTORY", Some(creds_dir))])
        .assert_valid();
    // Without it, the file is looked for next to the config, where it is not.
    f.check(BASE).assert_only_problem_at(
        "\"client-secret\"",
        &[
            "cannot read",
            &f.path("client-secret").display().to_string(),
        ],
    );
}

#[test]
fn the_credentials_directory_wins_over_the_config_directory() {
    // The secret is next to the config but not in $CREDENTIALS_DIRECTORY.
    let f = Fixture::new();
    let creds = tempfile::tempdir().unwrap();
    let expected = creds.path().join("client-secret").display().to_string();
    f.check_env(BASE, &[("CREDENTIALS_DIRECTORY", creds.path().to_str())])
        .assert_only_problem_at("\"client-secret\"", &["cannot read", &expected]);
}

// ------------------------------------------------------- guardrails ----

#[test]
fn a_missing_ingest_url_file_is_reported() {
    let text = edit(BASE, "ingest_url =", r#"ingest_url_file = "no-url""#);
    Fixture::new().check(&text).assert_only_problem_at(
        r#""no-url""#,
        &["[guardrails] ingest_url_file", "cannot read"],
    );
}

#[test]
fn an_unset_ingest_url_env_is_reported() {
    assert_unset_env_reported(
        "ingest_url =",
        "ingest_url_env",
        "[guardrails] ingest_url_env",
    );
}

#[test]
fn two_ingest_url_sources_are_reported() {
    check(&add_after("ingest_url =", "ingest_url_file = \"url\"")).assert_only_problem_at(
        "[guardrails]",
        &["set only one of", "ingest_url_file", "ingest_url"],
    );
}

#[test]
fn an_ingest_url_that_is_not_a_url_is_reported() {
    check(&edit(
        BASE,
        "ingest_url =",
        r#"ingest_url = "events endpoint""#,
    ))
    .assert_only_problem_at(
        r#""events endpoint""#,
        &["[guardrails] ingest_url is not a valid URL"],
    );
}

#[test]
fn an_http_ingest_url_to_a_remote_host_is_reported() {
    check(&edit(
        BASE,
        "ingest_url =",
        r#"ingest_url = "http://example.turbot.com/api/v5/events/raw?token=abc""#,
    ))
    .assert_only_problem_at("\"http://", &["[guardrails] ingest_url", "https"]);
}

// ------------------------------------------------------------ azure ----

#[test]
fn a_custom_cloud_needs_a_resource_manager_url() {
    let text = edit(
        BASE,
        "cloud =",
        "cloud = \"custom\"\nauthority_host = \"https://login.example.net\"",
    );
    check(&text).assert_only_problem_at(
        r#""custom""#,
        &["cloud = \"custom\" requires [azure] resource_manager_url"],
    );
}

// ------------------------------------------------ several problems ----

#[test]
fn every_problem_in_a_file_is_reported() {
    let text = edit(
        &edit(
            &edit(
                BASE,
                "ingest_url =",
                r#"ingest_url = "http://example.turbot.com/raw?token=abc""#,
            ),
            "client_secret_file =",
            r#"client_secret_file = "absent""#,
        ),
        "window =",
        r#"window = "forever""#,
    );
    let text = format!(
        "{text}credential = \"other\"\n\n[[subscription]]\nid = \"not-a-guid\"\n\n\
         [[subscription]]\nid = \"{SUB}\"\n"
    );
    let run = check(&text);
    let expected = [
        ("\"http://", "https"),
        ("\"absent\"", "cannot read"),
        ("\"forever\"", "cannot parse"),
        ("\"other\"", "unknown credential"),
        ("\"not-a-guid\"", "not a GUID"),
    ];
    for (needle, words) in expected {
        run.assert_problem(locate(&text, needle), &[words]);
    }
    run.assert_problem(locate_nth(&text, &format!("\"{SUB}\""), 1), &["duplicate"]);
    assert_eq!(
        run.problems().len(),
        expected.len() + 1,
        "{}",
        run.context()
    );
}

#[test]
fn an_unknown_key_does_not_hide_other_problems() {
    let text = with_sub("intervall = \"5m\"\n\n[[subscription]]\nid = \"not-a-guid\"");
    let run = check(&text);
    run.assert_problem(locate(&text, "intervall"), &["unknown field `intervall`"])
        .assert_problem(locate(&text, "\"not-a-guid\""), &["not a GUID"]);
}

// --------------------------------------------------- event handlers ----

const HANDLERS_ON: &str = "name = \"prod\"\nevent_handlers = true";

#[test]
fn active_event_handlers_are_refused_naming_the_subscription() {
    let run = check(&with_sub(HANDLERS_ON));
    assert_eq!(run.code, Some(CONFIG_EXIT), "{}", run.context());
    assert!(run.stderr.contains("event handlers"), "{}", run.context());
    assert!(
        run.stderr.contains(&format!("prod ({SUB})")),
        "{}",
        run.context()
    );
}

#[test]
fn active_event_handlers_are_a_located_problem_not_valid() {
    let run = check(&with_sub(HANDLERS_ON));
    assert!(!run.stdout.contains("valid"), "{}", run.context());
    // The position is the offending value, like every other problem's.
    run.assert_only_problem_at("true", &[SUB, "event_handlers = true"]);
}

#[test]
fn event_handlers_takes_detect_true_or_false_and_nothing_else() {
    check(&with_sub("event_handlers = \"detect\"")).assert_valid();
    check(&with_sub("event_handlers = false")).assert_valid();
    check(&with_sub("event_handlers = \"maybe\"")).assert_only_problem_at(
        "\"maybe\"",
        &["event_handlers must be \"detect\", true or false"],
    );
    check(&with_sub("event_handlers = 1")).assert_only_problem_at("1\n", &["event_handlers"]);
}

#[test]
fn event_handlers_true_in_defaults_refuses_every_subscription() {
    let run = check(&add_after("window =", "event_handlers = true"));
    run.assert_only_problem_at("true", &[SUB, "event_handlers = true"]);
}

#[test]
fn detection_keys_are_checked() {
    let ok = format!("{BASE}\n[detection]\ninterval = \"5m\"\non_unknown = \"poll\"\n");
    check(&ok).assert_valid();
    let bad = format!("{BASE}\n[detection]\ninterval = \"soon\"\n");
    check(&bad).assert_only_problem_at("\"soon\"", &["[detection] interval", "duration"]);
    let bad = format!("{BASE}\n[detection]\non_unknown = \"ignore\"\n");
    check(&bad).assert_only_problem_at("\"ignore\"", &["on_unknown", "\"refuse\" or \"poll\""]);
    let bad = format!("{BASE}\n[detection]\nintervall = \"5m\"\n");
    check(&bad).assert_only_problem_at("intervall", &["unknown field"]);
}

#[test]
fn delivery_concurrency_is_adaptive_or_a_number() {
    let g = |line: &str| add_after("format =", line);
    check(&g("concurrency = \"adaptive\"\nmax_concurrency = 64")).assert_valid();
    check(&g("concurrency = 16")).assert_valid();
    check(&g("concurrency = \"fast\"")).assert_only_problem_at(
        "\"fast\"",
        &["[guardrails] concurrency must be \"adaptive\" or a number"],
    );
    check(&g("concurrency = 0"))
        .assert_only_problem_at("0\n", &["[guardrails] concurrency must be between 1 and"]);
    check(&g("max_concurrency = 0")).assert_only_problem_at(
        "0\n",
        &["[guardrails] max_concurrency must be between 1 and"],
    );
}

#[test]
fn reads_in_flight_are_auto_or_a_cap() {
    let a = |line: &str| add_after("cloud =", line);
    check(&a("concurrency = \"auto\"")).assert_valid();
    check(&a("concurrency = 2000")).assert_valid();
    check(&a("concurrency = \"eight\"")).assert_only_problem_at(
        "\"eight\"",
        &["[azure] concurrency must be \"auto\" or a number of polls in flight, got \"eight\""],
    );
    check(&a("concurrency = 1.5")).assert_only_problem_at(
        "1.5",
        &["[azure] concurrency must be \"auto\" or a number of polls in flight, got 1.5"],
    );
    check(&a("concurrency = 0")).assert_only_problem_at(
        "0\n",
        &["[azure] concurrency must be between 1 and 4096, got 0"],
    );
    check(&a("concurrency = 5000")).assert_only_problem_at(
        "5000",
        &["[azure] concurrency must be between 1 and 4096, got 5000"],
    );
}

#[test]
fn arm_budget_and_catch_up_slices_are_checked() {
    let a = |line: &str| add_after("cloud =", line);
    check(&a(
        "reads_burst = 100\nreads_per_second = 10\ncatch_up_slices = 4\nconcurrency = 64",
    ))
    .assert_valid();
    check(&a("catch_up_slices = 0"))
        .assert_only_problem_at("0\n", &["[azure] catch_up_slices must be between 1 and 64"]);
    check(&a("reads_per_second = -1"))
        .assert_only_problem_at("-1", &["[azure] reads_per_second must be between 1 and"]);
    check(&a("reads_burst = \"many\""))
        .assert_only_problem_at("\"many\"", &["invalid type", "expected i64"]);
}

const API_SECRET: &str = "api-secret-key-DO-NOT-PRINT";

#[test]
fn guardrails_api_needs_all_three_and_never_prints_the_secret_key() {
    let api = |body: &str| format!("{BASE}\n[guardrails.api]\n{body}\n");
    let full = api(&format!(
        "workspace_url = \"https://acme.cloud.turbot.com\"\naccess_key = \"ak\"\nsecret_key = \"{API_SECRET}\""
    ));
    let run = check(&full);
    run.assert_valid();
    run.assert_never_shows(API_SECRET);

    let missing = api("workspace_url = \"https://acme.cloud.turbot.com\"\naccess_key = \"ak\"");
    let run = check(&missing);
    run.assert_only_problem_at("[guardrails.api]", &["missing [guardrails.api] secret_key"]);

    let not_https = api(&format!(
        "workspace_url = \"http://acme.example.com\"\naccess_key = \"ak\"\nsecret_key = \"{API_SECRET}\""
    ));
    let run = check(&not_https);
    run.assert_only_problem_at("\"http://acme", &["workspace_url must be an https URL"]);
    run.assert_never_shows(API_SECRET);

    // A type error quotes no secret value.
    let typed = api(
        "workspace_url = \"https://acme.cloud.turbot.com\"\naccess_key = \"ak\"\nsecret_key = 123456789",
    );
    let run = check(&typed);
    assert_eq!(run.code, Some(CONFIG_EXIT), "{}", run.context());
    run.assert_never_shows("123456789");

    // From a file and from the environment, like every secret.
    let f = Fixture::new();
    f.write("gr-secret", &format!("{API_SECRET}\n"));
    let run = f.check_env(
        &api("workspace_url = \"https://acme.cloud.turbot.com\"\naccess_key_env = \"GR_AK\"\nsecret_key_file = \"gr-secret\""),
        &[("GR_AK", Some("ak"))],
    );
    run.assert_valid();
    run.assert_never_shows(API_SECRET);
    let run = f.check_env(
        &api("workspace_url = \"https://acme.cloud.turbot.com\"\naccess_key_env = \"GR_AK\"\nsecret_key_file = \"gr-secret\""),
        &[("GR_AK", None)],
    );
    run.assert_only_problem_at("\"GR_AK\"", &["access_key_env", "GR_AK is not set"]);
}

// ---------------------------------------------------------- secrets ----

const INLINE_SECRET: &str = "inline-client-secret-DO-NOT-PRINT";
const URL_TOKEN: &str = "url-token-DO-NOT-PRINT";

fn with_inline_secret(extra: &str) -> String {
    edit(
        BASE,
        "client_secret_file =",
        &format!("client_secret = \"{INLINE_SECRET}\"{extra}"),
    )
}

#[test]
fn an_inline_client_secret_is_never_printed() {
    let valid = check(&with_inline_secret(""));
    valid.assert_valid();
    valid.assert_never_shows(INLINE_SECRET);
    let two = check(&with_inline_secret(&format!("\n{SECRET_FILE_LINE}")));
    two.assert_only_problem_at("[credentials.main]", &["set only one of"]);
    two.assert_never_shows(INLINE_SECRET);
    let wrong_kind = edit(
        &with_inline_secret(""),
        "kind =",
        r#"kind = "managed_identity""#,
    );
    let wrong_kind = edit(&wrong_kind, "tenant_id =", "");
    let run = check(&wrong_kind);
    run.assert_only_problem_at(
        &format!("\"{INLINE_SECRET}\""),
        &["client_secret", "does not apply"],
    );
    run.assert_never_shows(INLINE_SECRET);
}

#[test]
fn a_numeric_client_secret_is_never_printed() {
    let run = check(&edit(
        BASE,
        "client_secret_file =",
        "client_secret = 98765432123456789",
    ));
    run.assert_only_problem_at("98765432123456789", &["client_secret must be a string"]);
    run.assert_never_shows("98765432123456789");
}

fn bad_ingest_url(url: &str) -> String {
    edit(BASE, "ingest_url =", &format!("ingest_url = \"{url}\""))
}

#[test]
fn the_ingest_url_token_is_never_printed() {
    for url in [
        format!("http://example.com/x?token={URL_TOKEN}"),
        format!("https://exa mple.com/x?token={URL_TOKEN}"),
        format!("https://example.com/x?token={URL_TOKEN}\" \"extra"),
    ] {
        let run = check(&bad_ingest_url(&url));
        assert_eq!(run.code, Some(CONFIG_EXIT), "{}", run.context());
        run.assert_never_shows(URL_TOKEN);
    }
    let valid = check(&bad_ingest_url(&format!(
        "https://example.com/x?token={URL_TOKEN}"
    )));
    valid.assert_valid();
    valid.assert_never_shows(URL_TOKEN);
}

#[test]
fn an_ingest_url_token_from_a_file_or_env_is_never_printed() {
    let url = format!("http://example.com/x?token={URL_TOKEN}\n");
    let f = Fixture::new();
    f.write("url", &url);
    let from_file = edit(BASE, "ingest_url =", r#"ingest_url_file = "url""#);
    f.check(&from_file)
        .assert_only_problem_at(r#""url""#, &["https"])
        .assert_never_shows(URL_TOKEN);
    let var = "AZURE_ACTIVITY_POLLER_TEST_INGEST_URL";
    let from_env = edit(BASE, "ingest_url =", &format!("ingest_url_env = \"{var}\""));
    let run = f.check_env(&from_env, &[(var, Some(&url))]);
    run.assert_only_problem_at(&format!("\"{var}\""), &["https"]);
    run.assert_never_shows(URL_TOKEN);
}

// ------------------------------------------------------------- help ----

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}");
    stdout
}

#[test]
fn help_shows_an_example() {
    let top = help(&["--help"]);
    assert!(top.contains("Example"), "{top}");
    assert!(top.contains("check-config"), "{top}");
    let sub = help(&["check-config", "--help"]);
    assert!(sub.contains("Example"), "{sub}");
    assert!(sub.contains("check-config --config"), "{sub}");
}

fn set_mode(p: &std::path::Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
}

/// BASE with the ingestion URL in a file instead of inline: no secret in it,
/// as README installs it.
fn without_inline_secret(f: &Fixture) -> String {
    f.write(
        "ingest-url",
        "https://example.turbot.com/api/v5/events/raw?token=abc\n",
    );
    set_mode(&f.path("ingest-url"), 0o600);
    edit(BASE, "ingest_url =", r#"ingest_url_file = "ingest-url""#)
}

#[test]
fn secret_files_readable_by_everyone_are_named_in_a_warning() {
    let f = Fixture::new();
    // Only the files' own modes are under test here.
    set_mode(f.dir.path(), 0o755);
    let config = f.path("poller.toml");
    let secret = f.path("client-secret");
    let text = without_inline_secret(&f);
    set_mode(&secret, 0o600);
    // As README installs it: a configuration every user can read, secrets not.
    let run = f.check(&text);
    run.assert_valid();
    set_mode(&config, 0o644);
    let run = f.check(&text);
    assert!(run.warnings().is_empty(), "{}", run.context());

    set_mode(&secret, 0o644);
    assert_only_warning(
        &f.check(&text),
        &[
            &secret.display().to_string(),
            "readable by every user",
            "client_secret_file",
        ],
    );
    set_mode(&secret, 0o600);

    // An inline secret makes the configuration file a secret too.
    let run = f.check(BASE);
    assert_only_warning(
        &run,
        &[
            &config.display().to_string(),
            "readable by every user",
            "ingest_url inline",
            "ingest_url_file",
        ],
    );
    run.assert_never_shows("token=abc");
}

/// Valid, with exactly one warning, which contains every one of `words`.
fn assert_only_warning(run: &Run, words: &[&str]) {
    run.assert_valid();
    let w = run.warnings();
    assert_eq!(w.len(), 1, "{}", run.context());
    for word in words {
        assert!(w[0].contains(word), "{word:?} missing\n{}", run.context());
    }
}

#[test]
fn check_config_warns_when_the_service_could_not_read_the_file() {
    let f = Fixture::new();
    let config = f.path("poller.toml");
    let text = without_inline_secret(&f);
    set_mode(&f.path("client-secret"), 0o600);
    f.write("poller.toml", &text);

    // A directory on the way that "other" cannot search (a fresh temporary
    // directory is 0700): named, with what to do; still valid.
    set_mode(f.dir.path(), 0o700);
    set_mode(&config, 0o644);
    let dir = std::fs::canonicalize(f.dir.path()).unwrap();
    assert_only_warning(
        &f.check(&text),
        &[
            &format!("{} is not searchable", dir.display()),
            "DynamicUser",
            "chmod o+x",
        ],
    );

    // The file itself, as README's install once made it (0640 root).
    set_mode(f.dir.path(), 0o755);
    set_mode(&config, 0o640);
    let file = std::fs::canonicalize(&config).unwrap();
    assert_only_warning(
        &f.check(&text),
        &[
            &format!("{} is not readable by other users", file.display()),
            "DynamicUser",
            "chmod o+r",
        ],
    );

    // Readable: nothing to say.
    set_mode(&config, 0o644);
    let run = f.check(&text);
    run.assert_valid();
    assert!(run.warnings().is_empty(), "{}", run.context());
}

// ------------------------------------------------------ [state] url, [ha] ----

#[test]
fn a_postgres_state_url_and_ha_lease_are_valid() {
    let text = BASE.replace(
        "path = \"state.db\"\n",
        "url = \"postgres://poller:pw-DO-NOT-LOG@db.example:5432/poller?sslmode=verify-full\"\n\n[ha]\nlease = \"10s\"\n",
    );
    let run = check(&text);
    run.assert_valid();
    run.assert_never_shows("pw-DO-NOT-LOG");
}

#[test]
fn state_url_problems_are_reported_without_the_password() {
    for (url, words) in [
        (
            "mysql://poller:pw-DO-NOT-LOG@db/x",
            &["[state] url", "postgres://"][..],
        ),
        (
            "postgres://poller:pw-DO-NOT-LOG@db/x?sslmode=sometimes",
            &["[state] url", "sslmode"][..],
        ),
    ] {
        let text = BASE.replace("path = \"state.db\"\n", &format!("url = \"{url}\"\n"));
        let run = check(&text);
        run.assert_problem((2, 7), words);
        run.assert_never_shows("pw-DO-NOT-LOG");
    }
    let both = BASE.replace(
        "path = \"state.db\"\n",
        "path = \"state.db\"\nurl = \"postgres://p@db/x\"\n",
    );
    check(&both).assert_problem((2, 8), &["either path", "not both"]);
}

#[test]
fn an_ha_lease_out_of_range_is_reported() {
    let text = format!("{BASE}\n[ha]\nlease = \"100ms\"\n");
    let run = check(&text);
    assert_eq!(run.code, Some(CONFIG_EXIT), "{}", run.context());
    assert!(
        run.stderr.contains("[ha] lease must be between 1s and 1h"),
        "{}",
        run.context()
    );
}

// --------------------------------------------------------- [journal] ----

#[test]
fn a_journal_retention_of_a_duration_or_zero_is_valid() {
    for value in ["\"14d\"", "\"0\""] {
        let text = format!("{BASE}\n[journal]\nretention = {value}\n");
        check(&text).assert_valid();
    }
}

#[test]
fn a_journal_retention_out_of_range_or_unreadable_is_reported() {
    let short = format!("{BASE}\n[journal]\nretention = \"10s\"\n");
    let at = locate(&short, "\"10s\"");
    check(&short).assert_problem(
        at,
        &["[journal] retention must be \"0\" (off) or between 1m and 366d"],
    );
    let bad = format!("{BASE}\n[journal]\nretention = \"a week\"\n");
    let at = locate(&bad, "\"a week\"");
    check(&bad).assert_problem(at, &["[journal] retention: cannot parse \"a week\""]);
    let unknown = format!("{BASE}\n[journal]\nkeep = \"7d\"\n");
    let run = check(&unknown);
    assert_eq!(run.code, Some(CONFIG_EXIT), "{}", run.context());
    assert!(
        run.stderr.contains("unknown field `keep`"),
        "{}",
        run.context()
    );
}

//! `Harness`: one test's fakes, its temporary directory and its state
//! backend, the `poller.toml` written from a few fields, and the real binary
//! run against them (`--once`, a command, or the daemon).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::detection::{GR_SECRET_KEY, WEBHOOK_TOKEN};
use super::process::assert_no_db_password;
use super::{
    CLIENT_ID, CLIENT_SECRET, Daemon, Fakes, INGEST_TOKEN, Run, SUB_A, TENANT, lock, postgres,
};

/// Where the poller under test keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for each named `async fn name(backend: Backend)`, a module
/// `name` with two tests, `sqlite` and `postgres`: every end-to-end test runs
/// on both state backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        )*
    };
}

pub struct Harness {
    pub fakes: Fakes,
    pub backend: Backend,
    /// The PostgreSQL server of a `Backend::Postgres` harness.
    pub pg: Option<postgres::PgServer>,
    /// Its database's URL (password included).
    pub db_url: Option<String>,
    pub dir: tempfile::TempDir,
    pub format: &'static str,
    pub interval: &'static str,
    pub window: &'static str,
    /// Lines added to `[azure]` (`catch_up_slices`, the read budget).
    pub azure_lines: String,
    /// The `[guardrails]` line that bounds the POSTs in flight.
    pub concurrency: String,
    pub subscriptions: Vec<(String, bool)>,
    pub extra: String,
    /// `[ha] lease` on PostgreSQL.
    pub lease: &'static str,
    /// Extra environment for the poller.
    pub env: Vec<(String, String)>,
    /// Where the SQLite state lives, when not in the harness's directory
    /// (a small filesystem of the test's own, say).
    pub state_dir: Option<PathBuf>,
    runs: usize,
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::on(Backend::Sqlite).await
    }

    /// A harness whose poller keeps its state on `backend` (PostgreSQL: a
    /// server of its own, database `poller`).
    pub async fn on(backend: Backend) -> Harness {
        let (pg, db_url) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => {
                let (server, url) = postgres::PgServer::with_database("poller").await;
                (Some(server), Some(url))
            }
        };
        let fakes = Fakes::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), &fakes.ca_pem).expect("write CA");
        std::fs::write(
            dir.path().join("client-secret"),
            format!("{CLIENT_SECRET}\n"),
        )
        .expect("write secret");
        std::fs::write(dir.path().join("ingest-url"), fakes.ingest_url()).expect("write url");
        Harness {
            fakes,
            backend,
            pg,
            db_url,
            dir,
            format: "activity-log-alert",
            interval: "1s",
            window: "10s",
            azure_lines: String::new(),
            concurrency: "concurrency = 4".into(),
            subscriptions: vec![(SUB_A.to_string(), false)],
            extra: String::new(),
            lease: "2s",
            env: Vec::new(),
            state_dir: None,
            runs: 0,
        }
    }

    /// Moves the harness's state to `server`'s database at `url` (the
    /// configuration written next says `[state] url`).
    pub fn use_postgres(&mut self, server: postgres::PgServer, url: String) {
        self.backend = Backend::Postgres;
        self.pg = Some(server);
        self.db_url = Some(url);
    }

    /// The subscriptions to poll, each left to detection.
    pub fn set_subscriptions(&mut self, subs: &[&str]) {
        self.subscriptions = subs.iter().map(|s| (s.to_string(), false)).collect();
    }

    /// The SQLite state file.
    pub fn sqlite_path(&self) -> PathBuf {
        match &self.state_dir {
            Some(d) => d.join("state.db"),
            None => self.path("state.db"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Gives the endpoint a new token, accepted from now on in place of the
    /// old one, and writes the URL carrying it for the next process: a POST
    /// a killed process left in the endpoint's socket is refused (401) when
    /// it is read late, instead of counting as a delivery.
    pub fn rotate_ingest_token(&self) {
        let token = "rotated-ingest-token-DO-NOT-LOG-9876543210";
        lock(&self.fakes.ingest).token = Some(token.to_string());
        let url = format!(
            "http://{}/api/v5/events/raw?token={token}",
            self.fakes.ingest_addr
        );
        std::fs::write(self.path("ingest-url"), url).expect("write url");
    }

    /// Asserts that `output` shows no secret the run could have seen: the
    /// client secret, the ingestion token, the bearer tokens issued, the
    /// Guardrails API secret key, the handlers' webhook token.
    pub fn assert_no_secrets(&self, output: &str) {
        let mut secrets = vec![
            CLIENT_SECRET.to_string(),
            INGEST_TOKEN.to_string(),
            GR_SECRET_KEY.to_string(),
            WEBHOOK_TOKEN.to_string(),
        ];
        secrets.extend(self.fakes.issued_tokens());
        for s in secrets {
            assert!(!output.contains(&s), "a secret leaked: {s}\n{output}");
        }
    }

    // ---------------------------------------------------- configuration ----

    pub fn config_text(&self) -> String {
        let mut s = format!(
            r#"[state]
{state}

[azure]
cloud = "custom"
resource_manager_url = "http://{arm}"
authority_host = "https://{login}"
retry_base = "50ms"
max_retries = 4
request_timeout = "5s"
{azure_lines}
[credentials.main]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"

[guardrails]
ingest_url_file = "{url}"
format = "{format}"
{concurrency}
timeout = "5s"
retry_base = "50ms"
retry_max = "300ms"

[defaults]
credential = "main"
interval = "{interval}"
window = "{window}"
statuses = ["Succeeded"]
{extra}
"#,
            state = self.state_section(),
            arm = self.fakes.arm_addr,
            login = self.fakes.login_addr,
            azure_lines = self.azure_lines,
            secret = self.path("client-secret").display(),
            url = self.path("ingest-url").display(),
            format = self.format,
            concurrency = self.concurrency,
            interval = self.interval,
            window = self.window,
            extra = self.extra,
        );
        // `false` leaves event_handlers at its default, "detect": every run
        // checks the fake ARM, which shows no turbot_rg unless told otherwise.
        for (id, handlers) in &self.subscriptions {
            s.push_str(&format!(
                "\n[[subscription]]\nid = \"{id}\"\nname = \"sub-{}\"\n{}",
                &id[..8],
                if *handlers {
                    "event_handlers = true\n"
                } else {
                    ""
                }
            ));
        }
        s
    }

    /// The `[state]` keys for this harness's backend.
    pub fn state_section(&self) -> String {
        match &self.db_url {
            // Short leases, so that a killed poller's are taken over soon.
            Some(url) => format!("url = \"{url}\"\n\n[ha]\nlease = \"{}\"", self.lease),
            None => format!("path = \"{}\"", self.sqlite_path().display()),
        }
    }

    pub fn write_config(&self) -> PathBuf {
        let p = self.path("poller.toml");
        std::fs::write(&p, self.config_text()).expect("write config");
        p
    }

    // ------------------------------------------------------------ state ----

    /// Runs SQL against the state (either backend), for a test to look at
    /// or change it; returns the first column of each row, as text.
    pub async fn state_sql(&self, sql: &str) -> Vec<Option<String>> {
        match &self.pg {
            Some(_) => self.try_state_sql(sql).await.expect("state SQL"),
            None => self.sqlite_sql(sql),
        }
    }

    /// [`Harness::state_sql`] on PostgreSQL, where the schema may not be
    /// there yet.
    pub async fn try_state_sql(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let pg = self.pg.as_ref().ok_or("not a PostgreSQL harness")?;
        let c = pg.connect("poller").await;
        let rows = c.simple_query(sql).await.map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            })
            .collect())
    }

    fn sqlite_sql(&self, sql: &str) -> Vec<Option<String>> {
        let db = rusqlite::Connection::open(self.sqlite_path()).expect("open state");
        let mut stmt = db.prepare(sql).expect("state SQL");
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            if n == 0 {
                return Ok(None);
            }
            let v: rusqlite::types::Value = r.get(0)?;
            Ok(match v {
                rusqlite::types::Value::Null => None,
                rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                rusqlite::types::Value::Real(f) => Some(f.to_string()),
                rusqlite::types::Value::Text(t) => Some(t),
                rusqlite::types::Value::Blob(_) => Some("<blob>".into()),
            })
        })
        .expect("state SQL")
        .collect::<Result<Vec<_>, _>>()
        .expect("state SQL")
    }

    // ------------------------------------------------------- processes ----

    fn command(&mut self, args: &[&str]) -> (tokio::process::Command, PathBuf) {
        self.runs += 1;
        let log = self.path(&format!("run-{}.log", self.runs));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azure-activity-poller"));
        cmd.args(args)
            .env("SSL_CERT_FILE", self.path("ca.pem"))
            .env_remove("SSL_CERT_DIR")
            .env("RUST_LOG", "debug")
            .env_remove("CREDENTIALS_DIRECTORY")
            // As a shell without the unit's setting starts it (see `arenas.rs`).
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        (cmd, log)
    }

    /// Writes the configuration and runs `--once` (plus `args`) to
    /// completion, giving up on Azure after 2 s unless `args` say otherwise.
    pub async fn once(&mut self, args: &[&str]) -> Run {
        let mut all = vec!["--once"];
        if !args.contains(&"--give-up-after") {
            all.extend(["--give-up-after", "2s"]);
        }
        all.extend_from_slice(args);
        self.cli(&all).await
    }

    /// Writes the configuration and runs `--once` (plus `args`) to
    /// completion with stderr on a pseudo-terminal (logging at INFO, as a
    /// person runs it): `Run::stderr` is everything the terminal showed,
    /// escape sequences included, lines ending `\r\n`.
    pub async fn once_on_terminal(&mut self, args: &[&str]) -> Run {
        let config = self.write_config().display().to_string();
        let mut all = vec!["--once", "--give-up-after", "5s", "--config", &config];
        all.extend_from_slice(args);
        let (mut cmd, _log) = self.command(&all);
        let terminal = super::terminal::Terminal::open();
        let side = terminal.side.try_clone().expect("terminal side");
        cmd.stderr(side).env("RUST_LOG", "info");
        let child = cmd.spawn().expect("spawn the poller");
        drop(cmd);
        let screen = terminal.record();
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("the poller did not finish within 2 minutes")
            .expect("wait for the poller");
        let stderr = tokio::task::spawn_blocking(move || screen.join().expect("terminal reader"))
            .await
            .expect("join the terminal reader");
        assert_no_db_password(&stderr);
        Run {
            code: out.status.code(),
            stderr,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    /// Writes the configuration and runs the binary with `args` and
    /// `--config` naming it (a command: `status`, `check-config`, ...),
    /// within two minutes.
    pub async fn cli(&mut self, args: &[&str]) -> Run {
        let config = self.write_config().display().to_string();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        self.run(&all).await
    }

    /// Runs the binary with exactly `args`, within two minutes.
    pub async fn run(&mut self, args: &[&str]) -> Run {
        let (mut cmd, log) = self.command(args);
        let child = cmd.spawn().expect("spawn the poller");
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("the poller did not finish within 2 minutes")
            .expect("wait for the poller");
        let run = Run {
            code: out.status.code(),
            stderr: std::fs::read_to_string(&log).unwrap_or_default(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        };
        // The database password never shows, whatever the run did.
        assert_no_db_password(&run.stderr);
        assert_no_db_password(&run.stdout);
        run
    }

    /// Writes the configuration and starts the daemon; the caller stops or
    /// kills it.
    pub fn daemon(&mut self, args: &[&str]) -> Daemon {
        let config = self.write_config().display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        let (mut cmd, log) = self.command(&all);
        let child = cmd.spawn().expect("spawn the daemon");
        Daemon { child, log }
    }
}

//! A real PostgreSQL server for a test: `initdb` (once per build, copied for
//! each server) and `pg_ctl start` into a temporary directory, listening on
//! a free 127.0.0.1 port with its socket in that directory; stopped when
//! dropped. The binaries are found on `PATH` or under
//! `/usr/lib/postgresql/*/bin` (`.ci/run` installs Debian's `postgresql`).
//! As root (CI), the server runs as `nobody`: `initdb` refuses root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The password in every test URL: the server trusts loopback, so any
/// password passes, and it must never appear in the poller's output.
pub const DB_PASSWORD: &str = "pg-pass-DO-NOT-LOG-31337";

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// Serving TLS only (`ssl = on`, `hostssl` in `pg_hba.conf`).
    tls: bool,
}

fn find_bin() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
                return d;
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql")
}

/// `/proc/self` belongs to the effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a server binary, as `nobody` when we are root.
fn pg(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args)
        .env_remove("PGDATA")
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
}

fn give_to_server_user(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "nobody:"])
            .arg(path)
            .status()
            .expect("chown")
            .success();
        assert!(ok, "chown {}", path.display());
    }
}

/// One `initdb` per build (kept under the target directory, reused by
/// later runs); each server starts from a copy.
fn template(bin: &Path) -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let version = bin
            .parent()
            .and_then(|v| v.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let done = root.join(format!("pg-template-{version}"));
        if done.join("data/PG_VERSION").is_file() {
            return done;
        }
        // initdb (as the server's user) where that user may write, then
        // the result copied under the target directory.
        let scratch = tempfile::tempdir().expect("tempdir");
        give_to_server_user(scratch.path());
        let data = scratch.path().join("data");
        let out = pg(
            bin,
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-locale",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let work = root.join(format!("pg-template-{version}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("template directory");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&data)
            .arg(work.join("data"))
            .status()
            .expect("cp")
            .success();
        assert!(ok, "copy the template cluster");
        // Another test binary may have won the race: theirs is as good.
        if std::fs::rename(&work, &done).is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        done
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A temporary directory holding a copy of the template cluster in `data`.
fn copy_template(bin: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(template(bin).join("data"))
        .arg(dir.path().join("data"))
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copy the template cluster");
    dir
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = find_bin();
        let dir = copy_template(&bin);
        PgServer::launch(dir, bin, false)
    }

    /// A server that takes TCP connections over TLS only, with a certificate
    /// for 127.0.0.1 signed by a CA of its own; returns the CA's PEM.
    pub fn start_tls() -> (PgServer, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let bin = find_bin();
        let dir = copy_template(&bin);
        let data = dir.path().join("data");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "poller test database CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        std::fs::write(data.join("server.crt"), cert.pem()).expect("write server.crt");
        std::fs::write(data.join("server.key"), key.serialize_pem()).expect("write server.key");
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod server.key");
        // The socket directory stays open to the harness; TCP is TLS only.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        (PgServer::launch(dir, bin, true), ca.pem())
    }

    /// Starts the cluster in `dir`, as the server's user, on a free port.
    fn launch(dir: tempfile::TempDir, bin: PathBuf, tls: bool) -> PgServer {
        give_to_server_user(dir.path());
        let mut server = PgServer {
            dir,
            port: 0,
            bin,
            tls,
        };
        for attempt in 0.. {
            server.port = free_port();
            if server.pg_ctl("start").status.success() {
                break;
            }
            assert!(
                attempt < 3,
                "pg_ctl start failed: {}",
                std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
            );
        }
        server
    }

    fn pg_ctl(&self, action: &str) -> std::process::Output {
        self.pg_ctl_with(action, "")
    }

    /// `pg_ctl action`, the server started with `extra` options too.
    fn pg_ctl_with(&self, action: &str, extra: &str) -> std::process::Output {
        let dir = self.dir.path();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB{}{extra}",
            self.port,
            dir.display(),
            if self.tls { " -c ssl=on" } else { "" }
        );
        let data = dir.join("data");
        let log = dir.join("server.log");
        let mut args = vec![
            action,
            "-w",
            "-t",
            "60",
            "-D",
            data.to_str().expect("utf-8 path"),
            "-l",
            log.to_str().expect("utf-8 path"),
            "-o",
            &options,
        ];
        if action != "start" {
            args.extend(["-m", "fast"]);
        }
        pg(&self.bin, "pg_ctl", &args)
    }

    /// `pg_ctl restart`: every connection is cut.
    pub fn restart(&self) {
        let out = self.pg_ctl("restart");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl stop`: the server is gone until [`PgServer::start_again`].
    pub fn stop(&self) {
        let out = self.pg_ctl("stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped server again on its port; `read_only`: every
    /// transaction is read-only (as a standby promoted late, or a server
    /// whose disk filled, answers).
    pub fn start_again(&self, read_only: bool) {
        let extra = if read_only {
            " -c default_transaction_read_only=on"
        } else {
            ""
        };
        let out = self.pg_ctl_with("start", extra);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL for database `db`, with a password that must never be printed.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{DB_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        // Over the socket directory: open on a TLS-only server too.
        let params = format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.path().display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&params, tokio_postgres::NoTls)
            .await
            .expect("connect to the test server");
        tokio::spawn(conn);
        client
    }

    /// A server of its own with an empty database `db`, and that database's URL.
    pub async fn with_database(db: &str) -> (PgServer, String) {
        let server = tokio::task::spawn_blocking(PgServer::start)
            .await
            .expect("start PostgreSQL");
        let url = server.database(db).await;
        (server, url)
    }

    /// Creates an empty database and returns its URL.
    pub async fn database(&self, db: &str) -> String {
        let c = self.connect("postgres").await;
        c.batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create database");
        self.url(db)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg(
            &self.bin,
            "pg_ctl",
            &[
                "stop",
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
            ],
        );
    }
}

//! A throwaway PostgreSQL server for integration tests: `initdb` and `pg_ctl` in a temporary
//! directory, listening on 127.0.0.1 at a free port (its Unix socket in the same directory),
//! stopped when the [`Pg`] is dropped, also when the test panics.
//!
//! ```ignore
//! let Some(pg) = Pg::try_start() else { return }; // no PostgreSQL here: skipped, loudly
//! let url = pg.create_database("cdrs");             // one database per test case
//! ```
//!
//! Binaries: `$SWITCHYARD_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's
//! `postgresql` package), else `pg_ctl` on `PATH`. `initdb` refuses to run as root, so as root
//! the binaries run as the `postgres` user (`runuser -u postgres --`) and the directory is
//! handed to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL server (superuser `postgres`, trust authentication, loopback only).
pub struct Pg {
    /// libpq URL of the `postgres` database.
    pub url: String,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    /// Run the binaries through `runuser -u postgres --` (the tests run as root).
    as_postgres: bool,
    dir: tempfile::TempDir,
}

impl Pg {
    /// The directory holding `initdb` and `pg_ctl`, if PostgreSQL is installed.
    pub fn binaries() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("SWITCHYARD_PG_BIN") {
            let dir = PathBuf::from(dir);
            return dir.join("pg_ctl").exists().then_some(dir);
        }
        // Debian: /usr/lib/postgresql/<major>/bin, newest major first.
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("pg_ctl").exists().then_some((major, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .find(|d| d.join("pg_ctl").exists() && d.join("initdb").exists())
    }

    /// Starts a server, or returns `None` after printing a loud skip line when PostgreSQL is
    /// not installed (a fresh laptop's `cargo test` must not break). With `CI` set in the
    /// environment a missing PostgreSQL is a failure instead: CI must run these tests.
    pub fn try_start() -> Option<Pg> {
        if Pg::binaries().is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL binaries not found: install postgresql (Debian package `postgresql`) or set SWITCHYARD_PG_BIN");
            }
            eprintln!(
                "\n=== SKIPPED: PostgreSQL is not installed (no initdb/pg_ctl found); \
                 install the `postgresql` package or set SWITCHYARD_PG_BIN to run this test ===\n"
            );
            return None;
        }
        Some(Pg::start())
    }

    /// Starts a server; panics if PostgreSQL is missing or does not start (with its log).
    pub fn start() -> Pg {
        let bin = Pg::binaries().expect("PostgreSQL binaries not found: install postgresql");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .expect("temporary directory");
        if as_postgres {
            let uid = id_of("-u");
            let gid = id_of("-g");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("handing the temporary directory to postgres");
        }
        let mut pg = Pg {
            url: String::new(),
            port: 0,
            bin,
            as_postgres,
            dir,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // The port is free when chosen; another process may take it before the server binds,
        // so a failed start is tried again on a new port.
        for attempt in 0..5 {
            let port = free_port();
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c full_page_writes=off",
                path_str(pg.dir.path())
            );
            let log = pg.dir.path().join("server.log");
            let ok = pg.try_run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&data),
                    "-l",
                    path_str(&log),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if ok {
                pg.port = port;
                pg.url = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
                return pg;
            }
            eprintln!("PostgreSQL did not start on port {port} (attempt {attempt}); retrying");
        }
        panic!(
            "PostgreSQL did not start; its log:\n{}",
            std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Creates database `name` (a plain identifier) and returns its URL. Runs its client on a
    /// thread of its own, so it is safe to call from an async test.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?} must be a plain identifier"
        );
        let url = self.url.clone();
        let sql = format!("CREATE DATABASE {name}");
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)
                .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
            client
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
        .join()
        .expect("creating the database");
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` as the superuser on the `postgres` database, from a thread of its own (e.g.
    /// `pg_terminate_backend` to cut every connection in a reconnect test).
    pub fn execute(&self, sql: &str) {
        let url = self.url.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)
                .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
            client
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
        .join()
        .expect("running SQL on the test server");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's binaries (as `postgres` when we are root); panics on failure.
    fn run(&self, tool: &str, args: &[&str]) {
        assert!(self.try_run(tool, args), "{tool} {args:?} failed");
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> bool {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The server must not inherit a directory it cannot read.
        cmd.args(args).current_dir(self.dir.path());
        match cmd.output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                eprintln!(
                    "{tool} failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                false
            }
            Err(e) => {
                eprintln!("running {}: {e}", exe.display());
                false
            }
        }
    }
}

impl Drop for Pg {
    /// Stops the server at once (`immediate`: the data is thrown away with the directory).
    fn drop(&mut self) {
        if self.port != 0 {
            let data = self.data_dir();
            let _ = self.try_run(
                "pg_ctl",
                &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
            );
        }
    }
}

/// `id -u postgres` or `id -g postgres`.
fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("running id");
    assert!(
        out.status.success(),
        "no `postgres` user to run PostgreSQL as"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

//! A throwaway PostgreSQL server for the history store tests: Debian's `initdb` into a temp
//! dir, `postgres` on a free loopback port with its socket in that dir, run as `nobody` when
//! the tests run as root (initdb refuses root), stopped (and its dir removed) on drop. Nothing
//! here reaches beyond 127.0.0.1.
//!
//! No server binaries: a loud skip, or a failure under `IAC_REQUIRE_POSTGRES=1`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub struct PgServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    next_db: std::sync::atomic::AtomicU32,
}

/// The directory holding `initdb` and `postgres`: `IAC_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<major>/bin`, else `PATH`.
fn bindir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("IAC_PG_BINDIR") {
        return Some(PathBuf::from(d));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    if let Some((_, bin)) = majors.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
}

/// uid/gid to run the server as: ours, or `nobody`'s when we are root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam gets a NUL-terminated name; the result is read at once, before any other
    // call that could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root and there is no user `nobody` to run PostgreSQL as"
    );
    // SAFETY: pw is non-null and points at a valid passwd.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn command(bin: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin);
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// Starts a server, or `None` (after a loud skip message) when PostgreSQL is not installed
    /// and `IAC_REQUIRE_POSTGRES` is not `1`.
    pub async fn start() -> Option<PgServer> {
        let Some(bin) = bindir() else {
            if std::env::var("IAC_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "IAC_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries were found (initdb, postgres in /usr/lib/postgresql/*/bin or on PATH): run scripts/install-deps.sh (apt-get install postgresql)"
                );
            }
            eprintln!(
                "\n*** SKIPPED: the PostgreSQL history store tests need Debian's postgresql (initdb, postgres); set IAC_REQUIRE_POSTGRES=1 to make this a failure ***\n"
            );
            return None;
        };
        let ids = run_as();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if let Some((uid, gid)) = ids {
            chown(dir.path(), uid, gid);
            chown(&data, uid, gid);
        }
        let out = command(&bin.join("initdb"), ids)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "iac",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        if let Some((uid, gid)) = ids {
            chown(&dir.path().join("postgres.log"), uid, gid);
        }
        let child = command(&bin.join("postgres"), ids)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let mut server = PgServer {
            child,
            port,
            _dir: dir,
            next_db: std::sync::atomic::AtomicU32::new(0),
        };
        let t = Instant::now();
        loop {
            if tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(server._dir.path().join("postgres.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "postgres did not accept connections within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(server)
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://iac@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub async fn fresh_db(&self) -> String {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("t{n}");
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
        self.url(&name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's "fast shutdown" (backends end, no checkpoint wait).
        // SAFETY: kill with the pid of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A SeaweedFS server of the S3 bench's own, started for one run on an empty directory
//! and free loopback ports, and stopped when the run ends.
//!
//! Why not the long-running server of `tests/env/setup.sh`: a server that has served
//! earlier runs is not in a known state. After their buckets are deleted, SeaweedFS keeps
//! re-queuing the deletion of their chunks every few minutes (bursts of hundreds of log
//! lines), and that work lands on the same cores as the measured tools. A fixed cost
//! added to both tools lowers the ratio of the faster one: on 2026-11-27, volguard's
//! initial backup measured 1.93-1.94x restic's speed against such a server and
//! 2.14-2.27x against one restarted on an empty directory, with the same code.
//!
//! The binary is the one `tests/env/setup.sh` installs (the same SeaweedFS the tests
//! use), started with the same flags, plus ports of its own so that it can run beside
//! the test server.

use crate::store::S3Server;
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Keys of the private server: it listens on 127.0.0.1 only and lives for one run.
const ACCESS_KEY: &str = "volguardbench";
const SECRET_KEY: &str = "volguardbenchsecret0123456789";
/// weed puts each service's gRPC port this far above its HTTP port.
const GRPC_OFFSET: u16 = 10_000;
/// HTTP ports are tried from here, 10 apart; their gRPC ports stay below 32768, where
/// Linux starts handing out ephemeral ports for outgoing connections.
const FIRST_PORT: u16 = 20_000;
const LAST_PORT: u16 = 22_700;
/// setup.sh waits as long for the test server.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The running `weed mini` process; stopped on drop.
pub struct PrivateSeaweed {
    child: Child,
}

impl PrivateSeaweed {
    /// Starts `weed mini` on the empty directory `dir`, logging to `log`, and waits until
    /// its S3 API accepts a signed request. Returns the server and its settings.
    pub fn start(dir: &Path, log: &Path) -> Result<(Self, S3Server)> {
        let weed = weed_binary()?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("s3-identities.json");
        fs::write(&config, identities_json())
            .with_context(|| format!("writing {}", config.display()))?;
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        let ports = free_ports()?;
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!(
            "[core] starting a SeaweedFS of this run's own on 127.0.0.1:{} (data {}, log {})",
            ports.s3,
            data.display(),
            log.display()
        );
        let child = Command::new(&weed)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-s3.config={}", config.display()))
            // The flags of tests/env/setup.sh: loopback only, no web UIs, and no
            // telemetry (it would report to a server on the internet).
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .arg(format!("-s3.port={}", ports.s3))
            .arg(format!("-filer.port={}", ports.filer))
            .arg(format!("-master.port={}", ports.master))
            .arg(format!("-volume.port={}", ports.volume))
            .arg(format!("-admin.port={}", ports.admin))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} mini", weed.display()))?;
        let mut server = PrivateSeaweed { child };
        let settings = S3Server::new(
            format!("http://127.0.0.1:{}", ports.s3),
            ACCESS_KEY,
            SECRET_KEY,
            "us-east-1",
            format!("the bench's own SeaweedFS (log {})", log.display()),
        );
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "SeaweedFS exited ({status}) before its S3 API answered; its log: {}",
                    log.display()
                );
            }
            match settings.check() {
                Ok(()) => break,
                Err(err) if started.elapsed() > START_TIMEOUT => {
                    return Err(err.context(format!(
                        "SeaweedFS did not answer within {} s; its log: {}",
                        START_TIMEOUT.as_secs(),
                        log.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        eprintln!(
            "[core] SeaweedFS answering after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok((server, settings))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateSeaweed {
    /// SIGTERM, and SIGKILL if it has not exited in time: the run's directory (with the
    /// server's data in it) is removed after this.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let asked = Instant::now();
        while asked.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                eprintln!(
                    "[core] SeaweedFS stopped in {:.1} s",
                    asked.elapsed().as_secs_f64()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "[core] SeaweedFS did not stop within {} s of SIGTERM; killing it",
            STOP_TIMEOUT.as_secs()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where tests/env/setup.sh installs `weed`.
const WEED_UNDER_HOME: &str = ".cache/volguard/venv/bin/weed";

/// The `weed` that tests/env/setup.sh installs, if it is there.
pub fn installed_weed() -> Option<PathBuf> {
    let weed = PathBuf::from(std::env::var_os("HOME")?).join(WEED_UNDER_HOME);
    weed.is_file().then_some(weed)
}

fn weed_binary() -> Result<PathBuf> {
    installed_weed().with_context(|| {
        format!(
            "~/{WEED_UNDER_HOME} is missing: `bash tests/env/setup.sh` installs SeaweedFS \
             there (or pass --s3-env to use a server that is already running)"
        )
    })
}

fn identities_json() -> String {
    format!(
        r#"{{"identities": [{{"name": "volguard-bench",
  "credentials": [{{"accessKey": "{ACCESS_KEY}", "secretKey": "{SECRET_KEY}"}}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}}]}}
"#
    )
}

/// HTTP ports of the services weed mini runs that take a port flag.
struct Ports {
    s3: u16,
    filer: u16,
    master: u16,
    volume: u16,
    admin: u16,
}

/// Five consecutive ports that, with their gRPC ports, no socket of this machine uses.
/// Any socket counts, TIME_WAIT ones included: weed refuses a port that one of those
/// still holds, although a plain bind with SO_REUSEADDR would succeed.
fn free_ports() -> Result<Ports> {
    let used = used_tcp_ports()?;
    for base in (FIRST_PORT..LAST_PORT).step_by(10) {
        let all = base..base + 5;
        if all
            .clone()
            .all(|p| !used.contains(&p) && !used.contains(&(p + GRPC_OFFSET)))
        {
            return Ok(Ports {
                s3: base,
                filer: base + 1,
                master: base + 2,
                volume: base + 3,
                admin: base + 4,
            });
        }
    }
    bail!("no five free TCP ports (and their gRPC ports) in {FIRST_PORT}-{LAST_PORT}")
}

/// Local ports of every TCP socket in /proc/net/tcp and tcp6, whatever its state.
fn used_tcp_ports() -> Result<HashSet<u16>> {
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            // A kernel without IPv6 has no tcp6.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {table}")),
        };
        // "  sl  local_address rem_address ...": local_address is ADDR:PORT in hex.
        for line in text.lines().skip(1) {
            let port = line
                .split_whitespace()
                .nth(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
                .with_context(|| format!("unexpected line in {table}: {line:?}"))?;
            ports.insert(port);
        }
    }
    Ok(ports)
}

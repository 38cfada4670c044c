//! Validation of the config file with errors an operator can act on at once:
//! `FILE:LINE: key: reason` for syntax errors, wrong types, unknown keys (with the closest
//! known key suggested), bad values and secret files others can read. The agent refuses to
//! start (and a reload keeps the old config) on any of them, so every check that can be
//! done without touching the network is done here, at load time, not at the first backup.

use crate::secrets::secret_file_problem;
use std::path::Path;

use crate::config::FileConfig;
use crate::error::{Error, Result};

/// An unknown key this close (in edits) to a known one is reported as a likely typo of it.
const MAX_SUGGESTION_EDITS: usize = 3;

/// Parses and validates the text of the config file `path`.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig> {
    let cfg: FileConfig = toml::from_str(text).map_err(|e| from_toml(text, path, &e))?;
    validate(&cfg, text, path)?;
    Ok(cfg)
}

/// One finding about the config file, rendered as `FILE:LINE: key: reason`.
struct Problem<'a> {
    path: &'a Path,
    line: Option<usize>,
    key: Option<String>,
    reason: String,
}

impl Problem<'_> {
    fn into_error(self) -> Error {
        let mut s = format!("config file {}", self.path.display());
        if let Some(l) = self.line {
            s.push_str(&format!(":{l}"));
        }
        s.push_str(": ");
        if let Some(k) = self.key {
            s.push_str(&k);
            s.push_str(": ");
        }
        s.push_str(&self.reason);
        Error::Other(s)
    }
}

/// Turns a toml/serde error into file, line, dotted key and reason. toml gives a byte
/// span; the key is read off the source line the span starts on, inside the table whose
/// header precedes it.
fn from_toml(text: &str, path: &Path, e: &toml::de::Error) -> Error {
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return Problem {
            path,
            line: None,
            key: None,
            reason: message,
        }
        .into_error();
    };
    let start = span.start.min(text.len());
    let line_no = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let table = table_at(text, line_no);
    let (key, reason) = match unknown_field(&message) {
        Some((name, known)) => {
            let reason = match closest(&name, &known) {
                Some(k) => format!("unknown key; did you mean `{k}`?"),
                None if known.is_empty() => "unknown key; this table takes none".to_string(),
                None => format!("unknown key; known keys here: {}", known.join(", ")),
            };
            (Some(name), reason)
        }
        None => (
            text.lines()
                .nth(line_no - 1)
                .and_then(key_of_line)
                .map(str::to_string),
            message,
        ),
    };
    Problem {
        path,
        line: Some(line_no),
        key: key.map(|k| dotted(table.as_deref(), &k)),
        reason,
    }
    .into_error()
}

/// serde's stable wording for `deny_unknown_fields`: "unknown field `x`, expected one of
/// `a`, `b`" (or "expected `a`", or "there are no fields").
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((name.to_string(), known))
}

/// The known key within a few edits of `name`, if exactly one is closest.
fn closest<'k>(name: &str, known: &'k [String]) -> Option<&'k str> {
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = strsim::levenshtein(name, k);
        if d <= MAX_SUGGESTION_EDITS.min(k.len() / 2) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k.as_str()));
        }
    }
    best.map(|(_, k)| k)
}

/// The table (`[name]`) in force at 1-based line `line_no`; None for the top level.
fn table_at(text: &str, line_no: usize) -> Option<String> {
    let mut table = None;
    for line in text.lines().take(line_no) {
        let t = line.trim();
        if let Some(inner) = t.strip_prefix('[') {
            let inner = inner.trim_start_matches('[');
            if let Some((name, _)) = inner.split_once(']') {
                table = Some(name.trim().trim_matches('"').to_string());
            }
        }
    }
    table
}

/// `key` of a `key = value` line (quotes removed), or None.
fn key_of_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    let k = k.trim().trim_matches('"').trim_matches('\'');
    (!k.is_empty()).then_some(k)
}

fn dotted(table: Option<&str>, key: &str) -> String {
    match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    }
}

/// 1-based line of `key` in `table` (None = top level), when written as `key = value`.
fn locate(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = table_at(t, 1);
            continue;
        }
        if key_of_line(line) == Some(key) && current.as_deref() == table {
            return Some(i + 1);
        }
        // A top-level dotted key (`s3.region = ...`) sets a table's key too.
        if current.is_none()
            && let Some(t) = table
            && key_of_line(line) == Some(format!("{t}.{key}").as_str())
        {
            return Some(i + 1);
        }
    }
    None
}

/// Value checks the types cannot express. Each failure names the key and its line.
fn validate(cfg: &FileConfig, text: &str, path: &Path) -> Result<()> {
    let problem = |table: Option<&str>, key: &str, reason: String| {
        Problem {
            path,
            line: locate(text, table, key),
            key: Some(dotted(table, key)),
            reason,
        }
        .into_error()
    };
    if let Some(r) = &cfg.repository {
        crate::repo::Location::parse(r).map_err(|e| problem(None, "repository", e.to_string()))?;
    }
    if cfg.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
        return Err(problem(
            None,
            "host",
            "must not be empty; remove the line to use the machine's hostname".into(),
        ));
    }
    let paths = [
        (None, "key_file", cfg.key_file.as_deref(), true),
        (None, "password_file", cfg.password_file.as_deref(), true),
        (None, "docker_root", cfg.docker_root.as_deref(), false),
        (
            Some("s3"),
            "secret_access_key_file",
            cfg.s3.secret_access_key_file.as_deref(),
            true,
        ),
        (Some("s3"), "ca_bundle", cfg.s3.ca_bundle.as_deref(), false),
    ];
    for (table, key, p, secret) in paths {
        let Some(p) = p else { continue };
        if !p.is_absolute() {
            return Err(problem(
                table,
                key,
                format!(
                    "{} is a relative path; write it absolute (the agent runs in /)",
                    p.display()
                ),
            ));
        }
        // A missing file is reported when it is needed: commands that never open the
        // repository (inventory, layer-diff) must still work.
        if secret
            && let Ok(meta) = std::fs::metadata(p)
            && let Some(why) = secret_file_problem(&meta)
        {
            return Err(problem(table, key, format!("{} {why}", p.display())));
        }
    }
    let (id, secret_file) = (&cfg.s3.access_key_id, &cfg.s3.secret_access_key_file);
    if id.is_some() != secret_file.is_some() {
        let (present, missing) = if id.is_some() {
            ("access_key_id", "secret_access_key_file")
        } else {
            ("secret_access_key_file", "access_key_id")
        };
        return Err(problem(
            Some("s3"),
            present,
            format!("set without {missing}; static credentials need both (or neither)"),
        ));
    }
    if let Err(e) = cfg.s3.validate() {
        let msg = e.to_string();
        let msg = msg
            .strip_prefix("config [s3]: ")
            .unwrap_or(&msg)
            .to_string();
        // Every message starts with its key; the longest match wins (`sse_kms_key_id`
        // over `sse`).
        let key = S3_KEYS
            .iter()
            .filter(|k| msg.starts_with(*k))
            .max_by_key(|k| k.len())
            .copied();
        return Err(match key {
            Some(k) => problem(Some("s3"), k, msg),
            None => Problem {
                path,
                line: None,
                key: Some("s3".into()),
                reason: msg,
            }
            .into_error(),
        });
    }
    if let Err(msg) = cfg.watch.validate() {
        return Err(Problem {
            path,
            line: None,
            key: Some("watch".into()),
            reason: msg,
        }
        .into_error());
    }
    // The agent's own checks say `agent[.table].key: reason`; point at that key's line.
    if let Err(msg) = cfg.agent.validate() {
        let (name, reason) = msg.split_once(": ").unwrap_or(("agent", msg.as_str()));
        let (table, key) = name.rsplit_once('.').unwrap_or(("agent", name));
        let key = key.split('[').next().unwrap_or(key);
        return Err(Problem {
            path,
            line: locate(text, Some(table), key),
            key: Some(name.to_string()),
            reason: reason.to_string(),
        }
        .into_error());
    }
    Ok(())
}

/// Keys of the `[s3]` table whose values `S3Settings::validate` judges.
const S3_KEYS: &[&str] = &[
    "upload_concurrency",
    "download_concurrency",
    "multipart_threshold_mib",
    "part_size_mib",
    "part_concurrency",
    "storage_class",
    "sse",
    "sse_kms_key_id",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn load(text: &str) -> std::result::Result<FileConfig, String> {
        parse(text, Path::new("/etc/volguard/config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_top_level_key_names_line_and_suggests() {
        let e = load("repository = \"/x\"\n\nrepositry = \"/y\"\n").unwrap_err();
        assert_eq!(
            e,
            "config file /etc/volguard/config.toml:3: repositry: unknown key; did you mean `repository`?"
        );
    }

    #[test]
    fn unknown_key_in_s3_table_is_dotted_and_suggested() {
        let e = load("host = \"h\"\n[s3]\nregion = \"x\"\nendpont = \"http://127.0.0.1:1\"\n")
            .unwrap_err();
        assert_eq!(
            e,
            "config file /etc/volguard/config.toml:4: s3.endpont: unknown key; did you mean `endpoint`?"
        );
    }

    #[test]
    fn far_off_unknown_key_lists_the_known_ones() {
        let e = load("zzzzzzzz = 1\n").unwrap_err();
        assert!(e.starts_with("config file /etc/volguard/config.toml:1: zzzzzzzz: unknown key; known keys here: repository"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_expected_type() {
        let e = load("[s3]\nupload_concurrency = \"four\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "config file /etc/volguard/config.toml:2: s3.upload_concurrency: invalid type"
            ),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let e = load("host = \"a\"\nrepository = /no/quotes\n").unwrap_err();
        assert!(
            e.starts_with("config file /etc/volguard/config.toml:2: repository: "),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = load("[s3]\nsse = \"AES256\"\n\npart_size_mib = 2\n").unwrap_err();
        assert!(
            e.starts_with("config file /etc/volguard/config.toml:4: s3.part_size_mib: part_size_mib = 2 is below"),
            "{e}"
        );
        let e = load("[s3]\nsse = \"rot13\"\n").unwrap_err();
        assert!(
            e.starts_with("config file /etc/volguard/config.toml:2: s3.sse: "),
            "{e}"
        );
        let e = load("[s3]\nsse_kms_key_id = \"k\"\n").unwrap_err();
        assert!(
            e.starts_with("config file /etc/volguard/config.toml:2: s3.sse_kms_key_id: "),
            "{e}"
        );
        let e = load("repository = \"s3://\"\n").unwrap_err();
        assert!(
            e.starts_with("config file /etc/volguard/config.toml:1: repository: "),
            "{e}"
        );
        let e = load("key_file = \"repo.key\"\n").unwrap_err();
        assert!(
            e.contains(":1: key_file: repo.key is a relative path"),
            "{e}"
        );
        let e = load("[s3]\nregion = \"r\"\naccess_key_id = \"a\"\n").unwrap_err();
        assert!(
            e.contains(":3: s3.access_key_id: set without secret_access_key_file"),
            "{e}"
        );
        let e = load("\nhost = \" \"\n").unwrap_err();
        assert!(e.contains(":2: host: must not be empty"), "{e}");
    }

    #[test]
    fn group_readable_secret_named_in_config_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, "x\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let text = format!(
            "[s3]\naccess_key_id = \"a\"\nsecret_access_key_file = \"{}\"\n",
            secret.display()
        );
        let e = load(&text).unwrap_err();
        assert!(
            e.contains(":3: s3.secret_access_key_file: ") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        load(&text).unwrap();
        // Missing secret files wait until they are needed.
        let missing = format!(
            "password_file = \"{}\"\n",
            dir.path().join("nope").display()
        );
        load(&missing).unwrap();
        // A directory is no secret file.
        let as_dir = format!("key_file = \"{}\"\n", dir.path().display());
        let e = load(&as_dir).unwrap_err();
        assert!(
            e.contains(":1: key_file: ") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn locate_finds_keys_in_their_table_only() {
        let text = "sse = 1\n[s3]\n  sse = 2\n[agent]\nsse = 3\n";
        assert_eq!(locate(text, None, "sse"), Some(1));
        assert_eq!(locate(text, Some("s3"), "sse"), Some(3));
        assert_eq!(locate("s3.region = \"x\"\n", Some("s3"), "region"), Some(1));
        assert_eq!(locate(text, Some("s3"), "region"), None);
    }

    /// The shipped default config documents every option: with each commented
    /// `# key = value` line uncommented, it must parse, and every field must be set. The
    /// destructuring lists every field without `..`, so a new option does not compile
    /// until it is named here, and this test fails until the file documents it.
    #[test]
    fn packaged_default_config_documents_every_option() {
        // Compiled in, so the test follows the file even when the build directory is shared
        // between checkouts (a path from env! would point into whichever compiled it).
        let path = Path::new("packaging/config.toml");
        let shipped = include_str!("../../packaging/config.toml").to_string();
        // As shipped (everything commented out) it is the defaults.
        load(&shipped).unwrap();
        let uncommented = uncomment_options(&shipped);
        let cfg = parse(&uncommented, path).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let FileConfig {
            repository,
            key_file,
            password_file,
            docker_root,
            host,
            s3,
            agent,
            watch,
        } = cfg;
        let crate::watch::alerts::WatchSettings {
            webhook: watch_webhook,
            command,
            allow,
            rate_limit,
            rate_window_secs,
            event_log_max_bytes,
            event_log_keep,
            forensic_snapshot: _,
            forensic_snapshot_interval_secs,
        } = watch;
        assert!(watch_webhook.is_some(), "watch.webhook");
        assert!(command.is_some(), "watch.command");
        assert_eq!(allow.len(), 1, "watch.allow");
        assert!(
            rate_limit.is_some() && rate_window_secs.is_some(),
            "watch.rate_*"
        );
        assert!(
            event_log_max_bytes.is_some() && event_log_keep.is_some(),
            "watch.event_log_*"
        );
        assert!(locate(&uncommented, Some("watch"), "forensic_snapshot").is_some());
        assert!(
            forensic_snapshot_interval_secs.is_some(),
            "watch.forensic_snapshot_interval_secs"
        );
        let crate::config::agent::AgentSettings {
            schedule: _,
            jitter: _,
            tick: _,
            include: _,
            exclude: _,
            consistency: _,
            freeze_timeout: _,
            stop_timeout: _,
            hook_timeout: _,
            shutdown_timeout: _,
            metrics_listen: _,
            webhook,
            check_every: _,
            check_read_percent: _,
            drill_every: _,
            drill_sample_percent: _,
            retention,
            nice: _,
            io_idle: _,
            watch: _,
            volume,
        } = agent;
        assert!(webhook.is_some(), "agent.webhook");
        assert!(retention.is_some(), "agent.retention");
        assert_eq!(volume.len(), 1, "agent.volume");
        // Fields whose default is a value: documented when their key is in the table.
        for key in [
            "schedule",
            "jitter",
            "tick",
            "include",
            "exclude",
            "consistency",
            "freeze_timeout",
            "stop_timeout",
            "hook_timeout",
            "shutdown_timeout",
            "metrics_listen",
            "check_every",
            "check_read_percent",
            "drill_every",
            "drill_sample_percent",
            "nice",
            "io_idle",
            "watch",
        ] {
            assert!(
                locate(&uncommented, Some("agent"), key).is_some(),
                "packaging/config.toml does not document agent.{key}"
            );
        }
        assert!(repository.is_some(), "repository");
        assert!(key_file.is_some(), "key_file");
        assert!(password_file.is_some(), "password_file");
        assert!(docker_root.is_some(), "docker_root");
        assert!(host.is_some(), "host");
        let crate::backend::s3::S3Settings {
            endpoint,
            region,
            path_style,
            profile,
            access_key_id,
            secret_access_key_file,
            storage_class,
            sse,
            sse_kms_key_id,
            ca_bundle,
            upload_concurrency,
            download_concurrency,
            multipart_threshold_mib,
            part_size_mib,
            part_concurrency,
        } = s3;
        for (name, set) in [
            ("s3.endpoint", endpoint.is_some()),
            ("s3.region", region.is_some()),
            ("s3.path_style", path_style.is_some()),
            ("s3.profile", profile.is_some()),
            ("s3.access_key_id", access_key_id.is_some()),
            (
                "s3.secret_access_key_file",
                secret_access_key_file.is_some(),
            ),
            ("s3.storage_class", storage_class.is_some()),
            ("s3.sse", sse.is_some()),
            ("s3.sse_kms_key_id", sse_kms_key_id.is_some()),
            ("s3.ca_bundle", ca_bundle.is_some()),
            ("s3.upload_concurrency", upload_concurrency.is_some()),
            ("s3.download_concurrency", download_concurrency.is_some()),
            (
                "s3.multipart_threshold_mib",
                multipart_threshold_mib.is_some(),
            ),
            ("s3.part_size_mib", part_size_mib.is_some()),
            ("s3.part_concurrency", part_concurrency.is_some()),
        ] {
            assert!(set, "packaging/config.toml does not document {name}");
        }
    }

    /// `# key = value` and `# [table]` lines lose their `# `; prose comments stay.
    fn uncomment_options(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if key_of_line(rest).is_some_and(is_bare_key) => rest,
                Some(rest) if rest.starts_with('[') && rest.trim_end().ends_with(']') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Option names are lower snake case; prose such as `# Where = ...` is not.
    fn is_bare_key(k: &str) -> bool {
        k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    #[test]
    fn uncommenting_keeps_prose() {
        assert_eq!(
            uncomment_options("# Where = backups go\n# repository = \"/r\"\n# [s3]\n#\n"),
            "# Where = backups go\nrepository = \"/r\"\n[s3]\n#"
        );
    }
}

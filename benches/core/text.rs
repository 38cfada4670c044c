//! Text for the small files of the synthetic volume: logs, config files and
//! JSON documents, the three kinds that fill application volumes.
//!
//! What matters for a backup tool is that they are many, small, compressible
//! (repeated keys and words, random ids and numbers), and edited by appending
//! (logs) or by rewriting a line (configs, documents).

use crate::common::db::{WORDS, pick};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::io::Write as _;

#[derive(Clone, Copy)]
pub enum Kind {
    Log,
    Config,
    Json,
}

const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const COMPONENTS: &[&str] = &["http", "worker", "scheduler", "db-pool", "cache", "auth"];
const METHODS: &[&str] = &["GET", "GET", "POST", "PUT", "DELETE"];
const STATUS_CODES: &[u16] = &[200, 200, 200, 201, 204, 301, 400, 404, 500];

impl Kind {
    /// Directories hold one kind each, like `logs/`, `conf.d/`, `data/`.
    pub fn for_dir(dir: usize) -> Self {
        match dir % 3 {
            0 => Kind::Log,
            1 => Kind::Config,
            _ => Kind::Json,
        }
    }

    pub fn dir_prefix(self) -> &'static str {
        match self {
            Kind::Log => "logs",
            Kind::Config => "conf",
            Kind::Json => "docs",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Config => "conf",
            Kind::Json => "json",
        }
    }
}

/// A file body of exactly `len` bytes (the last line may be cut short, as
/// in a log being written).
pub fn body(kind: Kind, len: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        line(kind, rng, &mut out);
    }
    out.truncate(len);
    out
}

/// The file after a user or application touched it: logs get a line
/// appended, configs and documents get one line rewritten.
pub fn edit(kind: Kind, content: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = content.to_vec();
    if matches!(kind, Kind::Log) || content.is_empty() {
        line(kind, rng, &mut out);
        return out;
    }
    let lines: Vec<&[u8]> = content.split_inclusive(|&b| b == b'\n').collect();
    let victim = rng.gen_range(0..lines.len());
    out.clear();
    for (i, old) in lines.iter().enumerate() {
        if i == victim {
            line(kind, rng, &mut out);
        } else {
            out.extend_from_slice(old);
        }
    }
    out
}

/// Appends one newline-terminated line of `kind` to `out`.
fn line(kind: Kind, rng: &mut StdRng, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail; the Result is io::Write's signature.
    let _ = match kind {
        Kind::Log => log_line(rng, out),
        Kind::Config => config_line(rng, out),
        Kind::Json => json_line(rng, out),
    };
}

fn log_line(rng: &mut StdRng, out: &mut Vec<u8>) -> std::io::Result<()> {
    writeln!(
        out,
        "2024-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {:5} [{}-{}] request id={:08x} \
         method={} path=/api/v1/{}/{} status={} dur_ms={}.{}",
        rng.gen_range(1..=12),
        rng.gen_range(1..=28),
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
        rng.gen_range(0..1000),
        pick(rng, LEVELS),
        pick(rng, COMPONENTS),
        rng.gen_range(0..8),
        rng.r#gen::<u32>(),
        pick(rng, METHODS),
        pick(rng, WORDS),
        rng.gen_range(1..100_000),
        STATUS_CODES.choose(rng).copied().unwrap_or(200),
        rng.gen_range(0..2000),
        rng.gen_range(0..10),
    )
}

fn config_line(rng: &mut StdRng, out: &mut Vec<u8>) -> std::io::Result<()> {
    let key = format!("{}_{}", pick(rng, WORDS), pick(rng, WORDS));
    match rng.gen_range(0..5) {
        0 => writeln!(out, "[{}.{}]", pick(rng, COMPONENTS), pick(rng, WORDS)),
        1 => writeln!(out, "{key} = {}", rng.gen_range(0..65_536)),
        2 => writeln!(out, "{key} = {}", rng.gen_bool(0.5)),
        3 => writeln!(
            out,
            "{key} = \"/var/lib/{}/{}\"",
            pick(rng, WORDS),
            pick(rng, WORDS)
        ),
        _ => writeln!(
            out,
            "# {} {} {}",
            pick(rng, WORDS),
            pick(rng, WORDS),
            pick(rng, WORDS)
        ),
    }
}

fn json_line(rng: &mut StdRng, out: &mut Vec<u8>) -> std::io::Result<()> {
    writeln!(
        out,
        "{{\"id\": {}, \"name\": \"{}-{}\", \"enabled\": {}, \"tags\": [\"{}\", \"{}\"], \
         \"score\": {}.{:03}, \"owner\": \"user_{:06x}\"}}",
        rng.gen_range(1..10_000_000),
        pick(rng, WORDS),
        pick(rng, WORDS),
        rng.gen_bool(0.8),
        pick(rng, WORDS),
        pick(rng, WORDS),
        rng.gen_range(0..100),
        rng.gen_range(0..1000),
        rng.gen_range(0..0x100_0000),
    )
}

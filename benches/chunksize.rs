//! Chunk-size sweep for volguard's FastCDC 2020 chunker.
//!
//! Why this exists: the chunk size is a trade-off that must be chosen by
//! measurement, not taste. Database files made of 8 KiB pages with scattered
//! updates are the common large file in Docker volumes. Small chunks keep the
//! incremental backup after such updates small (fewer untouched bytes ride
//! along with each changed page); big chunks keep the index and the trees
//! small and compress better. This bench chunks the same database-like file
//! as `core.rs`, rewrites 1 % of its pages scattered over the file, chunks it
//! again, and reports for each parameter set what the second backup would
//! have to upload, what the metadata would cost, and how fast chunking runs.
//!
//! Run: `cargo bench --bench chunksize [-- --scale 0.1]`. Everything happens
//! in memory on one thread; the table is printed and written to
//! `<target>/bench-chunksize.md`.

mod common;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use common::{MIB, db, media};
use fastcdc::v2020::{FastCDC, Normalization};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Instant;

/// Gear-table seed. volguard will derive one from the repository key (so
/// chunk boundaries do not leak content); any fixed value is representative.
const GEAR_SEED: u64 = 0x766f_6c67_7561_7264;
const MEDIA_SEED: u64 = 3;
/// Bytes per index entry (chunk id 32 + pack id/offset/length) and per chunk
/// reference in a file's tree node (the 32-byte chunk id), as in the design.
const INDEX_ENTRY_BYTES: usize = 48;
const TREE_REF_BYTES: usize = 32;
const ZSTD_LEVEL: i32 = 3;
const KIB: u32 = 1024;

#[derive(Parser)]
#[command(about = "FastCDC chunk-size sweep on a database-like file")]
struct Args {
    /// Multiplies the data sizes (1.0 = 1 GiB database, 50 MiB media).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Set by `cargo bench`. Without it (as under `cargo test
    /// --all-targets`, which also runs benches) nothing is measured.
    #[arg(long)]
    bench: bool,
}

#[derive(Clone, Copy)]
struct Params {
    min: u32,
    avg: u32,
    max: u32,
}

impl Params {
    /// The default shape: min = avg/4, max = avg*4.
    fn quarter(avg: u32) -> Self {
        Self {
            min: avg / 4,
            avg,
            max: avg * 4,
        }
    }

    fn chunker<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        FastCDC::with_level_and_seed(
            data,
            self.min,
            self.avg,
            self.max,
            Normalization::Level1,
            GEAR_SEED,
        )
    }
}

/// The two versions of the database file and a slab of media.
struct Inputs {
    db_before: Vec<u8>,
    db_after: Vec<u8>,
    pages_changed: usize,
    media: Vec<u8>,
}

/// What one parameter set costs.
struct Outcome {
    params: Params,
    chunks: usize,
    new_chunks: usize,
    new_raw: usize,
    new_zstd: usize,
    all_zstd: usize,
    db_mib_s: f64,
    media_mib_s: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.bench {
        eprintln!("chunksize: benchmark not run (no --bench); use `cargo bench --bench chunksize`");
        return Ok(());
    }
    ensure!(
        args.scale > 0.0 && args.scale <= 4.0,
        "--scale must be in (0, 4]"
    );
    let inputs = make_inputs(args.scale);
    let mut outcomes = Vec::new();
    for params in sweep() {
        eprintln!(
            "[chunksize] avg {} KiB min {} KiB max {} KiB",
            params.avg / KIB,
            params.min / KIB,
            params.max / KIB
        );
        outcomes.push(measure(params, &inputs));
    }
    let report = render(&inputs, &outcomes);
    println!("{report}");
    let out = common::target_dir()?.join("bench-chunksize.md");
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("[chunksize] table written to {}", out.display());
    Ok(())
}

/// avg 8 KiB .. 1 MiB with min = avg/4, max = avg*4, plus min = avg/2 for
/// the two front-runners, to see whether a larger minimum (faster: more
/// bytes skipped without hashing) costs dedup.
fn sweep() -> Vec<Params> {
    let mut all = Vec::new();
    for kib in [8, 16, 32, 64, 128, 256, 1024] {
        let avg = kib * KIB;
        all.push(Params::quarter(avg));
        if kib == 16 || kib == 32 {
            all.push(Params {
                min: avg / 2,
                ..Params::quarter(avg)
            });
        }
    }
    all
}

fn make_inputs(scale: f64) -> Inputs {
    let started = Instant::now();
    let n_pages = db::pages_at_scale(scale);
    let db_before = db::generate(n_pages, db::GENERATION_SEED);
    let rewrites = db::scattered_rewrites(n_pages, db::UPDATE_FRACTION, db::UPDATE_SEED);
    let mut db_after = db_before.clone();
    for rw in &rewrites {
        let start = rw.page_no * db::PAGE_SIZE;
        db_after[start..start + db::PAGE_SIZE].copy_from_slice(&rw.bytes);
    }
    let mut media = vec![0u8; (50.0 * MIB * scale) as usize];
    media::MediaStream::new(MEDIA_SEED).fill(&mut media);
    eprintln!(
        "[chunksize] generated {:.0} MiB database ({} pages rewritten) and {:.0} MiB media in {:.1} s",
        db_before.len() as f64 / MIB,
        rewrites.len(),
        media.len() as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    Inputs {
        db_before,
        db_after,
        pages_changed: rewrites.len(),
        media,
    }
}

fn measure(params: Params, inputs: &Inputs) -> Outcome {
    // Both versions are chunked anyway; the better rate damps timer noise.
    let (before, rate_before) = timed_chunks(params, &inputs.db_before);
    let (after, rate_after) = timed_chunks(params, &inputs.db_after);
    let db_mib_s = rate_before.max(rate_after);
    // Media is small; take the best of three runs to damp timer noise.
    let media_mib_s = (0..3)
        .map(|_| timed_chunks(params, &inputs.media).1)
        .fold(0.0, f64::max);

    let known: HashSet<blake3::Hash> = before.iter().map(|c| blake3::hash(c)).collect();
    let mut uploaded = HashSet::new();
    let (mut new_raw, mut new_zstd) = (0, 0);
    for chunk in &after {
        let id = blake3::hash(chunk);
        if !known.contains(&id) && uploaded.insert(id) {
            new_raw += chunk.len();
            new_zstd += zstd_len(chunk);
        }
    }
    Outcome {
        params,
        chunks: after.len(),
        new_chunks: uploaded.len(),
        new_raw,
        new_zstd,
        // Each chunk is compressed on its own, so small chunks lose context.
        all_zstd: before.iter().map(|c| zstd_len(c)).sum(),
        db_mib_s,
        media_mib_s,
    }
}

/// Splits `data` into chunks; the rate covers only the cut-point search.
fn timed_chunks(params: Params, data: &[u8]) -> (Vec<&[u8]>, f64) {
    let started = Instant::now();
    let chunks: Vec<&[u8]> = params
        .chunker(data)
        .map(|c| &data[c.offset..c.offset + c.length])
        .collect();
    let secs = started.elapsed().as_secs_f64();
    (chunks, data.len() as f64 / MIB / secs)
}

fn zstd_len(chunk: &[u8]) -> usize {
    // Compressing an in-memory slice only fails on allocation failure, which
    // would abort anyway; counting it as incompressible keeps the sweep going.
    zstd::bulk::compress(chunk, ZSTD_LEVEL).map_or(chunk.len(), |c| c.len())
}

fn render(inputs: &Inputs, outcomes: &[Outcome]) -> String {
    let db_len = inputs.db_before.len();
    let mut out = String::new();
    let _ = writeln!(out, "## FastCDC 2020 chunk-size sweep\n");
    let _ = writeln!(
        out,
        "Database-like file: {:.0} MiB of 8 KiB pages; \
         {} pages ({:.0} %) rewritten in place, scattered; lower bound for the \
         incremental = {:.1} MiB raw. Media: {:.0} MiB random bytes. \
         Normalization Level1, gear seed fixed, one thread, data in memory. \
         Index = chunks x {INDEX_ENTRY_BYTES} B, tree = chunks x {TREE_REF_BYTES} B. \
         New chunks compressed one by one with zstd -{ZSTD_LEVEL}.\n",
        db_len as f64 / MIB,
        inputs.pages_changed,
        db::UPDATE_FRACTION * 100.0,
        (inputs.pages_changed * db::PAGE_SIZE) as f64 / MIB,
        inputs.media.len() as f64 / MIB,
    );
    let _ = writeln!(
        out,
        "| avg | min | max | chunks | new chunks | new raw MiB | new zstd MiB | re-uploaded % | index KiB | index MiB per 100 GiB | tree KiB | all chunks zstd MiB | DB MiB/s | media MiB/s |"
    );
    let _ = writeln!(out, "|{}", "---:|".repeat(14));
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} |",
            size_label(o.params.avg),
            size_label(o.params.min),
            size_label(o.params.max),
            o.chunks,
            o.new_chunks,
            o.new_raw as f64 / MIB,
            o.new_zstd as f64 / MIB,
            100.0 * o.new_raw as f64 / db_len as f64,
            (o.chunks * INDEX_ENTRY_BYTES) as f64 / 1024.0,
            index_per_100_gib(o.chunks, db_len),
            (o.chunks * TREE_REF_BYTES) as f64 / 1024.0,
            o.all_zstd as f64 / MIB,
            o.db_mib_s,
            o.media_mib_s,
        );
    }
    out
}

/// The index for 100 GiB of data like this file: what a large host with
/// many database volumes would have to keep (in memory, for dedup lookups).
fn index_per_100_gib(chunks: usize, data_len: usize) -> f64 {
    let index_bytes_per_data_byte = (chunks * INDEX_ENTRY_BYTES) as f64 / data_len as f64;
    // 100 GiB of data, expressed in MiB of index: 100 GiB / 1 MiB = 102400.
    index_bytes_per_data_byte * 100.0 * 1024.0
}

fn size_label(bytes: u32) -> String {
    if bytes >= 1024 * KIB {
        format!("{} MiB", bytes / (1024 * KIB))
    } else {
        format!("{} KiB", bytes / KIB)
    }
}

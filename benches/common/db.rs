//! A database-like file: 8 KiB pages laid out like a PostgreSQL heap segment.
//!
//! Databases are the common large file in Docker volumes, and their update
//! pattern (whole pages rewritten in place, scattered over a big file) is what
//! decides how small an incremental backup can be. So the pages here copy the
//! features that matter to a chunker and a compressor:
//!
//! * a 24-byte page header with a growing LSN and a checksum (high entropy,
//!   changes on every rewrite, as in a real engine);
//! * an array of 4-byte line pointers growing from the front;
//! * tuples growing from the back, each a 24-byte tuple header plus a row of
//!   text with repeated field names and random values;
//! * zeroed free space in the middle, 3–30 % of the page.
//!
//! With zstd -3 such a file compresses about 2–3x, like real table files.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::io::Write as _;

pub const PAGE_SIZE: usize = 8192;

const HEADER_LEN: usize = 24;
const LINE_POINTER_LEN: usize = 4;
const TUPLE_HEADER_LEN: usize = 24;
/// Tuples start on 8-byte boundaries (MAXALIGN), which leaves small zero gaps.
const TUPLE_ALIGN: usize = 8;

const FIRST_NAMES: &[&str] = &[
    "maria", "john", "wei", "fatima", "olga", "lucas", "amara", "kenji", "sofia", "ahmed", "emma",
    "noah", "ines", "pavel", "chloe", "diego", "yuki", "liam", "zara", "tomas",
];
const LAST_NAMES: &[&str] = &[
    "kowalski", "smith", "chen", "haddad", "ivanova", "martin", "okafor", "tanaka", "rossi",
    "khan", "muller", "garcia", "novak", "dubois", "silva", "berg", "lopez", "nguyen",
];
const DOMAINS: &[&str] = &[
    "example.org",
    "mail.example.com",
    "corp.example.net",
    "shop.example.io",
];
const STATUSES: &[&str] = &[
    "pending",
    "paid",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];
/// Vocabulary for free-text columns; shared with the small-file generator.
pub const WORDS: &[&str] = &[
    "please",
    "leave",
    "at",
    "the",
    "front",
    "door",
    "call",
    "before",
    "delivery",
    "gift",
    "wrap",
    "fragile",
    "handle",
    "with",
    "care",
    "back",
    "entrance",
    "no",
    "signature",
    "required",
    "ring",
    "bell",
    "twice",
    "office",
    "hours",
    "only",
    "weekend",
    "express",
    "standard",
    "customer",
    "requested",
    "invoice",
    "copy",
    "by",
    "email",
    "address",
    "changed",
    "refund",
    "issued",
    "partial",
    "replacement",
    "sent",
    "warehouse",
    "north",
    "south",
    "batch",
    "priority",
    "low",
    "high",
    "retry",
    "payment",
    "failed",
    "card",
    "expired",
    "updated",
    "coupon",
    "applied",
    "discount",
    "loyalty",
    "points",
    "order",
    "merged",
    "split",
    "note",
];

/// Seeds for the original file and for the update, shared by both benches
/// so that at the same scale they see byte-identical files.
pub const GENERATION_SEED: u64 = 1;
pub const UPDATE_SEED: u64 = 2;
/// Share of pages rewritten between two backups (1 %, scattered).
pub const UPDATE_FRACTION: f64 = 0.01;
/// Size of the file at scale 1.0: one PostgreSQL segment, 1 GiB.
const FULL_SCALE_BYTES: f64 = 1024.0 * 1024.0 * 1024.0;

/// Number of pages in the file at `scale` (at least one).
pub fn pages_at_scale(scale: f64) -> usize {
    ((FULL_SCALE_BYTES * scale) as usize / PAGE_SIZE).max(1)
}

/// Builds a whole database file of `n_pages` pages in memory.
pub fn generate(n_pages: usize, seed: u64) -> Vec<u8> {
    let mut writer = PageWriter::new(seed);
    let mut buf = vec![0u8; n_pages * PAGE_SIZE];
    for (page_no, page) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
        writer.fill(page, page_no);
    }
    buf
}

/// One page's new content after an update.
pub struct PageRewrite {
    pub page_no: usize,
    pub bytes: Vec<u8>,
}

/// Picks `fraction` of the file's pages uniformly at random (scattered, as
/// OLTP updates are) and returns their rewritten content, sorted by page.
/// `seed` must differ from the generation seed so that new rows differ.
pub fn scattered_rewrites(n_pages: usize, fraction: f64, seed: u64) -> Vec<PageRewrite> {
    let mut picker = StdRng::seed_from_u64(seed);
    let wanted = ((n_pages as f64 * fraction).round() as usize).clamp(1, n_pages);
    let mut pages = rand::seq::index::sample(&mut picker, n_pages, wanted).into_vec();
    pages.sort_unstable();

    // A later LSN epoch, as if these pages were written by newer transactions.
    let mut writer = PageWriter::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    writer.lsn += 1 << 40;
    pages
        .into_iter()
        .map(|page_no| {
            let mut bytes = vec![0u8; PAGE_SIZE];
            writer.fill(&mut bytes, page_no);
            PageRewrite { page_no, bytes }
        })
        .collect()
}

/// Stateful page formatter: owns the RNG, the WAL position and a reusable
/// row buffer so that generating a GiB does not allocate per row.
struct PageWriter {
    rng: StdRng,
    lsn: u64,
    xid: u32,
    row: Vec<u8>,
}

impl PageWriter {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            lsn: 0x0000_0001_6a00_0000,
            xid: 7_300_000,
            row: Vec::with_capacity(640),
        }
    }

    /// Overwrites `page` with a freshly formatted heap page.
    fn fill(&mut self, page: &mut [u8], page_no: usize) {
        debug_assert_eq!(page.len(), PAGE_SIZE);
        page.fill(0);
        // Real tables are not packed full: fillfactor, deleted rows, and
        // page splits leave free space, which is what makes pages compress.
        let fill_target = PAGE_SIZE * self.rng.gen_range(75..=98) / 100;
        let mut lower = HEADER_LEN;
        let mut upper = PAGE_SIZE;
        let mut slot = 0u16;
        loop {
            self.format_row(page_no, slot);
            let tuple_len = TUPLE_HEADER_LEN + self.row.len();
            let start = (upper - tuple_len) & !(TUPLE_ALIGN - 1);
            let used_after = lower + LINE_POINTER_LEN + (PAGE_SIZE - start);
            if start < lower + LINE_POINTER_LEN || used_after > fill_target {
                break;
            }
            self.write_tuple(&mut page[start..start + tuple_len], page_no, slot);
            let pointer = (start as u32) | (1 << 15) | ((tuple_len as u32) << 17);
            page[lower..lower + LINE_POINTER_LEN].copy_from_slice(&pointer.to_le_bytes());
            lower += LINE_POINTER_LEN;
            upper = start;
            slot += 1;
        }
        self.write_header(page, lower, upper);
    }

    fn write_header(&mut self, page: &mut [u8], lower: usize, upper: usize) {
        self.lsn += self.rng.gen_range(1..=4096);
        page[0..8].copy_from_slice(&self.lsn.to_le_bytes());
        // Checksum (bytes 8..10) is filled in last, over the finished page.
        page[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
        page[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
        page[16..18].copy_from_slice(&(PAGE_SIZE as u16).to_le_bytes());
        page[18..20].copy_from_slice(&((PAGE_SIZE as u16) | 4).to_le_bytes());
        page[20..24].copy_from_slice(&self.xid.to_le_bytes());
        let checksum = fnv1a16(page);
        page[8..10].copy_from_slice(&checksum.to_le_bytes());
    }

    fn write_tuple(&mut self, dst: &mut [u8], page_no: usize, slot: u16) {
        self.xid += self.rng.gen_range(0..3);
        dst[0..4].copy_from_slice(&self.xid.to_le_bytes()); // xmin
        // xmax and cid (4..12) stay zero: live, committed rows.
        dst[12..16].copy_from_slice(&(page_no as u32).to_le_bytes()); // ctid block
        dst[16..18].copy_from_slice(&slot.to_le_bytes()); // ctid offset
        dst[18..20].copy_from_slice(&8u16.to_le_bytes()); // number of attributes
        dst[20..22].copy_from_slice(&0x0902u16.to_le_bytes()); // infomask
        dst[22] = TUPLE_HEADER_LEN as u8; // header length
        dst[TUPLE_HEADER_LEN..].copy_from_slice(&self.row);
    }

    /// An "orders" row: the field names repeat in every row (compressible),
    /// the values are random (not compressible beyond their alphabet).
    fn format_row(&mut self, page_no: usize, slot: u16) {
        let rng = &mut self.rng;
        self.row.clear();
        let order_id = page_no as u64 * 64 + u64::from(slot);
        let first = pick(rng, FIRST_NAMES);
        let last = pick(rng, LAST_NAMES);
        // Writing into a Vec cannot fail; the Result is io::Write's signature.
        let _ = write!(
            self.row,
            "{{\"order_id\":{order_id},\"customer\":\"cust_{:06x}\",\
             \"email\":\"{first}.{last}{}@{}\",\"status\":\"{}\",\
             \"amount\":{}.{:02},\"currency\":\"{}\",\
             \"created_at\":\"2024-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\
             \"session\":\"{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}\",\
             \"client_ip\":\"10.{}.{}.{}\",\"tracking\":\"{}\",\
             \"content_sha256\":\"{:016x}{:016x}{:016x}{:016x}\",\"note\":\"",
            rng.gen_range(0..0x100_0000u32),
            rng.gen_range(1..100u32),
            pick(rng, DOMAINS),
            pick(rng, STATUSES),
            rng.gen_range(1..5000u32),
            rng.gen_range(0..100u32),
            pick(rng, CURRENCIES),
            rng.gen_range(1..=12u32),
            rng.gen_range(1..=28u32),
            rng.gen_range(0..24u32),
            rng.gen_range(0..60u32),
            rng.gen_range(0..60u32),
            rng.r#gen::<u32>(),
            rng.r#gen::<u16>(),
            rng.gen_range(0..0x1000u16),
            rng.r#gen::<u16>(),
            rng.gen_range(0..1u64 << 48),
            rng.r#gen::<u8>(),
            rng.r#gen::<u8>(),
            rng.r#gen::<u8>(),
            Tracking(rng.r#gen::<u64>()),
            rng.r#gen::<u64>(),
            rng.r#gen::<u64>(),
            rng.r#gen::<u64>(),
            rng.r#gen::<u64>(),
        );
        for i in 0..rng.gen_range(0..12) {
            if i > 0 {
                self.row.push(b' ');
            }
            self.row.extend_from_slice(pick(rng, WORDS).as_bytes());
        }
        self.row.extend_from_slice(b"\"}");
        // A binary column (bytea: 4-byte varlena header + an encrypted
        // payment token). Without some truly random bytes per row the file
        // compresses 4x+, better than real tables do.
        let token_len = 64u32;
        self.row.extend_from_slice(&(token_len << 2).to_le_bytes());
        let start = self.row.len();
        self.row.resize(start + token_len as usize, 0);
        rng.fill(&mut self.row[start..]);
    }
}

/// A carrier tracking code: 12 base-32 characters drawn from a random u64.
struct Tracking(u64);

impl std::fmt::Display for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut v = self.0;
        for _ in 0..12 {
            f.write_char(char::from(ALPHABET[(v & 31) as usize]))?;
            v >>= 5;
        }
        Ok(())
    }
}

/// A random element of a word list (shared with the small-file generator).
pub fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

/// A 16-bit FNV-1a fold: cheap, and like a real page checksum it makes two
/// header bytes change whenever anything on the page changes.
fn fnv1a16(bytes: &[u8]) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (hash ^ (hash >> 16)) as u16
}

//! The raw fanotify reader in FID mode (docs/design.md, Watcher). `nix::sys::fanotify` drops the info
//! records that carry directory handles and names, so this module talks to the kernel with
//! `libc` directly. All of the watcher's `unsafe` lives here: four syscalls
//! (`fanotify_init`, `fanotify_mark`, `open_by_handle_at`, `read`), each wrapped in a
//! function that owns its buffers. The record parser works on plain byte slices, trusts
//! nothing in them, and is unit-tested on hand-made bytes.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// Values from <linux/fanotify.h>; spelled out here because not every libc release carries
// the newer ones (FAN_RENAME, FAN_REPORT_*), and the kernel ABI never changes them.
pub const FAN_MODIFY: u64 = 0x0000_0002;
pub const FAN_ATTRIB: u64 = 0x0000_0004;
pub const FAN_CLOSE_WRITE: u64 = 0x0000_0008;
pub const FAN_MOVED_FROM: u64 = 0x0000_0040;
pub const FAN_MOVED_TO: u64 = 0x0000_0080;
pub const FAN_CREATE: u64 = 0x0000_0100;
pub const FAN_DELETE: u64 = 0x0000_0200;
pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
pub const FAN_RENAME: u64 = 0x1000_0000;
pub const FAN_ONDIR: u64 = 0x4000_0000;

const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_CLASS_NOTIF: u32 = 0x0;
const FAN_REPORT_FID: u32 = 0x200;
const FAN_REPORT_DIR_FID: u32 = 0x400;
const FAN_REPORT_NAME: u32 = 0x800;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_FILESYSTEM: u32 = 0x100;

const FANOTIFY_METADATA_VERSION: u8 = 3;
/// `struct fanotify_event_metadata`: event_len u32, vers u8, reserved u8, metadata_len u16,
/// mask u64, fd i32, pid i32.
const METADATA_LEN: usize = 24;

const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
const INFO_OLD_DFID_NAME: u8 = 10;
const INFO_NEW_DFID_NAME: u8 = 12;

/// Largest `f_handle` the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE_BYTES: usize = 128;

/// Every change to volume data the watcher asks for. Directory events too (FAN_ONDIR),
/// so `mkdir`, `rmdir` and `chmod` of a directory are seen. FAN_RENAME reports a move as
/// one event with both names (MOVED_FROM/TO are the fallback on older kernels).
pub const WATCH_MASK: u64 =
    FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_ONDIR;

/// A filesystem object as the kernel names it: filesystem id plus an opaque handle.
/// Used as a cache key, and turned back into a path with [`Fanotify::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    pub fsid: [i32; 2],
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// A directory handle plus the entry name the event is about (`None` when the event
/// is on the directory itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub dir: FileId,
    pub name: Option<Vec<u8>>,
}

/// One parsed event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub mask: u64,
    pub pid: i32,
    /// The entry the event is about (DFID_NAME; for FAN_RENAME the new name).
    pub entry: Option<DirEntry>,
    /// FAN_RENAME only: where the entry was before.
    pub old_entry: Option<DirEntry>,
    /// The object itself (FID record), when reported.
    pub object: Option<FileId>,
}

/// Why a buffer of event records was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("event record at byte {at}: {what}")]
    Bad { at: usize, what: &'static str },
}

fn bad(at: usize, what: &'static str) -> ParseError {
    ParseError::Bad { at, what }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses every record in `buf` (what one `read` returned). A malformed record ends the
/// parse with an error: lengths are checked before every access, so garbage can neither
/// panic nor make the parser read past the buffer.
pub fn parse_events(buf: &[u8]) -> Result<Vec<RawEvent>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rec = &buf[at..];
        let event_len = u32_at(rec, 0).ok_or_else(|| bad(at, "truncated header"))? as usize;
        let vers = *rec.get(4).ok_or_else(|| bad(at, "truncated header"))?;
        let meta_len = u16_at(rec, 6).ok_or_else(|| bad(at, "truncated header"))? as usize;
        if vers != FANOTIFY_METADATA_VERSION {
            return Err(bad(at, "unknown metadata version"));
        }
        if meta_len < METADATA_LEN || event_len < meta_len || event_len > rec.len() {
            return Err(bad(at, "inconsistent lengths"));
        }
        let mask = u64_at(rec, 8).ok_or_else(|| bad(at, "truncated header"))?;
        let pid = i32_at(rec, 20).ok_or_else(|| bad(at, "truncated header"))?;
        let mut ev = RawEvent {
            mask,
            pid,
            entry: None,
            old_entry: None,
            object: None,
        };
        let mut info_at = meta_len;
        while info_at < event_len {
            let info = &rec[info_at..event_len];
            let itype = info[0];
            let ilen =
                u16_at(info, 2).ok_or_else(|| bad(at + info_at, "truncated info header"))? as usize;
            if ilen < 4 || ilen > info.len() {
                return Err(bad(at + info_at, "info record length out of range"));
            }
            let body = &info[4..ilen];
            match itype {
                INFO_FID | INFO_DFID | INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME => {
                    let (fid, rest) = parse_fid(body)
                        .ok_or_else(|| bad(at + info_at, "malformed file handle"))?;
                    let name = if matches!(
                        itype,
                        INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
                    ) {
                        let end = rest
                            .iter()
                            .position(|&b| b == 0)
                            .ok_or_else(|| bad(at + info_at, "name without terminator"))?;
                        let n = &rest[..end];
                        (!n.is_empty() && n != b".").then(|| n.to_vec())
                    } else {
                        None
                    };
                    match itype {
                        INFO_FID => ev.object = Some(fid),
                        INFO_OLD_DFID_NAME => ev.old_entry = Some(DirEntry { dir: fid, name }),
                        _ => ev.entry = Some(DirEntry { dir: fid, name }),
                    }
                }
                // PIDFD, ERROR, RANGE, MNT and future records: skipped by length.
                _ => {}
            }
            info_at += ilen;
        }
        out.push(ev);
        at += event_len;
    }
    Ok(out)
}

/// `fsid (2 x i32), handle_bytes u32, handle_type i32, f_handle[handle_bytes]`; returns the
/// id and what follows the handle (the name, for DFID_NAME records).
fn parse_fid(body: &[u8]) -> Option<(FileId, &[u8])> {
    let fsid = [i32_at(body, 0)?, i32_at(body, 4)?];
    let hbytes = u32_at(body, 8)? as usize;
    let htype = i32_at(body, 12)?;
    if hbytes > MAX_HANDLE_BYTES {
        return None;
    }
    let handle = body.get(16..16 + hbytes)?.to_vec();
    Some((
        FileId {
            fsid,
            handle_type: htype,
            handle,
        },
        &body[16 + hbytes..],
    ))
}

/// An fanotify group in FID mode with directory handles and names.
pub struct Fanotify {
    fd: OwnedFd,
}

/// What the kernel can give: close-write is requested only where it is accepted together
/// with FID reporting (it is on 5.9+ kernels; kept optional so an older kernel still gets
/// modify events).
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    pub close_write: bool,
    pub rename: bool,
}

fn last_os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM)` of the filesystem holding `path`.
fn mark_filesystem(fd: &OwnedFd, path: &Path, mask: u64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: fd is an fanotify group we own, c is a NUL-terminated path that outlives
    // the call.
    let r = unsafe {
        libc::fanotify_mark(
            fd.as_raw_fd(),
            FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 { Err(last_os_error()) } else { Ok(()) }
}

impl Fanotify {
    /// `fanotify_init` in FID + DFID + NAME mode, non-blocking (the caller polls, so it can
    /// notice its stop flag). EINVAL here means a kernel older than 5.9; EPERM means not root.
    pub fn new() -> std::io::Result<Fanotify> {
        let flags = FAN_CLASS_NOTIF
            | FAN_CLOEXEC
            | FAN_NONBLOCK
            | FAN_REPORT_FID
            | FAN_REPORT_DIR_FID
            | FAN_REPORT_NAME;
        let oflags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
        // SAFETY: plain syscall with integer arguments; the result is a new fd or -1.
        let fd = unsafe { libc::fanotify_init(flags, oflags) };
        if fd < 0 {
            return Err(last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        Ok(Fanotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn mark(&self, path: &Path, mask: u64) -> std::io::Result<()> {
        mark_filesystem(&self.fd, path, mask)
    }

    /// Marks the whole filesystem holding `path` (a mount mark would miss writes made
    /// through a container's own bind of the volume). Tries the full mask first and drops
    /// what the kernel refuses, reporting what is watched.
    pub fn mark_filesystem(&self, path: &Path) -> std::io::Result<Capabilities> {
        match self.mark(path, WATCH_MASK) {
            Ok(()) => Ok(Capabilities {
                close_write: true,
                rename: true,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Kernels before 5.17 know no FAN_RENAME; MOVED_FROM/TO still name both ends.
                let without_rename = (WATCH_MASK & !FAN_RENAME) | FAN_MOVED_FROM | FAN_MOVED_TO;
                match self.mark(path, without_rename) {
                    Ok(()) => Ok(Capabilities {
                        close_write: true,
                        rename: false,
                    }),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.mark(path, without_rename & !FAN_CLOSE_WRITE)?;
                        Ok(Capabilities {
                            close_write: false,
                            rename: false,
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits up to `timeout_ms` for events and reads what is queued into `buf`. Returns the
    /// number of bytes read (0 on timeout).
    pub fn read(&self, buf: &mut [u8], timeout_ms: i32) -> std::io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 {
            let e = last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(0);
        }
        // SAFETY: buf is valid writable memory of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }
}

/// `fstatfs` f_fsid of an open file: what the kernel puts in FID records for that
/// filesystem, so records can be matched with the mount fd to resolve them against.
pub fn fsid_of(fd: &OwnedFd) -> std::io::Result<[i32; 2]> {
    let st = nix::sys::statfs::fstatfs(fd).map_err(std::io::Error::from)?;
    let id = st.filesystem_id();
    // SAFETY: fsid_t is two i32 (`__val`), plain data with no invalid bit patterns.
    let raw: [i32; 2] = unsafe { std::mem::transmute(id) };
    Ok(raw)
}

/// Turns a handle back into the current path of the object, through `mount_fd` (any open
/// directory of that filesystem): `open_by_handle_at` with O_PATH, then the link in
/// /proc/self/fd. Fails with ESTALE once the object is gone; a deleted directory that is
/// still open resolves to a path ending in " (deleted)", which callers treat as gone.
pub fn resolve(mount_fd: &OwnedFd, id: &FileId) -> std::io::Result<PathBuf> {
    if id.handle.len() > MAX_HANDLE_BYTES {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }, built in a
    // u32 array so it is aligned for the kernel's reads.
    let mut words = [0u32; 2 + MAX_HANDLE_BYTES / 4];
    words[0] = id.handle.len() as u32;
    words[1] = id.handle_type as u32;
    let bytes: &mut [u8] = bytemuck_words(&mut words[2..]);
    bytes[..id.handle.len()].copy_from_slice(&id.handle);
    // SAFETY: words outlives the call and holds a complete file_handle of the stated size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            words.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    std::fs::read_link(format!("/proc/self/fd/{}", owned.as_raw_fd()))
}

fn bytemuck_words(w: &mut [u32]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers exactly the
    // same memory as the u32 slice.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), w.len() * 4) }
}

// ---------------------------------------------------------------------------
// Exec tracking: a second fanotify group, in fd mode (FID mode cannot carry the file), with
// FAN_OPEN_EXEC on the filesystems programs live on. The kernel holds the executable's file
// in each queued event, so its path can be read even after the process has exited and been
// reaped: the one detail /proc cannot give for a process that is gone.
// ---------------------------------------------------------------------------

const FAN_OPEN_EXEC: u64 = 0x0000_1000;

/// Every `(pid, executable path)` exec in a buffer of fd-mode records, closing each fd.
/// Stops at the first malformed record (the kernel never writes one).
fn take_exec_events(buf: &[u8]) -> Vec<(i32, PathBuf)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + METADATA_LEN <= buf.len() {
        let rec = &buf[at..];
        let (Some(len), Some(mask), Some(fd), Some(pid)) = (
            u32_at(rec, 0),
            u64_at(rec, 8),
            i32_at(rec, 16),
            i32_at(rec, 20),
        ) else {
            break;
        };
        let len = len as usize;
        if len < METADATA_LEN || len > rec.len() {
            break;
        }
        if fd >= 0 {
            // SAFETY: the kernel created this fd for us in this record; nobody else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if mask & FAN_OPEN_EXEC != 0
                && let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", owned.as_raw_fd()))
            {
                out.push((pid, p));
            }
        }
        at += len;
    }
    out
}

pub struct ExecWatch {
    fd: OwnedFd,
}

impl ExecWatch {
    pub fn new() -> std::io::Result<ExecWatch> {
        let oflags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
        // SAFETY: plain syscall with integer arguments.
        let fd =
            unsafe { libc::fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, oflags) };
        if fd < 0 {
            return Err(last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        Ok(ExecWatch {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn mark_filesystem(&self, path: &Path) -> std::io::Result<()> {
        mark_filesystem(&self.fd, path, FAN_OPEN_EXEC)
    }

    /// Everything queued now (never blocks).
    pub fn drain(&self, buf: &mut [u8]) -> Vec<(i32, PathBuf)> {
        let mut out = Vec::new();
        loop {
            // SAFETY: buf is valid writable memory of buf.len() bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend(take_exec_events(&buf[..n as usize]));
        }
    }
}

// ---------------------------------------------------------------------------
// The kernel's process connector (netlink, CONFIG_PROC_EVENTS): fork, exec and exit of
// every process, announced as they happen. The watcher uses it to capture who a process
// is while it still exists, so a writer that has exited by the time its fanotify event
// is read is still named. It lives here because it is the watcher's other raw syscall
// interface (nix has no connector support).
// ---------------------------------------------------------------------------

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// One process event, for whole processes only (thread events are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    Fork { parent: i32, child: i32 },
    Exec { pid: i32 },
    Comm { pid: i32 },
    Exit { pid: i32 },
}

/// Parses one netlink datagram from the process connector; anything malformed or
/// uninteresting yields nothing.
pub fn parse_proc_events(buf: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let Some(len) = u32_at(buf, at).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDR || at + len > buf.len() {
            break;
        }
        let msg = &buf[at..at + len];
        let ev = NLMSG_HDR + CN_MSG_HDR;
        let field = |off: usize| i32_at(msg, ev + off);
        if u32_at(msg, NLMSG_HDR) == Some(CN_IDX_PROC)
            && let Some(what) = u32_at(msg, ev)
        {
            let parsed = match what {
                PROC_EVENT_FORK => match (field(20), field(24), field(28)) {
                    (Some(parent), Some(pid), Some(tgid)) if pid == tgid => {
                        Some(ProcEvent::Fork { parent, child: pid })
                    }
                    _ => None,
                },
                PROC_EVENT_EXEC | PROC_EVENT_COMM | PROC_EVENT_EXIT => {
                    match (field(16), field(20)) {
                        (Some(pid), Some(tgid)) if pid == tgid => Some(match what {
                            PROC_EVENT_EXEC => ProcEvent::Exec { pid },
                            PROC_EVENT_COMM => ProcEvent::Comm { pid },
                            _ => ProcEvent::Exit { pid },
                        }),
                        _ => None,
                    }
                }
                _ => None,
            };
            out.extend(parsed);
        }
        // Netlink messages are 4-byte aligned.
        at += len.div_ceil(4) * 4;
    }
    out
}

pub struct ProcConnector {
    fd: OwnedFd,
}

impl ProcConnector {
    /// Subscribes to process events; needs CAP_NET_ADMIN (root). `recv` waits at most
    /// `timeout`, so the caller can notice its stop flag.
    pub fn new(timeout: std::time::Duration) -> std::io::Result<ProcConnector> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // A larger receive buffer rides out bursts of forks.
        let size: libc::c_int = 4 * 1024 * 1024;
        // SAFETY: size is a valid c_int of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + 4);
        let total = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: msg is valid for msg.len() bytes.
        let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(last_os_error());
        }
        Ok(ProcConnector { fd })
    }

    /// Next datagram's events; empty on timeout. ENOBUFS (events dropped by the kernel
    /// because this reader fell behind) is returned as an error for the caller to count.
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<Vec<ProcEvent>> {
        // SAFETY: buf is valid writable memory of buf.len() bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        Ok(parse_proc_events(&buf[..n as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fid_body(handle: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7i32.to_ne_bytes());
        b.extend_from_slice(&9i32.to_ne_bytes());
        b.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        b.extend_from_slice(&1i32.to_ne_bytes());
        b.extend_from_slice(handle);
        if let Some(n) = name {
            b.extend_from_slice(n);
            b.push(0);
        }
        b
    }

    fn info(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut len = 4 + body.len();
        len = len.div_ceil(4) * 4;
        let mut v = vec![kind, 0];
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(body);
        v.resize(len, 0);
        v
    }

    fn record(mask: u64, pid: i32, infos: &[Vec<u8>]) -> Vec<u8> {
        let total = METADATA_LEN + infos.iter().map(Vec::len).sum::<usize>();
        let mut v = Vec::new();
        v.extend_from_slice(&(total as u32).to_ne_bytes());
        v.push(FANOTIFY_METADATA_VERSION);
        v.push(0);
        v.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&(-1i32).to_ne_bytes());
        v.extend_from_slice(&pid.to_ne_bytes());
        for i in infos {
            v.extend_from_slice(i);
        }
        v
    }

    #[test]
    fn parses_create_and_rename_records() {
        let mut buf = record(
            FAN_CREATE,
            42,
            &[
                info(
                    INFO_DFID_NAME,
                    &fid_body(&[1, 2, 3, 4, 5, 6, 7, 8], Some(b"f.txt")),
                ),
                info(INFO_FID, &fid_body(&[9; 8], None)),
            ],
        );
        buf.extend(record(
            FAN_RENAME,
            43,
            &[
                info(INFO_OLD_DFID_NAME, &fid_body(&[1; 8], Some(b"a"))),
                info(INFO_NEW_DFID_NAME, &fid_body(&[2; 8], Some(b"b"))),
            ],
        ));
        buf.extend(record(FAN_Q_OVERFLOW, 0, &[]));
        let ev = parse_events(&buf).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].pid, 42);
        let e = ev[0].entry.as_ref().unwrap();
        assert_eq!(e.name.as_deref(), Some(&b"f.txt"[..]));
        assert_eq!(e.dir.fsid, [7, 9]);
        assert_eq!(e.dir.handle, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(ev[0].object.as_ref().unwrap().handle, vec![9; 8]);
        assert_eq!(
            ev[1].old_entry.as_ref().unwrap().name.as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(
            ev[1].entry.as_ref().unwrap().name.as_deref(),
            Some(&b"b"[..])
        );
        assert_eq!(ev[2].mask, FAN_Q_OVERFLOW);
        assert!(ev[2].entry.is_none());
    }

    #[test]
    fn dot_name_means_the_directory_itself() {
        let buf = record(
            FAN_ATTRIB | FAN_ONDIR,
            1,
            &[info(INFO_DFID_NAME, &fid_body(&[1; 8], Some(b".")))],
        );
        let ev = parse_events(&buf).unwrap();
        assert_eq!(ev[0].entry.as_ref().unwrap().name, None);
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let good = record(
            FAN_MODIFY,
            5,
            &[info(INFO_DFID_NAME, &fid_body(&[1; 8], Some(b"x")))],
        );
        // Every truncation and every single-byte corruption either parses or is refused.
        for cut in 0..good.len() {
            let _ = parse_events(&good[..cut]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse_events(&b);
            }
        }
        // Specific refusals.
        assert!(parse_events(&[1, 2, 3]).is_err());
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse_events(&huge).is_err());
        let mut vers = good.clone();
        vers[4] = 2;
        assert!(parse_events(&vers).is_err());
        // A handle claiming more bytes than MAX_HANDLE_SZ.
        let mut body = fid_body(&[1; 8], Some(b"x"));
        body[8..12].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(parse_events(&record(FAN_MODIFY, 5, &[info(INFO_DFID_NAME, &body)])).is_err());
        // A name without its NUL.
        let mut body = fid_body(&[1; 8], None);
        body.extend_from_slice(b"abc");
        let mut rec = record(FAN_MODIFY, 5, &[]);
        let mut inf = vec![INFO_DFID_NAME, 0];
        inf.extend_from_slice(&((4 + body.len()) as u16).to_ne_bytes());
        inf.extend_from_slice(&body);
        let total = (rec.len() + inf.len()) as u32;
        rec[0..4].copy_from_slice(&total.to_ne_bytes());
        rec.extend(inf);
        assert!(parse_events(&rec).is_err());
        // Random bytes.
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut b = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = parse_events(&b);
        }
    }

    #[test]
    fn proc_connector_datagrams_parse_and_garbage_is_ignored() {
        fn dgram(what: u32, fields: &[i32]) -> Vec<u8> {
            let mut ev = Vec::new();
            ev.extend_from_slice(&what.to_ne_bytes());
            ev.extend_from_slice(&0u32.to_ne_bytes());
            ev.extend_from_slice(&0u64.to_ne_bytes());
            for f in fields {
                ev.extend_from_slice(&f.to_ne_bytes());
            }
            let mut m = Vec::new();
            let total = (NLMSG_HDR + CN_MSG_HDR + ev.len()) as u32;
            m.extend_from_slice(&total.to_ne_bytes());
            m.extend_from_slice(&[0; 12]);
            m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
            m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
            m.extend_from_slice(&[0; 8]);
            m.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
            m.extend_from_slice(&[0; 2]);
            m.extend(ev);
            m
        }
        assert_eq!(
            parse_proc_events(&dgram(PROC_EVENT_FORK, &[10, 10, 11, 11])),
            vec![ProcEvent::Fork {
                parent: 10,
                child: 11
            }]
        );
        // A new thread (pid != tgid) is not a process.
        assert!(parse_proc_events(&dgram(PROC_EVENT_FORK, &[10, 10, 12, 11])).is_empty());
        assert_eq!(
            parse_proc_events(&dgram(PROC_EVENT_EXEC, &[7, 7])),
            vec![ProcEvent::Exec { pid: 7 }]
        );
        assert_eq!(
            parse_proc_events(&dgram(PROC_EVENT_EXIT, &[7, 7, 0, 17, 1, 1])),
            vec![ProcEvent::Exit { pid: 7 }]
        );
        let good = dgram(PROC_EVENT_EXEC, &[7, 7]);
        for cut in 0..good.len() {
            let _ = parse_proc_events(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_proc_events(&huge).is_empty());
    }
}

//! The operations on a repository, each taking library option types and returning a
//! report for the front end to render: backup, restore, browse (ls, find, dump), check,
//! forget, prune, repair, drill, import, diff, mount and the bucket reports.

pub mod backup;
pub mod browse;
pub mod bucket;
pub mod check;
pub mod diff;
pub mod drill;
pub mod forget;
pub mod import;
pub mod mount;
pub mod prune;
pub mod repair;
pub mod restore;

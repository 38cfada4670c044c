//! `volguard generate man|completions`: the man pages and shell completion scripts, made
//! from the clap definitions in cli/ so they can never describe another CLI than the one
//! shipped. The package build (packaging/build-deb.sh) runs it; nothing generated is
//! committed.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Subcommand};

use crate::cli::Cli;
use crate::error::{Error, Result, exit};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: GenerateWhat,
}

#[derive(Debug, Subcommand)]
pub enum GenerateWhat {
    /// Man pages: volguard.1 and one volguard-COMMAND.1 per command.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The completion script of one shell, named as that shell looks for it.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Writes what `a` asks for and prints each file written, one per line.
pub fn run(a: &GenerateArgs) -> Result<i32> {
    let written = match &a.what {
        GenerateWhat::Man { out } => man_pages(out)?,
        GenerateWhat::Completions { shell, out } => vec![completions(*shell, out)?],
    };
    for p in written {
        crate::outln!("{}", p.display());
    }
    Ok(exit::OK)
}

/// volguard.1 plus volguard-COMMAND.1 for every visible command (hidden ones such as
/// `generate` itself are internal and get none).
pub fn man_pages(out: &Path) -> Result<Vec<PathBuf>> {
    create_dir(out)?;
    clap_mangen::generate_to(Cli::command(), out)
        .map_err(|e| Error::io("cannot write man pages into", out, e))?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| Error::io("cannot list", out, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    written.sort();
    Ok(written)
}

/// The completion script for `shell`, under the file name that shell loads it by
/// (`volguard.bash`, `_volguard`, `volguard.fish`, ...).
pub fn completions(shell: clap_complete::Shell, out: &Path) -> Result<PathBuf> {
    create_dir(out)?;
    let mut cmd = Cli::command();
    clap_complete::generate_to(shell, &mut cmd, "volguard", out)
        .map_err(|e| Error::io("cannot write a completion script into", out, e))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command_and_hide_generate() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"volguard.1".to_string()), "{names:?}");
        for sub in Cli::command().get_subcommands() {
            let page = format!("volguard-{}.1", sub.get_name());
            assert_eq!(
                names.contains(&page),
                !sub.is_hide_set(),
                "{page}: {names:?}"
            );
        }
        let main = std::fs::read_to_string(dir.path().join("volguard.1")).unwrap();
        assert!(main.contains(".TH volguard 1"), "{main}");
        assert!(main.contains("backup"), "{main}");
    }

    #[test]
    fn completions_use_each_shells_file_name() {
        let dir = tempfile::tempdir().unwrap();
        for (shell, name) in [
            (clap_complete::Shell::Bash, "volguard.bash"),
            (clap_complete::Shell::Zsh, "_volguard"),
            (clap_complete::Shell::Fish, "volguard.fish"),
        ] {
            let p = completions(shell, dir.path()).unwrap();
            assert_eq!(p, dir.path().join(name));
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.contains("restore"), "{name} lacks the restore command");
        }
    }
}

//! Man pages and shell completions, generated from the clap definitions so
//! they never drift from `--help` (`clap_mangen`, `clap_complete`). The Debian
//! package installs them; see README's Packaging.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// Writes `man/*.1` and `completions/*` under `out`; returns the files written.
pub fn generate(out: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push((
            format!("{name}-{}", sub.get_name()),
            sub.clone().name(format!("{name}-{}", sub.get_name())),
        ));
    }
    for (page, command) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(command).render(&mut buf)?;
        let path = man.join(format!("{page}.1"));
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut cmd = Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
        written.push(path);
    }
    Ok(written)
}

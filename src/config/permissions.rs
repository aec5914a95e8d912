//! Who can read the configuration file and the files holding secrets:
//! warnings, never errors. Secrets should be readable by their owner only;
//! the configuration file must be readable by the service's dynamic user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::check::Checker;

/// A warning when a file that holds secrets can be read by every user; `what`
/// says which secret and what to do.
pub(super) fn warn_if_world_readable(path: &Path, what: &str, warnings: &mut Vec<String>) {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        warnings.push(format!(
            "{} is readable by every user (mode {:o}): {what}",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
}

/// The file itself is no secret (secrets travel by LoadCredential=, and the
/// service's dynamic user must read it), unless it holds one inline: then a
/// warning when every user can read it.
pub(super) fn warn_if_inline_secrets(path: &Path, ck: &mut Checker<'_>) {
    let Some(first) = ck.inline_secrets.first() else {
        return;
    };
    let what = format!(
        "the configuration file holds {} inline: move it to {first}_file, a file handed over with LoadCredential=",
        ck.inline_secrets.join(" and "),
    );
    warn_if_world_readable(path, &what, &mut ck.warnings);
}

/// Warnings when the service could not read the configuration file at `path`:
/// under systemd it runs as a dynamic user (`DynamicUser=`), which owns no
/// file, so the file must be readable by "other" and every directory above
/// it searchable by "other". Secrets are not concerned: systemd hands them
/// over with `LoadCredential=`.
pub fn service_readability(path: &Path) -> Vec<String> {
    let Ok(path) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777);
    let mut warnings = Vec::new();
    if let Ok(m) = mode(&path)
        && m & 0o004 == 0
    {
        warnings.push(format!(
            "{} is not readable by other users (mode {m:o}): the service's dynamic user (DynamicUser=) cannot read it; chmod o+r it (secrets belong in LoadCredential= files, not in it)",
            path.display()
        ));
    }
    for dir in path.ancestors().skip(1) {
        if let Ok(m) = mode(dir)
            && m & 0o001 == 0
        {
            warnings.push(format!(
                "{} is not searchable by other users (mode {m:o}): the service's dynamic user (DynamicUser=) cannot reach {} through it; chmod o+x it",
                dir.display(),
                path.display()
            ));
        }
    }
    warnings
}

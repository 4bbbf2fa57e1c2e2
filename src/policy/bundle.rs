//! A bundle's files: every `.rego` file under a folder (or uploaded), in a stable order, and
//! the version (`sha256:` digest) that names exactly that content.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::PolicyError;

/// One `.rego` file of the bundle: its '/'-separated path relative to the bundle folder (the
/// name that goes into the version and into compiler messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyFile {
    pub relative: String,
    pub text: String,
}

/// Every `*.rego` file under `dir`, sorted by relative path. Entries whose name starts with '.'
/// are skipped: Kubernetes ConfigMap mounts keep a second copy of every file under hidden
/// `..data`/`..<timestamp>` folders, and loading both would define every rule twice. Symlinks
/// are followed (those same mounts are symlinks), with a guard against directory cycles.
pub fn collect_rego_files(dir: &Path) -> Result<Vec<PolicyFile>, PolicyError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Read { path, source }
    };

    let mut files = Vec::new();
    let mut visited = HashSet::new();
    // (folder on disk, its relative path components)
    let mut pending: Vec<(PathBuf, Vec<String>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((folder, prefix)) = pending.pop() {
        let canonical = folder.canonicalize().map_err(read_err(&folder))?;
        if !visited.insert(canonical) {
            continue;
        }
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&folder).map_err(read_err(&folder))? {
            let entry = entry.map_err(read_err(&folder))?;
            entries.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        // Which of two routes to one folder (a real path and a symlink) is walked first decides
        // the relative paths, and so the version: walk in name order, never in disk order.
        entries.sort();
        let mut subfolders = Vec::new();
        for (name, path) in entries {
            if name.starts_with('.') {
                continue;
            }
            let is_rego = name.ends_with(".rego");
            // metadata() follows symlinks, unlike DirEntry::file_type(). A dangling link is
            // only an error if it claims to be a policy.
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(_) if !is_rego => continue,
                Err(source) => return Err(PolicyError::Read { path, source }),
            };
            let mut components = prefix.clone();
            components.push(name);
            if meta.is_dir() {
                subfolders.push((path, components));
            } else if meta.is_file() && is_rego {
                let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
                let relative = components.join("/");
                check_text(&relative, &text).map_err(|message| PolicyError::Compile {
                    path: path.display().to_string(),
                    message,
                })?;
                files.push(PolicyFile { relative, text });
            }
        }
        pending.extend(subfolders.into_iter().rev());
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// Files a bundle may hold at most (what an upload is refused past).
pub const MAX_BUNDLE_FILES: usize = 200;

/// What an upload's paths must be: what the version is computed over and what messages name:
/// relative, '/'-separated, `.rego`, unique. `approvals policy test` checks the same, so that
/// a bundle it passes is not refused by `policy push`.
pub fn check_upload_paths<'a>(paths: impl ExactSizeIterator<Item = &'a str>) -> Result<(), String> {
    if paths.len() == 0 {
        return Err("files: a bundle needs at least one .rego file".into());
    }
    if paths.len() > MAX_BUNDLE_FILES {
        return Err(format!("files: at most {MAX_BUNDLE_FILES} per bundle"));
    }
    let mut seen = HashSet::new();
    for path in paths {
        let well_formed = path.ends_with(".rego")
            && path.len() <= 256
            && !path.starts_with('/')
            && path.split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && !part.starts_with('.')
            })
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
        if !well_formed {
            return Err(format!(
                "files: {path:?} is not a relative path of a .rego file \
                 (letters, digits, '_', '-', '.', '/'; no hidden or '..' parts)"
            ));
        }
        if !seen.insert(path) {
            return Err(format!("files: {path:?} appears twice"));
        }
    }
    Ok(())
}

/// What a file's text must not hold: control characters other than tab, line feed and
/// carriage return. regorus reads a NUL as the end of the file, silently dropping the rules
/// after it, and the version's NUL separators would no longer tell one file set from another
/// (`a.rego` holding `P\0b.rego\0D` hashed as `a.rego: P` and `b.rego: D`).
pub fn check_text(path: &str, text: &str) -> Result<(), String> {
    let control = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    match text
        .lines()
        .enumerate()
        .find_map(|(n, line)| Some((n, line.chars().find(|&c| control(c))?)))
    {
        None => Ok(()),
        Some((n, c)) => Err(format!(
            "files: {path:?} line {}: holds the control character U+{:04X}; a policy's text may \
             hold tab, line feed and carriage return only",
            n + 1,
            c as u32
        )),
    }
}

/// The NUL separators keep (path, content) boundaries unambiguous, so moving text from one
/// file into another, or renaming a file, always changes the version.
pub fn bundle_version(files: &[PolicyFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.relative.as_bytes());
        hasher.update([0u8]);
        hasher.update(file.text.as_bytes());
        hasher.update([0u8]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

//! Listing files (`GET /v1/files?action=list`): Go's `path.Match` patterns and the entries'
//! JSON.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{json, Value};

use super::{group_name, user_name, FileError};
use crate::pebble::error::ApiError;
use crate::pebble::{clean, host_path};

/// Go's `path.Match` on one name: `*`, `?`, `[...]` classes (`^` negates), `\` escapes.
fn glob(pattern: &[char], name: &[char]) -> Result<bool, ()> {
    match pattern.first() {
        None => Ok(name.is_empty()),
        Some('*') => {
            for i in 0..=name.len() {
                if glob(&pattern[1..], &name[i..])? {
                    return Ok(true);
                }
                if name.get(i) == Some(&'/') {
                    break;
                }
            }
            Ok(false)
        }
        Some('?') => match name.first() {
            Some(c) if *c != '/' => glob(&pattern[1..], &name[1..]),
            _ => Ok(false),
        },
        Some('[') => {
            let mut i = 1;
            let negate = matches!(pattern.get(1), Some('^'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let c = name.first().copied();
            let mut first = true;
            loop {
                match pattern.get(i) {
                    None => return Err(()),
                    Some(']') if !first => break,
                    _ => {}
                }
                first = false;
                let lo = if pattern[i] == '\\' {
                    i += 1;
                    *pattern.get(i).ok_or(())?
                } else {
                    pattern[i]
                };
                i += 1;
                let mut hi = lo;
                if pattern.get(i) == Some(&'-') && pattern.get(i + 1).is_some_and(|c| *c != ']') {
                    i += 1;
                    hi = if pattern[i] == '\\' {
                        i += 1;
                        *pattern.get(i).ok_or(())?
                    } else {
                        pattern[i]
                    };
                    i += 1;
                }
                if c.is_some_and(|c| lo <= c && c <= hi) {
                    matched = true;
                }
            }
            match c {
                Some(c) if c != '/' && matched != negate => glob(&pattern[i + 1..], &name[1..]),
                _ => {
                    // Go still reports a bad pattern further on.
                    glob(&pattern[i + 1..], &[]).map(|_| false)
                }
            }
        }
        Some('\\') => match (pattern.get(1), name.first()) {
            (None, _) => Err(()),
            (Some(p), Some(n)) if p == n => glob(&pattern[2..], &name[1..]),
            _ => Ok(false),
        },
        Some(p) => match name.first() {
            Some(n) if n == p => glob(&pattern[1..], &name[1..]),
            _ => Ok(false),
        },
    }
}

fn info(path: &str, meta: &fs::Metadata) -> Value {
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "named-pipe"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "unknown"
    };
    let modified = chrono::DateTime::from_timestamp(meta.mtime(), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let mut v = json!({
        "path": path, "name": name, "type": kind,
        "permissions": format!("{:03o}", meta.mode() & 0o777),
        "last-modified": modified,
        "user-id": meta.uid(), "user": user_name(meta.uid()),
        "group-id": meta.gid(), "group": group_name(meta.gid()),
    });
    if ft.is_file() {
        v["size"] = json!(meta.len());
    }
    v
}

/// `GET /v1/files?action=list&path=P[&pattern=G][&itself=true]`.
pub fn list_files(root: &Path, path: &str, pattern: &str, itself: bool) -> Result<Value, ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "path must be absolute, got {path:?}"
        )));
    }
    let fail = |e: FileError| ApiError {
        status: e.status(),
        message: e.message,
        kind: Some(e.kind),
    };
    let path = clean(path);
    let host = host_path(root, &path);
    let meta = fs::metadata(&host).map_err(|e| fail(FileError::os("stat", &path, &e)))?;
    let mut entries: Vec<(String, fs::Metadata)> = vec![];
    let dir;
    if !meta.is_dir() || itself {
        dir = Path::new(&path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let name = Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        entries.push((name, meta));
    } else {
        dir = path.clone();
        let rd = fs::read_dir(&host).map_err(|e| fail(FileError::os("open", &path, &e)))?;
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                entries.push((e.file_name().to_string_lossy().into_owned(), m));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let mut out = vec![];
    for (name, meta) in entries {
        if !pattern.is_empty() {
            let chars: Vec<char> = name.chars().collect();
            match glob(&pattern, &chars) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(()) => return Err(fail(FileError::generic("syntax error in pattern"))),
            }
        }
        let full = if name == "/" {
            "/".to_string()
        } else {
            clean(&format!("{dir}/{name}"))
        };
        out.push(info(&full, &meta));
    }
    Ok(json!(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> Result<bool, ()> {
        glob(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn globs_match_like_go() {
        assert_eq!(m("*.txt", "a.txt"), Ok(true));
        assert_eq!(m("*.txt", "a.log"), Ok(false));
        assert_eq!(m("a?c", "abc"), Ok(true));
        assert_eq!(m("[a-c]x", "bx"), Ok(true));
        assert_eq!(m("[^a-c]x", "bx"), Ok(false));
        assert_eq!(m("[a-c", "a"), Err(()));
    }
}

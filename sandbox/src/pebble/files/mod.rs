//! Pebble's files API over the container's directory: push (multipart `request` + `files`
//! parts, written atomically with their permissions), pull (a multipart answer with a
//! `response` part, as Pebble sends it), list, make-dirs and remove. Paths are the container's
//! (absolute, resolved against its root the way the container would, so `..` cannot leave
//! it), and errors name them the way Go's `os` errors do, with Pebble's error kinds.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

mod list;
mod multipart;

pub use list::list_files;
use multipart::quote;
pub use multipart::{media_type, parse_multipart};

use super::error::ApiError;
use super::{clean, errno_text, host_path};

/// Pebble's shortest accepted multipart boundary.
const MIN_BOUNDARY: usize = 32;

/// One file's outcome, as Pebble lists them: `{"path": ..., "error": {...}}`.
pub fn result(path: &str, err: Option<FileError>) -> Value {
    let mut v = json!({"path": path});
    if let Some(e) = err {
        v["error"] = json!({"message": e.message, "kind": e.kind});
    }
    v
}

#[derive(Debug, Clone)]
pub struct FileError {
    pub message: String,
    pub kind: &'static str,
}

impl FileError {
    fn generic(message: impl Into<String>) -> Self {
        FileError {
            message: message.into(),
            kind: "generic-file-error",
        }
    }
    /// Go's `*PathError`: `op path: reason`, with the kind from the error.
    fn os(op: &str, path: &str, e: &io::Error) -> Self {
        FileError {
            message: format!("{op} {path}: {}", errno_text(e)),
            kind: kind_of(e),
        }
    }
    fn status(&self) -> StatusCode {
        match self.kind {
            "not-found" => StatusCode::NOT_FOUND,
            "permission-denied" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

fn kind_of(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => "not-found",
        io::ErrorKind::PermissionDenied => "permission-denied",
        _ => "generic-file-error",
    }
}

fn absolute(path: &str) -> Result<(), FileError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(FileError::generic(format!(
            "paths must be absolute, got {path:?}"
        )))
    }
}

fn parse_permissions(p: &str, default: u32) -> Result<u32, FileError> {
    if p.is_empty() {
        return Ok(default);
    }
    match u32::from_str_radix(p, 8) {
        Ok(m) if p.len() == 3 => Ok(m),
        _ => Err(FileError::generic(format!(
            "permissions must be a 3-digit octal string, got {p:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Owners.

/// A line of `/etc/passwd` or `/etc/group` whose name or id matches.
fn lookup(file: &str, name: Option<&str>, id: Option<u32>) -> Option<Vec<String>> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| {
            f.len() > 3
                && (name.is_some_and(|n| f[0] == n)
                    || id.is_some_and(|i| f[2].parse::<u32>().ok() == Some(i)))
        })
}

fn user_name(uid: u32) -> String {
    lookup("/etc/passwd", None, Some(uid))
        .map(|f| f[0].clone())
        .unwrap_or_default()
}

fn group_name(gid: u32) -> String {
    lookup("/etc/group", None, Some(gid))
        .map(|f| f[0].clone())
        .unwrap_or_default()
}

/// Pebble's `NormalizeUidGid`: the owner to give a file, if any.
fn owner(
    user_id: Option<u32>,
    user: &str,
    group_id: Option<u32>,
    group: &str,
) -> Result<Option<(u32, u32)>, String> {
    let mut uid = user_id;
    let mut gid = group_id;
    if uid.is_none() && gid.is_none() && user.is_empty() && group.is_empty() {
        return Ok(None);
    }
    if !user.is_empty() {
        let f = lookup("/etc/passwd", Some(user), None)
            .ok_or_else(|| format!("user: unknown user {user}"))?;
        uid = f[2].parse().ok();
        if gid.is_none() && group.is_empty() {
            gid = f[3].parse().ok();
        }
    }
    if !group.is_empty() {
        let f = lookup("/etc/group", Some(group), None)
            .ok_or_else(|| format!("group: unknown group {group}"))?;
        gid = f[2].parse().ok();
    }
    match (uid, gid) {
        (Some(u), Some(g)) => Ok(Some((u, g))),
        (Some(u), None) => {
            let f = lookup("/etc/passwd", None, Some(u))
                .ok_or_else(|| format!("user: unknown userid {u}"))?;
            Ok(Some((u, f[3].parse().unwrap_or(0))))
        }
        _ => Err("must specify user, not just group".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing.

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct WriteItem {
    path: String,
    make_dirs: bool,
    permissions: String,
    user_id: Option<u32>,
    user: String,
    group_id: Option<u32>,
    group: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WriteRequest {
    action: String,
    files: Vec<WriteItem>,
}

/// `POST /v1/files` as multipart: the `request` part, then one `files` part per file.
pub fn write_files(root: &Path, boundary: &str, body: &Bytes) -> Result<Value, ApiError> {
    if boundary.len() < MIN_BOUNDARY {
        return Err(ApiError::bad_request(format!(
            "invalid boundary {boundary:?}"
        )));
    }
    let parts = parse_multipart(body, boundary)
        .map_err(|e| ApiError::bad_request(format!("cannot read request metadata: {e}")))?;
    let mut parts = parts.into_iter();
    let Some(meta) = parts.next() else {
        return Err(ApiError::bad_request("cannot read request metadata: EOF"));
    };
    if meta.name != "request" {
        return Err(ApiError::bad_request(format!(
            "metadata field name must be \"request\", got {:?}",
            meta.name
        )));
    }
    let req: WriteRequest = serde_json::from_slice(&meta.body)
        .map_err(|e| ApiError::bad_request(format!("cannot decode request metadata: {e}")))?;
    if req.action != "write" {
        return Err(ApiError::bad_request(format!(
            "multipart action must be \"write\", got {:?}",
            req.action
        )));
    }
    if req.files.is_empty() {
        return Err(ApiError::bad_request("must specify one or more files"));
    }
    let infos: BTreeMap<&str, &WriteItem> =
        req.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut outcomes: BTreeMap<String, Option<FileError>> = BTreeMap::new();
    for part in parts {
        if part.name != "files" {
            return Err(ApiError::bad_request(format!(
                "field name must be \"files\", got {:?}",
                part.name
            )));
        }
        let path = part.filename.clone().unwrap_or_default();
        let Some(info) = infos.get(path.as_str()) else {
            return Err(ApiError::bad_request(format!(
                "no metadata for path {path:?}"
            )));
        };
        outcomes.insert(path.clone(), write_file(root, info, &part.body).err());
    }
    let results: Vec<Value> = req
        .files
        .iter()
        .map(|f| {
            let err = match outcomes.get(&f.path) {
                Some(e) => e.clone(),
                None => Some(FileError::generic(format!(
                    "no file content for path {:?}",
                    f.path
                ))),
            };
            result(&f.path, err)
        })
        .collect();
    Ok(json!(results))
}

/// Writes one file atomically: a temporary file beside it, its mode, then a rename.
fn write_file(root: &Path, item: &WriteItem, content: &[u8]) -> Result<(), FileError> {
    absolute(&item.path)?;
    let owner = owner(item.user_id, &item.user, item.group_id, &item.group)
        .map_err(|e| FileError::generic(format!("cannot look up user and group: {e}")))?;
    let path = clean(&item.path);
    let host = host_path(root, &path);
    let parent = Path::new(&path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    if item.make_dirs {
        mkdir_all(root, &parent, 0o755, owner).map_err(|e| FileError {
            message: format!("cannot create directory: {}", e.message),
            kind: e.kind,
        })?;
    }
    let perm = parse_permissions(&item.permissions, 0o644)?;
    let suffix: String = {
        use rand::Rng;
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut rng = rand::rng();
        (0..12)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect()
    };
    let tmp_name = format!("{path}.{suffix}~");
    let tmp = host_path(root, &tmp_name);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FileError::os("open", &tmp_name, &e))?;
        f.write_all(content)
            .map_err(|e| FileError::os("write", &tmp_name, &e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(perm))
            .map_err(|e| FileError::os("chmod", &tmp_name, &e))?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::chown(&tmp, Some(u), Some(g))
                .map_err(|e| FileError::os("chown", &tmp_name, &e))?;
        }
        fs::rename(&tmp, &host).map_err(|e| FileError {
            message: format!("rename {tmp_name} {path}: {}", errno_text(&e)),
            kind: kind_of(&e),
        })
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `mkdir -p` in the container, giving new directories `perm` (and an owner).
fn mkdir_all(
    root: &Path,
    path: &str,
    perm: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), FileError> {
    let mut cur = String::new();
    for seg in clean(path).split('/').filter(|s| !s.is_empty()) {
        cur = format!("{cur}/{seg}");
        let host = host_path(root, &cur);
        match fs::metadata(&host) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(FileError {
                    message: format!("mkdir {cur}: not a directory"),
                    kind: "generic-file-error",
                })
            }
            Err(_) => {}
        }
        fs::create_dir(&host).map_err(|e| FileError::os("mkdir", &cur, &e))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(perm))
            .map_err(|e| FileError::os("chmod", &cur, &e))?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::chown(&host, Some(u), Some(g))
                .map_err(|e| FileError::os("chown", &cur, &e))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// `GET /v1/files?action=read`: Pebble's multipart answer, a `files` part per file read and
/// a final `response` part with the result of each. Returns (boundary, body).
pub fn read_files(root: &Path, paths: &[String]) -> (String, Vec<u8>) {
    let boundary: String = {
        let b: [u8; 30] = rand::random();
        hex::encode(b)
    };
    let mut body = vec![];
    let mut first = true;
    let mut part = |body: &mut Vec<u8>, headers: &str| {
        if first {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            first = false;
        } else {
            body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        }
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(b"\r\n");
    };
    let mut results = vec![];
    for path in paths {
        let read = (|| {
            absolute(path)?;
            let host = host_path(root, path);
            let meta = fs::metadata(&host).map_err(|e| FileError::os("stat", path, &e))?;
            if !meta.is_file() {
                return Err(FileError::generic(format!(
                    "can only read a regular file: {path:?}"
                )));
            }
            fs::read(&host).map_err(|e| FileError::os("open", path, &e))
        })();
        match read {
            Ok(content) => {
                part(
                    &mut body,
                    &format!(
                        "Content-Disposition: form-data; name=\"files\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n",
                        quote(path)
                    ),
                );
                body.extend_from_slice(&content);
                results.push(result(path, None));
            }
            Err(e) => results.push(result(path, Some(e))),
        }
    }
    part(
        &mut body,
        "Content-Disposition: form-data; name=\"response\"\r\nContent-Type: application/json\r\n",
    );
    let meta = json!({"type": "sync", "status-code": 200, "status": "OK", "result": results});
    body.extend_from_slice(format!("{meta}\n").as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

// ---------------------------------------------------------------------------------------------
// make-dirs and remove.

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub struct MakeDirsItem {
    path: String,
    make_parents: bool,
    permissions: String,
    user_id: Option<u32>,
    user: String,
    group_id: Option<u32>,
    group: String,
}

pub fn make_dirs(root: &Path, items: &[MakeDirsItem]) -> Value {
    let results: Vec<Value> = items
        .iter()
        .map(|d| {
            let made = (|| {
                absolute(&d.path)?;
                let perm = parse_permissions(&d.permissions, 0o755)?;
                let owner = owner(d.user_id, &d.user, d.group_id, &d.group).map_err(|e| {
                    FileError::generic(format!("cannot look up user and group: {e}"))
                })?;
                let path = clean(&d.path);
                if d.make_parents {
                    mkdir_all(root, &path, perm, owner)
                } else {
                    let host = host_path(root, &path);
                    fs::create_dir(&host).map_err(|e| FileError::os("mkdir", &path, &e))?;
                    fs::set_permissions(&host, fs::Permissions::from_mode(perm))
                        .map_err(|e| FileError::os("chmod", &path, &e))?;
                    if let Some((u, g)) = owner {
                        std::os::unix::fs::chown(&host, Some(u), Some(g))
                            .map_err(|e| FileError::os("chown", &path, &e))?;
                    }
                    Ok(())
                }
            })();
            result(&d.path, made.err())
        })
        .collect();
    json!(results)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub struct RemoveItem {
    path: String,
    recursive: bool,
}

pub fn remove_paths(root: &Path, items: &[RemoveItem]) -> Value {
    let results: Vec<Value> = items
        .iter()
        .map(|r| {
            let removed = (|| {
                absolute(&r.path)?;
                let path = clean(&r.path);
                if path == "/" {
                    return Err(FileError::generic(format!(
                        "remove {path}: device or resource busy"
                    )));
                }
                let host = host_path(root, &path);
                let meta = match fs::symlink_metadata(&host) {
                    Ok(m) => m,
                    Err(_) if r.recursive => return Ok(()),
                    Err(e) => return Err(FileError::os("remove", &path, &e)),
                };
                let done = if meta.is_dir() && r.recursive {
                    fs::remove_dir_all(&host)
                } else if meta.is_dir() {
                    fs::remove_dir(&host)
                } else {
                    fs::remove_file(&host)
                };
                done.map_err(|e| FileError::os("remove", &path, &e))
            })();
            result(&r.path, removed.err())
        })
        .collect();
    json!(results)
}

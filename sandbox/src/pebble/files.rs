//! Pebble's files API over the container's directory: push (multipart `request` + `files`
//! parts, written atomically with their permissions), pull (a multipart answer with a
//! `response` part, as Pebble sends it), list, make-dirs and remove. Paths are the container's
//! (absolute, resolved against its root the way the container would, so `..` cannot leave
//! it), and errors name them the way Go's `os` errors do, with Pebble's error kinds.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::ApiError;
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
// Multipart.

/// A media type and its parameters (`multipart/form-data; boundary=...`), as Go's
/// `mime.ParseMediaType` reads them: names lowercased, quoted values unescaped.
pub fn media_type(s: &str) -> Option<(String, BTreeMap<String, String>)> {
    let mut parts = s.splitn(2, ';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    if media.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut rest = parts.next().unwrap_or("").trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &q[end?..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.insert(key, value);
        rest = rest.trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    Some((media, params))
}

/// One part of a multipart body: its form name, file name and content.
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub body: Bytes,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Splits a multipart body into its parts.
pub fn parse_multipart(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delim = format!("--{boundary}");
    let mut pos = find(body, delim.as_bytes(), 0).ok_or("multipart: NextPart: EOF")?;
    let mut parts = vec![];
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        // The rest of the boundary line.
        let eol = find(body, b"\n", pos).ok_or("multipart: NextPart: EOF")?;
        pos = eol + 1;
        let head_end = find(body, b"\r\n\r\n", pos)
            .map(|e| (e, e + 4))
            .or_else(|| find(body, b"\n\n", pos).map(|e| (e, e + 2)))
            .ok_or("malformed MIME header: missing colon")?;
        let head = String::from_utf8_lossy(&body[pos..head_end.0]);
        let mut disposition = String::new();
        for line in head.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-disposition") {
                    disposition = v.trim().to_string();
                }
            }
        }
        let start = head_end.1;
        let close = format!("\r\n{delim}");
        let end = find(body, close.as_bytes(), start).ok_or("multipart: NextPart: EOF")?;
        let params = media_type(&disposition).map(|m| m.1).unwrap_or_default();
        parts.push(Part {
            name: params.get("name").cloned().unwrap_or_default(),
            filename: params.get("filename").cloned(),
            body: body.slice(start..end),
        });
        pos = end + 2;
    }
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
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
// Listing.

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

    #[test]
    fn media_types_parse_like_go() {
        let (t, p) = media_type("multipart/form-data; boundary=\"abc\\\"d\"").unwrap();
        assert_eq!(t, "multipart/form-data");
        assert_eq!(p["boundary"], "abc\"d");
        let (t, p) = media_type("form-data; name=\"files\"; filename=\"/a/b c\"").unwrap();
        assert_eq!(t, "form-data");
        assert_eq!(p["name"], "files");
        assert_eq!(p["filename"], "/a/b c");
    }

    #[test]
    fn multipart_bodies_split_into_parts() {
        let b = "--XYZ\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{\"a\":1}\r\n--XYZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"/x\"\r\nContent-Type: application/octet-stream\r\n\r\nline1\r\nline2\r\n--XYZ--\r\n";
        let parts = parse_multipart(&Bytes::from(b), "XYZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "request");
        assert_eq!(&parts[0].body[..], b"{\"a\":1}");
        assert_eq!(parts[1].filename.as_deref(), Some("/x"));
        assert_eq!(&parts[1].body[..], b"line1\r\nline2");
    }
}

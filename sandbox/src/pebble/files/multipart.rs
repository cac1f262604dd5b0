//! Multipart bodies as Pebble reads and writes them: media types parsed like Go's
//! `mime.ParseMediaType`, bodies split into parts.

use std::collections::BTreeMap;

use axum::body::Bytes;

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

pub(super) fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

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

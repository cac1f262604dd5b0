//! Trusting the private CA an S3 endpoint's certificate is signed by (s3-integrator's
//! `tls-ca-chain`, the CLI's `--s3-tls-ca-chain`).
//!
//! rust-s3 builds its HTTP client itself and takes no root certificates. The client does load
//! the platform's roots (reqwest's `rustls-tls-native-roots`, next to the bundled public ones),
//! and those honour `SSL_CERT_FILE`. So a chain is checked, written to a file, and named there
//! before the first S3 client is built. Verification stays on: a chain adds trust, it never
//! turns checking off.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The certificates in `pem`, each parsed as X.509, or what is wrong with it.
pub fn parse_chain(pem: &str, origin: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{origin}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "{origin}: no `-----BEGIN CERTIFICATE-----` block in it"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| format!("{origin}: certificate {} is not valid X.509 ({e})", i + 1))?;
    }
    Ok(certs)
}

/// Checks every PEM of a chain (one string per certificate, or several in one) and writes them
/// into one file in `dir`, named by content so the same chain reuses the same file. The chain
/// is public data; nothing secret goes there.
pub fn write_chain(pems: &[String], dir: &Path, origin: &str) -> Result<PathBuf, String> {
    use sha2::Digest;
    let mut all = String::new();
    for p in pems {
        parse_chain(p, origin)?;
        all.push_str(p.trim());
        all.push('\n');
    }
    if all.is_empty() {
        return Err(format!("{origin}: the chain is empty"));
    }
    let name = format!(
        "backup-agent-ca-{}.pem",
        &hex::encode(sha2::Sha256::digest(all.as_bytes()))[..16]
    );
    let path = dir.join(name);
    std::fs::write(&path, all).map_err(|e| format!("{origin}: writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Makes S3 clients built from now on trust the certificates in `file` as well as the public
/// roots.
///
/// Call it before any thread is started (the CLI before its runtime, the charm before its
/// first S3 client): the environment is shared by the whole process.
pub fn trust_file(file: &Path, origin: &str) -> Result<(), String> {
    let pem =
        std::fs::read_to_string(file).map_err(|e| format!("{origin} {}: {e}", file.display()))?;
    parse_chain(&pem, &format!("{origin} {}", file.display()))?;
    std::env::set_var("SSL_CERT_FILE", file);
    Ok(())
}

/// [`write_chain`] into the temporary directory, then [`trust_file`].
pub fn trust_chain(pems: &[String], origin: &str) -> Result<PathBuf, String> {
    let file = write_chain(pems, &std::env::temp_dir(), origin)?;
    trust_file(&file, origin)?;
    Ok(file)
}

/// The certificates of a relation's `tls-ca-chain` (a JSON list), each element PEM text or
/// base64 of PEM: s3-integrator sends one or the other depending on its version, and
/// mysql-k8s's `s3_helpers` base64-decodes each element. Every certificate is checked.
pub fn relation_chain(value: &str) -> Result<Vec<String>, String> {
    use base64::Engine;
    let items: Vec<String> = serde_json::from_str(value)
        .map_err(|e| format!("not a JSON list of certificates ({e})"))?;
    let mut pems = vec![];
    for (i, item) in items.iter().enumerate() {
        let item = item.trim();
        let pem = if item.starts_with("-----BEGIN") {
            item.to_string()
        } else {
            let compact: String = item.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| format!("element {} is neither PEM nor base64 of PEM ({e})", i + 1))?;
            String::from_utf8(bytes).map_err(|_| {
                format!(
                    "element {} is base64 of something that is not PEM text",
                    i + 1
                )
            })?
        };
        parse_chain(&pem, &format!("element {}", i + 1))?;
        pems.push(pem);
    }
    Ok(pems)
}

/// A DER certificate as PEM text.
fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The chains trusted so far by [`trust_more`], so a chain already there is not added again.
static TRUSTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Adds `pems` to what S3 clients built from now on trust, next to whatever `SSL_CERT_FILE`
/// named before. For a chain learnt mid-run (a mysql app's relation): rust-s3 takes no root
/// certificates, so the process's `SSL_CERT_FILE` is the one way in. The variable is changed
/// only when a relation carries a chain not trusted yet, under a lock.
pub fn trust_more(pems: &[String], origin: &str) -> Result<(), String> {
    let mut trusted = TRUSTED.lock().unwrap_or_else(|e| e.into_inner());
    let new: Vec<String> = pems
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !trusted.contains(p))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let mut all = new.clone();
    if let Some(before) = std::env::var_os("SSL_CERT_FILE") {
        let text = std::fs::read_to_string(&before)
            .map_err(|e| format!("{origin}: SSL_CERT_FILE {}: {e}", before.to_string_lossy()))?;
        all.insert(0, text);
    } else {
        // Once SSL_CERT_FILE is set the platform's store is no longer read: carry it over, so
        // a CA installed there (a company's own) stays trusted.
        // Stores often hold a few certificates rustls cannot parse; reqwest skips them too.
        for cert in rustls_native_certs::load_native_certs().certs {
            let pem = der_to_pem(cert.as_ref());
            if parse_chain(&pem, origin).is_ok() {
                all.insert(0, pem);
            }
        }
    }
    let file = write_chain(&all, &std::env::temp_dir(), origin)?;
    std::env::set_var("SSL_CERT_FILE", &file);
    trusted.extend(new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_chains_are_named() {
        let e = parse_chain("not a certificate", "tls-ca-chain").unwrap_err();
        assert!(e.contains("no `-----BEGIN CERTIFICATE-----`"), "{e}");
        let e = parse_chain(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "tls-ca-chain",
        )
        .unwrap_err();
        assert!(e.contains("certificate 1 is not valid X.509"), "{e}");
        let e = parse_chain(
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "tls-ca-chain",
        )
        .unwrap_err();
        assert!(e.starts_with("tls-ca-chain: "), "{e}");
    }

    #[test]
    fn a_relation_chain_takes_pem_or_base64_of_pem_and_names_a_bad_element() {
        use base64::Engine;
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tls/ca.pem"
        ))
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
        let list = serde_json::to_string(&[pem.clone(), b64]).unwrap();
        let got = relation_chain(&list).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].trim(), pem.trim());
        assert_eq!(got[1].trim(), pem.trim(), "base64 decoded to the same PEM");
        let e = relation_chain(r#"["!!not base64!!"]"#).unwrap_err();
        assert!(
            e.contains("element 1 is neither PEM nor base64 of PEM"),
            "{e}"
        );
        let e = relation_chain("-----BEGIN CERTIFICATE-----").unwrap_err();
        assert!(e.contains("not a JSON list"), "{e}");
        let junk = base64::engine::general_purpose::STANDARD.encode("hello");
        let e = relation_chain(&format!(r#"["{junk}"]"#)).unwrap_err();
        assert!(e.contains("element 1"), "{e}");
    }
}

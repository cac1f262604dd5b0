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
}

//! TLS and server-side encryption, against real SeaweedFS servers: certificates are verified
//! by default, a private CA is trusted only when given, and SSE settings reach every object
//! the destination stores.

use std::path::Path;
use std::process::Command;

use crate::common::{agent, cli, completed_ids, rt};
use backup_agent_sandbox::s3::fault_proxy::FaultProxy;
use backup_agent_sandbox::s3::{start_weed_with, stop_weed, TlsFiles};
use backup_agent_sandbox::seed::BucketSpec;
use backup_agent_sandbox::{Sandbox, UpOptions};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/bootstrap installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made here, and a certificate it signed for 127.0.0.1.
fn certificates(dir: &Path) -> TlsFiles {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=backup-agent test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: dir.join("ca.pem"),
    }
}

#[test]
fn tls_is_verified_and_a_private_ca_is_trusted_only_when_given() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = certificates(tmp.path());
    let srv = start_weed_with(
        &tmp.path().join("weed"),
        "tls-access",
        "tls-secret",
        &["backups"],
        true,
        Some(&tls),
    )
    .unwrap();
    let https = format!("https://127.0.0.1:{}", srv.s3_port);
    let env = [
        ("BACKUP_AGENT_S3_ENDPOINT", https.as_str()),
        ("BACKUP_AGENT_S3_BUCKET", "backups"),
        ("BACKUP_AGENT_S3_ACCESS_KEY", "tls-access"),
        ("BACKUP_AGENT_S3_SECRET_KEY", "tls-secret"),
    ];
    let ca = tls.ca.to_str().unwrap();

    // Verified by default: a certificate from an unknown CA is refused, and said so.
    let (code, out, err) = cli(&["list-backups"], &env);
    assert_ne!(code, 0, "{out}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("tls-secret"));

    // Trusted once the chain is given (the CLI flag; s3-integrator's tls-ca-chain does the
    // same through the charm).
    let (code, out, err) = cli(&["list-backups", "--s3-tls-ca-chain", ca], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no backups"), "{out}");

    // A CA that did not sign the server's certificate does not help.
    let other = tempfile::tempdir().unwrap();
    let other_ca = certificates(other.path()).ca;
    let (code, _, err) = cli(
        &[
            "list-backups",
            "--s3-tls-ca-chain",
            other_ca.to_str().unwrap(),
        ],
        &env,
    );
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Plain HTTP goes only where http:// is written: never a silent downgrade.
    let http = format!("http://127.0.0.1:{}", srv.s3_port);
    let mut plain = env;
    plain[0].1 = &http;
    let (code, _, err) = cli(&["list-backups", "--s3-tls-ca-chain", ca], &plain);
    assert_ne!(code, 0, "an HTTPS port does not answer plain HTTP");
    assert!(err.contains("HTTPS"), "{err}");
    stop_weed(&srv);
}

/// A database's s3-parameters relation may carry `tls-ca-chain`: a JSON list whose elements
/// are PEM or base64 of PEM, by s3-integrator version. The store built from the relation trusts
/// it; without it the same server is refused.
#[test]
fn a_mysql_relations_tls_ca_chain_is_trusted_as_pem_or_base64() {
    use backup_agent::components::mysql;
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let tls = certificates(tmp.path());
    let srv = start_weed_with(
        &tmp.path().join("weed"),
        "rel-access",
        "rel-secret",
        &["dbs"],
        true,
        Some(&tls),
    )
    .unwrap();
    let mut bag: std::collections::BTreeMap<String, String> = [
        ("bucket", "dbs"),
        ("access-key", "rel-access"),
        ("secret-key", "rel-secret"),
        ("path", "kfp"),
        ("region", "us-east-1"),
        ("s3-uri-style", "path"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    bag.insert(
        "endpoint".into(),
        format!("https://127.0.0.1:{}", srv.s3_port),
    );

    // No chain: the private CA is not trusted.
    let store = mysql::relation_store(&bag, "kfp-db", "kfp").unwrap();
    let e = rt().block_on(store.list("")).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A chain that is not one is named, by key and element.
    bag.insert("tls-ca-chain".into(), r#"["bm90IGEgY2VydA=="]"#.into());
    let e = mysql::relation_store(&bag, "kfp-db", "kfp")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kfp-db: s3-integrator's tls-ca-chain: element 1"),
        "{e}"
    );

    // Base64 of the PEM, as newer s3-integrators send it: trusted.
    let pem = std::fs::read_to_string(&tls.ca).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
    bag.insert(
        "tls-ca-chain".into(),
        serde_json::to_string(&[b64]).unwrap(),
    );
    let store = mysql::relation_store(&bag, "kfp-db", "kfp").unwrap();
    rt().block_on(store.put_bytes("2026-12-06T10:00:00Z.md5", b"x", "text/plain"))
        .unwrap();
    let keys: Vec<String> = rt()
        .block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["2026-12-06T10:00:00Z.md5"]);
    stop_weed(&srv);
}

#[test]
fn server_side_encryption_reaches_every_object_written() {
    let mut opts = UpOptions::new(crate::common::sandbox_exe());
    opts.bucket = BucketSpec {
        small: 4,
        large: 1,
        large_size: 12 << 20,
        awkward: false,
        ..BucketSpec::default()
    };
    let sb = Sandbox::up(&opts).unwrap();
    let proxy = FaultProxy::start(&sb.info.dest.endpoint()).unwrap();
    let via = proxy.endpoint();
    let env = [("BACKUP_AGENT_S3_ENDPOINT", via.as_str())];
    let parts = ["--components", "mlmd,mlpipeline"];

    // SSE-S3, with a multipart upload among the writes.
    let mut args = vec!["create-backup", "--s3-sse", "AES256"];
    args.extend_from_slice(&parts);
    let (code, out, err) = agent(&sb, &args, &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let seen = proxy.seen();
    let creates: Vec<_> = seen
        .iter()
        .filter(|s| {
            (s.method == "PUT" && !s.target.contains("partNumber="))
                || (s.method == "POST" && s.target.contains("uploads"))
        })
        .collect();
    assert!(
        creates.iter().any(|s| s.method == "POST"),
        "a multipart upload"
    );
    for s in &creates {
        assert_eq!(
            s.sse
                .get("x-amz-server-side-encryption")
                .map(String::as_str),
            Some("AES256"),
            "{} {}",
            s.method,
            s.target
        );
    }
    for s in seen.iter().filter(|s| s.target.contains("partNumber=")) {
        assert!(
            s.sse.is_empty(),
            "no SSE header on UploadPart: {}",
            s.target
        );
    }
    // The server stored them encrypted.
    let dest = sb.info.dest.target(&sb.info.dest_bucket).open().unwrap();
    let repo = crate::common::repo(&sb);
    let keys: Vec<String> = rt()
        .block_on(repo.list(""))
        .unwrap()
        .into_iter()
        .filter(|o| !o.key.ends_with("lock.json"))
        .map(|o| o.key)
        .collect();
    // The large objects' packs went up in parts.
    assert!(keys.iter().any(|k| k.contains("/packs/")), "{keys:?}");
    assert!(
        seen.iter().any(|s| s.target.contains("partNumber=")),
        "multipart uploads"
    );
    for k in &keys {
        let full = format!("{}/{k}", sb.info.agent_path);
        let (head, _) = rt().block_on(dest.head_object(&full)).unwrap();
        assert_eq!(
            head.server_side_encryption.as_deref(),
            Some("AES256"),
            "{k}"
        );
    }
    let id = completed_ids(&sb).pop().unwrap();
    let (code, _, err) = agent(&sb, &["verify-backup", &id, "--read-data"], &env);
    assert_eq!(code, 0, "{err}");

    // SSE-KMS: the header is sent; a key id is refused before anything runs, saying why.
    assert_eq!(
        backup_agent::storage::Sse::parse("aws:kms", None)
            .unwrap()
            .headers(),
        [("x-amz-server-side-encryption", "aws:kms".to_string())]
    );
    let (code, _, err) = agent(
        &sb,
        &[
            "create-backup",
            "--s3-sse",
            "aws:kms",
            "--s3-sse-kms-key-id",
            "k1",
        ],
        &env,
    );
    assert_ne!(code, 0);
    assert!(err.contains("bucket's default encryption key"), "{err}");
    assert_eq!(completed_ids(&sb).len(), 1, "nothing more was run");
}

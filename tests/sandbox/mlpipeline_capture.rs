//! mlpipeline capture against the sandbox's two S3 servers: content-addressed, incremental,
//! point in time.

use backup_agent::components::mlpipeline::{self, PreviousManifest, SyncOptions, SyncStats};
use backup_agent::repository;
use backup_agent::repository::Entry;
use backup_agent::secret::Secret;
use backup_agent::storage::{S3Settings, Store, UriStyle};
use backup_agent_sandbox::seed::{bucket_objects, BucketSpec, ContentReader};
use backup_agent_sandbox::Sandbox;
use sha2::{Digest, Sha256};

fn store(endpoint: String, bucket: &str, path: &str, access: &str, secret: &str) -> Store {
    Store::s3(&S3Settings {
        endpoint,
        bucket: bucket.into(),
        path: path.into(),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        access_key: Secret::new(access),
        secret_key: Secret::new(secret),
        sse: None,
    })
    .unwrap()
}

fn stores(sb: &Sandbox) -> (Store, Store) {
    let m = &sb.info.minio;
    let d = &sb.info.dest;
    (
        store(m.endpoint(), "mlpipeline", "", &m.access_key, &m.secret_key),
        store(
            d.endpoint(),
            &sb.info.dest_bucket,
            "ckf",
            &d.access_key,
            &d.secret_key,
        ),
    )
}

/// One capture into `dest` under manifest `n`, after `prev`: the manifest as the next capture's
/// previous, its entries, and the statistics.
async fn capture(
    minio: &Store,
    dest: &Store,
    prev: Option<&PreviousManifest>,
    n: u32,
    sync: &SyncOptions,
) -> (PreviousManifest, Vec<Entry>, SyncStats) {
    let key = repository::manifest_key(&format!("20261123T06000{n}Z-0a1b2c"));
    let c = mlpipeline::capture(minio, dest, prev, &key, None, sync)
        .await
        .unwrap();
    let entries = crate::common::read_manifest(dest, &key).await.unwrap();
    assert_eq!(entries.len() as u64, c.manifest.entries);
    let prev = PreviousManifest {
        backup_id: n.to_string(),
        key,
        sha256: c.manifest.sha256,
    };
    (prev, entries, c.stats)
}

#[test]
fn first_copy_then_nothing_then_only_what_changed() {
    let mut opts = backup_agent_sandbox::UpOptions::new(crate::common::sandbox_exe());
    opts.bucket = BucketSpec {
        small: 30,
        large: 1,
        large_size: 12 << 20,
        ..BucketSpec::default()
    };
    let spec = opts.bucket;
    let sb = Sandbox::up(&opts).unwrap();
    let (minio, dest) = stores(&sb);
    let spool = tempfile::tempdir().unwrap();
    let mut sync = SyncOptions::new(spool.path());
    sync.bwlimit = Some(200 << 20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let seeded = bucket_objects(&spec);
        let total: u64 = seeded.iter().map(|o| o.size).sum();

        let (p1, m1, s1) = capture(&minio, &dest, None, 1, &sync).await;
        assert_eq!(s1.objects as usize, seeded.len());
        assert_eq!(
            (s1.read_objects as usize, s1.read_bytes),
            (seeded.len(), total)
        );
        for o in &seeded {
            let e = m1
                .iter()
                .find(|e| e.key == o.key)
                .unwrap_or_else(|| panic!("{} missing", o.key));
            let want = hex::encode(Sha256::digest(
                ContentReader::new(spec.seed, &o.key, o.size).to_vec(),
            ));
            assert_eq!(e.sha256, want, "{}", o.key);
            assert_eq!(e.content_type, o.content_type, "{}", o.key);
            for (k, v) in &o.metadata {
                assert_eq!(e.metadata.get(k), Some(v), "{} metadata {k}", o.key);
            }
            let stored = backup_agent::components::mlpipeline::packed::read_entry(&dest, e)
                .await
                .unwrap();
            assert_eq!(hex::encode(Sha256::digest(&stored)), e.sha256, "{}", e.key);
        }
        // Zero-byte objects share one blob: fewer blobs than objects.
        assert!(s1.new_objects < s1.objects, "{s1:?}");

        // Nothing changed: nothing read, nothing uploaded.
        let (p2, m2, s2) = capture(&minio, &dest, Some(&p1), 2, &sync).await;
        assert_eq!(
            (s2.read_objects, s2.read_bytes, s2.new_objects, s2.new_bytes),
            (0, 0, 0, 0)
        );
        assert_eq!(m2, m1);

        // A same-size change and a deletion.
        let src = sb.info.minio.target("mlpipeline").open().unwrap();
        let changed = seeded
            .iter()
            .find(|o| o.size == spec.small_size as u64)
            .unwrap();
        let mut body = ContentReader::new(spec.seed, &changed.key, changed.size).to_vec();
        body[0] ^= 0xff;
        src.put_object(&changed.key, &body).await.unwrap();
        let gone = seeded
            .iter()
            .rev()
            .find(|o| o.size > 0 && o.key != changed.key)
            .unwrap();
        src.delete_object(&gone.key).await.unwrap();

        let (_, m3, s3) = capture(&minio, &dest, Some(&p2), 3, &sync).await;
        assert_eq!(
            (s3.read_objects, s3.read_bytes),
            (1, changed.size),
            "only the changed object moves"
        );
        assert_eq!((s3.new_objects, s3.new_bytes), (1, changed.size));
        let new_entry = m3.iter().find(|e| e.key == changed.key).unwrap();
        assert_eq!(new_entry.sha256, hex::encode(Sha256::digest(&body)));
        assert!(
            m3.iter().all(|e| e.key != gone.key),
            "a deleted object leaves the manifest"
        );

        // The old backup still has both: its blobs are untouched.
        for key in [&changed.key, &gone.key] {
            let old = m1.iter().find(|e| &e.key == key).unwrap();
            let bytes = backup_agent::components::mlpipeline::packed::read_entry(&dest, old)
                .await
                .unwrap();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), old.sha256);
        }
    });
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "the spool is cleaned up"
    );
}

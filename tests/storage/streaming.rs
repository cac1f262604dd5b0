//! The streamed engine against a real S3 server: listings a page at a time in byte order,
//! deletes in DeleteObjects batches with per-key failures retried, and a repository written
//! by the version before it (tests/fixtures/repo-v1) still listed, verified, downloaded,
//! restored, backed up into and pruned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backup_agent::components::mlpipeline::{self, PreviousManifest, SyncOptions};
use backup_agent::context::Streaming;
use backup_agent::repository;
use backup_agent::secret::Secret;
use backup_agent::storage::{Deleter, ListingOrder, S3Settings, Store, StoreError, UriStyle};
use backup_agent_sandbox::s3::fault_proxy::FaultProxy;
use backup_agent_sandbox::s3::{start_weed, stop_weed, WeedServer};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

const ACCESS: &str = "stream-access";
const SECRET: &str = "stream-secret";
/// Stages this small make every listing many pages and every sort many runs.
const TINY: Streaming = Streaming {
    page_size: 2,
    queue_depth: 3,
    sort_memory: 200,
    delete_batch: 2,
};

pub(crate) struct Server(pub WeedServer, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        stop_weed(&self.0);
    }
}

pub(crate) fn server(buckets: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let s = start_weed(dir.path(), ACCESS, SECRET, buckets, true).expect("weed");
    Server(s, dir)
}

pub(crate) fn s3(endpoint: &str, bucket: &str, path: &str) -> Store {
    Store::s3(&S3Settings {
        endpoint: endpoint.into(),
        bucket: bucket.into(),
        path: path.into(),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        access_key: Secret::new(ACCESS),
        secret_key: Secret::new(SECRET),
        sse: None,
    })
    .unwrap()
}

/// The keys under `prefix` in byte order, as every merge reads them.
async fn keys(store: &Store, prefix: &str, page: usize) -> Vec<String> {
    let scratch = tempfile::tempdir().unwrap();
    let streaming = Streaming {
        page_size: page,
        ..TINY
    };
    let got: Result<Vec<String>, _> = store
        .sorted_listing(prefix, &streaming, scratch.path())
        .map_ok(|o| o.key)
        .try_collect()
        .await;
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "runs left"
    );
    got.unwrap_or_else(|e| panic!("{}: {e}", store.describe()))
}

/// Keys whose byte order differs from a directory walk's (`a.txt` < `a/b` < `a0`).
const TRICKY: [&str; 11] = [
    "a",
    "a b",
    "a-c",
    "a.txt",
    "a/b",
    "a/b/c",
    "a/b.d",
    "a0",
    "b",
    "ünï/数据",
    "A",
];

#[test]
fn listings_come_a_page_at_a_time_in_byte_order_on_s3_and_local() {
    let srv = server(&["bucket"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = Store::local(dir.path());
    let remote = s3(
        &format!("http://127.0.0.1:{}", srv.0.s3_port),
        "bucket",
        "root",
    );
    rt.block_on(async {
        // A directory cannot also be a file: locally, no key is a folder of another.
        let local_keys: Vec<&str> = TRICKY
            .iter()
            .copied()
            .filter(|k| !TRICKY.iter().any(|o| o.starts_with(&format!("{k}/"))))
            .collect();
        for (store, keys_in) in [(&local, local_keys), (&remote, TRICKY.to_vec())] {
            let mut want: Vec<String> = keys_in.iter().map(|k| k.to_string()).collect();
            want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for k in keys_in {
                store
                    .put_bytes(k, k.as_bytes(), "text/plain")
                    .await
                    .unwrap();
            }
            if store.describe().starts_with("s3://") {
                // SeaweedFS lists a folder where its name sorts: the first listing finds out,
                // ends with Unsorted, and from then on the store's listings are sorted.
                assert_eq!(store.listing_order(), ListingOrder::Unknown);
                let first: Result<Vec<_>, _> = store.list_stream("", 2).try_collect().await;
                assert!(
                    matches!(first, Err(StoreError::Unsorted { .. })),
                    "{first:?}"
                );
                assert_eq!(store.listing_order(), ListingOrder::Other);
            } else {
                assert_eq!(store.listing_order(), ListingOrder::Bytes);
            }
            for page in [1, 2, 3, 1000] {
                assert_eq!(
                    keys(store, "", page).await,
                    want,
                    "{} page {page}",
                    store.describe()
                );
            }
            let under_a: Vec<String> = want
                .iter()
                .filter(|k| k.starts_with("a/"))
                .cloned()
                .collect();
            assert_eq!(keys(store, "a/", 1).await, under_a, "{}", store.describe());
            assert!(keys(store, "nothing/", 2).await.is_empty());
        }
    });
}

#[test]
fn deletes_go_in_batches_and_keys_reported_failed_are_tried_again() {
    let srv = server(&["bucket"]);
    let proxy = FaultProxy::start(&format!("http://127.0.0.1:{}", srv.0.s3_port)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = s3(&proxy.endpoint(), "bucket", "root");
    let batches = |p: &FaultProxy| {
        p.seen()
            .iter()
            .filter(|s| s.method == "POST" && s.target.contains("delete"))
            .count()
    };
    rt.block_on(async {
        let all: Vec<String> = (0..7).map(|i| format!("g/{i}")).collect();
        for k in &all {
            store.put_bytes(k, b"x", "text/plain").await.unwrap();
        }
        store
            .put_bytes("keep/me", b"x", "text/plain")
            .await
            .unwrap();
        // Keys 3 and 5 are reported failed by the first two answers: each batch holding one
        // is sent again, and every key ends deleted.
        proxy.clear();
        let before = batches(&proxy);
        proxy.refuse_deletes("g/3", 1);
        let mut d = Deleter::new(&store, 3);
        for k in &all {
            d.push(k.clone()).await.unwrap();
        }
        assert_eq!(d.finish().await.unwrap(), 7);
        // 7 keys in batches of 3 is 3 requests, and one more for the key refused once.

        assert_eq!(batches(&proxy) - before, 4);
        assert_eq!(keys(&store, "", 1000).await, ["keep/me"]);

        // A key refused every time: the failure is said, with the key, never swallowed.
        store
            .put_bytes("g/stuck", b"x", "text/plain")
            .await
            .unwrap();
        proxy.refuse_deletes("stuck", 100);
        let mut d = Deleter::new(&store, 3).attempts(3);
        d.push("g/stuck".into()).await.unwrap();
        let e = d.finish().await.unwrap_err();
        assert!(e.to_string().contains("g/stuck"), "{e}");
        assert!(e.to_string().contains("InternalError"), "{e}");
    });
}

fn agent(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    crate::common::cli(args, env)
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1")
}

/// `sha256sum`'s lines: key -> hash.
fn expected(id: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(fixture().join(format!("expected/{id}.sha256")))
        .unwrap()
        .lines()
        .map(|l| {
            let (sha, key) = l.split_once("  ").unwrap();
            (key.to_string(), sha.to_string())
        })
        .collect()
}

/// Files under `dir` by relative path, each with the SHA-256 of its bytes.
pub(crate) fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(key, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

const OLD: &str = "20261206T091932Z-426c8b";
const NEW: &str = "20261206T091935Z-190ec1";

/// A `juju` that fails the test if called: these commands need none for these backups.
fn no_juju(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let juju = bin.join("juju");
    std::fs::write(&juju, "#!/bin/sh\necho 'juju was called' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&juju, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn a_repository_written_before_the_streamed_engine_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    copy_dir(&fixture().join("backup-agent"), &root.join("backup-agent"));
    let d = root.to_str().unwrap().to_string();
    let path = no_juju(tmp.path());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let env = [
        ("PATH", path.as_str()),
        ("TMPDIR", scratch.to_str().unwrap()),
        ("BACKUP_AGENT_LIST_PAGE_SIZE", "2"),
        ("BACKUP_AGENT_SORT_MEMORY", "200"),
        ("BACKUP_AGENT_DELETE_BATCH", "2"),
        ("BACKUP_AGENT_QUEUE_DEPTH", "3"),
    ];

    let (code, out, err) = agent(&["list-backups", "--destination-dir", &d], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(OLD) && out.contains(NEW) && out.contains("v1-second"),
        "{out}"
    );
    for id in [OLD, NEW] {
        let (code, out, err) = agent(
            &["verify-backup", id, "--read-data", "--destination-dir", &d],
            &env,
        );
        assert_eq!(code, 0, "{id}: {out}{err}");
        assert!(out.contains("PASSED"), "{out}");
        let into = tmp.path().join(format!("dl-{id}"));
        let (code, out, err) = agent(
            &[
                "download",
                id,
                into.to_str().unwrap(),
                "--destination-dir",
                &d,
            ],
            &env,
        );
        assert_eq!(code, 0, "{id}: {out}{err}");
        assert_eq!(files(&into.join("mlpipeline")), expected(id), "{id}");
    }

    // Into S3, then restored object by object into an empty bucket, and backed up again with
    // the old manifest as the previous one: nothing is read again.
    let srv = server(&["backups", "restored", "again"]);
    let endpoint = format!("http://127.0.0.1:{}", srv.0.s3_port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = s3(&endpoint, "backups", "ckf");
    let target = s3(&endpoint, "restored", "");
    let opts = SyncOptions {
        scratch: scratch.clone(),
        streaming: TINY,
        ..SyncOptions::new(tmp.path().join("spool"))
    };
    rt.block_on(async {
        for (key, _) in files(&root) {
            let bytes = std::fs::read(root.join(&key)).unwrap();
            repo.put_bytes(&key, &bytes, "application/octet-stream")
                .await
                .unwrap();
        }
        let sf = repository::load(&repo, NEW).await.unwrap();
        let cap = sf.components.mlpipeline.clone().unwrap();
        let plan = mlpipeline::restore_plan(&repo, &target, &cap, &opts)
            .await
            .unwrap();
        assert_eq!(
            (plan.to_copy, plan.to_delete),
            (expected(NEW).len() as u64, 0)
        );
        mlpipeline::restore(&repo, &target, &cap, Some(&plan), &opts)
            .await
            .unwrap();
        let mut restored = BTreeMap::new();
        for o in target.list("").await.unwrap() {
            let bytes = target.get_bytes(&o.key).await.unwrap();
            restored.insert(o.key, hex::encode(Sha256::digest(&bytes)));
        }
        assert_eq!(restored, expected(NEW));

        // The restored bucket has the ETags the old manifest recorded (SeaweedFS, like the
        // sandbox's MinIO, gives a single-part object the MD5 of its bytes).
        let previous = PreviousManifest {
            backup_id: NEW.into(),
            key: cap.manifest_key.clone(),
            sha256: cap.manifest_sha256.clone(),
        };
        let plan = mlpipeline::plan(&target, &repo, Some(&previous), &opts)
            .await
            .unwrap();
        assert_eq!(
            (plan.objects, plan.to_read),
            (expected(NEW).len() as u64, 0),
            "{plan:?}"
        );

        // A new backup (format v2) into the v1 repository: the unchanged objects keep their v1
        // blobs, the changed and added ones are packed; the mixed backup verifies, restores,
        // and stays whole once the v1 backups it grew from are deleted.
        let changed = target.list("").await.unwrap()[0].key.clone();
        target
            .put_bytes(&changed, b"rewritten after the v1 backups", "text/plain")
            .await
            .unwrap();
        target
            .put_bytes("added/by/v2", b"new since the v1 backups", "text/plain")
            .await
            .unwrap();
        let mixed_id = "20261206T120000Z-c0ffee";
        let key = repository::manifest_key(mixed_id);
        let got = mlpipeline::capture(&target, &repo, Some(&previous), &key, None, &opts)
            .await
            .unwrap();
        assert_eq!(
            (got.stats.read_objects, got.stats.packs),
            (2, 1),
            "{:?}",
            got.stats
        );
        let mixed = got.record(&key);
        let lines: Vec<repository::Entry> =
            repository::manifest::read(&repo, &mixed.manifest_key, Some(&mixed.manifest_sha256))
                .try_collect()
                .await
                .unwrap();
        let packed: Vec<&str> = lines
            .iter()
            .filter(|e| e.pack.is_some())
            .map(|e| e.key.as_str())
            .collect();
        let mut want = vec![changed.as_str(), "added/by/v2"];
        want.sort();
        assert_eq!(packed, want, "the changed and the added object are packed");
        assert!(
            lines.iter().any(|e| e.pack.is_none() && e.size > 0),
            "v1 lines kept"
        );
        let sf = crate::packs::statefile(mixed_id, &mixed);
        repository::save(&repo, &sf).await.unwrap();
        let read_data = backup_agent::components::check::Mode::ReadData(Default::default());
        let v = crate::packs::verify(&repo, &sf, read_data).await;
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        // delete-backup of both v1 backups: the blobs the mixed one still names stay.
        let ctx = crate::packs::context(&repo, &scratch);
        use backup_agent::commands::prune;
        for id in [OLD, NEW] {
            prune::run(&ctx, &prune::Selection::One(id.into()))
                .await
                .unwrap();
        }
        let v = crate::packs::verify(&repo, &sf, read_data).await;
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let again = s3(&endpoint, "again", "");
        mlpipeline::restore(&repo, &again, &mixed, None, &opts)
            .await
            .unwrap();
        let mut want = BTreeMap::new();
        for o in target.list("").await.unwrap() {
            want.insert(o.key.clone(), target.get_bytes(&o.key).await.unwrap());
        }
        let mut got = BTreeMap::new();
        for o in again.list("").await.unwrap() {
            got.insert(o.key.clone(), again.get_bytes(&o.key).await.unwrap());
        }
        assert_eq!(got, want, "the mixed backup restores whole");
    });
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch left behind"
    );

    // delete-backup of the older one: the newer one still verifies and downloads whole, and
    // the blobs only the older one used are gone.
    let blobs = |r: &Path| files(&r.join("backup-agent/blobs")).len();
    let before = blobs(&root);
    let (code, out, err) = agent(
        &["delete-backup", OLD, "--yes", "--destination-dir", &d],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        blobs(&root) < before,
        "{before} blobs before, {} after",
        blobs(&root)
    );
    let (code, out, err) = agent(
        &["verify-backup", NEW, "--read-data", "--destination-dir", &d],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let again = tmp.path().join("again");
    let (code, out, err) = agent(
        &[
            "download",
            NEW,
            again.to_str().unwrap(),
            "--destination-dir",
            &d,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(files(&again.join("mlpipeline")), expected(NEW));
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch left behind"
    );
}

/// Repository format v2's unit of storage on a real server: a pack's footer and trailer read by
/// two ranged GETs, its blobs by coalesced ranges, each byte-exact and hashing to its name.
#[test]
fn a_pack_reads_back_by_ranges_on_s3_and_local() {
    use repository::pack::{self, PackBuilder};
    let srv = server(&["packs"]);
    let endpoint = format!("http://127.0.0.1:{}", srv.0.s3_port);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs: Vec<Vec<u8>> = (1..200u32)
        .map(|i| (0..i * 53).map(|j| (i * 7 + j) as u8).collect())
        .collect();
    let mut b = PackBuilder::new(4 << 20);
    for x in &blobs {
        b.push(Sha256::digest(x).into(), x);
    }
    let (bytes, located) = b.finish();
    let id = pack::new_pack_id();
    let key = repository::layout::pack_key(&id);
    assert_eq!(repository::layout::pack_of(&key), Some(id.as_str()));
    for store in [s3(&endpoint, "packs", "root"), Store::local(dir.path())] {
        rt.block_on(async {
            store
                .put_bytes(&key, &bytes, "application/octet-stream")
                .await
                .unwrap();
            let n = bytes.len() as u64;
            let foot = store
                .get_range(&key, n - pack::FOOTER_LEN, n)
                .await
                .unwrap();
            let (tl, count) = pack::parse_footer(&foot, n).unwrap();
            let start = pack::trailer_start(n, tl);
            let trailer = store.get_range(&key, start, start + tl).await.unwrap();
            let back = pack::parse_trailer(&trailer, count, n).unwrap();
            assert_eq!(back, located, "{}", store.describe());
            // Every other blob, so that the gaps decide which neighbours share a request.
            let wanted: Vec<usize> = (0..back.len()).step_by(2).collect();
            let ranges: Vec<(u64, u64)> = wanted
                .iter()
                .map(|&i| (back[i].offset, back[i].length))
                .collect();
            let spans = pack::coalesce(&ranges, 16 << 10, 64 << 10);
            assert!(
                spans.len() < wanted.len() / 2,
                "{} requests for {} blobs",
                spans.len(),
                wanted.len()
            );
            for s in &spans {
                let got = store.get_range(&key, s.start, s.end).await.unwrap();
                for &m in &s.members {
                    let l = back[wanted[m]];
                    let at = (l.offset - s.start) as usize;
                    let blob = &got[at..at + l.length as usize];
                    assert_eq!(blob, blobs[wanted[m]].as_slice());
                    assert_eq!(<[u8; 32]>::from(Sha256::digest(blob)), l.sha256);
                }
            }
            assert!(store.get_range(&key, 5, 5).await.unwrap().is_empty());
            let past = store.get_range(&key, n - 4, n + 10).await;
            assert!(past.is_err(), "{}: a range past the end", store.describe());
        });
    }
}

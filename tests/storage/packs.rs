//! Repository format v2 on a real S3 server (SeaweedFS behind the sandbox's fault proxy, which
//! records every request): small objects packed, so a backup costs a request per pack, not
//! per object; the same content stored once across keys and across backups; a restore by
//! coalesced ranged GETs; verify that names a missing or damaged pack; a prune that deletes
//! exactly the packs no kept backup references.

use std::collections::{BTreeMap, BTreeSet};

use backup_agent::components::check::{CheckContext, Mode, Sample, Verification};
use backup_agent::components::mlpipeline::{self, PreviousManifest, SyncOptions};
use backup_agent::components::Part;
use backup_agent::context::{Context, Packing, Streaming, Tuning};
use backup_agent::repository::packer::PackSettings;
use backup_agent::repository::retention::Policy;
use backup_agent::repository::{
    self, layout, Components, Entry, MlpipelineCapture, Phase, RequestType, Statefile,
};
use backup_agent::storage::Store;
use backup_agent_sandbox::s3::fault_proxy::FaultProxy;
use futures::TryStreamExt;

use crate::streaming::{s3, server};

const OLD: &str = "20261206T100000Z-aaaaaa";
const NEW: &str = "20261206T110000Z-bbbbbb";

/// Bytes of object `i`: 100 to 3,000 of them, different for every `i`.
fn body(i: usize) -> Vec<u8> {
    format!("object {i};")
        .repeat(1 + (i * 37) % 250)
        .into_bytes()
        .into_iter()
        .take(100 + (i * 131) % 2900)
        .collect()
}

/// Everything of every object: bytes, content type, user metadata.
async fn read_all(store: &Store) -> BTreeMap<String, (Vec<u8>, String, BTreeMap<String, String>)> {
    let mut out = BTreeMap::new();
    for o in store.list("").await.unwrap() {
        let (bytes, meta) = store.get_with_meta(&o.key).await.unwrap();
        out.insert(o.key, (bytes, meta.content_type, meta.metadata));
    }
    out
}

async fn entries(repo: &Store, cap: &MlpipelineCapture) -> BTreeMap<String, Entry> {
    repository::manifest::read(repo, &cap.manifest_key, Some(&cap.manifest_sha256))
        .map_ok(|e| (e.key.clone(), e))
        .try_collect()
        .await
        .unwrap()
}

fn packs_named(entries: &BTreeMap<String, Entry>) -> BTreeSet<String> {
    entries.values().filter_map(|e| e.pack.clone()).collect()
}

async fn packs_listed(repo: &Store) -> BTreeSet<String> {
    repo.list(&layout::packs_prefix())
        .await
        .unwrap()
        .iter()
        .filter_map(|o| layout::pack_of(&o.key).map(str::to_string))
        .collect()
}

pub(crate) fn statefile(id: &str, cap: &MlpipelineCapture) -> Statefile {
    let at = chrono::DateTime::parse_from_rfc3339(&format!(
        "{}-{}-{}T{}:00:00Z",
        &id[..4],
        &id[4..6],
        &id[6..8],
        &id[9..11]
    ))
    .unwrap()
    .with_timezone(&chrono::Utc);
    Statefile {
        schema_version: repository::SCHEMA_VERSION,
        backup_id: id.into(),
        label: "packs".into(),
        request: RequestType::Manual,
        phase: Phase::Completed,
        started_at: at,
        finished_at: Some(at),
        agent_version: "test".into(),
        model: "kubeflow".into(),
        charms: Default::default(),
        requested: vec!["mlpipeline".into()],
        components: Components {
            mlpipeline: Some(cap.clone()),
            ..Default::default()
        },
        quiesce: vec![],
        errors: vec![],
        history: vec![],
        copied_from: None,
        checksum: None,
    }
}

/// The bucket part of verify-backup, as the command runs it.
pub(crate) async fn verify(repo: &Store, sf: &Statefile, mode: Mode) -> Verification {
    let spool = tempfile::tempdir().unwrap();
    let progress = backup_agent::progress::Progress::none();
    let cx = CheckContext {
        dest: repo,
        juju: None,
        mode,
        spool: spool.path(),
        streaming: tiny(),
        progress: &progress,
    };
    let mut v = Verification::new(&sf.backup_id, mode);
    mlpipeline::Mlpipeline.check(&cx, sf, &mut v).await;
    v
}

fn tiny() -> Streaming {
    Streaming {
        page_size: 7,
        queue_depth: 5,
        sort_memory: 500,
        delete_batch: 3,
    }
}

/// What prune needs to run on `repo` alone (no juju: these backups name no mysql parts).
pub(crate) fn context(repo: &Store, scratch: &std::path::Path) -> Context {
    Context {
        juju: backup_agent::juju::JujuCli::with_binary("juju-is-not-needed-here", "packs"),
        names: Default::default(),
        dest: repo.clone(),
        kubeconfig: None,
        tuning: Tuning {
            streaming: tiny(),
            spool: Some(scratch.to_path_buf()),
            ..Tuning::default()
        },
        minio: None,
        progress: backup_agent::progress::Progress::none(),
        interrupt: backup_agent::interrupt::Interrupt::new(),
    }
}

/// Requests the proxy saw since it had seen `since`: those of `method` whose target contains
/// `part`.
fn requests(proxy: &FaultProxy, since: usize, method: &str, part: &str) -> usize {
    proxy.seen()[since..]
        .iter()
        .filter(|s| s.method == method && s.target.contains(part))
        .count()
}

#[test]
fn small_objects_are_packed_deduplicated_restored_by_range_verified_and_pruned_by_pack() {
    let srv = server(&["mlpipeline", "backups", "restored", "repacked"]);
    let endpoint = format!("http://127.0.0.1:{}", srv.0.s3_port);
    let proxy = FaultProxy::start(&endpoint).unwrap();
    let repo = s3(&proxy.endpoint(), "backups", "ckf");
    let source = s3(&endpoint, "mlpipeline", "");
    let restored = s3(&endpoint, "restored", "");
    let tmp = tempfile::tempdir().unwrap();
    let opts = SyncOptions {
        scratch: tmp.path().join("scratch"),
        streaming: tiny(),
        // Packs of 16 KiB: a few hundred small objects make tens of packs.
        packing: Packing {
            threshold: 4096,
            max_unused: 50,
            packs: PackSettings {
                target: 16 << 10,
                in_flight: 2,
                remembered: 1000,
            },
        },
        ..SyncOptions::new(tmp.path().join("spool"))
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 400 small objects, 4 keys sharing one content, 3 empty markers, 2 objects above the
        // threshold (v1 blobs of their own), some with user metadata.
        let small = 400;
        for i in 0..small {
            let meta = BTreeMap::from([("run".to_string(), format!("{i}"))]);
            let mut r = &body(i)[..];
            source
                .put_object(
                    &format!("runs/{i:04}/metrics.json"),
                    &mut r,
                    "application/json",
                    &meta,
                )
                .await
                .unwrap();
        }
        for j in 0..4 {
            source
                .put_bytes(&format!("dup/{j}"), &body(7), "text/plain")
                .await
                .unwrap();
        }
        for j in 0..3 {
            source
                .put_bytes(&format!("runs/{j:04}/_SUCCESS"), b"", "text/plain")
                .await
                .unwrap();
        }
        for j in 0..2 {
            source
                .put_bytes(
                    &format!("models/{j}.bin"),
                    &vec![j as u8 + 1; 20_000],
                    "application/octet-stream",
                )
                .await
                .unwrap();
        }
        let objects = (small + 4 + 3 + 2) as u64;

        // The first backup: one PUT per pack, not per object.
        let since = proxy.seen().len();
        let key = repository::manifest_key(OLD);
        let got = mlpipeline::capture(&source, &repo, None, &key, None, &opts)
            .await
            .unwrap();
        let st = &got.stats;
        assert_eq!(st.objects, objects);
        // Every distinct non-empty content once: 400 small (dup/* is object 7's), 2 large.
        assert_eq!(st.new_objects, small as u64 + 2, "{st:?}");
        let pack_puts = requests(&proxy, since, "PUT", "/packs/");
        let blob_puts = requests(&proxy, since, "PUT", "/blobs/");
        assert_eq!(pack_puts as u64, st.packs, "{st:?}");
        assert_eq!(blob_puts, 2, "the two large objects only");
        let per_object = pack_puts as f64 / (small + 4) as f64;
        assert!(
            per_object < 0.1,
            "{pack_puts} pack PUTs for {} small objects",
            small + 4
        );
        assert_eq!(
            requests(&proxy, since, "PUT", "packs.idx"),
            1,
            "one index file beside the manifest"
        );
        let old = got.record(&key);
        let old_entries = entries(&repo, &old).await;
        assert!(
            old_entries["runs/0000/_SUCCESS"].pack.is_none(),
            "empty: no location"
        );
        assert!(
            old_entries["models/0.bin"].pack.is_none(),
            "large: a blob of its own"
        );
        assert_eq!(
            old_entries["dup/3"].pack,
            old_entries["runs/0007/metrics.json"].pack
        );
        assert_eq!(
            old_entries["dup/3"].offset,
            old_entries["runs/0007/metrics.json"].offset
        );
        let old_sf = statefile(OLD, &old);
        repository::save(&repo, &old_sf).await.unwrap();

        // Changes: 4 objects rewritten with new bytes, 2 with bytes the first backup holds
        // under other keys, 1 new key with such bytes, 60 neighbours deleted (their packs end
        // up referenced by the first backup alone).
        for i in 10..14 {
            source
                .put_bytes(
                    &format!("runs/{i:04}/metrics.json"),
                    format!("new {i}").as_bytes(),
                    "application/json",
                )
                .await
                .unwrap();
        }
        for (i, from) in [(20, 100), (21, 101)] {
            source
                .put_bytes(
                    &format!("runs/{i:04}/metrics.json"),
                    &body(from),
                    "application/json",
                )
                .await
                .unwrap();
        }
        source
            .put_bytes("moved/200", &body(200), "application/json")
            .await
            .unwrap();
        for i in 300..360 {
            source
                .delete(&format!("runs/{i:04}/metrics.json"))
                .await
                .unwrap();
        }
        let since = proxy.seen().len();
        let key = repository::manifest_key(NEW);
        let previous = PreviousManifest {
            backup_id: OLD.into(),
            key: old.manifest_key.clone(),
            sha256: old.manifest_sha256.clone(),
        };
        let got = mlpipeline::capture(&source, &repo, Some(&previous), &key, None, &opts)
            .await
            .unwrap();
        let st = &got.stats;
        assert_eq!((st.read_objects, st.new_objects), (7, 4), "{st:?}");
        assert_eq!(requests(&proxy, since, "PUT", "/packs/") as u64, st.packs);
        assert_eq!(st.packs, 1, "four new contents fit one pack: {st:?}");
        let new = got.record(&key);
        let new_entries = entries(&repo, &new).await;
        // Unchanged objects keep their place; content the first backup held is not stored again.
        let same = |k: &str, j: &str| {
            (new_entries[k].pack.clone(), new_entries[k].offset)
                == (old_entries[j].pack.clone(), old_entries[j].offset)
        };
        assert!(same("runs/0050/metrics.json", "runs/0050/metrics.json"));
        assert!(same("runs/0020/metrics.json", "runs/0100/metrics.json"));
        assert!(same("moved/200", "runs/0200/metrics.json"));
        let new_sf = statefile(NEW, &new);
        repository::save(&repo, &new_sf).await.unwrap();

        // Both verify, light and reading every blob back (inside the packs too).
        for sf in [&old_sf, &new_sf] {
            let v = verify(&repo, sf, Mode::Light).await;
            assert!(v.problems.is_empty(), "{:?}", v.problems);
            let v = verify(&repo, sf, Mode::ReadData(Sample::All)).await;
            assert!(v.problems.is_empty(), "{:?}", v.problems);
            let stored = sf.components.mlpipeline.as_ref().unwrap();
            let distinct: BTreeSet<(Option<String>, Option<u64>, String)> = entries(&repo, stored)
                .await
                .into_values()
                .filter(|e| e.size > 0)
                .map(|e| (e.pack, e.offset, e.sha256))
                .collect();
            assert_eq!(v.blobs_read, distinct.len() as u64, "{}", sf.backup_id);
        }

        // Restore of the second into an empty bucket: everything equal, by few ranged GETs.
        let since = proxy.seen().len();
        mlpipeline::restore(&repo, &restored, &new, None, &opts)
            .await
            .unwrap();
        assert_eq!(read_all(&restored).await, read_all(&source).await);
        let pack_gets = requests(&proxy, since, "GET", "/packs/");
        assert!(
            (pack_gets as u64) < new.objects / 4,
            "{pack_gets} ranged GETs for {} objects",
            new.objects
        );
        assert_eq!(
            requests(&proxy, since, "GET", "/blobs/"),
            2,
            "the large objects"
        );

        // Forgetting the first backup deletes exactly the packs only it referenced.
        let before = packs_listed(&repo).await;
        let only_old: BTreeSet<String> = packs_named(&old_entries)
            .difference(&packs_named(&new_entries))
            .cloned()
            .collect();
        assert!(
            !only_old.is_empty(),
            "the deleted neighbours left packs to the first backup"
        );
        // Packs mostly unused are left to the repack below.
        let mut ctx = context(&repo, &tmp.path().join("scratch"));
        ctx.tuning.packing.max_unused = 100;
        use backup_agent::commands::prune;
        let plan = prune::plan(&ctx, &prune::Selection::One(OLD.into()))
            .await
            .unwrap();
        assert_eq!(plan.packs, only_old.len(), "{}", prune::render_plan(&plan));
        assert!(prune::render_plan(&plan).contains("packs no kept backup uses"));
        prune::run(&ctx, &prune::Selection::One(OLD.into()))
            .await
            .unwrap();
        let after = packs_listed(&repo).await;
        assert_eq!(
            after,
            before
                .difference(&only_old)
                .cloned()
                .collect::<BTreeSet<_>>()
        );
        assert_eq!(packs_named(&new_entries), after);
        let v = verify(&repo, &new_sf, Mode::ReadData(Sample::All)).await;
        assert!(v.problems.is_empty(), "{:?}", v.problems);

        // Repack: the packs the deletions left partly unused are rewritten. The plan says what
        // will go; then the kept manifest moves to a new key, every pack it names exists, the
        // old packs are gone, and the backup still reads back and restores whole.
        ctx.tuning.packing.max_unused = 5;
        let keep_all = prune::Selection::Policy(Policy {
            keep_last: Some(5),
            ..Policy::default()
        });
        let plan = prune::plan(&ctx, &keep_all).await.unwrap();
        assert!(plan.repack_packs > 0, "{}", prune::render_plan(&plan));
        assert!(prune::render_plan(&plan).contains("repacks"));
        assert!(plan.repack_copy_bytes < plan.repack_pack_bytes);
        let sparse = plan.repack_packs;
        let report = prune::run(&ctx, &keep_all).await.unwrap();
        assert_eq!(
            report.objects_deleted as usize, sparse,
            "the repacked packs"
        );
        let new_sf = repository::load(&repo, NEW).await.unwrap();
        let new = new_sf.components.mlpipeline.clone().unwrap();
        assert_ne!(
            new.manifest_key,
            repository::manifest_key(NEW),
            "a new manifest key"
        );
        assert!(repo
            .head(&repository::manifest_key(NEW))
            .await
            .unwrap()
            .is_none());
        let moved = entries(&repo, &new).await;
        assert_eq!(
            moved
                .values()
                .map(|e| (&e.key, &e.sha256, e.size))
                .collect::<Vec<_>>(),
            new_entries
                .values()
                .map(|e| (&e.key, &e.sha256, e.size))
                .collect::<Vec<_>>()
        );
        assert_eq!(packs_named(&moved), packs_listed(&repo).await);
        let v = verify(&repo, &new_sf, Mode::ReadData(Sample::All)).await;
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let again = s3(&endpoint, "repacked", "");
        mlpipeline::restore(&repo, &again, &new, None, &opts)
            .await
            .unwrap();
        assert_eq!(read_all(&again).await, read_all(&source).await);
        // Nothing is left sparse past the setting.
        let plan = prune::plan(&ctx, &keep_all).await.unwrap();
        assert_eq!(plan.repack_packs, 0, "{}", prune::render_plan(&plan));
        let new_entries = moved;

        // Damage: one pack's byte flipped (same length): the light check passes, read-data
        // and restore name it, and the object it holds is not written.
        let victim = &new_entries["runs/0050/metrics.json"];
        let pack_key = layout::pack_key(victim.pack.as_deref().unwrap());
        let mut bytes = repo.get_bytes(&pack_key).await.unwrap();
        bytes[victim.offset.unwrap() as usize] ^= 0xff;
        repo.put_bytes(&pack_key, &bytes, "application/octet-stream")
            .await
            .unwrap();
        assert!(verify(&repo, &new_sf, Mode::Light)
            .await
            .problems
            .is_empty());
        let v = verify(&repo, &new_sf, Mode::ReadData(Sample::All)).await;
        assert!(
            v.problems.iter().any(|p| p.key == pack_key
                && p.detail.contains("corrupted")
                && p.detail.contains("runs/0050/metrics.json")),
            "names the pack and the object: {:?}",
            v.problems
        );
        restored.delete("runs/0050/metrics.json").await.unwrap();
        let e = mlpipeline::restore(&repo, &restored, &new, None, &opts)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("corrupted"), "{e}");
        assert!(restored
            .head("runs/0050/metrics.json")
            .await
            .unwrap()
            .is_none());

        // A pack gone: the light check names it and an object whose bytes were in it.
        repo.delete(&pack_key).await.unwrap();
        let v = verify(&repo, &new_sf, Mode::Light).await;
        let missing = v
            .problems
            .iter()
            .find(|p| p.key == pack_key)
            .unwrap_or_else(|| panic!("{:?}", v.problems));
        assert!(missing.detail.contains("missing"), "{missing:?}");
        assert!(missing.detail.contains("runs/"), "{missing:?}");
    });
    assert_eq!(
        std::fs::read_dir(tmp.path().join("scratch")).map_or(0, |d| d.count()),
        0,
        "scratch left behind"
    );
}

/// `runs/0000/metrics.json` .. for `n` objects, object `i` holding `body(i)`.
async fn put_runs(source: &Store, n: usize) {
    for i in 0..n {
        source
            .put_bytes(
                &format!("runs/{i:04}/metrics.json"),
                &body(i),
                "application/json",
            )
            .await
            .unwrap();
    }
}

/// Packs of 16 KiB and a small threshold: a few hundred small objects make tens of packs.
fn small_packs(tmp: &std::path::Path, max_unused: u8) -> SyncOptions {
    SyncOptions {
        scratch: tmp.join("scratch"),
        streaming: tiny(),
        packing: Packing {
            threshold: 4096,
            max_unused,
            packs: PackSettings {
                target: 16 << 10,
                in_flight: 2,
                remembered: 1000,
            },
        },
        ..SyncOptions::new(tmp.join("spool"))
    }
}

/// A backup of `source` as create-backup records it (manifest, then statefile), after
/// `previous` if given.
async fn backup(
    source: &Store,
    repo: &Store,
    id: &str,
    previous: Option<&MlpipelineCapture>,
    opts: &SyncOptions,
) -> MlpipelineCapture {
    let key = repository::manifest_key(id);
    let previous = previous.map(|p| PreviousManifest {
        backup_id: String::new(),
        key: p.manifest_key.clone(),
        sha256: p.manifest_sha256.clone(),
    });
    let got = mlpipeline::capture(source, repo, previous.as_ref(), &key, None, opts)
        .await
        .unwrap();
    let cap = got.record(&key);
    repository::save(repo, &statefile(id, &cap)).await.unwrap();
    cap
}

#[test]
fn one_object_downloads_by_a_ranged_get_of_its_own_bytes() {
    use backup_agent::commands::download::{self, DownloadError, Include};
    let srv = server(&["mlpipeline", "backups"]);
    let endpoint = format!("http://127.0.0.1:{}", srv.0.s3_port);
    let proxy = FaultProxy::start(&endpoint).unwrap();
    let repo = s3(&proxy.endpoint(), "backups", "ckf");
    let source = s3(&endpoint, "mlpipeline", "");
    let tmp = tempfile::tempdir().unwrap();
    let opts = small_packs(tmp.path(), 50);
    let ctx = context(&repo, &tmp.path().join("scratch"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        put_runs(&source, 300).await;
        for j in 0..3 {
            source
                .put_bytes(
                    &format!("models/{j}/model.bin"),
                    &body(j),
                    "application/octet-stream",
                )
                .await
                .unwrap();
        }
        let cap = backup(&source, &repo, OLD, None, &opts).await;
        let e = entries(&repo, &cap).await["runs/0142/metrics.json"].clone();
        assert!(e.pack.is_some(), "the object is packed: {e:?}");
        let offset = e.offset.unwrap();

        // One key: one ranged GET of exactly its bytes, no other pack or blob read.
        let since = proxy.seen().len();
        let one = Include::new(&["runs/0142/metrics.json".into()]).unwrap();
        let dir = tmp.path().join("one");
        let report = download::run(&ctx, OLD, &dir, Some(&one)).await.unwrap();
        let seen = &proxy.seen()[since..];
        let reads: Vec<_> = seen
            .iter()
            .filter(|s| {
                s.method == "GET" && (s.target.contains("/packs/") || s.target.contains("/blobs/"))
            })
            .collect();
        assert_eq!(reads.len(), 1, "{reads:?}");
        assert_eq!(
            reads[0].range.as_deref(),
            Some(format!("bytes={offset}-{}", offset + e.size - 1).as_str()),
            "only the object's own bytes"
        );
        assert_eq!(report.mlpipeline_objects, 1);
        assert_eq!(report.mlmd, None);
        assert_eq!(
            std::fs::read(dir.join("mlpipeline/runs/0142/metrics.json")).unwrap(),
            body(142)
        );
        let written: Vec<_> = walk(&dir);
        assert_eq!(
            written,
            ["mlpipeline/runs/0142/metrics.json", "statefile.json"]
        );

        // A glob within one segment, a prefix, a `**`: each takes what it names, no more.
        for (patterns, want) in [
            (vec!["runs/001?/metrics.json"], 10),
            (vec!["models/"], 3),
            (vec!["**/model.bin", "runs/0000/*"], 4),
            (vec!["runs/*.json"], 0),
        ] {
            let patterns: Vec<String> = patterns.into_iter().map(str::to_string).collect();
            let inc = Include::new(&patterns).unwrap();
            let dir = tmp
                .path()
                .join(format!("some-{}", patterns.join("+").replace('/', "_")));
            match download::run(&ctx, OLD, &dir, Some(&inc)).await {
                Ok(r) => {
                    assert_eq!(r.mlpipeline_objects, want, "{patterns:?}");
                    assert_eq!(walk(&dir).len() as u64, want + 1, "{patterns:?}");
                }
                Err(DownloadError::NothingMatched { patterns: p, .. }) => {
                    assert_eq!(want, 0, "{patterns:?}");
                    assert!(p.contains("runs/*.json"), "{p}");
                    assert!(!dir.exists(), "nothing left behind when nothing matched");
                }
                Err(e) => panic!("{patterns:?}: {e}"),
            }
        }
    });
    let bad = Include::parse("runs/[0-9").unwrap_err();
    assert!(
        bad.contains("runs/[0-9") && bad.contains("not a valid pattern"),
        "{bad}"
    );
    assert!(Include::parse("").unwrap_err().contains("empty pattern"));
}

/// Files under `dir`, as sorted relative paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    crate::streaming::files(dir).into_keys().collect()
}

/// For each pack in the repository: its bytes, and the bytes the kept backups' manifests
/// leave unused in it (by the same allowance for headers and trailers as prune uses).
async fn pack_usage(repo: &Store, kept: &[&MlpipelineCapture]) -> BTreeMap<String, (u64, u64)> {
    use backup_agent::repository::pack_refs::{PackRef, PackUse};
    let mut refs: BTreeMap<String, BTreeSet<PackRef>> = BTreeMap::new();
    for cap in kept {
        for e in entries(repo, cap).await.into_values() {
            if let (Some(p), Some(r)) = (e.pack.clone(), PackRef::of(&e)) {
                refs.entry(p).or_default().insert(r);
            }
        }
    }
    let mut out = BTreeMap::new();
    for o in repo.list(&layout::packs_prefix()).await.unwrap() {
        let Some(id) = layout::pack_of(&o.key) else {
            continue;
        };
        let used = refs.get(id).cloned().unwrap_or_default();
        let unused = match used.first() {
            None => o.size,
            Some(first) => PackUse {
                pack: first.pack,
                refs: used.into_iter().collect(),
            }
            .unused(o.size),
        };
        out.insert(id.to_string(), (o.size, unused));
    }
    out
}

#[test]
fn prune_after_half_the_backups_leaves_no_pack_past_the_unused_fraction() {
    use backup_agent::commands::prune;
    let srv = server(&["mlpipeline", "backups"]);
    let endpoint = format!("http://127.0.0.1:{}", srv.0.s3_port);
    let repo = s3(&endpoint, "backups", "ckf");
    let source = s3(&endpoint, "mlpipeline", "");
    let tmp = tempfile::tempdir().unwrap();
    let max_unused = 30;
    let opts = small_packs(tmp.path(), max_unused);
    let mut ctx = context(&repo, &tmp.path().join("scratch"));
    ctx.tuning.packing = opts.packing;
    let ids: Vec<String> = (0..6)
        .map(|d| format!("2026120{}T100000Z-{d:06}", d + 1))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Six daily backups; each day rewrites a different fifth of the 250 objects and deletes
        // a few, so the first days' packs end up partly used by the newest three.
        put_runs(&source, 250).await;
        let mut caps: Vec<MlpipelineCapture> = vec![];
        for (day, id) in ids.iter().enumerate() {
            if day > 0 {
                for i in (0..250).filter(|i| i % 5 == day % 5) {
                    source
                        .put_bytes(
                            &format!("runs/{i:04}/metrics.json"),
                            &body(1000 * day + i),
                            "application/json",
                        )
                        .await
                        .unwrap();
                }
                source
                    .delete(&format!("runs/{:04}/metrics.json", 240 + day))
                    .await
                    .unwrap();
            }
            // Scratch that lives one day: whole packs only the forgotten backups use.
            for i in 0..40 {
                if day > 0 {
                    let gone = format!("tmp/{}/{i:02}", day - 1);
                    source.delete(&gone).await.unwrap();
                }
                if day < 3 {
                    let key = format!("tmp/{day}/{i:02}");
                    source
                        .put_bytes(&key, &body(5000 + 100 * day + i), "text/plain")
                        .await
                        .unwrap();
                }
            }
            let cap = backup(&source, &repo, id, caps.last(), &opts).await;
            caps.push(cap);
        }
        let fraction = |(size, unused): (u64, u64)| unused as f64 / size as f64;
        let kept: Vec<&MlpipelineCapture> = caps[3..].iter().collect();
        let before = pack_usage(&repo, &kept).await;
        let sparse = before
            .values()
            .filter(|u| u.1 > 0 && u.1 < u.0 && fraction(**u) > f64::from(max_unused) / 100.0)
            .count();
        assert!(
            sparse > 0,
            "the forgotten days leave packs past {max_unused}% unused: {before:?}"
        );
        assert!(
            before.values().any(|u| u.1 == u.0),
            "and packs no kept backup uses"
        );

        let keep = prune::Selection::Policy(Policy {
            keep_last: Some(3),
            ..Policy::default()
        });
        let report = prune::run(&ctx, &keep).await.unwrap();
        assert_eq!(report.forgotten, ids[..3].to_vec());

        // The kept backups moved to new manifests if repacked: read them from their statefiles.
        let mut kept = vec![];
        for id in &ids[3..] {
            let sf = repository::load(&repo, id).await.unwrap();
            let v = verify(&repo, &sf, Mode::ReadData(Sample::All)).await;
            assert!(v.problems.is_empty(), "{id}: {:?}", v.problems);
            kept.push(sf.components.mlpipeline.unwrap());
        }
        let after = pack_usage(&repo, &kept.iter().collect::<Vec<_>>()).await;
        for (pack, u) in &after {
            assert!(
                fraction(*u) <= f64::from(max_unused) / 100.0,
                "pack {pack}: {} of {} bytes unused, past {max_unused}%",
                u.1,
                u.0
            );
        }
        // And a second prune finds nothing left to do.
        let plan = prune::plan(&ctx, &keep).await.unwrap();
        assert_eq!(
            (plan.packs, plan.repack_packs),
            (0, 0),
            "{}",
            prune::render_plan(&plan)
        );
    });
}

/// Bytes of large object `i`: past the in-memory limit, different for every `i`.
fn large_body(i: usize) -> Vec<u8> {
    let len = mlpipeline::IN_MEMORY_MAX as usize + (1 << 20) + i * 4099;
    (0..len)
        .map(|j| ((j * (i + 3) + j / 4096) % 251) as u8)
        .collect()
}

#[test]
fn large_objects_stream_into_packs_of_their_own_and_back() {
    use backup_agent::commands::download::{self, Include};
    use backup_agent::commands::prune;
    let srv = server(&["mlpipeline", "backups", "restored"]);
    let endpoint = format!("http://127.0.0.1:{}", srv.0.s3_port);
    let proxy = FaultProxy::start(&endpoint).unwrap();
    let repo = s3(&proxy.endpoint(), "backups", "ckf");
    let source = s3(&endpoint, "mlpipeline", "");
    let restored = s3(&endpoint, "restored", "");
    let tmp = tempfile::tempdir().unwrap();
    let opts = small_packs(tmp.path(), 0);
    let mut ctx = context(&repo, &tmp.path().join("scratch"));
    ctx.tuning.packing = opts.packing;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let meta = BTreeMap::from([("run".to_string(), "7f3a".to_string())]);
        for (key, i) in [
            ("models/a.bin", 0),
            ("models/b.bin", 1),
            ("copies/a.bin", 0),
        ] {
            let mut r = &large_body(i)[..];
            source
                .put_object(key, &mut r, "application/x-tar", &meta)
                .await
                .unwrap();
        }
        put_runs(&source, 20).await;

        // Each large content in one pack of its own, uploaded in parts; the copy of a.bin
        // names a.bin's pack (its own upload deleted again); nothing under blobs/.
        let since = proxy.seen().len();
        let first = backup(&source, &repo, OLD, None, &opts).await;
        assert_eq!(requests(&proxy, since, "PUT", "/blobs/"), 0);
        let got = entries(&repo, &first).await;
        let (a, b, copy) = (
            &got["models/a.bin"],
            &got["models/b.bin"],
            &got["copies/a.bin"],
        );
        for e in [a, b, copy] {
            assert_eq!(
                e.offset,
                Some(backup_agent::repository::pack::HEADER_LEN),
                "{e:?}"
            );
        }
        assert_eq!(copy.pack, a.pack, "one pack for one content");
        assert_ne!(a.pack, b.pack);
        let listed = packs_listed(&repo).await;
        assert!(
            listed.contains(a.pack.as_ref().unwrap()) && listed.contains(b.pack.as_ref().unwrap())
        );
        assert_eq!(
            listed,
            packs_named(&got),
            "no pack left that no entry names"
        );
        assert_eq!(a.size, large_body(0).len() as u64);

        // Read back: verify hashes each large blob as it streams; restore and download read
        // exactly each one's range.
        let sf = statefile(OLD, &first);
        let v = verify(&repo, &sf, Mode::ReadData(Sample::All)).await;
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let since = proxy.seen().len();
        mlpipeline::restore(&repo, &restored, &first, None, &opts)
            .await
            .unwrap();
        assert_eq!(read_all(&restored).await, read_all(&source).await);
        let ranges: Vec<String> = proxy.seen()[since..]
            .iter()
            .filter(|s| s.target.contains(a.pack.as_deref().unwrap()))
            .filter_map(|s| s.range.clone())
            .collect();
        let want = format!("bytes=8-{}", 8 + a.size - 1);
        assert_eq!(ranges, [want.clone(), want.clone()], "a.bin and its copy");
        let inc = Include::new(&["models/a.bin".into()]).unwrap();
        let dir = tmp.path().join("one");
        download::run(&ctx, OLD, &dir, Some(&inc)).await.unwrap();
        assert_eq!(
            std::fs::read(dir.join("mlpipeline/models/a.bin")).unwrap(),
            large_body(0)
        );

        // A byte flipped inside a.bin's pack: read-data names both keys holding it, and a
        // restore does not write a.bin.
        let pack_key = layout::pack_key(a.pack.as_deref().unwrap());
        let mut bytes = repo.get_bytes(&pack_key).await.unwrap();
        bytes[8 + 5_000_000] ^= 0xff;
        repo.put_bytes(&pack_key, &bytes, "application/octet-stream")
            .await
            .unwrap();
        let v = verify(&repo, &sf, Mode::ReadData(Sample::All)).await;
        let named = v
            .problems
            .iter()
            .find(|p| p.key == pack_key)
            .unwrap_or_else(|| panic!("{:?}", v.problems));
        assert!(
            named.detail.contains("models/a.bin") && named.detail.contains("copies/a.bin"),
            "{named:?}"
        );
        restored.delete("models/a.bin").await.unwrap();
        assert!(mlpipeline::restore(&repo, &restored, &first, None, &opts)
            .await
            .is_err());
        assert!(restored.head("models/a.bin").await.unwrap().is_none());
        bytes[8 + 5_000_000] ^= 0xff;
        repo.put_bytes(&pack_key, &bytes, "application/octet-stream")
            .await
            .unwrap();

        // b.bin changes: once the first backup is forgotten, its old pack goes whole; a pack of
        // one blob is never sparse, so --max-unused 0 repacks nothing.
        let mut r = &large_body(2)[..];
        source
            .put_object("models/b.bin", &mut r, "application/x-tar", &meta)
            .await
            .unwrap();
        let second = backup(&source, &repo, NEW, Some(&first), &opts).await;
        let now = entries(&repo, &second).await;
        assert_eq!(
            now["models/a.bin"].pack, a.pack,
            "unchanged: not read again"
        );
        assert_ne!(now["models/b.bin"].pack, b.pack);
        let plan = prune::plan(&ctx, &prune::Selection::One(OLD.into()))
            .await
            .unwrap();
        assert_eq!(
            (plan.packs, plan.repack_packs),
            (1, 0),
            "{}",
            prune::render_plan(&plan)
        );
        prune::run(&ctx, &prune::Selection::One(OLD.into()))
            .await
            .unwrap();
        assert!(!packs_listed(&repo).await.contains(b.pack.as_ref().unwrap()));
        let v = verify(&repo, &statefile(NEW, &second), Mode::ReadData(Sample::All)).await;
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    });
}

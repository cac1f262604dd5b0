//! MLMD's part of a check: the dump is there with its size; read back, it decompresses to the
//! recorded hash and SQLite's integrity_check and row counts agree.

use std::path::Path;

use crate::components::check::{problem, Mode, Verification};
use crate::repository::Statefile;
use crate::retry::retry;
use crate::storage::Store;

pub(crate) async fn check(
    dest: &Store,
    sf: &Statefile,
    mode: Mode,
    spool: &Path,
    v: &mut Verification,
) {
    let Some(m) = &sf.components.mlmd else {
        return;
    };
    v.objects_checked += 1;
    match retry(crate::retry::ATTEMPTS, &m.key, || dest.head(&m.key)).await {
        Ok(Some(o)) if o.size == m.compressed_size => {}
        Ok(Some(o)) => {
            v.problems.push(problem(
                "mlmd",
                &m.key,
                format!(
                    "{} bytes, the statefile records {}",
                    o.size, m.compressed_size
                ),
            ));
            return;
        }
        Ok(None) => {
            v.problems.push(problem("mlmd", &m.key, "missing"));
            return;
        }
        Err(e) => {
            v.problems.push(problem("mlmd", &m.key, e.to_string()));
            return;
        }
    }
    if mode.reads_data() {
        let tmp = match tempfile::Builder::new()
            .prefix("verify-mlmd-")
            .tempdir_in(spool)
        {
            Ok(t) => t,
            Err(e) => {
                v.problems
                    .push(problem("mlmd", &m.key, format!("spool: {e}")));
                return;
            }
        };
        v.bytes_read += m.compressed_size;
        if let Err(e) = super::fetch_and_verify(dest, m, &tmp.path().join("mlmd.db")).await {
            v.problems.push(problem("mlmd", &m.key, e));
        }
    }
}

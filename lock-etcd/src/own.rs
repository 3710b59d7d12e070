//! Key ownership: removing a locker's key and its lock-delay record, guarded by the key's create
//! revision, so that a removal that lands late never takes a later incarnation. The locker's
//! releases and background removals, and the exit flush (`exit`), stand on it.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use tokio::sync::Notify;

/// A txn that deletes `key` and `record` if the key's create revision is `rev` (the
/// incarnation meant, and no later one), or else `record` alone if it is the one put with that
/// incarnation (the key went behind the holder's back, and the holder knows now).
pub(crate) fn release(key: &str, record: Option<&[u8]>, rev: i64) -> Txn {
    let mut then = vec![TxnOp::delete(key, None)];
    let mut otherwise = Vec::new();
    if let Some(record) = record {
        then.push(TxnOp::delete(record, None));
        otherwise.push(TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision(record, CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(record, None)]),
        ));
    }
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, rev)])
        .and_then(then)
        .or_else(otherwise)
}

/// One try at removing the incarnation of `key` created at `*rev`, with `record`; with
/// `*rev == 0` it first reads which incarnation exists (of the key, else of the record left
/// behind) and remembers it, so a retry targets the same one.
pub(crate) async fn remove(
    mut kv: KvClient,
    key: &str,
    record: Option<&[u8]>,
    rev: &mut i64,
) -> Result<(), etcd_client::Error> {
    if *rev == 0 {
        let options = || Some(GetOptions::new().with_keys_only());
        let mut reads = vec![TxnOp::get(key, options())];
        reads.extend(record.map(|record| TxnOp::get(record, options())));
        let resp = kv.txn(Txn::new().and_then(reads)).await?;
        let found = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
            _ => None,
        });
        match found {
            Some(created) => *rev = created,
            None => return Ok(()),
        }
    }
    kv.txn(release(key, record, *rev)).await.map(drop)
}

/// A background removal of a locker's key and record, to wait for.
pub(crate) struct Removal(pub(crate) Arc<AtomicBool>, pub(crate) Arc<Notify>);

impl Removal {
    /// Returns once the removal has finished (etcd confirmed it, or it gave up).
    pub(crate) async fn finished(&self) {
        loop {
            let notified = self.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.load(SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

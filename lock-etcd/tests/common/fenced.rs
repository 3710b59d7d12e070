//! The protected resource of the fault tests and the torture run: `<prefix>res/<id>`, written
//! by a txn only if its stored token is older than the writer's.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use lock_core::backend::OpFuture;
use lock_testkit::contend::Fenced;

/// Fenced writes to etcd keys under `prefix`.
pub struct EtcdResource {
    pub client: Client,
    pub prefix: String,
}

impl EtcdResource {
    pub async fn write_token(&self, id: &str, token: u64) -> Option<(bool, i64)> {
        let (data, tkey) = (
            format!("{}res/{id}", self.prefix),
            format!("{}res/{id}.token", self.prefix),
        );
        let padded = format!("{token:020}"); // zero-padded: text order is number order
        let put = [
            TxnOp::put(data.as_str(), padded.as_str(), None),
            TxnOp::put(tkey.as_str(), padded.as_str(), None),
        ];
        let mut kv = self.client.kv_client();
        let first = Compare::version(tkey.as_str(), CompareOp::Equal, 0);
        let newer = Compare::value(tkey.as_str(), CompareOp::Less, padded.as_str());
        for compare in [first, newer] {
            let txn = Txn::new().when([compare]).and_then(put.clone());
            let resp = tokio::time::timeout(Duration::from_secs(3), kv.txn(txn))
                .await
                .ok()?
                .ok()?;
            if resp.succeeded() {
                return Some((true, resp.header().map_or(0, |h| h.revision())));
            }
        }
        Some((false, 0))
    }
}

impl Fenced for EtcdResource {
    fn write<'a>(&'a self, id: &'a str, token: u64) -> OpFuture<'a, Option<(bool, i64)>> {
        OpFuture::boxed(self.write_token(id, token))
    }
}

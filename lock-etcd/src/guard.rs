//! Guarded writes: an etcd transaction of the application's own that succeeds only while a
//! hold still exists on the server — fencing enforced by etcd, not only issued.

use etcd_client::{Compare, CompareOp};
use lock_core::Held;

use crate::EtcdLocker;

/// A compare that is true only while `held`'s hold exists on the server: the holder's key, with
/// the create revision that is its fencing token. Put it in the `when` of a transaction of
/// your own on the same cluster, and etcd applies the transaction's `and_then` operations only
/// while the hold lasts — what Go's `concurrency.Mutex.IsOwner()` gives.
///
/// Once the hold ended on the server — released, its key deleted, its lease expired or
/// revoked — the compare is false, and it stays false: a later hold (this locker's or anyone
/// else's) has another key or another create revision. Since nobody else is granted the lock
/// while this key exists, a guarded write can never land beside another holder's, whatever the
/// clocks, pauses or lagging watches of either side. `is_lost()` tells the holder it should stop;
/// the guard makes a write that comes too late fail.
///
/// `None` if `held` is not a hold of an `etcd:` service. etcd-client's `Txn::when` takes all
/// compares at once: pass this one together with your own.
///
/// ```no_run
/// # async fn example(held: &lock_core::Held, endpoints: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
/// use etcd_client::{Client, Txn, TxnOp};
///
/// let mut client = Client::connect(endpoints, None).await?;
/// let guard = lock_etcd::guard(held).ok_or("not an etcd: hold")?;
/// let txn = Txn::new()
///     .when([guard])
///     .and_then([TxnOp::put("jobs/nightly/state", "done", None)]);
/// if !client.txn(txn).await?.succeeded() {
///     // The hold had ended on the server: nothing was written.
///     return Err("lost the lock before the write".into());
/// }
/// # Ok(())
/// # }
/// ```
pub fn guard(held: &Held) -> Option<Compare> {
    let locker = lock_core::backend::as_any(held.locker())?.downcast_ref::<EtcdLocker>()?;
    let token = i64::try_from(held.fencing_token()).ok()?;
    Some(Compare::create_revision(
        locker.key(),
        CompareOp::Equal,
        token,
    ))
}

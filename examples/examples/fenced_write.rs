//! Fencing: a holder that stalls (a GC pause, a partition) and wakes after its lock passed to
//! someone else still "believes" it holds the lock; its writes must not land. Two ways to make
//! sure, both shown here:
//!
//! - the resource remembers the highest fencing token it accepted and refuses older ones (an
//!   in-memory stand-in on `local:`; `fenced_put` on etcd — the guide's function — and SQL's
//!   `... WHERE token <= $2` elsewhere);
//! - on etcd, a **guarded write**: the write is a transaction that etcd applies only while the
//!   hold still exists on the server (`lock::etcd::guard`).
//!
//! ```sh
//! cargo run --example fenced_write                                         # local:
//! cargo run --example fenced_write --features etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::error::Error;
use std::time::Duration;

use lock::{Held, SessionConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service = lock::new(&uri).await?;
    let mut resource = Resource::open(&uri).await?;
    let config = SessionConfig::new(Duration::from_secs(10));
    let (slow, fast) = (
        service.new_session(config).await?,
        service.new_session(config).await?,
    );

    // The slow holder takes the lock and writes, twice with the same token (a holder writes
    // as often as it likes while it holds).
    let stale = slow.new_locker(resource.id()).lock().await?;
    assert!(resource.write(&stale, "first write").await?);
    assert!(resource.write(&stale, "second write, same token").await?);
    // Then it stalls, and its session ends meanwhile (here: closed; in production: its lease
    // expired or was revoked while it was paused or cut off).
    slow.close().await?;
    assert!(stale.is_lost());

    // The next holder writes with its newer token.
    let fresh = fast.new_locker(resource.id()).lock().await?;
    assert!(resource.write(&fresh, "written by the new holder").await?);

    // The stalled holder wakes up and writes without looking at `is_lost()`: refused.
    assert!(
        !resource.write(&stale, "stale write").await?,
        "a stale write was accepted"
    );
    println!("value: {}", resource.value().await?);
    fresh.unlock().await?;
    resource.clean_up().await?;
    service.close().await?;
    Ok(())
}

/// What the lock protects: a value in memory (any backend), or a key in etcd itself.
enum Resource {
    /// The highest token accepted, and the value.
    Memory(u64, String),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::Store>),
}

impl Resource {
    async fn open(uri: &str) -> Result<Resource, Box<dyn Error>> {
        #[cfg(feature = "etcd")]
        if uri.starts_with("etcd:") {
            return Ok(Resource::Etcd(Box::new(etcd::Store::open(uri).await?)));
        }
        let _ = uri;
        Ok(Resource::Memory(0, String::new()))
    }

    fn id(&self) -> &str {
        match self {
            Resource::Memory(..) => "report",
            #[cfg(feature = "etcd")]
            Resource::Etcd(store) => &store.id,
        }
    }

    /// Writes `value` under `held`; whether the resource accepted it.
    async fn write(&mut self, held: &Held, value: &str) -> Result<bool, Box<dyn Error>> {
        let token = held.fencing_token();
        match self {
            // The resource's side of fencing: accept a token at least as high as any seen.
            Resource::Memory(highest, stored) => {
                if token < *highest {
                    println!("rejected: token {token} is older than {highest}");
                    return Ok(false);
                }
                (*highest, *stored) = (token, value.to_owned());
                Ok(true)
            }
            #[cfg(feature = "etcd")]
            Resource::Etcd(store) => store.write(held, value).await,
        }
    }

    async fn value(&mut self) -> Result<String, Box<dyn Error>> {
        match self {
            Resource::Memory(_, stored) => Ok(stored.clone()),
            #[cfg(feature = "etcd")]
            Resource::Etcd(store) => store.value().await,
        }
    }

    async fn clean_up(&mut self) -> Result<(), Box<dyn Error>> {
        match self {
            Resource::Memory(..) => Ok(()),
            #[cfg(feature = "etcd")]
            Resource::Etcd(store) => store.clean_up().await,
        }
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use std::error::Error;

    use lock::etcd::etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp};
    use lock::etcd::EtcdConfig;
    use lock::Held;

    /// Two keys of the same cluster: one written with guarded writes, one with `fenced_put`.
    pub(crate) struct Store {
        client: Client,
        pub(crate) id: String,
        guarded: String,
        fenced: String,
    }

    impl Store {
        pub(crate) async fn open(uri: &str) -> Result<Store, Box<dyn Error>> {
            let config = EtcdConfig::from_uri(uri)?;
            let client = Client::connect(&config.endpoints, None).await?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            let root = format!("fenced_write/{nanos:x}/");
            Ok(Store {
                client,
                id: format!("report-{nanos:x}"),
                guarded: format!("{root}guarded"),
                fenced: format!("{root}fenced"),
            })
        }

        /// Both ways; they must agree.
        pub(crate) async fn write(
            &mut self,
            held: &Held,
            value: &str,
        ) -> Result<bool, Box<dyn Error>> {
            let guard = lock::etcd::guard(held).ok_or("not a hold of an etcd: service")?;
            let txn =
                Txn::new()
                    .when([guard])
                    .and_then([TxnOp::put(self.guarded.as_str(), value, None)]);
            let guarded = self.client.txn(txn).await?.succeeded();
            let token = held.fencing_token();
            let fenced = fenced_put(&mut self.client, &self.fenced, token, value).await?;
            if !guarded {
                println!("guarded write refused: the hold (token {token}) ended on the server");
            }
            if !fenced {
                println!("fenced_put refused: a newer token than {token} wrote first");
            }
            assert_eq!(guarded, fenced, "the guard and the token disagree");
            Ok(guarded)
        }

        pub(crate) async fn value(&mut self) -> Result<String, Box<dyn Error>> {
            let mut values = Vec::new();
            for key in [&self.guarded, &self.fenced] {
                let resp = self.client.get(key.as_str(), None).await?;
                let kv = resp.kvs().first().ok_or("nothing written")?;
                values.push(kv.value_str()?.to_owned());
            }
            assert_eq!(values[0], values[1]);
            Ok(values.swap_remove(0))
        }

        pub(crate) async fn clean_up(&mut self) -> Result<(), Box<dyn Error>> {
            let root = self.guarded.trim_end_matches("guarded");
            let options = DeleteOptions::new().with_prefix();
            self.client.delete(root, Some(options)).await?;
            Ok(())
        }
    }

    /// Writes `value` under `key` unless a holder with a newer token wrote first: a holder may
    /// write as often as it likes with its token (`<=`, like the SQL
    /// `UPDATE t SET value = $1, token = $2 WHERE id = $3 AND token <= $2`). The same function
    /// as in the guide.
    pub(crate) async fn fenced_put(
        client: &mut Client,
        key: &str,
        token: u64,
        value: &str,
    ) -> Result<bool, lock::etcd::etcd_client::Error> {
        let token_key = format!("{key}.token");
        let token_text = format!("{token:020}"); // zero-padded: text order is number order
                                                 // Refuse only if a newer token is stored. (Comparing the value of a missing key is
                                                 // false in etcd: the very first write goes through the `or_else` branch too.)
        let txn = Txn::new()
            .when([Compare::value(
                token_key.as_str(),
                CompareOp::Greater,
                token_text.as_str(),
            )])
            .or_else([
                TxnOp::put(key, value, None),
                TxnOp::put(token_key.as_str(), token_text.as_str(), None),
            ]);
        Ok(!client.txn(txn).await?.succeeded())
    }
}

//! A `#[hsipc::service]` on the smol hub: `cargo run --example smol_service --features smol`.
//!
//! The same trait, generated service and client as with tokio; only the hub
//! (`hsipc::smol::ProcessHub`) and the executor (`smol::block_on`) change. One process serves
//! and calls here; on the bus named by `HSIPC_BUS`, any other process (tokio, smol or
//! blocking) could call it too.

use std::collections::HashMap;
use std::sync::Mutex;

use hsipc::ClientError;
use hsipc::smol::ProcessHub;
use serde::{Deserialize, Serialize};

/// The service's own error, returned to the client typed.
#[derive(Debug, Serialize, Deserialize)]
enum StoreError {
    NotFound(String),
}

/// A key-value store.
#[hsipc::service(name = "kv")]
trait Store {
    /// Sets `key`; returns its previous value.
    async fn set(&self, key: String, value: String) -> hsipc::Result<Option<String>>;
    /// The value of `key`.
    async fn get(&self, key: String) -> Result<String, StoreError>;
    /// How many keys there are: a plain method (it runs on smol's blocking pool).
    fn len(&self) -> hsipc::Result<usize>;
}

#[derive(Default)]
struct MemoryStore {
    map: Mutex<HashMap<String, String>>,
}

impl Store for MemoryStore {
    async fn set(&self, key: String, value: String) -> hsipc::Result<Option<String>> {
        Ok(self.map.lock().unwrap().insert(key, value))
    }

    async fn get(&self, key: String) -> Result<String, StoreError> {
        self.map.lock().unwrap().get(&key).cloned().ok_or(StoreError::NotFound(key))
    }

    fn len(&self) -> hsipc::Result<usize> {
        Ok(self.map.lock().unwrap().len())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(async {
        let hub = ProcessHub::new("kv-smol").await?;
        hub.register_service(StoreService::new(MemoryStore::default())).await?;

        let kv = StoreClient::new(hub.clone());
        kv.set("language".to_string(), "Rust".to_string()).await?;
        let previous = kv.set("runtime".to_string(), "tokio".to_string()).await?;
        println!("set runtime = tokio (previous: {previous:?})");
        let previous = kv.set("runtime".to_string(), "smol".to_string()).await?;
        println!("set runtime = smol (previous: {previous:?})");
        println!("get runtime = {}", kv.get("runtime".to_string()).await?);
        match kv.get("colour".to_string()).await {
            Err(ClientError::Service(StoreError::NotFound(key))) => println!("get {key}: not found"),
            other => println!("get colour: {other:?}?!"),
        }
        println!("len = {}", kv.len().await?);

        hub.close().await;
        Ok(())
    })
}

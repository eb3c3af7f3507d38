//! Cancel keys: the proxy hands each client its own BackendKeyData and maps it
//! to whichever server backend is running that client's transaction.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The backend a client is attached to right now, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerKey {
    /// Backend process id.
    pub pid: i32,
    /// Backend secret.
    pub secret: i32,
}

/// One client's cancel slot. The session holds the lock only to swap the
/// backend in or out; a cancel holds it while sending, so the backend cannot
/// be handed to another client before the cancel request has left.
pub type Slot = Arc<Mutex<Option<ServerKey>>>;

struct Entry {
    secret: i32,
    slot: Slot,
}

/// All live clients' cancel keys.
pub struct Registry {
    clients: DashMap<i32, Entry>,
    upstream: (String, u16),
}

/// Removes a client's key when its session ends.
pub struct Registration {
    registry: Arc<Registry>,
    /// The key given to the client.
    pub pid: i32,
    /// The secret given to the client.
    pub secret: i32,
    /// Where the session records its current backend.
    pub slot: Slot,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.pid);
    }
}

impl Registry {
    /// A registry forwarding cancels to the upstream at `upstream`.
    pub fn new(upstream: (String, u16)) -> Arc<Registry> {
        Arc::new(Registry { clients: DashMap::new(), upstream })
    }

    /// Issues a fresh, unique key for a new client.
    pub fn register(self: &Arc<Self>) -> Registration {
        let slot: Slot = Arc::new(Mutex::new(None));
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            if pid == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.clients.entry(pid) {
                v.insert(Entry { secret, slot: slot.clone() });
                return Registration { registry: self.clone(), pid, secret, slot };
            }
        }
    }

    /// Forwards a CancelRequest to the backend currently serving the client
    /// with this key. Unknown keys and idle clients are ignored silently, as
    /// PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let slot = match self.clients.get(&pid) {
            Some(e) if constant_time_eq(e.secret, secret) => e.slot.clone(),
            _ => {
                tracing::info!("cancel request with an unknown key ignored");
                return;
            }
        };
        let guard = slot.lock().await;
        let Some(key) = *guard else { return };
        send_cancel(self.upstream.clone(), key).await;
    }
}

/// Sends a CancelRequest for backend `key` to the upstream at `addr`.
pub async fn send_cancel(addr: (String, u16), key: ServerKey) {
    if let Err(e) = try_send_cancel(&addr, key).await {
        tracing::warn!(error = %e, "forwarding a cancel request failed");
    }
}

async fn try_send_cancel(addr: &(String, u16), key: ServerKey) -> std::io::Result<()> {
    // Bounded: the caller holds the client's cancel slot meanwhile.
    let connect = TcpStream::connect((addr.0.as_str(), addr.1));
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.write_all(&crate::wire::build::cancel_request(key.pid, key.secret)).await?;
    // PostgreSQL closes the socket once it has read the request; waiting for
    // that keeps the slot locked until the cancel was delivered.
    let mut sink = [0u8; 1];
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut sink)).await;
    Ok(())
}

fn constant_time_eq(a: i32, b: i32) -> bool {
    (a ^ b) == 0
}

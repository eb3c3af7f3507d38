//! Admission to the pool: at most `size` server connections lent at once, at
//! most `per_tenant` of them to one tenant, and waiting clients served in
//! turn across tenants rather than first come, first served.
//!
//! A plain FIFO semaphore lets one tenant with a hundred queued clients make
//! every other tenant wait behind all of them. Here each tenant has its own
//! queue and a freed slot goes to the next tenant in round-robin order that
//! is under its cap, so a tenant's wait depends on the number of busy
//! tenants, not on how many clients the busiest one has queued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::auth::tenant::TenantId;

/// Who a slot is for. The proxy's own connections (startup check, server
/// parameters) are not subject to the per-tenant cap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// pgtenant itself.
    Proxy,
    /// A client of this tenant (shared text: cloning must not allocate, it
    /// happens once per transaction).
    Tenant(Arc<str>),
}

impl Owner {
    /// The owner for clients of `tenant`.
    pub fn tenant(tenant: &TenantId) -> Owner {
        Owner::Tenant(Arc::from(tenant.as_str()))
    }
}

/// The shared admission state.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    size: usize,
    per_tenant: usize,
    lent: usize,
    by_owner: HashMap<Owner, usize>,
    queues: HashMap<Owner, VecDeque<oneshot::Sender<()>>>,
    // Owners with a non-empty queue, in the order they will be served.
    turn: VecDeque<Owner>,
}

/// A lent slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    owner: Owner,
}

/// Numbers for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GateStats {
    /// Slots lent right now.
    pub lent: usize,
    /// Clients waiting for a slot.
    pub waiting: usize,
    /// Owners holding at least one slot.
    pub active_owners: usize,
}

impl Gate {
    /// A gate for a pool of `size` connections, `per_tenant` at most per tenant.
    pub fn new(size: usize, per_tenant: usize) -> Arc<Gate> {
        let state = State {
            size,
            per_tenant: per_tenant.clamp(1, size.max(1)),
            lent: 0,
            by_owner: HashMap::new(),
            queues: HashMap::new(),
            turn: VecDeque::new(),
        };
        Arc::new(Gate { state: Mutex::new(state) })
    }

    /// Waits for a slot for `owner`. Cancel-safe: a slot granted to a caller
    /// that stopped waiting goes back to the gate.
    pub async fn acquire(self: &Arc<Gate>, owner: Owner) -> Permit {
        let rx = {
            let mut st = self.lock();
            if st.queues.get(&owner).is_none_or(VecDeque::is_empty) && st.may_lend(&owner) {
                st.lend(&owner);
                return Permit { gate: self.clone(), owner };
            }
            let (tx, rx) = oneshot::channel();
            st.enqueue(owner.clone(), tx);
            rx
        };
        let mut waiting = Waiting { gate: self.clone(), owner: owner.clone(), rx, taken: false };
        // `dispatch` sends before it drops a sender, and counts the grant.
        (&mut waiting.rx).await.expect("a queued waiter is answered before its sender drops");
        waiting.taken = true;
        Permit { gate: self.clone(), owner }
    }

    /// Resizes the pool and the per-tenant cap (configuration reload).
    pub fn resize(&self, size: usize, per_tenant: usize) {
        let mut st = self.lock();
        st.size = size;
        st.per_tenant = per_tenant.clamp(1, size.max(1));
        st.dispatch();
    }

    /// The pool size in force.
    pub fn size(&self) -> usize {
        self.lock().size
    }

    /// Current counts.
    pub fn stats(&self) -> GateStats {
        let st = self.lock();
        GateStats {
            lent: st.lent,
            waiting: st.queues.values().flatten().filter(|tx| !tx.is_closed()).count(),
            active_owners: st.by_owner.len(),
        }
    }

    fn release(&self, owner: &Owner) {
        let mut st = self.lock();
        st.give_back(owner);
        st.dispatch();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Never held across an await; a poisoned lock means a bug elsewhere
        // panicked mid-update, and the counts can no longer be trusted.
        self.state.lock().expect("pool gate lock")
    }
}

impl State {
    fn may_lend(&self, owner: &Owner) -> bool {
        let held = self.by_owner.get(owner).copied().unwrap_or(0);
        self.lent < self.size && (matches!(owner, Owner::Proxy) || held < self.per_tenant)
    }

    fn lend(&mut self, owner: &Owner) {
        self.lent += 1;
        *self.by_owner.entry(owner.clone()).or_insert(0) += 1;
    }

    fn give_back(&mut self, owner: &Owner) {
        self.lent -= 1;
        if let Some(n) = self.by_owner.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.by_owner.remove(owner);
            }
        }
    }

    fn enqueue(&mut self, owner: Owner, tx: oneshot::Sender<()>) {
        let queue = self.queues.entry(owner.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(owner);
        }
        queue.push_back(tx);
    }

    /// Hands free slots to waiters, one owner at a time in turn; owners at
    /// their cap keep their place and are skipped.
    fn dispatch(&mut self) {
        let mut skipped = 0;
        while self.lent < self.size && skipped < self.turn.len() {
            let owner = self.turn.pop_front().expect("turn is not empty");
            if !self.may_lend(&owner) {
                self.turn.push_back(owner);
                skipped += 1;
                continue;
            }
            let queue = self.queues.get_mut(&owner).expect("an owner in turn has a queue");
            let mut granted = false;
            while let Some(tx) = queue.pop_front() {
                if tx.send(()).is_ok() {
                    granted = true;
                    break;
                }
            }
            if queue.is_empty() {
                self.queues.remove(&owner);
            } else {
                self.turn.push_back(owner.clone());
            }
            if granted {
                self.lend(&owner);
                skipped = 0;
            }
        }
    }
}

/// A queued waiter; if it is dropped after its slot was granted but before
/// it took it (a timeout racing the grant), the slot goes back.
struct Waiting {
    gate: Arc<Gate>,
    owner: Owner,
    rx: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.gate.release(&self.owner);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(&self.owner);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tenant(name: &str) -> Owner {
        Owner::Tenant(Arc::from(name))
    }

    async fn try_acquire(gate: &Arc<Gate>, owner: Owner) -> Option<Permit> {
        tokio::time::timeout(Duration::from_millis(50), gate.acquire(owner)).await.ok()
    }

    #[tokio::test]
    async fn one_tenant_cannot_take_the_whole_pool() {
        let gate = Gate::new(3, 2);
        let a1 = try_acquire(&gate, tenant("a")).await.expect("first slot");
        let _a2 = try_acquire(&gate, tenant("a")).await.expect("second slot");
        assert!(try_acquire(&gate, tenant("a")).await.is_none(), "a third slot for tenant a");
        let _b = try_acquire(&gate, tenant("b")).await.expect("tenant b gets the slot a may not take");
        assert!(try_acquire(&gate, tenant("c")).await.is_none(), "the pool is full");
        drop(a1);
        assert!(try_acquire(&gate, tenant("a")).await.is_some(), "a is under its cap again");
        let stats = gate.stats();
        assert_eq!((stats.lent, stats.waiting), (2, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn the_proxy_is_not_capped() {
        let gate = Gate::new(2, 1);
        let _p1 = try_acquire(&gate, Owner::Proxy).await.expect("slot");
        let _p2 = try_acquire(&gate, Owner::Proxy).await.expect("second slot despite the cap of one");
        assert_eq!(gate.stats().lent, 2);
    }

    #[tokio::test]
    async fn freed_slots_take_turns_across_tenants() {
        let gate = Gate::new(1, 1);
        let held = gate.acquire(tenant("busy")).await;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        // Five clients of one tenant queue first, then one of another.
        let names = ["busy", "busy", "busy", "busy", "busy", "quiet"];
        for (i, name) in names.iter().enumerate() {
            let (shared, done_tx) = (gate.clone(), done_tx.clone());
            let owner = tenant(name);
            tokio::spawn(async move {
                let permit = shared.acquire(owner).await;
                done_tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            });
            // Queue in a known order.
            while gate.stats().waiting < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let mut order = Vec::new();
        while order.len() < names.len() {
            order.push(done_rx.recv().await.unwrap());
        }
        let quiet_at = order.iter().position(|&i| i == 5).unwrap();
        assert_eq!(quiet_at, 1, "the quiet tenant is served right after one busy client: {order:?}");
        let settled = tokio::time::timeout(Duration::from_secs(5), async {
            while gate.stats() != GateStats::default() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(settled.await.is_ok(), "every slot comes back: {:?}", gate.stats());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_returns_its_grant() {
        let gate = Gate::new(1, 1);
        for _ in 0..40 {
            let held = gate.acquire(tenant("a")).await;
            let waiter = {
                let gate = gate.clone();
                tokio::spawn(async move { try_acquire(&gate, tenant("b")).await.is_some() })
            };
            while gate.stats().waiting == 0 {
                tokio::task::yield_now().await;
            }
            // Release roughly when the waiter times out, so grant and timeout race.
            tokio::time::sleep(Duration::from_millis(49)).await;
            drop(held);
            let _ = waiter.await.unwrap();
            assert_eq!(gate.stats(), GateStats::default(), "a slot leaked");
        }
    }

    #[tokio::test]
    async fn resize_grants_waiters() {
        let gate = Gate::new(1, 1);
        let _held = gate.acquire(tenant("a")).await;
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.acquire(tenant("b")).await })
        };
        while gate.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        gate.resize(2, 1);
        let permit = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("granted").unwrap();
        assert_eq!(gate.stats().lent, 2);
        drop(permit);
    }
}

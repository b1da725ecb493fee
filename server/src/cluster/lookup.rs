//! Routing misses read from etcd: a name claimed through another node a moment ago may not be
//! in this node's copy of the name table yet (etcd's watch brings it within milliseconds), and
//! a visitor arriving in that window would get a 404. So before answering 404 for a name it
//! knows nothing of, a node reads that one name in etcd.
//!
//! Bounded, so that a flood of unknown names never becomes an etcd request per request: one
//! read at a time per name, whose answer (holder or none) is kept for [`REMEMBER`] for every
//! request of that name; at most [`MAX_READS_AT_ONCE`] reads at once and [`READS_PER_SECOND`]
//! over the node; at most [`MAX_REMEMBERED`] names remembered. Past a bound the miss is
//! answered from the local copy alone (the 404 of a node without this), and a read takes at most
//! [`READ_TIMEOUT`].

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::{
    sync::{OnceCell, Semaphore},
    time::Instant,
};
use tracing::debug;

use super::{
    node::{Node, Place},
    store::{etcd, Holder, NAMES},
};
use crate::metrics::Metrics;

/// How long a read's answer stands for its name. The watch brings any change sooner, and the
/// local copy is always asked first, so this only spaces the reads of a name nobody holds.
pub(crate) const REMEMBER: Duration = Duration::from_secs(1);
/// Reads in flight at once over the node.
pub(crate) const MAX_READS_AT_ONCE: usize = 8;
/// Reads per second over the node (and as many in a burst).
pub(crate) const READS_PER_SECOND: u32 = 20;
/// Names whose answers are kept at once (each a few dozen bytes).
pub(crate) const MAX_REMEMBERED: usize = 4096;
/// How long a visitor may wait for a read: past it, the 404.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The answer of one read: the holder's node id, or `None` (nobody, or no read was made).
type Answer = Arc<OnceCell<Option<String>>>;

/// This node's reads of missed names.
pub(crate) struct Lookups {
    remembered: Mutex<HashMap<String, (Instant, Answer)>>,
    reads: Semaphore,
    rate: DefaultDirectRateLimiter,
}

impl Default for Lookups {
    fn default() -> Self {
        let rate = NonZeroU32::new(READS_PER_SECOND).expect("a rate above zero");
        Self {
            remembered: Mutex::new(HashMap::new()),
            reads: Semaphore::new(MAX_READS_AT_ONCE),
            rate: RateLimiter::direct(Quota::per_second(rate)),
        }
    }
}

impl Lookups {
    /// The answer for `key`: the one being read or read within [`REMEMBER`], or a new one to
    /// fill. `None` when [`MAX_REMEMBERED`] names are remembered already.
    fn answer(&self, key: &str) -> Option<Answer> {
        let mut remembered = self.remembered.lock().expect("lookups lock");
        let now = Instant::now();
        if let Some((at, answer)) = remembered.get(key) {
            if now.duration_since(*at) < REMEMBER {
                return Some(answer.clone());
            }
        }
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER);
            if remembered.len() >= MAX_REMEMBERED {
                return None;
            }
        }
        let answer = Answer::default();
        remembered.insert(key.to_owned(), (now, answer.clone()));
        Some(answer)
    }
}

impl Node {
    /// Where `key`, which the local copy places nowhere, is served according to etcd itself:
    /// see the module's doc. `Place::Local` when nobody else holds it, or when it cannot be
    /// read now.
    pub(crate) async fn look_up(self: &Arc<Self>, key: &str, metrics: &Metrics) -> Place {
        if !self.is_ready() {
            return Place::Local;
        }
        let Some(answer) = self.lookups.answer(key) else {
            return Place::Local;
        };
        let holder = answer
            .get_or_init(|| async {
                let lookups = &self.lookups;
                if lookups.rate.check().is_err() {
                    return None;
                }
                let Ok(_reading) = lookups.reads.try_acquire() else {
                    return None;
                };
                metrics.lookup();
                let node = self.clone();
                let name_key = format!("{NAMES}{key}");
                let read = async move {
                    let mut kv = node.store.client.kv_client();
                    tokio::time::timeout(READ_TIMEOUT, etcd(kv.get(name_key, None))).await
                };
                match self.store.background.run(read).await {
                    Some(Ok(Ok(found))) => found
                        .kvs()
                        .first()
                        .and_then(|kv| serde_json::from_slice::<Holder>(kv.value()).ok())
                        .map(|holder| holder.node),
                    Some(Ok(Err(e))) => {
                        debug!(%e, "cannot read a name in the cluster");
                        None
                    }
                    Some(Err(_)) => {
                        debug!("no answer from etcd in time for a name");
                        None
                    }
                    None => None,
                }
            })
            .await;
        match holder {
            Some(id) if *id != self.id() => match self.store.cache().nodes.get(id) {
                Some(node) => Place::Node {
                    id: id.clone(),
                    advertise: node.advertise.clone(),
                },
                // A node this one has not heard of yet: the watch will tell.
                None => Place::Local,
            },
            _ => Place::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_answer_per_name_for_a_moment_and_a_bounded_number_of_names() {
        let lookups = Lookups::default();
        let first = lookups.answer("app").unwrap();
        assert!(Arc::ptr_eq(&first, &lookups.answer("app").unwrap()));
        for i in 1..MAX_REMEMBERED {
            assert!(lookups.answer(&format!("name{i}")).is_some());
        }
        assert!(lookups.answer("one-too-many").is_none());
        tokio::time::advance(REMEMBER).await;
        assert!(lookups.answer("one-too-many").is_some());
        assert!(!Arc::ptr_eq(&first, &lookups.answer("app").unwrap()));
        assert!(lookups.remembered.lock().unwrap().len() <= 2);
    }
}

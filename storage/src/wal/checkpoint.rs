//! Checkpoints: moving the overlay of index changes into the index, atomically with the
//! [`Checkpoint`](crate::index::Checkpoint) that says where replay must start.
//!
//! Steps, with the maintenance lock held (one checkpointer at a time, so sled's `flush` is only
//! ever called from one thread):
//! 1. Under the state lock: freeze the overlay (readers still see it through `frozen`), start an
//!    empty one, and snapshot position, next LSN and live-data figures: all as of the same instant.
//! 2. Wait until every record before that instant is durable: the index must never reflect a
//!    record that a crash could still take away.
//! 3. Commit the frozen changes and the checkpoint to the index in one atomic batch, and flush.
//! 4. Under the state lock: drop the frozen overlay. If the commit failed, fold it back under the
//!    newer changes, so nothing is lost and the next checkpoint retries.

use std::collections::btree_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::Overlay;
use super::{compaction, lock, Shared};
use crate::error::Result;
use crate::ids::Lsn;

/// Runs one checkpoint. The caller holds `shared.maintenance`.
pub(crate) fn checkpoint_serialized(shared: &Shared) -> Result<()> {
    let (frozen, checkpoint) = {
        let mut state = lock(&shared.state);
        state.check_usable()?;
        let frozen = Arc::new(std::mem::take(&mut state.overlay));
        state.frozen = Some(frozen.clone());
        (frozen, state.checkpoint())
    };
    let outcome = shared
        .wait_durable(Lsn(checkpoint.next_lsn.0 - 1))
        .and_then(|()| shared.index.commit(&frozen.to_ops(), &checkpoint));
    let mut state = lock(&shared.state);
    state.frozen = None;
    if outcome.is_err() {
        let Overlay { messages, kv } = Arc::try_unwrap(frozen).unwrap_or_else(|shared| Overlay {
            messages: shared.messages.clone(),
            kv: shared.kv.clone(),
        });
        for (key, frozen_slot) in messages {
            // The newer slot now sits directly on the index: what the index lacks is what the
            // frozen slot said its own base lacked.
            match state.overlay.messages.entry(key) {
                Entry::Vacant(vacant) => {
                    vacant.insert(frozen_slot);
                }
                Entry::Occupied(mut occupied) => {
                    occupied.get_mut().base_absent = frozen_slot.base_absent
                }
            }
        }
        for (key, entry) in kv {
            state.overlay.kv.entry(key).or_insert(entry);
        }
    }
    outcome
}

/// The maintenance thread: checkpoints when the overlay is large, the interval has passed with
/// changes or a roll asked for compaction, then compacts what is dead enough. Exits when the log closes or fails.
pub(crate) fn run_maintenance(shared: &Shared) {
    let interval = Duration::from_millis(shared.config.checkpoint_interval_ms);
    loop {
        {
            let deadline = Instant::now() + interval;
            let mut state = lock(&shared.state);
            loop {
                if state.closed || state.failure.is_some() {
                    return;
                }
                if state.overlay.len() >= shared.config.checkpoint_ops_max
                    || std::mem::take(&mut state.compaction_due)
                {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = shared
                    .maintenance_wake
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        {
            let _serial = lock(&shared.maintenance);
            if let Err(error) = checkpoint_serialized(shared) {
                tracing::warn!(%error, "checkpoint failed; the changes stay in memory and are retried");
            }
        }
        if let Err(error) = compaction::compact(
            shared,
            shared.config.compaction_dead_ratio,
            compaction::YOUNG_SEGMENTS,
        ) {
            tracing::warn!(%error, "compaction failed");
        }
    }
}

//! Following one service's prefix: a paged list, then a watch from the listed revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use super::MAX_VALUE_BYTES;
use super::conn::Conn;
use crate::registry::linger::{Lingering, apply, publish, publish_changes};
use crate::registry::{Instance, InstanceSet};

/// Keys asked for per page of the list; halved (down to one) while a page is too large to
/// decode.
const PAGE_KEYS: i64 = 256;
/// The largest message we decode from etcd: a page, or a watch response. etcd's own request
/// limit is 1.5 MiB per value, so one key always fits.
const DECODE_LIMIT: usize = 16 * 1024 * 1024;

/// The instance stored under `key` (in the service's `prefix`, ending in `/`), or `None`
/// (with a warning) when the value is too large, not an instance's JSON, invalid, or names
/// another id than the key's.
pub(super) fn parse_instance(prefix: &str, key: &str, value: &[u8]) -> Option<Instance> {
    if value.len() > MAX_VALUE_BYTES {
        tracing::warn!(
            key,
            bytes = value.len(),
            "skipping registry value larger than {MAX_VALUE_BYTES} bytes"
        );
        return None;
    }
    match serde_json::from_slice::<Instance>(value) {
        Ok(i) if key.strip_prefix(prefix) != Some(i.id.as_str()) => {
            tracing::warn!(
                key,
                id = %i.id,
                "skipping registry value whose key is not its service's prefix and its id"
            );
            None
        }
        Ok(i) if i.validate().is_ok() => Some(i),
        Ok(i) => {
            tracing::warn!(
                key,
                "skipping registry value with invalid fields: {:?}",
                i.validate().err()
            );
            None
        }
        Err(e) => {
            tracing::warn!(key, "skipping malformed registry value: {e}");
            None
        }
    }
}

/// Keeps `tx` equal to the live set under `prefix`: list, then watch from the listed
/// revision; re-list after a compaction; on errors keep the last set and retry with backoff.
/// Ends (closing its etcd watch) as soon as every receiver of `tx` is dropped. `first` is
/// told when the first list is in `tx`.
pub(super) async fn follow(
    client: Conn,
    prefix: String,
    service: String,
    tx: watch::Sender<InstanceSet>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = Some(first);
    loop {
        let outcome = tokio::select! {
            r = list_then_watch(client.clone(), &prefix, &tx, &mut backoff, &mut first) => r,
            _ = tx.closed() => return,
        };
        match outcome {
            Ok(()) => tracing::debug!(service, "re-listing after compaction"),
            Err(e) => {
                tracing::warn!(
                    service,
                    known = tx.borrow().len(),
                    "etcd watch failed, keeping the last known instances; retrying in {backoff:?}: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Keeps `tx` equal to the value of `key` (`None` while it does not exist): a get, then a
/// watch from its revision; on errors keep the last value and retry with backoff. Values
/// over [`MAX_VALUE_BYTES`] or not UTF-8 are skipped with a warning (the last value stays).
/// Ends as soon as every receiver of `tx` is dropped. `first` is told when the first read
/// is in `tx`.
pub(super) async fn follow_key(
    client: Conn,
    key: String,
    tx: watch::Sender<Option<Arc<str>>>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = Some(first);
    loop {
        let outcome = tokio::select! {
            r = get_then_watch(client.clone(), &key, &tx, &mut backoff, &mut first) => r,
            _ = tx.closed() => return,
        };
        match outcome {
            Ok(()) => tracing::debug!(key, "reading again after compaction"),
            Err(e) => {
                tracing::warn!(
                    key,
                    "etcd watch failed, keeping the last known value; retrying in {backoff:?}: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The text of a value, or `None` (with a warning) when it is too large or not UTF-8.
fn key_text(key: &str, value: &[u8]) -> Option<Arc<str>> {
    if value.len() > MAX_VALUE_BYTES {
        tracing::warn!(
            key,
            bytes = value.len(),
            "ignoring registry value larger than {MAX_VALUE_BYTES} bytes"
        );
        return None;
    }
    match std::str::from_utf8(value) {
        Ok(s) => Some(Arc::from(s)),
        Err(e) => {
            tracing::warn!(key, "ignoring registry value that is not UTF-8: {e}");
            None
        }
    }
}

fn set_key(tx: &watch::Sender<Option<Arc<str>>>, value: Option<Arc<str>>) {
    tx.send_if_modified(|cur| {
        let changed = *cur != value;
        *cur = value;
        changed
    });
}

async fn get_then_watch(
    client: Conn,
    key: &str,
    tx: &watch::Sender<Option<Arc<str>>>,
    backoff: &mut Duration,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let resp = client
        .get()
        .await
        .map_err(|e| e.to_string())?
        .kv_client()
        .max_decoding_message_size(DECODE_LIMIT)
        .get(key, None)
        .await
        .map_err(|e| e.to_string())?;
    let revision = resp.header().map_or(0, |h| h.revision());
    match resp.kvs().first() {
        Some(kv) => {
            if let Some(text) = key_text(key, kv.value()) {
                set_key(tx, Some(text));
            }
        }
        None => set_key(tx, None),
    }
    if let Some(first) = first.take() {
        let _ = first.send(());
    }
    *backoff = Duration::from_millis(100);
    let mut stream = client
        .get()
        .await
        .map_err(|e| e.to_string())?
        .watch_client()
        .max_decoding_message_size(DECODE_LIMIT)
        .watch(
            key,
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let Some(resp) = stream.message().await.map_err(|e| e.to_string())? else {
            return Err("watch stream ended".into());
        };
        if resp.compact_revision() > 0 || resp.canceled() {
            return Ok(());
        }
        for event in resp.events() {
            match (event.event_type(), event.kv()) {
                (EventType::Put, Some(kv)) => {
                    if let Some(text) = key_text(key, kv.value()) {
                        set_key(tx, Some(text));
                    }
                }
                (EventType::Delete, _) => set_key(tx, None),
                (EventType::Put, None) => {}
            }
        }
    }
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted))
}

/// Lists every key under `prefix` at one revision, a page at a time. Returns the revision
/// and the valid instances.
pub(super) async fn list(
    client: &Conn,
    prefix: &str,
) -> Result<(i64, BTreeMap<String, Instance>), etcd_client::Error> {
    let mut kv = client
        .get()
        .await?
        .kv_client()
        .max_decoding_message_size(DECODE_LIMIT);
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut limit = PAGE_KEYS;
    let mut known = BTreeMap::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = match kv.get(from.clone(), Some(opts)).await {
            Ok(r) => r,
            Err(e) if limit > 1 && too_large(&e) => {
                limit = (limit / 2).max(1);
                tracing::debug!(
                    prefix,
                    limit,
                    "registry page too large, asking for fewer keys"
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            let key = kv.key_str().unwrap_or("<non-UTF-8 key>").to_owned();
            if let Some(i) = parse_instance(prefix, &key, kv.value()) {
                known.insert(key, i);
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((revision, known)),
        }
    }
}

async fn list_then_watch(
    client: Conn,
    prefix: &str,
    tx: &watch::Sender<InstanceSet>,
    backoff: &mut Duration,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let (revision, mut known) = list(&client, prefix).await.map_err(|e| e.to_string())?;
    publish(tx, &known);
    if let Some(first) = first.take() {
        let _ = first.send(());
    }
    *backoff = Duration::from_millis(100);
    let mut stream = client
        .get()
        .await
        .map_err(|e| e.to_string())?
        .watch_client()
        .max_decoding_message_size(DECODE_LIMIT)
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    // Deleted keys that were draining: still listed (as draining) a moment.
    let mut lingering = Lingering::default();
    loop {
        let next = lingering.next();
        let message = tokio::select! {
            m = stream.message() => m,
            _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {
                let over = lingering.expire().into_iter().map(|k| (k, None)).collect();
                publish_changes(tx, &mut known, over);
                continue;
            }
        };
        let Some(resp) = message.map_err(|e| e.to_string())? else {
            return Err("watch stream ended".into());
        };
        if resp.compact_revision() > 0 || resp.canceled() {
            return Ok(());
        }
        // Applied to `known` and to the published set one event at a time, in order (a
        // graceful deregistration's draining mark and its delete may come in one response),
        // and notified once: an event costs watchers work proportional to it.
        tx.send_if_modified(|set| {
            let mut changed = false;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = kv.key_str().unwrap_or("<non-UTF-8 key>").to_owned();
                lingering.forget(&key);
                match event.event_type() {
                    EventType::Put => {
                        let now = parse_instance(prefix, &key, kv.value());
                        changed |= apply(set, &mut known, key, now);
                    }
                    // A draining instance stays listed as draining a moment longer, so that
                    // a watcher that reads only the latest set still sees that it drained.
                    EventType::Delete if known.get(&key).is_some_and(|i| i.draining) => {
                        lingering.hold(key);
                    }
                    EventType::Delete => changed |= apply(set, &mut known, key, None),
                }
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_range_ends_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn values_over_the_maximum_are_skipped() {
        let mut i = Instance::new("svc", "i1", "http://127.0.0.1:1");
        let ok = serde_json::to_vec(&i).unwrap();
        assert!(parse_instance("/p/svc/", "/p/svc/i1", &ok).is_some());
        i.metadata
            .insert("blob".into(), "x".repeat(MAX_VALUE_BYTES));
        let big = serde_json::to_vec(&i).unwrap();
        assert!(parse_instance("/p/svc/", "/p/svc/i1", &big).is_none());
    }

    #[test]
    fn a_value_under_another_id_s_key_is_skipped() {
        let i = Instance::new("svc", "i1", "http://127.0.0.1:1");
        let json = serde_json::to_vec(&i).unwrap();
        assert!(parse_instance("/p/svc/", "/p/svc/i2", &json).is_none());
        assert!(parse_instance("/p/svc/", "/p/svc/xi1", &json).is_none());
        assert!(parse_instance("/p/svc/", "/p/svc/x/i1", &json).is_none());
        assert!(parse_instance("/p/svc/", "/p/svc/i1", &json).is_some());
    }
}

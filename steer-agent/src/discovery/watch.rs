//! The watch pipelines and the loop that publishes views.
//!
//! Per source: `watcher` → `default_backoff` → parse (malformed objects are
//! dropped here, counted once each time an object turns bad) → `reflector`
//! into a store of compact objects. The loop merges both sources, rebuilds
//! the view from the stores after each change (at most every 50 ms) and
//! calls `on_change` only when the view differs from the last one published.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt, future, stream};
use kube::Api;
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Lookup, store::Writer};
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;

use super::ignored::IgnoredSet;
use super::objects::{Ignored, Key, PodInfo, key_of, parse_pod};
use super::pools::{PoolInfo, parse_pool};
use super::raw::{self, RawObject};
use super::{Discovered, DiscoveryStats, KubeOptions, view};

/// Minimum spacing of `on_change` calls; a burst of events is coalesced.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How long the first view waits for InferencePools after pods are listed
/// (the CRD may be missing; pods must not wait for it forever).
const POOL_GRACE: Duration = Duration::from_secs(2);

/// What a pipeline reports to the loop after its store was updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tick {
    /// An object was added, changed or removed.
    Changed,
    /// A (re)list completed: the store now holds the listed objects.
    Listed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Pods,
    Pools,
}

/// Watches pods (and InferencePools when enabled) and calls `on_change`
/// with the full view after every change that alters it. Runs until
/// dropped; API errors are logged, counted, backed off and retried while
/// the last view stays in effect. Nothing is published before the first
/// list of pods has completed.
pub async fn run(
    client: kube::Client,
    opts: KubeOptions,
    stats: Arc<DiscoveryStats>,
    mut on_change: impl FnMut(Discovered) + Send + 'static,
) {
    let (pods, pod_writer) = reflector::store::<PodInfo>();
    let (pools, pool_writer) = reflector::store::<PoolInfo>();

    let mut pod_config = watcher::Config::default();
    if !opts.inference_pools {
        // A pool may select any pod, so only label-only discovery narrows the watch.
        pod_config = pod_config.labels(&opts.model_label);
    }
    let parse_opts = opts.clone();
    let pod_ticks = source(
        "pods",
        api(&client, &opts, &raw::pods()),
        pod_config,
        pod_writer,
        stats.clone(),
        move |raw| parse_pod(raw, &parse_opts),
        PodInfo::tombstone,
    )
    .map(|t| (Source::Pods, t));
    let pool_ticks = if opts.inference_pools {
        source(
            "inferencepools",
            api(&client, &opts, &raw::inference_pools()),
            watcher::Config::default(),
            pool_writer,
            stats.clone(),
            parse_pool,
            PoolInfo::tombstone,
        )
        .map(|t| (Source::Pools, t))
        .boxed()
    } else {
        stream::pending().boxed()
    };
    let mut ticks = stream::select(pod_ticks.boxed(), pool_ticks);

    let mut pods_listed_at: Option<Instant> = None;
    let mut pools_listed = !opts.inference_pools;
    let mut dirty = false;
    let mut earliest = Instant::now();
    let mut last: Option<Discovered> = None;
    loop {
        let due = match pods_listed_at {
            Some(at) if !pools_listed => earliest.max(at + POOL_GRACE),
            _ => earliest,
        };
        tokio::select! {
            tick = ticks.next() => match tick {
                Some((Source::Pods, Tick::Listed)) => {
                    pods_listed_at.get_or_insert_with(Instant::now);
                    stats.synced.store(true, Ordering::Relaxed);
                    dirty = true;
                }
                Some((Source::Pools, Tick::Listed)) => {
                    pools_listed = true;
                    dirty = true;
                }
                Some((_, Tick::Changed)) => dirty = true,
                // kube's watchers never end; `default_backoff` never gives up.
                None => return,
            },
            () = tokio::time::sleep_until(due), if dirty && pods_listed_at.is_some() => {
                dirty = false;
                earliest = Instant::now() + DEBOUNCE;
                let view = view::build(&pods.state(), &pools.state(), opts.node_name.as_deref());
                if last.as_ref() != Some(&view) {
                    tracing::debug!(
                        models = view.models.len(),
                        endpoints = view.endpoint_count(),
                        "kubernetes discovery view changed"
                    );
                    stats.published(&view);
                    on_change(view.clone());
                    last = Some(view);
                }
            }
        }
    }
}

fn api(client: &kube::Client, opts: &KubeOptions, resource: &ApiResource) -> Api<RawObject> {
    match &opts.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// One watched resource kept in `writer`'s store; yields a [`Tick`] after
/// each store update that may change the view.
fn source<T>(
    what: &'static str,
    api: Api<RawObject>,
    config: watcher::Config,
    writer: Writer<T>,
    stats: Arc<DiscoveryStats>,
    parse: impl Fn(&RawObject) -> Result<T, Ignored> + Send + 'static,
    tombstone: fn(Key) -> T,
) -> impl Stream<Item = Tick> + Send
where
    T: Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let mut ignored = IgnoredSet::default();
    let events = watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |result| {
            let event = match result {
                Ok(event) => translate(event, what, &stats, &mut ignored, &parse, tombstone),
                Err(error) => {
                    let gone = matches!(&error, watcher::Error::WatchError(s) if s.code == 410);
                    let error = match &error {
                        watcher::Error::WatchError(status) => {
                            format!("{error} (code {})", status.code)
                        }
                        _ => error.to_string(),
                    };
                    if gone {
                        // Routine: the API server compacted past our version.
                        tracing::info!(resource = what, %error, "kubernetes watch expired; relisting after a backoff");
                    } else {
                        tracing::warn!(resource = what, %error, "kubernetes watch error; backing off, keeping the last view");
                    }
                    stats.error(format!("{what}: {error}"));
                    None
                }
            };
            future::ready(event.map(Ok))
        });
    reflector::reflector(writer, events).filter_map(|event| {
        future::ready(match event {
            Ok(Event::Apply(_) | Event::Delete(_)) => Some(Tick::Changed),
            Ok(Event::InitDone) => Some(Tick::Listed),
            Ok(Event::Init | Event::InitApply(_)) | Err(_) => None,
        })
    })
}

/// Raw watcher event → event on the compact type. A malformed object is
/// dropped from a list and turned into a deletion in the watch, so a pod
/// that turns bad leaves the view.
fn translate<T>(
    event: Event<RawObject>,
    what: &str,
    stats: &DiscoveryStats,
    ignored: &mut IgnoredSet,
    parse: &impl Fn(&RawObject) -> Result<T, Ignored>,
    tombstone: fn(Key) -> T,
) -> Option<Event<T>> {
    let mut accept = |raw: &RawObject| {
        stats.events.fetch_add(1, Ordering::Relaxed);
        match parse(raw) {
            Ok(obj) => {
                if let Some(key) = key_of(raw) {
                    ignored.accept(&key);
                }
                Ok(obj)
            }
            Err(bad) => {
                if ignored.ignore(bad.key.as_ref()) {
                    stats.ignored.fetch_add(1, Ordering::Relaxed);
                    let object = bad
                        .key
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    if bad.label_only {
                        tracing::debug!(resource = what, %object, reason = %bad.reason, "ignoring object");
                    } else {
                        tracing::warn!(resource = what, %object, reason = %bad.reason, "ignoring malformed object");
                    }
                }
                Err(bad.key)
            }
        }
    };
    match event {
        Event::Init => {
            stats.relists.fetch_add(1, Ordering::Relaxed);
            ignored.begin_list();
            Some(Event::Init)
        }
        Event::InitApply(raw) => accept(&raw).ok().map(Event::InitApply),
        Event::InitDone => {
            ignored.end_list();
            Some(Event::InitDone)
        }
        Event::Apply(raw) => match accept(&raw) {
            Ok(obj) => Some(Event::Apply(obj)),
            Err(key) => key.map(|k| Event::Delete(tombstone(k))),
        },
        Event::Delete(raw) => {
            stats.events.fetch_add(1, Ordering::Relaxed);
            let key = key_of(&raw)?;
            ignored.accept(&key);
            Some(Event::Delete(tombstone(key)))
        }
    }
}

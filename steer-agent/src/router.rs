//! Turns a parsed request into a routing decision: reads the pool snapshot,
//! builds the pod views, runs the chosen strategy and counts the choice.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Settings;
use crate::excerpt::excerpt;
use crate::openai::PromptPieces;
use crate::pool::{InFlight, Member, ModelPool, Pools};
use crate::routing::{
    self, BlockHasher, DecidedBy, NamedProfile, PodView, Policy, PrefixIndex, Profile,
    ProfileError, Scorer, Signals, Strategy, UnknownStrategy,
};

/// Why a request could not be routed (the ext_proc layer maps each to an
/// HTTP status and an OpenAI error body).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
    #[error("{0}")]
    UnknownStrategy(#[from] UnknownStrategy),
    #[error("invalid weighted routing-strategy: {0}")]
    BadWeights(#[from] ProfileError),
    #[error("no ready endpoint for model `{0}`")]
    NoReadyEndpoint(String),
}

/// Prefix records waiting for the recorder task; when full, the stream
/// records inline (slower reply, never a lost record).
const RECORD_QUEUE: usize = 4096;

#[derive(Debug)]
pub struct Router {
    pools: Arc<Pools>,
    prefix: Arc<PrefixIndex>,
    /// Set once the recorder task runs (see [`Router::spawn_prefix_recorder`]).
    recorder: std::sync::OnceLock<tokio::sync::mpsc::Sender<(Vec<u64>, u32)>>,
}

/// What a request needs to be routed.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    pub model: &'a str,
    pub strategy: Option<&'a str>,
    /// `x-session-id`, else the body's `user`.
    pub session: Option<&'a str>,
    pub prompt: Option<&'a PromptPieces<'a>>,
    /// Endpoints the gateway allows (Inference Extension subset hint).
    pub subset: Option<&'a [std::net::SocketAddr]>,
    /// Prompt + expected completion tokens ([`crate::openai::expected_tokens`]),
    /// counted against the chosen pod while the request is in flight.
    pub tokens: u64,
}

/// How one request is routed: a strategy, a profile from the config (its
/// index), or weighted scorers from the header.
enum Plan {
    One(Strategy),
    Named(usize),
    Weighted(Profile),
}

impl Plan {
    /// A `routing-strategy` value: a profile's name, a strategy's name,
    /// weighted scorers when it has a `:` or `,`, or one scorer's name.
    fn parse(header: &str, profiles: &[NamedProfile]) -> Result<Self, RouteError> {
        let header = header.trim();
        if let Some(i) = profiles.iter().position(|p| &*p.name == header) {
            return Ok(Self::Named(i));
        }
        if header.contains([':', ',']) {
            return Ok(Self::Weighted(Profile::parse_weighted(header)?));
        }
        match header.parse() {
            Ok(strategy) => Ok(Self::One(strategy)),
            // A scorer without a strategy of its own (`token-load`) alone.
            Err(unknown) => Profile::parse_weighted(header)
                .map(Self::Weighted)
                .map_err(|_| RouteError::UnknownStrategy(unknown)),
        }
    }

    fn reads_prompt(&self, profiles: &[NamedProfile]) -> bool {
        match self {
            Self::One(s) => s.reads_prompt(),
            Self::Named(i) => profiles.get(*i).is_some_and(|p| p.profile.reads_prompt()),
            Self::Weighted(p) => p.reads_prompt(),
        }
    }
}

#[derive(Debug)]
pub struct Decision {
    pub pool: Arc<ModelPool>,
    pub member: Member,
    pub by: DecidedBy,
    pub in_flight: InFlight,
    /// Prefix blocks to record for the chosen pod once the reply is out.
    pub prefix_blocks: Vec<u64>,
}

impl Router {
    pub fn new(pools: Arc<Pools>) -> Self {
        let capacity = pools.load().settings.prefix.index_capacity_blocks;
        Self {
            pools,
            prefix: Arc::new(PrefixIndex::new(capacity)),
            recorder: std::sync::OnceLock::new(),
        }
    }

    /// Moves prefix bookkeeping off the ext_proc streams onto a task of the
    /// current runtime. Without it (unit tests) records are written inline.
    pub fn spawn_prefix_recorder(&self) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u64>, u32)>(RECORD_QUEUE);
        if self.recorder.set(tx).is_err() {
            return;
        }
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            while let Some((blocks, pod)) = rx.recv().await {
                prefix.record(&blocks, pod);
            }
        });
    }

    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Whether a request with this `routing-strategy` header (or none) may
    /// be routed on its prompt, so its body must be parsed with the prompt.
    /// An unknown name reads nothing: [`Router::decide`] rejects it.
    pub fn reads_prompt(&self, strategy: Option<&str>) -> bool {
        match strategy {
            Some(header) => {
                let profiles = &self.pools.load().settings.profiles;
                Plan::parse(header, profiles).is_ok_and(|p| p.reads_prompt(profiles))
            }
            None => self.pools.load().reads_prompt,
        }
    }

    pub fn decide(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let snapshot = self.pools.load();
        let pool = snapshot
            .model(req.model)
            .ok_or_else(|| RouteError::UnknownModel(excerpt(req.model)))?;
        let profiles = &snapshot.settings.profiles;
        let plan = match req.strategy {
            Some(header) => Plan::parse(header, profiles)?,
            None => match pool.strategy.unwrap_or(snapshot.settings.default_strategy) {
                Policy::Strategy(s) => Plan::One(s),
                Policy::Profile(i) => Plan::Named(i),
            },
        };
        let (views, members): (Vec<PodView>, Vec<&Member>) = pool
            .members
            .iter()
            .filter(|m| m.endpoint.is_ready())
            .filter(|m| req.subset.is_none_or(|s| s.contains(&m.endpoint.addr)))
            .map(|m| (m.endpoint.view(), m))
            .unzip();
        if views.is_empty() {
            return Err(RouteError::NoReadyEndpoint(excerpt(req.model)));
        }
        let tie = next_random();
        let mut prefix_blocks = Vec::new();
        let (profile, by) = match plan {
            Plan::One(strategy) => {
                let chosen = self.by_strategy(
                    strategy,
                    req,
                    (&snapshot.settings, pool),
                    &views,
                    tie,
                    &mut prefix_blocks,
                );
                let by = DecidedBy::Strategy(strategy);
                return Ok(self.decided(pool, members[chosen], by, prefix_blocks, req.tokens));
            }
            Plan::Named(i) => {
                let named = &profiles[i];
                (&named.profile, DecidedBy::Profile(i, named.name.clone()))
            }
            Plan::Weighted(ref profile) => (profile, DecidedBy::Weighted),
        };
        let mut depths = vec![0; views.len()];
        if profile.reads_prompt() {
            prefix_blocks = prefix_blocks_for(&snapshot.settings, pool, req);
            self.prefix
                .match_depths(&prefix_blocks, &views, &mut depths);
        }
        let session = req
            .session
            .map(|s| xxhash_rust::xxh3::xxh3_64(s.as_bytes()));
        let lora: Vec<f64> = if profile.uses(Scorer::Lora) {
            members
                .iter()
                .map(|m| m.endpoint.lora_affinity(req.model))
                .collect()
        } else {
            Vec::new()
        };
        let signals = Signals {
            depths: &depths,
            prompt_blocks: prefix_blocks.len(),
            session,
            lora: &lora,
        };
        let mut scores = Vec::with_capacity(views.len());
        routing::score(profile, &views, &signals, &mut scores);
        // The same prompt (or session) breaks ties the same way.
        let key = prefix_blocks.first().copied().or(session).unwrap_or(tie);
        let chosen = routing::pick(profile.picker, &views, &scores, key, tie);
        Ok(self.decided(pool, members[chosen], by, prefix_blocks, req.tokens))
    }

    /// One strategy's choice among `views`.
    fn by_strategy(
        &self,
        strategy: Strategy,
        req: &RouteRequest<'_>,
        (settings, pool): (&Settings, &ModelPool),
        views: &[PodView],
        tie: u64,
        prefix_blocks: &mut Vec<u64>,
    ) -> usize {
        match strategy {
            Strategy::Random => routing::random(views, tie),
            Strategy::RoundRobin => {
                routing::round_robin(views, pool.round_robin.fetch_add(1, Ordering::Relaxed))
            }
            Strategy::LeastRequest => routing::least_request(views, tie),
            Strategy::LeastKvCache => routing::least_kv_cache(views, tie),
            Strategy::LeastLatency => routing::least_latency(views, tie),
            Strategy::SessionAffinity => match req.session {
                Some(session) => {
                    routing::session_affinity(views, xxhash_rust::xxh3::xxh3_64(session.as_bytes()))
                }
                None => routing::least_request(views, tie),
            },
            Strategy::PrefixCache => {
                *prefix_blocks = prefix_blocks_for(settings, pool, req);
                let mut depths = vec![0; views.len()];
                self.prefix.match_depths(prefix_blocks, views, &mut depths);
                routing::prefix_cache(views, &depths, tie, &settings.prefix.params)
            }
            Strategy::PrefixRendezvous => {
                *prefix_blocks = prefix_blocks_for(settings, pool, req);
                routing::prefix_rendezvous(views, prefix_blocks, tie, &settings.prefix.params)
            }
        }
    }

    /// Counts the choice and starts the pod's in-flight count.
    fn decided(
        &self,
        pool: &Arc<ModelPool>,
        member: &Member,
        by: DecidedBy,
        prefix_blocks: Vec<u64>,
        tokens: u64,
    ) -> Decision {
        let member = member.clone();
        let counter = match (&by, by.slot()) {
            (_, Some(slot)) => &member.counters.decisions[slot],
            (DecidedBy::Profile(i, _), None) => &member.profile_decisions[*i],
            _ => unreachable!("only profiles lack a fixed slot"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if pool.vip.is_some() {
            // Connection-level traffic to the VIP follows the same choice;
            // the datapath reads it off this path (within its VIP period).
            pool.vip_choice.store(member.endpoint.id, Ordering::Relaxed);
        }
        Decision {
            pool: pool.clone(),
            in_flight: member.endpoint.start(tokens),
            member,
            by,
            prefix_blocks,
        }
    }

    /// Called once the routing reply was handed to the transport: queues the
    /// record of which pod now holds the prompt's prefix for the recorder
    /// task (the blocks move, nothing is copied).
    pub fn after_reply(&self, decision: &mut Decision) {
        if decision.prefix_blocks.is_empty() {
            return;
        }
        let blocks = std::mem::take(&mut decision.prefix_blocks);
        let pod = decision.member.endpoint.id;
        let inline = match self.recorder.get() {
            Some(tx) => match tx.try_send((blocks, pod)) {
                Ok(()) => None,
                Err(e) => Some(e.into_inner()),
            },
            None => Some((blocks, pod)),
        };
        if let Some((blocks, pod)) = inline {
            self.prefix.record(&blocks, pod);
        }
    }

    /// Pods that left every pool must stop attracting prefix traffic.
    pub fn forget_pods(&self, ids: &[u32]) {
        for &id in ids {
            self.prefix.forget_pod(id);
        }
    }
}

/// The chained block hashes of the request's prompt, seeded by its model.
fn prefix_blocks_for(settings: &Settings, pool: &ModelPool, req: &RouteRequest<'_>) -> Vec<u64> {
    let prefix = &settings.prefix;
    let mut hasher = BlockHasher::new(pool.seed, prefix.block_bytes, prefix.max_blocks_per_request);
    for piece in req.prompt.into_iter().flat_map(|p| p.iter()) {
        hasher.push(piece.as_bytes());
    }
    hasher.finish()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // Per-thread seed from the std hasher's random keys: no syscall per call.
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id())
}

/// splitmix64 on a thread-local state: a tie-break needs speed, not crypto,
/// and must not contend on a shared counter.
pub fn next_random() -> u64 {
    RNG.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

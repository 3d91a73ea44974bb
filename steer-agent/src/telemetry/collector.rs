//! The one shape of every scrape-time collector: a source (pools, kernel
//! stats, discovery stats) and a set of metric families rebuilt from it at
//! each scrape, so the code that updates the source only bumps atomics.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

/// A fresh set of metric families, filled from `S` at each scrape.
pub trait Families<S>: Sized {
    fn new() -> Self;
    fn collectors(&self) -> Vec<&dyn Collector>;
    fn fill(&self, source: &S);
}

#[derive(Debug)]
pub struct ScrapeCollector<S, F> {
    source: S,
    descs: Vec<Desc>,
    _families: std::marker::PhantomData<fn() -> F>,
}

impl<S, F: Families<S>> ScrapeCollector<S, F> {
    pub fn new(source: S) -> Self {
        let descs = F::new()
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self {
            source,
            descs,
            _families: std::marker::PhantomData,
        }
    }
}

impl<S: Send + Sync, F: Families<S>> Collector for ScrapeCollector<S, F> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = F::new();
        families.fill(&self.source);
        families
            .collectors()
            .iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

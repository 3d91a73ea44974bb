//! Kubernetes discovery against a fake API server: an HTTP server on
//! loopback that answers list and watch requests the way the API server
//! does (list with `metadata.resourceVersion`, chunked watch streams of JSON
//! events from a resourceVersion on, ERROR events, clean closes), driven
//! by the real kube client and watcher. Every wait is bounded.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use steer_agent::discovery::{self, Discovered, DiscoveryStats, KubeOptions};
use steer_agent::telemetry::DiscoveryCollector;

const DEADLINE: Duration = Duration::from_secs(5);
const MODEL_LABEL: &str = "model.aibrix.ai/name";
const PORT_LABEL: &str = "model.aibrix.ai/port";

// ---------------------------------------------------------------- fake API

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    resource: String,
    namespace: Option<String>,
    watch: bool,
    params: BTreeMap<String, String>,
}

/// What a list or watch asked for.
#[derive(Clone, Debug)]
struct Filter {
    namespace: Option<String>,
    selector: Option<String>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        // Existence (`key`) and equality (`key=value`) terms, as kube sends them.
        self.selector
            .iter()
            .flat_map(|s| s.split(','))
            .all(|term| match term.split_once('=') {
                Some((k, v)) => meta["labels"][k].as_str() == Some(v),
                None => meta["labels"].get(term).is_some(),
            })
    }
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, event type, object) for replaying watches.
    history: Vec<(u64, &'static str, Value)>,
    watchers: Vec<(Filter, mpsc::UnboundedSender<Bytes>)>,
    /// Answer 404 (the CRD is not installed).
    missing: bool,
}

#[derive(Default)]
struct State {
    rv: u64,
    collections: BTreeMap<&'static str, Collection>,
    requests: Vec<Seen>,
}

struct FakeApi {
    addr: SocketAddr,
    state: Mutex<State>,
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
    line.push(b'\n');
    line.into()
}

fn key(obj: &Value) -> String {
    let meta = &obj["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().expect("test objects have names")
    )
}

impl FakeApi {
    async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            state: Mutex::default(),
        });
        {
            let mut st = fake.state.lock();
            st.collections.insert("pods", Collection::default());
            st.collections
                .insert("inferencepools", Collection::default());
        }
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        fake
    }

    fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let segments: Vec<&str> = req.uri().path().split('/').skip(1).collect();
        let (namespace, resource) = match segments.as_slice() {
            ["api", "v1", "pods"] => (None, "pods"),
            ["api", "v1", "namespaces", ns, "pods"] => (Some(*ns), "pods"),
            [
                "apis",
                "inference.networking.k8s.io",
                "v1",
                "inferencepools",
            ] => (None, "inferencepools"),
            [
                "apis",
                "inference.networking.k8s.io",
                "v1",
                "namespaces",
                ns,
                "inferencepools",
            ] => (Some(*ns), "inferencepools"),
            _ => return status(StatusCode::NOT_FOUND, "no such path"),
        };
        let params = parse_query(req.uri().query().unwrap_or_default());
        let watch = params.get("watch").is_some_and(|v| v == "true" || v == "1");
        let filter = Filter {
            namespace: namespace.map(str::to_owned),
            selector: params.get("labelSelector").cloned(),
        };
        let mut st = self.state.lock();
        st.requests.push(Seen {
            resource: resource.into(),
            namespace: filter.namespace.clone(),
            watch,
            params: params.clone(),
        });
        let rv = st.rv;
        let coll = st.collections.get_mut(resource).unwrap();
        if coll.missing {
            return status(
                StatusCode::NOT_FOUND,
                "the server could not find the requested resource",
            );
        }
        if !watch {
            let items: Vec<&Value> = coll
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .collect();
            let list = json!({"apiVersion": "v1", "kind": "List",
                              "metadata": {"resourceVersion": rv.to_string()}, "items": items});
            return Response::new(Full::new(Bytes::from(list.to_string())).boxed());
        }
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded();
        for (v, kind, obj) in &coll.history {
            if *v > from && filter.matches(obj) {
                let _ = tx.unbounded_send(event_line(kind, obj));
            }
        }
        coll.watchers.push((filter, tx));
        let body = StreamBody::new(rx.map(|line| Ok::<_, Infallible>(Frame::data(line))));
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .unwrap()
    }

    /// Creates or replaces an object and tells the watchers.
    fn apply(&self, resource: &'static str, mut obj: Value) {
        let mut st = self.state.lock();
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let rv = st.rv;
        let coll = st.collections.get_mut(resource).unwrap();
        let kind = match coll.objects.insert(key(&obj), obj.clone()) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        coll.history.push((rv, kind, obj.clone()));
        coll.broadcast(|_| event_line(kind, &obj), &obj);
    }

    fn delete(&self, resource: &'static str, ns_name: &str) {
        let mut st = self.state.lock();
        st.rv += 1;
        let rv = st.rv;
        let coll = st.collections.get_mut(resource).unwrap();
        let mut obj = coll
            .objects
            .remove(ns_name)
            .expect("deleting an existing object");
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        coll.history.push((rv, "DELETED", obj.clone()));
        coll.broadcast(|_| event_line("DELETED", &obj), &obj);
    }

    /// Changes the stored objects without any watch event, as if the
    /// history had been compacted away: only a relist can see it.
    fn silently(&self, resource: &'static str, f: impl FnOnce(&mut BTreeMap<String, Value>)) {
        let mut st = self.state.lock();
        st.rv += 1;
        f(&mut st.collections.get_mut(resource).unwrap().objects);
    }

    /// Sends one raw line to every open watch of `resource`.
    fn send_raw(&self, resource: &'static str, line: &str) {
        let mut st = self.state.lock();
        let line = Bytes::from(format!("{line}\n"));
        for (_, tx) in &st.collections.get_mut(resource).unwrap().watchers {
            let _ = tx.unbounded_send(line.clone());
        }
    }

    /// Ends every open watch of `resource` cleanly (final empty chunk).
    fn close_watches(&self, resource: &'static str) {
        self.state
            .lock()
            .collections
            .get_mut(resource)
            .unwrap()
            .watchers
            .clear();
    }

    fn set_missing(&self, resource: &'static str) {
        self.state
            .lock()
            .collections
            .get_mut(resource)
            .unwrap()
            .missing = true;
    }

    fn requests(&self, resource: &str, watch: bool) -> Vec<Seen> {
        let st = self.state.lock();
        st.requests
            .iter()
            .filter(|r| r.resource == resource && r.watch == watch)
            .cloned()
            .collect()
    }

    fn rv(&self) -> u64 {
        self.state.lock().rv
    }
}

impl Collection {
    fn broadcast(&mut self, line: impl Fn(&Value) -> Bytes, obj: &Value) {
        self.watchers
            .retain(|(filter, tx)| !filter.matches(obj) || tx.unbounded_send(line(obj)).is_ok());
    }
}

fn status(code: StatusCode, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": "NotFound", "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

// ---------------------------------------------------------------- objects

struct PodSpec<'a> {
    ns: &'a str,
    name: &'a str,
    ip: Option<&'a str>,
    phase: &'a str,
    ready: bool,
    node: &'a str,
    labels: Value,
}

impl<'a> PodSpec<'a> {
    /// A Running, Ready pod of `model` on node-a.
    fn new(name: &'a str, ip: &'a str, model: &str) -> Self {
        Self {
            ns: "default",
            name,
            ip: Some(ip),
            phase: "Running",
            ready: true,
            node: "node-a",
            labels: json!({MODEL_LABEL: model}),
        }
    }

    fn json(&self) -> Value {
        let mut status = json!({
            "phase": self.phase,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": if self.ready { "True" } else { "False" }},
            ],
        });
        if let Some(ip) = self.ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.ns, "uid": format!("uid-{}", self.name),
                         "labels": self.labels},
            "spec": {"nodeName": self.node, "containers": [{"name": "vllm", "image": "vllm"}]},
            "status": status,
        })
    }
}

fn pool(ns: &str, name: &str, selector: Value, ports: &[u16], annotations: Value) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {"selector": {"matchLabels": selector}, "targetPorts": ports,
                 "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}},
    })
}

// ---------------------------------------------------------------- harness

struct Harness {
    fake: Arc<FakeApi>,
    stats: Arc<DiscoveryStats>,
    views: Arc<Mutex<Vec<Discovered>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(fake: &Arc<FakeApi>, opts: KubeOptions) -> Harness {
    let stats = DiscoveryStats::new();
    let views = Arc::new(Mutex::new(Vec::new()));
    let sink = views.clone();
    let task = tokio::spawn(discovery::run(
        fake.client(),
        opts,
        stats.clone(),
        move |view| {
            sink.lock().push(view);
        },
    ));
    Harness {
        fake: fake.clone(),
        stats,
        views,
        task,
    }
}

impl Harness {
    fn latest(&self) -> Option<Discovered> {
        self.views.lock().last().cloned()
    }

    /// Polls until `cond` holds, at most [`DEADLINE`].
    async fn until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !cond(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nlatest view: {:?}\nstats: {:?}\nrequests: {:#?}",
                    self.latest(),
                    self.stats,
                    self.fake.state.lock().requests
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the latest view's `model` has exactly `addrs`.
    async fn expect(&self, model: &str, addrs: &[&str]) {
        let want: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        self.until(&format!("{model} = {addrs:?}"), |h| {
            h.latest().is_some_and(|v| v.addrs(model) == want)
        })
        .await;
    }

    fn count(&self, counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn opts() -> KubeOptions {
    KubeOptions {
        node_name: Some("node-a".into()),
        ..KubeOptions::default()
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn pods_appear_flip_readiness_and_leave() {
    let fake = FakeApi::start().await;
    let mut a = PodSpec::new("a", "10.0.0.1", "qwen");
    a.labels[PORT_LABEL] = json!("9000");
    fake.apply("pods", a.json());
    let h = start(&fake, opts()).await;
    h.expect("qwen", &["10.0.0.1:9000"]).await;
    assert!(h.latest().unwrap().models["qwen"][0].node_local);

    let mut b = PodSpec::new("b", "fd00::2", "qwen");
    b.node = "node-b";
    fake.apply("pods", b.json());
    h.expect("qwen", &["10.0.0.1:9000", "[fd00::2]:8000"]).await;
    let view = h.latest().unwrap();
    assert_eq!(
        view.models["qwen"]
            .iter()
            .map(|e| e.node_local)
            .collect::<Vec<_>>(),
        [true, false],
        "node_local follows spec.nodeName"
    );

    a.ready = false;
    fake.apply("pods", a.json());
    h.expect("qwen", &["[fd00::2]:8000"]).await;
    a.ready = true;
    fake.apply("pods", a.json());
    h.expect("qwen", &["10.0.0.1:9000", "[fd00::2]:8000"]).await;

    fake.delete("pods", "default/b");
    h.expect("qwen", &["10.0.0.1:9000"]).await;
    fake.delete("pods", "default/a");
    h.until("qwen gone", |h| {
        h.latest().is_some_and(|v| v.models.is_empty())
    })
    .await;

    // One list, label-selected; watches resume from the list's version.
    let lists = fake.requests("pods", false);
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(
        lists[0].params.get("labelSelector").map(String::as_str),
        Some(MODEL_LABEL)
    );
    assert_eq!(lists[0].namespace, None);
    let watches = fake.requests("pods", true);
    assert_eq!(watches[0].params["resourceVersion"], "1");
    assert_eq!(h.count(&h.stats.relists), 1);
    assert_eq!(h.count(&h.stats.restarts), 0);
    assert_eq!(h.count(&h.stats.ignored), 0);
    assert_eq!(h.count(&h.stats.events), 6, "1 listed, 5 watched");
    assert!(h.stats.synced.load(Ordering::Relaxed));
}

#[tokio::test]
async fn non_serving_pods_and_bad_port_labels_are_ignored() {
    let fake = FakeApi::start().await;
    let good = PodSpec {
        ns: "ml",
        ..PodSpec::new("good", "10.0.0.1", "m")
    };
    let pending = PodSpec {
        phase: "Pending",
        ..PodSpec {
            ns: "ml",
            ..PodSpec::new("pending", "10.0.0.2", "m")
        }
    };
    let unready = PodSpec {
        ready: false,
        ..PodSpec {
            ns: "ml",
            ..PodSpec::new("unready", "10.0.0.3", "m")
        }
    };
    let no_ip = PodSpec {
        ip: None,
        ..PodSpec {
            ns: "ml",
            ..PodSpec::new("no-ip", "10.0.0.4", "m")
        }
    };
    let mut bad_port = PodSpec {
        ns: "ml",
        ..PodSpec::new("bad-port", "10.0.0.5", "m")
    };
    bad_port.labels[PORT_LABEL] = json!("http");
    let elsewhere = PodSpec {
        ns: "other",
        ..PodSpec::new("elsewhere", "10.0.0.6", "m")
    };
    for pod in [&good, &pending, &unready, &no_ip, &bad_port, &elsewhere] {
        fake.apply("pods", pod.json());
    }
    let h = start(
        &fake,
        KubeOptions {
            namespace: Some("ml".into()),
            ..opts()
        },
    )
    .await;
    h.expect("m", &["10.0.0.1:8000"]).await;
    assert_eq!(
        h.count(&h.stats.ignored),
        1,
        "only the bad port label is malformed"
    );
    let lists = fake.requests("pods", false);
    assert_eq!(lists[0].namespace.as_deref(), Some("ml"));

    // Still bad on an update: not counted again. Fixed: it joins.
    bad_port.labels["unrelated"] = json!("x");
    fake.apply("pods", bad_port.json());
    bad_port.labels[PORT_LABEL] = json!("8443");
    fake.apply("pods", bad_port.json());
    h.expect("m", &["10.0.0.1:8000", "10.0.0.5:8443"]).await;
    assert_eq!(h.count(&h.stats.ignored), 1);
    // Bad again: it leaves the view.
    bad_port.labels[PORT_LABEL] = json!("99999");
    fake.apply("pods", bad_port.json());
    h.expect("m", &["10.0.0.1:8000"]).await;
    assert_eq!(h.count(&h.stats.ignored), 2);
}

#[tokio::test]
async fn a_closed_watch_is_resumed_without_relisting() {
    let fake = FakeApi::start().await;
    fake.apply("pods", PodSpec::new("a", "10.0.0.1", "m").json());
    let h = start(&fake, opts()).await;
    h.expect("m", &["10.0.0.1:8000"]).await;
    h.until("first watch", |h| h.fake.requests("pods", true).len() == 1)
        .await;

    fake.close_watches("pods");
    // Made while no watch may be open: replayed from the resourceVersion.
    fake.apply("pods", PodSpec::new("b", "10.0.0.2", "m").json());
    h.until("a second watch", |h| {
        h.fake.requests("pods", true).len() >= 2
    })
    .await;
    h.expect("m", &["10.0.0.1:8000", "10.0.0.2:8000"]).await;
    fake.apply("pods", PodSpec::new("c", "10.0.0.3", "m").json());
    h.expect("m", &["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"])
        .await;

    let watches = fake.requests("pods", true);
    assert_eq!(
        watches[1].params["resourceVersion"], "1",
        "resumed from the last seen version"
    );
    assert_eq!(
        fake.requests("pods", false).len(),
        1,
        "no relist after a clean close"
    );
    assert_eq!(
        h.count(&h.stats.restarts),
        0,
        "a clean close is not an error"
    );
}

#[tokio::test]
async fn gone_410_relists_and_the_last_view_serves_meanwhile() {
    let fake = FakeApi::start().await;
    fake.apply("pods", PodSpec::new("a", "10.0.0.1", "m").json());
    fake.apply("pods", PodSpec::new("b", "10.0.0.2", "m").json());
    let h = start(&fake, opts()).await;
    h.expect("m", &["10.0.0.1:8000", "10.0.0.2:8000"]).await;
    h.until("a watch", |h| h.fake.requests("pods", true).len() == 1)
        .await;
    let published = h.views.lock().len();

    // History lost: b left and c came without events.
    fake.silently("pods", |objects| {
        objects.remove("default/b");
        let mut c = PodSpec::new("c", "10.0.0.3", "m").json();
        c["metadata"]["resourceVersion"] = json!("50");
        objects.insert("default/c".into(), c);
    });
    fake.send_raw(
        "pods",
        r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (50)","reason":"Expired","code":410}}"#,
    );
    h.until("a relist", |h| h.fake.requests("pods", false).len() == 2)
        .await;
    h.expect("m", &["10.0.0.1:8000", "10.0.0.3:8000"]).await;
    // The watch after the relist starts from the new list's version.
    h.until("a watch after the relist", |h| {
        h.fake.requests("pods", true).len() == 2
    })
    .await;
    let rv = fake.rv().to_string();
    assert_eq!(fake.requests("pods", true)[1].params["resourceVersion"], rv);
    // Meanwhile the old view stood: nothing empty or partial was published.
    let views = h.views.lock().clone();
    assert!(
        views[published..].iter().all(|v| v.addrs("m").len() == 2),
        "{views:?}"
    );
    assert_eq!(h.count(&h.stats.relists), 2);
    assert_eq!(h.count(&h.stats.restarts), 1);
    assert!(
        h.stats.last_error().unwrap().contains("410"),
        "{:?}",
        h.stats.last_error()
    );

    // And the new watch works.
    fake.delete("pods", "default/a");
    h.expect("m", &["10.0.0.3:8000"]).await;
}

#[tokio::test]
async fn malformed_objects_are_ignored_counted_and_do_not_break_the_watch() {
    let fake = FakeApi::start().await;
    fake.apply("pods", PodSpec::new("good", "10.0.0.1", "m").json());
    let mut bad_labels = PodSpec::new("bad-labels", "10.0.0.2", "m").json();
    bad_labels["metadata"]["labels"] = json!({MODEL_LABEL: 7});
    fake.apply("pods", bad_labels);
    let mut bad_ip = PodSpec::new("bad-ip", "10.0.0.3", "m").json();
    bad_ip["status"]["podIP"] = json!(42);
    fake.apply("pods", bad_ip);
    let h = start(&fake, opts()).await;
    h.expect("m", &["10.0.0.1:8000"]).await;
    assert_eq!(h.count(&h.stats.ignored), 2, "two bad list items");

    let mut bad_conditions = PodSpec::new("bad-conditions", "10.0.0.4", "m").json();
    bad_conditions["status"]["conditions"] = json!("yes");
    fake.apply("pods", bad_conditions);
    fake.apply("pods", PodSpec::new("good-2", "10.0.0.5", "m").json());
    h.expect("m", &["10.0.0.1:8000", "10.0.0.5:8000"]).await;
    assert_eq!(h.count(&h.stats.ignored), 3, "one bad watch object");

    // A good pod turning bad leaves the view.
    let mut turned = PodSpec::new("good", "10.0.0.1", "m").json();
    turned["spec"] = json!("nonsense");
    fake.apply("pods", turned);
    h.expect("m", &["10.0.0.5:8000"]).await;
    assert_eq!(h.count(&h.stats.ignored), 4);
    assert_eq!(
        h.count(&h.stats.restarts),
        0,
        "bad objects are not watch errors"
    );
    assert_eq!(fake.requests("pods", false).len(), 1, "and cause no relist");

    // A line that is not JSON at all is kube's decode error: the watcher
    // backs off and carries on with the same stream.
    fake.send_raw("pods", "{this is not json");
    fake.apply("pods", PodSpec::new("good-3", "10.0.0.6", "m").json());
    h.expect("m", &["10.0.0.5:8000", "10.0.0.6:8000"]).await;
    assert_eq!(h.count(&h.stats.restarts), 1);
    assert_eq!(fake.requests("pods", false).len(), 1);
}

#[tokio::test]
async fn inference_pool_serves_its_pods_on_every_target_port() {
    let fake = FakeApi::start().await;
    let member = |name: &'static str, ip: &'static str, node: &'static str| PodSpec {
        node,
        labels: json!({"app": "vllm", "tier": "gpu"}),
        ..PodSpec::new(name, ip, "unused")
    };
    fake.apply("pods", member("p1", "10.0.0.1", "node-a").json());
    fake.apply("pods", member("p2", "10.0.0.2", "node-b").json());
    fake.apply(
        "pods",
        PodSpec {
            ns: "other",
            ..member("p3", "10.0.0.3", "node-a")
        }
        .json(),
    );
    fake.apply(
        "pods",
        PodSpec {
            ready: false,
            ..member("p4", "10.0.0.4", "node-a")
        }
        .json(),
    );
    fake.apply(
        "pods",
        PodSpec {
            labels: json!({"app": "web"}),
            ..member("p5", "10.0.0.5", "node-a")
        }
        .json(),
    );
    fake.apply("pods", PodSpec::new("labelled", "10.0.0.9", "llama").json());
    fake.apply(
        "inferencepools",
        pool(
            "default",
            "qwen-pool",
            json!({"app": "vllm"}),
            &[8000, 8001],
            json!({}),
        ),
    );
    let mut broken = pool(
        "default",
        "broken",
        json!({"app": "vllm"}),
        &[8000],
        json!({}),
    );
    broken["spec"]["targetPorts"] = json!([{"number": "x"}]);
    fake.apply("inferencepools", broken);

    let h = start(
        &fake,
        KubeOptions {
            inference_pools: true,
            ..opts()
        },
    )
    .await;
    h.expect(
        "qwen-pool",
        &[
            "10.0.0.1:8000",
            "10.0.0.1:8001",
            "10.0.0.2:8000",
            "10.0.0.2:8001",
        ],
    )
    .await;
    let view = h.latest().unwrap();
    assert_eq!(
        view.models["qwen-pool"]
            .iter()
            .map(|e| e.node_local)
            .collect::<Vec<_>>(),
        [true, true, false, false]
    );
    assert_eq!(
        view.addrs("llama"),
        ["10.0.0.9:8000".parse().unwrap()],
        "labels still work"
    );
    assert_eq!(view.models.len(), 2, "{view:?}");
    assert_eq!(h.count(&h.stats.ignored), 1, "the broken pool");
    let pod_list = &fake.requests("pods", false)[0];
    assert_eq!(
        pod_list.params.get("labelSelector"),
        None,
        "pools may select any pod"
    );

    // The annotation names the models.
    fake.apply(
        "inferencepools",
        pool(
            "default",
            "qwen-pool",
            json!({"app": "vllm"}),
            &[8000, 8001],
            json!({"steer.ai/models": "a,b"}),
        ),
    );
    h.until("models a and b", |h| {
        h.latest().is_some_and(|v| {
            v.addrs("a").len() == 4
                && v.addrs("b").len() == 4
                && !v.models.contains_key("qwen-pool")
        })
    })
    .await;
    // A member turning unready leaves every model of the pool.
    fake.apply(
        "pods",
        PodSpec {
            ready: false,
            ..member("p2", "10.0.0.2", "node-b")
        }
        .json(),
    );
    h.expect("a", &["10.0.0.1:8000", "10.0.0.1:8001"]).await;
    h.expect("b", &["10.0.0.1:8000", "10.0.0.1:8001"]).await;
    fake.delete("inferencepools", "default/qwen-pool");
    h.until("pool gone", |h| {
        h.latest()
            .is_some_and(|v| v.models.keys().collect::<Vec<_>>() == ["llama"])
    })
    .await;
}

#[tokio::test]
async fn a_missing_pool_crd_does_not_stop_pod_discovery() {
    let fake = FakeApi::start().await;
    fake.set_missing("inferencepools");
    fake.apply("pods", PodSpec::new("a", "10.0.0.1", "m").json());
    let h = start(
        &fake,
        KubeOptions {
            inference_pools: true,
            ..opts()
        },
    )
    .await;
    h.expect("m", &["10.0.0.1:8000"]).await;
    assert!(h.count(&h.stats.restarts) >= 1);
    assert!(
        h.stats.last_error().unwrap().contains("inferencepools"),
        "{:?}",
        h.stats.last_error()
    );
    fake.apply("pods", PodSpec::new("b", "10.0.0.2", "m").json());
    h.expect("m", &["10.0.0.1:8000", "10.0.0.2:8000"]).await;
}

#[tokio::test]
async fn metrics_show_the_discovered_endpoints() {
    let fake = FakeApi::start().await;
    fake.apply("pods", PodSpec::new("a", "10.0.0.1", "m").json());
    let mut bad = PodSpec::new("bad", "10.0.0.2", "m");
    bad.labels[PORT_LABEL] = json!("nope");
    fake.apply("pods", bad.json());
    let h = start(&fake, opts()).await;
    h.expect("m", &["10.0.0.1:8000"]).await;
    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(DiscoveryCollector::new(h.stats.clone())))
        .unwrap();
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .unwrap();
    for line in [
        "steer_discovery_endpoints{model=\"m\"} 1",
        "steer_discovery_ignored_objects_total 1",
        "steer_discovery_watch_restarts_total 0",
        "steer_discovery_relists_total 1",
        "steer_discovery_events_total 2",
        "steer_discovery_synced 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
}

/// A throwaway self-signed CA (CN=steer-test-ca, no key kept), standing in
/// for the service-account CA an in-cluster config carries.
const TEST_CA_BASE64: [&str; 7] = [
    "MIIBhzCCAS2gAwIBAgIUdAOoMKADmcHdfcvFfID/GT3ME1swCgYIKoZIzj0EAwIwGDEWMBQGA1UE",
    "AwwNc3RlZXItdGVzdC1jYTAgFw0yNjExMjEyMjIzMDlaGA8yMTI2MTAyODIyMjMwOVowGDEWMBQG",
    "A1UEAwwNc3RlZXItdGVzdC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABAefjDe8Fii/fKSg",
    "y00AAToa6swROLNXPdq1gsNriPmiCHGmj3yrQ60nqXaUdz9hbAwtwYfmHkkaI2OA3yWJxBujUzBR",
    "MB0GA1UdDgQWBBRjeDMgVGiuWjG0xjrjMDg7hkhqpzAfBgNVHSMEGDAWgBRjeDMgVGiuWjG0xjrj",
    "MDg7hkhqpzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDGR1tjS2/Pfixzi43v",
    "pikvQeXIu+MVXaJTjt/sSup35AIgAgh4cCZv9/BwnjMoglpqtAsbvGrqyuhIP2YwwpscUic=",
];

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The TLS stack (rustls with ring, the only crypto provider in the build)
/// is usable: an https client with a cluster CA builds, as in-cluster.
#[tokio::test]
async fn an_https_client_builds() {
    let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    let der = base64_decode(&TEST_CA_BASE64.concat());
    assert_eq!(
        (der.len(), &der[..2]),
        (395, &[0x30, 0x82][..]),
        "a DER certificate"
    );
    config.root_cert = Some(vec![der]);
    kube::Client::try_from(config).expect("rustls client config");
}

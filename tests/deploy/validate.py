#!/usr/bin/env python3
"""Offline validation of everything under deploy/.

    target/steer-venv/bin/python tests/deploy/validate.py [--agent-bin target/debug/steer-agent]

(run by `cargo test -p steer-e2e --test deploy_validation`, which builds the agent
and passes it in STEER_AGENT_BIN). What is checked against what:

  * core Kubernetes kinds: kubernetes-validate's published OpenAPI schemas for
    Kubernetes K8S_VERSION, strict mode (unknown fields fail);
  * custom resources (Gateway API, Inference Extension, Envoy Gateway, PodMonitor):
    the hand-written strict schemas in crd_schemas.py (no package ships theirs);
  * kustomizations: every resource exists, every manifest of the directory is
    listed, and the rendered output (kubectl kustomize when installed, else a small
    emulation of the features used) validates too;
  * Envoy bootstraps: the real protobuf API from xds-protos (json_format.ParseDict,
    strict; every @type must resolve) plus the protoc-gen-validate rules Envoy
    enforces; Envoy Gateway's extProc settings mapped onto the same proto;
  * cross-checks that keep deploy/ honest: DaemonSet flags exist in
    `steer-agent run --help`, the ConfigMap's config starts the real agent (and a
    broken one makes it exit 2), ports and names agree between DaemonSet, Service,
    Envoy, Envoy Gateway and InferencePools, the ORIGINAL_DST header is target-pod,
    the security context is the measured minimum, the dashboard's metric names
    exist in the agent's source;
  * negative self-tests: mutated copies (a misspelled field in a manifest, in a CRD
    object, in an Envoy config, ...) must FAIL, proving the checks bite.

Ends with one line `N passed, N failed, N skipped`; exit status 1 on any failure.
"""

import argparse
import copy
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / "target/steer-venv/bin/python"
HERE = Path(__file__).resolve().parent
# This file is named like the protoc-gen-validate package (`validate`, from
# xds-protos): keep its directory behind site-packages on the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

try:
    import jsonschema
    import kubernetes_validate
    import yaml
    from google.protobuf import json_format

    import crd_schemas
    import envoy_check
    from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
except ImportError as error:  # pragma: no cover - environment problem
    in_venv = Path(sys.prefix).resolve() == VENV_PYTHON.parent.parent.resolve()
    if VENV_PYTHON.exists() and not in_venv and not os.environ.get("STEER_VALIDATE_REEXEC"):
        os.environ["STEER_VALIDATE_REEXEC"] = "1"
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit(f"validate.py: missing Python dependency ({error}); run `cargo xtask setup`")

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"
CI = os.environ.get("CI") == "true"
TARGET_POD_HEADER = "target-pod"
MEASURED_CAPS = ["BPF", "NET_ADMIN"]
MODEL_HEADER = "x-gateway-model-name"


class CheckFailed(Exception):
    pass


def ensure(condition, message):
    if not condition:
        raise CheckFailed(message)


# --- loading ------------------------------------------------------------------------


def load_docs(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def manifest_files():
    """Kubernetes manifests: every YAML under deploy/ except Envoy bootstraps and
    kustomizations."""
    files = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if DEPLOY / "envoy" in path.parents or path.name == "kustomization.yaml":
            continue
        files.append(path)
    return files


def rel(path):
    return str(Path(path).relative_to(ROOT))


def key(obj):
    meta = obj.get("metadata", {})
    return (obj.get("kind"), meta.get("namespace"), meta.get("name"))


def find(objs, kind, namespace=None, name=None):
    hits = [
        o for o in objs
        if o.get("kind") == kind
        and (namespace is None or o["metadata"].get("namespace") == namespace)
        and (name is None or o["metadata"].get("name") == name)
    ]
    ensure(hits, f"no {kind} {namespace or '*'}/{name or '*'}")
    return hits


def one(objs, kind, namespace=None, name=None):
    hits = find(objs, kind, namespace, name)
    ensure(len(hits) == 1, f"{len(hits)} objects match {kind} {namespace}/{name}")
    return hits[0]


# --- schema validation --------------------------------------------------------------


def validate_object(obj):
    """Raises CheckFailed unless `obj` is valid for its apiVersion/kind."""
    ensure(isinstance(obj, dict) and "apiVersion" in obj and "kind" in obj, "not a Kubernetes object")
    schema = crd_schemas.SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            e = jsonschema.exceptions.best_match(errors)
            path = "/".join(str(p) for p in e.absolute_path)
            raise CheckFailed(f"{obj['kind']} {obj['metadata'].get('name')}: {path}: {e.message[:300]}")
        return "hand-written CRD schema"
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        raise CheckFailed(f"no schema for {obj['apiVersion']} {obj['kind']}: {e.message}") from None
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        raise CheckFailed(f"{obj['kind']} {obj['metadata'].get('name')}: {path}: {e.message[:300]}") from None
    return f"Kubernetes {K8S_VERSION} strict"


# --- kustomize ----------------------------------------------------------------------

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "GatewayClass", "CustomResourceDefinition"}


def kustomization_checks(directory):
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    errors = sorted(jsonschema.Draft202012Validator(crd_schemas.KUSTOMIZATION).iter_errors(kust), key=str)
    ensure(not errors, f"{rel(directory)}/kustomization.yaml: {errors[0].message if errors else ''}")
    listed = set()
    for entry in kust["resources"]:
        target = (directory / entry).resolve()
        if target.is_dir():
            ensure((target / "kustomization.yaml").exists(), f"{entry}: directory without kustomization.yaml")
        else:
            ensure(target.is_file(), f"{rel(directory)}: resource {entry} does not exist")
            listed.add(target)
    for path in directory.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            ensure(path.resolve() in listed, f"{rel(path)} is not listed in {rel(directory)}/kustomization.yaml")
    return kust


def emulate_kustomize(directory):
    """The kustomize features deploy/ uses: resources (files, directories),
    inline JSON 6902 patches (test, replace), namespace (namespaced objects,
    Namespace names, ClusterRoleBinding subjects) and images."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objs = []
    for entry in kust["resources"]:
        target = directory / entry
        objs += emulate_kustomize(target) if target.is_dir() else load_docs(target)
    objs = copy.deepcopy(objs)
    for patch in kust.get("patches", []):
        target = patch["target"]
        matched = [o for o in objs if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        ensure(matched, f"{rel(directory)}: patch target {target} matches nothing")
        for o in matched:
            json6902(o, yaml.safe_load(patch["patch"]), f"{rel(directory)} patch of {target['name']}")
    ns = kust.get("namespace")
    if ns:
        for o in objs:
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = ns
            elif o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
            if o["kind"] == "ClusterRoleBinding":
                for s in o.get("subjects", []):
                    if s.get("kind") == "ServiceAccount":
                        s["namespace"] = ns
    for image in kust.get("images", []):
        for o in objs:
            for c in pod_containers(o):
                name, _, _tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', _tag)}"
    return objs


def json6902(obj, ops, where):
    for op in ops:
        *parents, last = [p for p in op["path"].split("/")[1:]]
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        index = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            ensure(node[index] == op["value"], f"{where}: test {op['path']} == {op['value']!r} failed ({node[index]!r})")
        elif op["op"] == "replace":
            node[index] = op["value"]
        else:
            ensure(False, f"{where}: op {op['op']} is not emulated")


def pod_containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def render(directory):
    """kubectl kustomize when available (checked against the emulation), else the
    emulation alone."""
    emulated = emulate_kustomize(directory)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return emulated, "emulated (kubectl not installed)"
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    ensure(out.returncode == 0, f"kubectl kustomize {rel(directory)}: {out.stderr.strip()[:500]}")
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    ensure(
        sorted(map(key, rendered), key=str) == sorted(map(key, emulated), key=str),
        f"kubectl kustomize {rel(directory)} renders {sorted(map(key, rendered), key=str)}, "
        f"the emulation {sorted(map(key, emulated), key=str)}",
    )
    return rendered, "kubectl kustomize"


def render_into(rendered, directory):
    rendered[directory], how = render(directory)
    return how


# --- the agent ----------------------------------------------------------------------


def agent_help_flags(agent):
    out = subprocess.run([agent, "run", "--help"], capture_output=True, text=True, timeout=30)
    ensure(out.returncode == 0, f"steer-agent run --help failed: {out.stderr[:300]}")
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.stdout))


def parse_args(args):
    """DaemonSet args -> (subcommand, {flag: value or True})."""
    ensure(args and not args[0].startswith("-"), f"args must start with a subcommand: {args}")
    flags, i = {}, 1
    while i < len(args):
        token = args[i]
        ensure(token.startswith("--"), f"unexpected argument {token!r}")
        name, eq, value = token.partition("=")
        if eq:
            flags[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            flags[name] = args[i + 1]
            i += 1
        else:
            flags[name] = True
        i += 1
    return args[0], flags


def check_flags_exist(args, help_flags):
    _, flags = parse_args(args)
    unknown = sorted(set(flags) - help_flags)
    ensure(not unknown, f"flags not in `steer-agent run --help`: {unknown}")
    return f"{len(flags)} flags known to the agent"


def agent_flag_default(agent, flag):
    out = subprocess.run([agent, "run", "--help"], capture_output=True, text=True, timeout=30)
    section = out.stdout.split(f"{flag} ", 1)[-1].split("\n      --", 1)[0]
    found = re.search(r"\[default: ([^\]]+)\]", section)
    ensure(found, f"`steer-agent run --help` gives no default for {flag}")
    return found.group(1)


def ext_proc_cluster_streams(cluster):
    opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    return opts["explicit_http_config"]["http2_protocol_options"].get("max_concurrent_streams")


def check_stream_bounds_agree(agent, envoy_docs, mtls_cluster):
    default = int(agent_flag_default(agent, "--max-streams-per-connection"))
    clusters = {name: envoy_parts(doc)[2]["steer_ext_proc"] for name, doc in envoy_docs.items()}
    clusters["mtls/ext-proc-cluster.yaml"] = mtls_cluster
    for name, cluster in clusters.items():
        ensure(ext_proc_cluster_streams(cluster) == default,
               f"{name}: steer_ext_proc max_concurrent_streams {ext_proc_cluster_streams(cluster)} != the agent's "
               f"--max-streams-per-connection default {default} (Envoy would start streams the agent refuses)")
    return f"{len(clusters)} clusters at {default} streams per connection"


def check_mtls_cluster(envoy_doc, cluster):
    ensure(cluster["name"] == "steer_ext_proc", "the mTLS snippet must be the steer_ext_proc cluster")
    tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    ensure(tls.get("tls_certificates"), "Envoy must present a client certificate")
    ensure(tls.get("validation_context", {}).get("trusted_ca"), "Envoy must verify the agent's certificate")
    ensure("h2" in tls.get("alpn_protocols", []), "ALPN h2 (gRPC)")
    doc = copy.deepcopy(envoy_doc)
    clusters = doc["static_resources"]["clusters"]
    clusters[:] = [cluster if c["name"] == "steer_ext_proc" else c for c in clusters]
    return check_envoy_proto(doc)


def closed_ports(n):
    """Loopback ports nothing listens on (bound, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def loopback_config(text):
    """The config with every engine endpoint moved to a closed loopback port: the
    agent parses exactly the same structure but its scraper never contacts the
    example addresses (which are not ours to reach)."""
    config = yaml.safe_load(text)
    endpoints = [
        (model, i)
        for model, entry in (config.get("models") or {}).items()
        for i, _ in enumerate(entry.get("endpoints") or [])
    ]
    for (model, i), port in zip(endpoints, closed_ports(len(endpoints))):
        original = config["models"][model]["endpoints"][i]
        host, sep, _ = str(original).rpartition(":")
        if sep and host:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                continue  # not an IP: leave it, the agent must reject it
            config["models"][model]["endpoints"][i] = f"127.0.0.1:{port}"
    return yaml.safe_dump(config, sort_keys=False)


def run_agent(agent, ds_args, config_text, timeout=20.0):
    """Starts the agent with the DaemonSet's args, the config in a temp file,
    loopback listeners and no datapath. Returns (True, line) once it printed its
    `steer-agent listening` line, or (False, exit code and stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "steer.yaml"
        config_path.write_text(loopback_config(config_text))
        sub, flags = parse_args(ds_args)
        flags.update({
            "--config": str(config_path),
            "--ext-proc-addr": "127.0.0.1:0",
            "--metrics-addr": "127.0.0.1:0",
            "--datapath": "off",
            # No cluster here: the config is what is checked, endpoints stay static.
            "--discovery": "static",
        })
        flags.pop("--k8s-inference-pools", None)
        argv = [agent, sub]
        for name, value in flags.items():
            argv += [name] if value is True else [name, value]
        env = dict(os.environ, RUST_LOG="warn", STEER_LOG_FORMAT="json")
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env)
            try:
                return wait_listening(proc, stderr, timeout)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                proc.stdout.close()


def wait_listening(proc, stderr, timeout):
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if "steer-agent listening" in line:
                    return True, line.strip()
            if chunk:
                continue
        if proc.poll() is not None:
            stderr.seek(0)
            text = stderr.read().decode(errors="replace").strip()
            return False, f"exit code {proc.returncode}: {text[-500:]}"
    return False, f"no `steer-agent listening` line within {timeout} s"


def check_config_starts_agent(agent, ds_args, config_text):
    ok, detail = run_agent(agent, ds_args, config_text)
    ensure(ok, f"the agent rejected the ConfigMap config / DaemonSet args: {detail}")
    return detail


def check_config_rejected(agent, ds_args, config_text):
    ok, detail = run_agent(agent, ds_args, config_text)
    ensure(not ok and detail.startswith("exit code 2"), f"expected exit code 2, got: {detail}")
    return detail


# --- the DaemonSet and friends -------------------------------------------------------


def agent_parts(objs, namespace="steer-system"):
    ds = one(objs, "DaemonSet", namespace, "steer-agent")
    pod = ds["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "steer-agent"]
    ensure(len(containers) == 1, "DaemonSet has no steer-agent container")
    return ds, pod, containers[0]


def addr_port(value):
    host, _, port = value.rpartition(":")
    ensure(host and port.isdigit(), f"{value!r} is not ADDR:PORT")
    return int(port)


def container_port(container, name):
    ports = [p for p in container.get("ports", []) if p.get("name") == name]
    ensure(len(ports) == 1, f"container has no port named {name}")
    return ports[0]["containerPort"]


def check_daemonset(objs, namespace="steer-system", pod_network_envoy=False):
    ds, pod, c = agent_parts(objs, namespace)
    sub, flags = parse_args(c["args"])
    bind = flags["--ext-proc-addr"]
    if pod_network_envoy:
        ensure(bind.startswith("0.0.0.0:"), f"a pod-network Envoy needs --ext-proc-addr 0.0.0.0:PORT, not {bind}")
    else:
        ensure(bind.startswith("127.0.0.1:") or bind.startswith("unix:"),
               f"--ext-proc-addr {bind}: the node-local agent listens on loopback or a Unix socket only")
    ensure(sub == "run", "the container must run `steer-agent run`")
    ensure(pod.get("hostNetwork") is True, "hostNetwork must be true (node-local Envoy, host cgroup)")
    ensure(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "hostNetwork needs dnsPolicy ClusterFirstWithHostNet")
    ensure(pod.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true", "nodeSelector nvidia.com/gpu.present")
    ensure(any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "toleration for nvidia.com/gpu")
    # Security: exactly the measured minimum.
    sc = c.get("securityContext", {})
    ensure(sc.get("runAsUser") == 0, "runAsUser must be 0 (bpffs pins, host cgroup)")
    ensure(sc.get("privileged") is False, "privileged must be false")
    ensure(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    ensure(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    caps = sc.get("capabilities", {})
    ensure(caps.get("drop") == ["ALL"], "capabilities.drop must be [ALL]")
    ensure(sorted(caps.get("add", [])) == sorted(MEASURED_CAPS), f"capabilities.add must be exactly {MEASURED_CAPS}")
    # Env.
    env = {e["name"]: e for e in c.get("env", [])}
    ensure(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
           "NODE_NAME from the downward API (spec.nodeName)")
    # Ports and probes.
    ext_proc = addr_port(flags["--ext-proc-addr"])
    metrics = addr_port(flags["--metrics-addr"])
    ensure(container_port(c, "grpc") == ext_proc, "container port grpc != --ext-proc-addr port")
    ensure(container_port(c, "metrics") == metrics, "container port metrics != --metrics-addr port")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        ensure(get.get("path") == path and get.get("port") in ("metrics", metrics), f"{probe} must GET {path} on the metrics port")
    # Volumes.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    config_dir, _, config_key = flags["--config"].rpartition("/")
    mount = mounts.get(config_dir)
    ensure(mount is not None and "subPath" not in mount, f"--config dir {config_dir} must be a (non-subPath) volume mount")
    cm_name = volumes[mount["name"]].get("configMap", {}).get("name")
    ensure(cm_name, f"{config_dir} is not a ConfigMap volume")
    cm = one(objs, "ConfigMap", namespace, cm_name)
    ensure(config_key in cm.get("data", {}), f"ConfigMap {cm_name} has no key {config_key}")
    config = yaml.safe_load(cm["data"][config_key])
    datapath = config.get("datapath", {})
    cgroup = flags.get("--cgroup")
    ensure(cgroup and cgroup == datapath.get("cgroup"), "--cgroup and the config's datapath.cgroup must agree")
    cg_mount = mounts.get(cgroup)
    ensure(cg_mount and volumes[cg_mount["name"]].get("hostPath", {}).get("path") == "/sys/fs/cgroup",
           f"{cgroup} must be the host's /sys/fs/cgroup (hostPath)")
    ensure(cg_mount.get("readOnly") is True, "the host cgroup mount should be read-only (attach needs only an fd)")
    bpf_mount = mounts.get("/sys/fs/bpf")
    ensure(bpf_mount and volumes[bpf_mount["name"]].get("hostPath", {}).get("path") == "/sys/fs/bpf",
           "/sys/fs/bpf must be the host's bpffs (hostPath)")
    ensure(bpf_mount.get("mountPropagation") in (None, "None", "HostToContainer"),
           "Bidirectional propagation needs a privileged container")
    ensure(str(datapath.get("pin_dir", "")).startswith("/sys/fs/bpf/"), "datapath.pin_dir must be under /sys/fs/bpf")
    return {"ext_proc": ext_proc, "metrics": metrics, "config": cm["data"][config_key], "args": c["args"],
            "labels": ds["spec"]["template"]["metadata"]["labels"], "models": sorted(config.get("models", {})),
            "image": c["image"]}


def check_service(objs, facts, namespace="steer-system"):
    svc = one(objs, "Service", namespace, "steer-agent")
    spec = svc["spec"]
    ensure(spec.get("internalTrafficPolicy") == "Local", "Service internalTrafficPolicy must be Local")
    ensure(all(facts["labels"].get(k) == v for k, v in spec["selector"].items()), "Service selector misses the agent pods")
    ports = {p["name"]: p for p in spec["ports"]}
    ensure(ports.get("grpc", {}).get("targetPort") in ("grpc", facts["ext_proc"]), "Service port grpc must target the agent's grpc port")
    ensure(ports["grpc"].get("appProtocol") == "grpc", "Service port grpc: appProtocol grpc")
    ensure(ports.get("metrics", {}).get("targetPort") in ("metrics", facts["metrics"]), "Service port metrics must target the metrics port")
    return ports["grpc"]["port"]


def check_rbac(objs):
    role = one(objs, "ClusterRole", None, "steer-agent")
    rules = sorted(
        (tuple(r.get("apiGroups", [])), tuple(r.get("resources", [])), tuple(sorted(r.get("verbs", []))))
        for r in role["rules"]
    )
    expected = sorted([
        (("",), ("pods",), ("get", "list", "watch")),
        (("inference.networking.k8s.io",), ("inferencepools",), ("get", "list", "watch")),
    ])
    ensure(rules == expected, f"ClusterRole must grant get/list/watch on pods and inferencepools only, has {rules}")
    binding = one(objs, "ClusterRoleBinding", None, "steer-agent")
    ensure(binding["roleRef"]["name"] == "steer-agent", "binding must reference the steer-agent ClusterRole")
    sa = [s for s in binding["subjects"] if s["kind"] == "ServiceAccount"]
    ensure(sa and all(any(o["metadata"]["name"] == s["name"] and o["metadata"].get("namespace") == s["namespace"]
                          for o in find(objs, "ServiceAccount")) for s in sa), "binding subject must be the agent's ServiceAccount")
    return "pods + inferencepools, get/list/watch"


def check_podmonitor(pm, facts):
    ensure(all(facts["labels"].get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items()),
           "PodMonitor selector misses the agent pods")
    ep = pm["spec"]["podMetricsEndpoints"]
    ensure(ep and ep[0].get("port") == "metrics" and ep[0].get("path", "/metrics") == "/metrics",
           "PodMonitor must scrape port metrics, /metrics")
    ensure(ep[0].get("honorLabels") is True, "honorLabels: the agent's `pod` label must not become exported_pod")
    return "port metrics /metrics"


# --- Envoy --------------------------------------------------------------------------

EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def check_envoy_proto(config):
    boot = envoy_check.load_bootstrap(config)
    errors = envoy_check.pgv_errors(boot)
    ensure(not errors, f"protoc-gen-validate: {errors[:3]}")
    urls = sorted(set(envoy_check.type_urls(config)))
    return f"Bootstrap ok, {len(urls)} @types resolved"


def envoy_parts(config):
    hcms, ext_procs = [], []
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f.get("typed_config", {}).get("@type") == HCM_TYPE:
                    hcms.append(f["typed_config"])
    ensure(len(hcms) == 1, "expected one HttpConnectionManager")
    hcm = hcms[0]
    filters = hcm["http_filters"]
    ext_procs = [f["typed_config"] for f in filters if f.get("typed_config", {}).get("@type") == EXT_PROC_TYPE]
    routing = [e for e in ext_procs if not e.get("observability_mode")]
    ensure(len(routing) == 1, "expected one routing ext_proc filter (not in observability mode)")
    ensure(filters[-1]["name"] == "envoy.filters.http.router", "the router must be the last HTTP filter")
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    return hcm, routing[0], clusters


def observer_filters(config):
    """The HTTP filter entries of the ext_proc filters in observability mode (usage accounting)."""
    hcm = envoy_parts(config)[0]
    return [f for f in hcm["http_filters"]
            if f.get("typed_config", {}).get("@type") == EXT_PROC_TYPE and f["typed_config"].get("observability_mode")]


def envoy_observers(config):
    """The typed configs of the usage observers."""
    return [f["typed_config"] for f in observer_filters(config)]


GRPC_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"


def status_range(log_filter):
    """The [low, high] response codes an access-log filter of status_code_filters admits (None if another shape)."""
    parts = log_filter.get("and_filter", {}).get("filters") or [log_filter]
    low, high = 0, 999
    for part in parts:
        cmp = part.get("status_code_filter", {}).get("comparison")
        if not cmp:
            return None
        value = cmp["value"]["default_value"]
        op = cmp.get("op", "EQ")
        if op in ("GE", "EQ"):
            low = max(low, value)
        if op in ("LE", "EQ"):
            high = min(high, value)
    return low, high


def check_failure_log(hcm, ext_proc):
    """502-504 answers reach the agent over the gRPC access log, at once (pod ejection)."""
    logs = [a for a in hcm.get("access_log", []) if a.get("typed_config", {}).get("@type") == GRPC_LOG_TYPE]
    ensure(len(logs) == 1, "expected one gRPC access log to the agent (502-504 answers take pods out of rotation)")
    log = logs[0]
    common = log["typed_config"]["common_config"]
    ensure(common.get("grpc_service", {}).get("envoy_grpc") == {"cluster_name": ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]},
           "the failure access log must go to the agent's cluster")
    ensure(common.get("transport_api_version") == "V3", "the failure access log must speak the V3 API")
    ensure(common.get("buffer_size_bytes") == 0, "the failure access log must send each entry at once (buffer_size_bytes: 0)")
    ensure(status_range(log.get("filter", {})) == (502, 504), "the failure access log must log exactly 502-504 answers")


def check_one_wait(hcm, ext_proc, observer_entries):
    """envoy.yaml: one wait per request, none on the response, failures through the access log, usage observer off."""
    observers = [f["typed_config"] for f in observer_entries]
    mode = ext_proc["processing_mode"]
    ensure(mode.get("request_body_mode") == "STREAMED" and ext_proc.get("send_body_without_waiting_for_header_response") is True,
           "request_body_mode STREAMED with send_body_without_waiting_for_header_response (one wait per request)")
    ensure(mode.get("response_header_mode") == "SKIP" and mode.get("response_body_mode", "NONE") == "NONE",
           "the routing filter must skip response headers and body (Envoy would wait on them)")
    ensure(mode.get("response_trailer_mode") == "SEND",
           "response_trailer_mode SEND keeps the routing stream open until the response ends (exact in-flight)")
    ensure("steer" in ext_proc.get("metadata_options", {}).get("receiving_namespaces", {}).get("untyped", []),
           "the routing filter must receive the agent's `steer` metadata (response headers, usage observer)")
    echoed = {h["header"]["key"]: h["header"]["value"]
              for vh in hcm["route_config"]["virtual_hosts"] for h in vh.get("response_headers_to_add", [])}
    ensure(echoed.get(TARGET_POD_HEADER) == "%DYNAMIC_METADATA(steer:pod)%",
           f"responses must echo {TARGET_POD_HEADER} from the agent's steer metadata")
    ensure(len(observers) <= 1, "at most one usage observer")
    for obs in observers:
        om = obs["processing_mode"]
        ensure(obs["grpc_service"] == ext_proc["grpc_service"], "the usage observer must call the agent")
        ensure(om.get("request_header_mode") == "SKIP" and om.get("request_body_mode", "NONE") == "NONE",
               "the usage observer needs no request phase")
        ensure(om.get("response_header_mode", "SEND") == "SEND" and om.get("response_body_mode") == "STREAMED",
               "the usage observer must see response headers and the streamed body")
        ensure("steer" in obs.get("metadata_options", {}).get("forwarding_namespaces", {}).get("untyped", []),
               "the usage observer must forward `steer` metadata (the pod the tokens belong to)")
        ensure(obs.get("failure_mode_allow") is True, "a failing usage observer must never fail requests")
    ensure(all(f.get("disabled") is True for f in observer_entries),
           "the usage observer must be off as shipped (disabled: true): it doubles Envoy's ext_proc streams")
    check_failure_log(hcm, ext_proc)
    return f"one wait per request, failure access log, {len(observers)} usage observer(s) off"


def check_envoy_semantics(config, facts, full_duplex):
    hcm, ext_proc, clusters = envoy_parts(config)
    mode = ext_proc["processing_mode"]
    # ext_proc -> the agent.
    grpc_cluster = ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]
    ensure(grpc_cluster in clusters, f"ext_proc cluster {grpc_cluster} is not defined")
    cluster = clusters[grpc_cluster]
    ensure("http2_protocol_options" in json.dumps(cluster.get("typed_extension_protocol_options", {})),
           "the ext_proc cluster must speak HTTP/2 (gRPC)")
    ports = [
        ep["endpoint"]["address"]["socket_address"]["port_value"]
        for group in cluster["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    ]
    ensure(ports and all(p == facts["ext_proc"] for p in ports),
           f"ext_proc cluster port(s) {ports} != the DaemonSet's --ext-proc-addr port {facts['ext_proc']}")
    ensure(ext_proc.get("failure_mode_allow") is False, "failure_mode_allow must be false (no arbitrary pod)")
    meta = ext_proc.get("metadata_options", {})
    ensure("envoy.lb" in meta.get("receiving_namespaces", {}).get("untyped", []),
           "metadata_options.receiving_namespaces must accept envoy.lb (else Envoy drops the agent's metadata)")
    ensure("envoy.lb.subset_hint" in meta.get("forwarding_namespaces", {}).get("untyped", []),
           "metadata_options.forwarding_namespaces must forward envoy.lb.subset_hint to the agent")
    listener_limits = [l.get("per_connection_buffer_limit_bytes", 1 << 20)
                       for l in config["static_resources"]["listeners"]]
    ensure(all(limit > facts.get("max_body_bytes", 8 << 20) for limit in listener_limits),
           f"listener buffer limits {listener_limits} must exceed the agent's max_body_bytes "
           "(else Envoy refuses bodies the agent accepts)")
    agent_limit = yaml.safe_load(facts["config"]).get("max_request_headers", 100)
    envoy_limit = hcm.get("common_http_protocol_options", {}).get("max_headers_count", 100)
    ensure(agent_limit == envoy_limit,
           f"Envoy's max_headers_count {envoy_limit} != the agent's max_request_headers {agent_limit} "
           "(the agent answers 431 where its routing headers would pass Envoy's limit)")
    ensure(hcm.get("stream_error_on_invalid_http_message") is True,
           "stream_error_on_invalid_http_message: true (else Envoy closes HTTP/1 connections after the agent's 400s)")
    ensure(hcm.get("local_reply_config", {}).get("mappers"),
           "local_reply_config must turn Envoy's own errors into OpenAI-style JSON")
    if full_duplex:
        ensure(mode.get("response_body_mode") == "STREAMED", "response bodies must stream")
        ensure(mode.get("request_body_mode") == "FULL_DUPLEX_STREAMED", "request_body_mode FULL_DUPLEX_STREAMED")
    else:
        check_one_wait(hcm, ext_proc, observer_filters(config))
    for direction in ("request", "response"):
        if mode.get(f"{direction}_body_mode") == "FULL_DUPLEX_STREAMED":
            ensure(mode.get(f"{direction}_trailer_mode") == "SEND",
                   f"FULL_DUPLEX_STREAMED {direction} bodies require {direction}_trailer_mode SEND")
    # ORIGINAL_DST on target-pod.
    odst = [c for c in clusters.values() if c.get("type") == "ORIGINAL_DST"]
    ensure(len(odst) == 1, "expected one ORIGINAL_DST cluster")
    odst = odst[0]
    ensure(odst.get("lb_policy") == "CLUSTER_PROVIDED", "ORIGINAL_DST needs lb_policy CLUSTER_PROVIDED")
    lb = odst.get("original_dst_lb_config", {})
    ensure(lb.get("use_http_header") is True and lb.get("http_header_name") == TARGET_POD_HEADER,
           f"ORIGINAL_DST must honour the {TARGET_POD_HEADER} header")
    # Routes: per-model header routes, then the default; all to ORIGINAL_DST.
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
    for r in routes:
        ensure(r["route"]["cluster"] in clusters, f"route {r.get('name')} -> unknown cluster")
        ensure(r["route"]["cluster"] == odst["name"], f"route {r.get('name')} must go to {odst['name']}")
    per_model = {}
    for r in routes[:-1]:
        headers = r["match"].get("headers", [])
        names = [h for h in headers if h["name"].lower() == MODEL_HEADER]
        ensure(names, f"route {r.get('name')} does not match on {MODEL_HEADER}")
        per_model[names[0]["string_match"]["exact"]] = r.get("name")
    ensure(not routes[-1]["match"].get("headers") and routes[-1]["match"].get("prefix") == "/",
           "the last route must be the catch-all default")
    missing = sorted(set(facts["models"]) - set(per_model))
    ensure(not missing, f"no per-model route for the ConfigMap's models {missing}")
    return f"ext_proc :{facts['ext_proc']}, {TARGET_POD_HEADER}, routes {sorted(per_model)} + default"


EG_BODY = {"Buffered": "BUFFERED", "Streamed": "STREAMED", "BufferedPartial": "BUFFERED_PARTIAL",
           "FullDuplexStreamed": "FULL_DUPLEX_STREAMED"}


def eg_duration(value):
    total = 0.0
    for amount, unit in re.findall(r"([0-9]+)(ms|h|m|s)", value):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return f"{total:g}s"


def eg_ext_proc_as_envoy(ext):
    """Envoy Gateway's extProc entry as the ExternalProcessor Envoy Gateway generates."""
    pm = ext.get("processingMode", {})
    mode = {}
    for direction in ("request", "response"):
        if direction in pm:
            mode[f"{direction}_header_mode"] = "SEND"
            if "body" in pm[direction]:
                mode[f"{direction}_body_mode"] = EG_BODY[pm[direction]["body"]]
                if pm[direction]["body"] == "FullDuplexStreamed":
                    mode[f"{direction}_trailer_mode"] = "SEND"
        else:
            mode[f"{direction}_header_mode"] = "SKIP"
    out = {
        "@type": EXT_PROC_TYPE,
        "grpc_service": {"envoy_grpc": {"cluster_name": "steer-agent"}},
        "processing_mode": mode,
        "allow_mode_override": pm.get("allowModeOverride", False),
        "failure_mode_allow": ext.get("failOpen", False),
    }
    if "messageTimeout" in ext:
        out["message_timeout"] = eg_duration(ext["messageTimeout"])
    meta = ext.get("metadata", {})
    out["metadata_options"] = {
        "receiving_namespaces": {"untyped": meta.get("writableNamespaces", [])},
        "forwarding_namespaces": {"untyped": meta.get("accessibleNamespaces", [])},
    }
    return out


def check_eg_policy(policy, envoy_reference, service, service_port):
    checked = []
    for ext in policy["spec"]["extProc"]:
        as_envoy = eg_ext_proc_as_envoy(ext)
        envoy_check.resolve_type(EXT_PROC_TYPE)
        msg = json_format.ParseDict({k: v for k, v in as_envoy.items() if k != "@type"},
                                    ext_proc_pb2.ExternalProcessor(), ignore_unknown_fields=False)
        errors = envoy_check.pgv_errors(msg)
        ensure(not errors, f"extProc as Envoy config: {errors[:3]}")
        # Envoy Gateway's extProc API has neither send_body_without_waiting_for_header_response
        # nor observability mode: the policy buffers the request body and streams the response
        # to the agent, which answers both (and echoes target-pod on the response itself).
        pm = as_envoy["processing_mode"]
        ensure(pm.get("request_body_mode") == "BUFFERED", "extProc request body must be Buffered (pod chosen before headers go upstream)")
        ensure(pm.get("response_header_mode") == "SEND" and pm.get("response_body_mode") == "STREAMED",
               "extProc response body Streamed (usage from the final SSE chunk without delaying the stream)")
        _, ref_ext_proc, _ = envoy_parts(envoy_reference)
        ensure(as_envoy["failure_mode_allow"] == ref_ext_proc.get("failure_mode_allow", False),
               "extProc failOpen differs from envoy.yaml")
        ref_meta = ref_ext_proc.get("metadata_options", {})
        for kind in ("receiving_namespaces", "forwarding_namespaces"):
            ours = set(as_envoy["metadata_options"][kind]["untyped"])
            ref = set(ref_meta.get(kind, {}).get("untyped", []))
            ensure(ours == ref - {"steer"},
                   f"extProc metadata {kind} {sorted(ours)} != envoy.yaml's {sorted(ref)} without `steer`")
        for ref in ext["backendRefs"]:
            ensure(ref.get("kind", "Service") == "Service" and ref["name"] == service["metadata"]["name"]
                   and ref.get("namespace", policy["metadata"]["namespace"]) == service["metadata"]["namespace"]
                   and ref.get("port") == service_port,
                   f"extProc backendRef {ref} is not the agent Service port {service_port}")
        checked.append(as_envoy["processing_mode"]["request_body_mode"])
    return f"extProc {checked} == envoy.yaml, backend steer-agent:{service_port}"


def check_reference_grant(objs, policy, service):
    ns = policy["metadata"]["namespace"]
    if ns == service["metadata"]["namespace"]:
        return "same namespace"
    for grant in find(objs, "ReferenceGrant", service["metadata"]["namespace"]):
        frm = any(f["group"] == "gateway.envoyproxy.io" and f["kind"] == "EnvoyExtensionPolicy" and f["namespace"] == ns
                  for f in grant["spec"]["from"])
        to = any(t["group"] == "" and t["kind"] == "Service" and t.get("name") in (None, service["metadata"]["name"])
                 for t in grant["spec"]["to"])
        if frm and to:
            return f"ReferenceGrant {grant['metadata']['name']}"
    raise CheckFailed(f"no ReferenceGrant lets EnvoyExtensionPolicy in {ns} use Service steer-agent")


def check_eg_routing(objs):
    route = one(objs, "HTTPRoute", "llm", "steer-openai")
    rule = route["spec"]["rules"][0]
    backends = rule["backendRefs"]
    ensure(len(backends) == 1 and backends[0]["kind"] == "Backend", "the route must send to the DynamicResolver Backend")
    backend = one(objs, "Backend", "llm", backends[0]["name"])
    ensure(backend["spec"].get("type") == "DynamicResolver", "Backend type must be DynamicResolver")
    refs = [f["extensionRef"] for f in rule.get("filters", []) if f["type"] == "ExtensionRef"]
    ensure(refs, "the route needs the host rewrite filter")
    flt = one(objs, "HTTPRouteFilter", "llm", refs[0]["name"])
    host = flt["spec"]["urlRewrite"]["hostname"]
    ensure(host == {"type": "Header", "header": TARGET_POD_HEADER}, f"Host must be rewritten from {TARGET_POD_HEADER}")
    gw = one(objs, "Gateway", "llm", route["spec"]["parentRefs"][0]["name"])
    policy = one(objs, "EnvoyExtensionPolicy", "llm")
    ensure(any(t["kind"] == "Gateway" and t["name"] == gw["metadata"]["name"] for t in policy["spec"]["targetRefs"]),
           "the EnvoyExtensionPolicy must target the route's Gateway")
    return f"Gateway {gw['metadata']['name']} -> ext_proc -> Backend DynamicResolver, Host from {TARGET_POD_HEADER}"


def check_inference_extension(objs, namespace):
    """InferencePools reach the agent Service of their own namespace; the route
    splits by model header with weights summing to 100 for the canary."""
    svc = one(objs, "Service", namespace, "steer-agent")
    grpc = {p["name"]: p for p in svc["spec"]["ports"]}["grpc"]["port"]
    pools = find(objs, "InferencePool", namespace)
    for pool in pools:
        epp = pool["spec"]["endpointPickerRef"]
        ensure(epp.get("kind", "Service") == "Service" and epp["name"] == svc["metadata"]["name"]
               and epp["port"]["number"] == grpc,
               f"InferencePool {pool['metadata']['name']}: endpointPickerRef must be Service steer-agent:{grpc} "
               f"in namespace {namespace}")
    route = one(objs, "HTTPRoute", namespace, "models")
    names = {p["metadata"]["name"] for p in pools}
    models = {}
    for rule in route["spec"]["rules"]:
        header = [h for m in rule["matches"] for h in m.get("headers", []) if h["name"].lower() == MODEL_HEADER]
        ensure(header, "every rule must match on X-Gateway-Model-Name")
        for ref in rule["backendRefs"]:
            ensure(ref.get("group") == "inference.networking.k8s.io" and ref.get("kind") == "InferencePool"
                   and ref["name"] in names, f"backendRef {ref} is not one of the InferencePools")
        models[header[0]["value"]] = [(r["name"], r.get("weight", 1)) for r in rule["backendRefs"]]
    canary = [v for v in models.values() if len(v) > 1]
    ensure(canary and all(sum(w for _, w in v) == 100 for v in canary), "the canary weights must sum to 100")
    return f"{len(pools)} pools -> {namespace}/steer-agent:{grpc}; models {models}"


# --- Grafana ------------------------------------------------------------------------

REQUIRED_METRICS = {
    "steer_decisions_total", "steer_decision_duration_seconds_bucket", "steer_kernel_pod_srtt_microseconds",
    "steer_errors_total", "steer_pod_in_flight", "steer_datapath_mode",
}


def agent_metric_names():
    names = set()
    for path in (ROOT / "steer-agent/src/telemetry").glob("*.rs"):
        text = path.read_text()
        names |= set(re.findall(r'"(steer_[a-z0-9_]+)"', text))
        for hist in re.findall(r'HistogramOpts::new\(\s*"(steer_[a-z0-9_]+)"', text):
            names |= {f"{hist}_bucket", f"{hist}_sum", f"{hist}_count"}
    ensure(len(names) > 10, "could not read the agent's metric names")
    return names


def check_dashboard(dashboard, known):
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    ensure(len(ids) == len(set(ids)), "panel ids must be unique")
    used = set()
    for expr in exprs:
        ensure(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"unbalanced: {expr}")
        used |= set(re.findall(r"\b(steer_[a-z0-9_]+)", expr))
    unknown = sorted(used - known)
    ensure(not unknown, f"metrics the agent does not export: {unknown}")
    missing = sorted(REQUIRED_METRICS - used)
    ensure(not missing, f"dashboard lacks {missing}")
    return f"{len(dashboard['panels'])} panels, {len(used)} metrics, all exported by the agent"


# --- Dockerfile / README ------------------------------------------------------------


def check_dockerfile(text, image):
    setup_ebpf = (ROOT / "xtask/src/setup_ebpf.rs").read_text()
    linker = re.search(r'BPF_LINKER_VERSION: &str = "([^"]+)"', setup_ebpf).group(1)
    rust_version = re.search(r'rust-version = "([^"]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    ensure(len(stages) == 2, "expected a two-stage build")
    ensure(stages[0] == f"rust:{rust_version}-bookworm", f"builder must be rust:{rust_version}-bookworm (workspace rust-version)")
    ensure(stages[1] == "debian:bookworm-slim", "runtime must be debian:bookworm-slim (same glibc as the builder)")
    ensure("rust-src" in text, "the eBPF build needs rust-src")
    ensure(f"bpf-linker@{linker}" in text, f"bpf-linker must be {linker}, as in xtask/src/setup_ebpf.rs")
    ensure("STEER_REQUIRE_EBPF=1" in text and "-p steer-agent" in text, "build steer-agent with STEER_REQUIRE_EBPF=1")
    ensure(re.search(r'ENTRYPOINT \["/usr/local/bin/steer-agent"\]', text), "ENTRYPOINT must be the agent")
    ensure(image.split(":")[0].rsplit("/", 1)[-1] == "steer-agent", f"DaemonSet image {image} is not steer-agent")
    return f"rust:{rust_version} + bpf-linker {linker} -> debian:bookworm-slim"


def check_readme(text):
    abi = "\n".join(p.read_text() for p in (ROOT / "steer-ebpf/abi").rglob("*.rs"))
    for needle in ("kubectl apply -k deploy/kubernetes", "--unpin", "routing-strategy", "/readyz", "steer-agent maps"):
        ensure(needle in text, f"deploy/README.md does not mention {needle!r}")
    for map_name in re.findall(r"/sys/fs/bpf/steer/([A-Z_]+)", text):
        ensure(map_name in abi, f"README names map {map_name}, which steer-ebpf/abi does not define")
    return "commands and map names present"


# --- driver -------------------------------------------------------------------------


class Runner:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def check(self, name, fn, *args):
        try:
            detail = fn(*args)
        except (CheckFailed, jsonschema.ValidationError, json_format.ParseError, LookupError, KeyError,
                TypeError, ValueError, subprocess.SubprocessError, OSError) as e:
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            return None
        self.passed += 1
        print(f"ok   {name}" + (f"  ({detail})" if isinstance(detail, str) else ""))
        return detail

    def expect_failure(self, name, fn, *args):
        """A negative self-test: `fn` must raise (the mutation must be caught)."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any rejection counts
            self.passed += 1
            print(f"ok   negative: {name}  (rejected: {type(e).__name__}: {str(e)[:140]})")
            return
        self.failed += 1
        print(f"FAIL negative: {name}: the mutated input was ACCEPTED")

    def skip(self, name, reason):
        self.skipped += 1
        print(f"skip {name}: {reason}")


def find_agent(cli_value):
    for candidate in (cli_value, os.environ.get("STEER_AGENT_BIN"),
                      ROOT / "target/debug/steer-agent", ROOT / "target/release/steer-agent"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent-bin", help="steer-agent binary (default: $STEER_AGENT_BIN, target/{debug,release})")
    args = parser.parse_args()
    run = Runner()
    agent = find_agent(args.agent_bin)

    # 1. Every manifest, one object at a time.
    all_objs = {}
    for path in manifest_files():
        for i, obj in enumerate(load_docs(path)):
            all_objs.setdefault(path, []).append(obj)
            run.check(f"schema {rel(path)}#{i} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}", validate_object, obj)

    # 2. Kustomizations: listing, rendering, and the rendered objects.
    rendered = {}
    for kust in sorted(DEPLOY.rglob("kustomization.yaml")):
        directory = kust.parent
        run.check(f"kustomization {rel(directory)}", kustomization_checks, directory)
        result = run.check(f"render {rel(directory)}", render_into, rendered, directory)
        if result is not None:
            for obj in rendered[directory]:
                run.check(f"schema rendered {rel(directory)} {obj['kind']}/{obj['metadata']['name']}", validate_object, obj)

    base = rendered.get(DEPLOY / "kubernetes") or emulate_kustomize(DEPLOY / "kubernetes")
    facts = run.check("daemonset: args, volumes, security (measured caps), probes", check_daemonset, base)
    svc_port = run.check("service: Local traffic policy, ports", check_service, base, facts) if facts else None
    run.check("rbac: read-only pods + inferencepools", check_rbac, base)
    pm = load_docs(DEPLOY / "kubernetes/monitoring/podmonitor.yaml")[0]
    if facts:
        run.check("podmonitor: agent pods, metrics port", check_podmonitor, pm, facts)

    # 3. The agent itself.
    help_flags = None
    if agent is None:
        reason = "no steer-agent binary (pass --agent-bin or STEER_AGENT_BIN, or cargo build -p steer-agent)"
        if CI:
            run.failed += 1
            print(f"FAIL agent checks: {reason}")
        else:
            run.skip("agent checks", reason)
    elif facts:
        help_flags = run.check("agent: `run --help` lists flags", agent_help_flags, agent)
        if help_flags:
            run.check("agent: DaemonSet flags exist", check_flags_exist, facts["args"], help_flags)
        run.check("agent: starts with the ConfigMap config + DaemonSet args", check_config_starts_agent,
                  agent, facts["args"], facts["config"])

    # 4. Envoy.
    envoy_docs = {}
    for path in sorted((DEPLOY / "envoy").glob("*.yaml")):
        config = load_docs(path)[0]
        envoy_docs[path.name] = config
        run.check(f"envoy proto {rel(path)}", check_envoy_proto, config)
        if facts:
            run.check(f"envoy semantics {rel(path)}", check_envoy_semantics, config, facts, "full-duplex" in path.name)
    mtls_cluster = load_docs(DEPLOY / "envoy/mtls/ext-proc-cluster.yaml")[0]
    if "envoy.yaml" in envoy_docs:
        run.check("envoy mtls/ext-proc-cluster.yaml in envoy.yaml", check_mtls_cluster, envoy_docs["envoy.yaml"], mtls_cluster)
    if agent is not None:
        run.check("envoy: ext_proc streams per connection = the agent's bound", check_stream_bounds_agree,
                  agent, envoy_docs, mtls_cluster)
    eg = rendered.get(DEPLOY / "envoy-gateway") or emulate_kustomize(DEPLOY / "envoy-gateway")
    policy = one(eg, "EnvoyExtensionPolicy", "llm")
    service = one(base, "Service", "steer-system", "steer-agent")
    if svc_port and "envoy.yaml" in envoy_docs:
        run.check("envoy-gateway: extProc as Envoy proto, buffered request, namespaces as envoy.yaml", check_eg_policy,
                  policy, envoy_docs["envoy.yaml"], service, svc_port)
    run.check("envoy-gateway: cross-namespace reference allowed", check_reference_grant, eg, policy, service)
    run.check("envoy-gateway: route -> DynamicResolver with Host from target-pod", check_eg_routing, eg)
    ie_dir = DEPLOY / "inference-extension"
    ie = rendered.get(ie_dir) or emulate_kustomize(ie_dir)
    ie_ns = yaml.safe_load((ie_dir / "kustomization.yaml").read_text())["namespace"]
    run.check("inference-extension: pools -> agent Service in their namespace, canary", check_inference_extension, ie, ie_ns)
    run.check("inference-extension: the overlaid agent is still valid, reachable from the gateway",
              check_daemonset, ie, ie_ns, True)
    run.check("envoy-gateway: the overlaid agent is still valid, reachable from the gateway",
              check_daemonset, eg, "steer-system", True)

    # 5. Dashboard, Dockerfile, README.
    dashboard = json.loads((DEPLOY / "grafana/steer-dashboard.json").read_text())
    known = run.check("agent metric names from steer-agent/src/telemetry", agent_metric_names)
    if known:
        run.check("grafana dashboard metrics", check_dashboard, dashboard, known)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    if facts:
        run.check("Dockerfile", check_dockerfile, dockerfile, facts["image"])
    run.check("deploy/README.md", check_readme, (DEPLOY / "README.md").read_text())

    # 6. Negative self-tests: each mutation must be rejected.
    ds = copy.deepcopy(one(base, "DaemonSet", "steer-system", "steer-agent"))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = ds["spec"]["template"]["spec"].pop("hostNetwork")
    run.expect_failure("DaemonSet with misspelled hostNetwork (kubernetes-validate strict)", validate_object, ds)
    ds = copy.deepcopy(one(base, "DaemonSet", "steer-system", "steer-agent"))
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9002"
    run.expect_failure("DaemonSet with a string containerPort", validate_object, ds)
    ds = copy.deepcopy(one(base, "DaemonSet", "steer-system", "steer-agent"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"].append("SYS_ADMIN")
    run.expect_failure("DaemonSet adding SYS_ADMIN beyond the measured minimum", check_daemonset,
                       [ds if o["kind"] == "DaemonSet" else o for o in base])
    ds = copy.deepcopy(one(base, "DaemonSet", "steer-system", "steer-agent"))
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--ext-proc-addr") + 1] = "0.0.0.0:9002"
    run.expect_failure("node-local DaemonSet with ext_proc on 0.0.0.0", check_daemonset,
                       [ds if o["kind"] == "DaemonSet" else o for o in base])
    if agent is not None and "envoy.yaml" in envoy_docs:
        doc = copy.deepcopy(envoy_docs["envoy.yaml"])
        cluster = envoy_parts(doc)[2]["steer_ext_proc"]
        http = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        http["explicit_http_config"]["http2_protocol_options"] = {}
        run.expect_failure("envoy.yaml without the agent's streams-per-connection bound",
                           check_stream_bounds_agree, agent, {"envoy.yaml": doc}, mtls_cluster)
    pool = copy.deepcopy(find(ie, "InferencePool")[0])
    pool["spec"]["endpointPickerRef"]["portNumber"] = pool["spec"]["endpointPickerRef"].pop("port")["number"]
    run.expect_failure("InferencePool with the pre-v1 endpointPickerRef.portNumber", validate_object, pool)
    pool = copy.deepcopy(find(ie, "InferencePool")[0])
    pool["spec"]["targetPort"] = pool["spec"].pop("targetPorts")
    run.expect_failure("InferencePool with targetPort instead of targetPorts", validate_object, pool)
    route = copy.deepcopy(one(ie, "HTTPRoute", ie_ns, "models"))
    route["spec"]["rules"][1]["backendRef"] = route["spec"]["rules"][1].pop("backendRefs")
    run.expect_failure("HTTPRoute with backendRef instead of backendRefs", validate_object, route)
    bad_policy = copy.deepcopy(policy)
    bad_policy["spec"]["extProc"][0]["processingMode"]["request"]["body"] = "FULL_DUPLEX"
    run.expect_failure("EnvoyExtensionPolicy with an invalid body mode", validate_object, bad_policy)
    bad_pm = copy.deepcopy(pm)
    bad_pm["spec"]["podMetricsEndpoints"][0]["ports"] = bad_pm["spec"]["podMetricsEndpoints"][0].pop("port")
    run.expect_failure("PodMonitor with podMetricsEndpoints[0].ports", validate_object, bad_pm)
    bad_filter = copy.deepcopy(one(eg, "HTTPRouteFilter", "llm"))
    del bad_filter["spec"]["urlRewrite"]["hostname"]["header"]
    run.expect_failure("HTTPRouteFilter Header rewrite without header", validate_object, bad_filter)
    envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
    _, ext, _ = envoy_parts(envoy)
    ext["processing_modes"] = ext.pop("processing_mode")
    run.expect_failure("envoy.yaml with processing_modes (ParseDict strict)", check_envoy_proto, envoy)
    envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
    _, ext, _ = envoy_parts(envoy)
    ext["@type"] += "X"
    run.expect_failure("envoy.yaml with an unresolvable @type", check_envoy_proto, envoy)
    envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
    _, ext, _ = envoy_parts(envoy)
    ext["grpc_service"]["envoy_grpc"]["cluster_name"] = ""
    run.expect_failure("envoy.yaml with an empty ext_proc cluster_name (PGV)", check_envoy_proto, envoy)
    if facts and "envoy-full-duplex.yaml" in envoy_docs:
        envoy = copy.deepcopy(envoy_docs["envoy-full-duplex.yaml"])
        _, ext, _ = envoy_parts(envoy)
        ext["processing_mode"]["request_trailer_mode"] = "SKIP"
        run.expect_failure("full duplex without request trailers", check_envoy_semantics, envoy, facts, True)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        _, ext, _ = envoy_parts(envoy)
        ext["processing_mode"]["response_trailer_mode"] = "SKIP"
        run.expect_failure("envoy.yaml whose routing stream closes before the response ends", check_envoy_semantics,
                           envoy, facts, False)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        _, ext, _ = envoy_parts(envoy)
        ext["processing_mode"]["response_body_mode"] = "STREAMED"
        run.expect_failure("envoy.yaml waiting on every response chunk", check_envoy_semantics, envoy, facts, False)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        envoy_observers(envoy)[0]["failure_mode_allow"] = False
        run.expect_failure("envoy.yaml whose usage observer can fail requests", check_envoy_semantics,
                           envoy, facts, False)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        del observer_filters(envoy)[0]["disabled"]
        run.expect_failure("envoy.yaml with the usage observer on by default", check_envoy_semantics,
                           envoy, facts, False)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        hcm, _, _ = envoy_parts(envoy)
        hcm["access_log"] = [a for a in hcm["access_log"] if a["typed_config"]["@type"] != GRPC_LOG_TYPE]
        run.expect_failure("envoy.yaml without the failure access log", check_envoy_semantics, envoy, facts, False)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        hcm, _, _ = envoy_parts(envoy)
        grpc_log = [a for a in hcm["access_log"] if a["typed_config"]["@type"] == GRPC_LOG_TYPE][0]
        grpc_log["filter"]["and_filter"]["filters"][1]["status_code_filter"]["comparison"]["value"]["default_value"] = 599
        run.expect_failure("envoy.yaml logging every 5xx as a pod failure", check_envoy_semantics, envoy, facts, False)
        envoy = copy.deepcopy(envoy_docs["envoy.yaml"])
        envoy["static_resources"]["clusters"][1]["original_dst_lb_config"]["http_header_name"] = "x-target-pod"
        run.expect_failure("ORIGINAL_DST on another header", check_envoy_semantics, envoy, facts, False)
    if known:
        bad_dash = copy.deepcopy(dashboard)
        bad_dash["panels"][3]["targets"][0]["expr"] = bad_dash["panels"][3]["targets"][0]["expr"].replace(
            "steer_decisions_total", "steer_decision_total")
        run.expect_failure("dashboard using a metric the agent does not export", check_dashboard, bad_dash, known)
    if agent and facts:
        if help_flags:
            run.expect_failure("DaemonSet flag --ext-proc-address", check_flags_exist,
                               [a.replace("--ext-proc-addr", "--ext-proc-address") for a in facts["args"]], help_flags)
        broken = facts["config"].replace("endpoints:", "endpoint:", 1)
        ensure(broken != facts["config"], "mutation did not apply")
        run.check("negative: ConfigMap config with `endpoint:` makes the agent exit 2", check_config_rejected,
                  agent, facts["args"], broken)

    print(f"{run.passed} passed, {run.failed} failed, {run.skipped} skipped")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())

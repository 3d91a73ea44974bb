"""Hand-written strict JSON Schemas for the custom resources under deploy/.

kubernetes-validate ships schemas for the core Kubernetes kinds only. No package
on PyPI or npm ships the CRD OpenAPI schemas of the Gateway API, Envoy Gateway,
the Inference Extension or the Prometheus Operator as data (the npm
@kubernetes-models/* packages ship compiled validators that do not reject unknown
fields), and GitHub is out of reach here. So these schemas are written by hand from
the published APIs:

  * Gateway API v1 (gateway.networking.k8s.io): GatewayClass, Gateway, HTTPRoute,
    ReferenceGrant (v1beta1, also served as v1);
  * Inference Extension v1 (inference.networking.k8s.io): InferencePool with
    spec.selector.matchLabels, spec.targetPorts[].number and
    spec.endpointPickerRef{group, kind, name, port.number, failureMode};
  * Envoy Gateway v1alpha1 (gateway.envoyproxy.io): EnvoyExtensionPolicy (extProc
    list with backendRefs, processingMode, messageTimeout, failOpen, metadata),
    Backend (Endpoints | DynamicResolver), HTTPRouteFilter (urlRewrite);
  * Prometheus Operator v1 (monitoring.coreos.com): PodMonitor.

They are deliberately a strict SUBSET: every object level that deploy/ uses has
`additionalProperties: false`, the required fields and the enum values of the real
CRD, and the CEL rules that matter for our files are spelled out as if/then. A field
the real API has but deploy/ does not use may be missing here: then the validator
rejects it and this file needs that field added (from the published CRD), which is
the safe direction. Fields we do not descend into are typed as bare objects.
"""

NAME_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
GROUP_RE = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND_RE = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
# Gateway API / Envoy Gateway duration (GEP-2257 subset).
DURATION_RE = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
# Prometheus duration.
PROM_DURATION_RE = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"


def obj(props, required=(), **extra):
    schema = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def arr(items, min_items=None, max_items=None):
    schema = {"type": "array", "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def string(pattern=None, min_len=None, max_len=None, enum=None):
    schema = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    if min_len is not None:
        schema["minLength"] = min_len
    if max_len is not None:
        schema["maxLength"] = max_len
    if enum:
        schema["enum"] = list(enum)
    return schema


def integer(minimum=None, maximum=None):
    schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
BARE_OBJECT = {"type": "object"}
BOOL = {"type": "boolean"}
PORT = integer(1, 65535)
OBJECT_NAME = string(min_len=1, max_len=253)
NAMESPACE = string(LABEL_RE, 1, 63)
GROUP = string(GROUP_RE, max_len=253)
KIND = string(KIND_RE, 1, 63)
DURATION = string(DURATION_RE)


def metadata(namespaced=True):
    props = {
        "name": string(NAME_RE, 1, 253),
        "labels": STR_MAP,
        "annotations": STR_MAP,
    }
    if namespaced:
        props["namespace"] = NAMESPACE
    return obj(props, ["name"])


def resource(api_versions, kind, spec, namespaced=True, spec_required=True):
    return obj(
        {
            "apiVersion": {"enum": list(api_versions)},
            "kind": {"const": kind},
            "metadata": metadata(namespaced),
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata"] + (["spec"] if spec_required else []),
    )


LABEL_SELECTOR = obj(
    {
        "matchLabels": STR_MAP,
        "matchExpressions": arr(
            obj(
                {
                    "key": string(),
                    "operator": string(enum=["In", "NotIn", "Exists", "DoesNotExist"]),
                    "values": arr(string()),
                },
                ["key", "operator"],
            )
        ),
    }
)

def backend_ref(with_weight=True, with_filters=False):
    props = {
        "group": GROUP,
        "kind": KIND,
        "name": OBJECT_NAME,
        "namespace": NAMESPACE,
        "port": PORT,
    }
    if with_weight:
        props["weight"] = integer(0, 1_000_000)
    if with_filters:
        props["filters"] = arr(HTTP_ROUTE_FILTER, max_items=16)
    schema = obj(props, ["name"])
    # Defaults (group "", kind Service) apply before the CEL rule runs.
    schema["allOf"] = [
        {
            "if": {
                "not": {
                    "anyOf": [
                        {"required": ["group"], "properties": {"group": {"not": {"const": ""}}}},
                        {"required": ["kind"], "properties": {"kind": {"not": {"const": "Service"}}}},
                    ]
                }
            },
            "then": {"required": ["port"]},
        }
    ]
    return schema


# --- Gateway API (gateway.networking.k8s.io) --------------------------------------

PARENT_REF = obj(
    {
        "group": GROUP,
        "kind": KIND,
        "namespace": NAMESPACE,
        "name": OBJECT_NAME,
        "sectionName": string(NAME_RE, 1, 253),
        "port": PORT,
    },
    ["name"],
)

HTTP_HEADER_MATCH = obj(
    {
        "type": string(enum=["Exact", "RegularExpression"]),
        "name": string(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$", 1, 256),
        "value": string(max_len=4096),
    },
    ["name", "value"],
)

HTTP_ROUTE_MATCH = obj(
    {
        "path": obj(
            {
                "type": string(enum=["Exact", "PathPrefix", "RegularExpression"]),
                "value": string(max_len=1024),
            }
        ),
        "headers": arr(HTTP_HEADER_MATCH, max_items=16),
        "queryParams": arr(BARE_OBJECT, max_items=16),
        "method": string(
            enum=["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        ),
    }
)

LOCAL_OBJECT_REF = obj({"group": GROUP, "kind": KIND, "name": OBJECT_NAME}, ["group", "kind", "name"])

FILTER_TYPES = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}

HTTP_ROUTE_FILTER = obj(
    {
        "type": string(enum=list(FILTER_TYPES)),
        "requestHeaderModifier": BARE_OBJECT,
        "responseHeaderModifier": BARE_OBJECT,
        "requestMirror": BARE_OBJECT,
        "requestRedirect": BARE_OBJECT,
        "urlRewrite": BARE_OBJECT,
        "extensionRef": LOCAL_OBJECT_REF,
        "cors": BARE_OBJECT,
        "externalAuth": BARE_OBJECT,
    },
    ["type"],
    # CEL: the field named by `type` must be set (and only that one).
    allOf=[
        {
            "if": {"properties": {"type": {"const": t}}},
            "then": {
                "required": [field],
                "not": {"anyOf": [{"required": [f]} for f in FILTER_TYPES.values() if f != field]},
            },
        }
        for t, field in FILTER_TYPES.items()
    ],
)

HTTP_ROUTE_RULE = obj(
    {
        "name": string(NAME_RE, 1, 253),
        "matches": arr(HTTP_ROUTE_MATCH, max_items=64),
        "filters": arr(HTTP_ROUTE_FILTER, max_items=16),
        "backendRefs": arr(backend_ref(with_filters=True), max_items=16),
        "timeouts": obj({"request": DURATION, "backendRequest": DURATION}),
        "retry": BARE_OBJECT,
        "sessionPersistence": BARE_OBJECT,
    }
)

GATEWAY_CLASS = resource(
    ["gateway.networking.k8s.io/v1"],
    "GatewayClass",
    obj(
        {
            "controllerName": string(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$", 1, 253),
            "parametersRef": BARE_OBJECT,
            "description": string(max_len=64),
        },
        ["controllerName"],
    ),
    namespaced=False,
)

LISTENER = obj(
    {
        "name": string(NAME_RE, 1, 253),
        "hostname": string(max_len=253),
        "port": PORT,
        "protocol": string(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$", 1, 255),
        "tls": BARE_OBJECT,
        "allowedRoutes": obj(
            {
                "namespaces": obj(
                    {
                        "from": string(enum=["All", "Selector", "Same", "None"]),
                        "selector": LABEL_SELECTOR,
                    }
                ),
                "kinds": arr(obj({"group": GROUP, "kind": KIND}, ["kind"]), max_items=8),
            }
        ),
    },
    ["name", "port", "protocol"],
)

GATEWAY = resource(
    ["gateway.networking.k8s.io/v1"],
    "Gateway",
    obj(
        {
            "gatewayClassName": OBJECT_NAME,
            "listeners": arr(LISTENER, 1, 64),
            "addresses": arr(BARE_OBJECT, max_items=16),
            "infrastructure": BARE_OBJECT,
            "allowedListeners": BARE_OBJECT,
            "tls": BARE_OBJECT,
        },
        ["gatewayClassName", "listeners"],
    ),
)

HTTP_ROUTE = resource(
    ["gateway.networking.k8s.io/v1"],
    "HTTPRoute",
    obj(
        {
            "parentRefs": arr(PARENT_REF, max_items=32),
            "hostnames": arr(string(max_len=253), max_items=16),
            "rules": arr(HTTP_ROUTE_RULE, max_items=16),
        }
    ),
)

REFERENCE_GRANT = resource(
    ["gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1"],
    "ReferenceGrant",
    obj(
        {
            "from": arr(obj({"group": GROUP, "kind": KIND, "namespace": NAMESPACE}, ["group", "kind", "namespace"]), 1, 16),
            "to": arr(obj({"group": GROUP, "kind": KIND, "name": OBJECT_NAME}, ["group", "kind"]), 1, 16),
        },
        ["from", "to"],
    ),
)

# --- Inference Extension (inference.networking.k8s.io/v1) --------------------------

INFERENCE_POOL = resource(
    ["inference.networking.k8s.io/v1"],
    "InferencePool",
    obj(
        {
            # Deliberately simple (Service-selector style): matchLabels only.
            "selector": obj({"matchLabels": {"type": "object", "minProperties": 1, "additionalProperties": string(max_len=63)}}, ["matchLabels"]),
            "targetPorts": arr(obj({"number": PORT}, ["number"]), 1, 1),
            "endpointPickerRef": obj(
                {
                    "group": GROUP,
                    "kind": KIND,
                    "name": OBJECT_NAME,
                    "port": obj({"number": PORT}, ["number"]),
                    "failureMode": string(enum=["FailOpen", "FailClose"]),
                },
                ["name"],
                # CEL: port is required when kind is Service (the default).
                allOf=[
                    {
                        "if": {"not": {"required": ["kind"], "properties": {"kind": {"not": {"const": "Service"}}}}},
                        "then": {"required": ["port"]},
                    }
                ],
            ),
        },
        ["selector", "targetPorts", "endpointPickerRef"],
    ),
)

# --- Envoy Gateway (gateway.envoyproxy.io/v1alpha1) --------------------------------

EXT_PROC_BODY = string(enum=["Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"])
EXT_PROC_DIRECTION = obj(
    {
        "body": EXT_PROC_BODY,
        "attributes": arr(string(r"^(connection\.|source\.|destination\.|request\.|response\.|upstream\.|xds\.route_)[a-z_1-9]*$")),
    }
)

EG_BACKEND_REF = obj(
    {
        "group": string(enum=["", "gateway.envoyproxy.io"]),
        "kind": string(enum=["Service", "Backend"]),
        "name": OBJECT_NAME,
        "namespace": NAMESPACE,
        "port": PORT,
        "fallback": BOOL,
    },
    ["name"],
    allOf=backend_ref()["allOf"],
)

EXT_PROC = obj(
    {
        "backendRefs": arr(EG_BACKEND_REF, 1, 16),
        "backendSettings": BARE_OBJECT,
        "failOpen": BOOL,
        "messageTimeout": DURATION,
        "metadata": obj(
            {
                "accessibleNamespaces": arr(string()),
                "writableNamespaces": arr({"type": "string", "not": {"pattern": r"^envoy\.filters\.http"}}, max_items=8),
            }
        ),
        "processingMode": obj(
            {
                "allowModeOverride": BOOL,
                "request": EXT_PROC_DIRECTION,
                "response": EXT_PROC_DIRECTION,
            }
        ),
    },
    ["backendRefs"],
)

POLICY_TARGET_REF = obj(
    {
        "group": GROUP,
        "kind": string(enum=["Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "TLSRoute"]),
        "name": OBJECT_NAME,
        "sectionName": string(NAME_RE, 1, 253),
    },
    ["group", "kind", "name"],
)

ENVOY_EXTENSION_POLICY = resource(
    ["gateway.envoyproxy.io/v1alpha1"],
    "EnvoyExtensionPolicy",
    obj(
        {
            "targetRefs": arr(POLICY_TARGET_REF, 1),
            "targetSelectors": arr(BARE_OBJECT),
            "extProc": arr(EXT_PROC, max_items=16),
            "lua": arr(BARE_OBJECT, max_items=16),
            "wasm": arr(BARE_OBJECT, max_items=16),
        },
        anyOf=[{"required": ["targetRefs"]}, {"required": ["targetSelectors"]}],
    ),
)

IP_RE = (
    r"^((25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)$"
    r"|^(([0-9a-fA-F]{1,4}:){1,7}[0-9a-fA-F]{1,4}|::|(([0-9a-fA-F]{1,4}:){0,5})?(:[0-9a-fA-F]{1,4}){1,2})$"
)

BACKEND_ENDPOINT = obj(
    {
        "fqdn": obj({"hostname": string(NAME_RE, 1, 253), "port": integer(0, 65535)}, ["hostname", "port"]),
        "ip": obj({"address": string(IP_RE, 3, 45), "port": integer(0, 65535)}, ["address", "port"]),
        "unix": obj({"path": string(max_len=108)}, ["path"]),
        "zone": string(),
    },
    oneOf=[{"required": ["fqdn"]}, {"required": ["ip"]}, {"required": ["unix"]}],
)

BACKEND = resource(
    ["gateway.envoyproxy.io/v1alpha1"],
    "Backend",
    obj(
        {
            "type": string(enum=["Endpoints", "DynamicResolver"]),
            "endpoints": arr(BACKEND_ENDPOINT, 1, 64),
            "appProtocols": arr(string(enum=["gateway.envoyproxy.io/h2c", "gateway.envoyproxy.io/ws", "gateway.envoyproxy.io/wss"])),
            "fallback": BOOL,
            "tls": BARE_OBJECT,
        },
        # CEL: "DynamicResolver type cannot have endpoints specified"; an Endpoints
        # backend (the default type) without endpoints routes nowhere.
        allOf=[
            {
                "if": {"required": ["type"], "properties": {"type": {"const": "DynamicResolver"}}},
                "then": {"not": {"required": ["endpoints"]}},
                "else": {"required": ["endpoints"]},
            }
        ],
    ),
)

HTTP_ROUTE_FILTER_EG = resource(
    ["gateway.envoyproxy.io/v1alpha1"],
    "HTTPRouteFilter",
    obj(
        {
            "urlRewrite": obj(
                {
                    "hostname": obj(
                        {"type": string(enum=["Header", "Backend"]), "header": string(min_len=1)},
                        ["type"],
                        # CEL: header is set exactly when type is Header.
                        allOf=[
                            {
                                "if": {"properties": {"type": {"const": "Header"}}},
                                "then": {"required": ["header"]},
                                "else": {"not": {"required": ["header"]}},
                            }
                        ],
                    ),
                    "path": obj(
                        {
                            "type": string(enum=["ReplaceRegexMatch"]),
                            "replaceRegexMatch": obj(
                                {"pattern": string(min_len=1), "substitution": string()},
                                ["pattern", "substitution"],
                            ),
                        },
                        ["type"],
                    ),
                }
            ),
            "directResponse": BARE_OBJECT,
            "credentialInjection": BARE_OBJECT,
        }
    ),
)

# --- Prometheus Operator (monitoring.coreos.com/v1) --------------------------------

RELABEL_ACTIONS = [
    a
    for pair in [
        ("replace", "Replace"), ("keep", "Keep"), ("drop", "Drop"), ("hashmod", "HashMod"),
        ("labelmap", "LabelMap"), ("labeldrop", "LabelDrop"), ("labelkeep", "LabelKeep"),
        ("lowercase", "Lowercase"), ("uppercase", "Uppercase"), ("keepequal", "KeepEqual"),
        ("dropequal", "DropEqual"),
    ]
    for a in pair
]

RELABEL_CONFIG = obj(
    {
        "sourceLabels": arr(string(r"^[a-zA-Z_][a-zA-Z0-9_]*$")),
        "separator": string(),
        "targetLabel": string(),
        "regex": string(),
        "modulus": integer(0),
        "replacement": string(),
        "action": string(enum=RELABEL_ACTIONS),
    }
)

POD_METRICS_ENDPOINT = obj(
    {
        "port": string(min_len=1),
        "portNumber": PORT,
        "path": string(),
        "scheme": string(enum=["http", "https", "HTTP", "HTTPS"]),
        "params": {"type": "object", "additionalProperties": arr(string())},
        "interval": string(PROM_DURATION_RE),
        "scrapeTimeout": string(PROM_DURATION_RE),
        "honorLabels": BOOL,
        "honorTimestamps": BOOL,
        "trackTimestampsStaleness": BOOL,
        "filterRunning": BOOL,
        "relabelings": arr(RELABEL_CONFIG),
        "metricRelabelings": arr(RELABEL_CONFIG),
        "enableHttp2": BOOL,
        "followRedirects": BOOL,
        "tlsConfig": BARE_OBJECT,
        "basicAuth": BARE_OBJECT,
        "authorization": BARE_OBJECT,
        "bearerTokenSecret": BARE_OBJECT,
        "oauth2": BARE_OBJECT,
        "proxyUrl": string(),
    }
)

POD_MONITOR = resource(
    ["monitoring.coreos.com/v1"],
    "PodMonitor",
    obj(
        {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": obj({"any": BOOL, "matchNames": arr(string())}),
            "podMetricsEndpoints": arr(POD_METRICS_ENDPOINT),
            "jobLabel": string(),
            "podTargetLabels": arr(string()),
            "sampleLimit": integer(0),
            "targetLimit": integer(0),
            "attachMetadata": BARE_OBJECT,
            "scrapeClass": string(),
        },
        ["selector"],
    ),
)

# --- kustomize ----------------------------------------------------------------------

KUSTOMIZATION = obj(
    {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": NAMESPACE,
        "resources": arr(string(min_len=1), 1),
        "images": arr(obj({"name": string(min_len=1), "newName": string(min_len=1), "newTag": string(min_len=1), "digest": string()}, ["name"])),
        "labels": arr(BARE_OBJECT),
        "commonAnnotations": STR_MAP,
        # Inline JSON 6902 patches (the only kind deploy/ uses).
        "patches": arr(obj({
            "target": obj({"kind": string(min_len=1), "name": string(min_len=1)}, ["kind", "name"]),
            "patch": string(min_len=1),
        }, ["target", "patch"])),
    },
    ["apiVersion", "kind", "resources"],
)

SCHEMAS = {
    (api, s["properties"]["kind"]["const"]): s
    for s in [
        GATEWAY_CLASS,
        GATEWAY,
        HTTP_ROUTE,
        REFERENCE_GRANT,
        INFERENCE_POOL,
        ENVOY_EXTENSION_POLICY,
        BACKEND,
        HTTP_ROUTE_FILTER_EG,
        POD_MONITOR,
    ]
    for api in s["properties"]["apiVersion"]["enum"]
}

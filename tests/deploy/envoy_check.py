"""Envoy configs against the real Envoy API (the protobuf descriptors of xds-protos).

`load_bootstrap` turns a YAML bootstrap into `envoy.config.bootstrap.v3.Bootstrap`
with `json_format.ParseDict` (unknown fields and unknown enum values fail), after
importing, for every `@type` the file names, the generated modules of that proto
package, so each `typed_config` is parsed as its real message (an `@type` that
resolves to nothing fails). `pgv_errors` then applies the protoc-gen-validate
constraints Envoy itself enforces when it loads a config (required messages and
oneofs, string lengths, number ranges, defined enums, durations, list sizes): a
subset of PGV that covers what these configs use.
"""

import importlib
import pkgutil
from pathlib import Path

from google.protobuf import descriptor, descriptor_pool, json_format, message_factory

import envoy  # noqa: F401  (xds-protos)
from envoy.config.bootstrap.v3 import bootstrap_pb2
from validate import validate_pb2

TYPE_PREFIX = "type.googleapis.com/"


def type_urls(node):
    """Every `@type` value in a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type" and isinstance(value, str):
                yield value
            else:
                yield from type_urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from type_urls(item)


def resolve_type(type_url):
    """Imports the xds-protos modules of the type's proto package and returns the
    message descriptor; raises LookupError when nothing defines it."""
    if not type_url.startswith(TYPE_PREFIX):
        raise LookupError(f"@type {type_url!r} does not start with {TYPE_PREFIX}")
    full_name = type_url[len(TYPE_PREFIX):]
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        pass
    package = full_name.rsplit(".", 1)[0]
    try:
        pkg = importlib.import_module(package)
    except ImportError as e:
        raise LookupError(f"@type {type_url!r}: no generated package {package} ({e})") from None
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        raise LookupError(f"@type {type_url!r}: package {package} defines no such message") from None


def load_bootstrap(config):
    """A parsed YAML dict -> Bootstrap message; raises on any unknown field/type."""
    for url in sorted(set(type_urls(config))):
        resolve_type(url)
    return json_format.ParseDict(config, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)


def load_yaml_bootstrap(path):
    import yaml

    return load_bootstrap(yaml.safe_load(Path(path).read_text()))


# --- protoc-gen-validate subset -----------------------------------------------------

WRAPPERS = {
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
}
NUMERIC = {
    "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64",
}


def _repeated(field):
    # protobuf >= 6 has `is_repeated`; older versions only `label`.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == descriptor.FieldDescriptor.LABEL_REPEATED


def _field_rules(field):
    opts = field.GetOptions()
    if opts.HasExtension(validate_pb2.rules):
        return opts.Extensions[validate_pb2.rules]
    return None


def _seconds(d):
    return d.seconds + d.nanos / 1e9


def _check_scalar(kind, rules, value, where, errors):
    if kind in NUMERIC:
        for name, ok in (
            ("gt", lambda b: value > b), ("gte", lambda b: value >= b),
            ("lt", lambda b: value < b), ("lte", lambda b: value <= b),
            ("const", lambda b: value == b),
        ):
            if rules.HasField(name) and not ok(getattr(rules, name)):
                errors.append(f"{where}: {value} violates {name} {getattr(rules, name)}")
        allowed = list(getattr(rules, "in"))
        if allowed and value not in allowed:
            errors.append(f"{where}: {value} not in {allowed}")
    elif kind in ("string", "bytes"):
        length = len(value)
        size = len(value.encode()) if isinstance(value, str) else len(value)
        checks = [("min_len", length, ">="), ("max_len", length, "<="),
                  ("min_bytes", size, ">="), ("max_bytes", size, "<=")]
        for name, actual, op in checks:
            if name in [f.name for f in rules.DESCRIPTOR.fields] and rules.HasField(name):
                bound = getattr(rules, name)
                if (op == ">=" and actual < bound) or (op == "<=" and actual > bound):
                    errors.append(f"{where}: length {actual} violates {name} {bound}")
        allowed = list(getattr(rules, "in"))
        if allowed and value not in allowed:
            errors.append(f"{where}: {value!r} not in {allowed}")
        if kind == "string" and rules.prefix and not value.startswith(rules.prefix):
            errors.append(f"{where}: {value!r} lacks prefix {rules.prefix!r}")


def _check_field(msg, field, rules, where, errors):
    is_repeated = _repeated(field)
    is_message = field.type == descriptor.FieldDescriptor.TYPE_MESSAGE
    is_map = is_message and field.message_type.GetOptions().map_entry
    present = (len(getattr(msg, field.name)) > 0) if is_repeated else (
        msg.HasField(field.name) if (is_message or field.containing_oneof) else True
    )
    # PGV: the rules of a oneof member apply only when that member is the one set.
    if field.containing_oneof is not None and not present:
        return
    if rules.HasField("message") and rules.message.required and not present:
        errors.append(f"{where}: required")
        return
    kind = rules.WhichOneof("type")
    if kind is None or not present:
        if kind == "duration" and rules.duration.required and not present:
            errors.append(f"{where}: required duration")
        if kind == "any" and rules.any.required and not present:
            errors.append(f"{where}: required")
        return
    value = getattr(msg, field.name)
    sub = getattr(rules, kind)
    if kind == "repeated":
        n = len(value)
        if sub.HasField("min_items") and n < sub.min_items:
            errors.append(f"{where}: {n} items < min_items {sub.min_items}")
        if sub.HasField("max_items") and n > sub.max_items:
            errors.append(f"{where}: {n} items > max_items {sub.max_items}")
        if sub.HasField("items"):
            item_kind = sub.items.WhichOneof("type")
            for i, item in enumerate(value):
                if item_kind in NUMERIC or item_kind in ("string", "bytes"):
                    _check_scalar(item_kind, getattr(sub.items, item_kind), item, f"{where}[{i}]", errors)
                elif item_kind == "enum" and sub.items.enum.defined_only:
                    if field.enum_type.values_by_number.get(item) is None:
                        errors.append(f"{where}[{i}]: undefined enum value {item}")
        return
    if kind == "map":
        if sub.HasField("min_pairs") and len(value) < sub.min_pairs:
            errors.append(f"{where}: {len(value)} pairs < min_pairs {sub.min_pairs}")
        return
    if kind == "enum":
        if sub.defined_only and field.enum_type.values_by_number.get(value) is None:
            errors.append(f"{where}: undefined enum value {value}")
        return
    if kind == "duration":
        secs = _seconds(value)
        for name, ok in (("gt", lambda b: secs > b), ("gte", lambda b: secs >= b),
                         ("lt", lambda b: secs < b), ("lte", lambda b: secs <= b)):
            if sub.HasField(name) and not ok(_seconds(getattr(sub, name))):
                errors.append(f"{where}: {secs}s violates {name} {_seconds(getattr(sub, name))}s")
        return
    if kind in NUMERIC or kind in ("string", "bytes"):
        if is_message and field.message_type.full_name in WRAPPERS:
            value = value.value
        _check_scalar(kind, sub, value, where, errors)


def pgv_errors(msg, where=""):
    """Violations of the PGV rules annotated on `msg`'s fields, recursively
    (including messages packed in Any)."""
    errors = []
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        if msg.type_url:
            inner_desc = resolve_type(msg.type_url)
            inner = message_factory.GetMessageClass(inner_desc)()
            msg.Unpack(inner)
            errors += pgv_errors(inner, f"{where}<{inner_desc.full_name}>")
        return errors
    for oneof in desc.oneofs:
        opts = oneof.GetOptions()
        if opts.HasExtension(validate_pb2.required) and opts.Extensions[validate_pb2.required]:
            if msg.WhichOneof(oneof.name) is None:
                errors.append(f"{where}.{oneof.name}: one of {[f.name for f in oneof.fields]} is required")
    for field in desc.fields:
        rules = _field_rules(field)
        path = f"{where}.{field.name}"
        if rules is not None:
            _check_field(msg, field, rules, path, errors)
        if field.type != descriptor.FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                for key, value in getattr(msg, field.name).items():
                    errors += pgv_errors(value, f"{path}[{key}]")
            continue
        if _repeated(field):
            for i, item in enumerate(getattr(msg, field.name)):
                errors += pgv_errors(item, f"{path}[{i}]")
        elif msg.HasField(field.name):
            errors += pgv_errors(getattr(msg, field.name), path)
    return errors


"""Confluent's own Python client, driven against a Backbone schema registry.

An independent check of our registry and wire codec: `confluent-kafka`'s SchemaRegistryClient
and Avro serde were written against Confluent's registry, not ours, so what they accept and
produce is what Confluent clients in the field will. `make setup` installs the pinned client into
its own venv; tests/independent_client.rs runs this script with `$TOOLS_DIR/bin/pyclient-python`.

The registry URL comes from --url or BACKBONE_REGISTRY_URL and must be http://127.0.0.1:<port>;
credentials written into it (http://user:password@127.0.0.1:<port>) are passed to the client as
`basic.auth.user.info`, as a producer team configures it.

Subcommands:

  register-and-fetch SUBJECT SCHEMA_FILE
      Exercises the registry API through SchemaRegistryClient (register twice, get by id, latest
      version, versions, lookup, compatibility tests and levels, soft and permanent delete) and
      prints one JSON summary of what it saw. SCHEMA_FILE holds one Avro record schema; the
      compatible and incompatible candidates are derived from it (an added optional field, an
      added required field). Exits 1, after printing the summary, if any answer was wrong.

  serialize SUBJECT SCHEMA_FILE RECORDS_FILE
      Serialises each record of RECORDS_FILE (JSON lines, in the rendering below) with
      AvroSerializer (auto.register.schemas) for topic SUBJECT minus "-value", and prints one hex
      line per record: the Confluent wire format, magic byte and schema id included.

  deserialize
      Reads hex lines from stdin, decodes each with AvroDeserializer (writer schema from the
      registry) and prints it as one JSON line in the rendering below.

JSON rendering of Avro values, the same in both directions so records compare as JSON:
  decimal                      a string with exactly `scale` fraction digits: "-12.3400"
  bytes, fixed                 a lowercase hex string
  timestamp-*, local-timestamp-*, time-*, date
                               the integer the Avro encoding holds (units since the epoch or
                               midnight, days for date), not a formatted date
  uuid                         its string
  enum                         its symbol
  union                        the plain value, null for null; no type tag, so on the way in
                               the first branch whose JSON type fits is taken
  record, map                  an object; array: an array; other primitives as in JSON
"""

import argparse
import base64
import copy
import datetime
import decimal
import json
import os
import sys
import urllib.parse
import urllib.request
import uuid

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import parse_schema, to_parsing_canonical_form

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NAMED = ("record", "error", "enum", "fixed")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
EPOCH_NAIVE = datetime.datetime(1970, 1, 1)
EPOCH_DATE = datetime.date(1970, 1, 1)
# Microseconds (or milliseconds) per unit, by logical type, for the integer rendering.
TEMPORAL_UNITS = {
    "timestamp-micros": 1,
    "timestamp-millis": 1000,
    "local-timestamp-micros": 1,
    "local-timestamp-millis": 1000,
    "time-micros": 1,
    "time-millis": 1000,
}


class Mismatch(Exception):
    """An answer of the registry that a Confluent client would not expect."""


def registry_url(given):
    url = given or os.environ.get("BACKBONE_REGISTRY_URL")
    if not url:
        raise SystemExit("no registry: pass --url or set BACKBONE_REGISTRY_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
        raise SystemExit(f"registry url {parts.scheme}://{parts.hostname}:{parts.port}: "
                         "expected http://127.0.0.1:<port>")
    return url.rstrip("/")


def split_credentials(url):
    """The URL without user info, and the `user:password` it held (or None)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    bare = parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl()
    user_info = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return bare, user_info


def new_client(url):
    bare, user_info = split_credentials(url)
    config = {"url": bare, "timeout": 30}
    if user_info is not None:
        config["basic.auth.credentials.source"] = "USER_INFO"
        config["basic.auth.user.info"] = user_info
    return SchemaRegistryClient(config)


def forced_permanent_delete(url, subject):
    """DELETE ...?permanent=true&force=true, which Confluent's client cannot ask for: our registry
    refuses a permanent delete without force, since it frees ids stored records may carry."""
    bare, user_info = split_credentials(url)
    request = urllib.request.Request(
        f"{bare}/subjects/{urllib.parse.quote(subject, safe='')}?permanent=true&force=true",
        method="DELETE")
    if user_info is not None:
        token = base64.b64encode(user_info.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Schema walking for the JSON rendering


class SchemaWalker:
    """Converts between the JSON rendering and the values fastavro reads and writes."""

    def __init__(self, schema):
        self.named = {}
        self._collect(schema, None)
        self.root = schema

    def _collect(self, node, namespace):
        if isinstance(node, list):
            for branch in node:
                self._collect(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in NAMED:
                full = self._full_name(node["name"], node.get("namespace", namespace))
                self.named[full] = (node, full.rpartition(".")[0] or None)
                namespace = full.rpartition(".")[0] or None
                for field in node.get("fields", []):
                    self._collect(field["type"], namespace)
            elif kind == "array":
                self._collect(node["items"], namespace)
            elif kind == "map":
                self._collect(node["values"], namespace)
            elif isinstance(kind, (dict, list)):
                self._collect(kind, namespace)

    @staticmethod
    def _full_name(name, namespace):
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def _resolve(self, node, namespace):
        """The definition behind `node` (a name, a type wrapped in {"type": ...}, or a schema)
        and the namespace that names inside it are relative to."""
        if isinstance(node, str):
            if node in PRIMITIVES:
                return node, namespace
            full = self._full_name(node, namespace)
            return self.named[full if full in self.named else node]
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in NAMED:
                full = self._full_name(node["name"], node.get("namespace", namespace))
                return node, full.rpartition(".")[0] or None
            if not (isinstance(kind, str) and (kind in PRIMITIVES or kind in ("array", "map"))):
                return self._resolve(kind, namespace)
        return node, namespace

    @staticmethod
    def _kind(node):
        if isinstance(node, str):
            return node, None
        if isinstance(node, list):
            return "union", None
        return node.get("type"), node.get("logicalType")

    # JSON rendering -> fastavro input

    def to_avro(self, value, node=None, namespace=None):
        node, namespace = self._resolve(self.root if node is None else node, namespace)
        kind, logical = self._kind(node)
        if kind == "union":
            if value is None:
                return None
            branch = self._branch_for_json(node, value, namespace)
            return self.to_avro(value, branch, namespace)
        if logical == "decimal" and kind in ("bytes", "fixed"):
            return decimal.Decimal(value)
        if kind in ("bytes", "fixed"):
            return bytes.fromhex(value)
        if kind in ("record", "error"):
            return {f["name"]: self.to_avro(value[f["name"]], f["type"], namespace)
                    for f in node["fields"] if f["name"] in value}
        if kind == "array":
            return [self.to_avro(v, node["items"], namespace) for v in value]
        if kind == "map":
            return {k: self.to_avro(v, node["values"], namespace) for k, v in value.items()}
        # Temporal logical types: fastavro writes the integer rendering as it is.
        return value

    def _branch_for_json(self, union, value, namespace):
        for branch in union:
            resolved, _ = self._resolve(branch, namespace)
            kind, logical = self._kind(resolved)
            if kind == "null":
                continue
            if isinstance(value, bool):
                fits = kind == "boolean"
            elif isinstance(value, int):
                fits = kind in ("int", "long", "float", "double")
            elif isinstance(value, float):
                fits = kind in ("float", "double")
            elif isinstance(value, str):
                fits = kind in ("string", "bytes", "fixed") or (
                    kind == "enum" and value in resolved["symbols"])
            elif isinstance(value, dict):
                fits = kind in ("record", "error", "map")
            elif isinstance(value, list):
                fits = kind == "array"
            else:
                fits = False
            if fits:
                return branch
        raise ValueError(f"no branch of union {union!r} fits {value!r}")

    # fastavro output -> JSON rendering

    def to_json(self, value, node=None, namespace=None):
        node, namespace = self._resolve(self.root if node is None else node, namespace)
        kind, logical = self._kind(node)
        if kind == "union":
            if value is None:
                return None
            branch = self._branch_for_python(node, value, namespace)
            return self.to_json(value, branch, namespace)
        if isinstance(value, decimal.Decimal):
            quantum = decimal.Decimal(1).scaleb(-int(node.get("scale", 0)))
            return format(value.quantize(quantum), "f")
        if isinstance(value, datetime.datetime):
            epoch = EPOCH if value.tzinfo is not None else EPOCH_NAIVE
            return (value - epoch) // datetime.timedelta(microseconds=TEMPORAL_UNITS[logical])
        if isinstance(value, datetime.date):
            return (value - EPOCH_DATE).days
        if isinstance(value, datetime.time):
            since_midnight = datetime.timedelta(hours=value.hour, minutes=value.minute,
                                                seconds=value.second,
                                                microseconds=value.microsecond)
            return since_midnight // datetime.timedelta(microseconds=TEMPORAL_UNITS[logical])
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).hex()
        if kind in ("record", "error"):
            return {f["name"]: self.to_json(value.get(f["name"]), f["type"], namespace)
                    for f in node["fields"]}
        if kind == "array":
            return [self.to_json(v, node["items"], namespace) for v in value]
        if kind == "map":
            return {k: self.to_json(v, node["values"], namespace) for k, v in value.items()}
        return value

    def _branch_for_python(self, union, value, namespace):
        for branch in union:
            resolved, _ = self._resolve(branch, namespace)
            kind, logical = self._kind(resolved)
            if kind == "null":
                continue
            if isinstance(value, decimal.Decimal):
                fits = logical == "decimal"
            elif isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
                fits = logical in TEMPORAL_UNITS or logical == "date"
            elif isinstance(value, uuid.UUID):
                fits = logical == "uuid"
            elif isinstance(value, (bytes, bytearray)):
                fits = kind in ("bytes", "fixed") and logical != "decimal"
            elif isinstance(value, bool):
                fits = kind == "boolean"
            elif isinstance(value, int):
                fits = kind in ("int", "long") and logical is None
            elif isinstance(value, float):
                fits = kind in ("float", "double")
            elif isinstance(value, str):
                fits = kind in ("string", "enum") and logical is None
            elif isinstance(value, dict):
                fits = kind in ("record", "error", "map")
            elif isinstance(value, list):
                fits = kind == "array"
            else:
                fits = False
            if fits:
                return branch
        raise ValueError(f"no branch of union {union!r} fits {value!r}")


# ---------------------------------------------------------------------------------------------
# register-and-fetch


def canonical(schema_str):
    return to_parsing_canonical_form(parse_schema(json.loads(schema_str)))


def with_field(schema, field):
    derived = copy.deepcopy(schema)
    derived["fields"].append(field)
    return derived


def registry_error(call):
    """Runs `call`, expecting a SchemaRegistryError; returns its codes."""
    try:
        result = call()
    except SchemaRegistryError as e:
        return {"http_status": e.http_status_code, "error_code": e.error_code}
    raise Mismatch(f"expected a registry error, got {result!r}")


def register_and_fetch(url, subject, schema_path):
    schema_json = read_json(schema_path)
    if not isinstance(schema_json, dict) or schema_json.get("type") != "record":
        raise SystemExit(f"schema file {schema_path}: expected one Avro record schema")
    schema = Schema(json.dumps(schema_json), "AVRO")
    # Under BACKWARD, readers of the new schema must read old data: a new field with a default
    # can be filled in, one without cannot.
    compatible = Schema(json.dumps(with_field(
        schema_json, {"name": "pyclient_note", "type": ["null", "string"], "default": None})), "AVRO")
    incompatible = Schema(json.dumps(with_field(
        schema_json, {"name": "pyclient_required", "type": "string"})), "AVRO")

    client = new_client(url)
    summary = {"subject": subject, "problems": []}

    def check(condition, message):
        if not condition:
            summary["problems"].append(message)

    def fresh():
        # The client caches ids, schemas and versions; without this the later calls would be
        # answered from its cache rather than by the registry.
        client.clear_caches()
        return client

    first_id = fresh().register_schema(subject, schema)
    again_id = fresh().register_schema(subject, schema)
    summary["registered_id"] = first_id
    summary["reregistered_id"] = again_id
    check(first_id == again_id, f"re-registering gave id {again_id}, first {first_id}")

    fetched = fresh().get_schema(first_id)
    summary["fetched"] = {
        "schema_type": fetched.schema_type,
        "same_text": fetched.schema_str == schema.schema_str,
        "equivalent": canonical(fetched.schema_str) == canonical(schema.schema_str),
    }
    check(summary["fetched"]["equivalent"], f"schema {first_id} fetched by id differs: "
          f"{fetched.schema_str}")
    check(fetched.schema_type in (None, "AVRO"), f"schema type {fetched.schema_type!r}")

    latest = fresh().get_latest_version(subject)
    summary["latest"] = {"id": latest.schema_id, "version": latest.version,
                         "subject": latest.subject}
    check(latest.schema_id == first_id, f"latest version has id {latest.schema_id}")
    check(latest.version == 1, f"latest version is {latest.version}, expected 1")
    check(latest.subject == subject, f"latest version names subject {latest.subject!r}")
    check(canonical(latest.schema.schema_str) == canonical(schema.schema_str),
          "latest version's schema differs")

    summary["versions"] = fresh().get_versions(subject)
    check(summary["versions"] == [1], f"versions {summary['versions']}, expected [1]")

    found = fresh().lookup_schema(subject, schema)
    summary["lookup"] = {"id": found.schema_id, "version": found.version,
                         "subject": found.subject}
    check(found.schema_id == first_id and found.version == 1,
          f"lookup found id {found.schema_id} version {found.version}")
    summary["lookup_unknown"] = registry_error(lambda: fresh().lookup_schema(subject, incompatible))

    compat = {}
    compat["set"] = fresh().set_compatibility(subject_name=subject, level="BACKWARD")
    compat["get"] = fresh().get_compatibility(subject_name=subject)
    check(compat["get"] == "BACKWARD", f"compatibility {compat['get']!r} after setting BACKWARD")
    compat["compatible"] = fresh().test_compatibility(subject, compatible)
    compat["incompatible"] = fresh().test_compatibility(subject, incompatible)
    check(compat["compatible"] is True, "a schema adding an optional field tested incompatible")
    check(compat["incompatible"] is False, "a schema adding a required field tested compatible")
    compat["rejected_register"] = registry_error(
        lambda: fresh().register_schema(subject, incompatible))
    check(compat["rejected_register"]["http_status"] == 409,
          f"registering an incompatible schema: {compat['rejected_register']}")
    compat["set_none"] = fresh().set_compatibility(subject_name=subject, level="NONE")
    compat["get_none"] = fresh().get_compatibility(subject_name=subject)
    compat["incompatible_under_none"] = fresh().test_compatibility(subject, incompatible)
    check(compat["get_none"] == "NONE", f"compatibility {compat['get_none']!r} after NONE")
    check(compat["incompatible_under_none"] is True, "NONE still reported incompatible")
    summary["compatibility"] = compat

    second_id = fresh().register_schema(subject, compatible)
    summary["second_id"] = second_id
    summary["versions_after_second"] = fresh().get_versions(subject)
    check(second_id != first_id, "a different schema got the same id")
    check(summary["versions_after_second"] == [1, 2],
          f"versions {summary['versions_after_second']}, expected [1, 2]")
    latest = fresh().get_latest_version(subject)
    check(latest.version == 2 and latest.schema_id == second_id,
          f"latest after a second version: version {latest.version} id {latest.schema_id}")

    deleted = {}
    deleted["soft"] = fresh().delete_subject(subject)
    deleted["versions_after_soft"] = registry_error(lambda: fresh().get_versions(subject))
    deleted["versions_with_deleted"] = fresh().get_versions(subject, deleted=True)
    deleted["schema_by_id_after_soft"] = canonical(fresh().get_schema(first_id).schema_str) == \
        canonical(schema.schema_str)
    deleted["permanent_unforced"] = registry_error(
        lambda: fresh().delete_subject(subject, permanent=True))
    deleted["permanent"] = forced_permanent_delete(url, subject)
    deleted["versions_after_permanent"] = registry_error(
        lambda: fresh().get_versions(subject, deleted=True))
    check(deleted["soft"] == [1, 2], f"soft delete returned {deleted['soft']}")
    check(deleted["versions_after_soft"]["error_code"] == 40401,
          f"versions after soft delete: {deleted['versions_after_soft']}")
    check(deleted["versions_with_deleted"] == [1, 2],
          f"versions with deleted: {deleted['versions_with_deleted']}")
    check(deleted["schema_by_id_after_soft"], "schema by id changed after a soft delete")
    check(deleted["permanent_unforced"]["error_code"] == 40910,
          f"permanent delete without force: {deleted['permanent_unforced']}")
    check(deleted["permanent"] == [1, 2], f"permanent delete returned {deleted['permanent']}")
    check(deleted["versions_after_permanent"]["error_code"] == 40401,
          f"versions after permanent delete: {deleted['versions_after_permanent']}")
    summary["delete"] = deleted

    print(json.dumps(summary, sort_keys=True))
    if summary["problems"]:
        for problem in summary["problems"]:
            print(f"confluent_client: {problem}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# serialize and deserialize


def serialize(url, subject, schema_path, records_path):
    if not subject.endswith("-value"):
        raise SystemExit(f"subject {subject!r}: expected <topic>-value")
    topic = subject[: -len("-value")]
    schema_json = read_json(schema_path)
    walker = SchemaWalker(schema_json)
    serializer = AvroSerializer(new_client(url), json.dumps(schema_json),
                                conf={"auto.register.schemas": True})
    context = SerializationContext(topic, MessageField.VALUE)
    with open(records_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = walker.to_avro(json.loads(line))
            except (ValueError, KeyError, decimal.InvalidOperation) as e:
                raise SystemExit(f"{records_path}:{number}: {e}")
            print(serializer(record, context).hex())
    return 0


def deserialize(url):
    client = new_client(url)
    deserializer = AvroDeserializer(client)
    walkers = {}
    for number, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        framed = bytes.fromhex(line)
        if len(framed) < 5 or framed[0] != 0:
            raise SystemExit(f"stdin line {number}: not Confluent wire format")
        record = deserializer(framed, SerializationContext("", MessageField.VALUE))
        # The deserializer did the decoding; the writer schema (cached by the client) only
        # tells the rendering which logical type each value had.
        schema_id = int.from_bytes(framed[1:5], "big")
        if schema_id not in walkers:
            walkers[schema_id] = SchemaWalker(json.loads(client.get_schema(schema_id).schema_str))
        print(json.dumps(walkers[schema_id].to_json(record), sort_keys=True))
    return 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="registry URL (default: $BACKBONE_REGISTRY_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register-and-fetch")
    register.add_argument("subject")
    register.add_argument("schema_file")
    ser = commands.add_parser("serialize")
    ser.add_argument("subject")
    ser.add_argument("schema_file")
    ser.add_argument("records_file")
    commands.add_parser("deserialize")
    args = parser.parse_args(argv)
    url = registry_url(args.url)
    try:
        if args.command == "register-and-fetch":
            return register_and_fetch(url, args.subject, args.schema_file)
        if args.command == "serialize":
            return serialize(url, args.subject, args.schema_file, args.records_file)
        return deserialize(url)
    except Mismatch as e:
        print(f"confluent_client: {e}", file=sys.stderr)
        return 1
    except SchemaRegistryError as e:
        print(f"confluent_client: registry answered {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

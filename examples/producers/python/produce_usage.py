"""Publish usage events to the backbone straight to Kafka, in the Confluent wire format.

A product team's producer, written from the contract alone (schemas/contracts/usage/
usage_event.avsc and schemas/manifest.toml): the value schema comes from the registry (the
platform registers it; a producer never does), each record is keyed `<tenant_id>:<customer_id>`
as the manifest says, and each event id is derived from the business fact, so sending the same
fact again makes the same record, which the backbone deduplicates.

    python produce_usage.py --bootstrap-servers 127.0.0.1:9092 \
        --registry-url http://127.0.0.1:8081 --registry-user backbone \
        --registry-password-file .backbone/stack/secrets/registry-password \
        --tenant acme --customer c-1 --meter api_calls --unit call --quantity 25 --count 10

Prints one line per event (its key and event id) once the broker acknowledged it; exits 1 if
any event was not acknowledged.
"""

import argparse
import datetime
import decimal
import secrets
import sys
import uuid

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

# Every event id of this producer lives in this namespace: uuid5(namespace, business fact).
EVENT_IDS = uuid.UUID("6f1c7a52-3d0e-4c55-9b1e-2f0a8d4e7c31")
SOURCE = "python-example"


def registry_client(args):
    config = {"url": args.registry_url}
    if args.registry_user:
        with open(args.registry_password_file, encoding="utf-8") as f:
            password = f.read().rstrip("\r\n")
        config["basic.auth.user.info"] = f"{args.registry_user}:{password}"
    return SchemaRegistryClient(config)


def usage_event(args, n, now):
    """The n-th fact this run publishes, as the contract's record."""
    occurred_at = now - datetime.timedelta(seconds=args.count - n)
    # Deterministic: the same customer, meter, time and sequence number is the same fact.
    fact = f"{args.tenant}/{args.customer}/{args.meter}/{args.run}/{n}"
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return {
        "metadata": {
            "tenant_id": args.tenant,
            "event_id": str(uuid.uuid5(EVENT_IDS, fact)),
            "source": SOURCE,
            "type": "backbone.usage.recorded",
            "occurred_at": occurred_at,
            "produced_at": datetime.datetime.now(datetime.timezone.utc),
            "trace": {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": None},
            "schema_version": None,
        },
        "customer_id": args.customer,
        "subscription_id": args.subscription,
        "meter_id": args.meter,
        # decimal(24, 9): a Decimal with at most 9 fraction digits.
        "quantity": decimal.Decimal(args.quantity).quantize(decimal.Decimal("0.000000001")),
        "unit": args.unit,
        "dimensions": None,
        "unique_value": None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--registry-url", default="http://127.0.0.1:8081")
    parser.add_argument("--registry-user")
    parser.add_argument("--registry-password-file")
    parser.add_argument("--topic", default="usage.events")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--customer", required=True)
    parser.add_argument("--subscription", help="omit to let the enricher pick it")
    parser.add_argument("--meter", default="api_calls")
    parser.add_argument("--unit", default="call")
    parser.add_argument("--quantity", default="1")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--run", default="1", help="a new run id makes new facts")
    args = parser.parse_args()
    if args.registry_user and not args.registry_password_file:
        parser.error("--registry-user needs --registry-password-file")

    registry = registry_client(args)
    subject = f"{args.topic}-value"
    # The platform registered the contract: use its latest version, never register ours.
    serializer = AvroSerializer(
        registry,
        registry.get_latest_version(subject).schema.schema_str,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    producer = Producer({
        "bootstrap.servers": args.bootstrap_servers,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
    })
    failed = []

    def delivered(event_id):
        def report(err, msg):
            if err is not None:
                failed.append(f"{msg.key().decode()} {event_id}: {err}")
            else:
                print(f"{msg.key().decode()} {event_id}")
        return report

    now = datetime.datetime.now(datetime.timezone.utc)
    context = SerializationContext(args.topic, MessageField.VALUE)
    for n in range(args.count):
        event = usage_event(args, n, now)
        producer.produce(
            args.topic,
            key=f"{args.tenant}:{args.customer}".encode(),
            value=serializer(event, context),
            headers=[("traceparent", event["metadata"]["trace"]["traceparent"].encode())],
            on_delivery=delivered(event["metadata"]["event_id"]),
        )
        producer.poll(0)
    unsent = producer.flush(30)
    if unsent:
        failed.append(f"{unsent} events still unacknowledged after 30 s")
    for failure in failed:
        print(f"produce_usage: not acknowledged: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

// Command produce-usage publishes usage events to the backbone straight to Kafka, in the
// Confluent wire format, written from the contract alone (schemas/contracts/usage/
// usage_event.avsc and schemas/manifest.toml).
//
// The value schema is the registry's latest for <topic>-value (the platform registers it; a
// producer never does); each record is keyed <tenant_id>:<customer_id>; each event id is derived
// from the business fact, so sending the same fact again makes the same record, which the
// backbone deduplicates. It prints one line per event (key and event id) once the broker
// acknowledged it, and exits 1 if any was not.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
)

// The contract's records, by field name.
type traceContext struct {
	Traceparent string  `avro:"traceparent"`
	Tracestate  *string `avro:"tracestate"`
}

type eventMetadata struct {
	TenantID      string       `avro:"tenant_id"`
	EventID       string       `avro:"event_id"`
	Source        string       `avro:"source"`
	Type          string       `avro:"type"`
	OccurredAt    time.Time    `avro:"occurred_at"`
	ProducedAt    time.Time    `avro:"produced_at"`
	Trace         traceContext `avro:"trace"`
	SchemaVersion *int32       `avro:"schema_version"`
}

type usageEvent struct {
	Metadata       eventMetadata      `avro:"metadata"`
	CustomerID     string             `avro:"customer_id"`
	SubscriptionID *string            `avro:"subscription_id"`
	MeterID        string             `avro:"meter_id"`
	Quantity       *big.Rat           `avro:"quantity"`
	Unit           string             `avro:"unit"`
	Dimensions     *map[string]string `avro:"dimensions"`
	UniqueValue    *string            `avro:"unique_value"`
}

const source = "go-example"

type options struct {
	bootstrap, registryURL, registryUser, passwordFile      string
	topic, tenant, customer, subscription, meter, unit, run string
	quantity                                                string
	count                                                   int
}

func main() {
	var o options
	flag.StringVar(&o.bootstrap, "bootstrap-servers", "127.0.0.1:9092", "Kafka bootstrap servers")
	flag.StringVar(&o.registryURL, "registry-url", "http://127.0.0.1:8081", "schema registry")
	flag.StringVar(&o.registryUser, "registry-user", "", "registry basic-auth user")
	flag.StringVar(&o.passwordFile, "registry-password-file", "", "file holding the registry password")
	flag.StringVar(&o.topic, "topic", "usage.events", "topic")
	flag.StringVar(&o.tenant, "tenant", "", "tenant (required)")
	flag.StringVar(&o.customer, "customer", "", "customer (required)")
	flag.StringVar(&o.subscription, "subscription", "", "subscription; empty lets the enricher pick it")
	flag.StringVar(&o.meter, "meter", "api_calls", "meter")
	flag.StringVar(&o.unit, "unit", "call", "unit")
	flag.StringVar(&o.quantity, "quantity", "1", "quantity of each event, a decimal")
	flag.IntVar(&o.count, "count", 1, "events to publish")
	flag.StringVar(&o.run, "run", "1", "a new run id makes new facts")
	flag.Parse()
	if err := publish(o); err != nil {
		fmt.Fprintf(os.Stderr, "produce-usage: %v\n", err)
		os.Exit(1)
	}
}

func publish(o options) error {
	if o.tenant == "" || o.customer == "" {
		return fmt.Errorf("--tenant and --customer are required")
	}
	quantity, ok := new(big.Rat).SetString(o.quantity)
	if !ok || quantity.Sign() < 0 {
		return fmt.Errorf("--quantity %q: expected a decimal, not negative", o.quantity)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	registry, err := registryClient(o)
	if err != nil {
		return err
	}
	// The platform registered the contract: its latest version, never one of ours.
	latest, err := registry.SchemaByVersion(ctx, o.topic+"-value", -1)
	if err != nil {
		return fmt.Errorf("the contract of %s: %w", o.topic, err)
	}
	schema, err := avro.Parse(latest.Schema.Schema)
	if err != nil {
		return fmt.Errorf("schema %d: %w", latest.ID, err)
	}
	var serde sr.Serde
	serde.Register(latest.ID, usageEvent{}, sr.EncodeFn(func(v any) ([]byte, error) {
		return avro.Marshal(schema, v)
	}))

	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(o.bootstrap, ",")...),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent writes are the client's default
		kgo.ProducerBatchCompression(kgo.ZstdCompression()),
	)
	if err != nil {
		return err
	}
	defer client.Close()

	now := time.Now().UTC()
	key := []byte(o.tenant + ":" + o.customer)
	records := make([]*kgo.Record, 0, o.count)
	ids := make([]string, 0, o.count)
	for n := 0; n < o.count; n++ {
		event := usage(o, n, quantity, now)
		value, err := serde.Encode(event)
		if err != nil {
			return fmt.Errorf("event %d: %w", n, err)
		}
		records = append(records, &kgo.Record{
			Topic:   o.topic,
			Key:     key,
			Value:   value,
			Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte(event.Metadata.Trace.Traceparent)}},
		})
		ids = append(ids, event.Metadata.EventID)
	}
	failed := 0
	for i, result := range client.ProduceSync(ctx, records...) {
		if result.Err != nil {
			failed++
			fmt.Fprintf(os.Stderr, "produce-usage: not acknowledged: %s %s: %v\n", key, ids[i], result.Err)
			continue
		}
		fmt.Printf("%s %s\n", key, ids[i])
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d events not acknowledged", failed, len(records))
	}
	return nil
}

func registryClient(o options) (*sr.Client, error) {
	opts := []sr.ClientOpt{sr.URLs(o.registryURL)}
	if o.registryUser != "" {
		if o.passwordFile == "" {
			return nil, fmt.Errorf("--registry-user needs --registry-password-file")
		}
		password, err := os.ReadFile(o.passwordFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sr.BasicAuth(o.registryUser, strings.TrimRight(string(password), "\r\n")))
	}
	return sr.NewClient(opts...)
}

// usage is the n-th fact of this run. Its event id is a digest of the fact, so the same
// customer, meter, run and sequence number always make the same id.
func usage(o options, n int, quantity *big.Rat, now time.Time) usageEvent {
	fact := fmt.Sprintf("%s/%s/%s/%s/%d", o.tenant, o.customer, o.meter, o.run, n)
	digest := sha256.Sum256([]byte(fact))
	var subscription *string
	if o.subscription != "" {
		subscription = &o.subscription
	}
	return usageEvent{
		Metadata: eventMetadata{
			TenantID:   o.tenant,
			EventID:    hex.EncodeToString(digest[:16]),
			Source:     source,
			Type:       "backbone.usage.recorded",
			OccurredAt: now.Add(-time.Duration(o.count-n) * time.Second).Truncate(time.Microsecond),
			ProducedAt: time.Now().UTC().Truncate(time.Microsecond),
			Trace:      traceContext{Traceparent: traceparent()},
		},
		CustomerID:     o.customer,
		SubscriptionID: subscription,
		MeterID:        o.meter,
		Quantity:       quantity,
		Unit:           o.unit,
	}
}

func traceparent() string {
	ids := make([]byte, 24)
	_, _ = rand.Read(ids)
	return fmt.Sprintf("00-%s-%s-01", hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:]))
}

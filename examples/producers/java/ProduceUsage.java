/*
 * Publishes usage events to the backbone straight to Kafka, in the Confluent wire format,
 * written from the contract alone (schemas/contracts/usage/usage_event.avsc and
 * schemas/manifest.toml) with kafka-clients and Apache Avro, no Confluent serializer.
 *
 * The value schema is the registry's latest for <topic>-value (the platform registers it; a
 * producer never does), framed as the wire format says: a zero byte, the schema id in four
 * big-endian bytes, then the Avro binary. Each record is keyed <tenant_id>:<customer_id>; each
 * event id is a name-based UUID of the business fact, so sending the same fact again makes the
 * same record, which the backbone deduplicates. Prints one line per event (key and event id) once
 * the broker acknowledged it, and exits 1 if any was not.
 */

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.math.BigDecimal;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.Future;
import org.apache.avro.Conversions;
import org.apache.avro.LogicalTypes;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class ProduceUsage {
    private static final String SOURCE = "java-example";

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = flags(argv);
        String topic = args.getOrDefault("topic", "usage.events");
        String tenant = required(args, "tenant");
        String customer = required(args, "customer");
        int count = Integer.parseInt(args.getOrDefault("count", "1"));

        // The platform registered the contract: its latest version, never one of ours.
        JsonNode latest = latestSchema(args, topic + "-value");
        int schemaId = latest.get("id").asInt();
        Schema schema = new Schema.Parser().parse(latest.get("schema").asText());

        Properties config = new Properties();
        config.put("bootstrap.servers", args.getOrDefault("bootstrap-servers", "127.0.0.1:9092"));
        config.put("acks", "all");
        config.put("enable.idempotence", "true");
        config.put("compression.type", "zstd");
        byte[] key = (tenant + ":" + customer).getBytes(StandardCharsets.UTF_8);
        int failed = 0;
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(config, new ByteArraySerializer(), new ByteArraySerializer())) {
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            List<String> ids = new ArrayList<>();
            Instant now = Instant.now().truncatedTo(ChronoUnit.MICROS);
            for (int n = 0; n < count; n++) {
                GenericRecord event = usage(schema, args, tenant, customer, n, count, now);
                GenericRecord metadata = (GenericRecord) event.get("metadata");
                ProducerRecord<byte[], byte[]> record =
                        new ProducerRecord<>(topic, key, frame(schemaId, schema, event));
                String traceparent = (String) ((GenericRecord) metadata.get("trace")).get("traceparent");
                record.headers().add("traceparent", traceparent.getBytes(StandardCharsets.UTF_8));
                sent.add(producer.send(record));
                ids.add((String) metadata.get("event_id"));
            }
            for (int i = 0; i < sent.size(); i++) {
                try {
                    sent.get(i).get();
                    System.out.println(new String(key, StandardCharsets.UTF_8) + " " + ids.get(i));
                } catch (Exception e) {
                    failed++;
                    System.err.println("produce-usage: not acknowledged: " + ids.get(i) + ": " + e);
                }
            }
        }
        System.exit(failed == 0 ? 0 : 1);
    }

    /** The n-th fact of this run, as the contract's record. */
    static GenericRecord usage(
            Schema schema, Map<String, String> args, String tenant, String customer,
            int n, int count, Instant now) {
        String meter = args.getOrDefault("meter", "api_calls");
        String fact = String.join("/", tenant, customer, meter, args.getOrDefault("run", "1"),
                Integer.toString(n));
        Schema metadataSchema = schema.getField("metadata").schema();
        Schema traceSchema = metadataSchema.getField("trace").schema();
        GenericRecord trace = new GenericData.Record(traceSchema);
        trace.put("traceparent", traceparent());
        trace.put("tracestate", null);
        GenericRecord metadata = new GenericData.Record(metadataSchema);
        metadata.put("tenant_id", tenant);
        // Deterministic: the same customer, meter, run and sequence number is the same fact.
        metadata.put("event_id", UUID.nameUUIDFromBytes(fact.getBytes(StandardCharsets.UTF_8)).toString());
        metadata.put("source", SOURCE);
        metadata.put("type", "backbone.usage.recorded");
        metadata.put("occurred_at", micros(now.minusSeconds(count - n)));
        metadata.put("produced_at", micros(Instant.now()));
        metadata.put("trace", trace);
        metadata.put("schema_version", null);

        Schema quantitySchema = schema.getField("quantity").schema();
        LogicalTypes.Decimal decimal = (LogicalTypes.Decimal) quantitySchema.getLogicalType();
        BigDecimal quantity = new BigDecimal(args.getOrDefault("quantity", "1"))
                .setScale(decimal.getScale());
        GenericRecord event = new GenericData.Record(schema);
        event.put("metadata", metadata);
        event.put("customer_id", customer);
        event.put("subscription_id", args.get("subscription"));
        event.put("meter_id", meter);
        event.put("quantity",
                new Conversions.DecimalConversion().toBytes(quantity, quantitySchema, decimal));
        event.put("unit", args.getOrDefault("unit", "call"));
        event.put("dimensions", null);
        event.put("unique_value", null);
        return event;
    }

    /** The Confluent wire format: magic byte 0, the schema id (big-endian), the Avro binary. */
    static byte[] frame(int schemaId, Schema schema, GenericRecord event) throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(0);
        out.write(ByteBuffer.allocate(4).putInt(schemaId).array());
        BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
        new GenericDatumWriter<GenericRecord>(schema).write(event, encoder);
        encoder.flush();
        return out.toByteArray();
    }

    static JsonNode latestSchema(Map<String, String> args, String subject) throws Exception {
        String url = args.getOrDefault("registry-url", "http://127.0.0.1:8081")
                + "/subjects/" + URLEncoder.encode(subject, StandardCharsets.UTF_8)
                + "/versions/latest";
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(url))
                .header("Accept", "application/vnd.schemaregistry.v1+json");
        String user = args.get("registry-user");
        if (user != null) {
            String password = Files.readString(Path.of(required(args, "registry-password-file")))
                    .stripTrailing();
            String credentials = Base64.getEncoder()
                    .encodeToString((user + ":" + password).getBytes(StandardCharsets.UTF_8));
            request.header("Authorization", "Basic " + credentials);
        }
        HttpResponse<String> answer = HttpClient.newHttpClient()
                .send(request.build(), HttpResponse.BodyHandlers.ofString());
        if (answer.statusCode() != 200) {
            throw new IllegalStateException("registry: " + subject + ": " + answer.statusCode()
                    + " " + answer.body());
        }
        return new ObjectMapper().readTree(answer.body());
    }

    static long micros(Instant at) {
        return ChronoUnit.MICROS.between(Instant.EPOCH, at);
    }

    static String traceparent() {
        byte[] ids = new byte[24];
        new SecureRandom().nextBytes(ids);
        HexFormat hex = HexFormat.of();
        return "00-" + hex.formatHex(ids, 0, 16) + "-" + hex.formatHex(ids, 16, 24) + "-01";
    }

    /** `--name value` pairs. */
    static Map<String, String> flags(String[] argv) {
        Map<String, String> flags = new HashMap<>();
        for (int i = 0; i < argv.length; i += 2) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("expected --name value, got " + argv[i]);
            }
            flags.put(argv[i].substring(2), argv[i + 1]);
        }
        return flags;
    }

    static String required(Map<String, String> args, String name) {
        String value = args.get(name);
        if (value == null || value.isEmpty()) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return value;
    }
}

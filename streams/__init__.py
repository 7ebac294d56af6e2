"""The live runtime on Kafka: topics, ingest, the faust enforce worker, outputs, serde, metrics."""

"""The Apache Beam pipeline: Kafka IO, per-stage transforms, models, masking policy, producer."""

"""Kafka sink: ECS JSON or raw messages to topics chosen per event, acknowledged per partition (aiokafka)."""

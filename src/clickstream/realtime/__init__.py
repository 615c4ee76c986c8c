"""The live 5-minute view: the sliding window (pure) and its Kafka source."""

"""clickstream: views and orders from Kafka into PostgreSQL, reports, a live view and an API."""

__version__ = "0.1.0"

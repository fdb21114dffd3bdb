"""registry-consumer: an event-driven companion service for CNCF distribution registries."""

__version__ = "0.1.0"

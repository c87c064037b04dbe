"""The embedded stack: PostgreSQL and a Kafka-protocol broker as local servers, plus the five
services supervised as processes. No Docker, no root needed (under root, PostgreSQL runs as an
unprivileged user since it refuses to run as root)."""

"""Broker administration: Mosquitto configuration, Dynamic Security roles and users, provisioning, launching."""

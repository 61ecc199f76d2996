"""The MQTT runtime: broker configuration, transport, device agent, orchestrator, client."""

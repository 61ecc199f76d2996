"""The message bus: the protocol every role speaks, an in-process broker for tests, and MQTT over paho."""

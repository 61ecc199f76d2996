"""Deployment files: the committed broker config matches the generator."""

from __future__ import annotations

from pathlib import Path

from edgeci_mqtt.runtime.broker_config import acl_text, mosquitto_conf

REPO = Path(__file__).resolve().parent.parent


def test_committed_broker_files_match_the_generator() -> None:
    assert (REPO / "broker" / "acl").read_text() == acl_text()
    assert (REPO / "broker" / "mosquitto.conf").read_text() == mosquitto_conf("/mosquitto/config", 1883)
    assert not (REPO / "broker" / "passwd").exists(), "credentials must not be committed"

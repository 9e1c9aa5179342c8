"""The tracing settings, read under OpenTelemetry's own variable names."""

from __future__ import annotations

import pytest

from agent_mcp_gateway.settings import SettingsError, load_settings


def test_otel_settings_are_read_under_their_own_names() -> None:
    assert load_settings({}).otel_endpoint is None
    assert load_settings({}).otel_service_name == "agent-mcp-gateway"
    settings = load_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "edge-gw"}
    )
    assert (settings.otel_endpoint, settings.otel_service_name) == ("http://collector:4318", "edge-gw")
    with pytest.raises(SettingsError) as refused:
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
    assert str(refused.value) == (
        "OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318' is not valid: "
        "expected an OTLP/HTTP collector URL such as http://collector:4318"
    )

"""The live dashboard: a static web page (static/) that follows a run over MQTT-over-WebSockets, and
`python -m coordinator dashboard` (server.py), a small HTTP server for it and its config.json."""

from coordinator.dashboard.server import STATIC_DIR, DashboardConfig, dashboard_config, make_server

__all__ = ["STATIC_DIR", "DashboardConfig", "dashboard_config", "make_server"]

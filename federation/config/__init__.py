"""Settings: typed dataclasses loaded from one TOML file (config/default.toml) and validated."""

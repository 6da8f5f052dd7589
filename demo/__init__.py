"""Runs a whole federation on one machine: a broker, a coordinator and N edge-client processes.

`python -m demo` is the demo; tests and benchmarks use `LocalFederation`."""

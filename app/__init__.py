"""Tandem's service: HTTP API, persistence, calibrator worker and CLI around the `twin` core."""

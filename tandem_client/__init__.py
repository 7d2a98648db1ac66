"""Tandem's Python client: the REST API as typed methods over httpx.

It imports httpx and the standard library only (not torch, numpy or the service), so it
installs and loads light where data comes from: `from tandem_client import Client`.
"""

from tandem_client.client import ApiError, Client
from tandem_client.results import (
    CalibrationLag,
    Drift,
    DriftEvent,
    History,
    HistoryRow,
    IngestResult,
    Parameters,
    Prediction,
    Readiness,
    Twin,
    Version,
)

__all__ = [
    "ApiError",
    "CalibrationLag",
    "Client",
    "Drift",
    "DriftEvent",
    "History",
    "HistoryRow",
    "IngestResult",
    "Parameters",
    "Prediction",
    "Readiness",
    "Twin",
    "Version",
]

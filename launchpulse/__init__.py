"""launchpulse: launch-adjustment signals from live clickstream and orders.

The code lives in three layers mapped under this package name:
``launchpulse.schemas`` (schemas/), ``launchpulse.models`` (models/) and
``launchpulse.stream`` (stream/). Imports flow in that order only.
"""

__version__ = "0.1.0"

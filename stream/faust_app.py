"""The Faust app for ``faust -A launchpulse.stream.faust_app worker``: settings from the environment."""
from .pipeline import Worker
from .settings import Settings

worker = Worker(Settings.from_env())
app = worker.app

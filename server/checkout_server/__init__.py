"""checkout server: the gRPC entry point of the video object-detection system."""

from .app import App, create_app
from .config import Settings

__all__ = ["App", "Settings", "create_app"]

"""oldphoto: restore old photographs at archive scale."""

__version__ = "0.1.0"

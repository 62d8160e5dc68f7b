"""oldphoto: restore old photographs at archive scale."""

from pathlib import Path

__version__ = "0.1.0"

# Photographs the package ships (public domain and CC0, samples/LICENSES.md): the demo's, and the
# clean photographs evaluations degrade when no others are named.
SAMPLES = Path(__file__).resolve().parent / "samples"

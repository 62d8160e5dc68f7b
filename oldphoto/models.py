"""Restorer bundles and other weights by reference: a local path, a URL (s3://, https://, ...), or an
MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import storage

if TYPE_CHECKING:
    from .model.restorer import RestorerNetwork

# torch is imported where weights are read, not here: naming the registry's alias (a restore's first
# step) must not wait two seconds for it.

BUNDLE_FILE = "restorer.pt"
REGISTERED_NAME = "oldphoto-restorer"
CHAMPION = "champion"  # the registry alias restores follow; scheduled retraining moves it


def _is_mlflow_uri(ref: str) -> bool:
    return ref.startswith(("models:/", "runs:/"))


def read_weights(ref: str) -> Any:
    """torch.load of the file a reference names, with weights_only=True: tensors and plain data only,
    never code, whatever the file holds."""
    if _is_mlflow_uri(ref):
        return _read_mlflow_bundle(ref)
    try:
        data = storage.read_bytes(ref)
    except FileNotFoundError:
        raise FileNotFoundError(f"{ref}: no such weights file") from None
    try:
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{ref}: not a readable weights file ({type(error).__name__}: {error})"[:500]) from None


def _read_mlflow_bundle(ref: str) -> Any:
    import mlflow

    from .settings import get_settings

    uri = get_settings().tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # models:/ URIs resolve through the registry, not the tracking store
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=folder)
        except Exception as error:
            raise FileNotFoundError(f"{ref}: cannot be fetched from MLflow ({error})"[:500]) from None
        found = [Path(local)] if Path(local).is_file() else sorted(Path(local).rglob(BUNDLE_FILE))
        if not found:
            raise ValueError(f"{ref}: holds no {BUNDLE_FILE}")
        return read_weights(str(found[0]))


def load_restorer(ref: str) -> RestorerNetwork:
    bundle = read_weights(ref)
    try:
        from .model.restorer import RestorerNetwork

        return RestorerNetwork.from_bundle(bundle)
    except (ValueError, KeyError, RuntimeError) as error:
        raise ValueError(f"{ref}: not a usable restorer bundle ({error})"[:500]) from None

"""`oldphoto review DST`: a web page over a restored archive where curators accept, reject or send back
each restoration, and the JSON API the page uses.

Everything shown comes from DST's manifest: keys are validated against it, so that only files under
DST (and SRC) are ever read. Renditions for the page (a view-sized image and full-resolution tiles of
the original, the restoration and the damage mask) are made on first request and cached under
DST/_review/cache, so a 12-megapixel scan never reaches the browser whole. Decisions go through
tasks.review, one atomic part per answered request.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import io
import ipaddress
import json
import posixpath
import secrets
import threading
import time
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from . import storage
from .images import decode_archive, to_rgb8
from .pages import render
from .tasks.restore import MANIFEST_DIR, REPORT_DIR, is_safe_key, mask_key, read_manifest, restored_at, thumbnail_key
from .tasks.review import (REVIEW_DIR, UNDECIDED, RedoSettings, append_decision, current_decision, decision_files,
                           fold_decisions, merge_decisions, read_decision_files, source_of)

TILE = 512  # full-resolution tiles of the zoomed view
VIEW = 1600  # long side of the rendition shown fitted to the window
FILTERS = {"undecided": UNDECIDED, "accepted": "accept", "rejected": "reject", "redo": "redo", "failed": None}
TOKEN_COOKIE = "oldphoto_review"


class ReviewConfig(BaseModel):
    """Where the review page is served."""

    host: str = Field("127.0.0.1", description="address to bind; any other than loopback requires a token "
                      "(OLDPHOTO_REVIEW_TOKEN, or one generated and printed once)")
    port: int = Field(8765, ge=0, lt=65536)
    src: str | None = Field(None, description="the originals (folder or URL); default: the SRC of the run "
                            "that wrote DST's report")


class Decision(BaseModel):
    """A curator's answer on one restoration; "undecided" takes an earlier decision back (undo)."""

    model_config = ConfigDict(extra="forbid")
    key: str
    decision: Literal["accept", "reject", "redo", "undecided"]
    note: str = Field("", max_length=4000)
    settings: RedoSettings = RedoSettings()
    reviewer: str | None = Field(None, max_length=200)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Archive:
    """A restored archive as the review sees it: the manifest (read again when it changes), the
    decisions (this server's at once, other servers' from their parts on the next listing), and
    the renditions."""

    def __init__(self, dst: str, src: str | None):
        self.dst, self.src = dst, src if src is not None else source_of(dst)
        self._lock = threading.Lock()
        self._manifest_signature: tuple = ()
        self._rows: list[dict[str, Any]] = []
        self._index: dict[str, dict[str, Any]] = {}
        self._decisions: dict[str, dict[str, Any]] = {}
        self._seen_files: set[str] = set()
        fold_decisions(dst)
        self.rows(), self.decisions()  # read before the address is printed: the first page then opens at once

    def rows(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The manifest's rows in key order, and by key: read again only when its files change."""
        fs, folder = storage.filesystem(storage.join(self.dst, MANIFEST_DIR))
        fs.invalidate_cache(folder)
        listing = fs.ls(folder, detail=True) if fs.exists(folder) else []
        signature = tuple(sorted((f["name"], f.get("size"), str(f.get("mtime") or f.get("ETag"))) for f in listing))
        with self._lock:
            if signature != self._manifest_signature:
                index = read_manifest(self.dst)
                self._rows, self._index = [index[k] for k in sorted(index)], index
                self._manifest_signature = signature
            return self._rows, self._index

    def decisions(self) -> dict[str, dict[str, Any]]:
        """Latest decision per key: this server's at once, and the parts other servers wrote since the
        last call (only new files are read)."""
        files = decision_files(self.dst)
        with self._lock:
            new = files - self._seen_files
            merge_decisions(self._decisions, read_decision_files(self.dst, new))
            self._seen_files |= new
            return self._decisions

    def decide(self, row: dict[str, Any], decision: Decision, reviewer: str) -> dict[str, Any]:
        """Store a decision on row's restoration; the item as it now stands."""
        record = {"key": decision.key, "decision": decision.decision, "note": decision.note,
                  "settings": json.dumps(decision.settings.overrides()), "reviewer": decision.reviewer or reviewer,
                  "model_version": row["model_version"], "restored_at": restored_at(row)}
        stored = append_decision(self.dst, record)
        with self._lock:
            merge_decisions(self._decisions, [stored])
        return self.item(row, self.decisions())

    def item(self, row: dict[str, Any], decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
        decision = decisions.get(row["key"])
        state = current_decision(row, decision) if row["status"] != "failed" else "failed"
        holds = state not in (UNDECIDED, "failed")
        return {"key": row["key"], "status": row["status"], "reason": row["reason"], "state": state,
                "decision": state if holds else None,
                "note": decision["note"] if holds else "", "settings": json.loads(decision["settings"] or "{}") if holds else {},
                "reviewer": decision["reviewer"] if holds else None,
                "decided_at": decision["decided_at"].isoformat() if holds and decision.get("decided_at") else None,
                "model_version": row["model_version"], "damaged": row.get("damaged"),
                "restored_at": restored_at(row).isoformat() if restored_at(row) else None}

    def items(self, which: str, offset: int, limit: int) -> dict[str, Any]:
        rows, _ = self.rows()
        decisions = self.decisions()
        states = [("failed" if r["status"] == "failed" else current_decision(r, decisions.get(r["key"]))) for r in rows]
        counts = {name: sum(s == (value or "failed") for s in states) for name, value in FILTERS.items()}
        chosen = [r for r, s in zip(rows, states) if which == "all" or s == (FILTERS[which] or "failed")]
        return {"total": len(chosen), "offset": offset, "counts": counts | {"all": len(rows)},
                "items": [self.item(r, decisions) for r in chosen[offset:offset + limit]]}

    # Renditions ----------------------------------------------------------------------------------

    def _source_url(self, side: str, row: dict[str, Any]) -> str:
        if side == "before":
            if self.src is None:
                raise FileNotFoundError("the originals' location is unknown: give --src")
            return storage.join(self.src, row["key"])
        if side == "after":
            return storage.join(self.dst, row["output_key"] or row["key"])
        return storage.join(self.dst, REPORT_DIR, mask_key(row["key"]))

    def _cache_url(self, side: str, row: dict[str, Any], name: str) -> str:
        # The output's or input's version in the name: a restoration made again gets new renditions.
        version = row.get("stamp") if side == "before" else str(restored_at(row))
        digest = hashlib.sha256(f"{row['key']}\n{version}".encode()).hexdigest()[:24]
        return storage.join(self.dst, REVIEW_DIR, "cache", digest, side, name)

    def pixels(self, side: str, row: dict[str, Any]) -> np.ndarray:
        return _decoded(self._source_url(side, row), str(restored_at(row)) + str(row.get("stamp")), side == "mask")

    def meta(self, row: dict[str, Any]) -> dict[str, Any]:
        """The restoration's size and renditions (cached), and whether this server can show the original."""
        url = self._cache_url("after", row, "meta.json")
        if storage.exists(url):
            meta = json.loads(storage.read_bytes(url))
        else:
            h, w = self.pixels("after", row).shape[:2]
            meta = {"width": w, "height": h, "tile": TILE, "view": _fit(w, h, VIEW),
                    "mask": storage.exists(self._source_url("mask", row))}
            storage.write_bytes_atomic(url, json.dumps(meta).encode())
        return meta | {"before": self.src is not None}

    def rendition(self, side: str, row: dict[str, Any], col: int | None = None, tile_row: int | None = None) -> bytes:
        """The view-sized image (col None) or one full-resolution tile, as JPEG (PNG with alpha for the mask)."""
        suffix = "png" if side == "mask" else "jpg"
        name = f"view.{suffix}" if col is None else f"tile-{tile_row}-{col}.{suffix}"
        url = self._cache_url(side, row, name)
        if storage.exists(url):
            return storage.read_bytes(url)
        pixels = self.pixels(side, row)
        h, w = pixels.shape[:2]
        if col is None:
            image = _image(pixels, side == "mask").resize(_fit(w, h, VIEW), Image.Resampling.LANCZOS if side != "mask"
                                                          else Image.Resampling.BOX)
        else:
            if not (0 <= col * TILE < w and 0 <= tile_row * TILE < h):
                raise IndexError(f"tile {tile_row}, {col} is outside the {w}x{h} image")
            image = _image(pixels[tile_row * TILE:(tile_row + 1) * TILE, col * TILE:(col + 1) * TILE], side == "mask")
        out = io.BytesIO()
        image.save(out, format="PNG" if side == "mask" else "JPEG", quality=90)
        storage.write_bytes_atomic(url, out.getvalue())
        return out.getvalue()

    def thumbnail(self, row: dict[str, Any]) -> bytes:
        return storage.read_bytes(storage.join(self.dst, REPORT_DIR, thumbnail_key(row["key"])))


def _fit(w: int, h: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _image(pixels: np.ndarray, mask: bool) -> Image.Image:
    if not mask:
        return Image.fromarray(to_rgb8(pixels))
    # The overlay: marked pixels red and half transparent, the rest clear.
    marked = pixels.astype(bool) if pixels.ndim == 2 else pixels[..., 0] > 0
    rgba = np.zeros((*marked.shape, 4), np.uint8)
    rgba[marked] = (255, 40, 40, 150)
    return Image.fromarray(rgba, "RGBA")


@functools.lru_cache(maxsize=6)  # the photo being looked at, its original and mask, and the previous one's
def _decoded(url: str, version: str, mask: bool) -> np.ndarray:
    data = storage.read_bytes(url)
    if mask:
        return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0
    return decode_archive(data, posixpath.basename(url)).pixels


def create_app(dst: str, src: str | None = None, token: str | None = None):
    """The review server's FastAPI app over DST; token: required of every request when given (a cookie
    set by opening the page's URL with ?token=..., or an `Authorization: Bearer` header)."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

    archive = Archive(dst, src)
    reviewer = getpass.getuser()
    app = FastAPI(title="oldphoto review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.archive = archive

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and secrets.compare_digest(given, token) and request.url.path == "/":
            # Once: the token moves from the address bar into an HttpOnly cookie.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        offered = request.cookies.get(TOKEN_COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not offered or not secrets.compare_digest(offered, token):
            return JSONResponse({"detail": "a token is required: open the address the server printed"}, status_code=401)
        return await call_next(request)

    def row_of(key: str) -> dict[str, Any]:
        if not is_safe_key(key):
            raise HTTPException(400, f"{key!r} is not a key of this archive (absolute or with '..')")
        row = archive.rows()[1].get(key)
        if row is None:
            raise HTTPException(404, f"{key!r} is not in the manifest of {dst}")
        return row

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render("review.html", dst=dst, src=archive.src, tile=TILE)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/items")
    def items(filter: Literal["all", "undecided", "accepted", "rejected", "redo", "failed"] = "all",
              offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=500)) -> dict[str, Any]:
        return archive.items(filter, offset, limit)

    @app.get("/api/item")
    def item(key: str) -> dict[str, Any]:
        row = row_of(key)
        if row["status"] == "failed":
            return archive.item(row, archive.decisions())
        try:
            return archive.item(row, archive.decisions()) | archive.meta(row)
        except FileNotFoundError as error:
            raise HTTPException(404, f"{key}: the restoration is missing ({error})") from None

    @app.post("/api/decisions")
    def decide(decision: Decision) -> dict[str, Any]:
        return archive.decide(row_of(decision.key), decision, reviewer)

    def image(side: str, key: str, col: int | None, tile_row: int | None) -> Response:
        row = row_of(key)
        try:
            data = archive.rendition(side, row, col, tile_row)
        except FileNotFoundError as error:
            raise HTTPException(404, f"{key}: no {side} image ({error})") from None
        except IndexError as error:
            raise HTTPException(404, str(error)) from None
        return Response(data, media_type="image/png" if side == "mask" else "image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/view/{side}")
    def view(side: Literal["before", "after", "mask"], key: str) -> Response:
        return image(side, key, None, None)

    @app.get("/api/tile/{side}")
    def tile(side: Literal["before", "after", "mask"], key: str, row: int = Query(ge=0), col: int = Query(ge=0)) -> Response:
        return image(side, key, col, row)

    @app.get("/api/thumb")
    def thumb(key: str) -> Response:
        try:
            return Response(archive.thumbnail(row_of(key)), media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=300"})
        except FileNotFoundError:
            raise HTTPException(404, f"{key}: no thumbnail") from None

    return app


def serve(dst: str, config: ReviewConfig, verbose: bool = False) -> None:
    """Run the review server until interrupted; prints the address (with the token, once)."""
    import os

    import uvicorn

    token = None
    if not is_loopback(config.host):
        token = os.environ.get("OLDPHOTO_REVIEW_TOKEN") or secrets.token_urlsafe(24)
    if not storage.exists(storage.join(dst, MANIFEST_DIR)):
        raise FileNotFoundError(f"{dst}: no restored archive here (no {MANIFEST_DIR}/): run `oldphoto restore` first")
    app = create_app(dst, config.src, token)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info" if verbose else "warning",
                                           access_log=verbose))
    host = f"[{config.host}]" if ":" in config.host else config.host
    shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else host
    address = f"http://{shown}:{config.port}/" + (f"?token={token}" if token and "OLDPHOTO_REVIEW_TOKEN" not in os.environ else "")
    originals = app.state.archive.src or "unknown (give --src to see them)"
    print(f"reviewing {dst} (originals: {originals})\nopen {address}\n(Ctrl+C to stop)", flush=True)
    started = time.perf_counter()
    server.run()
    print(f"review server stopped after {time.perf_counter() - started:.0f} s")

"""Structured damage to the print: scratches, cracks, folds, dust, paper texture, and what real
prints show beside them: tears and missing corners, foxing, emulsion flaking.

Each operation returns (degraded image, mask). The mask is exact: True on every pixel whose value
the damage replaced, False elsewhere, so pixels outside the mask are the input's own (folds add a
smooth shading band beside their line, which the mask leaves out on purpose: it is recoverable
tone, not lost content). Shapes are drawn as anti-aliased opacity layers and blended once.
"""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image, Mask, multiply, smooth_field, to_uint8


def lfilter(b: list[float], a: list[float], x: np.ndarray) -> np.ndarray:
    from scipy.signal import lfilter as scipy_lfilter  # here, not at import: scipy.signal takes half a second to load

    return scipy_lfilter(b, a, x)

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_BRIGHT = (246.0, 242.0, 232.0)  # exposed paper base: the colour of lost emulsion
_DARK = (28.0, 24.0, 22.0)
_CORE_GAIN = 1.6


def _color(image: Image, bright: bool, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(_BRIGHT if bright else _DARK, np.float32) + rng.uniform(-8, 8)
    return base.mean() if image.ndim == 2 else base


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float,
          curvature: float, jitter: float = 0.0) -> np.ndarray:
    """A path of `steps` points of `step` pixels.

    The heading turns at a smooth, zero-mean rate of about `curvature` radians per pixel (gentle arcs
    that rarely loop, as a scratch dragged across the print), and each step deviates from the heading
    by `jitter` radians without changing it (the zig-zag of a crack that still runs one way).
    """
    memory = 0.97
    rate = lfilter([1.0], [1.0, -memory], rng.standard_normal(steps)) * np.sqrt(1 - memory**2)
    theta = heading + np.cumsum(rate * curvature * step) + jitter * rng.standard_normal(steps)
    offsets = np.cumsum(np.stack([np.cos(theta), np.sin(theta)], axis=1) * step, axis=0)
    return np.vstack([start, start + offsets])


def _inside(points: np.ndarray, h: int, w: int, margin: float = 4.0) -> np.ndarray:
    """Points up to the first one that leaves the image (with margin)."""
    ok = (points[:, 0] > -margin) & (points[:, 0] < w + margin) & (points[:, 1] > -margin) & (points[:, 1] < h + margin)
    out = np.flatnonzero(~ok)
    return points[: out[0]] if out.size else points


def _draw(layer: np.ndarray, points: np.ndarray, thickness: int, intensity: np.ndarray | float,
          pieces: int = 1) -> None:
    """Draw an anti-aliased polyline into a uint8 opacity layer.

    intensity per point (0-1) lets a stroke fade in and out along its length; the path is drawn in
    `pieces` runs, each with its run's mean intensity.
    """
    n = len(points)
    if n < 2:
        return
    intensity = np.broadcast_to(np.asarray(intensity, np.float32), (n,))
    fixed = np.round(points * (1 << _SHIFT)).astype(np.int32)
    # run k spans points bounds[k]..bounds[k+1]; neighbouring runs share an end point, so no gaps
    bounds = np.linspace(0, n - 1, max(1, min(pieces, n - 1)) + 1).round().astype(np.int64)
    total = np.concatenate([[0.0], np.cumsum(intensity, dtype=np.float64)])
    values = np.round(255 * (total[bounds[1:] + 1] - total[bounds[:-1]]) / (bounds[1:] - bounds[:-1] + 1))
    if thickness <= 1:
        target, offset = layer, 0
    else:
        # OpenCV's thick anti-aliased lines cost ten times its thin ones: draw thin within the stroke's
        # bounding box, then widen by dilation.
        (x0, y0), (x1, y1) = np.floor(points.min(axis=0)).astype(int), np.ceil(points.max(axis=0)).astype(int)
        h, w = layer.shape
        x0, y0 = max(0, x0 - thickness), max(0, y0 - thickness)
        x1, y1 = min(w, x1 + thickness + 1), min(h, y1 + thickness + 1)
        if x1 <= x0 or y1 <= y0:
            return
        target, offset = np.zeros((y1 - y0, x1 - x0), np.uint8), np.array([x0, y0]) << _SHIFT
    for start, end, value in zip(bounds[:-1], bounds[1:], values.astype(int)):
        if value > 0:
            cv2.polylines(target, [fixed[start : end + 1] - offset], False, int(value), 1, cv2.LINE_AA, _SHIFT)
    if target is not layer:
        widened = cv2.dilate(target, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness)))
        np.maximum(layer[y0:y1, x0:x1], widened, out=layer[y0:y1, x0:x1])


def _profile(rng: np.random.Generator, n: int, floor: float, correlation: float = 40.0) -> np.ndarray:
    """An intensity profile along a stroke: mostly strong, sometimes fading out, in [0, 1]."""
    wave = lfilter([1.0 - np.exp(-1 / correlation)], [1.0, -np.exp(-1 / correlation)], rng.normal(0, 3, n))
    return np.clip(floor + (1 - floor) * (0.75 + wave), 0.0, 1.0)


def _border_start(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """A point on a random edge and a heading into the picture."""
    side = rng.integers(4)
    t = rng.uniform(0.05, 0.95)
    start, inward = [(np.array([t * w, 0.0]), np.pi / 2), (np.array([t * w, h - 1.0]), -np.pi / 2),
                     (np.array([0.0, t * h]), 0.0), (np.array([w - 1.0, t * h]), np.pi)][side]
    return start, inward + rng.uniform(-0.6, 0.6)


def _apply_layers(image: Image, rng: np.random.Generator, bright: np.ndarray, dark: np.ndarray,
                  opacity: float = 1.0) -> tuple[Image, Mask]:
    """Blend the bright and dark opacity layers onto a copy of the image, at most `opacity` opaque;
    only their pixels are touched."""
    out = image.copy()
    w = image.shape[1]
    flat = out.reshape(-1, 3) if image.ndim == 3 else out.reshape(-1)  # flat indices: faster than (ys, xs)
    for layer, is_bright in ((bright, True), (dark, False)):
        if not cv2.countNonZero(layer):
            continue
        points = cv2.findNonZero(layer)  # several times faster than np.nonzero on sparse layers
        xs, ys = points.reshape(-1, 2).T
        at = ys * w + xs
        # Anti-aliased thin strokes rarely reach full coverage; lifting the opacity gives them
        # solid cores (as real scratches have) and keeps soft edges.
        alpha = np.minimum(layer.reshape(-1)[at].astype(np.float32) * (_CORE_GAIN / 255.0), 1.0) * np.float32(opacity)
        color = _color(image, is_bright, rng)
        pixels = flat[at].astype(np.float32)
        flat[at] = to_uint8(pixels + (color - pixels) * (alpha[:, None] if image.ndim == 3 else alpha))
    return out, (bright > 0) | (dark > 0)


def scratches(image: Image, rng: np.random.Generator, count: int, width: float = 1.0, bright: float = 0.85,
              length: float = 0.8, curvature: float = 0.004) -> tuple[Image, Mask]:
    """Thin scratches along long smooth curves, mostly bright (emulsion scraped off to the paper).

    count scratches, `width` pixels wide, each bright with probability `bright`, of `length` times the
    image diagonal (longer ones cross the whole picture), turning by `curvature` radians per pixel.
    """
    h, w = image.shape[:2]
    diagonal = float(np.hypot(h, w))
    layers = {True: np.zeros((h, w), np.uint8), False: np.zeros((h, w), np.uint8)}
    for _ in range(int(count)):
        if rng.random() < 0.6:
            start, heading = _border_start(rng, h, w)
        else:
            start, heading = rng.uniform([0, 0], [w, h]), rng.uniform(0, 2 * np.pi)
        steps = max(4, int(length * rng.uniform(0.4, 1.2) * diagonal / 2.0))
        points = _inside(_walk(rng, start, heading, steps, 2.0, curvature), h, w)
        thickness = max(1, int(round(width * rng.uniform(0.7, 1.3))))
        _draw(layers[bool(rng.random() < bright)], points, thickness, _profile(rng, len(points), 0.3),
              pieces=max(1, len(points) // 25))
    return _apply_layers(image, rng, layers[True], layers[False])


def cracks(image: Image, rng: np.random.Generator, count: int, branches: int = 6, width: float = 1.0,
           length: float = 0.5, jaggedness: float = 0.25, flakes: float = 0.3, relief: float = 0.0,
           opacity: float = 1.0, gaps: float = 0.0) -> tuple[Image, Mask]:
    """Branching crack networks as in cracked emulsion: bright, jagged, forking lines.

    count networks, each a trunk of `length` times the diagonal with up to `branches` forks (which fork
    again), turning by `jaggedness` radians per step; `flakes` is the chance per fork that a chip of
    emulsion around it is lost too. `relief` (0-1): the opacity of a dark edge along one side of every
    crack, as where a cracked print's emulsion lifts and casts a shadow; masked with the crack.
    `opacity` (0-1): how much of the paper shows through at a crack's core (a hairline crack in the
    emulsion is grey, not paper white); `gaps` (0-1): the share of each line that is missing, in runs
    of about 12 px, as a crease's crack breaks off and goes on.
    """
    h, w = image.shape[:2]
    diagonal = float(np.hypot(h, w))
    layer = np.zeros((h, w), np.uint8)
    for _ in range(int(count)):
        start, heading = _border_start(rng, h, w) if rng.random() < 0.7 else (
            rng.uniform([0, 0], [w, h]), rng.uniform(0, 2 * np.pi))
        todo = [(start, heading, length * diagonal * rng.uniform(0.6, 1.2), 0)]
        budget = int(branches)
        while todo:
            origin, heading, reach, depth = todo.pop()
            steps = max(3, int(reach / 3.0))
            points = _inside(_walk(rng, origin, heading, steps, 3.0, 0.01, jaggedness), h, w)
            thickness = max(1, int(round(width * (0.7 if depth else 1.0) * rng.uniform(0.8, 1.4))))
            profile, pieces = _profile(rng, len(points), 0.6, 20.0), max(1, len(points) // 10)
            if gaps > 0:  # drawn off and on in runs of about four points (12 px)
                wave = lfilter([1 - np.exp(-0.25)], [1.0, -np.exp(-0.25)], rng.standard_normal(len(points)))
                profile, pieces = profile * (wave > np.quantile(wave, gaps)), len(points)
            _draw(layer, points, thickness, profile, pieces=pieces)
            forks = min(budget, rng.poisson(1.5 if depth < 3 else 0.3))
            budget -= forks
            for _ in range(forks):
                at = points[rng.integers(len(points))] if len(points) else origin
                side = rng.choice([-1.0, 1.0])
                todo.append((at, heading + side * rng.uniform(0.4, 1.3), reach * rng.uniform(0.25, 0.6), depth + 1))
                if rng.random() < flakes:
                    _flake(layer, rng, at, width)
    out, mask = _apply_layers(image, rng, layer, np.zeros_like(layer), opacity)
    if relief > 0:  # the crack's own shape, moved away from the light: the edge beside it
        angle, distance = rng.uniform(0, 2 * np.pi), 1.0 + 0.75 * width
        shift = np.float32([[1, 0, np.cos(angle) * distance], [0, 1, np.sin(angle) * distance]])
        shadow = cv2.multiply(cv2.warpAffine(layer, shift, (w, h), flags=cv2.INTER_LINEAR), relief / _CORE_GAIN)
        shadow[layer > 0] = 0  # beside the crack only: its own pixels stay as drawn
        out, edge = _apply_layers(out, rng, np.zeros_like(layer), shadow)
        mask |= edge
    return out, mask


def _flake(layer: np.ndarray, rng: np.random.Generator, at: np.ndarray, width: float) -> None:
    """A small irregular chip of lost emulsion around a point."""
    corners = rng.integers(5, 9)
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = rng.uniform(1.0, 3.0 + 2.0 * width, corners)
    polygon = at + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    cv2.fillPoly(layer, [np.round(polygon * (1 << _SHIFT)).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)


def folds(image: Image, rng: np.random.Generator, count: int, width: float = 1.5,
          shading: float = 0.12, spread: float = 12.0) -> tuple[Image, Mask]:
    """Creases and folds: a nearly straight broken line across the print with shading beside it.

    The line (`width` px, mask) is where the emulsion cracked; on either side the paper bends the light:
    one side darker and the other lighter by up to `shading`, fading over `spread` pixels (not masked).
    """
    h, w = image.shape[:2]
    layer = np.zeros((h, w), np.uint8)
    gh, gw = -(-h // 4), -(-w // 4)
    shade = np.zeros((gh, gw), np.float32)
    for _ in range(int(count)):
        start, heading = _border_start(rng, h, w)
        steps = int(2 * np.hypot(h, w) / 2.0)
        points = _inside(_walk(rng, start, heading, steps, 2.0, 0.0005), h, w)
        if len(points) < 2:
            continue
        _draw(layer, points, max(1, int(round(width))), _profile(rng, len(points), 0.5), pieces=len(points) // 10 + 1)
        # Folds run nearly straight, so the signed distance to their chord stands in for the distance to
        # the drawn path: one side of the crease darker, the other lighter, fading with distance.
        (x0, y0), (x1, y1) = points[0], points[-1]
        length = max(1e-6, float(np.hypot(x1 - x0, y1 - y0)))
        y, x = (axis.astype(np.float32) * 4 + 1.5 for axis in np.ogrid[:gh, :gw])  # coarse cell centres
        dx, dy = np.float32((x1 - x0) / length), np.float32((y1 - y0) / length)
        distance = dx * (y - np.float32(y0)) - dy * (x - np.float32(x0))
        shade += np.sign(distance) * shading * np.exp(-np.abs(distance) / spread)
    # The shading is smooth but for its sign change on the line, which the line's own pixels cover,
    # so it is computed on a grid 4x coarser and resized up.
    shade = cv2.resize(shade, (w, h), interpolation=cv2.INTER_LINEAR)
    shaded = multiply(image, 1.0 + shade)
    shaded[layer > 0] = image[layer > 0]  # the line itself is blended from the original below
    return _apply_layers(shaded, rng, layer, np.zeros_like(layer))


def dust(image: Image, rng: np.random.Generator, specks: int, blotches: int = 0, hairs: int = 0,
         bright: float = 0.6, size: float = 1.5) -> tuple[Image, Mask]:
    """Dust specks (dots of about `size` px), blotches (stains up to ~12 size) and hairs.

    Each mark is bright (lost emulsion, dust on the negative) with probability `bright`, else dark.
    """
    h, w = image.shape[:2]
    layers = {True: np.zeros((h, w), np.uint8), False: np.zeros((h, w), np.uint8)}
    n = int(specks)
    centres = np.round(rng.uniform([0, 0], [w, h], (n, 2)) * (1 << _SHIFT)).astype(int).tolist()
    radii = np.round(np.maximum(0.5, rng.exponential(size, n)) * (1 << _SHIFT)).astype(int).tolist()
    is_bright = (rng.random(n) < bright).tolist()
    values = rng.integers(150, 256, n).tolist()
    for (x, y), radius, light, value in zip(centres, radii, is_bright, values):
        cv2.circle(layers[light], (x, y), radius, value, -1, cv2.LINE_AA, _SHIFT)
    for _ in range(int(blotches)):
        r = max(3, int(rng.uniform(4, 12) * size))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        field = smooth_field(rng, (y1 - y0, x1 - x0), max(2.0, r / 2.5))
        shape = 1.0 - np.hypot(yy - cy, xx - cx) / r + 0.35 * field
        opacity = np.clip(shape * 4.0, 0, 1) * rng.uniform(0.4, 0.9)
        target = layers[bool(rng.random() < bright)]
        np.maximum(target[y0:y1, x0:x1], (opacity * 255).astype(np.uint8), out=target[y0:y1, x0:x1])
    for _ in range(int(hairs)):
        points = _inside(_walk(rng, rng.uniform([0, 0], [w, h]), rng.uniform(0, 2 * np.pi),
                               int(rng.uniform(8, 30)), 1.5, 0.08), h, w)
        _draw(layers[bool(rng.random() < bright)], points, 1, 0.8)
    return _apply_layers(image, rng, layers[True], layers[False])


def paper_texture(image: Image, rng: np.random.Generator, strength: float, scale: float = 2.0) -> tuple[Image, Mask]:
    """Paper and print-surface texture: fine multiplicative relief of +-strength.

    The texture is tone, restored by the local branch rather than inpainted, so its mask is empty.
    """
    h, w = image.shape[:2]
    relief = smooth_field(rng, (h, w), scale)
    relief *= 0.7 * strength
    relief += 1.0
    # the coarse undulation is smooth: made on a grid 8x smaller, then resized up
    coarse = smooth_field(rng, (h // 8 + 2, w // 8 + 2), scale) * (0.3 * strength)
    relief += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return multiply(image, relief), np.zeros((h, w), bool)


def _jagged_edge(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, roughness: float) -> np.ndarray:
    """Points from start to end with a torn paper's irregular edge: deviations of about roughness px,
    correlated along the line, fine fibres on top."""
    n = max(8, int(np.hypot(*(end - start)) / 2.0))
    t = np.linspace(0.0, 1.0, n)[:, None]
    normal = np.array([-(end - start)[1], (end - start)[0]]) / max(1e-6, float(np.hypot(*(end - start))))
    wave = lfilter([0.15], [1.0, -0.85], rng.standard_normal(n)) * roughness * 2.0 + rng.normal(0, roughness * 0.15, n)
    wave *= np.sin(np.pi * t[:, 0]) ** 0.3  # the tear meets the print's edge where it starts and ends
    return start + (end - start) * t + normal * wave[:, None]


def tears(image: Image, rng: np.random.Generator, count: int, size: float = 0.2, roughness: float = 3.0,
          mount: float = 0.5) -> tuple[Image, Mask]:
    """Torn-off corners and edge tears: a piece of the print gone up to a jagged line, showing the mount
    behind it (white paper, or a dark album page with probability 1 - mount), with a pale rim of
    torn paper fibres along the tear. `size`: the piece's reach as a share of the short side."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    rim = np.zeros((h, w), np.uint8)
    for _ in range(int(count)):
        reach = size * min(h, w) * rng.uniform(0.5, 1.5)
        corner = np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])[rng.integers(4)]
        inward = np.sign(np.array([w / 2, h / 2]) - corner)
        if rng.random() < 0.6:  # a corner: from one edge to the other
            a = corner + np.array([inward[0] * reach * rng.uniform(0.5, 1.5), 0.0])
            b = corner + np.array([0.0, inward[1] * reach * rng.uniform(0.5, 1.5)])
            polygon = np.vstack([corner, a, _jagged_edge(rng, a, b, roughness)[1:-1], b])
        else:  # a notch torn into one edge, top or bottom (along x) or left or right (along y)
            along_x = rng.random() < 0.5
            s0 = rng.uniform(0.1, 0.7)
            s1 = s0 + rng.uniform(0.1, 0.25)
            if along_x:
                a, b, depth = np.array([s0 * w, corner[1]]), np.array([s1 * w, corner[1]]), np.array([0.0, inward[1]])
            else:
                a, b, depth = np.array([corner[0], s0 * h]), np.array([corner[0], s1 * h]), np.array([inward[0], 0.0])
            tip = (a + b) / 2 + depth * reach * rng.uniform(0.3, 0.8)
            polygon = np.vstack([_jagged_edge(rng, a, tip, roughness), _jagged_edge(rng, tip, b, roughness)[1:]])
        fixed = np.round(polygon * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [fixed], 255, cv2.LINE_AA, _SHIFT)
        cv2.polylines(rim, [fixed], True, 255, max(1, int(round(roughness / 2))), cv2.LINE_AA, _SHIFT)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    backing = np.asarray(_BRIGHT if rng.random() < mount else _DARK, np.float32) * rng.uniform(0.9, 1.0)
    backing = backing.mean() if image.ndim == 2 else backing
    rim_alpha = (rim.astype(np.float32) / 255.0 * rng.uniform(0.4, 0.8))[..., None]
    if image.ndim == 2:
        alpha, rim_alpha = alpha[..., 0], rim_alpha[..., 0]
    fibres = np.asarray(_BRIGHT, np.float32).mean() if image.ndim == 2 else np.asarray(_BRIGHT, np.float32)
    out = out + (fibres - out) * rim_alpha
    out = out + (backing - out) * alpha
    return to_uint8(out), (mask > 0) | (rim > 0)


def foxing(image: Image, rng: np.random.Generator, spots: int, size: float = 4.0, strength: float = 0.6) -> tuple[Image, Mask]:
    """Foxing: rust-brown spots of age on the paper and emulsion, irregular, darker at the core, in
    loose clusters; `size` the spots' typical radius in px, `strength` their opacity at the core."""
    h, w = image.shape[:2]
    opacity = np.zeros((h, w), np.float32)
    clusters = rng.uniform([0, 0], [w, h], (max(1, int(spots) // 6 + 1), 2))
    for _ in range(int(spots)):
        centre = clusters[rng.integers(len(clusters))] + rng.normal(0, 6 * size, 2)
        r = max(1.5, rng.exponential(size))
        cx, cy = int(centre[0]), int(centre[1])
        span = int(2 * r) + 2
        y0, y1, x0, x1 = max(0, cy - span), min(h, cy + span + 1), max(0, cx - span), min(w, cx + span + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        field = smooth_field(rng, (y1 - y0, x1 - x0), max(1.0, r / 2))
        spot = np.clip((1.0 - np.hypot(yy - centre[1], xx - centre[0]) / r + 0.3 * field) * 3.0, 0, 1)
        np.maximum(opacity[y0:y1, x0:x1], spot * strength * rng.uniform(0.6, 1.0), out=opacity[y0:y1, x0:x1])
    rust = np.asarray((150.0, 95.0, 50.0), np.float32)
    out = image.astype(np.float32)
    # Rust stains multiply like a dye: the spot darkens and browns what is under it.
    stain = out * (rust / 255.0 if image.ndim == 3 else rust.mean() / 255.0)
    alpha = opacity[..., None] if image.ndim == 3 else opacity
    changed = to_uint8(out + (stain - out) * alpha)
    return changed, opacity > 1.0 / 255


def flaking(image: Image, rng: np.random.Generator, patches: int, size: float = 6.0) -> tuple[Image, Mask]:
    """Emulsion flaking: patches where the image layer has lifted and fallen off to the paper, each a
    cluster of irregular chips around a centre, `size` px across typically."""
    h, w = image.shape[:2]
    layer = np.zeros((h, w), np.uint8)
    for _ in range(int(patches)):
        centre = rng.uniform([0, 0], [w, h])
        for _ in range(int(rng.integers(3, 12))):
            _flake(layer, rng, centre + rng.normal(0, size, 2), size / 2.5)
    return _apply_layers(image, rng, layer, np.zeros_like(layer))

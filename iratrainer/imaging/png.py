"""Minimal, dependency-free PNG writing for greyscale and RGB images (deterministic bytes)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from iratrainer.anatomy.io import atomic_write_bytes

__all__ = ["encode_png", "write_png", "to_uint8"]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to 0-255 (rounded, clipped); integers pass through."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) greyscale or (H, W, 3) RGB image (floats in [0, 1] or uint8)."""
    a = to_uint8(img)
    if a.ndim == 2:
        color, rows = 0, a
    elif a.ndim == 3 and a.shape[2] == 3:
        color, rows = 2, a.reshape(a.shape[0], -1)
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3), got {a.shape}")
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_png(path: str | os.PathLike[str], img: np.ndarray) -> Path:
    """Write a PNG atomically; raises :class:`iratrainer.errors.OutputError`."""
    return atomic_write_bytes(path, encode_png(img))

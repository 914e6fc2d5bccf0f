"""The trainer's OpenGL display: X-ray images as float textures, the interface blended over.

The interface (menu, HUD, help, overview) is drawn by pygame into an RGBA surface that is
transparent where the X-ray images go; each frame this module uploads it as a texture,
draws the images (float32 textures, bilinear magnification from the detector matrix to
the 512-pixel viewports, only re-uploaded when a new pulse arrives) and blends the
interface on top, then swaps. OpenGL 3.3 core; on a machine without a GPU, Mesa's
software rasterizer (llvmpipe) provides it. :class:`GlUnavailable` tells the app to use
the pygame software path instead, with the reason.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import numpy as np

__all__ = ["GlDisplay", "GlUnavailable", "SOFTWARE_RASTERIZERS"]

SOFTWARE_RASTERIZERS = ("llvmpipe", "softpipe", "swrast", "software rasterizer")

_VS = """
#version 330 core
layout(location = 0) in vec2 pos;   // pixels, origin top-left
layout(location = 1) in vec2 uv;
uniform vec2 screen;
out vec2 v_uv;
void main() {
    v_uv = uv;
    gl_Position = vec4(2.0 * pos.x / screen.x - 1.0, 1.0 - 2.0 * pos.y / screen.y, 0.0, 1.0);
}
"""

_FS = """
#version 330 core
in vec2 v_uv;
uniform sampler2D tex;
uniform int grey;          // 1: a one-channel X-ray image in [0, 1]; 0: the RGBA interface
out vec4 colour;
void main() {
    vec4 t = texture(tex, v_uv);
    colour = grey == 1 ? vec4(vec3(clamp(t.r, 0.0, 1.0)), 1.0) : t;
}
"""


class GlUnavailable(RuntimeError):
    """No OpenGL 3.3 window (no driver, an old GL, a display without GL)."""


def _version(s: str) -> tuple[int, int]:
    try:
        major, minor = s.split()[0].split(".")[:2]
        return int(major), int(minor)
    except (ValueError, IndexError):
        return 0, 0


class GlDisplay:
    """An OpenGL window of ``size`` pixels (see the module docstring).

    Args:
        pg: the pygame module (initialised).
        size: window size, pixels.
        min_version: the oldest OpenGL accepted.
    """

    def __init__(self, pg: Any, size: tuple[int, int], min_version: tuple[int, int] = (3, 3)) -> None:
        self.pg = pg
        self.size = size
        try:
            pg.display.gl_set_attribute(pg.GL_CONTEXT_MAJOR_VERSION, 3)
            pg.display.gl_set_attribute(pg.GL_CONTEXT_MINOR_VERSION, 3)
            pg.display.gl_set_attribute(pg.GL_CONTEXT_PROFILE_MASK, pg.GL_CONTEXT_PROFILE_CORE)
            pg.display.set_mode(size, pg.OPENGL | pg.DOUBLEBUF)
        except pg.error as exc:
            raise GlUnavailable(f"no OpenGL {min_version[0]}.{min_version[1]} window ({exc})") from None
        try:
            from OpenGL import GL
            from OpenGL.GL import shaders

            self.GL = GL
            self.version = GL.glGetString(GL.GL_VERSION).decode()
            self.renderer = GL.glGetString(GL.GL_RENDERER).decode()
        except Exception as exc:  # PyOpenGL cannot reach the context
            raise GlUnavailable(f"OpenGL not usable from Python ({type(exc).__name__}: {exc})") from None
        if _version(self.version) < min_version:
            raise GlUnavailable(f"OpenGL {self.version} is older than {min_version[0]}.{min_version[1]}")
        self.software = any(s in self.renderer.lower() for s in SOFTWARE_RASTERIZERS)
        try:
            self.prog = int(shaders.compileProgram(shaders.compileShader(_VS, GL.GL_VERTEX_SHADER),
                                                   shaders.compileShader(_FS, GL.GL_FRAGMENT_SHADER),
                                                   validate=False))
        except Exception as exc:
            raise GlUnavailable(f"the display shaders do not compile on {self.renderer} ({exc})") from None
        self.vao = GL.glGenVertexArrays(1)
        self.vbo = GL.glGenBuffers(1)
        GL.glBindVertexArray(self.vao)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, 16 * 4, None, GL.GL_DYNAMIC_DRAW)
        # the raw entry point: PyOpenGL's wrapper keeps the pointer in per-context data it may not
        # find when SDL made the context (offsets into the bound buffer need no keeping)
        from OpenGL.raw.GL.VERSION.GL_2_0 import glVertexAttribPointer

        GL.glEnableVertexAttribArray(0)
        glVertexAttribPointer(0, 2, GL.GL_FLOAT, False, 16, ctypes.c_void_p(0))
        GL.glEnableVertexAttribArray(1)
        glVertexAttribPointer(1, 2, GL.GL_FLOAT, False, 16, ctypes.c_void_p(8))
        self.ui_tex = self._new_texture(GL.GL_RGBA8, size[0], size[1], GL.GL_RGBA, GL.GL_UNSIGNED_BYTE, None)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_NEAREST)  # texel for pixel
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_NEAREST)
        self.img_tex: dict[str, tuple[int, Any, int]] = {}  # name -> (texture, the image uploaded, matrix)
        GL.glUseProgram(self.prog)
        GL.glUniform2f(GL.glGetUniformLocation(self.prog, "screen"), float(size[0]), float(size[1]))
        GL.glUniform1i(GL.glGetUniformLocation(self.prog, "tex"), 0)
        self._grey = GL.glGetUniformLocation(self.prog, "grey")
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)

    @property
    def description(self) -> str:
        """``OpenGL <version> on <renderer>``."""
        return f"OpenGL {self.version} on {self.renderer}"

    def _new_texture(self, internal: int, w: int, h: int, fmt: int, typ: int, data: Any) -> int:
        GL = self.GL
        tex = int(GL.glGenTextures(1))
        GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_LINEAR)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE)
        GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, internal, w, h, 0, fmt, typ, data)
        return tex

    def _quad(self, x: float, y: float, w: float, h: float) -> None:
        GL = self.GL
        v = np.array([x, y, 0, 0, x + w, y, 1, 0, x, y + h, 0, 1, x + w, y + h, 1, 1], np.float32)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, v.nbytes, v)
        GL.glDrawArrays(GL.GL_TRIANGLE_STRIP, 0, 4)

    def _quad_uv(self, x: float, y: float, w: float, h: float) -> None:
        """A quad of the window-sized interface texture, sampled where it lies."""
        GL = self.GL
        W, H = self.size
        u0, v0, u1, v1 = x / W, y / H, (x + w) / W, (y + h) / H
        v = np.array([x, y, u0, v0, x + w, y, u1, v0, x, y + h, u0, v1, x + w, y + h, u1, v1], np.float32)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, v.nbytes, v)
        GL.glDrawArrays(GL.GL_TRIANGLE_STRIP, 0, 4)

    def _image_texture(self, name: str, img: np.ndarray) -> int:
        GL = self.GL
        n_rows, n_cols = img.shape
        cur = self.img_tex.get(name)
        if cur is not None and cur[1] is img and cur[2] == n_cols:
            return cur[0]
        data = np.ascontiguousarray(img, dtype=np.float32)
        if cur is None or cur[2] != n_cols:
            if cur is not None:
                GL.glDeleteTextures([cur[0]])
            tex = self._new_texture(GL.GL_R32F, n_cols, n_rows, GL.GL_RED, GL.GL_FLOAT, data)
        else:
            tex = cur[0]
            GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
            GL.glTexSubImage2D(GL.GL_TEXTURE_2D, 0, 0, 0, n_cols, n_rows, GL.GL_RED, GL.GL_FLOAT, data)
        self.img_tex[name] = (tex, img, n_cols)
        return tex

    def present(self, ui: Any, images: list[tuple[str, np.ndarray, tuple[int, int, int, int]]],
                swap: bool = True, ui_rects: list[tuple[int, int, int, int]] | None = None) -> None:
        """Draw the X-ray ``images`` ((name, image in [0, 1], (x, y, w, h))), the interface over
        them, and swap buffers.

        ``ui_rects``: where the interface has something to draw, when the caller knows (the
        rest of the window is covered by the images); default the whole window. A software
        rasterizer pays for every blended fragment.
        """
        GL = self.GL
        w, h = self.size
        GL.glViewport(0, 0, w, h)
        GL.glClearColor(0.0, 0.0, 0.0, 1.0)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT)
        GL.glUseProgram(self.prog)
        GL.glBindVertexArray(self.vao)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glDisable(GL.GL_BLEND)
        GL.glUniform1i(self._grey, 1)
        for name, img, (x, y, iw, ih) in images:
            GL.glBindTexture(GL.GL_TEXTURE_2D, self._image_texture(name, img))
            self._quad(x, y, iw, ih)
        GL.glEnable(GL.GL_BLEND)
        GL.glBlendFunc(GL.GL_SRC_ALPHA, GL.GL_ONE_MINUS_SRC_ALPHA)
        GL.glUniform1i(self._grey, 0)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.ui_tex)
        if ui.get_pitch() == 4 * w and ui.get_masks() == (0xFF0000, 0xFF00, 0xFF, 0xFF000000) \
                and sys.byteorder == "little":  # the surface's own bytes are B, G, R, A: no conversion
            GL.glTexSubImage2D(GL.GL_TEXTURE_2D, 0, 0, 0, w, h, GL.GL_BGRA, GL.GL_UNSIGNED_BYTE,
                               np.frombuffer(ui.get_buffer(), np.uint8))
        else:
            GL.glTexSubImage2D(GL.GL_TEXTURE_2D, 0, 0, 0, w, h, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE,
                               self.pg.image.tobytes(ui, "RGBA"))
        for x, y, rw, rh in ui_rects if ui_rects is not None else [(0, 0, w, h)]:
            self._quad_uv(x, y, rw, rh)
        if swap:
            self.pg.display.flip()

    def read_rgb(self) -> np.ndarray:
        """The frame just drawn (before the swap), (H, W, 3) uint8, top row first."""
        GL = self.GL
        w, h = self.size
        GL.glReadBuffer(GL.GL_BACK)
        buf = GL.glReadPixels(0, 0, w, h, GL.GL_RGB, GL.GL_UNSIGNED_BYTE)
        return np.frombuffer(buf, np.uint8).reshape(h, w, 3)[::-1].copy()

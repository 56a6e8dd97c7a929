"""PixelCNN++ (Salimans et al. 2017) with a 256-way output per sub-pixel.

Two streams as in PixelCNN++: `u` (down-shifted 2x3 convolutions: sees only rows
strictly above) and `ul` (down-right-shifted 2x2 convolutions: also sees the current
row to the left). Gated residual blocks with concat-ELU and dropout; an optional
U-Net of strided down/up-sampling with skip connections.

Every stride-1 convolution is two rows tall, so with downsampling off the network can
be run on a strip of rows given, for each convolution, its input on the row just
above the strip (`ctx`). Running the whole image is the special case of a strip of
all rows with zero context; the fast purifier runs one row at a time with cached
context, which is the same arithmetic.

Heads (field `head`):
- "mixture": PixelCNN++'s discretised logistic mixture turned into 256 logits per
  sub-pixel (the original PixelDefend code's way); trained on the mixture NLL, which is
  the softmax cross-entropy of those logits.
- "softmax": a direct 256-way softmax; channel c is conditioned on the values of the
  earlier channels of the same pixel through learned embeddings.
Both give, for channel c of pixel (i, j), a distribution that depends only on pixels
before (i, j) in raster order and on channels < c of pixel (i, j).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from pxd.errors import PxdError
from pxd.models import init_key
from pxd.models.mixture import (
    mixture_channel_scores,
    mixture_logits,
    mixture_nll,
    nll_from_logits,
)


def concat_elu(x):
    return nn.elu(jnp.concatenate([x, -x], axis=-1))


def down_shift(x):
    """Row i takes row i-1 (row 0 zeros). (B, H, W, C)."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def _next(ctx):
    return None if ctx is None else next(ctx)


def right_shift(x):
    """Column j takes column j-1 (column 0 zeros). (B, H, W, C)."""
    return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


class CausalConv(nn.Module):
    """Stride-1 conv, 2 rows tall, that sees the row above and the current row.

    mode "down": 2x3, centred horizontally; mode "downright": 2x2, current and left column.
    `ctx` is the input's row just above the strip (B, 1, W, Cin); None means zeros.
    """

    features: int
    mode: str

    @nn.compact
    def __call__(self, x, ctx=None):
        kw = 3 if self.mode == "down" else 2
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (2, kw, cin, self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if isinstance(ctx, tuple):
            return self._pixel(x, ctx, kernel, bias)
        if ctx is None:
            ctx = jnp.zeros_like(x[:, :1])
        xin = jnp.concatenate([ctx, x], axis=1)
        pad = ((1, 1) if self.mode == "down" else (1, 0))
        xin = jnp.pad(xin, ((0, 0), (0, 0), pad, (0, 0)))
        y = jax.lax.conv_general_dilated(
            xin, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + bias

    def _pixel(self, x, ctx, kernel, bias):
        """One pixel (i, j): x (B,1,1,Cin) is the input at (i, j); ctx = (row above (B,1,W,Cin),
        input at (i, j-1) (B,1,1,Cin), j). Same taps as the strip convolution."""
        if self.mode != "downright":
            raise ValueError("pixel mode is for the down-right stream")
        row, left, j = ctx
        rowp = jnp.pad(row, ((0, 0), (0, 0), (1, 0), (0, 0)))
        top = jax.lax.dynamic_slice_in_dim(rowp, j, 2, axis=2)  # columns j-1, j
        patch = jnp.concatenate([top, jnp.concatenate([left, x], axis=2)], axis=1)
        y = jnp.einsum("bhwc,hwco->bo", patch, kernel)
        return y[:, None, None, :] + bias


class StridedCausalConv(nn.Module):
    """Stride-2 down-sampling that keeps causality: output (i, j) reads input rows 2i-1, 2i.

    `ctx` is the input's row above x (zeros when None): with x one row it gives one output
    row, which is how the cached purifier runs it. `patch`: x and ctx are already the
    window's columns (2j-1..2j+1 for "down", 2j-1..2j for "downright"), one output.
    """

    features: int
    mode: str

    @nn.compact
    def __call__(self, x, ctx=None, *, patch: bool = False):
        top = jnp.zeros_like(x[:, :1]) if ctx is None else ctx
        xin = jnp.concatenate([top, x], axis=1)
        k = (2, 3) if self.mode == "down" else (2, 2)
        if not patch:
            pad = (1, 1) if self.mode == "down" else (1, 0)
            xin = jnp.pad(xin, ((0, 0), (0, 0), pad, (0, 0)))
        return nn.Conv(self.features, k, strides=(2, 2), padding="VALID")(xin)


class CausalDeconv(nn.Module):
    """Stride-2 up-sampling: output (2i+a, 2j+b) reads only input (i, j') with j' <= j."""

    features: int
    mode: str

    @nn.compact
    def __call__(self, x):
        h, w = x.shape[1], x.shape[2]
        if self.mode == "down":
            y = nn.ConvTranspose(self.features, (2, 3), strides=(2, 2), padding="VALID")(x)
            return y[:, : 2 * h, 1 : 2 * w + 1]
        y = nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding="VALID")(x)
        return y[:, : 2 * h, : 2 * w]


class GatedResnet(nn.Module):
    features: int
    mode: str
    dropout: float

    @nn.compact
    def __call__(self, x, a=None, *, ctx: Iterator | None, saves: list, train: bool):
        h = concat_elu(x)
        saves.append(h[:, -1:])
        c = CausalConv(self.features, self.mode)(h, _next(ctx))
        if a is not None:
            c = c + nn.Dense(self.features)(concat_elu(a))
        c = concat_elu(c)
        if self.dropout > 0:
            c = nn.Dropout(self.dropout, deterministic=not train)(c)
        saves.append(c[:, -1:])
        c = CausalConv(2 * self.features, self.mode)(c, _next(ctx))
        val, gate = jnp.split(c, 2, axis=-1)
        return x + val * nn.sigmoid(gate)


class PixelCNN(nn.Module):
    """PixelCNN++ body and 256-way head. Images are integer-valued 0..255, NHWC."""

    channels: int = 3
    nr_filters: int = 160
    nr_resnet: int = 5
    nr_stages: int = 3
    downsample: bool = True
    dropout: float = 0.5
    nr_mix: int = 10
    head: str = "mixture"
    # How the dn blocks read the up pass. "outputs": dn block b of a stage reads up block
    # nr-1-b's output. "inputs" (openai/pixel-cnn's wiring): the stage's input is also
    # read, by one more dn block on every stage but the coarsest, whose first up output
    # starts the dn pass instead of being read.
    skips: str = "outputs"
    # "channel": each channel its own mixture over the components' prior weights; "joint"
    # (PixelCNN++ as published): one component for the pixel's three channels, so channel
    # c weighs the components by how well they explained channels < c.
    mixture: str = "channel"

    # --- inputs ---------------------------------------------------------------
    @staticmethod
    def prepare(x):
        """uint8-valued (B, H, W, C) -> [-1, 1] with a constant channel marking the inside."""
        xf = x.astype(jnp.float32) * (2.0 / 255.0) - 1.0
        return jnp.concatenate([xf, jnp.ones_like(xf[..., :1])], axis=-1)

    # --- streams, built from stage segments ------------------------------------
    # Each stream is: its input convolution, then per stage (finest first) an optional
    # stride-2 down-sampling and nr_resnet "up" blocks, then per stage (coarsest first) an
    # optional stride-2 up-sampling and nr_resnet "dn" blocks. The full, strip and pixel
    # paths and the U-Net's cached purifier all run these same segments.
    def _blocks(self, stream, phase, s, x, extras, ctx, saves, train):
        """The gated blocks of one stage; extras[b] is block b's second input (or None).
        Returns every block's output."""
        mode = "down" if stream == "u" else "downright"
        outs = []
        for b, extra in enumerate(extras):
            x = GatedResnet(self.nr_filters, mode, self.dropout, name=f"{stream}_{phase}_{s}_{b}")(
                x, extra, ctx=ctx, saves=saves, train=train
            )
            outs.append(x)
        return outs

    def dn_blocks(self, s: int) -> int:
        """How many dn blocks stage s has."""
        extra = self.skips == "inputs" and s < self.nr_stages - 1
        return self.nr_resnet + int(extra)

    def skips_for(self, s: int, x_in, ups: list) -> list:
        """What stage s's dn blocks read from the up pass, in dn-block order: the up blocks'
        outputs last first, and with skips "inputs" the stage's input `x_in` too."""
        if self.skips == "outputs":
            return ups[::-1]
        rev = ([x_in] + list(ups))[::-1]
        return rev if s < self.nr_stages - 1 else rev[1:]

    def _down(self, stream, s, x, ctx=None, patch=False):
        """Stage s -> s+1 down-sampling."""
        mode = "down" if stream == "u" else "downright"
        return StridedCausalConv(self.nr_filters, mode, name=f"{stream}_down_{s}")(
            x, ctx, patch=patch
        )

    def _up(self, stream, s, x):
        """Stage s -> s-1 up-sampling."""
        mode = "down" if stream == "u" else "downright"
        return CausalDeconv(self.nr_filters, mode, name=f"{stream}_up_{s}")(x)

    def _u_in(self, xs, ctx, saves):
        saves.append(xs[:, -1:])
        return CausalConv(self.nr_filters, "down", name="u_in")(xs, _next(ctx))

    def _u_stream(self, xs, ctx, saves, train):
        """xs: prepared image shifted down one row. Returns the u value each ul block reads:
        the up blocks' outputs (stage 0 first), then the dn blocks' (coarsest stage first)."""
        nr, resample = self.nr_resnet, self.downsample
        u = self._u_in(xs, ctx, saves)
        ups, dns, ins = [], [], []
        for s in range(self.nr_stages):
            if s > 0 and resample:
                u = self._down("u", s - 1, u)
            ins.append(u)
            ups.append(self._blocks("u", "up", s, u, [None] * nr, ctx, saves, train))
            u = ups[-1][-1]
        for s in reversed(range(self.nr_stages)):
            if s < self.nr_stages - 1 and resample:
                u = self._up("u", s + 1, u)
            dns.append(self._blocks("u", "dn", s, u, self.skips_for(s, ins[s], ups[s]), ctx,
                                    saves, train))
            u = dns[-1][-1]
        return [r for blk in ups + dns for r in blk]

    def _ul_in_v(self, xs, ctx):
        return CausalConv(self.nr_filters, "down", name="ul_in_v")(xs, ctx)

    def _ul_in(self, xs, xr, ctx, saves, ul_v=None):
        """The ul stream's input. In pixel mode `ul_v`, the part that reads only the rows
        above, is given precomputed for the pixel."""
        if ul_v is None:
            saves.append(xs[:, -1:])
            ul_v = self._ul_in_v(xs, _next(ctx))
        saves.append(xr[:, -1:])
        return ul_v + CausalConv(self.nr_filters, "downright", name="ul_in_h")(xr, _next(ctx))

    @staticmethod
    def dn_extras(u_reads, skips):
        """A ul dn stage's second inputs: the u stream's dn read beside the up-pass skip
        (`skips` in dn-block order, from `skips_for`)."""
        return [jnp.concatenate([u, k], -1) for u, k in zip(u_reads, skips, strict=True)]

    def _ul_stream(self, xs, xr, reads, ctx, saves, train, ul_v=None):
        """ul stream (pixel mode when ctx yields (row, left, j) tuples)."""
        nr, stages, resample = self.nr_resnet, self.nr_stages, self.downsample
        ul = self._ul_in(xs, xr, ctx, saves, ul_v)
        ups, ins = [], []
        for s in range(stages):
            if s > 0 and resample:
                ul = self._down("ul", s - 1, ul)
            ins.append(ul)
            ups.append(self._blocks("ul", "up", s, ul, reads[s * nr : (s + 1) * nr], ctx, saves,
                                    train))
            ul = ups[-1][-1]
        at = stages * nr  # the u stream's dn reads follow its up reads, coarsest stage first
        for s in reversed(range(stages)):
            if s < stages - 1 and resample:
                ul = self._up("ul", s + 1, ul)
            u_dn, at = reads[at : at + self.dn_blocks(s)], at + self.dn_blocks(s)
            extras = self.dn_extras(u_dn, self.skips_for(s, ins[s], ups[s]))
            ul = self._blocks("ul", "dn", s, ul, extras, ctx, saves, train)[-1]
        return nn.elu(ul)

    # --- public methods -------------------------------------------------------
    def features(self, x, *, train: bool = False):
        """Body features (B, H, W, F) of a full image."""
        return self._run("features", x, train=train)

    def strip_u(self, xs_row, ctx_u):
        """u stream on one row (flat networks only). xs_row: prepared row above, (B,1,W,C+1).

        ctx_u: list of context rows for the u stream's convolutions, in call order.
        Returns (reads, new_ctx_u)."""
        return self._run("strip_u", xs_row, ctx_u)

    def strip_ul(self, xs_row, xr_row, reads, ctx_ul):
        """ul stream on one row given the u reads; returns (features (B,1,W,F), new_ctx_ul)."""
        return self._run("strip_ul", xs_row, xr_row, reads, ctx_ul)

    def strip_ul_v(self, xs_row, ctx0):
        """The ul stream's input from the rows above, for a whole row: (B, 1, W, F)."""
        return self._run("strip_ul_v", xs_row, ctx0)

    def pixel_ul(self, xr_pix, ul_v_pix, reads_pix, ctx_rows, lefts, j):
        """ul stream for one pixel (i, j) with cached rows above and the left neighbours'
        inputs; returns (features (B,1,1,F), this pixel's conv inputs in call order)."""
        return self._run("pixel_ul", xr_pix, ul_v_pix, reads_pix, ctx_rows, lefts, j)

    # The U-Net's cached purifier runs the stream segments one stage at a time: rows for
    # the u stream, single positions for the ul stream (ctx items are then (row above,
    # left neighbour's input, column) tuples). Each returns its convolutions' inputs.
    def segment(self, stream, phase, s, x, extras, ctx):
        """Blocks of stage s of a stream ("u"/"ul", "up"/"dn"): (block outputs, saves)."""
        return self._run("segment", stream, phase, s, x, extras, ctx)

    def u_in_row(self, xs_row, ctx):
        """The u stream's input convolution on one row given the row above's input."""
        return self._run("u_in_row", xs_row, ctx)

    def ul_in_pixel(self, xr_pix, ul_v_pix, ctx):
        """The ul stream's input at one pixel: (value, saves)."""
        return self._run("ul_in_pixel", xr_pix, ul_v_pix, ctx)

    def resample(self, stream, direction, s, x, ctx=None, patch=False):
        """Stage s's down-sampling (direction "down") or up-sampling ("up") alone."""
        return self._run("resample", stream, direction, s, x, ctx, patch)

    def logits(self, h, x):
        """256-way normalised log-probabilities (B, H, W, C, 256) given features and values.

        Channel c reads only channels < c of x at the same position.
        """
        return self._run("logits", h, x)

    def nll(self, h, x):
        """Per-sub-pixel NLL in nats (B, H, W, C) at the observed values (training)."""
        return self._run("nll", h, x)

    def channel_scores(self, h, x, c: int, start, k: int):
        """Unnormalised log-probabilities of channel `c` at values start..start+k-1.

        h: (B, H, W, F) features; x: (B, H, W, C) current values (channels < c are read);
        start: (B, H, W) integers; returns (B, H, W, k), meaningless above 255. Differs
        from `logits` by a constant per position, so its argmax over any set of values is
        the same; the purifier scores only the values inside the feasible range.
        """
        return self._run("channel_scores", h, x, c, start, k)

    def __call__(self, x, *, train: bool = False):
        """Per-sub-pixel NLL (nats), (B, H, W, C)."""
        return self._run("nll", self._run("features", x, train=train), x)

    @nn.compact
    def _run(self, op, *args, train: bool = False):
        # Flax allows one compact method; every public method routes through it.
        return getattr(self, "_op_" + op)(*args, train=train)

    def _op_features(self, x, *, train):
        xp = self.prepare(x)
        xs, xr = down_shift(xp), right_shift(xp)
        reads = self._u_stream(xs, None, [], train)
        return self._ul_stream(xs, xr, reads, None, [], train)

    def _op_strip_u(self, xs_row, ctx_u, *, train):
        saves = []
        reads = self._u_stream(xs_row, iter(ctx_u), saves, False)
        return reads, saves

    def _op_strip_ul(self, xs_row, xr_row, reads, ctx_ul, *, train):
        saves = []
        h = self._ul_stream(xs_row, xr_row, reads, iter(ctx_ul), saves, False)
        return h, saves

    def _op_strip_ul_v(self, xs_row, ctx0, *, train):
        return self._ul_in_v(xs_row, ctx0)

    def _op_pixel_ul(self, xr_pix, ul_v_pix, reads_pix, ctx_rows, lefts, j, *, train):
        saves = []
        ctx = iter([(r, l, j) for r, l in zip(ctx_rows, lefts, strict=True)])
        h = self._ul_stream(None, xr_pix, reads_pix, ctx, saves, False, ul_v=ul_v_pix)
        return h, saves

    def _op_segment(self, stream, phase, s, x, extras, ctx, *, train):
        saves = []
        return self._blocks(stream, phase, s, x, extras, iter(ctx), saves, False), saves

    def _op_u_in_row(self, xs_row, ctx, *, train):
        return self._u_in(xs_row, iter([ctx]), [])

    def _op_ul_in_pixel(self, xr_pix, ul_v_pix, ctx, *, train):
        saves = []
        return self._ul_in(None, xr_pix, iter([ctx]), saves, ul_v=ul_v_pix), saves

    def _op_resample(self, stream, direction, s, x, ctx, patch, *, train):
        if direction == "down":
            return self._down(stream, s, x, ctx, patch)
        return self._up(stream, s, x)

    def _op_logits(self, h, x, *, train):
        if self.head == "mixture":
            raw = nn.Dense(self.nr_mix * (1 + 3 * self.channels), name="head")(h)
            return mixture_logits(raw, x, self.nr_mix, joint=self.mixture == "joint")
        return jax.nn.log_softmax(self._softmax_logits(h, x), axis=-1)

    def _op_nll(self, h, x, *, train):
        if self.head == "mixture":
            raw = nn.Dense(self.nr_mix * (1 + 3 * self.channels), name="head")(h)
            return mixture_nll(raw, x, self.nr_mix, joint=self.mixture == "joint")
        return nll_from_logits(self._softmax_logits(h, x), x)

    def _op_channel_scores(self, h, x, c, start, k, *, train):
        if self.head == "mixture":
            raw = nn.Dense(self.nr_mix * (1 + 3 * self.channels), name="head")(h)
            return mixture_channel_scores(raw, x, c, start, k, self.nr_mix,
                                          joint=self.mixture == "joint")
        lg = self._softmax_logits(h, x)[..., c, :]
        idx = jnp.minimum(start[..., None] + jnp.arange(k), 255)
        return jnp.take_along_axis(lg, idx, axis=-1)

    def _softmax_logits(self, h, x):
        f = h.shape[-1]
        xi = x.astype(jnp.int32)
        outs = []
        cond = jnp.zeros_like(h)
        for c in range(self.channels):
            outs.append(nn.Dense(256, name=f"head_{c}")(nn.elu(h + cond)))
            if c + 1 < self.channels:
                cond = cond + nn.Embed(256, f, name=f"embed_{c}")(xi[..., c])
        return jnp.stack(outs, axis=-2)


def build_model(model_cfg: dict, channels: int) -> PixelCNN:
    names = {f.name for f in dataclasses.fields(PixelCNN)} - {"parent", "name", "channels"}
    unknown = sorted(set(model_cfg) - names)
    if unknown:
        raise PxdError(f"unknown PixelCNN option(s): {', '.join(unknown)}")
    for key, allowed in (("skips", ("outputs", "inputs")), ("mixture", ("channel", "joint"))):
        if model_cfg.get(key, allowed[0]) not in allowed:
            raise PxdError(f"PixelCNN option {key} must be one of {', '.join(allowed)}")
    return PixelCNN(channels=channels, **model_cfg)


def init_params(model: PixelCNN, shape: tuple[int, int, int], *, key: jax.Array):
    return _init(model, tuple(shape), key)


@functools.partial(jax.jit, static_argnums=(0, 1))  # one compile per (model, shape)
def _init(model: PixelCNN, shape: tuple[int, ...], key: jax.Array):
    return model.init({"params": init_key(key)}, jnp.zeros((1,) + shape, jnp.uint8))["params"]

"""openai/pixel-cnn's PixelCNN++ checkpoints as pxd parameters.

OpenAI's code names its weight-normalised layers by type and creation order
(`model/conv2d_K`, `model/deconv2d_K`, `model/dense_K`, each `nin` a dense), each holding
`V`, `g`, `b`, with `/ExponentialMovingAverage` shadows beside them. `layers` replays that
creation order for given sizes and names the pxd parameter each layer becomes, so the
names and shapes a checkpoint must hold follow from three numbers, which `infer_sizes`
reads off the shapes. Where the two networks are written differently, the conversion
makes them compute the same function:
- weight normalisation is folded: W = g * V / ||V||, the norm over every axis but the
  output one (a transposed convolution's V is [h, w, out, in]);
- OpenAI shifts its input convolutions' outputs, so their bias is absent on the first row
  (u stream, and the ul stream's row-above term) or first column (the ul stream's left
  term); pxd shifts the inputs instead, so the bias moves onto the constant channel's tap
  of the current position, which is 0 exactly where OpenAI's shift pads;
- its 1x3 and 2x1 ul input kernels are pxd's 2x3 and 2x2 with a row or column of zeros;
- transposed-convolution kernels are flipped in space (TensorFlow's gradient-of-conv
  against Flax's dilated convolution);
- the head's 10 * nr_mix outputs are reordered from [pi | per channel: means, scales,
  coefficients] to pxd's [pi | means of every channel | scales | coefficients];
- the dn pass's wiring and the joint mixture are pxd model options (skips "inputs",
  mixture "joint").
"""

from __future__ import annotations

import numpy as np

from pxd.errors import PxdError

EMA = "/ExponentialMovingAverage"
CHANNELS = 3  # OpenAI's code models RGB images
STAGES = 3


def model_options(nr_filters: int, nr_resnet: int, nr_mix: int) -> dict:
    """The pxd PixelCNN options of an OpenAI PixelCNN++ of these sizes."""
    return dict(nr_filters=nr_filters, nr_resnet=nr_resnet, nr_stages=STAGES, downsample=True,
                dropout=0.5, nr_mix=nr_mix, head="mixture", skips="inputs", mixture="joint")


def layers(nr_filters: int, nr_resnet: int, nr_mix: int) -> list[dict]:
    """OpenAI's layers in creation order: name, kind, V's shape, pxd module path, role."""
    f, nr, cin = nr_filters, nr_resnet, CHANNELS + 1
    out: list[dict] = []
    count = {"conv2d": 0, "deconv2d": 0, "dense": 0}

    def add(kind, shape, path, role="plain"):
        out.append(dict(name=f"model/{kind}_{count[kind]}", kind=kind, shape=tuple(shape),
                        path=tuple(path), role=role))
        count[kind] += 1

    def block(stream, phase, s, b, nin_in):
        base = f"{stream}_{phase}_{s}_{b}"
        k = (2, 3) if stream == "u" else (2, 2)
        add("conv2d", k + (2 * f, f), (base, "CausalConv_0"))
        if nin_in:
            add("dense", (2 * nin_in, f), (base, "Dense_0"))
        add("conv2d", k + (2 * f, 2 * f), (base, "CausalConv_1"))

    add("conv2d", (2, 3, cin, f), ("u_in",), "u_in")
    add("conv2d", (1, 3, cin, f), ("ul_in_v",), "ul_in_v")
    add("conv2d", (2, 1, cin, f), ("ul_in_h",), "ul_in_h")
    for s in range(STAGES):
        for b in range(nr):
            block("u", "up", s, b, 0)
            block("ul", "up", s, b, f)
        if s < STAGES - 1:  # stride-2 down-sampling into stage s + 1
            add("conv2d", (2, 3, f, f), (f"u_down_{s}", "Conv_0"))
            add("conv2d", (2, 2, f, f), (f"ul_down_{s}", "Conv_0"))
    for s in reversed(range(STAGES)):
        if s < STAGES - 1:  # stride-2 up-sampling from stage s + 1
            add("deconv2d", (2, 3, f, f), (f"u_up_{s + 1}", "ConvTranspose_0"), "deconv")
            add("deconv2d", (2, 2, f, f), (f"ul_up_{s + 1}", "ConvTranspose_0"), "deconv")
        for b in range(nr + (s < STAGES - 1)):
            block("u", "dn", s, b, f)
            block("ul", "dn", s, b, 2 * f)
    add("dense", (f, 10 * nr_mix), ("head",), "head")
    return out


def infer_sizes(shapes: dict[str, tuple]) -> tuple[int, int, int]:
    """(nr_filters, nr_resnet, nr_mix) from the raw variables' shapes."""
    if any("/conditional_weights" in n for n in shapes):
        raise PxdError("this is a class-conditional PixelCNN++ (it has conditional_weights "
                       "variables); pxd imports the unconditional model only")
    first = shapes.get("model/conv2d_0/V")
    if first is None:
        raise PxdError("not an openai/pixel-cnn PixelCNN++ checkpoint: no model/conv2d_0/V")
    if len(first) != 4 or tuple(first[:3]) != (2, 3, CHANNELS + 1):
        raise PxdError(f"model/conv2d_0/V has shape {list(first)}, not [2, 3, 4, F]: not an "
                       "openai/pixel-cnn PixelCNN++ of RGB images")
    convs = sum(1 for n in shapes if n.startswith("model/conv2d_") and n.endswith("/V"))
    nr, rest = divmod(convs - 15, 24)  # 24 convolutions per resnet depth, 15 besides
    if rest or nr < 1:
        raise PxdError(f"the checkpoint has {convs} conv2d layers, which no openai/pixel-cnn "
                       "PixelCNN++ has (24 * nr_resnet + 15)")
    head = shapes.get(f"model/dense_{9 * nr + 4}/V")
    if head is None or len(head) != 2 or head[1] % 10:
        raise PxdError(f"model/dense_{9 * nr + 4}/V (the output layer) is missing or has an "
                       f"output size that is not 10 * nr_logistic_mix: {head}")
    return int(first[3]), nr, int(head[1]) // 10


def check_names(shapes: dict[str, tuple], spec: list[dict]) -> bool:
    """Every variable present with its shape, nothing extra; returns whether the EMA
    shadows are there (all of them, or none)."""
    want = {}
    for d in spec:
        out = d["shape"][2] if d["kind"] == "deconv2d" else d["shape"][-1]  # deconv: [h,w,out,in]
        want[d["name"] + "/V"] = d["shape"]
        want[d["name"] + "/g"] = want[d["name"] + "/b"] = (out,)
    model = {n for n in shapes if n.startswith("model/")}
    raw = {n for n in model if not n.endswith(EMA)}
    missing = sorted(set(want) - raw)
    if missing:
        raise PxdError(f"not an openai/pixel-cnn PixelCNN++ checkpoint: {missing[0]} is missing"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(raw - set(want))
    if extra:
        raise PxdError(f"not an openai/pixel-cnn PixelCNN++ checkpoint: unexpected variable "
                       f"{extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for n, shp in want.items():
        if tuple(shapes[n]) != shp:
            raise PxdError(f"{n} has shape {list(shapes[n])}, expected {list(shp)}")
    ema = {n[: -len(EMA)] for n in model if n.endswith(EMA)}
    if ema - set(want):
        raise PxdError(f"unexpected variable {sorted(ema - set(want))[0]}{EMA}")
    if ema and ema != set(want):
        raise PxdError(f"the checkpoint has EMA weights for only {len(ema)} of {len(want)} "
                       f"variables (first missing: {sorted(set(want) - ema)[0]}{EMA})")
    for n in ema:
        if tuple(shapes[n + EMA]) != want[n]:
            raise PxdError(f"{n}{EMA} has shape {list(shapes[n + EMA])}, expected "
                           f"{list(want[n])}")
    return bool(ema)


def fold(kind: str, v: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Plain (kernel, bias) of a weight-normalised layer, computed in float64."""
    v, g = v.astype(np.float64), g.astype(np.float64)
    axes = (0, 1, 3) if kind == "deconv2d" else tuple(range(v.ndim - 1))
    norm = np.sqrt(np.maximum(np.sum(v * v, axis=axes, keepdims=True), 1e-12))
    if kind == "deconv2d":
        w = v / norm * g.reshape(1, 1, -1, 1)
        w = w[::-1, ::-1].transpose(0, 1, 3, 2)  # [h, w, in, out], flipped in space
    else:
        w = v / norm * g
    return w.astype(np.float32), np.asarray(b, np.float32)


def convert(d: dict, kernel: np.ndarray, bias: np.ndarray, nr_mix: int):
    """One layer's folded (kernel, bias) as pxd's."""
    role, c = d["role"], CHANNELS
    if role == "u_in" or role in ("ul_in_v", "ul_in_h"):
        full = np.zeros((2, 3 if role != "ul_in_h" else 2) + kernel.shape[2:], np.float32)
        if role == "u_in":
            full[:] = kernel
        elif role == "ul_in_v":
            full[1] = kernel[0]  # reads only the row above, which is xs's current row
        else:
            full[:, 1] = kernel[:, 0]  # reads only the column left, xr's current column
        full[1, 1, c] += bias  # constant channel: 1 inside the image, 0 where OpenAI pads
        return full, np.zeros_like(bias)
    if role == "head":
        m = nr_mix
        idx = list(range(m)) + [m + ch * 3 * m + t * m + k
                                for t in range(3) for ch in range(c) for k in range(m)]
        return kernel[:, idx], bias[idx]
    return kernel, bias


def read_params(ck, advance=lambda n=1, **kw: None) -> tuple[dict, tuple[int, int, int], bool]:
    """pxd parameters of checkpoint `ck` (a tfckpt.Checkpoint): (params, sizes, used EMA).
    Reads only the weights it uses (EMA shadows when present, else the raw ones)."""
    sizes = infer_sizes(ck.shapes)
    spec = layers(*sizes)
    ema = check_names(ck.shapes, spec)
    params: dict = {}
    for d in spec:
        v, g, b = (ck.read(d["name"] + "/" + t + (EMA if ema else "")) for t in "Vgb")
        kernel, bias = convert(d, *fold(d["kind"], v, g, b), sizes[2])
        node = params
        for key in d["path"]:
            node = node.setdefault(key, {})
        node["kernel"], node["bias"] = kernel, bias
        advance(1)
    return params, sizes, ema


def check_tree(params: dict, template: dict) -> None:
    """The converted tree has exactly the model's leaves and shapes (a guard on `layers`)."""
    import jax

    got = jax.tree_util.tree_flatten_with_path(params)[0]
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    gk = {jax.tree_util.keystr(k): v.shape for k, v in got}
    wk = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in want}
    if gk != wk:
        diff = sorted(set(gk.items()) ^ set(wk.items()))
        raise RuntimeError(f"openai import does not fill pxd's PixelCNN: {diff[:3]}")

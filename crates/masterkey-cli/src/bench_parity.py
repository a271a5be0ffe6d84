# PyTorch reference for `masterkey bench parity`: the small-data recipe of
# the parity issue as a plain PyTorch loop. The network is ConvNeXt-style
# (patchify stem + LayerNorm, stages of blocks
# x + gamma * Linear(GELU(Linear(LN(DW(x))))), LayerNorm + 2x2 stride-2
# downsampling, mean pool, LayerNorm, Linear), its modules named like
# masterkey's so that masterkey's initial weights load with load_state_dict.
#
# One JSON argument file; prints one JSON line. Two kinds of run:
# - "curve": start from masterkey's weights (safetensors), feed the given
#   batches (sample indices per step, no augmentation), return each step's loss;
# - "full": this script's own initialisation ("pytorch" default or
#   "convnext" trunc_normal_ 0.02), shuffling and augmentation (zero-pad, random
#   crop, horizontal flip) on the same training subset, then accuracy on the
#   whole test set, with the training images per second; given
#   "init_weights", "orders" and "crops", masterkey's weights, shuffles, crops
#   and flips instead;
# - "step" (for `masterkey bench step`): the median time of one training step
#   on random images, NCHW and channels-last, DW trainable and frozen.
import gzip, json, math, struct, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        start, end = info["data_offsets"]
        values = np.frombuffer(data, dtype="<f4", count=(end - start) // 4, offset=8 + n + start)
        out[name] = torch.from_numpy(values.reshape(info["shape"]).copy())
    return out


class DW(nn.Module):
    """Depthwise k x k, padding k//2. Frozen modes: scale * key + offset,
    key and scale buffers, offset learnable; the bias always learns."""

    def __init__(self, c, k, frozen):
        super().__init__()
        self.k, self.frozen = k, frozen
        self.bias = nn.Parameter(torch.zeros(c))
        if frozen:
            self.register_buffer("key", torch.zeros(c, 1, k, k))
            self.register_buffer("scale", torch.ones(c))
            self.offset = nn.Parameter(torch.zeros(c))
        else:
            self.weight = nn.Parameter(torch.zeros(c, 1, k, k))

    def filters(self):
        if self.frozen:
            return self.key * self.scale.view(-1, 1, 1, 1) + self.offset.view(-1, 1, 1, 1)
        return self.weight

    def forward(self, x):
        return F.conv2d(x, self.filters(), self.bias, padding=self.k // 2, groups=x.shape[1])


class Block(nn.Module):
    def __init__(self, c, k, frozen, layer_scale):
        super().__init__()
        self.dw = DW(c, k, frozen)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.expand = nn.Linear(c, 4 * c)
        self.project = nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.full((c,), layer_scale))

    def forward(self, x):  # NHWC
        y = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = self.project(F.gelu(self.expand(self.norm(y))))
        return x + self.layer_scale * y


class Downsample(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm = nn.LayerNorm(c_in, eps=1e-6)
        self.conv = nn.Conv2d(c_in, c_out, 2, 2)

    def forward(self, x):
        return self.conv(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Stage(nn.Module):
    def __init__(self, c_in, c, depth, k, frozen, layer_scale):
        super().__init__()
        self.downsample = Downsample(c_in, c) if c_in is not None else None
        self.blocks = nn.ModuleList([Block(c, k, frozen, layer_scale) for _ in range(depth)])


class Net(nn.Module):
    def __init__(self, r, frozen):
        super().__init__()
        dims, k = r["dims"], r["kernel"]
        patch = r.get("patch", 2)
        self.stem = nn.Conv2d(r["in_channels"], dims[0], patch, patch)
        self.stem_norm = nn.LayerNorm(dims[0], eps=1e-6)
        self.stages = nn.ModuleList(
            Stage(dims[s - 1] if s else None, dims[s], d, k, frozen, r["layer_scale"]) for s, d in enumerate(r["depths"])
        )
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], r["classes"])

    def forward(self, x):
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1))
        for stage in self.stages:
            if stage.downsample is not None:
                x = stage.downsample(x)
            for block in stage.blocks:
                x = block(x)
        return self.head(self.head_norm(x.mean((1, 2))))


def initialise(net, r, mode, gen):
    """This script's own weights for a "full" run."""
    if r["init"] == "convnext":
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02, generator=gen)
                nn.init.zeros_(m.bias)
    # "pytorch": the modules' own initialisation, drawn below for the DW layers.
    keys = torch.tensor(r["keys"]).view(-1, r["kernel"], r["kernel"])
    for stage in net.stages:
        for block in stage.blocks:
            dw, c, k = block.dw, block.dw.bias.numel(), r["kernel"]
            with torch.no_grad():
                if r["init"] == "pytorch":
                    nn.init.uniform_(dw.bias, -1 / k, 1 / k, generator=gen)
                chosen = keys[torch.arange(c) % len(keys)].unsqueeze(1)
                if mode == "trainable":
                    if r["init"] == "pytorch":
                        nn.init.uniform_(dw.weight, -1 / k, 1 / k, generator=gen)
                    else:
                        nn.init.trunc_normal_(dw.weight, std=0.02, generator=gen)
                elif mode == "bank-init":
                    dw.weight.copy_(chosen)
                elif mode == "frozen":
                    dw.key.copy_(chosen)
                elif mode == "random-frozen":
                    f = torch.randn(c, k * k, generator=gen)
                    f = f - f.mean(1, keepdim=True)
                    dw.key.copy_((f / f.norm(dim=1, keepdim=True)).view(c, 1, k, k))


def lr_at(step, r):
    peak, floor, warmup, total = r["lr"], r["min_lr"], r["warmup_steps"], r["total_steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def optimizer(net, r):
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": r["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=r["lr"], betas=(0.9, 0.999), eps=1e-8)


def train_step(net, opt, x, y, step, r, amp=False):
    for g in opt.param_groups:
        g["lr"] = lr_at(step, r)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(net(x), y, label_smoothing=r["label_smoothing"])
    loss.backward()
    opt.step()
    return loss


def normalised(images, r):
    return (torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0).sub_(r["mean"]).div_(r["std"])).unsqueeze(1)


def curve(r, images, labels):
    net = Net(r, r["mode"] in ("frozen", "random-frozen"))
    net.load_state_dict(read_safetensors(r["init_weights"]), strict=True)
    opt = optimizer(net, r)
    losses = []
    for step, idx in enumerate(r["batches"]):
        x, y = normalised(images[idx], r), torch.from_numpy(labels[idx].astype(np.int64))
        losses.append(train_step(net, opt, x, y, step, r).item())
    return {"losses": losses}


def drawn_crops(n, pad, gen):
    """Per image: the crop's corner in the padded image and whether to flip."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    flip = (torch.rand(n, generator=gen) < 0.5).tolist()
    return dy, dx, flip


def augment(x, pad, crops):
    """Zero-pad (raw pixels, before normalisation), crop, flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx, flip = crops
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def full(r, images, labels, test_images, test_labels):
    mode = r["mode"]
    gen = torch.Generator().manual_seed(r["seed"])
    torch.manual_seed(r["seed"])
    net = Net(r, mode in ("frozen", "random-frozen"))
    replay = "init_weights" in r
    if replay:
        net.load_state_dict(read_safetensors(r["init_weights"]), strict=True)
    else:
        initialise(net, r, mode, gen)
    opt = optimizer(net, r)
    subset = np.array(r["subset"])
    raw = torch.from_numpy(images[subset]).float().unsqueeze(1)
    ys = torch.from_numpy(labels[subset].astype(np.int64))
    step, seen, seconds = 0, 0, 0.0
    for epoch in range(r["epochs"]):
        t0 = time.perf_counter()
        if replay:
            order, crops = torch.tensor(r["orders"][epoch]), r["crops"][epoch]
        else:
            order = torch.randperm(len(subset), generator=gen)
        for start in range(0, len(subset), r["batch_size"]):
            idx = order[start : start + r["batch_size"]]
            if replay:
                given = crops[3 * start : 3 * (start + len(idx))]
                batch_crops = given[0::3], given[1::3], [f == 1 for f in given[2::3]]
            else:
                batch_crops = drawn_crops(len(idx), r["crop_padding"], gen)
            x = augment(raw[idx], r["crop_padding"], batch_crops).div_(255.0).sub_(r["mean"]).div_(r["std"])
            train_step(net, opt, x, ys[idx], step, r)
            step += 1
            seen += len(idx)
        seconds += time.perf_counter() - t0
        print(f"pytorch {mode} seed {r['seed']}: epoch {epoch + 1}/{r['epochs']}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    net.eval()
    hits, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(test_labels), 256):
            x = normalised(test_images[start : start + 256], r)
            y = torch.from_numpy(test_labels[start : start + 256].astype(np.int64))
            hits += (net(x).argmax(1) == y).sum().item()
    eval_seconds = time.perf_counter() - t0
    return {
        "test_accuracy": hits / len(test_labels),
        "train_images_per_s": seen / seconds,
        "eval_images_per_s": len(test_labels) / eval_seconds,
    }


def step_times(r):
    """Median step times; on CUDA each step waited for, cuDNN autotuned, and
    also with bfloat16 autocast (AMP)."""
    device = torch.device(r.get("device", "cpu"))
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    torch.manual_seed(0)
    x0 = torch.randn(r["batch_size"], r["in_channels"], r["size"], r["size"], device=device)
    y = torch.randint(0, r["classes"], (r["batch_size"],), device=device)
    r = dict(r, min_lr=r["lr"], warmup_steps=0, total_steps=1, label_smoothing=0.0)
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    for amp, layout in [(False, "nchw"), (False, "channels_last")] + ([(True, "channels_last")] if cuda else []):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for mode in ("trainable", "frozen"):
            net = Net(r, mode == "frozen")
            with torch.no_grad():
                for p in net.parameters():
                    p.normal_(0, 0.02)
                for b in net.buffers():
                    b.normal_(0, 0.1)
            net = net.to(device=device, memory_format=fmt)
            opt, x, times = optimizer(net, r), x0.contiguous(memory_format=fmt), []
            for i in range(r["warmup"] + r["repeats"]):
                t0 = time.perf_counter()
                train_step(net, opt, x, y, i, r, amp).item()  # .item() waits for the step
                if i >= r["warmup"]:
                    times.append(time.perf_counter() - t0)
            out[f"{'amp/' if amp else ''}{layout}/{mode}"] = sorted(times)[len(times) // 2]
    return out


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    if all(r["kind"] == "step" for r in job["runs"]):
        out["runs"] = [step_times(r) for r in job["runs"]]
        print(json.dumps(out))
        return
    images, labels = read_idx(job["train_images"]), read_idx(job["train_labels"])
    for r in job["runs"]:
        if r["kind"] == "curve":
            out["runs"].append(curve(r, images, labels))
        else:
            test = read_idx(job["test_images"]), read_idx(job["test_labels"])
            out["runs"].append(full(r, images, labels, *test))
    print(json.dumps(out))


main()

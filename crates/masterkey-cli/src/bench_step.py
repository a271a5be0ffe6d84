# PyTorch reference for `masterkey bench step`: one training step (forward,
# cross-entropy, backward, AdamW) of the reference model of REFERENCE §5,
# NCHW and channels-last, with the depthwise filters trainable and frozen
# (requires_grad off; their bias still learns). Median of `repeats` steps
# after `warmup` untimed ones. On CUDA (an 8th argument): each step waited
# for, cuDNN autotuned, and also with bfloat16 autocast (AMP).
import json, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

batch, size, width, blocks, classes, warmup, repeats = map(int, sys.argv[1:8])
device = torch.device(sys.argv[8] if len(sys.argv) > 8 else "cpu")
cuda = device.type == "cuda"
torch.backends.cudnn.benchmark = cuda


class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.dw = nn.Conv2d(w, w, 7, padding=3, groups=w)
        self.norm = nn.LayerNorm(w)
        self.expand = nn.Linear(w, 4 * w)
        self.project = nn.Linear(4 * w, w)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.project(F.gelu(self.expand(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class Reference(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


torch.manual_seed(0)
out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
       "device": torch.cuda.get_device_name() if cuda else "cpu"}
x0 = torch.randn(batch, 3, size, size, device=device)
y = torch.randint(0, classes, (batch,), device=device)
for amp, layout in [(False, "nchw"), (False, "channels_last")] + ([(True, "channels_last")] if cuda else []):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for mode in ("trainable", "frozen"):
        model = Reference().to(device=device, memory_format=fmt)
        if mode == "frozen":
            for b in model.blocks:
                b.dw.weight.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
        x = x0.contiguous(memory_format=fmt)
        times = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            loss.item()  # waits for the step, as masterkey's reading of the loss does
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        out[f"{'amp/' if amp else ''}{layout}/{mode}"] = sorted(times)[repeats // 2]
print(json.dumps(out))

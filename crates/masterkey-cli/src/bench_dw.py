# PyTorch reference for `masterkey bench dw`: depthwise convolution forward
# (no autograd) and forward + backward of a trainable layer, NCHW and
# channels-last, timed around the calls only; median of `repeats`.
import json, sys, time
import torch

n, c, h, w, k, repeats = map(int, sys.argv[1:7])
torch.manual_seed(0)
out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
for layout in ("nchw", "channels_last"):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    weight = torch.randn(c, 1, k, k, requires_grad=True)
    bias = torch.zeros(c, requires_grad=True)
    g = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    forward, both = [], []
    for _ in range(repeats):
        with torch.no_grad():
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, weight, bias, padding=k // 2, groups=c)
            forward.append(time.perf_counter() - t0)
        xg = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        y = torch.nn.functional.conv2d(xg, weight, bias, padding=k // 2, groups=c)
        (y * g).sum().backward()
        both.append(time.perf_counter() - t0)
        weight.grad = bias.grad = None
    out[layout] = {"forward_s": sorted(forward)[repeats // 2], "forward_backward_s": sorted(both)[repeats // 2]}
print(json.dumps(out))
